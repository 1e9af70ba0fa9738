// subtune::Model (see include/subtune/model.hpp): the graph's metadata, checked against the graph
// the runtime loaded, and runs through a backend (ONNX Runtime, or OpenVINO where built).
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstdint>
#include <limits>
#include <sys/stat.h>

#include "backend.hpp"
#include "graph_metadata.hpp"
#include "subtune/model.hpp"

namespace subtune {
namespace detail {

std::string first_line(const std::string& text) {
  std::string line = text.substr(0, text.find('\n'));
  return line.size() > 300 ? line.substr(0, 300) + "..." : line;
}

}  // namespace detail

namespace {

using json = nlohmann::ordered_json;

std::string join(const std::vector<std::string>& items) {
  std::string s;
  for (size_t i = 0; i < items.size(); ++i) s += (i ? ", " : "") + items[i];
  return s;
}

std::string shape_str(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size(); ++i) s += (i ? ", " : "") + (shape[i] < 0 ? std::string("?") : std::to_string(shape[i]));
  return s + "]";
}

Preprocess parse_preprocess(const json& j, const std::string& where) {
  Preprocess p;
  auto size = j.at("image_size");
  if (!size.is_array() || size.size() != 2) throw Error(where + ": image_size is not [H, W]");
  p.height = size[0].get<int>();
  p.width = size[1].get<int>();
  p.channels = j.value("channels", 3);
  auto mean = j.at("mean"), sd = j.at("std");
  if (p.channels != 3 || !mean.is_array() || mean.size() != 3 || !sd.is_array() || sd.size() != 3)
    throw Error(where + ": expected 3 channels with 3 means and 3 stds (the graph takes RGB), found " + j.dump());
  for (int c = 0; c < 3; ++c) {
    // Python keeps these as float64 and torch makes float32 tensors of them: round the same way.
    p.mean[c] = static_cast<float>(mean[c].get<double>());
    p.std[c] = static_cast<float>(sd[c].get<double>());
    if (!(p.std[c] > 0)) throw Error(where + ": std must be positive");
  }
  if (p.height < 1 || p.width < 1) throw Error(where + ": image_size must be positive");
  return p;
}

}  // namespace

const Tensor& Outputs::at(const std::string& name) const {
  for (size_t i = 0; i < names.size(); ++i)
    if (names[i] == name) return tensors[i];
  throw Error("no output named '" + name + "': the graph's outputs are " + join(names));
}

bool Outputs::contains(const std::string& name) const {
  return std::find(names.begin(), names.end(), name) != names.end();
}

struct Model::Impl {
  std::string path;
  std::unique_ptr<detail::Backend> backend;
  std::vector<std::string> outputs;
  std::vector<TaskInfo> tasks;
  std::string arch, version;
  int schema = 0;
  bool verified = false;
  int height = 0, width = 0;
  size_t images_input = 0;         // the backend's input index of `images`
  std::optional<size_t> mask_input;  // of the task-select mask (subtune.task_select): none for a plain graph
  std::vector<std::string> task_names;  // the mask's columns

  void check_images(const float* images, size_t size, int64_t batch) const;
  void check_mask(const TaskMask& mask, int64_t batch) const;
  void require_task_select() const;
  int64_t column(const std::string& task) const;
  Outputs run(const float* images, int64_t batch, const TaskMask* mask) const;
};

