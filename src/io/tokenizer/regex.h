#pragma once

// Oniguruma regular expressions, compiled and searched the way Hugging Face
// tokenizers does (the Rust `onig` crate): UTF-8, the default (Ruby-like)
// syntax, no options.

#include <cstddef>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

struct re_pattern_buffer;  // Oniguruma's regex_t

namespace remat::io::detail {

/// A compiled Oniguruma pattern. Searching is thread-safe.
class Regex {
 public:
  /// Compiles `pattern`; throws TokenizerError quoting the pattern and
  /// Oniguruma's message if it is invalid. `what` names the pattern's origin.
  Regex(std::string_view pattern, std::string_view what);
  ~Regex();
  Regex(const Regex&) = delete;
  Regex& operator=(const Regex&) = delete;

  /// The successive non-overlapping matches in `text` as byte ranges
  /// [start, end), with the `onig` crate's `find_iter` rules for empty
  /// matches. `text` must be valid UTF-8.
  std::vector<std::pair<size_t, size_t>> find_all(std::string_view text) const;

  /// Whether the pattern matches `text[at, end)` starting exactly at `at`.
  bool matches_at(std::string_view text, size_t at, size_t end) const;

 private:
  re_pattern_buffer* regex_ = nullptr;
};

/// A pattern that matches `literal` exactly: its regex metacharacters are
/// escaped as Rust's `regex::escape` does (Split's "String" patterns).
std::string escape_regex(std::string_view literal);

}  // namespace remat::io::detail
