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

}  // namespace slearn::io_detail