Model::Model(const std::string& path, const Options& options) : impl_(std::make_unique<Impl>()) {
  Impl& m = *impl_;
  m.path = path;
  struct stat st {};
  if (stat(path.c_str(), &st) != 0) throw Error(path + ": no such file; expected a graph from subtune-compile (model.onnx)");
  if (!S_ISREG(st.st_mode)) throw Error(path + ": not a regular file; expected a graph from subtune-compile (model.onnx)");
  if (options.threads < 0) throw Error("threads " + std::to_string(options.threads) + ": expected 0 (default) or more");

  // A missing or short weights file (ONNX external data) is named here: the runtimes' own messages
  // for it are vague (OpenVINO's says nothing). A file that is not ONNX at all is left to the
  // runtime, which says best what is wrong with it.
  std::optional<detail::OnnxFileInfo> file;
  try {
    file = detail::read_onnx_file(path);
  } catch (const Error&) {
  }
  if (file) detail::check_external_data(path, *file);
  m.backend = options.runtime == Runtime::openvino ? detail::make_openvino_backend(path, options.threads)
                                                   : detail::make_onnxruntime_backend(path, options.threads);
  if (!file) file = detail::read_onnx_file(path);  // the runtime loaded it: its protobuf error, if any
  // Read against the one definition of the keys (subtune/graph_metadata.schema.json, embedded at
  // build time): after decode_graph_metadata every required key is there with its declared type.
  const json meta = detail::decode_graph_metadata(file->metadata, path);
  m.schema = meta.at(detail::graph_metadata_version_key()).get<int>();
  m.outputs = meta.at("subtune.outputs").get<std::vector<std::string>>();
  m.arch = meta.at("subtune.arch").get<std::string>();
  m.version = meta.at("subtune.version").get<std::string>();
  m.height = meta.at("subtune.input_size")[0].get<int>();
  m.width = meta.at("subtune.input_size")[1].get<int>();
  m.verified = meta.at("subtune.verified").get<bool>();
  const json pre = meta.contains("subtune.preprocess") ? meta["subtune.preprocess"] : json::object();
  for (const json& t : meta.at("subtune.tasks")) {  // keys the definition does not declare are ignored
    TaskInfo info;
    info.name = t.at("name").get<std::string>();
    info.kind = t.at("kind").get<std::string>();
    const json& blocks = t.at("blocks");
    if (!blocks.empty()) {
      info.first_block = blocks.front().get<int>();
      info.last_block = blocks.back().get<int>();
    }
    if (t.contains("tap_points")) info.tap_points = t["tap_points"].get<std::vector<int>>();
    info.siamese = t.at("siamese").get<bool>();
    info.num_classes = t.at("num_classes").get<int>();
    if (t.contains("classes") && t["classes"].is_array()) info.classes = t["classes"].get<std::vector<std::string>>();
    if (pre.contains(info.name)) {
      try {
        info.preprocess = parse_preprocess(pre[info.name], path + ": subtune.preprocess of task " + info.name);
      } catch (const std::exception& e) {  // the graph still runs; only preprocess() refuses
        info.preprocess_problem = e.what();
      }
    }
    m.tasks.push_back(std::move(info));
  }

  for (const auto& t : m.tasks) m.task_names.push_back(t.name);
  std::string mask_name;
  if (meta.contains("subtune.task_select")) {
    const json& spec = meta["subtune.task_select"];
    if (spec.at("columns").get<std::vector<std::string>>() != m.task_names)
      throw Error(path + ": its task-select columns " + detail::python_repr(spec.at("columns")) +
                  " are not its tasks " + detail::python_repr(json(m.task_names)) + "; compile the graph again");
    mask_name = spec.at("input").get<std::string>();
  }

  // The graph itself must agree with its metadata.
  const detail::Backend& b = *m.backend;
  const std::vector<detail::ValueInfo>& inputs = b.inputs();
  std::vector<std::string> input_names;
  for (const auto& in : inputs) input_names.push_back(in.name);
  if (mask_name.empty() && inputs.size() != 1)
    throw Error(path + ": expected one input (images), found " + std::to_string(inputs.size()) + " (" +
                join(input_names) + "); compile the graph again");
  if (!mask_name.empty()) {
    auto it = std::find(input_names.begin(), input_names.end(), mask_name);
    if (inputs.size() != 2 || it == input_names.end())
      throw Error(path + ": expected two inputs, images and " + mask_name + " (as subtune.task_select says), found " +
                  join(input_names) + "; compile the graph again");
    m.mask_input = size_t(it - input_names.begin());
    m.images_input = 1 - *m.mask_input;
    const detail::ValueInfo& mask = inputs[*m.mask_input];
    const int64_t k = int64_t(m.task_names.size());
    if (mask.type != "bool" || mask.shape.size() != 2 || (mask.shape[1] >= 0 && mask.shape[1] != k))
      throw Error(path + ": input " + mask_name + " is " + mask.type + " " + shape_str(mask.shape) + ", expected bool "
                  "[batch, " + std::to_string(k) + "] (one column per task) as subtune.task_select says; compile the "
                  "graph again");
  }
  const detail::ValueInfo& images = inputs[m.images_input];
  const auto& in_shape = images.shape;
  if (images.type != "float32" || in_shape.size() != 4 || (in_shape[1] >= 0 && in_shape[1] != 3) ||
      (in_shape[2] >= 0 && in_shape[2] != m.height) || (in_shape[3] >= 0 && in_shape[3] != m.width))
    throw Error(path + ": input " + images.name + " is " + shape_str(in_shape) + ", expected float32 [batch, 3, " +
                std::to_string(m.height) + ", " + std::to_string(m.width) + "] as subtune.input_size says");
  std::vector<std::string> output_names, types;
  for (const auto& out : b.outputs()) {
    output_names.push_back(out.name);
    types.push_back(out.type);
  }
  if (output_names != m.outputs)
    throw Error(path + ": metadata lists outputs " + join(m.outputs) + " but the graph has " + join(output_names) +
                "; the file was edited after compiling: compile it again");
  for (size_t i = 0; i < types.size(); ++i)
    if (types[i] != "float32")
      throw Error(path + ": output " + m.outputs[i] + " is " + types[i] + ", expected float32 (subtune graphs output "
                  "float32 logits); the graph was edited or not made by subtune-compile: compile it again");
  for (const auto& t : m.tasks)
    if (std::find(m.outputs.begin(), m.outputs.end(), t.name) == m.outputs.end())
      throw Error(path + ": task " + t.name + " has no output of that name; compile the graph again");
}

