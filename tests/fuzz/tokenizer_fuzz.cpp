// libFuzzer target for remat::io::Tokenizer::from_json: whatever the bytes,
// building a tokenizer either succeeds or throws the documented
// remat::io::TokenizerError; a tokenizer that builds must encode and decode
// a fixed text the same way. Crashes, hangs, leaks, sanitizer reports and
// any other exception are findings.

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "remat/io/tokenizer.h"

namespace {

// Every step of the pipeline: added tokens, a normalizer's accents, several
// scripts, digits, contractions, whitespace runs and an emoji sequence.
constexpr std::string_view kText =
    "Hello, w\xC3\xB6rld! It's 12345 <|endoftext|><s> e\xCC\x81 \xE6\x97\xA5\xE6\x9C\xAC "
    "\xF0\x9F\x91\xA8\xE2\x80\x8D\xF0\x9F\x91\xA9 \n\n\t  end  ";

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view json(reinterpret_cast<const char*>(data), size);
  try {
    const auto tokenizer = remat::io::Tokenizer::from_json(json);
    const std::vector<int64_t> ids = tokenizer.encode(kText);
    if (tokenizer.encode(kText) != ids) __builtin_trap();  // the cache must not change results
    (void)tokenizer.encode(kText, /*add_special_tokens=*/false);
    (void)tokenizer.vocab_size();
    (void)tokenizer.token_to_id("<|endoftext|>");
    (void)tokenizer.decode(ids, /*skip_special_tokens=*/true);
    (void)tokenizer.decode(ids);  // throws for template ids that are in no vocabulary
  } catch (const remat::io::TokenizerError&) {
    // The documented way to reject a file or an id.
  }
  return 0;
}
