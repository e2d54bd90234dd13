#pragma once

// Reading tokenizer.json and tokenizer_config.json fields with errors that
// say which field is wrong and what was expected.

#include <nlohmann/json.hpp>

#include <string>
#include <string_view>

namespace remat::io::detail {

using Json = nlohmann::json;

/// Throws TokenizerError("remat::io::Tokenizer: <message>").
[[noreturn]] void fail(const std::string& message);

/// Fails unless `value` is a JSON object; `where` names it ("model").
void expect_object(const Json& value, std::string_view where);

/// `object[key]`, failing if it is missing.
const Json& required_field(const Json& object, const char* key, std::string_view where);

/// `object[key]`, or nullptr when it is missing or null.
const Json* optional_field(const Json& object, const char* key);

/// `object[key]` as a string, failing if it is missing or not a string.
std::string string_field(const Json& object, const char* key, std::string_view where);

/// `object[key]` as a bool; `fallback` when missing or null.
bool bool_field(const Json& object, const char* key, std::string_view where, bool fallback);

/// The "type" string of a component object.
std::string component_type(const Json& object, std::string_view where);

/// A short rendering of `value` for error messages.
std::string brief(const Json& value);

}  // namespace remat::io::detail