Model::~Model() = default;
Model::Model(Model&&) noexcept = default;
Model& Model::operator=(Model&&) noexcept = default;

const std::string& Model::path() const { return impl_->path; }
const std::vector<std::string>& Model::output_names() const { return impl_->outputs; }
const std::vector<TaskInfo>& Model::tasks() const { return impl_->tasks; }
const std::string& Model::arch() const { return impl_->arch; }
const std::string& Model::subtune_version() const { return impl_->version; }
int Model::metadata_schema() const { return impl_->schema; }
int Model::newest_metadata_schema() { return detail::graph_metadata_schema_version(); }
bool Model::verified() const { return impl_->verified; }
int Model::input_height() const { return impl_->height; }
int Model::input_width() const { return impl_->width; }
std::string Model::runtime() const { return impl_->backend->name(); }

const TaskInfo* Model::task(const std::string& name) const {
  for (const auto& t : impl_->tasks)
    if (t.name == name) return &t;
  return nullptr;
}

const std::vector<std::string>& Model::classes(const std::string& output) const {
  static const std::vector<std::string> none;
  const TaskInfo* t = task(output);
  return t ? t->classes : none;
}

std::optional<Preprocess> Model::preprocess() const {
  std::optional<Preprocess> chosen;
  std::string chosen_by;
  for (const auto& t : impl_->tasks) {
    if (!t.preprocess_problem.empty()) throw Error(t.preprocess_problem + "; preprocess the images yourself and call run()");
    if (!t.preprocess) continue;
    const Preprocess& p = *t.preprocess;
    if (p.height != impl_->height || p.width != impl_->width)
      throw Error(impl_->path + ": task " + t.name + " was trained at " + std::to_string(p.height) + "x" +
                  std::to_string(p.width) + " but the graph takes " + std::to_string(impl_->height) + "x" +
                  std::to_string(impl_->width) + "; preprocess the images yourself and call run()");
    if (!chosen) {
      chosen = p;
      chosen_by = t.name;
    } else if (chosen->mean != p.mean || chosen->std != p.std) {
      throw Error(impl_->path + ": tasks " + chosen_by + " and " + t.name + " were trained with different "
                  "normalisation, and one graph input takes one; preprocess the images yourself and call run()");
    }
  }
  return chosen;
}

