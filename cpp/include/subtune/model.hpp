// subtune::Model: load a graph compiled by subtune-compile, learn its tasks from the graph's
// own metadata, run a batch, and get each output by task name. ONNX Runtime runs the graph
// (OpenVINO instead where built and asked for); no runtime type appears in this header, so
// users need none of the runtimes' headers.
//
//   subtune::Model model("model.onnx", subtune::Options{/*threads=*/2});
//   std::vector<float> images = ...;                      // [batch, 3, H, W], preprocessed
//   subtune::Outputs out = model.run(images, batch);      // or run(images.data(), images.size(), batch)
//   const subtune::Tensor& t = out.at("fashion10");        // [batch, classes]
//
// A graph compiled with --task-select (task_select() is true) computes per image only the tasks it
// asks for; the base is always computed:
//
//   model.run(images, batch);                              // every task on every image
//   model.run(images, batch, {"coarse4"});                 // every image asks for coarse4
//   model.run(images, batch, {});                          // the base only
//   model.run(images, 3, model.task_mask({{"coarse4"}, {}, {"fashion10", "coarse4"}}));  // per image
//
// The outputs are the graph's as it gives them: every task's tensor is [batch, classes], with NaN
// in the rows of the images that did not ask for that task.
//
// Errors (a missing or foreign file, a graph whose outputs are not float32, a wrong input shape or
// buffer size, a failing run) are thrown as subtune::Error with one line that says what was
// expected, what was found and what to do.
#pragma once

#include <array>
#include <cstdint>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace subtune {

class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// What a deployment must do to an image (the task file's meta["preprocess"]): resize to
// height x width, 3 channels, scale to [0, 1], then (x - mean) / std per channel.
struct Preprocess {
  int height = 0;
  int width = 0;
  int channels = 3;
  std::array<float, 3> mean{};
  std::array<float, 3> std{};
};

struct TaskInfo {
  std::string name;               // the output's name
  std::string kind;               // "delta" (tuned blocks + head), "tap" (a head on tapped features), ...
  int first_block = 0;            // 1-based, inclusive; 0 and 0 for a task that tunes no block
  int last_block = 0;
  std::vector<int> tap_points;    // a tap task's feature points; empty otherwise
  bool siamese = false;
  int num_classes = 0;
  std::vector<std::string> classes;       // empty when the task records none
  std::optional<Preprocess> preprocess;   // as the task was trained
  std::string preprocess_problem;         // why a recorded preprocessing is unusable here, if it is
};

struct Tensor {
  std::vector<int64_t> shape;
  std::vector<float> data;  // row-major
  int64_t rows() const { return shape.empty() ? 0 : shape[0]; }
  int64_t cols() const { return shape.size() < 2 ? 1 : shape[1]; }
  const float* row(int64_t i) const { return data.data() + i * cols(); }
};

// The graph's outputs in the graph's order ("base", then each task), found by name.
class Outputs {
 public:
  std::vector<std::string> names;
  std::vector<Tensor> tensors;
  const Tensor& at(const std::string& name) const;  // throws subtune::Error for an unknown name
  bool contains(const std::string& name) const;
  size_t size() const { return names.size(); }
};

// Which tasks each image of a batch computes, for a graph compiled with --task-select: one row per
// image, one column per task in Model::tasks() order (the graph's `tasks` input, bool [batch, k]).
// All false when made. Model::task_mask makes one from task names; Model::run checks that it has
// one row per image and one column per task (the graph itself checks neither the rows nor, on every
// runtime, the width).
class TaskMask {
 public:
  explicit TaskMask(int64_t batch, int64_t columns);  // throws subtune::Error unless both are at least 1
  int64_t batch() const { return batch_; }
  int64_t columns() const { return columns_; }
  void set(int64_t image, int64_t column, bool compute = true);  // throws subtune::Error out of range
  bool get(int64_t image, int64_t column) const;                  // throws subtune::Error out of range
  const uint8_t* data() const { return values_.data(); }         // batch x columns, row-major, 0 or 1

 private:
  int64_t batch_, columns_;
  std::vector<uint8_t> values_;
};

