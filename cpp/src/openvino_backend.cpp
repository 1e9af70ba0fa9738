// The OpenVINO backend (optional: built when CMake finds the OpenVINO SDK that its PyPI wheel
// ships). Inference precision is pinned to f32: on CPUs with bf16 OpenVINO's default is bf16,
// which moves outputs by ~3e-4 relative.
#include "backend.hpp"

#ifdef SUBTUNE_WITH_OPENVINO
#include <mutex>

#include <openvino/openvino.hpp>

namespace subtune::detail {
namespace {

class OpenVinoBackend : public Backend {
 public:
  OpenVinoBackend(const std::string& path, int threads) : path_(path) {
    try {
      std::shared_ptr<ov::Model> model = core().read_model(path);
      for (const auto& in : model->inputs()) inputs_.push_back(in.get_any_name());
      for (const auto& out : model->outputs()) {
        outputs_.push_back(out.get_any_name());
        output_types_.push_back(type_name(out.get_element_type()));
      }
      if (!inputs_.empty()) {
        float_input_ = model->input(0).get_element_type() == ov::element::f32;
        for (const auto& d : model->input(0).get_partial_shape()) shape_.push_back(d.is_static() ? d.get_length() : -1);
      }
      ov::AnyMap config{ov::hint::inference_precision(ov::element::f32)};
      if (threads > 0) config.emplace(ov::inference_num_threads(threads));
      compiled_ = core().compile_model(model, "CPU", config);
      request_ = compiled_.create_infer_request();
    } catch (const std::exception& e) {
      throw Error(path + ": OpenVINO could not load it (" + first_line(e.what()) +
                  "); expected a graph from subtune-compile");
    }
  }

  std::string name() const override {
    std::string build = ov::get_openvino_version().buildNumber;  // "2026.4.1-22982-<commit>-releases/..."
    return "openvino " + build.substr(0, build.find('-'));
  }
  size_t input_count() const override { return inputs_.size(); }
  std::string input_name() const override { return inputs_.empty() ? "" : inputs_[0]; }
  bool input_is_float32() const override { return float_input_; }
  std::vector<int64_t> input_shape() const override { return shape_; }
  std::vector<std::string> output_names() const override { return outputs_; }
  std::vector<std::string> output_types() const override { return output_types_; }

  std::vector<Tensor> run(const float* images, const std::array<int64_t, 4>& shape) override {
    std::lock_guard<std::mutex> lock(mutex_);  // one infer request: one run at a time
    std::vector<Tensor> result;
    try {
      ov::Shape s{size_t(shape[0]), size_t(shape[1]), size_t(shape[2]), size_t(shape[3])};
      request_.set_input_tensor(ov::Tensor(ov::element::f32, s, const_cast<float*>(images)));  // read in place
      request_.infer();
      for (size_t i = 0; i < outputs_.size(); ++i) {
        ov::Tensor out = request_.get_output_tensor(i);
        if (out.get_element_type() != ov::element::f32)  // checked at load; never read as float
          throw Error(path_ + ": output " + outputs_[i] + " came back as " + type_name(out.get_element_type()) +
                      ", expected float32");
        Tensor t;
        for (size_t d : out.get_shape()) t.shape.push_back(int64_t(d));
        const float* p = out.data<const float>();
        t.data.assign(p, p + out.get_size());
        result.push_back(std::move(t));
      }
    } catch (const std::exception& e) {
      throw Error(path_ + ": OpenVINO failed to run a batch of " + std::to_string(shape[0]) + " (" +
                  first_line(e.what()) + ")");
    }
    return result;
  }

 private:
  // ONNX's numpy-style names for OpenVINO's element types (f32 -> float32).
  static std::string type_name(const ov::element::Type& type) {
    static const std::pair<ov::element::Type, const char*> names[] = {
        {ov::element::f32, "float32"}, {ov::element::f16, "float16"}, {ov::element::bf16, "bfloat16"},
        {ov::element::f64, "float64"}, {ov::element::i8, "int8"},     {ov::element::u8, "uint8"},
        {ov::element::i16, "int16"},   {ov::element::u16, "uint16"},  {ov::element::i32, "int32"},
        {ov::element::u32, "uint32"},  {ov::element::i64, "int64"},   {ov::element::u64, "uint64"},
        {ov::element::boolean, "bool"}};
    for (const auto& [t, name] : names)
      if (t == type) return name;
    return type.get_type_name();
  }
  static ov::Core& core() {
    static ov::Core instance;
    return instance;
  }
  std::string path_;
  std::mutex mutex_;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
  std::vector<std::string> inputs_, outputs_, output_types_;
  std::vector<int64_t> shape_;
  bool float_input_ = false;
};

}  // namespace

bool openvino_built() { return true; }
std::unique_ptr<Backend> make_openvino_backend(const std::string& path, int threads) {
  return std::make_unique<OpenVinoBackend>(path, threads);
}

}  // namespace subtune::detail

#else

namespace subtune::detail {
bool openvino_built() { return false; }
std::unique_ptr<Backend> make_openvino_backend(const std::string&, int) {
  throw Error("this subtune build has no OpenVINO runtime: pip install openvino, then configure again "
              "(cmake -S cpp -B build -DSUBTUNE_WITH_OPENVINO=ON)");
}
}  // namespace subtune::detail

#endif
