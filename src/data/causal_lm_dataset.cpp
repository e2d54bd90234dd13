#include "remat/data/causal_lm_dataset.h"

#include <sys/stat.h>
#include <nlohmann/json.hpp>

#include <algorithm>
#include <cctype>
#include <fstream>
#include <iterator>
#include <sstream>

namespace remat::data {
namespace {

using nlohmann::json;

bool is_blank(std::string_view text) {
  return std::all_of(text.begin(), text.end(), [](unsigned char c) { return std::isspace(c); });
}

// std::filesystem is avoided on purpose: the LibTorch of the PyPI wheel
// exports std::filesystem symbols of its own, which programs linking it
// may bind to and crash in.

// The lower-cased extension of the file name, with its dot ("" for none and
// for a dot-file such as ".txt").
std::string extension_of(const std::string& path) {
  auto name = path.substr(path.find_last_of('/') + 1);
  auto dot = name.find_last_of('.');
  std::string ext = dot == std::string::npos || dot == 0 ? "" : name.substr(dot);
  std::transform(ext.begin(), ext.end(), ext.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return ext;
}

std::string read_text_file(const std::string& path) {
  struct stat info {};
  bool regular = ::stat(path.c_str(), &info) == 0 && S_ISREG(info.st_mode);
  TORCH_CHECK(regular, "Data file '", path, "' does not exist or is not a regular file");
  std::ifstream in(path, std::ios::binary);
  TORCH_CHECK(in, "Cannot read data file '", path, "'");
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// Calls fn(line, 1-based line number) for every line, without "\n" or a
// trailing "\r".
template <typename Fn>
void for_each_line(const std::string& text, Fn fn) {
  size_t start = 0;
  for (int64_t number = 1; start < text.size(); ++number) {
    size_t end = text.find('\n', start);
    if (end == std::string::npos) end = text.size();
    std::string_view line(text.data() + start, end - start);
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    fn(line, number);
    start = end + 1;
  }
}

std::string where(const std::string& path, int64_t line) {
  return path + ":" + std::to_string(line);
}

// The offset of the first byte of `text` that does not start a well-formed
// UTF-8 sequence (no overlong forms, surrogates or code points beyond
// U+10FFFF), or npos.
size_t invalid_utf8_at(std::string_view text) {
  size_t i = 0;
  while (i < text.size()) {
    const auto c = static_cast<unsigned char>(text[i]);
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t length = 0;
    unsigned char low = 0x80, high = 0xBF;  // the allowed range of the second byte
    if (c >= 0xC2 && c <= 0xDF) {
      length = 2;
    } else if (c >= 0xE0 && c <= 0xEF) {
      length = 3;
      if (c == 0xE0) low = 0xA0;
      if (c == 0xED) high = 0x9F;
    } else if (c >= 0xF0 && c <= 0xF4) {
      length = 4;
      if (c == 0xF0) low = 0x90;
      if (c == 0xF4) high = 0x8F;
    } else {
      return i;
    }
    if (i + length > text.size()) return i;
    for (size_t k = 1; k < length; ++k) {
      const auto d = static_cast<unsigned char>(text[i + k]);
      if (d < (k == 1 ? low : 0x80) || d > (k == 1 ? high : 0xBF)) return i;
    }
    i += length;
  }
  return std::string_view::npos;
}

// A .txt file must be UTF-8 text: the error names the file, the line and the
// byte (a binary file or another encoding, such as Latin-1).
void check_utf8_text(const std::string& text, const std::string& path) {
  const size_t bad = invalid_utf8_at(text);
  if (bad == std::string_view::npos) return;
  const auto line =
      1 + std::count(text.begin(), text.begin() + static_cast<std::ptrdiff_t>(bad), '\n');
  const auto line_start = text.rfind('\n', bad == 0 ? std::string::npos : bad - 1);
  const size_t column = line_start == std::string::npos ? bad : bad - line_start - 1;
  const auto byte = static_cast<unsigned>(static_cast<unsigned char>(text[bad]));
  TORCH_CHECK(false, where(path, line), ": not valid UTF-8: byte 0x", "0123456789abcdef"[byte >> 4],
              "0123456789abcdef"[byte & 15], " at offset ", column,
              " of the line does not start a UTF-8 sequence; .txt data files must be UTF-8 text "
              "(convert the file, e.g. with iconv, or remove it if it is binary)");
}

std::vector<Document> split_text(const std::string& text, const std::string& path,
                                 const std::string& sample_by) {
  std::vector<Document> documents;
  if (sample_by == "document") {
    if (!is_blank(text)) documents.push_back({"", text, where(path, 1)});
    return documents;
  }
  std::string paragraph;
  int64_t first_line = 0;
  auto flush = [&] {
    if (!paragraph.empty()) documents.push_back({"", paragraph, where(path, first_line)});
    paragraph.clear();
  };
  for_each_line(text, [&](std::string_view line, int64_t number) {
    if (is_blank(line)) {
      flush();
    } else if (sample_by == "line") {
      documents.push_back({"", std::string(line), where(path, number)});
    } else {
      if (paragraph.empty()) first_line = number;
      paragraph += paragraph.empty() ? "" : "\n";
      paragraph += line;
    }
  });
  flush();
  return documents;
}

std::string keys_of(const json& record) {
  std::ostringstream out;
  out << "[";
  for (auto it = record.begin(); it != record.end(); ++it) {
    out << (it == record.begin() ? "" : ", ") << '"' << it.key() << '"';
  }
  return out.str() + "]";
}

std::string string_field(const json& record, const std::string& key, const std::string& at) {
  const auto& value = record.at(key);
  TORCH_CHECK(value.is_string(), at, ": \"", key, "\" must be a string, got ", value.dump());
  return value.get<std::string>();
}

Document parse_record(std::string_view line, const std::string& at, const std::string& text_key) {
  json record;
  try {
    record = json::parse(line);
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, at, ": invalid JSON: ", e.what());
  }
  TORCH_CHECK(record.is_object(), at, ": expected a JSON object, got ", record.type_name());
  bool has_text = record.contains(text_key);
  bool has_pair = record.contains("prompt") || record.contains("completion");
  TORCH_CHECK(!(has_text && has_pair), at, ": has both \"", text_key,
              "\" and \"prompt\"/\"completion\"; give one format per line");
  if (has_text) return {"", string_field(record, text_key, at), at};
  TORCH_CHECK(record.contains("prompt") && record.contains("completion"), at, ": expected key \"",
              text_key, "\" or keys \"prompt\" and \"completion\", got keys ", keys_of(record));
  return {string_field(record, "prompt", at), string_field(record, "completion", at), at};
}

std::vector<Document> read_jsonl(const std::string& text, const std::string& path,
                                 const std::string& text_key) {
  std::vector<Document> documents;
  for_each_line(text, [&](std::string_view line, int64_t number) {
    if (!is_blank(line)) documents.push_back(parse_record(line, where(path, number), text_key));
  });
  return documents;
}

void check_options(const CausalLMDatasetOptions& options) {
  TORCH_CHECK(options.max_seq_length() >= 1, "max_seq_length must be at least 1, got ",
              options.max_seq_length());
  TORCH_CHECK(!options.packing() || options.eos_token_id(),
              "packing needs eos_token_id to separate the documents");
  TORCH_CHECK(options.bos_token_id().value_or(0) >= 0, "bos_token_id must be >= 0, got ",
              *options.bos_token_id());
  TORCH_CHECK(options.eos_token_id().value_or(0) >= 0, "eos_token_id must be >= 0, got ",
              *options.eos_token_id());
  TORCH_CHECK(options.vocab_size().value_or(1) >= 1, "vocab_size must be at least 1, got ",
              *options.vocab_size());
  const auto& s = options.sample_by();
  TORCH_CHECK(s == "paragraph" || s == "line" || s == "document", "Invalid sample_by '", s,
              "'; valid values: paragraph, line, document");
}

std::vector<int64_t> tokenize_checked(const TokenizeFn& tokenize, const std::string& text,
                                      const Document& document,
                                      const CausalLMDatasetOptions& options) {
  if (text.empty()) return {};
  std::vector<int64_t> ids;
  try {
    ids = tokenize(text);
  } catch (const std::exception& e) {
    const auto* error = dynamic_cast<const c10::Error*>(&e);
    TORCH_CHECK(false, "Tokenizing the document at ", document.source,
                " failed: ", error ? error->what_without_backtrace() : e.what());
  }
  auto bad = std::find_if(ids.begin(), ids.end(), [](int64_t id) { return id < 0; });
  TORCH_CHECK(bad == ids.end(), "The tokenizer returned token id ", bad == ids.end() ? 0 : *bad,
              " for the document at ", document.source, "; token ids must be >= 0");
  if (auto vocab_size = options.vocab_size()) {
    bad = std::find_if(ids.begin(), ids.end(), [&](int64_t id) { return id >= *vocab_size; });
    TORCH_CHECK(bad == ids.end(), "The tokenizer returned token id ", bad == ids.end() ? 0 : *bad,
                " for the document at ", document.source, "; the model's vocab_size is ",
                *vocab_size, " (is the tokenizer the model's?)");
  }
  return ids;
}

}  // namespace

std::vector<Document> load_documents(const std::string& path,
                                     const CausalLMDatasetOptions& options) {
  check_options(options);
  auto ext = extension_of(path);
  TORCH_CHECK(ext == ".txt" || ext == ".jsonl", "Unsupported data file '", path,
              "'; valid extensions: .txt, .jsonl");
  auto text = read_text_file(path);
  if (ext == ".txt") {
    check_utf8_text(text, path);
    return split_text(text, path, options.sample_by());
  }
  return read_jsonl(text, path, options.dataset_text_field());
}

CausalLMDataset::CausalLMDataset(const CausalLMDatasetOptions& options, std::string origin)
    : options_(options), origin_(std::move(origin)) {
  check_options(options_);
}

CausalLMDataset::CausalLMDataset(const std::vector<std::string>& paths, const TokenizeFn& tokenize,
                                 const CausalLMDatasetOptions& options)
    : CausalLMDataset(options, "") {
  TORCH_CHECK(!paths.empty(), "CausalLMDataset needs at least one data file");
  for (const auto& path : paths) {
    origin_ += (origin_.empty() ? "" : ", ") + path;
    add(load_documents(path, options_), tokenize);
  }
  finish();
}

CausalLMDataset CausalLMDataset::from_documents(const std::vector<Document>& documents,
                                                const TokenizeFn& tokenize,
                                                const CausalLMDatasetOptions& options) {
  CausalLMDataset dataset(options, std::to_string(documents.size()) + " documents");
  dataset.add(documents, tokenize);
  dataset.finish();
  return dataset;
}

void CausalLMDataset::add(const std::vector<Document>& documents, const TokenizeFn& tokenize) {
  TORCH_CHECK(tokenize, "CausalLMDataset needs a tokenize function");
  for (const auto& document : documents) {
    auto prompt = tokenize_checked(tokenize, document.prompt, document, options_);
    auto completion = tokenize_checked(tokenize, document.completion, document, options_);
    if (prompt.empty() && completion.empty()) continue;
    std::vector<int64_t> ids;
    if (options_.bos_token_id()) ids.push_back(*options_.bos_token_id());
    ids.insert(ids.end(), prompt.begin(), prompt.end());
    size_t masked = document.prompt.empty() ? 0 : ids.size();
    ids.insert(ids.end(), completion.begin(), completion.end());
    if (options_.eos_token_id()) ids.push_back(*options_.eos_token_id());
    if (!options_.packing() && static_cast<int64_t>(ids.size()) > options_.max_seq_length()) {
      ids.resize(options_.max_seq_length());
    }
    masked = std::min(masked, ids.size());
    if (masked > 0 && !has_labels_) {
      labels_ = input_ids_;
      has_labels_ = true;
    }
    if (has_labels_) {
      labels_.insert(labels_.end(), masked, kIgnoreIndex);
      labels_.insert(labels_.end(), ids.begin() + masked, ids.end());
    }
    input_ids_.insert(input_ids_.end(), ids.begin(), ids.end());
    if (!options_.packing()) offsets_.push_back(static_cast<int64_t>(input_ids_.size()));
  }
}

void CausalLMDataset::finish() {
  auto total = static_cast<int64_t>(input_ids_.size());
  if (options_.packing()) {
    auto block = options_.max_seq_length();
    TORCH_CHECK(total >= block, "Packing ", total, " tokens from ", origin_,
                " into blocks of max_seq_length ", block, " leaves no full block");
    for (int64_t end = block; end <= total; end += block) offsets_.push_back(end);
    input_ids_.resize(offsets_.back());
    if (has_labels_) labels_.resize(offsets_.back());
  }
  TORCH_CHECK(size() > 0, "CausalLMDataset: no examples in ", origin_,
              " (every document is blank or tokenizes to nothing)");
  input_ids_.shrink_to_fit();
  labels_.shrink_to_fit();
}

Example CausalLMDataset::get(int64_t index) const {
  TORCH_CHECK(index >= 0 && index < size(), "CausalLMDataset index ", index,
              " out of range for size ", size());
  auto begin = offsets_[index], end = offsets_[index + 1];
  Example example;
  example.input_ids.assign(input_ids_.begin() + begin, input_ids_.begin() + end);
  const auto& labels = has_labels_ ? labels_ : input_ids_;
  example.labels.assign(labels.begin() + begin, labels.begin() + end);
  return example;
}

}  // namespace remat::data
