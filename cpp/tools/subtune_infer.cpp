// subtune-infer: run a compiled subtune graph from C++ and print each task's top classes, or
// time it (--bench) with subtune-bench's protocol.
//
//   subtune-infer MODEL.onnx [--image FILE.ppm|.png ...] [--batch N] [--threads N] [--top K]
//                 [--json OUT.json] [--seed S] [--runtime onnxruntime|openvino] [--tasks A,B]
//   subtune-infer MODEL.onnx --bench [--batch N] [--threads N] [--warmup W] [--iters I] [--repeats R]
//                 [--json OUT.json] [--tasks A,B]
//
// Without --image the batch is seeded random input (N(0, 1), the graph's size): a smoke test.
// --tasks (a graph compiled with --task-select): every image computes the base and only these
// tasks, and only they are printed (and written to --json).
// Errors: one line on stderr, exit status 1, and no output file.
#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <cerrno>
#include <fstream>
#include <iomanip>
#include <iostream>
#include <numeric>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <sys/stat.h>
#include <unistd.h>
#include <vector>

#include "subtune/image.hpp"
#include "subtune/model.hpp"

namespace {

using subtune::Error;

const char* kUsage =
    "usage: subtune-infer MODEL.onnx [--image FILE.ppm|.png ...] [--batch N] [--threads N] [--top K]\n"
    "                     [--json OUT.json] [--seed S] [--runtime onnxruntime|openvino] [--tasks A,B]\n"
    "       subtune-infer MODEL.onnx --bench [--batch N] [--threads N] [--warmup W] [--iters I] [--repeats R]\n"
    "                     [--json OUT.json] [--tasks A,B]\n"
    "Runs a graph compiled by subtune-compile with ONNX Runtime (or OpenVINO, where built) and prints each\n"
    "task's top classes by name (scores are logits).\n"
    "Images are resized and normalised as the graph's metadata (subtune.preprocess) says; without --image\n"
    "the batch is seeded random input. --bench: warm-up, then the median of per-repeat medians (ms).\n"
    "--tasks A,B (a graph compiled with --task-select): compute the base and only these tasks for every\n"
    "image, and print only them.\n";

struct Args {
  std::string model;
  std::vector<std::string> images;
  long batch = -1;  // -1: not given
  long threads = 0;
  long top = 3;
  long seed = 0;
  bool bench = false;
  long warmup = 10, iters = 30, repeats = 5;  // subtune-bench's defaults
  std::string json;
  subtune::Runtime runtime = subtune::Runtime::onnxruntime;
  std::optional<std::vector<std::string>> tasks;  // --tasks: none given means every task
};

// "a,b" -> {"a", "b"}; an empty list or an empty name is refused.
std::vector<std::string> parse_tasks(const std::string& text) {
  if (text.empty()) throw Error("--tasks needs task names separated by commas, e.g. --tasks coarse4,fashion10");
  std::vector<std::string> names;
  size_t start = 0;
  while (true) {
    size_t comma = text.find(',', start);
    names.push_back(text.substr(start, comma == std::string::npos ? std::string::npos : comma - start));
    if (names.back().empty())
      throw Error("--tasks " + text + ": expected task names separated by commas, e.g. --tasks coarse4,fashion10");
    if (comma == std::string::npos) return names;
    start = comma + 1;
  }
}

long parse_int(const std::string& flag, const std::string& text, long min) {
  char* end = nullptr;
  errno = 0;
  long v = std::strtol(text.c_str(), &end, 10);
  if (text.empty() || *end != '\0' || errno)
    throw Error(flag + " " + text + ": expected a whole number");
  if (v < min) {
    if (flag == "--batch") throw Error("--batch " + text + ": expected a positive number of images (at least 1)");
    throw Error(flag + " " + text + ": expected a number of at least " + std::to_string(min));
  }
  return v;
}

Args parse(int argc, char** argv) {
  Args a;
  std::vector<std::string> v(argv + 1, argv + argc);
  auto value = [&](size_t& i) -> const std::string& {
    if (i + 1 >= v.size() || (v[i + 1].size() > 1 && v[i + 1].rfind("--", 0) == 0))
      throw Error(v[i] + " needs a value; see subtune-infer --help");
    return v[++i];
  };
  for (size_t i = 0; i < v.size(); ++i) {
    const std::string& s = v[i];
    if (s == "-h" || s == "--help") {
      std::cout << kUsage;
      std::exit(0);
    } else if (s == "--image") {
      if (i + 1 >= v.size() || v[i + 1].rfind("--", 0) == 0) throw Error("--image needs at least one file");
      while (i + 1 < v.size() && v[i + 1].rfind("--", 0) != 0) a.images.push_back(v[++i]);
    } else if (s == "--batch") {
      a.batch = parse_int(s, value(i), 1);
    } else if (s == "--threads") {
      a.threads = parse_int(s, value(i), 0);
    } else if (s == "--top") {
      a.top = parse_int(s, value(i), 1);
    } else if (s == "--seed") {
      a.seed = parse_int(s, value(i), 0);
    } else if (s == "--warmup") {
      a.warmup = parse_int(s, value(i), 0);
    } else if (s == "--iters") {
      a.iters = parse_int(s, value(i), 1);
    } else if (s == "--repeats") {
      a.repeats = parse_int(s, value(i), 1);
    } else if (s == "--runtime") {
      const std::string& r = value(i);
      if (r == "onnxruntime") a.runtime = subtune::Runtime::onnxruntime;
      else if (r == "openvino") a.runtime = subtune::Runtime::openvino;
      else throw Error("--runtime " + r + ": expected onnxruntime or openvino");
    } else if (s == "--tasks") {
      a.tasks = parse_tasks(value(i));
    } else if (s == "--bench") {
      a.bench = true;
    } else if (s == "--json") {
      a.json = value(i);
    } else if (s.rfind("-", 0) == 0 && s.size() > 1) {
      throw Error("unknown option " + s + "; see subtune-infer --help");
    } else if (a.model.empty()) {
      a.model = s;
    } else {
      throw Error("unexpected argument " + s + " (one model; images go after --image); see subtune-infer --help");
    }
  }
  if (a.model.empty()) throw Error("no model given: subtune-infer MODEL.onnx [...]; see subtune-infer --help");
  if (a.bench && !a.images.empty()) throw Error("--bench times seeded random input; drop --image");
  if (!a.images.empty() && a.batch != -1 && a.batch != long(a.images.size()))
    throw Error("--batch " + std::to_string(a.batch) + " but " + std::to_string(a.images.size()) +
                " images given: the batch is the images; drop --batch or give that many images");
  return a;
}

// JSON string escaping for names and paths.
std::string quote(const std::string& s) {
  std::ostringstream o;
  o << '"';
  for (unsigned char c : s) {
    if (c == '"' || c == '\\') o << '\\' << c;
    else if (c < 0x20) o << "\\u" << std::hex << std::setw(4) << std::setfill('0') << int(c) << std::dec;
    else o << c;
  }
  o << '"';
  return o.str();
}

std::string num(double x) {
  if (!std::isfinite(x)) return "null";
  std::ostringstream o;
  o << std::setprecision(9) << x;
  return o.str();
}

// Write to a temporary file beside the target, then rename: no partial output.
void write_atomic(const std::string& path, const std::string& text) {
  std::string tmp = path + ".tmp." + std::to_string(::getpid());
  {
    std::ofstream f(tmp, std::ios::binary);
    if (!f) throw Error(path + ": cannot write here (" + std::string(std::strerror(errno)) + "); choose another --json path");
    f << text;
    f.flush();
    if (!f) {
      std::remove(tmp.c_str());
      throw Error(path + ": writing failed; check the free space");
    }
  }
  if (std::rename(tmp.c_str(), path.c_str()) != 0) {
    std::remove(tmp.c_str());
    throw Error(path + ": cannot write here; choose another --json path");
  }
}

// Fail before any work when the --json file cannot be written.
void check_writable(const std::string& path) {
  if (path.empty()) return;
  std::string dir = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/'));
  if (dir.empty()) dir = "/";
  struct stat st {};
  if (stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode))
    throw Error("--json " + path + ": is a folder; expected a file path");
  if (stat(dir.c_str(), &st) != 0 || !S_ISDIR(st.st_mode))
    throw Error("--json " + path + ": folder " + dir + " does not exist; create it or choose another path");
  if (::access(dir.c_str(), W_OK) != 0)
    throw Error("--json " + path + ": folder " + dir + " is not writable; choose another path");
}

