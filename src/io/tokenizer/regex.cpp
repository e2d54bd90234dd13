#include "regex.h"

#include <oniguruma.h>

#include <algorithm>
#include <mutex>
#include <string>

#include "remat/io/tokenizer.h"
#include "utf8.h"

namespace remat::io::detail {
namespace {

std::string onig_message(int code, OnigErrorInfo* info) {
  OnigUChar buffer[ONIG_MAX_ERROR_MESSAGE_LEN];
  const int length = info != nullptr ? onig_error_code_to_str(buffer, code, info)
                                     : onig_error_code_to_str(buffer, code);
  return std::string(reinterpret_cast<const char*>(buffer), static_cast<size_t>(length));
}

// Oniguruma keeps global tables; initialize it once, and serialize
// compilation as the `onig` crate does.
std::mutex& compile_mutex() {
  static std::mutex mutex;
  static const bool initialized = [] {
    OnigEncoding encodings[] = {ONIG_ENCODING_UTF8};
    return onig_initialize(encodings, 1) == ONIG_NORMAL;
  }();
  (void)initialized;
  return mutex;
}

const OnigUChar* bytes(std::string_view text) {
  return reinterpret_cast<const OnigUChar*>(text.data());
}

// Frees the match region when a search ends, even by an exception.
class RegionGuard {
 public:
  RegionGuard() : region_(onig_region_new()) {}
  ~RegionGuard() { onig_region_free(region_, 1); }
  RegionGuard(const RegionGuard&) = delete;
  RegionGuard& operator=(const RegionGuard&) = delete;
  OnigRegion* get() const { return region_; }

 private:
  OnigRegion* region_;
};

}  // namespace

Regex::Regex(std::string_view pattern, std::string_view what) {
  std::lock_guard<std::mutex> lock(compile_mutex());
  OnigErrorInfo info{};
  const int code = onig_new(&regex_, bytes(pattern), bytes(pattern) + pattern.size(),
                            ONIG_OPTION_NONE, ONIG_ENCODING_UTF8, ONIG_SYNTAX_DEFAULT, &info);
  if (code != ONIG_NORMAL) {
    regex_ = nullptr;
    throw TokenizerError("remat::io::Tokenizer: " + std::string(what) + " pattern \"" +
                         std::string(pattern) +
                         "\" is not a valid Oniguruma regex: " + onig_message(code, &info));
  }
}

Regex::~Regex() {
  if (regex_ != nullptr) onig_free(regex_);
}

std::vector<std::pair<size_t, size_t>> Regex::find_all(std::string_view text) const {
  std::vector<std::pair<size_t, size_t>> matches;
  RegionGuard region;
  const OnigUChar* begin = bytes(text);
  const OnigUChar* end = begin + text.size();
  size_t last_end = 0;
  bool skip_next_empty = false;
  while (last_end <= text.size()) {
    const int found =
        onig_search(regex_, begin, end, begin + last_end, end, region.get(), ONIG_OPTION_NONE);
    if (found == ONIG_MISMATCH) break;
    if (found < 0) {
      throw TokenizerError("remat::io::Tokenizer: regex search failed: " +
                           onig_message(found, nullptr));
    }
    const auto start = static_cast<size_t>(region.get()->beg[0]);
    const auto stop = static_cast<size_t>(region.get()->end[0]);
    last_end = stop;
    if (start == stop) {
      // An empty match: step over one character, and drop it when it directly
      // follows a non-empty match, so that iteration always advances.
      last_end += stop < text.size() ? std::max<size_t>(1, utf8_sequence_length(text, stop)) : 1;
      if (skip_next_empty) {
        skip_next_empty = false;
        continue;
      }
    } else {
      skip_next_empty = true;
    }
    matches.emplace_back(start, stop);
  }
  return matches;
}

bool Regex::matches_at(std::string_view text, size_t at, size_t end) const {
  const int length = onig_match(regex_, bytes(text), bytes(text) + end, bytes(text) + at, nullptr,
                                ONIG_OPTION_NONE);
  if (length < ONIG_MISMATCH) {
    throw TokenizerError("remat::io::Tokenizer: regex match failed: " +
                         onig_message(length, nullptr));
  }
  return length >= 0;
}

std::string escape_regex(std::string_view literal) {
  static constexpr std::string_view kMeta = "\\.+*?()|[]{}^$#&-~";
  std::string out;
  for (char c : literal) {
    if (kMeta.find(c) != std::string_view::npos) out.push_back('\\');
    out.push_back(c);
  }
  return out;
}

}  // namespace remat::io::detail
