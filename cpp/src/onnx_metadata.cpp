// A minimal protobuf walk over ONNX's ModelProto, streamed from the file: its metadata_props
// (field 14, repeated StringStringEntryProto {key = 1, value = 2}) and, inside the graph (field 7),
// which initializers (GraphProto field 5, TensorProto) keep their bytes in external data files
// (TensorProto.data_location = 14 is EXTERNAL, external_data = 13 says where). Every other field is
// skipped by its length, so the weights are never read into memory.
#include <sys/stat.h>

#include <cstdint>
#include <fstream>

#include "backend.hpp"

namespace subtune::detail {
namespace {

constexpr uint64_t kMaxEntry = 64u << 20;  // a metadata or external-data entry over 64 MiB is not subtune's

struct Reader {
  std::istream& in;
  const std::string& broken;
  uint64_t pos = 0;

  uint64_t varint() {
    uint64_t v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      int c = in.get();
      if (c == EOF) throw Error(broken);
      ++pos;
      v |= uint64_t(c & 0x7f) << shift;
      if (!(c & 0x80)) return v;
    }
    throw Error(broken);
  }
  void skip(uint64_t n, uint64_t end) {
    if (n > end - pos) throw Error(broken);
    in.seekg(std::streamoff(n), std::ios::cur);
    pos += n;
    if (!in) throw Error(broken);
  }
  std::string bytes(uint64_t n, uint64_t end) {
    if (n > end - pos || n > kMaxEntry) throw Error(broken);
    std::string s(n, '\0');
    in.read(s.data(), std::streamsize(n));
    pos += n;
    if (!in) throw Error(broken);
    return s;
  }
  // Skip a field of this wire type (its tag already read).
  void skip_field(uint64_t wire, uint64_t end) {
    if (wire == 0) varint();
    else if (wire == 1) skip(8, end);
    else if (wire == 5) skip(4, end);
    else if (wire == 2) skip(varint(), end);
    else throw Error(broken);
  }
};

bool parse_entry(const std::string& bytes, std::string& key, std::string& value) {
  size_t i = 0;
  auto varint = [&](uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64 && i < bytes.size(); shift += 7) {
      uint8_t c = uint8_t(bytes[i++]);
      v |= uint64_t(c & 0x7f) << shift;
      if (!(c & 0x80)) return true;
    }
    return false;
  };
  while (i < bytes.size()) {
    uint64_t tag, len;
    if (!varint(tag)) return false;
    if ((tag & 7) != 2) return false;  // both fields are strings
    if (!varint(len) || len > bytes.size() - i) return false;
    std::string s = bytes.substr(i, len);
    i += len;
    if ((tag >> 3) == 1) key = s;
    if ((tag >> 3) == 2) value = s;
  }
  return true;
}

// TensorProto: its name (8), external_data (13) and data_location (14).
void read_tensor(Reader& r, uint64_t end, std::vector<ExternalData>& external) {
  ExternalData data;
  bool is_external = false;
  while (r.pos < end) {
    uint64_t tag = r.varint(), field = tag >> 3, wire = tag & 7;
    if (field == 8 && wire == 2) {
      data.tensor = r.bytes(r.varint(), end);
    } else if (field == 13 && wire == 2) {
      std::string key, value;
      if (!parse_entry(r.bytes(r.varint(), end), key, value)) throw Error(r.broken);
      try {
        if (key == "location") data.location = value;
        else if (key == "offset") data.offset = std::stoull(value);
        else if (key == "length") data.length = int64_t(std::stoull(value));
      } catch (const std::exception&) {
        throw Error(r.broken);
      }
    } else if (field == 14 && wire == 0) {
      is_external = r.varint() == 1;  // DataLocation.EXTERNAL
    } else {
      r.skip_field(wire, end);
    }
  }
  if (r.pos != end) throw Error(r.broken);
  if (is_external) external.push_back(std::move(data));
}

// GraphProto: its initializers (5).
void read_graph(Reader& r, uint64_t end, std::vector<ExternalData>& external) {
  while (r.pos < end) {
    uint64_t tag = r.varint(), field = tag >> 3, wire = tag & 7;
    if (field == 5 && wire == 2) {
      uint64_t len = r.varint();
      if (len > end - r.pos) throw Error(r.broken);
      read_tensor(r, r.pos + len, external);
    } else {
      r.skip_field(wire, end);
    }
  }
  if (r.pos != end) throw Error(r.broken);
}

}  // namespace

OnnxFileInfo read_onnx_file(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": no such file or not readable; expected a graph from subtune-compile (model.onnx)");
  f.seekg(0, std::ios::end);
  const uint64_t end = uint64_t(f.tellg());
  f.seekg(0);
  const std::string broken = path + ": not an ONNX model (its protobuf is broken); expected a graph from subtune-compile";
  Reader r{f, broken};
  OnnxFileInfo info;
  while (r.pos < end) {
    uint64_t tag = r.varint(), field = tag >> 3, wire = tag & 7;
    if (field == 14 && wire == 2) {
      std::string key, value;
      if (!parse_entry(r.bytes(r.varint(), end), key, value)) throw Error(broken);
      info.metadata[key] = value;
    } else if (field == 7 && wire == 2) {
      uint64_t len = r.varint();
      if (len > end - r.pos) throw Error(broken);
      read_graph(r, r.pos + len, info.external);
    } else {
      r.skip_field(wire, end);
    }
  }
  return info;
}

void check_external_data(const std::string& path, const OnnxFileInfo& info) {
  const std::string folder = path.find('/') == std::string::npos ? "." : path.substr(0, path.rfind('/') + 1);
  const std::string name = path.substr(path.rfind('/') + 1);
  std::map<std::string, uint64_t> needed;  // location -> the bytes the graph reads from it
  for (const auto& d : info.external) {
    if (d.location.empty() || d.location[0] == '/' || d.location.find("..") != std::string::npos)
      throw Error(path + ": initializer " + d.tensor + " keeps its weights at '" + d.location +
                  "', outside the model's folder; expected a file beside it (compile the graph again)");
    if (d.length < 0) continue;  // to the end of the file: any size is enough
    uint64_t& n = needed[d.location];
    n = std::max(n, d.offset + uint64_t(d.length));
  }
  for (const auto& d : info.external) needed.emplace(d.location, 0);
  for (const auto& [location, size] : needed) {
    const std::string file = (folder == "." ? "" : folder) + location;
    struct stat st {};
    if (stat(file.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
      throw Error(path + ": its weights are in " + file + " (ONNX external data), which does not exist; keep " + name +
                  " and " + location + " together in one folder");
    if (uint64_t(st.st_size) < size)
      throw Error(path + ": its weights file " + file + " holds " + std::to_string(st.st_size) +
                  " bytes but the graph reads " + std::to_string(size) + "; the file is truncated: copy it again");
  }
}

}  // namespace subtune::detail
