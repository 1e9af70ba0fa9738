// subtune-model-test: the C++ side of tests/cpp (pytest builds and drives it).
//
//   subtune-model-test run MODEL IN.f32 BATCH OUTDIR [THREADS [onnxruntime|openvino]]
//       run IN.f32 ([BATCH, 3, H, W] float32) and write OUTDIR/<output>.f32 per output plus
//       OUTDIR/meta.json (what the library read from the graph's metadata); pytest compares both
//       with Python's ONNX Runtime and subtune's own metadata.
//   subtune-model-test preprocess MODEL IMAGE OUT.f32
//       the preprocessed [3, H, W] tensor of one image, for comparison with subtune's Python loader.
//   subtune-model-test runtimes
//       the runtimes this build has, on one line.
//   subtune-model-test definition
//       the graph-metadata definition the library embedded at build time, as it is.
//   subtune-model-test shared MODEL N THREADS
//       load MODEL N times in one process (ONNX Runtime, THREADS intra-op threads) and print the
//       process's thread count after the first and after the last model as JSON; the models run
//       at once from N threads and must give the first model's outputs; a model asking for another
//       thread count must be refused in one line.
//   subtune-model-test checks MODEL
//       the API's own behaviour: bad shapes and batch 0 throw subtune::Error, unknown outputs
//       throw, batch independence, top_k order, moves. Prints one line per failed check; exit 1 if any.
//   subtune-model-test select MODEL IN.f32 BATCH OUTDIR RUNTIME SPEC...
//       a --task-select graph run once per SPEC, OUTDIR/<spec index>.<output>.f32 per output, and
//       OUTDIR/meta.json. SPEC: "all" (run without a task choice), "tasks=a,b" (the same tasks for
//       every image; "tasks=" for none), "per-image=a,b;;c" (one list per image, through task_mask).
//   subtune-model-test select-checks SELECT_MODEL PLAIN_MODEL RUNTIME
//       task selection's API: TaskMask, task_mask, the run overloads, concurrent runs with different
//       masks, and the one-line errors (unknown names, masks of the wrong shape, a plain graph).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>
#include <dirent.h>

#include "subtune/image.hpp"
#include "subtune/model.hpp"

namespace subtune::detail {
extern const char* const kGraphMetadataDefinition;  // generated from subtune/graph_metadata.schema.json
}

namespace {

std::vector<float> read_f32(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw subtune::Error(path + ": cannot read");
  std::vector<char> bytes((std::istreambuf_iterator<char>(f)), std::istreambuf_iterator<char>());
  std::vector<float> v(bytes.size() / sizeof(float));
  std::memcpy(v.data(), bytes.data(), v.size() * sizeof(float));
  return v;
}

void write_f32(const std::string& path, const float* data, size_t n) {
  std::ofstream f(path, std::ios::binary);
  f.write(reinterpret_cast<const char*>(data), std::streamsize(n * sizeof(float)));
  if (!f) throw subtune::Error(path + ": cannot write");
}

std::string q(const std::string& s) {
  std::string o = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') o += '\\';
    o += c;
  }
  return o + "\"";
}

std::string meta_json(const subtune::Model& m) {
  std::ostringstream o;
  o.precision(9);
  o << "{\"outputs\": [";
  for (size_t i = 0; i < m.output_names().size(); ++i) o << (i ? ", " : "") << q(m.output_names()[i]);
  o << "], \"arch\": " << q(m.arch()) << ", \"version\": " << q(m.subtune_version())
    << ", \"schema\": " << m.metadata_schema() << ", \"newest_schema\": " << subtune::Model::newest_metadata_schema()
    << ", \"verified\": " << (m.verified() ? "true" : "false") << ", \"input_size\": ["
    << m.input_height() << ", " << m.input_width() << "], \"task_select\": " << (m.task_select() ? "true" : "false")
    << ", \"tasks\": [";
  for (size_t i = 0; i < m.tasks().size(); ++i) {
    const auto& t = m.tasks()[i];
    o << (i ? ", " : "") << "{\"name\": " << q(t.name) << ", \"kind\": " << q(t.kind) << ", \"blocks\": [";
    if (t.first_block) o << t.first_block << ", " << t.last_block;
    o << "], \"siamese\": " << (t.siamese ? "true" : "false") << ", \"num_classes\": " << t.num_classes
      << ", \"classes\": [";
    for (size_t c = 0; c < t.classes.size(); ++c) o << (c ? ", " : "") << q(t.classes[c]);
    o << "], \"preprocess\": ";
    if (t.preprocess) {
      const auto& p = *t.preprocess;
      o << "{\"image_size\": [" << p.height << ", " << p.width << "], \"channels\": " << p.channels << ", \"mean\": ["
        << p.mean[0] << ", " << p.mean[1] << ", " << p.mean[2] << "], \"std\": [" << p.std[0] << ", " << p.std[1]
        << ", " << p.std[2] << "]}";
    } else {
      o << "null";
    }
    o << "}";
  }
  o << "]}\n";
  return o.str();
}

