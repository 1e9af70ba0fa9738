// Internal: the compiled graph's metadata, read against the one definition of its keys,
// subtune/graph_metadata.schema.json, which CMake embeds into the library at build time (so the
// C++ and Python readers cannot drift). The rules are subtune/graph_metadata.py's `decode`, with
// the same one-line messages: a graph from a newer schema, one that lacks a required key, or a
// value of the wrong type is refused; keys the definition does not know are kept unchecked.
#pragma once

#include <nlohmann/json.hpp>

#include <map>
#include <string>

namespace subtune::detail {

// The definition's text as embedded (generated from the repository's JSON file).
extern const char* const kGraphMetadataDefinition;

const nlohmann::ordered_json& graph_metadata_definition();  // parsed once
int graph_metadata_schema_version();                // the newest schema this library reads
const std::string& graph_metadata_version_key();    // "subtune.schema"

// The graph's subtune.* metadata as values (strings for string-typed keys, parsed JSON otherwise),
// checked; throws subtune::Error naming `where` for anything `decode` refuses.
nlohmann::ordered_json decode_graph_metadata(const std::map<std::string, std::string>& props, const std::string& where);

// The first way `value` breaks `schema` (the JSON Schema subset the definition uses), as
// "WHERE is FOUND, expected EXPECTED"; empty when it fits. graph_metadata.check's twin.
// repr(value) of the value json.loads gives, as Python writes it in its messages ("['a', 'b']").
std::string python_repr(const nlohmann::ordered_json& value);

std::string check_metadata_value(const nlohmann::ordered_json& value, const nlohmann::ordered_json& schema, const std::string& where);

}  // namespace subtune::detail
