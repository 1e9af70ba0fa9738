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

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;  // e.g. "onnxruntime 1.32.0"
  virtual size_t input_count() const = 0;
  virtual std::string input_name() const = 0;
  virtual bool input_is_float32() const = 0;
  virtual std::vector<int64_t> input_shape() const = 0;  // -1 for a dynamic dimension
  virtual std::vector<std::string> output_names() const = 0;
  // Each output's element type, named as ONNX names them in numpy style: "float32", "int64", ...
  virtual std::vector<std::string> output_types() const = 0;
  // images [batch, 3, H, W] (read in place, not written); outputs in output_names() order.
  virtual std::vector<Tensor> run(const float* images, const std::array<int64_t, 4>& shape) = 0;
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
