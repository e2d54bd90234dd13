// CausalLMDataset against the causal_lm_dataset oracle (Python's json module
// and transformers' group_texts over the same files), and its errors.

#include "remat/data/causal_lm_dataset.h"

#include <gtest/gtest.h>

#include <unistd.h>

#include <cstdio>
#include <fstream>

#include "oracle.h"
#include "support.h"

using remat::data::CausalLMDataset;
using remat::data::CausalLMDatasetOptions;
using remat::data::Document;
using remat::data::kIgnoreIndex;
using remat::data::load_documents;

namespace {

constexpr int64_t kBos = 256, kEos = 257;

// Byte-level tokenizer: the UTF-8 bytes of the text.
std::vector<int64_t> bytes(std::string_view text) {
  std::vector<int64_t> ids;
  for (unsigned char c : text) ids.push_back(c);
  return ids;
}

CausalLMDatasetOptions options_of(const nlohmann::json& o) {
  auto options = CausalLMDatasetOptions().max_seq_length(o["max_seq_length"].get<int64_t>());
  if (o.contains("sample_by")) options.sample_by(o["sample_by"].get<std::string>());
  if (o.contains("bos")) options.bos_token_id(o["bos"].get<int64_t>());
  if (o.contains("eos")) options.eos_token_id(o["eos"].get<int64_t>());
  if (o.contains("packing")) options.packing(o["packing"].get<bool>());
  return options;
}

// A scratch directory for the files a test writes, removed afterwards
// (without std::filesystem, whose symbols the PyPI LibTorch shadows).
struct CausalLMDatasetErrors : ::testing::Test {
  void SetUp() override {
    std::string pattern = ::testing::TempDir() + "remat_dataset_XXXXXX";
    ASSERT_NE(::mkdtemp(pattern.data()), nullptr);
    dir = pattern;
  }
  void TearDown() override {
    for (const auto& path : written) std::remove(path.c_str());
    ::rmdir(dir.c_str());
  }

  std::string write(const std::string& name, const std::string& content) {
    auto path = dir + "/" + name;
    std::ofstream(path, std::ios::binary) << content;
    written.push_back(path);
    return path;
  }

  std::string dir;
  std::vector<std::string> written;
};

}  // namespace

TEST(CausalLMDatasetTest, MatchesPythonReference) {
  auto dir = remat::test::oracle_dir("causal_lm_dataset");
  auto cases = remat::test::read_json(dir + "/examples.json");
  for (const auto& c : cases) {
    std::vector<std::string> paths;
    for (const auto& f : c["files"]) paths.push_back(dir + "/" + f.get<std::string>());
    CausalLMDataset dataset(paths, bytes, options_of(c["options"]));
    const auto& expected = c["examples"];
    ASSERT_EQ(dataset.size(), static_cast<int64_t>(expected.size())) << c["options"].dump();
    int64_t tokens = 0;
    for (int64_t i = 0; i < dataset.size(); ++i) {
      auto example = dataset.get(i);
      EXPECT_EQ(example.input_ids, expected[i]["input_ids"].get<std::vector<int64_t>>())
          << c["options"].dump() << " example " << i;
      EXPECT_EQ(example.labels, expected[i]["labels"].get<std::vector<int64_t>>())
          << c["options"].dump() << " example " << i;
      tokens += static_cast<int64_t>(example.input_ids.size());
    }
    EXPECT_EQ(dataset.num_tokens(), tokens);
  }
}

TEST(CausalLMDatasetTest, PromptIsMaskedAndBoundaryExact) {
  auto dataset = CausalLMDataset::from_documents(
      {{"ab", "cd", "mem:1"}, {"", "xy", "mem:2"}}, bytes,
      CausalLMDatasetOptions().bos_token_id(kBos).eos_token_id(kEos));
  ASSERT_EQ(dataset.size(), 2);
  auto prompted = dataset.get(0);
  EXPECT_EQ(prompted.input_ids, (std::vector<int64_t>{kBos, 'a', 'b', 'c', 'd', kEos}));
  EXPECT_EQ(prompted.labels,
            (std::vector<int64_t>{kIgnoreIndex, kIgnoreIndex, kIgnoreIndex, 'c', 'd', kEos}));
  auto plain = dataset.get(1);
  EXPECT_EQ(plain.labels, plain.input_ids);
}