std::vector<float> random_batch(const subtune::Model& model, long batch, long seed) {
  std::mt19937 rng(static_cast<uint32_t>(seed));
  std::normal_distribution<float> normal(0.0f, 1.0f);
  std::vector<float> x(size_t(batch) * 3 * model.input_height() * model.input_width());
  for (float& v : x) v = normal(rng);
  return x;
}

std::string label(const subtune::Model& model, const std::string& output, int index) {
  const auto& classes = model.classes(output);
  return index < int(classes.size()) ? classes[index] : "#" + std::to_string(index);
}

// The mask for --tasks (checked before any work: unknown names, a graph without task selection).
std::optional<subtune::TaskMask> task_mask(const Args& a, const subtune::Model& model, long batch) {
  if (!a.tasks) return std::nullopt;
  return model.task_mask(*a.tasks, batch);
}

// The tasks computed: those of --tasks in the graph's order, else all.
std::vector<std::string> computed_tasks(const Args& a, const subtune::Model& model) {
  std::vector<std::string> names;
  for (const auto& t : model.tasks())
    if (!a.tasks || std::find(a.tasks->begin(), a.tasks->end(), t.name) != a.tasks->end()) names.push_back(t.name);
  return names;
}

std::string json_names(const std::vector<std::string>& names) {
  std::string s = "[";
  for (size_t i = 0; i < names.size(); ++i) s += (i ? ", " : "") + quote(names[i]);
  return s + "]";
}