int cmd_run(int argc, char** argv) {
  if (argc < 6) throw subtune::Error("usage: run MODEL IN.f32 BATCH OUTDIR [THREADS [RUNTIME]]");
  subtune::Options opt;
  opt.threads = argc > 6 ? std::stoi(argv[6]) : 1;
  if (argc > 7 && std::string(argv[7]) == "openvino") opt.runtime = subtune::Runtime::openvino;
  subtune::Model model(argv[2], opt);
  std::vector<float> x = read_f32(argv[3]);
  int64_t batch = std::stoll(argv[4]);
  subtune::Tensor in{{batch, 3, model.input_height(), model.input_width()}, x};
  subtune::Outputs out = model.run(in);
  std::string dir = argv[5];
  for (size_t i = 0; i < out.size(); ++i) {
    const auto& t = out.tensors[i];
    if (t.shape.size() != 2 || t.shape[0] != batch) throw subtune::Error("output " + out.names[i] + " has a bad shape");
    write_f32(dir + "/" + out.names[i] + ".f32", t.data.data(), t.data.size());
  }
  std::ofstream(dir + "/meta.json") << meta_json(model);
  return 0;
}

int cmd_preprocess(int argc, char** argv) {
  if (argc < 5) throw subtune::Error("usage: preprocess MODEL IMAGE OUT.f32");
  subtune::Model model(argv[2]);
  auto pre = model.preprocess();
  if (!pre) throw subtune::Error("the model records no preprocessing");
  std::vector<float> x(size_t(3) * pre->height * pre->width);
  subtune::load_preprocessed(argv[3], *pre, x.data());
  write_f32(argv[4], x.data(), x.size());
  return 0;
}

int failures = 0, passed = 0;

void check(bool ok, const std::string& what) {
  if (ok) {
    ++passed;
  } else {
    ++failures;
    std::cout << "FAILED: " << what << "\n";
  }
}

template <typename F>
void expect_error(F f, const std::string& what, const std::string& needle) {
  try {
    f();
    check(false, what + ": no subtune::Error thrown");
  } catch (const subtune::Error& e) {
    std::string msg = e.what();
    check(msg.find(needle) != std::string::npos && msg.find('\n') == std::string::npos,
          what + ": message '" + msg + "' lacks '" + needle + "' or spans lines");
  } catch (const std::exception& e) {
    check(false, what + ": threw " + std::string(e.what()) + " instead of subtune::Error");
  }
}

