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
    << m.input_height() << ", " << m.input_width() << "], \"tasks\": [";
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
