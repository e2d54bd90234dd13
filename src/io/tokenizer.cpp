#include "remat/io/tokenizer.h"

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstring>
#include <exception>
#include <fstream>
#include <iterator>
#include <mutex>
#include <sstream>
#include <thread>

#include "tokenizer/pipeline.h"

namespace remat::io {

class Tokenizer::Impl {
 public:
  explicit Impl(detail::Pipeline pipeline) : pipeline(std::move(pipeline)) {}
  detail::Pipeline pipeline;
};

namespace {

using detail::Json;

std::string read_file(const std::string& path, std::string_view what) {
  std::ifstream in(path, std::ios::binary);
  if (!in) {
    detail::fail("cannot open " + std::string(what) + " \"" + path + "\": " + std::strerror(errno));
  }
  std::ostringstream content;
  content << in.rdbuf();
  if (in.bad()) detail::fail("cannot read " + std::string(what) + " \"" + path + "\"");
  return content.str();
}

template <typename JsonType>
JsonType parse_json(std::string_view text, std::string_view what) {
  try {
    return JsonType::parse(text.begin(), text.end());
  } catch (const nlohmann::json::exception& e) {
    detail::fail(std::string(what) + " is not valid JSON: " + e.what());
  }
}

// Runs `build`, turning a JSON access error the explicit checks missed into
// a TokenizerError, so callers see one exception type.
template <typename F>
auto guarded(std::string_view what, F&& build) {
  try {
    return build();
  } catch (const nlohmann::json::exception& e) {
    detail::fail(std::string(what) + " is malformed: " + e.what());
  }
}

// Keys of a JSON object in file order (transformers assigns ids to new
// special tokens in that order).
std::vector<std::string> key_order(std::string_view text) {
  std::vector<std::string> keys;
  const auto ordered = parse_json<nlohmann::ordered_json>(text, "tokenizer_config.json");
  if (!ordered.is_object()) return keys;
  for (const auto& item : ordered.items()) keys.push_back(item.key());
  return keys;
}

// Batches smaller than this are encoded on the calling thread.
constexpr size_t kParallelBatchBytes = 1 << 16;

}  // namespace

Tokenizer::Tokenizer(std::shared_ptr<const Impl> impl) : impl_(std::move(impl)) {}

Tokenizer Tokenizer::from_json(std::string_view tokenizer_json) {
  const Json root = parse_json<Json>(tokenizer_json, "tokenizer.json");
  return guarded("tokenizer.json",
                 [&] { return Tokenizer(std::make_shared<const Impl>(detail::Pipeline(root))); });
}

Tokenizer Tokenizer::from_file(const std::string& tokenizer_json_path) {
  return from_json(read_file(tokenizer_json_path, "tokenizer.json"));
}

Tokenizer Tokenizer::from_pretrained(const std::string& dir) {
  const std::string json_text = read_file(dir + "/tokenizer.json", "tokenizer.json");
  const Json root = parse_json<Json>(json_text, "tokenizer.json");
  detail::Pipeline pipeline = guarded("tokenizer.json", [&] { return detail::Pipeline(root); });
  const std::string config_path = dir + "/tokenizer_config.json";
  if (std::ifstream(config_path).good()) {
    const std::string config_text = read_file(config_path, "tokenizer_config.json");
    const Json config = parse_json<Json>(config_text, "tokenizer_config.json");
    guarded("tokenizer_config.json",
            [&] { pipeline.apply_config(config, key_order(config_text), root); });
  }
  return Tokenizer(std::make_shared<const Impl>(std::move(pipeline)));
}

std::vector<int64_t> Tokenizer::encode(std::string_view text, bool add_special_tokens) const {
  return impl_->pipeline.encode(text, add_special_tokens);
}

std::vector<std::vector<int64_t>> Tokenizer::encode_batch(const std::vector<std::string>& texts,
                                                          bool add_special_tokens) const {
  std::vector<std::vector<int64_t>> out(texts.size());
  size_t bytes = 0;
  for (const auto& text : texts) bytes += text.size();
  const size_t workers =
      std::min<size_t>(std::max(1u, std::thread::hardware_concurrency()), texts.size());
  if (workers <= 1 || bytes < kParallelBatchBytes) {
    for (size_t i = 0; i < texts.size(); ++i) out[i] = encode(texts[i], add_special_tokens);
    return out;
  }
  std::atomic<size_t> next{0};
  std::exception_ptr error;
  std::mutex error_mutex;
  auto work = [&] {
    for (size_t i = next++; i < texts.size(); i = next++) {
      try {
        out[i] = encode(texts[i], add_special_tokens);
      } catch (...) {
        std::lock_guard<std::mutex> lock(error_mutex);
        if (!error) error = std::current_exception();
      }
    }
  };
  std::vector<std::thread> threads;
  for (size_t w = 1; w < workers; ++w) threads.emplace_back(work);
  work();
  for (auto& thread : threads) thread.join();
  if (error) std::rethrow_exception(error);
  return out;
}

std::string Tokenizer::decode(const std::vector<int64_t>& ids, bool skip_special_tokens) const {
  return impl_->pipeline.decode(ids, skip_special_tokens);
}

int64_t Tokenizer::vocab_size() const { return impl_->pipeline.vocab_size(); }

std::optional<int64_t> Tokenizer::token_to_id(std::string_view token) const {
  return impl_->pipeline.token_to_id(token);
}

std::string Tokenizer::id_to_token(int64_t id) const {
  return impl_->pipeline.id_to_token(id, "id_to_token");
}

std::optional<int64_t> Tokenizer::bos_token_id() const { return impl_->pipeline.bos_token_id; }
std::optional<int64_t> Tokenizer::eos_token_id() const { return impl_->pipeline.eos_token_id; }
std::optional<int64_t> Tokenizer::pad_token_id() const { return impl_->pipeline.pad_token_id; }

}  // namespace remat::io
