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

// The API table of the headers' version, checked once; then the process-wide environment with
// global thread pools, which every session shares (DisablePerSessionThreads): several models in one
// process use one intra-op pool, sized by the first model's Options::threads.
struct Environment {
  std::mutex mutex;
  bool initialised = false;
  std::string failure;
  std::unique_ptr<Ort::Env> env;
  int threads = 0;  // the pool's intra-op threads as asked for; 0: ONNX Runtime's default
};

Environment& environment_state() {
  static Environment state;
  return state;
}

std::string pool_size(int threads) {
  return threads > 0 ? std::to_string(threads) + " threads" : "ONNX Runtime's default number of threads";
}

Ort::Env& environment(int threads) {
  Environment& e = environment_state();
  std::lock_guard<std::mutex> lock(e.mutex);
  if (!e.initialised) {
    e.initialised = true;
    const OrtApiBase* base = OrtGetApiBase();
    const OrtApi* api = base ? base->GetApi(ORT_API_VERSION) : nullptr;
    if (!api) {
      e.failure = std::string("the ONNX Runtime library (") + (base ? base->GetVersionString() : "unknown") +
                  ") does not provide API version " + std::to_string(ORT_API_VERSION) +
                  " that subtune was built with: rebuild against headers no newer than the library (cpp/get_sdk.sh)";
    } else {
      Ort::InitApi(api);
      try {
        Ort::ThreadingOptions pools;
        pools.SetGlobalIntraOpNumThreads(threads);  // 0: one per physical core
        pools.SetGlobalInterOpNumThreads(1);        // sessions run sequentially: no inter-op pool
        e.env = std::make_unique<Ort::Env>(static_cast<const OrtThreadingOptions*>(pools), ORT_LOGGING_LEVEL_ERROR,
                                           "subtune");
        e.threads = threads;
      } catch (const Ort::Exception& ex) {
        e.failure = std::string("ONNX Runtime could not create its environment (") + first_line(ex.what()) + ")";
      }
    }
  }
  if (!e.env) throw Error(e.failure);
  if (threads != 0 && threads != e.threads)
    throw Error("threads " + std::to_string(threads) + ": the models of one process share one ONNX Runtime thread "
                "pool, made with " + pool_size(e.threads) + " by the first model; pass threads " +
                (e.threads > 0 ? std::to_string(e.threads) + " or 0" : std::string("0")) + " to share it");
  return *e.env;
}

const char* element_type_name(ONNXTensorElementDataType type) {
  switch (type) {
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT: return "float32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT8: return "uint8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT8: return "int8";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT16: return "uint16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT16: return "int16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT32: return "int32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_INT64: return "int64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_STRING: return "string";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL: return "bool";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT16: return "float16";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_DOUBLE: return "float64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT32: return "uint32";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_UINT64: return "uint64";
    case ONNX_TENSOR_ELEMENT_DATA_TYPE_BFLOAT16: return "bfloat16";
    default: return "another element type";
  }
}

// A graph input or output: its name, element type ("not a tensor" for a sequence or map) and shape.
ValueInfo value_info(const std::string& name, const Ort::TypeInfo& type) {
  ValueInfo info{name, "not a tensor", {}};
  if (type.GetONNXType() != ONNX_TYPE_TENSOR) return info;
  auto tensor = type.GetTensorTypeAndShapeInfo();  // a view into `type`
  info.type = element_type_name(tensor.GetElementType());
  info.shape = tensor.GetShape();
  return info;
}

static_assert(sizeof(bool) == 1, "ONNX Runtime's bool tensors are read as one byte per element");

