// The compiled graph's metadata against its one definition (see graph_metadata.hpp). The messages
// are subtune/graph_metadata.py's, word for word: values in them are written as Python writes them
// (repr, json.dumps), so that a graph gets the same line from every reader.
#include "graph_metadata.hpp"

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <mutex>
#include <vector>

#include "backend.hpp"

namespace subtune::detail {
namespace {

using json = nlohmann::ordered_json;

constexpr const char* kPrefix = "subtune.";

// --- Python's spelling of values -------------------------------------------------------------------

// The first n code points of UTF-8 text (Python slices strings by code point).
std::string utf8_prefix(const std::string& s, size_t n) {
  size_t i = 0, points = 0;
  while (i < s.size() && points < n) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    i += c < 0x80 ? 1 : c < 0xE0 ? 2 : c < 0xF0 ? 3 : 4;
    ++points;
  }
  return s.substr(0, std::min(i, s.size()));
}

std::string hex_escape(const char* format, unsigned value) {
  char buf[16];
  std::snprintf(buf, sizeof buf, format, value);
  return buf;
}

// repr(str): single quotes unless the text holds ' and no ", escapes for \ and control characters.
std::string py_str_repr(const std::string& s) {
  const char quote = (s.find('\'') != std::string::npos && s.find('"') == std::string::npos) ? '"' : '\'';
  std::string out(1, quote);
  for (unsigned char c : s) {
    if (c == '\\') out += "\\\\";
    else if (c == static_cast<unsigned char>(quote)) out += std::string("\\") + quote;
    else if (c == '\n') out += "\\n";
    else if (c == '\r') out += "\\r";
    else if (c == '\t') out += "\\t";
    else if (c < 0x20 || c == 0x7f) out += hex_escape("\\x%02x", c);
    else out += static_cast<char>(c);
  }
  return out + quote;
}

// json.dumps(str) with ensure_ascii: \uXXXX for everything outside printable ASCII.
std::string py_json_string(const std::string& s) {
  std::string out = "\"";
  for (size_t i = 0; i < s.size();) {
    unsigned char c = static_cast<unsigned char>(s[i]);
    uint32_t cp = c;
    size_t len = 1;
    if (c >= 0xF0 && i + 3 < s.size()) {
      cp = ((c & 0x07u) << 18) | ((s[i + 1] & 0x3Fu) << 12) | ((s[i + 2] & 0x3Fu) << 6) | (s[i + 3] & 0x3Fu);
      len = 4;
    } else if (c >= 0xE0 && i + 2 < s.size()) {
      cp = ((c & 0x0Fu) << 12) | ((s[i + 1] & 0x3Fu) << 6) | (s[i + 2] & 0x3Fu);
      len = 3;
    } else if (c >= 0xC0 && i + 1 < s.size()) {
      cp = ((c & 0x1Fu) << 6) | (s[i + 1] & 0x3Fu);
      len = 2;
    }
    i += len;
    if (cp == '"') out += "\\\"";
    else if (cp == '\\') out += "\\\\";
    else if (cp == '\n') out += "\\n";
    else if (cp == '\r') out += "\\r";
    else if (cp == '\t') out += "\\t";
    else if (cp == '\b') out += "\\b";
    else if (cp == '\f') out += "\\f";
    else if (cp < 0x20 || cp > 0x7e) {
      if (cp > 0xFFFF) {
        cp -= 0x10000;
        out += hex_escape("\\u%04x", 0xD800 + (cp >> 10)) + hex_escape("\\u%04x", 0xDC00 + (cp & 0x3FF));
      } else {
        out += hex_escape("\\u%04x", cp);
      }
    } else {
      out += static_cast<char>(cp);
    }
  }
  return out + "\"";
}

// json.dumps(value): ", " and ": " separators, keys in their order.
std::string py_json_dumps(const json& v) {
  if (v.is_string()) return py_json_string(v.get<std::string>());
  if (v.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + py_json_dumps(v[i]);
    return out + "]";
  }
  if (v.is_object()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, item] : v.items()) {
      out += (first ? "" : ", ") + py_json_string(k) + ": " + py_json_dumps(item);
      first = false;
    }
    return out + "}";
  }
  return v.dump();  // numbers, true, false, null: the same text
}

