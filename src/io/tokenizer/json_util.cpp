#include "json_util.h"

#include "remat/io/tokenizer.h"
#include "utf8.h"

namespace remat::io::detail {

void fail(const std::string& message) { throw TokenizerError("remat::io::Tokenizer: " + message); }

void expect_object(const Json& value, std::string_view where) {
  if (!value.is_object()) {
    fail(std::string(where) + " must be a JSON object, got " + brief(value));
  }
}

const Json& required_field(const Json& object, const char* key, std::string_view where) {
  expect_object(object, where);
  auto it = object.find(key);
  if (it == object.end()) fail(std::string(where) + " has no \"" + key + "\" field");
  return *it;
}

const Json* optional_field(const Json& object, const char* key) {
  if (!object.is_object()) return nullptr;
  auto it = object.find(key);
  if (it == object.end() || it->is_null()) return nullptr;
  return &*it;
}

std::string string_field(const Json& object, const char* key, std::string_view where) {
  const Json& value = required_field(object, key, where);
  if (!value.is_string()) {
    fail(std::string(where) + "." + key + " must be a string, got " + brief(value));
  }
  return value.get<std::string>();
}

bool bool_field(const Json& object, const char* key, std::string_view where, bool fallback) {
  const Json* value = optional_field(object, key);
  if (value == nullptr) return fallback;
  if (!value->is_boolean()) {
    fail(std::string(where) + "." + key + " must be true or false, got " + brief(*value));
  }
  return value->get<bool>();
}

std::string component_type(const Json& object, std::string_view where) {
  return string_field(object, "type", where);
}

std::string brief(const Json& value) {
  constexpr size_t kMaxLength = 80;
  std::string text = value.dump(-1, ' ', false, Json::error_handler_t::replace);
  if (text.size() > kMaxLength) text = utf8_lossy(text.substr(0, kMaxLength)) + "...";
  return text;
}

}  // namespace remat::io::detail
