#include "byte_level.h"

#include <array>

#include "utf8.h"

namespace remat::io::detail {
namespace {

// The table of GPT-2's encoder.py: printable Latin-1 bytes map to themselves,
// the others, in order, to U+0100 onwards.
std::array<char32_t, 256> make_byte_chars() {
  std::array<char32_t, 256> chars{};
  char32_t next = 256;
  for (int b = 0; b < 256; ++b) {
    const bool printable = (b >= '!' && b <= '~') || (b >= 0xA1 && b <= 0xAC) || (b >= 0xAE);
    chars[b] = printable ? static_cast<char32_t>(b) : next++;
  }
  return chars;
}

const std::array<char32_t, 256>& byte_chars() {
  static const std::array<char32_t, 256> chars = make_byte_chars();
  return chars;
}

// The UTF-8 of each byte's character, for fast encoding.
const std::array<std::string, 256>& byte_strings() {
  static const std::array<std::string, 256> strings = [] {
    std::array<std::string, 256> out;
    for (int b = 0; b < 256; ++b) append_utf8(out[b], byte_chars()[b]);
    return out;
  }();
  return strings;
}

// Byte-level characters all lie below U+0144.
constexpr char32_t kTableSize = 0x144;

const std::array<int, kTableSize>& char_bytes() {
  static const std::array<int, kTableSize> table = [] {
    std::array<int, kTableSize> out{};
    out.fill(-1);
    for (int b = 0; b < 256; ++b) out[byte_chars()[b]] = b;
    return out;
  }();
  return table;
}

}  // namespace

std::string bytes_to_unicode(std::string_view text) {
  const auto& strings = byte_strings();
  std::string out;
  out.reserve(text.size() * 2);
  for (char c : text) out.append(strings[static_cast<unsigned char>(c)]);
  return out;
}

int unicode_to_byte(char32_t code_point) {
  return code_point < kTableSize ? char_bytes()[code_point] : -1;
}

}  // namespace remat::io::detail
