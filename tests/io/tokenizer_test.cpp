// remat::io::Tokenizer against Hugging Face: the oracle (tokenizer_oracle.py)
// trains GPT-2, Llama 3 and Qwen2 style tokenizers, saves them with
// transformers, and records what transformers and tokenizers make of a test
// corpus. Every id and every decoded string must be identical.

#include <gtest/gtest.h>
#include <nlohmann/json.hpp>

#include <cstdlib>
#include <fstream>
#include <string>
#include <thread>
#include <vector>

#include "remat/io/tokenizer.h"

namespace {

using remat::io::Tokenizer;
using remat::io::TokenizerError;
using Json = nlohmann::json;

/// Expects `statement` to throw a TokenizerError whose message contains
/// `substring`.
#define EXPECT_TOKENIZER_ERROR(statement, substring)                                          \
  do {                                                                                        \
    try {                                                                                     \
      (void)(statement);                                                                      \
      ADD_FAILURE() << "Expected `" #statement "` to throw TokenizerError";                   \
    } catch (const TokenizerError& e) {                                                       \
      EXPECT_NE(std::string(e.what()).find(substring), std::string::npos)                     \
          << "Error message \"" << e.what() << "\" does not contain \"" << substring << "\""; \
    }                                                                                         \
  } while (false)

std::string oracle_dir() {
  const char* root = std::getenv("REMAT_ORACLE_DIR");
  return std::string(root != nullptr ? root : "oracle") + "/tokenizer";
}

const Json& expected() {
  static const Json data = [] {
    std::ifstream in(oracle_dir() + "/expected.json");
    if (!in) throw std::runtime_error("no oracle data in " + oracle_dir());
    return Json::parse(in);
  }();
  return data;
}

std::vector<int64_t> ids_of(const Json& value) { return value.get<std::vector<int64_t>>(); }

// Shows a text with its control characters escaped, for failure messages.
std::string shown(const std::string& text) {
  constexpr size_t kMax = 120;
  std::string out = Json(text).dump(-1, ' ', false, Json::error_handler_t::replace);
  return out.size() > kMax ? out.substr(0, kMax) + "..." : out;
}

// The tokenizers saved with save_pretrained and checked against transformers.
class PretrainedTokenizerTest : public ::testing::TestWithParam<std::string> {
 protected:
  const Json& style() const { return expected().at(GetParam()); }
  std::string dir() const { return oracle_dir() + "/" + GetParam(); }
};

TEST_P(PretrainedTokenizerTest, EncodeAndDecodeMatchTransformers) {
  const Tokenizer tok = Tokenizer::from_pretrained(dir());
  for (const Json& c : style().at("cases")) {
    const std::string text = c.at("text");
    const auto ids = ids_of(c.at("ids"));
    EXPECT_EQ(tok.encode(text), ids) << shown(text);
    EXPECT_EQ(tok.encode(text, /*add_special_tokens=*/false), ids_of(c.at("ids_no_special")))
        << shown(text);
    EXPECT_EQ(tok.decode(ids), c.at("decoded").get<std::string>()) << shown(text);
    EXPECT_EQ(tok.decode(ids, /*skip_special_tokens=*/true),
              c.at("decoded_skip_special").get<std::string>())
        << shown(text);
  }
}

TEST_P(PretrainedTokenizerTest, FromFileMatchesTokenizersLibrary) {
  const Tokenizer tok = Tokenizer::from_file(dir() + "/tokenizer.json");
  for (const Json& c : style().at("cases")) {
    const std::string text = c.at("text");
    EXPECT_EQ(tok.encode(text), ids_of(c.at("backend_ids"))) << shown(text);
    EXPECT_EQ(tok.encode(text, false), ids_of(c.at("backend_ids_no_special"))) << shown(text);
  }
}

TEST_P(PretrainedTokenizerTest, DecodeOfEveryIdAndRandomSequencesMatchesTransformers) {
  const Tokenizer tok = Tokenizer::from_pretrained(dir());
  for (const Json& c : style().at("decode_cases")) {
    const auto ids = ids_of(c.at("ids"));
    EXPECT_EQ(tok.decode(ids), c.at("text").get<std::string>()) << c.at("ids").dump();
    EXPECT_EQ(tok.decode(ids, true), c.at("text_skip_special").get<std::string>())
        << c.at("ids").dump();
  }
}

TEST_P(PretrainedTokenizerTest, VocabularySizeAndSpecialIdsMatchTransformers) {
  const Tokenizer tok = Tokenizer::from_pretrained(dir());
  EXPECT_EQ(tok.vocab_size(), style().at("vocab_size").get<int64_t>());
  EXPECT_EQ(Tokenizer::from_file(dir() + "/tokenizer.json").vocab_size(),
            style().at("backend_vocab_size").get<int64_t>());
  const auto optional_id = [](const Json& v) {
    return v.is_null() ? std::nullopt : std::optional<int64_t>(v.get<int64_t>());
  };
  EXPECT_EQ(tok.bos_token_id(), optional_id(style().at("bos_token_id")));
  EXPECT_EQ(tok.eos_token_id(), optional_id(style().at("eos_token_id")));
  EXPECT_EQ(tok.pad_token_id(), optional_id(style().at("pad_token_id")));
  for (const auto& [token, id] : style().at("token_to_id").items()) {
    EXPECT_EQ(tok.token_to_id(token), id.get<int64_t>()) << token;
    EXPECT_EQ(tok.id_to_token(id.get<int64_t>()), token);
  }
  EXPECT_EQ(tok.token_to_id("no such token, surely"), std::nullopt);
}

TEST_P(PretrainedTokenizerTest, EncodeBatchMatchesEncodeAndSurvivesThreads) {
  const Tokenizer tok = Tokenizer::from_pretrained(dir());
  std::vector<std::string> texts;
  for (const Json& c : style().at("cases")) texts.push_back(c.at("text"));
  // Enough text to take the parallel path.
  for (int copy = 0; copy < 8; ++copy) texts.push_back(texts.back() + std::to_string(copy));
  const auto batch = tok.encode_batch(texts);
  ASSERT_EQ(batch.size(), texts.size());
  for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(batch[i], tok.encode(texts[i])) << i;

  // Copies share the cache; concurrent use gives the same ids.
  std::vector<std::vector<std::vector<int64_t>>> results(4);
  std::vector<std::thread> threads;
  for (auto& result : results) {
    threads.emplace_back([copy = tok, &texts, &result] {
      for (const auto& text : texts) result.push_back(copy.encode(text, false));
    });
  }
  for (auto& thread : threads) thread.join();
  for (const auto& result : results) {
    for (size_t i = 0; i < texts.size(); ++i) EXPECT_EQ(result[i], tok.encode(texts[i], false));
  }
}

INSTANTIATE_TEST_SUITE_P(Styles, PretrainedTokenizerTest,
                         ::testing::Values("gpt2", "llama3", "qwen2"));

TEST(TokenizerTest, SplitSpecialTokensFromConfigMatchesTransformers) {
  const Tokenizer tok = Tokenizer::from_pretrained(oracle_dir() + "/llama3_split_special");
  for (const Json& c : expected().at("llama3_split_special").at("cases")) {
    const std::string text = c.at("text");
    EXPECT_EQ(tok.encode(text), ids_of(c.at("ids"))) << shown(text);
    EXPECT_EQ(tok.encode(text, false), ids_of(c.at("ids_no_special"))) << shown(text);
  }
}

// The GPT-2 style vocabulary under other pre-tokenizers: every Split
// behaviour, inversion, a String pattern with a regex metacharacter, and
// ByteLevel's add_prefix_space.
class PreTokenizerVariantTest : public ::testing::TestWithParam<std::string> {};

TEST_P(PreTokenizerVariantTest, MatchesTokenizersLibrary) {
  const Tokenizer tok = Tokenizer::from_file(oracle_dir() + "/" + GetParam() + "/tokenizer.json");
  for (const Json& c : expected().at(GetParam()).at("cases")) {
    const std::string text = c.at("text");
    EXPECT_EQ(tok.encode(text), ids_of(c.at("backend_ids"))) << shown(text);
  }
}

INSTANTIATE_TEST_SUITE_P(Variants, PreTokenizerVariantTest,
                         ::testing::Values("split_removed", "split_merged_with_previous",
                                           "split_merged_with_next_inverted", "split_contiguous",
                                           "bytelevel_prefix_space"));

// A small valid tokenizer.json to break in the error tests.
Json minimal_tokenizer() {
  const Json vocab = {{"a", 0}, {"b", 1}, {"ab", 2}, {"\xC4\xA0", 3}};
  return {{"version", "1.0"},
          {"added_tokens", Json::array({{{"id", 4},
                                         {"content", "<s>"},
                                         {"single_word", false},
                                         {"lstrip", false},
                                         {"rstrip", false},
                                         {"normalized", false},
                                         {"special", true}}})},
          {"normalizer", nullptr},
          {"pre_tokenizer", {{"type", "ByteLevel"}, {"add_prefix_space", false}}},
          {"post_processor", nullptr},
          {"decoder", {{"type", "ByteLevel"}}},
          {"model", {{"type", "BPE"}, {"vocab", vocab}, {"merges", Json::array({"a b"})}}}};
}

Tokenizer from(const Json& json) { return Tokenizer::from_json(json.dump()); }

TEST(TokenizerTest, MinimalTokenizerWorks) {
  const Tokenizer tok = from(minimal_tokenizer());
  EXPECT_EQ(tok.encode("ab<s>ba"), (std::vector<int64_t>{2, 4, 1, 0}));
  EXPECT_EQ(tok.decode({2, 4, 1, 0}), "ab<s>ba");
  EXPECT_EQ(tok.decode({2, 4, 1, 0}, true), "abba");
  EXPECT_EQ(tok.vocab_size(), 5);
  EXPECT_EQ(tok.bos_token_id(), std::nullopt);
}

TEST(TokenizerTest, UnsupportedComponentsAreNamed) {
  Json json = minimal_tokenizer();
  json["model"]["type"] = "WordPiece";
  EXPECT_TOKENIZER_ERROR(from(json), "unsupported model type \"WordPiece\"; supported: BPE");
  json = minimal_tokenizer();
  json["normalizer"] = {{"type", "NFKC"}};
  EXPECT_TOKENIZER_ERROR(from(json), "unsupported normalizer type \"NFKC\"; supported: NFC");
  json = minimal_tokenizer();
  json["pre_tokenizer"] = {{"type", "Whitespace"}};
  EXPECT_TOKENIZER_ERROR(from(json), "\"Whitespace\"; supported: ByteLevel, Split, Sequence");
  json = minimal_tokenizer();
  json["post_processor"] = {{"type", "RobertaProcessing"}};
  EXPECT_TOKENIZER_ERROR(from(json), "\"RobertaProcessing\"; supported: ByteLevel, Template");
  json = minimal_tokenizer();
  json["decoder"] = {{"type", "WordPiece"}};
  EXPECT_TOKENIZER_ERROR(from(json), "unsupported decoder type \"WordPiece\"");
  json = minimal_tokenizer();
  json["model"]["dropout"] = 0.1;
  EXPECT_TOKENIZER_ERROR(from(json), "model.dropout is 0.1");
  json = minimal_tokenizer();
  json["model"]["byte_fallback"] = true;
  EXPECT_TOKENIZER_ERROR(from(json), "byte_fallback");
  json = minimal_tokenizer();
  json["pre_tokenizer"] = {
      {"type", "Split"}, {"pattern", {{"Regex", "(unclosed"}}}, {"behavior", "Isolated"}};
  EXPECT_TOKENIZER_ERROR(from(json), "\"(unclosed\" is not a valid Oniguruma regex");
  json["pre_tokenizer"]["pattern"] = {{"Regex", "a"}};
  json["pre_tokenizer"]["behavior"] = "Sideways";
  EXPECT_TOKENIZER_ERROR(from(json), "unknown behavior \"Sideways\"; valid: Removed, Isolated");
}

TEST(TokenizerTest, MalformedFilesAreClearErrors) {
  EXPECT_TOKENIZER_ERROR(Tokenizer::from_json("{\"model\": "), "tokenizer.json is not valid JSON");
  EXPECT_TOKENIZER_ERROR(Tokenizer::from_json("[1, 2]"), "tokenizer.json must be a JSON object");
  EXPECT_TOKENIZER_ERROR(Tokenizer::from_json("{}"), "tokenizer.json has no \"model\" field");
  Json json = minimal_tokenizer();
  json["model"].erase("vocab");
  EXPECT_TOKENIZER_ERROR(from(json), "model has no \"vocab\" field");
  json = minimal_tokenizer();
  json["model"]["vocab"]["a"] = "zero";
  EXPECT_TOKENIZER_ERROR(from(json), "model.vocab[\"a\"] must be an integer id");
  json = minimal_tokenizer();
  json["model"]["merges"] = Json::array({"a c"});
  EXPECT_TOKENIZER_ERROR(from(json), "model.merges[0] uses \"c\", which is not in model.vocab");
  json["model"]["merges"] = Json::array({"a b c"});
  EXPECT_TOKENIZER_ERROR(from(json), "model.merges[0] must be \"left right\"");
  json = minimal_tokenizer();
  json["added_tokens"][0].erase("content");
  EXPECT_TOKENIZER_ERROR(from(json), "added_tokens[0] has no \"content\" field");
  json = minimal_tokenizer();
  json["version"] = "2.0";
  EXPECT_TOKENIZER_ERROR(from(json), "version \"2.0\" is unknown");
  EXPECT_TOKENIZER_ERROR(Tokenizer::from_file("/nonexistent/tokenizer.json"), "cannot open");
  EXPECT_TOKENIZER_ERROR(Tokenizer::from_pretrained("/nonexistent"), "cannot open tokenizer.json");
}

TEST(TokenizerTest, UnknownIdsAndBadTextAreClearErrors) {
  const Tokenizer tok = from(minimal_tokenizer());
  EXPECT_TOKENIZER_ERROR(tok.decode({0, 99999}),
                         "decode: id 99999 is not in the vocabulary; valid ids are 0 to 4");
  EXPECT_TOKENIZER_ERROR(tok.decode({-1}), "id -1 is not in the vocabulary");
  EXPECT_TOKENIZER_ERROR(tok.id_to_token(5),
                         "id_to_token: id 5 is not in the vocabulary; valid ids are 0 to 4");
  EXPECT_EQ(tok.id_to_token(4), "<s>");
  EXPECT_EQ(tok.id_to_token(3), "\xC4\xA0");
  EXPECT_TOKENIZER_ERROR(tok.encode("ok \xC3("),
                         "not valid UTF-8: malformed sequence at byte offset 3");
  EXPECT_TOKENIZER_ERROR(tok.encode_batch({"fine", "\xFF"}), "byte offset 0");
}

}  // namespace
