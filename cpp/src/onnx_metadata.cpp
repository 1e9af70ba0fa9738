// A minimal protobuf walk over ONNX's ModelProto for its metadata_props (field 14, repeated
// StringStringEntryProto {key = 1, value = 2}); every other field is skipped by its length, so
// the graph's weights are never read into memory.
#include <cstdint>
#include <fstream>

#include "backend.hpp"

namespace subtune::detail {
namespace {

struct Reader {
  std::istream& in;
  uint64_t pos = 0, end = 0;

  bool varint(uint64_t& v) {
    v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
      int c = in.get();
      if (c == EOF) return false;
      ++pos;
      v |= uint64_t(c & 0x7f) << shift;
      if (!(c & 0x80)) return true;
    }
    return false;
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

}  // namespace

std::map<std::string, std::string> read_onnx_metadata(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  if (!f) throw Error(path + ": no such file or not readable; expected a graph from subtune-compile (model.onnx)");
  f.seekg(0, std::ios::end);
  Reader r{f, 0, uint64_t(f.tellg())};
  f.seekg(0);
  std::map<std::string, std::string> meta;
  const std::string broken = path + ": not an ONNX model (its protobuf is broken); expected a graph from subtune-compile";
  while (r.pos < r.end) {
    uint64_t tag;
    if (!r.varint(tag)) throw Error(broken);
    uint64_t field = tag >> 3, wire = tag & 7, v;
    if (wire == 0) {
      if (!r.varint(v)) throw Error(broken);
    } else if (wire == 1 || wire == 5) {
      uint64_t n = wire == 1 ? 8 : 4;
      if (n > r.end - r.pos) throw Error(broken);
      f.seekg(std::streamoff(n), std::ios::cur);
      r.pos += n;
    } else if (wire == 2) {
      uint64_t len;
      if (!r.varint(len) || len > r.end - r.pos) throw Error(broken);
      if (field == 14) {
        if (len > (64u << 20)) throw Error(broken);  // a metadata entry over 64 MiB is not subtune's
        std::string bytes(len, '\0');
        f.read(bytes.data(), std::streamsize(len));
        std::string key, value;
        if (!f || !parse_entry(bytes, key, value)) throw Error(broken);
        meta[key] = value;
      } else {
        f.seekg(std::streamoff(len), std::ios::cur);
      }
      r.pos += len;
    } else {
      throw Error(broken);
    }
    if (!f) throw Error(broken);
  }
  return meta;
}

}  // namespace subtune::detail
