# Writes a C++ source that holds a text file as one string constant, so that the library reads the
# repository's file as it was at build time (the graph-metadata definition).
#   cmake -DINPUT=file -DOUTPUT=file.cpp -DSYMBOL=name -P embed_text.cmake
# The symbol is subtune::detail::SYMBOL (const char* const). The output is rewritten only when it
# changes, so an unchanged definition rebuilds nothing.
foreach(_var INPUT OUTPUT SYMBOL)
  if(NOT ${_var})
    message(FATAL_ERROR "embed_text.cmake: -D${_var}= is required")
  endif()
endforeach()
file(READ "${INPUT}" _text)
set(_delim "subtune_text")  # at most 16 characters
string(FIND "${_text}" ")${_delim}\"" _clash)
if(NOT _clash EQUAL -1)
  message(FATAL_ERROR "${INPUT} holds the raw-string delimiter )${_delim}\"; change the delimiter in ${CMAKE_CURRENT_LIST_FILE}")
endif()
set(_source "// Generated from ${INPUT} by cpp/cmake/embed_text.cmake: do not edit.
namespace subtune::detail {
extern const char* const ${SYMBOL};
const char* const ${SYMBOL} = R\"${_delim}(${_text})${_delim}\";
}  // namespace subtune::detail
")
if(EXISTS "${OUTPUT}")
  file(READ "${OUTPUT}" _old)
  if(_old STREQUAL _source)
    return()
  endif()
endif()
file(WRITE "${OUTPUT}" "${_source}")
