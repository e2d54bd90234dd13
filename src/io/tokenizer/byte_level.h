#pragma once

// GPT-2's byte-level alphabet: every byte stands for a printable character,
// so that any UTF-8 text becomes a string over 256 symbols.

#include <string>
#include <string_view>

namespace remat::io::detail {

/// `text` with every byte replaced by the UTF-8 of its byte-level character.
std::string bytes_to_unicode(std::string_view text);

/// The byte that the byte-level character `code_point` stands for, or -1 if
/// it is not one of the 256.
int unicode_to_byte(char32_t code_point);

}  // namespace remat::io::detail
