// The ONNX Runtime backend (C++ API). The headers come from a package no newer than the runtime
// library; the API is initialised by hand so that a library without the headers' API version is
// one clear error instead of a crash (ORT_API_MANUAL_INIT).
#define ORT_API_MANUAL_INIT
#include <onnxruntime_cxx_api.h>

#include <mutex>
#include <optional>

#include "backend.hpp"

namespace subtune::detail {
namespace {

// The API table of the headers' version, checked once; then the process-wide environment.
Ort::Env& environment() {
  static std::once_flag once;
  static std::string failure;
  static std::unique_ptr<Ort::Env> env;
  std::call_once(once, [] {
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* api = base ? base->GetApi(ORT_API_VERSION) : nullptr;
    if (!api) {
      failure = std::string("the ONNX Runtime library (") + (base ? base->GetVersionString() : "unknown") +
                ") does not provide API version " + std::to_string(ORT_API_VERSION) +
                " that subtune was built with: rebuild against headers no newer than the library (cpp/get_sdk.sh)";
      return;
    }
    Ort::InitApi(api);
    env = std::make_unique<Ort::Env>(ORT_LOGGING_LEVEL_ERROR, "subtune");
  });
  if (!env) throw Error(failure);
  return *env;
}

class OnnxRuntimeBackend : public Backend {
 public:
  OnnxRuntimeBackend(const std::string& path, int threads) : path_(path) {
    Ort::Env& env = environment();  // before any Ort object: even a null one calls the API when destroyed
    try {
      Ort::SessionOptions so;
      so.SetLogSeverityLevel(3);
      so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
      so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      if (threads > 0) so.SetIntraOpNumThreads(threads);
      session_.emplace(env, path.c_str(), so);
      memory_.emplace(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault));
      Ort::AllocatorWithDefaultOptions alloc;
      for (size_t i = 0; i < session_->GetInputCount(); ++i)
        inputs_.push_back(session_->GetInputNameAllocated(i, alloc).get());
      for (size_t i = 0; i < session_->GetOutputCount(); ++i)
        outputs_.push_back(session_->GetOutputNameAllocated(i, alloc).get());
      for (const auto& n : outputs_) output_ptrs_.push_back(n.c_str());
      if (!inputs_.empty()) {
        Ort::TypeInfo type = session_->GetInputTypeInfo(0);  // owns what `info` views
        auto info = type.GetTensorTypeAndShapeInfo();
        float_input_ = info.GetElementType() == ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT;
        shape_ = info.GetShape();
      }
    } catch (const Ort::Exception& e) {
      throw Error(path + ": ONNX Runtime could not load it as an ONNX model (" + first_line(e.what()) +
                  "); expected a graph from subtune-compile");
    }
  }

  std::string name() const override { return std::string("onnxruntime ") + OrtGetApiBase()->GetVersionString(); }
  size_t input_count() const override { return inputs_.size(); }
  std::string input_name() const override { return inputs_.empty() ? "" : inputs_[0]; }
  bool input_is_float32() const override { return float_input_; }
  std::vector<int64_t> input_shape() const override { return shape_; }
  std::vector<std::string> output_names() const override { return outputs_; }

  std::vector<Tensor> run(const float* images, const std::array<int64_t, 4>& shape) override {
    size_t count = size_t(shape[0] * shape[1] * shape[2] * shape[3]);
    std::vector<Tensor> result;
    try {
      // ONNX Runtime reads the caller's buffer in place; it does not write to inputs.
      Ort::Value input = Ort::Value::CreateTensor<float>(*memory_, const_cast<float*>(images), count, shape.data(),
                                                         shape.size());
      const char* in_name = inputs_[0].c_str();
      auto values = session_->Run(Ort::RunOptions{nullptr}, &in_name, &input, 1, output_ptrs_.data(),
                                  output_ptrs_.size());
      result.reserve(values.size());
      for (auto& v : values) {
        auto info = v.GetTensorTypeAndShapeInfo();
        Tensor t;
        t.shape = info.GetShape();
        const float* p = v.GetTensorData<float>();
        t.data.assign(p, p + info.GetElementCount());
        result.push_back(std::move(t));
      }
    } catch (const Ort::Exception& e) {
      throw Error(path_ + ": ONNX Runtime failed to run a batch of " + std::to_string(shape[0]) + " (" +
                  first_line(e.what()) + ")");
    }
    return result;
  }

 private:
  std::string path_;
  std::optional<Ort::Session> session_;
  std::optional<Ort::MemoryInfo> memory_;
  std::vector<std::string> inputs_, outputs_;
  std::vector<const char*> output_ptrs_;
  std::vector<int64_t> shape_;
  bool float_input_ = false;
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(const std::string& path, int threads) {
  return std::make_unique<OnnxRuntimeBackend>(path, threads);
}

}  // namespace subtune::detail