int cmd_checks(int argc, char** argv) {
  if (argc < 3) throw subtune::Error("usage: checks MODEL");
  subtune::Options opt;
  opt.threads = 1;
  subtune::Model model(argv[2], opt);
  const int h = model.input_height(), w = model.input_width();
  const size_t per = size_t(3) * h * w;

  check(!model.output_names().empty() && model.output_names()[0] == "base", "the first output is base");
  check(model.output_names().size() == model.tasks().size() + 1, "one output per task plus base");
  for (const auto& t : model.tasks()) {
    check(model.task(t.name) == &t, "task() finds " + t.name);
    check(t.first_block >= 1 && t.first_block <= t.last_block, "block range of " + t.name);
    check(t.classes.empty() || int(t.classes.size()) == t.num_classes, "class names of " + t.name);
  }
  check(model.task("base") == nullptr, "base is not a task");

  std::mt19937 rng(7);
  std::normal_distribution<float> normal;
  std::vector<float> x(per * 4);
  for (float& v : x) v = normal(rng);

  // Batch 4 at once equals each image alone (the graph's batch split must not mix images).
  subtune::Outputs four = model.run(x, 4);
  for (int i = 0; i < 4; ++i) {
    subtune::Outputs one = model.run(x.data() + i * per, per, 1);
    for (size_t o = 0; o < one.size(); ++o) {
      const auto& a = one.tensors[o];
      const auto& b = four.tensors[o];
      check(a.shape == std::vector<int64_t>{1, b.shape[1]}, "batch-1 shape of " + one.names[o]);
      double num = 0, den = 0;
      for (int64_t c = 0; c < a.cols(); ++c) {
        num = std::max(num, double(std::fabs(a.row(0)[c] - b.row(i)[c])));
        den = std::max(den, double(std::fabs(b.row(i)[c])));
      }
      check(num <= 1e-5 * std::max(den, 1e-12), "image " + std::to_string(i) + " of " + one.names[o] +
                                                    " alone vs in a batch of 4: rel " + std::to_string(num / den));
    }
  }
  check(four.at("base").shape[0] == 4, "outputs keep the batch");

  expect_error([&] { model.run(x, 0); }, "batch 0", "batch 0");
  // The buffer's size is checked against the batch: too little data is never read past its end,
  // too much is not silently cut.
  expect_error([&] { model.run(x.data(), per * 4 - 1, 4); }, "a buffer one value short", "needs 4 x 3 x");
  expect_error([&] { model.run(x.data(), per * 4, 3); }, "a buffer larger than the batch", "needs 3 x 3 x");
  expect_error([&] { model.run(x, 5); }, "a batch larger than the vector", "images hold " + std::to_string(per * 4));
  expect_error([&] { model.run(nullptr, 0, 1); }, "a null buffer", "null pointer");
  expect_error([&] { model.run(subtune::Tensor{{1, 1, h, w}, std::vector<float>(size_t(h) * w)}); },
               "one channel", "expected [batch, 3");
  expect_error([&] { model.run(subtune::Tensor{{1, 3, h + 1, w}, std::vector<float>(size_t(3) * (h + 1) * w)}); },
               "wrong height", "expected [batch, 3");
  expect_error([&] { model.run(subtune::Tensor{{2, 3, h, w}, std::vector<float>(per)}); }, "too little data",
               "needs");
  expect_error([&] { (void)four.at("no_such_task"); }, "unknown output", "no output named");
  expect_error([&] { subtune::Model("/nonexistent/model.onnx"); }, "missing file", "no such file");
  expect_error([&] { subtune::Model(argv[2], subtune::Options{-1}); }, "negative threads", "threads -1");

  const float row[5] = {0.5f, 2.0f, -1.0f, 2.0f, 1.0f};
  auto best = subtune::top_k(row, 5, 3);
  check(best.size() == 3 && best[0].first == 1 && best[1].first == 3 && best[2].first == 4, "top_k order and ties");
  check(subtune::top_k(row, 5, 10).size() == 5, "top_k caps k at n");

  subtune::Model moved = std::move(model);
  check(moved.run(x.data(), per, 1).at("base").shape[0] == 1, "a moved model runs");

  std::cout << "subtune-model-test: " << passed << " checks passed, " << failures << " failed\n";
  return failures ? 1 : 0;
}

subtune::Options options_for(const std::string& runtime) {
  subtune::Options opt;
  opt.threads = 1;
  if (runtime == "openvino") opt.runtime = subtune::Runtime::openvino;
  return opt;
}

std::vector<std::string> split(const std::string& text, char sep) {
  std::vector<std::string> parts;
  size_t start = 0;
  while (true) {
    size_t end = text.find(sep, start);
    parts.push_back(text.substr(start, end == std::string::npos ? std::string::npos : end - start));
    if (end == std::string::npos) return parts;
    start = end + 1;
  }
}

std::vector<std::string> names_of(const std::string& text) {
  return text.empty() ? std::vector<std::string>{} : split(text, ',');
}

int cmd_select(int argc, char** argv) {
  if (argc < 8) throw subtune::Error("usage: select MODEL IN.f32 BATCH OUTDIR RUNTIME SPEC...");
  subtune::Model model(argv[2], options_for(argv[6]));
  const std::vector<float> x = read_f32(argv[3]);
  const int64_t batch = std::stoll(argv[4]);
  const std::string dir = argv[5];
  for (int i = 7; i < argc; ++i) {
    const std::string spec = argv[i];
    subtune::Outputs out;
    if (spec == "all") {
      out = model.run(x, batch);
    } else if (spec.rfind("tasks=", 0) == 0) {
      out = model.run(x, batch, names_of(spec.substr(6)));
    } else if (spec.rfind("per-image=", 0) == 0) {
      std::vector<std::vector<std::string>> lists;
      for (const auto& image : split(spec.substr(10), ';')) lists.push_back(names_of(image));
      out = model.run(x, batch, model.task_mask(lists));
    } else {
      throw subtune::Error("unknown spec " + spec);
    }
    for (size_t o = 0; o < out.size(); ++o) {
      const auto& t = out.tensors[o];
      if (t.shape.size() != 2 || t.shape[0] != batch) throw subtune::Error("output " + out.names[o] + " has a bad shape");
      write_f32(dir + "/" + std::to_string(i - 7) + "." + out.names[o] + ".f32", t.data.data(), t.data.size());
    }
  }
  std::ofstream(dir + "/meta.json") << meta_json(model);
  return 0;
}