// --- Task selection --------------------------------------------------------------------------------

namespace {

std::string mask_shape(int64_t batch, int64_t columns) {
  return "[" + std::to_string(batch) + ", " + std::to_string(columns) + "]";
}

}  // namespace

TaskMask::TaskMask(int64_t batch, int64_t columns) : batch_(batch), columns_(columns) {
  if (batch < 1 || columns < 1)
    throw Error("task mask " + mask_shape(batch, columns) + ": expected at least one image and one task column");
  values_.assign(size_t(batch) * size_t(columns), 0);
}

namespace {

size_t mask_index(const TaskMask& m, int64_t image, int64_t column) {
  if (image < 0 || image >= m.batch() || column < 0 || column >= m.columns())
    throw Error("task mask " + mask_shape(m.batch(), m.columns()) + ": no entry at image " + std::to_string(image) +
                ", column " + std::to_string(column) + "; images are 0 to " + std::to_string(m.batch() - 1) +
                ", columns 0 to " + std::to_string(m.columns() - 1));
  return size_t(image) * size_t(m.columns()) + size_t(column);
}

}  // namespace

void TaskMask::set(int64_t image, int64_t column, bool compute) {
  values_[mask_index(*this, image, column)] = compute ? 1 : 0;
}

bool TaskMask::get(int64_t image, int64_t column) const { return values_[mask_index(*this, image, column)] != 0; }

bool Model::task_select() const { return impl_->mask_input.has_value(); }

void Model::Impl::require_task_select() const {
  if (!mask_input)
    throw Error(path + " was compiled without --task-select: every image computes every task; recompile it with "
                "--task-select to choose tasks per image");
}

int64_t Model::Impl::column(const std::string& task) const {
  auto it = std::find(task_names.begin(), task_names.end(), task);
  if (it == task_names.end())
    throw Error(path + ": no task " + detail::python_repr(json(task)) + "; its tasks are " + join(task_names) +
                (task == outputs.front() ? " (the base is always computed)" : ""));
  return int64_t(it - task_names.begin());
}

TaskMask Model::task_mask(const std::vector<std::vector<std::string>>& tasks_per_image) const {
  impl_->require_task_select();
  if (tasks_per_image.empty())
    throw Error(impl_->path + ": tasks per image: expected one list of task names per image, found none");
  TaskMask mask(int64_t(tasks_per_image.size()), int64_t(impl_->task_names.size()));
  for (size_t i = 0; i < tasks_per_image.size(); ++i)
    for (const auto& name : tasks_per_image[i]) mask.set(int64_t(i), impl_->column(name));
  return mask;
}

TaskMask Model::task_mask(const std::vector<std::string>& tasks, int64_t batch) const {
  impl_->require_task_select();
  if (batch < 1) throw Error("batch " + std::to_string(batch) + ": expected at least one image");
  TaskMask mask(batch, int64_t(impl_->task_names.size()));
  for (const auto& name : tasks) {
    const int64_t c = impl_->column(name);
    for (int64_t i = 0; i < batch; ++i) mask.set(i, c);
  }
  return mask;
}

void Model::Impl::check_mask(const TaskMask& mask, int64_t batch) const {
  const int64_t k = int64_t(task_names.size());
  if (mask.batch() != batch || mask.columns() != k)
    throw Error(path + ": the task mask is " + mask_shape(mask.batch(), mask.columns()) + ", expected " +
                mask_shape(batch, k) + " (one row per image, one column per task: " + join(task_names) +
                "); build it with Model::task_mask");
}

// --- Runs ---------------------------------------------------------------------------------------------

namespace {

int64_t batch_of(const Tensor& images, int height, int width) {
  const auto& s = images.shape;
  if (s.size() != 4 || s[1] != 3 || s[2] != height || s[3] != width)
    throw Error("images are " + shape_str(s) + ", expected [batch, 3, " + std::to_string(height) + ", " +
                std::to_string(width) + "] (preprocessed, 3 channels, the graph's input size)");
  return s[0];
}

}  // namespace