std::string comma_list(const std::vector<std::string>& names) {
  std::string s;
  for (size_t i = 0; i < names.size(); ++i) s += (i ? "," : "") + names[i];
  return s;
}

int infer(const Args& a, const subtune::Model& model) {
  long batch = a.images.empty() ? (a.batch == -1 ? 1 : a.batch) : long(a.images.size());
  size_t per_image = size_t(3) * model.input_height() * model.input_width();
  const std::optional<subtune::TaskMask> mask = task_mask(a, model, batch);
  const std::vector<std::string> tasks = computed_tasks(a, model);
  std::vector<float> x;
  if (a.images.empty()) {
    std::cerr << "note: no --image: running a seeded random batch of " << batch << " (seed " << a.seed << ")\n";
    x = random_batch(model, batch, a.seed);
  } else {
    auto pre = model.preprocess();
    if (!pre)
      throw Error(model.path() + ": records no preprocessing (subtune.preprocess), so images cannot be normalised "
                  "as the tasks were trained; compile tasks trained with subtune train, or call Model::run yourself");
    x.resize(per_image * batch);
    for (long i = 0; i < batch; ++i) subtune::load_preprocessed(a.images[i], *pre, x.data() + i * per_image);
  }
  subtune::Outputs out = mask ? model.run(x, batch, *mask) : model.run(x, batch);

  // The base and the tasks computed (a task not asked for holds NaN: not shown).
  std::vector<size_t> shown;
  for (size_t o = 0; o < out.size(); ++o)
    if (!model.task(out.names[o]) || std::find(tasks.begin(), tasks.end(), out.names[o]) != tasks.end())
      shown.push_back(o);
  size_t width = 0;
  for (size_t o : shown) width = std::max(width, out.names[o].size());
  std::ostringstream js;
  js << "{\"model\": " << quote(model.path()) << ", \"runtime\": " << quote(model.runtime())
     << ", \"batch\": " << batch << ", \"tasks\": " << json_names(tasks) << ", \"images\": [";
  for (long i = 0; i < batch; ++i) {
    std::string src = a.images.empty() ? "random[" + std::to_string(i) + "]" : a.images[i];
    std::cout << (a.images.empty() ? "input " : "image ") << src << "\n";
    js << (i ? ", " : "") << "{\"source\": " << quote(src) << ", \"outputs\": {";
    for (size_t o : shown) {
      const auto& name = out.names[o];
      const subtune::Tensor& t = out.tensors[o];
      auto best = subtune::top_k(t.row(i), int(t.cols()), int(a.top));
      std::cout << "  " << std::left << std::setw(int(width) + 1) << (name + ":");
      for (const auto& [idx, v] : best) std::cout << "  " << label(model, name, idx) << " " << std::fixed
                                                  << std::setprecision(3) << v;
      std::cout << "\n";
      js << (o != shown.front() ? ", " : "") << quote(name) << ": {\"top\": [";
      for (size_t b = 0; b < best.size(); ++b)
        js << (b ? ", " : "") << "{\"index\": " << best[b].first << ", \"class\": "
           << quote(label(model, name, best[b].first)) << ", \"score\": " << num(best[b].second) << "}";
      js << "], \"logits\": [";
      for (int64_t c = 0; c < t.cols(); ++c) js << (c ? ", " : "") << num(t.row(i)[c]);
      js << "]}";
    }
    js << "}}";
  }
  js << "]}\n";
  std::cout.flush();
  if (!a.json.empty()) write_atomic(a.json, js.str());
  return 0;
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  size_t n = v.size();
  return n % 2 ? v[n / 2] : (v[n / 2 - 1] + v[n / 2]) / 2;
}

