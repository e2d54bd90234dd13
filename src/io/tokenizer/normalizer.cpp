#include "normalizer.h"

#include <utf8proc.h>

#include <cstdlib>
#include <vector>

#include "utf8.h"

namespace remat::io::detail {
namespace {

constexpr int kMaxNesting = 32;

// Unicode Normalization Form C through utf8proc.
class NfcNormalizer : public Normalizer {
 public:
  std::string normalize(std::string_view text) const override {
    if (is_ascii(text)) return std::string(text);
    utf8proc_uint8_t* mapped = nullptr;
    const utf8proc_ssize_t length =
        utf8proc_map(reinterpret_cast<const utf8proc_uint8_t*>(text.data()),
                     static_cast<utf8proc_ssize_t>(text.size()), &mapped,
                     static_cast<utf8proc_option_t>(UTF8PROC_STABLE | UTF8PROC_COMPOSE));
    if (length < 0) fail(std::string("NFC normalization failed: ") + utf8proc_errmsg(length));
    std::string result(reinterpret_cast<const char*>(mapped), static_cast<size_t>(length));
    std::free(mapped);
    return result;
  }
};

class SequenceNormalizer : public Normalizer {
 public:
  explicit SequenceNormalizer(std::vector<std::unique_ptr<Normalizer>> steps)
      : steps_(std::move(steps)) {}

  std::string normalize(std::string_view text) const override {
    std::string result(text);
    for (const auto& step : steps_) result = step->normalize(result);
    return result;
  }

 private:
  std::vector<std::unique_ptr<Normalizer>> steps_;
};

std::unique_ptr<Normalizer> make_sequence(const Json& config, int depth) {
  const Json& items = required_field(config, "normalizers", "normalizer (Sequence)");
  if (!items.is_array()) fail("normalizer.normalizers must be an array, got " + brief(items));
  std::vector<std::unique_ptr<Normalizer>> steps;
  for (const Json& item : items) {
    if (auto step = make_normalizer(item, depth + 1)) steps.push_back(std::move(step));
  }
  return std::make_unique<SequenceNormalizer>(std::move(steps));
}

}  // namespace

std::unique_ptr<Normalizer> make_normalizer(const Json& config, int depth) {
  if (config.is_null()) return nullptr;
  if (depth > kMaxNesting) fail("normalizer Sequences are nested too deeply");
  const std::string type = component_type(config, "normalizer");
  if (type == "NFC") return std::make_unique<NfcNormalizer>();
  if (type == "Sequence") return make_sequence(config, depth);
  fail("unsupported normalizer type \"" + type +
       "\"; supported: NFC, Sequence (of those), or null");
}

}  // namespace remat::io::detail