void Model::Impl::check_images(const float* images, size_t size, int64_t batch) const {
  if (batch < 1) throw Error("batch " + std::to_string(batch) + ": expected at least one image");
  if (!images) throw Error("images: null pointer");
  const int64_t per_image = int64_t(3) * height * width;
  const bool too_large = batch > std::numeric_limits<int64_t>::max() / per_image;
  if (too_large || size != size_t(batch * per_image))
    throw Error("images hold " + std::to_string(size) + " values, a batch of " + std::to_string(batch) + " needs " +
                std::to_string(batch) + " x 3 x " + std::to_string(height) + " x " + std::to_string(width) +
                (too_large ? "" : " = " + std::to_string(batch * per_image)) +
                "; pass the buffer's size and its number of images");
}

// The images and the mask are checked; `mask` is null for a plain graph.
Outputs Model::Impl::run(const float* images, int64_t batch, const TaskMask* mask) const {
  std::vector<detail::Feed> feeds;
  feeds.push_back({images_input, images, {batch, 3, height, width}});
  if (mask) feeds.push_back({*mask_input, mask->data(), {mask->batch(), mask->columns()}});
  Outputs result;
  result.tensors = backend->run(feeds);
  result.names = outputs;
  return result;
}

Outputs Model::run(const float* images, size_t size, int64_t batch) const {
  impl_->check_images(images, size, batch);
  if (!impl_->mask_input) return impl_->run(images, batch, nullptr);
  TaskMask every(batch, int64_t(impl_->task_names.size()));  // no choice given: every task on every image
  for (int64_t i = 0; i < batch; ++i)
    for (int64_t c = 0; c < every.columns(); ++c) every.set(i, c);
  return impl_->run(images, batch, &every);
}

Outputs Model::run(const float* images, size_t size, int64_t batch, const TaskMask& tasks) const {
  impl_->require_task_select();
  impl_->check_images(images, size, batch);
  impl_->check_mask(tasks, batch);
  return impl_->run(images, batch, &tasks);
}

Outputs Model::run(const float* images, size_t size, int64_t batch, const std::vector<std::string>& tasks) const {
  impl_->require_task_select();
  impl_->check_images(images, size, batch);
  const TaskMask mask = task_mask(tasks, batch);
  return impl_->run(images, batch, &mask);
}

Outputs Model::run(const std::vector<float>& images, int64_t batch) const {
  return run(images.data(), images.size(), batch);
}
Outputs Model::run(const std::vector<float>& images, int64_t batch, const std::vector<std::string>& tasks) const {
  return run(images.data(), images.size(), batch, tasks);
}
Outputs Model::run(const std::vector<float>& images, int64_t batch, const TaskMask& tasks) const {
  return run(images.data(), images.size(), batch, tasks);
}
Outputs Model::run(const Tensor& images) const {
  return run(images.data.data(), images.data.size(), batch_of(images, impl_->height, impl_->width));
}
Outputs Model::run(const Tensor& images, const std::vector<std::string>& tasks) const {
  return run(images.data.data(), images.data.size(), batch_of(images, impl_->height, impl_->width), tasks);
}
Outputs Model::run(const Tensor& images, const TaskMask& tasks) const {
  return run(images.data.data(), images.data.size(), batch_of(images, impl_->height, impl_->width), tasks);
}

bool Model::runtime_available(Runtime runtime) {
  return runtime == Runtime::onnxruntime || detail::openvino_built();
}

std::vector<std::pair<int, float>> top_k(const float* row, int n, int k) {
  std::vector<std::pair<int, float>> all;
  all.reserve(n);
  for (int i = 0; i < n; ++i) all.emplace_back(i, row[i]);
  k = std::max(0, std::min(k, n));
  std::partial_sort(all.begin(), all.begin() + k, all.end(), [](const auto& a, const auto& b) {
    return a.second > b.second || (a.second == b.second && a.first < b.first);
  });
  all.resize(k);
  return all;
}

}  // namespace subtune