double percentile(const std::vector<double>& sorted, double q) {  // NumPy's linear method
  double pos = (sorted.size() - 1) * q / 100;
  size_t lo = size_t(pos), hi = std::min(lo + 1, sorted.size() - 1);
  return sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - double(lo));
}

int bench(const Args& a, const subtune::Model& model) {
  long batch = a.batch == -1 ? 1 : a.batch;
  const std::optional<subtune::TaskMask> mask = task_mask(a, model, batch);
  std::vector<float> x = random_batch(model, batch, a.seed);
  auto run = [&] { return mask ? model.run(x, batch, *mask) : model.run(x, batch); };
  for (long i = 0; i < a.warmup; ++i) run();
  std::vector<std::vector<double>> samples(a.repeats);
  for (long r = 0; r < a.repeats; ++r) {
    samples[r].resize(a.iters);
    for (long i = 0; i < a.iters; ++i) {
      auto start = std::chrono::steady_clock::now();
      run();
      samples[r][i] = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    }
  }
  std::vector<double> medians, pooled;
  for (const auto& s : samples) {
    medians.push_back(median(s));
    pooled.insert(pooled.end(), s.begin(), s.end());
  }
  std::sort(pooled.begin(), pooled.end());
  double med = median(medians);
  double mean = std::accumulate(medians.begin(), medians.end(), 0.0) / medians.size();
  double spread = med > 0 ? (*std::max_element(medians.begin(), medians.end()) -
                             *std::min_element(medians.begin(), medians.end())) / med : 0.0;
  double p90 = percentile(pooled, 90), p99 = percentile(pooled, 99);
  std::cout << "subtune-infer --bench " << model.path() << " (" << model.runtime()
            << ", threads " << (a.threads ? std::to_string(a.threads) : std::string("default")) << ", warmup "
            << a.warmup << ", " << a.repeats << " x " << a.iters << " calls"
            << (a.tasks ? ", tasks " + comma_list(computed_tasks(a, model)) : std::string()) << ")\n"
            << std::fixed << std::setprecision(3) << "batch " << batch << ": median " << med << " ms  mean " << mean
            << "  p90 " << p90 << "  p99 " << p99 << "  min " << pooled.front() << "  spread "
            << std::setprecision(1) << spread * 100 << "%" << (spread > 0.05 ? " (noisy)" : "") << "\n";
  if (!a.json.empty()) {
    std::ostringstream js;
    js << "{\"model\": " << quote(model.path()) << ", \"runtime\": " << quote(model.runtime())
       << ", \"threads\": " << a.threads << ", \"tasks\": " << json_names(computed_tasks(a, model))
       << ", \"protocol\": {\"warmup\": "
       << a.warmup << ", \"iters\": " << a.iters << ", \"repeats\": " << a.repeats << "}, \"batch\": " << batch
       << ", \"median_ms\": " << num(med) << ", \"mean_ms\": " << num(mean) << ", \"p90_ms\": " << num(p90)
       << ", \"p99_ms\": " << num(p99) << ", \"min_ms\": " << num(pooled.front()) << ", \"spread\": " << num(spread)
       << ", \"throughput\": " << num(med > 0 ? batch / (med / 1e3) : 0) << ", \"repeat_medians_ms\": [";
    for (size_t i = 0; i < medians.size(); ++i) js << (i ? ", " : "") << num(medians[i]);
    js << "]}\n";
    write_atomic(a.json, js.str());
  }
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    Args a = parse(argc, argv);
    check_writable(a.json);
    subtune::Options options;
    options.threads = int(a.threads);
    options.runtime = a.runtime;
    subtune::Model model(a.model, options);
    return a.bench ? bench(a, model) : infer(a, model);
  } catch (const subtune::Error& e) {
    std::cerr << "subtune-infer: error: " << e.what() << "\n";
  } catch (const std::bad_alloc&) {
    std::cerr << "subtune-infer: error: out of memory; use a smaller --batch\n";
  } catch (const std::exception& e) {
    std::cerr << "subtune-infer: error: " << e.what() << "\n";
  }
  return 1;
}
