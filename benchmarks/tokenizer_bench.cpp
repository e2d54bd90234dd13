// Encoding and decoding speed of remat::io::Tokenizer.
//
//   tokenizer_bench [--benchmark_filter=...]
//
// REMAT_TOKENIZER names a directory with tokenizer.json (default: the test
// oracle's Llama 3 style tokenizer in this build tree); REMAT_TOKENIZER_TEXT
// a UTF-8 text file to encode (default: 1 MiB of generated mixed-script
// text). Encode_Cold starts each iteration with a fresh tokenizer, so the
// per-word cache is empty; Encode_Warm reuses one.

#include <benchmark/benchmark.h>
#include <remat/io/tokenizer.h>

#include <cstdlib>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <vector>

namespace {

std::string tokenizer_dir() {
  const char* dir = std::getenv("REMAT_TOKENIZER");
  return dir != nullptr ? dir : REMAT_DEFAULT_TOKENIZER_DIR;
}

// Prose-like text: mostly English words, some accented, CJK and Cyrillic
// words, numbers, punctuation and newlines.
std::string generated_text(size_t bytes) {
  static const std::vector<std::string> words = {
      "the",        "of",       "and",   "to",     "in",     "model",      "memory", "training",
      "checkpoint", "gradient", "It's",  "don't",  "we're",  "activation", "tokens", "layer",
      "café",       "naïve",    "über",  "привет", "мир",    "日本語",     "学习",   "模型",
      "2024",       "3.14",     "1,000", "(see",   "above)", "--",         "quick",  "brown",
      "fox",        "jumps",    "over",  "lazy",   "dog",    "GPU",        "batch",  "size"};
  std::mt19937 rng(42);
  std::uniform_int_distribution<size_t> pick(0, words.size() - 1);
  std::uniform_int_distribution<int> punct(0, 19);
  std::string text;
  while (text.size() < bytes) {
    text += words[pick(rng)];
    const int p = punct(rng);
    text += p == 0 ? ".\n" : p == 1 ? ", " : p == 2 ? "\n\n" : " ";
  }
  return text;
}

const std::string& text() {
  static const std::string content = [] {
    const char* path = std::getenv("REMAT_TOKENIZER_TEXT");
    if (path == nullptr) return generated_text(1 << 20);
    std::ifstream in(path, std::ios::binary);
    std::ostringstream out;
    out << in.rdbuf();
    return out.str();
  }();
  return content;
}

std::vector<std::string> lines() {
  std::vector<std::string> out;
  std::istringstream in(text());
  for (std::string line; std::getline(in, line);) out.push_back(line);
  return out;
}

void BM_Encode_Warm(benchmark::State& state) {
  const auto tok = remat::io::Tokenizer::from_file(tokenizer_dir() + "/tokenizer.json");
  int64_t tokens = 0;
  for (auto _ : state) {
    auto ids = tok.encode(text());
    tokens += static_cast<int64_t>(ids.size());
    benchmark::DoNotOptimize(ids);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(text().size()));
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void BM_Encode_Cold(benchmark::State& state) {
  int64_t tokens = 0;
  for (auto _ : state) {
    state.PauseTiming();
    auto tok = remat::io::Tokenizer::from_file(tokenizer_dir() + "/tokenizer.json");
    state.ResumeTiming();
    auto ids = tok.encode(text());
    tokens += static_cast<int64_t>(ids.size());
    benchmark::DoNotOptimize(ids);
  }
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(text().size()));
  state.counters["tokens/s"] =
      benchmark::Counter(static_cast<double>(tokens), benchmark::Counter::kIsRate);
}

void BM_EncodeBatch_Lines(benchmark::State& state) {
  const auto tok = remat::io::Tokenizer::from_file(tokenizer_dir() + "/tokenizer.json");
  const auto batch = lines();
  for (auto _ : state) benchmark::DoNotOptimize(tok.encode_batch(batch));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(text().size()));
}

void BM_Decode(benchmark::State& state) {
  const auto tok = remat::io::Tokenizer::from_file(tokenizer_dir() + "/tokenizer.json");
  const auto ids = tok.encode(text(), false);
  for (auto _ : state) benchmark::DoNotOptimize(tok.decode(ids));
  state.SetBytesProcessed(state.iterations() * static_cast<int64_t>(text().size()));
}

void BM_Load(benchmark::State& state) {
  for (auto _ : state) {
    benchmark::DoNotOptimize(remat::io::Tokenizer::from_file(tokenizer_dir() + "/tokenizer.json"));
  }
}

}  // namespace

BENCHMARK(BM_Encode_Warm)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Encode_Cold)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_EncodeBatch_Lines)->Unit(benchmark::kMillisecond)->UseRealTime();
BENCHMARK(BM_Decode)->Unit(benchmark::kMillisecond);
BENCHMARK(BM_Load)->Unit(benchmark::kMillisecond);
BENCHMARK_MAIN();
