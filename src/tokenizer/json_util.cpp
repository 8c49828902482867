// Reading tokenizer JSON with error messages that name the file and the key.
#include "slearn/error.hpp"
#include "tokenizer/components.hpp"

namespace slearn::tok {

void fail(const JsonFile& file, const std::string& message) { throw InputError(file.name + ": " + message); }

std::string json_quote(std::string_view s) { return json(std::string(s)).dump(); }

const json* find_member(const json& obj, std::string_view key) {
  if (!obj.is_object()) return nullptr;
  const auto it = obj.find(key);
  return it == obj.end() ? nullptr : &*it;
}

const json& require_member(const JsonFile& file, const json& obj, std::string_view key, const std::string& path) {
  const json* value = find_member(obj, key);
  if (!value) fail(file, path + " is missing");
  return *value;
}

std::string require_string(const JsonFile& file, const json& obj, std::string_view key, const std::string& path) {
  const json& value = require_member(file, obj, key, path);
  if (!value.is_string()) fail(file, path + " must be a string");
  return value.get<std::string>();
}

std::string optional_string(const JsonFile& file, const json& obj, std::string_view key, const std::string& path,
                            const std::string& fallback) {
  const json* value = find_member(obj, key);
  if (!value || value->is_null()) return fallback;
  if (!value->is_string()) fail(file, path + " must be a string");
  return value->get<std::string>();
}

bool optional_bool(const JsonFile& file, const json& obj, std::string_view key, const std::string& path, bool fallback) {
  const json* value = find_member(obj, key);
  if (!value || value->is_null()) return fallback;
  if (!value->is_boolean()) fail(file, path + " must be true or false");
  return value->get<bool>();
}

std::string component_type(const JsonFile& file, const json& obj, const std::string& path) {
  if (!obj.is_object()) fail(file, path + " must be an object");
  return require_string(file, obj, "type", path + ".type");
}

}  // namespace slearn::tok