// repr(value) of the value json.loads gives.
std::string py_repr(const json& v) {
  if (v.is_null()) return "None";
  if (v.is_boolean()) return v.get<bool>() ? "True" : "False";
  if (v.is_string()) return py_str_repr(v.get<std::string>());
  if (v.is_array()) {
    std::string out = "[";
    for (size_t i = 0; i < v.size(); ++i) out += (i ? ", " : "") + py_repr(v[i]);
    return out + "]";
  }
  if (v.is_object()) {
    std::string out = "{";
    bool first = true;
    for (const auto& [k, item] : v.items()) {
      out += (first ? "" : ", ") + py_str_repr(k) + ": " + py_repr(item);
      first = false;
    }
    return out + "}";
  }
  return v.dump();
}

// --- The checker: graph_metadata.check ----------------------------------------------------------

const std::vector<std::string> kAllTypes = {"string", "integer", "number", "boolean", "array", "object", "null"};

bool is_type(const json& v, const std::string& type) {
  if (type == "string") return v.is_string();
  if (type == "integer") return v.is_number_integer();
  if (type == "number") return v.is_number();
  if (type == "boolean") return v.is_boolean();
  if (type == "array") return v.is_array();
  if (type == "object") return v.is_object();
  if (type == "null") return v.is_null();
  return false;
}

std::vector<std::string> types_of(const json& schema) {
  auto it = schema.find("type");
  if (it == schema.end()) return kAllTypes;
  if (it->is_array()) return it->get<std::vector<std::string>>();
  return {it->get<std::string>()};
}

std::string describe(const json& v) {
  std::string text = v.is_string() ? py_str_repr(v.get<std::string>()) : py_json_dumps(v);
  std::string kind = "null";
  if (!v.is_null())
    for (const char* t : {"boolean", "integer", "number", "string", "array", "object"})
      if (is_type(v, t)) {
        kind = t;
        break;
      }
  return kind + " " + utf8_prefix(text, 40);
}

}  // namespace

std::string python_repr(const json& value) { return py_repr(value); }

std::string check_metadata_value(const json& value, const json& schema, const std::string& where) {
  std::vector<std::string> types = types_of(schema);
  if (std::none_of(types.begin(), types.end(), [&](const std::string& t) { return is_type(value, t); })) {
    std::sort(types.begin(), types.end());
    std::string expected;
    for (size_t i = 0; i < types.size(); ++i) expected += (i ? " or " : "") + types[i];
    return where + " is " + describe(value) + ", expected " + expected;
  }
  if (auto e = schema.find("enum"); e != schema.end() && std::find(e->begin(), e->end(), value) == e->end())
    return where + " is " + py_repr(value) + ", expected one of " + py_repr(*e);
  if (auto m = schema.find("minimum"); m != schema.end() && value.is_number() && !value.is_boolean() &&
                                       value.get<double>() < m->get<double>())
    return where + " is " + py_repr(value) + ", expected at least " + m->dump();
  if (value.is_array()) {
    const size_t lo = schema.value("minItems", size_t(0));
    const bool bounded = schema.contains("maxItems");
    const size_t hi = bounded ? schema["maxItems"].get<size_t>() : 0;
    if (value.size() < lo || (bounded && value.size() > hi)) {
      std::string span = bounded && hi == lo ? std::to_string(lo)
                         : bounded          ? std::to_string(lo) + " to " + std::to_string(hi)
                                            : "at least " + std::to_string(lo);
      return where + " has " + std::to_string(value.size()) + " items, expected " + span;
    }
    if (auto items = schema.find("items"); items != schema.end())
      for (size_t i = 0; i < value.size(); ++i) {
        std::string problem = check_metadata_value(value[i], *items, where + "[" + std::to_string(i) + "]");
        if (!problem.empty()) return problem;
      }
  }
  if (value.is_object()) {
    std::vector<std::string> missing;
    if (auto req = schema.find("required"); req != schema.end())
      for (const auto& k : *req)
        if (!value.contains(k.get<std::string>())) missing.push_back(py_str_repr(k.get<std::string>()));
    if (!missing.empty()) {
      std::string list;
      for (size_t i = 0; i < missing.size(); ++i) list += (i ? ", " : "") + missing[i];
      return where + " lacks " + list;
    }
    const json none;
    const json& props = schema.contains("properties") ? schema["properties"] : none;
    const json* extra = schema.contains("additionalProperties") && schema["additionalProperties"].is_object()
                            ? &schema["additionalProperties"] : nullptr;
    for (const auto& [k, v] : value.items()) {
      const json* sub = props.is_object() && props.contains(k) ? &props[k] : extra;
      if (!sub) continue;
      std::string problem = check_metadata_value(v, *sub, where + "[" + py_str_repr(k) + "]");
      if (!problem.empty()) return problem;
    }
  }
  return "";
}