bool same_bits(const subtune::Outputs& a, const subtune::Outputs& b) {
  if (a.names != b.names) return false;
  for (size_t o = 0; o < a.size(); ++o)
    if (a.tensors[o].shape != b.tensors[o].shape ||
        std::memcmp(a.tensors[o].data.data(), b.tensors[o].data.data(), a.tensors[o].data.size() * sizeof(float)))
      return false;
  return true;
}

// NaN exactly in the rows of each task that `mask` leaves out.
bool nan_where_not_asked(const subtune::Model& model, const subtune::Outputs& out, const subtune::TaskMask& mask) {
  for (int64_t c = 0; c < mask.columns(); ++c) {
    const subtune::Tensor& t = out.at(model.tasks()[c].name);
    for (int64_t i = 0; i < mask.batch(); ++i)
      for (int64_t j = 0; j < t.cols(); ++j)
        if (std::isnan(t.row(i)[j]) == mask.get(i, c)) return false;
  }
  return true;
}

int cmd_select_checks(int argc, char** argv) {
  if (argc < 5) throw subtune::Error("usage: select-checks SELECT_MODEL PLAIN_MODEL RUNTIME");
  const subtune::Options opt = options_for(argv[4]);
  subtune::Model model(argv[2], opt);
  subtune::Model plain(argv[3], opt);
  const int h = model.input_height(), w = model.input_width();
  const size_t per = size_t(3) * h * w;
  std::vector<std::string> names;
  for (const auto& t : model.tasks()) names.push_back(t.name);
  const int64_t k = int64_t(names.size());
  check(model.task_select() && !plain.task_select(), "task_select() tells the graphs apart");
  check(k >= 2, "the task-select graph has two tasks or more");

  std::mt19937 rng(5);
  std::normal_distribution<float> normal;
  std::vector<float> x(per * 4);
  for (float& v : x) v = normal(rng);

  // No choice given computes every task, as asking for every task by name does; the base under
  // every choice is the same, bit for bit.
  const subtune::Outputs every = model.run(x, 4);
  check(same_bits(every, model.run(x, 4, names)), "run without tasks = run with every task by name");
  for (const auto& t : every.tensors)
    check(std::none_of(t.data.begin(), t.data.end(), [](float v) { return std::isnan(v); }), "every task: no NaN");
  const subtune::Outputs none = model.run(x, 4, {});
  check(none.at("base").data == every.at("base").data, "the base with no task asked");
  check(nan_where_not_asked(model, none, subtune::TaskMask(4, k)), "no task asked: every task output NaN");

  // A mask set by hand equals task_mask's from names, and its outputs are the same.
  subtune::TaskMask by_hand(4, k);
  check(by_hand.batch() == 4 && by_hand.columns() == k, "TaskMask's shape");
  by_hand.set(0, 0);
  by_hand.set(2, 1);
  by_hand.set(2, 0);
  by_hand.set(3, 1);
  by_hand.set(3, 1, false);
  check(by_hand.get(0, 0) && !by_hand.get(3, 1) && !by_hand.get(1, 0), "TaskMask set and get");
  const subtune::TaskMask by_name = model.task_mask({{names[0]}, {}, {names[1], names[0]}, {}});
  check(std::memcmp(by_hand.data(), by_name.data(), size_t(4 * k)) == 0, "task_mask per image = the mask by hand");
  const subtune::Outputs chosen = model.run(x.data(), x.size(), 4, by_hand);
  check(same_bits(chosen, model.run(x, 4, by_name)), "the same mask, the same outputs");
  check(nan_where_not_asked(model, chosen, by_hand), "NaN exactly where the mask is false");
  check(chosen.at("base").data == every.at("base").data, "the base under a mask");
  for (int64_t c = 0; c < k; ++c) {
    const subtune::Tensor& got = chosen.at(names[c]);
    const subtune::Tensor& all = every.at(names[c]);
    for (int64_t i = 0; i < 4; ++i)
      if (by_hand.get(i, c))
        check(std::memcmp(got.row(i), all.row(i), size_t(got.cols()) * sizeof(float)) == 0,
              "image " + std::to_string(i) + " of " + names[c] + " asked for = every task's row");
  }
  const subtune::TaskMask same = model.task_mask({names[1]}, 4);
  for (int64_t i = 0; i < 4; ++i) check(!same.get(i, 0) && same.get(i, 1), "task_mask for every image");
  subtune::Tensor images{{4, 3, h, w}, x};
  check(same_bits(model.run(images, {names[1]}), model.run(x, 4, same)), "Tensor overload by name");
  check(same_bits(model.run(images, same), model.run(x, 4, same)), "Tensor overload with a mask");

  // Runs with different choices at once (ONNX Runtime in parallel; OpenVINO serialises them).
  std::vector<subtune::TaskMask> masks{subtune::TaskMask(4, k), by_hand, same, by_name};
  std::vector<subtune::Outputs> expected, outs(masks.size());
  for (const auto& m : masks) expected.push_back(model.run(x, 4, m));
  std::vector<std::thread> workers;
  for (size_t i = 0; i < masks.size(); ++i)
    workers.emplace_back([&, i] { outs[i] = model.run(x, 4, masks[i]); });
  for (auto& t : workers) t.join();
  for (size_t i = 0; i < masks.size(); ++i)
    check(same_bits(outs[i], expected[i]), "mask " + std::to_string(i) + " run at once with the others");

  // A smaller batch after a larger one (the runtimes reshape): image 0 alone, asking for one task.
  const subtune::Outputs alone = model.run(x.data(), per, 1, {names[1]});
  check(nan_where_not_asked(model, alone, model.task_mask({names[1]}, 1)), "batch 1 after batch 4: NaN where not asked");
  for (const std::string& name : {std::string("base"), names[1]}) {
    const subtune::Tensor& a = alone.at(name);
    const subtune::Tensor& b = every.at(name);
    double err = 0, scale = 1e-12;
    for (int64_t j = 0; j < a.cols(); ++j) {
      err = std::max(err, double(std::fabs(a.row(0)[j] - b.row(0)[j])));
      scale = std::max(scale, double(std::fabs(b.row(0)[j])));
    }
    check(a.shape == std::vector<int64_t>{1, b.cols()} && err <= 1e-5 * scale, name + " of image 0 alone vs in a batch of 4");
  }

  // One-line errors.
  const std::string width = "[4, " + std::to_string(k + 1) + "], expected [4, " + std::to_string(k) + "]";
  expect_error([&] { model.run(x, 4, {"nope"}); }, "an unknown task", "no task 'nope'; its tasks are " + names[0]);
  expect_error([&] { model.task_mask({{names[0]}, {"nope"}}); }, "an unknown task per image", "no task 'nope'");
  expect_error([&] { model.run(x, 4, {"base"}); }, "the base as a task", "(the base is always computed)");
  expect_error([&] { model.run(x, 4, subtune::TaskMask(4, k + 1)); }, "a mask too wide", "the task mask is " + width);
  expect_error([&] { model.run(x, 4, subtune::TaskMask(3, k)); }, "a mask with a row short",
               "the task mask is [3, " + std::to_string(k) + "], expected [4, " + std::to_string(k) + "]");
  expect_error([&] { model.run(x, 4, model.task_mask({{names[0]}, {}})); }, "one list per image, too few",
               "one row per image");
  expect_error([&] { model.run(x.data(), per, 4, same); }, "images short of the mask's batch", "needs 4 x 3 x");
  expect_error([&] { model.run(x, 0, {names[0]}); }, "batch 0 by name", "batch 0");
  expect_error([&] { model.task_mask({}); }, "no list per image", "found none");
  expect_error([&] { model.run(subtune::Tensor{{4, 1, h, w}, x}, {names[0]}); }, "one channel by name",
               "expected [batch, 3");
  expect_error([&] { subtune::TaskMask(0, k); }, "a mask of no image", "expected at least one image");
  expect_error([&] { by_hand.set(4, 0); }, "set past the last image", "no entry at image 4, column 0");
  expect_error([&] { (void)by_hand.get(0, k); }, "get past the last column", "columns 0 to " + std::to_string(k - 1));
  const std::string not_select = "was compiled without --task-select";
  expect_error([&] { plain.run(x, 4, {names[0]}); }, "a plain graph by name", not_select);
  expect_error([&] { plain.run(x, 4, {}); }, "a plain graph with no task", not_select);
  expect_error([&] { plain.run(x, 4, subtune::TaskMask(4, k)); }, "a plain graph with a mask", not_select);
  expect_error([&] { plain.task_mask({{names[0]}}); }, "task_mask on a plain graph", not_select);
  check(plain.run(x, 4).size() == every.size(), "a plain graph runs without a choice");

  std::cout << "subtune-model-test: " << passed << " checks passed, " << failures << " failed\n";
  return failures ? 1 : 0;
}