class OnnxRuntimeBackend : public Backend {
 public:
  OnnxRuntimeBackend(const std::string& path, int threads) : path_(path) {
    Ort::Env& env = environment(threads);  // before any Ort object: even a null one calls the API when destroyed
    try {
      Ort::SessionOptions so;
      so.SetLogSeverityLevel(3);
      so.SetExecutionMode(ExecutionMode::ORT_SEQUENTIAL);
      so.SetGraphOptimizationLevel(GraphOptimizationLevel::ORT_ENABLE_ALL);
      so.DisablePerSessionThreads();  // the environment's global pools
      session_.emplace(env, path.c_str(), so);
      memory_.emplace(Ort::MemoryInfo::CreateCpu(OrtArenaAllocator, OrtMemTypeDefault));
      Ort::AllocatorWithDefaultOptions alloc;
      for (size_t i = 0; i < session_->GetInputCount(); ++i)
        inputs_.push_back(value_info(session_->GetInputNameAllocated(i, alloc).get(), session_->GetInputTypeInfo(i)));
      for (size_t i = 0; i < session_->GetOutputCount(); ++i)
        outputs_.push_back(value_info(session_->GetOutputNameAllocated(i, alloc).get(), session_->GetOutputTypeInfo(i)));
      for (const auto& in : inputs_) input_names_.push_back(in.name.c_str());
      for (const auto& out : outputs_) output_names_.push_back(out.name.c_str());
    } catch (const Ort::Exception& e) {
      throw Error(path + ": ONNX Runtime could not load it as an ONNX model (" + first_line(e.what()) +
                  "); expected a graph from subtune-compile");
    }
  }

  std::string name() const override { return std::string("onnxruntime ") + OrtGetApiBase()->GetVersionString(); }
  const std::vector<ValueInfo>& inputs() const override { return inputs_; }
  const std::vector<ValueInfo>& outputs() const override { return outputs_; }

  std::vector<Tensor> run(const std::vector<Feed>& feeds) override {
    std::vector<Tensor> result;
    const int64_t batch = feeds.empty() || feeds[0].shape.empty() ? 0 : feeds[0].shape[0];
    try {
      std::vector<const char*> names;
      std::vector<Ort::Value> values;
      for (const Feed& feed : feeds) {
        size_t count = 1;
        for (int64_t d : feed.shape) count *= size_t(d);
        // ONNX Runtime reads the caller's buffers in place; it does not write to inputs. A bool
        // element is one byte (0 or 1).
        const bool is_bool = inputs_[feed.input].type == "bool";
        values.push_back(Ort::Value::CreateTensor(
            *memory_, const_cast<void*>(feed.data), count * (is_bool ? sizeof(bool) : sizeof(float)), feed.shape.data(),
            feed.shape.size(), is_bool ? ONNX_TENSOR_ELEMENT_DATA_TYPE_BOOL : ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT));
        names.push_back(input_names_[feed.input]);
      }
      auto out = session_->Run(Ort::RunOptions{nullptr}, names.data(), values.data(), values.size(),
                               output_names_.data(), output_names_.size());
      result.reserve(out.size());
      for (size_t i = 0; i < out.size(); ++i) {
        Ort::Value& v = out[i];
        auto info = v.GetTensorTypeAndShapeInfo();
        if (info.GetElementType() != ONNX_TENSOR_ELEMENT_DATA_TYPE_FLOAT)  // checked at load; never read as float
          throw Error(path_ + ": output " + outputs_[i].name + " came back as " +
                      element_type_name(info.GetElementType()) + ", expected float32");
        Tensor t;
        t.shape = info.GetShape();
        const float* p = v.GetTensorData<float>();
        t.data.assign(p, p + info.GetElementCount());
        result.push_back(std::move(t));
      }
    } catch (const Ort::Exception& e) {
      throw Error(path_ + ": ONNX Runtime failed to run a batch of " + std::to_string(batch) + " (" +
                  first_line(e.what()) + ")");
    }
    return result;
  }

 private:
  std::string path_;
  std::optional<Ort::Session> session_;
  std::optional<Ort::MemoryInfo> memory_;
  std::vector<ValueInfo> inputs_, outputs_;
  std::vector<const char*> input_names_, output_names_;  // views of inputs_ and outputs_
};

}  // namespace

std::unique_ptr<Backend> make_onnxruntime_backend(const std::string& path, int threads) {
  return std::make_unique<OnnxRuntimeBackend>(path, threads);
}

}  // namespace subtune::detail