TEST(CausalLMDatasetTest, PackingKeepsPromptMasksAcrossBlocks) {
  auto dataset = CausalLMDataset::from_documents(
      {{"", "abc", "1"}, {"pq", "r", "2"}, {"", "s", "3"}}, bytes,
      CausalLMDatasetOptions().max_seq_length(3).packing(true).eos_token_id(kEos));
  // Stream: a b c EOS | p q r EOS | s EOS -> blocks of 3, the last token dropped.
  ASSERT_EQ(dataset.size(), 3);
  EXPECT_EQ(dataset.get(1).input_ids, (std::vector<int64_t>{kEos, 'p', 'q'}));
  EXPECT_EQ(dataset.get(1).labels, (std::vector<int64_t>{kEos, kIgnoreIndex, kIgnoreIndex}));
  EXPECT_EQ(dataset.get(2).labels, (std::vector<int64_t>{'r', kEos, 's'}));
  EXPECT_EQ(dataset.num_tokens(), 9);
}

TEST(CausalLMDatasetTest, DefaultOptions) {
  CausalLMDatasetOptions options;
  EXPECT_EQ(options.max_seq_length(), 1024);
  EXPECT_FALSE(options.packing());
  EXPECT_FALSE(options.bos_token_id().has_value());
  EXPECT_FALSE(options.eos_token_id().has_value());
  EXPECT_EQ(options.sample_by(), "paragraph");
  EXPECT_EQ(options.dataset_text_field(), "text");
}

TEST_F(CausalLMDatasetErrors, JsonlErrorsNameFileAndLine) {
  auto bad = write("bad.jsonl", "{\"text\": \"ok\"}\n\n{\"text\": \"unterminated}\n");
  ASSERT_THROWS_WITH(load_documents(bad), bad + ":3: invalid JSON: ");
  auto array = write("array.jsonl", "[1, 2]\n");
  ASSERT_THROWS_WITH(load_documents(array), array + ":1: expected a JSON object, got array");
  auto keys = write("keys.jsonl", "{\"text\": \"a\"}\n{\"body\": \"b\", \"prompt\": \"c\"}\n");
  ASSERT_THROWS_WITH(load_documents(keys), keys +
                                               ":2: expected key \"text\" or keys \"prompt\" and "
                                               "\"completion\", got keys [\"body\", \"prompt\"]");
  auto number = write("number.jsonl", "{\"text\": 5}\n");
  ASSERT_THROWS_WITH(load_documents(number), number + ":1: \"text\" must be a string, got 5");
  auto both = write("both.jsonl", "{\"text\": \"a\", \"prompt\": \"b\", \"completion\": \"c\"}\n");
  ASSERT_THROWS_WITH(load_documents(both), both + ":1: has both \"text\" and \"prompt\"");
}

// A binary or non-UTF-8 .txt file: the error names the file and the line.
TEST_F(CausalLMDatasetErrors, TextThatIsNotUtf8NamesFileAndLine) {
  auto latin1 = write("latin1.txt", "ok\n\nfine\ncaf\xe9 au lait\n");
  ASSERT_THROWS_WITH(load_documents(latin1), latin1 + ":4: not valid UTF-8");
  ASSERT_THROWS_WITH(load_documents(latin1, CausalLMDatasetOptions().sample_by("document")),
                     latin1 + ":4: not valid UTF-8");
  auto binary = write("binary.txt", std::string("\x7f"
                                                "ELF\x02\x01\x01\0\0\xff",
                                                10));
  ASSERT_THROWS_WITH(CausalLMDataset({binary}, bytes), binary + ":1: not valid UTF-8");
}