enum class Runtime {
  onnxruntime,  // ONNX Runtime's C++ API, CPU: always built
  openvino,     // OpenVINO (f32 inference precision), CPU: built when CMake finds its SDK
};

struct Options {
  // Intra-op threads. With ONNX Runtime every Model of a process shares one environment and one
  // thread pool, made by the first Model with its count (0: one per physical core); a later Model
  // passes 0 or that same count (another count is refused). OpenVINO: threads of this model.
  int threads = 0;
  Runtime runtime = Runtime::onnxruntime;
};

class Model {
 public:
  explicit Model(const std::string& path, const Options& options = {});
  ~Model();
  Model(Model&&) noexcept;
  Model& operator=(Model&&) noexcept;
  Model(const Model&) = delete;
  Model& operator=(const Model&) = delete;

  const std::string& path() const;
  const std::vector<std::string>& output_names() const;  // "base" first, then the tasks in order
  const std::vector<TaskInfo>& tasks() const;
  const TaskInfo* task(const std::string& name) const;   // nullptr for "base" or an unknown name
  const std::string& arch() const;                       // subtune.arch, e.g. "torchvision:resnet50"
  const std::string& subtune_version() const;             // subtune.version: the compiler's package version
  int metadata_schema() const;            // subtune.schema: the metadata schema the graph follows
  static int newest_metadata_schema();    // the newest schema this library reads (newer graphs are refused)
  bool verified() const;  // subtune.verified: the compiler checked this graph against PyTorch
  int input_height() const;
  int input_width() const;
  // The one preprocessing every task that records one agrees on; nullopt when none records
  // any. Throws subtune::Error when tasks disagree (one graph input takes one normalisation).
  std::optional<Preprocess> preprocess() const;
  // Class names of an output ("base" and tasks without names: empty).
  const std::vector<std::string>& classes(const std::string& output) const;

  // Task selection. True for a graph compiled with --task-select (its metadata has
  // subtune.task_select): run() then takes which tasks to compute, by name or as a TaskMask.
  bool task_select() const;
  // The mask for `tasks_per_image` (one list of task names per image, in the batch's order), or for
  // `batch` images that all ask for `tasks`. Throws subtune::Error for an unknown task name and for
  // a graph without task selection.
  TaskMask task_mask(const std::vector<std::vector<std::string>>& tasks_per_image) const;
  TaskMask task_mask(const std::vector<std::string>& tasks, int64_t batch) const;

  // Run `batch` images laid out [batch, 3, H, W] (float32, preprocessed): `size` floats, which must
  // be batch * 3 * H * W. The data is read in place, not copied. Safe to call from several threads
  // at once (OpenVINO serialises the calls).
  Outputs run(const float* images, size_t size, int64_t batch) const;
  Outputs run(const std::vector<float>& images, int64_t batch) const;
  Outputs run(const Tensor& images) const;  // checks images.shape == [batch, 3, H, W]
  // With a --task-select graph the runs above compute every task on every image. These compute the
  // base plus only the tasks asked for: `tasks` by name for every image ({} for the base only), or
  // a TaskMask per image. A task's output holds NaN in the rows of images that did not ask for it.
  // Throws subtune::Error for an unknown task name, a mask whose shape is not [batch, tasks], and a
  // graph compiled without --task-select.
  Outputs run(const float* images, size_t size, int64_t batch, const std::vector<std::string>& tasks) const;
  Outputs run(const std::vector<float>& images, int64_t batch, const std::vector<std::string>& tasks) const;
  Outputs run(const Tensor& images, const std::vector<std::string>& tasks) const;
  Outputs run(const float* images, size_t size, int64_t batch, const TaskMask& tasks) const;
  Outputs run(const std::vector<float>& images, int64_t batch, const TaskMask& tasks) const;
  Outputs run(const Tensor& images, const TaskMask& tasks) const;

  std::string runtime() const;  // the runtime and its version, e.g. "onnxruntime 1.32.0"
  static bool runtime_available(Runtime runtime);  // false for OpenVINO in a build without it

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// The k largest entries of one row: (index, value), largest first; ties by lower index.
std::vector<std::pair<int, float>> top_k(const float* row, int n, int k);

}  // namespace subtune
