// Small helpers shared by the files of src/io (not part of the public interface).
#pragma once

#include <cstdint>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

namespace slearn::io_detail {

// "[2, 3]"
inline std::string shape_to_string(const std::vector<std::int64_t>& shape) {
  std::string text = "[";
  for (std::size_t i = 0; i < shape.size(); ++i) {
    if (i > 0) text += ", ";
    text += std::to_string(shape[i]);
  }
  return text + "]";
}

// "an integer", "a number", "a string", "an array", "null", ... for error messages.
inline std::string json_type_name(const nlohmann::json& value) {
  if (value.is_null()) return "null";
  if (value.is_number_integer()) return "an integer";
  if (value.is_number_float()) return "a number";
  if (value.is_boolean()) return "a boolean";
  if (value.is_array()) return "an array";
  if (value.is_object()) return "an object";
  return "a " + std::string(value.type_name());
}

// nlohmann's error without its tag: "[json.exception.parse_error.101] parse error at line 1, column 1: syntax
// error ..." -> "line 1, column 1: syntax error ...". The tag names a library's internals, not the user's file.
inline std::string json_error_text(const nlohmann::json::exception& e) {
  std::string what = e.what();
  if (what.rfind("[json.exception.", 0) == 0) {
    if (const auto bracket = what.find("] "); bracket != std::string::npos) what.erase(0, bracket + 2);
  }
  for (const char* prefix : {"parse error at ", "parse error: "}) {
    if (what.rfind(prefix, 0) == 0) what.erase(0, std::char_traits<char>::length(prefix));
  }
  return what;
}

}  // namespace slearn::io_detail