const json& graph_metadata_definition() {
  static std::once_flag once;
  static json definition;
  std::call_once(once, [] { definition = json::parse(kGraphMetadataDefinition); });
  return definition;
}

int graph_metadata_schema_version() { return graph_metadata_definition().at("schema_version").get<int>(); }

const std::string& graph_metadata_version_key() {
  static const std::string key = graph_metadata_definition().at("version_key").get<std::string>();
  return key;
}

json decode_graph_metadata(const std::map<std::string, std::string>& props, const std::string& where) {
  const json& keys = graph_metadata_definition().at("keys");
  const std::string& version_key = graph_metadata_version_key();
  const int newest = graph_metadata_schema_version();
  json out = json::object();
  for (const auto& [key, raw] : props) {
    if (key.rfind(kPrefix, 0) != 0) continue;
    const json* spec = keys.contains(key) ? &keys[key] : nullptr;
    if (spec && types_of(spec->at("schema")) == std::vector<std::string>{"string"}) {
      out[key] = raw;
      continue;
    }
    try {
      out[key] = json::parse(raw);
    } catch (const json::exception&) {
      if (spec)
        throw Error(where + ": metadata " + key + " is not valid JSON (" + py_str_repr(utf8_prefix(raw, 60)) +
                    "); compile the graph again");
      out[key] = raw;
    }
  }
  if (out.empty())
    throw Error(where + ": not a subtune graph (its ONNX metadata has no subtune.* keys); "
                "compile one with subtune-compile base.pt task.pt ... -o model.onnx");
  // Graphs from before the version key existed have version 1's layout.
  const json version = out.contains(version_key) ? out[version_key] : json(1);
  if (!version.is_number_integer() || version.get<int64_t>() < 1)
    throw Error(where + ": metadata " + version_key + " is " + py_repr(version) +
                ", expected a positive integer; compile the graph again");
  if (version.get<int64_t>() > newest)
    throw Error(where + ": the graph's metadata follows schema " + version.dump() + ", this reader knows schema " +
                std::to_string(newest) + " at most; upgrade subtune (or compile the graph with this version)");
  if (!out.contains(version_key)) out[version_key] = version;
  std::vector<std::string> missing;
  for (const auto& [key, spec] : keys.items())
    if (spec.value("required", false) && !out.contains(key)) missing.push_back(key);
  if (!missing.empty()) {
    std::string list;
    for (size_t i = 0; i < missing.size(); ++i) list += (i ? ", " : "") + missing[i];
    throw Error(where + ": the graph's metadata lacks " + list +
                ", which every subtune graph records; compile it again with subtune-compile");
  }
  // A key newer than the graph's stamp: a reader of that schema would misread the graph.
  for (const auto& [key, value] : out.items()) {
    if (!keys.contains(key)) continue;
    const int since = keys[key].value("since", 1);
    if (since > version.get<int64_t>())
      throw Error(where + ": metadata " + key + " came with schema " + std::to_string(since) +
                  ", but the graph's metadata says schema " + version.dump() + "; compile the graph again");
  }
  for (const auto& [key, value] : out.items()) {
    if (!keys.contains(key)) continue;
    std::string problem = check_metadata_value(value, keys[key].at("schema"), key);
    if (!problem.empty()) throw Error(where + ": metadata " + problem + "; compile the graph again");
  }
  return out;
}

}  // namespace subtune::detail
