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
      for (const auto& in : model->inputs()) inputs_.push_back(value_info(in));
      for (const auto& out : model->outputs()) outputs_.push_back(value_info(out));
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
  const std::vector<ValueInfo>& inputs() const override { return inputs_; }
  const std::vector<ValueInfo>& outputs() const override { return outputs_; }

  std::vector<Tensor> run(const std::vector<Feed>& feeds) override {
    std::lock_guard<std::mutex> lock(mutex_);  // one infer request: one run at a time
    std::vector<Tensor> result;
    const int64_t batch = feeds.empty() || feeds[0].shape.empty() ? 0 : feeds[0].shape[0];
    try {
      for (const Feed& feed : feeds) {
        ov::Shape shape(feed.shape.begin(), feed.shape.end());
        // Read in place. OpenVINO's boolean element is one byte (0 or 1), as the feed's.
        const ov::element::Type type = inputs_[feed.input].type == "bool" ? ov::element::boolean : ov::element::f32;
        request_.set_input_tensor(feed.input, ov::Tensor(type, shape, const_cast<void*>(feed.data)));
      }
      request_.infer();
      for (size_t i = 0; i < outputs_.size(); ++i) {
        ov::Tensor out = request_.get_output_tensor(i);
        if (out.get_element_type() != ov::element::f32)  // checked at load; never read as float
          throw Error(path_ + ": output " + outputs_[i].name + " came back as " + type_name(out.get_element_type()) +
                      ", expected float32");
        Tensor t;
        for (size_t d : out.get_shape()) t.shape.push_back(int64_t(d));
        const float* p = out.data<const float>();
        t.data.assign(p, p + out.get_size());
        result.push_back(std::move(t));
      }
    } catch (const std::exception& e) {
      throw Error(path_ + ": OpenVINO failed to run a batch of " + std::to_string(batch) + " (" +
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
  template <typename Port>
  static ValueInfo value_info(const Port& port) {
    ValueInfo info{port.get_any_name(), type_name(port.get_element_type()), {}};
    for (const auto& d : port.get_partial_shape()) info.shape.push_back(d.is_static() ? d.get_length() : -1);
    return info;
  }
  static ov::Core& core() {
    static ov::Core instance;
    return instance;
  }
  std::string path_;
  std::mutex mutex_;
  ov::CompiledModel compiled_;
  ov::InferRequest request_;
  std::vector<ValueInfo> inputs_, outputs_;
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