// Threads of this process: the entries of /proc/self/task.
int thread_count() {
  DIR* dir = opendir("/proc/self/task");
  if (!dir) throw subtune::Error("/proc/self/task: cannot list this process's threads");
  int n = 0;
  while (dirent* e = readdir(dir))
    if (e->d_name[0] != '.') ++n;
  closedir(dir);
  return n;
}

int cmd_shared(int argc, char** argv) {
  if (argc < 5) throw subtune::Error("usage: shared MODEL N THREADS");
  const int n = std::stoi(argv[3]);
  subtune::Options opt;
  opt.threads = std::stoi(argv[4]);
  std::vector<subtune::Model> models;
  models.emplace_back(argv[2], opt);
  const size_t per = size_t(3) * models[0].input_height() * models[0].input_width();
  std::mt19937 rng(11);
  std::normal_distribution<float> normal;
  std::vector<float> x(per * 2);
  for (float& v : x) v = normal(rng);
  subtune::Outputs reference = models[0].run(x, 2);
  const int after_first = thread_count();
  for (int i = 1; i < n; ++i) models.emplace_back(argv[2], i % 2 ? subtune::Options{0} : opt);
  const int after_all = thread_count();

  std::vector<subtune::Outputs> outs(models.size());
  std::vector<std::thread> workers;
  for (size_t i = 0; i < models.size(); ++i) workers.emplace_back([&, i] { outs[i] = models[i].run(x, 2); });
  for (auto& w : workers) w.join();
  for (size_t i = 0; i < outs.size(); ++i)
    for (size_t o = 0; o < reference.size(); ++o) {
      const auto& a = outs[i].tensors[o].data;
      const auto& b = reference.tensors[o].data;
      double err = 0, scale = 1e-12;
      for (size_t k = 0; k < b.size(); ++k) {
        err = std::max(err, double(std::fabs(a[k] - b[k])));
        scale = std::max(scale, double(std::fabs(b[k])));
      }
      check(a.size() == b.size() && err <= 1e-6 * scale,
            "model " + std::to_string(i) + " output " + reference.names[o] + " run at once with the others");
    }
  expect_error([&] { subtune::Model(argv[2], subtune::Options{opt.threads + 1}); }, "another thread count",
               "share one ONNX Runtime thread pool");
  std::cout << "{\"threads_after_first\": " << after_first << ", \"threads_after_all\": " << after_all
            << ", \"models\": " << models.size() << ", \"failed\": " << failures << "}\n";
  return failures ? 1 : 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string cmd = argc > 1 ? argv[1] : "";
    if (cmd == "run") return cmd_run(argc, argv);
    if (cmd == "preprocess") return cmd_preprocess(argc, argv);
    if (cmd == "checks") return cmd_checks(argc, argv);
    if (cmd == "shared") return cmd_shared(argc, argv);
    if (cmd == "select") return cmd_select(argc, argv);
    if (cmd == "select-checks") return cmd_select_checks(argc, argv);
    if (cmd == "definition") {
      std::cout << subtune::detail::kGraphMetadataDefinition;
      return 0;
    }
    if (cmd == "runtimes") {
      std::cout << "onnxruntime" << (subtune::Model::runtime_available(subtune::Runtime::openvino) ? " openvino" : "")
                << "\n";
      return 0;
    }
    std::cerr << "usage: subtune-model-test run|preprocess|checks ...\n";
    return 2;
  } catch (const subtune::Error& e) {
    std::cerr << "subtune-model-test: error: " << e.what() << "\n";
    return 1;
  }
}
