#include "utf8.h"

#include <algorithm>
#include <string>

#include "remat/io/tokenizer.h"

namespace remat::io::detail {
namespace {

// The bytes a well-formed sequence may have after `lead` at position 1; the
// later continuation bytes are always 0x80..0xBF.
struct LeadByte {
  size_t length;  // 0 for a byte that cannot start a sequence
  unsigned char second_min;
  unsigned char second_max;
};

LeadByte classify(unsigned char lead) {
  if (lead < 0x80) return {1, 0, 0};
  if (lead < 0xC2) return {0, 0, 0};
  if (lead < 0xE0) return {2, 0x80, 0xBF};
  if (lead == 0xE0) return {3, 0xA0, 0xBF};
  if (lead == 0xED) return {3, 0x80, 0x9F};
  if (lead < 0xF0) return {3, 0x80, 0xBF};
  if (lead == 0xF0) return {4, 0x90, 0xBF};
  if (lead < 0xF4) return {4, 0x80, 0xBF};
  if (lead == 0xF4) return {4, 0x80, 0x8F};
  return {0, 0, 0};
}

// Number of bytes from `pos` that belong to the sequence started there: the
// whole sequence when it is well formed, else its maximal valid prefix (at
// least one byte). `complete` tells which.
size_t scan_sequence(std::string_view text, size_t pos, bool* complete) {
  const auto lead = static_cast<unsigned char>(text[pos]);
  const LeadByte kind = classify(lead);
  *complete = kind.length == 1;
  if (kind.length <= 1) return 1;
  size_t n = 1;
  for (; n < kind.length && pos + n < text.size(); ++n) {
    const auto byte = static_cast<unsigned char>(text[pos + n]);
    const unsigned char lo = n == 1 ? kind.second_min : 0x80;
    const unsigned char hi = n == 1 ? kind.second_max : 0xBF;
    if (byte < lo || byte > hi) break;
  }
  *complete = n == kind.length;
  return n;
}

}  // namespace

size_t utf8_sequence_length(std::string_view text, size_t pos) {
  bool complete = false;
  const size_t n = scan_sequence(text, pos, &complete);
  return complete ? n : 0;
}

void check_utf8(std::string_view text, std::string_view what) {
  size_t pos = 0;
  while (pos < text.size()) {
    if (static_cast<unsigned char>(text[pos]) < 0x80) {
      ++pos;
      continue;
    }
    const size_t n = utf8_sequence_length(text, pos);
    if (n == 0) {
      const auto byte = static_cast<unsigned>(static_cast<unsigned char>(text[pos]));
      throw TokenizerError("remat::io::Tokenizer: " + std::string(what) +
                           " is not valid UTF-8: malformed sequence at byte offset " +
                           std::to_string(pos) + " (byte 0x" + "0123456789ABCDEF"[byte >> 4] +
                           "0123456789ABCDEF"[byte & 15] + "); pass UTF-8 text");
    }
    pos += n;
  }
}

std::string utf8_lossy(std::string_view bytes) {
  static constexpr std::string_view kReplacement = "\xEF\xBF\xBD";
  std::string out;
  out.reserve(bytes.size());
  size_t pos = 0;
  while (pos < bytes.size()) {
    bool complete = false;
    const size_t n = scan_sequence(bytes, pos, &complete);
    if (complete) {
      out.append(bytes.substr(pos, n));
    } else {
      out.append(kReplacement);
    }
    pos += n;
  }
  return out;
}

char32_t decode_utf8(std::string_view text, size_t pos, size_t length) {
  const auto byte = [&](size_t i) {
    return static_cast<char32_t>(static_cast<unsigned char>(text[pos + i]));
  };
  switch (length) {
    case 1:
      return byte(0);
    case 2:
      return ((byte(0) & 0x1F) << 6) | (byte(1) & 0x3F);
    case 3:
      return ((byte(0) & 0x0F) << 12) | ((byte(1) & 0x3F) << 6) | (byte(2) & 0x3F);
    default:
      return ((byte(0) & 0x07) << 18) | ((byte(1) & 0x3F) << 12) | ((byte(2) & 0x3F) << 6) |
             (byte(3) & 0x3F);
  }
}

void append_utf8(std::string& out, char32_t cp) {
  if (cp < 0x80) {
    out.push_back(static_cast<char>(cp));
  } else if (cp < 0x800) {
    out.push_back(static_cast<char>(0xC0 | (cp >> 6)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else if (cp < 0x10000) {
    out.push_back(static_cast<char>(0xE0 | (cp >> 12)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  } else {
    out.push_back(static_cast<char>(0xF0 | (cp >> 18)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 12) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | ((cp >> 6) & 0x3F)));
    out.push_back(static_cast<char>(0x80 | (cp & 0x3F)));
  }
}

bool is_ascii(std::string_view text) {
  return std::all_of(text.begin(), text.end(),
                     [](char c) { return static_cast<unsigned char>(c) < 0x80; });
}

}  // namespace remat::io::detail
