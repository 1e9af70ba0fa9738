// Internal: what subtune::Model needs of a runtime, and the ONNX metadata reader the runtimes share.
#pragma once

#include <array>
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "subtune/model.hpp"

namespace subtune::detail {

// A graph input or output as the runtime sees it: its name, its element type named as ONNX names
// them in numpy style ("float32", "bool", "int64", ...; "not a tensor" for a sequence or map) and
// its shape (-1 for a dynamic dimension).
struct ValueInfo {
  std::string name;
  std::string type;
  std::vector<int64_t> shape;
};

// One input of a run: inputs()[input], `data` laid out row-major in `shape` (float32 for a float32
// input, one byte of 0 or 1 per element for a bool input); read in place, never written.
struct Feed {
  size_t input = 0;
  const void* data = nullptr;
  std::vector<int64_t> shape;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // e.g. "onnxruntime 1.32.0"
  virtual const std::vector<ValueInfo>& inputs() const = 0;
  virtual const std::vector<ValueInfo>& outputs() const = 0;
  // One feed per input; the outputs in outputs() order, each checked to be float32.
  virtual std::vector<Tensor> run(const std::vector<Feed>& feeds) = 0;
};

// Each throws subtune::Error with one line when the file cannot be loaded.
std::unique_ptr<Backend> make_onnxruntime_backend(const std::string& path, int threads);
std::unique_ptr<Backend> make_openvino_backend(const std::string& path, int threads);
bool openvino_built();

// What subtune reads of an ONNX file without any runtime (the graph's nodes and its weights are
// skipped, not parsed): ModelProto.metadata_props (key -> value) and the initializers whose weights
// live in external data files (ONNX files over 2 GiB keep them in model.onnx.data beside them).
struct ExternalData {
  std::string tensor;    // the initializer's name
  std::string location;  // relative to the model's folder
  uint64_t offset = 0;
  int64_t length = -1;   // -1: to the end of the file
};
struct OnnxFileInfo {
  std::map<std::string, std::string> metadata;
  std::vector<ExternalData> external;
};
// Throws subtune::Error for a file that is not ONNX.
OnnxFileInfo read_onnx_file(const std::string& path);
// Throws subtune::Error (one line) when an external data file is missing, outside the model's
// folder, or shorter than the graph reads.
void check_external_data(const std::string& path, const OnnxFileInfo& info);

std::string first_line(const std::string& text);

}  // namespace subtune::detail