// A tokenizer error and a token id beyond vocab_size name the document.
TEST_F(CausalLMDatasetErrors, TokenErrorsNameTheDocument) {
  auto path = write("ids.txt", "fine\n\nalso fine\n\n~ too high\n");
  ASSERT_THROWS_WITH(
      CausalLMDataset({path}, bytes, CausalLMDatasetOptions().vocab_size(120)),
      "token id 126 for the document at " + path + ":5; the model's vocab_size is 120");
  const remat::data::TokenizeFn failing = [](std::string_view text) -> std::vector<int64_t> {
    if (text.find("also") != std::string_view::npos) throw std::runtime_error("cannot encode");
    return bytes(text);
  };
  ASSERT_THROWS_WITH(CausalLMDataset({path}, failing),
                     "Tokenizing the document at " + path + ":3 failed: cannot encode");
}

TEST_F(CausalLMDatasetErrors, TextFieldIsConfigurable) {
  auto path = write("content.jsonl", "{\"content\": \"hello\"}\n");
  auto documents = load_documents(path, CausalLMDatasetOptions().dataset_text_field("content"));
  ASSERT_EQ(documents.size(), 1u);
  EXPECT_EQ(documents[0].completion, "hello");
  EXPECT_EQ(documents[0].source, path + ":1");
}

TEST_F(CausalLMDatasetErrors, FileErrors) {
  auto missing = dir + "/missing.txt";
  ASSERT_THROWS_WITH(load_documents(missing),
                     "Data file '" + missing + "' does not exist or is not a regular file");
  auto csv = write("data.csv", "a,b\n");
  ASSERT_THROWS_WITH(load_documents(csv),
                     "Unsupported data file '" + csv + "'; valid extensions: .txt, .jsonl");
  auto txt = write("a.txt", "x\n");
  ASSERT_THROWS_WITH(load_documents(txt, CausalLMDatasetOptions().sample_by("sentence")),
                     "Invalid sample_by 'sentence'; valid values: paragraph, line, document");
  ASSERT_THROWS_WITH(CausalLMDataset({}, bytes), "CausalLMDataset needs at least one data file");
}

TEST_F(CausalLMDatasetErrors, EmptyDatasetIsAnError) {
  auto blank = write("blank.txt", "\n  \n\t\n");
  auto empty = write("empty.jsonl", "{\"text\": \"\"}\n");
  ASSERT_THROWS_WITH(CausalLMDataset({blank, empty}, bytes),
                     "CausalLMDataset: no examples in " + blank + ", " + empty);
  auto small = write("small.txt", "abc");
  ASSERT_THROWS_WITH(
      CausalLMDataset({small}, bytes,
                      CausalLMDatasetOptions().max_seq_length(8).packing(true).eos_token_id(kEos)),
      "Packing 4 tokens from " + small + " into blocks of max_seq_length 8 leaves no full block");
}

TEST(CausalLMDatasetTest, OptionAndTokenizerErrors) {
  auto build = [](const CausalLMDatasetOptions& options) {
    return CausalLMDataset::from_documents({{"", "text", "doc"}}, bytes, options);
  };
  ASSERT_THROWS_WITH(build(CausalLMDatasetOptions().packing(true)),
                     "packing needs eos_token_id to separate the documents");
  ASSERT_THROWS_WITH(build(CausalLMDatasetOptions().max_seq_length(0)),
                     "max_seq_length must be at least 1, got 0");
  ASSERT_THROWS_WITH(build(CausalLMDatasetOptions().eos_token_id(-2)),
                     "eos_token_id must be >= 0, got -2");
  auto negative = [](std::string_view) { return std::vector<int64_t>{1, -7}; };
  ASSERT_THROWS_WITH(CausalLMDataset::from_documents({{"", "text", "notes.txt:4"}}, negative),
                     "The tokenizer returned token id -7 for the document at notes.txt:4");
  auto dataset = build({});
  ASSERT_THROWS_WITH(dataset.get(1), "CausalLMDataset index 1 out of range for size 1");
}
