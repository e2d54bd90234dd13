#pragma once

// UTF-8 validation and decoding for the tokenizer, following the Unicode
// Standard's table of well-formed byte sequences (Table 3-7).

#include <cstddef>
#include <string>
#include <string_view>

namespace remat::io::detail {

/// Length of the well-formed UTF-8 sequence that starts at `text[pos]`, or 0
/// if the bytes there are not one.
size_t utf8_sequence_length(std::string_view text, size_t pos);

/// Throws TokenizerError naming the byte offset of the first malformed
/// sequence in `text`; `what` says what the text is ("the text to encode").
void check_utf8(std::string_view text, std::string_view what);

/// `bytes` as UTF-8 with every maximal malformed subsequence replaced by one
/// U+FFFD, as Rust's `String::from_utf8_lossy` (which Hugging Face decoders
/// use) does.
std::string utf8_lossy(std::string_view bytes);

/// The code point of the well-formed sequence at `text[pos]`, whose length is
/// `length`.
char32_t decode_utf8(std::string_view text, size_t pos, size_t length);

/// Appends the UTF-8 encoding of `code_point` to `out`.
void append_utf8(std::string& out, char32_t code_point);

/// Whether every byte of `text` is ASCII.
bool is_ascii(std::string_view text);

}  // namespace remat::io::detail
