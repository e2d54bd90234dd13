// remat-finetune: fine-tunes a causal LM with remat::Trainer, evaluates it
// before and after, saves a directory transformers loads, prints a sample
// generation and measures one training step with gradient checkpointing off
// and on.
//
//   remat-finetune                      # the embedded default: learns addition
//   remat-finetune --model_name_or_path tiny-llama --train_file train.jsonl \
//       --validation_file eval.jsonl --output_dir out --max_steps 200
//
// Every TrainingArguments flag works (`--help` lists them all).

#include <fmt/format.h>
#include <remat/io/tokenizer.h>
#include <remat/models/causal_lm.h>
#include <remat/remat.h>
#include <remat/trainer.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <fstream>
#include <functional>
#include <iostream>
#include <random>
#include <set>
#include <sstream>

#include "default_files.h"

namespace {

namespace data = remat::data;
namespace models = remat::models;
using remat::io::Tokenizer;

/// The program's own flags (the training arguments live in TrainingArguments).
struct Options {
  std::string model_name_or_path;
  std::string config_name;
  std::string tokenizer_name;
  std::vector<std::string> train_files;
  std::vector<std::string> validation_files;
  int64_t max_seq_length = 0;
  bool packing = false;
  // The embedded default's task.
  int64_t task_seed = 42;
  int64_t task_digits = 2;
  int64_t num_train_examples = 96000;
  int64_t num_eval_examples = 200;
  // Evaluation and the sample generation.
  int64_t max_eval_generations = 200;
  std::string prompt;
  models::GenerationConfig generation;
  int64_t generation_seed = -1;
  int64_t benchmark_steps = 5;
};

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

bool is_dir(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::invalid_argument(fmt::format("cannot read {}", path));
  std::ostringstream text;
  text << in.rdbuf();
  return text.str();
}

void write_file(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  out << text;
  if (!out.flush()) throw std::runtime_error(fmt::format("cannot write {}", path));
}

/// mkdir -p with POSIX calls.
void make_directories(const std::string& path) {
  for (size_t i = 1; i <= path.size(); ++i) {
    if (i < path.size() && path[i] != '/') continue;
    const std::string prefix = path.substr(0, i);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      throw std::runtime_error(fmt::format("cannot create {}: {}", prefix, std::strerror(errno)));
    }
  }
}

/// Checks the flags the Trainer does not check, naming the value and what is valid.
void validate(const Options& o) {
  auto need = [](bool ok, const std::string& message) {
    if (!ok) throw std::invalid_argument(message);
  };
  if (!o.model_name_or_path.empty()) {
    need(is_dir(o.model_name_or_path) && is_file(o.model_name_or_path + "/config.json"),
         fmt::format("--model_name_or_path {}: not a model directory; valid: a directory "
                     "with config.json and model.safetensors (as transformers saves it)",
                     o.model_name_or_path));
  }
  if (!o.config_name.empty()) {
    need(is_file(o.config_name) || is_file(o.config_name + "/config.json"),
         fmt::format("--config_name {}: no such config; valid: a config.json file or a "
                     "directory holding one",
                     o.config_name));
  }
  if (!o.tokenizer_name.empty()) {
    need(is_file(o.tokenizer_name + "/tokenizer.json"),
         fmt::format("--tokenizer_name {}: no tokenizer.json there; valid: a directory with "
                     "tokenizer.json (and optionally tokenizer_config.json)",
                     o.tokenizer_name));
  }
  for (const auto* files : {&o.train_files, &o.validation_files}) {
    for (const auto& f : *files) {
      const bool ok_ext = f.size() > 4 && (f.substr(f.size() - 4) == ".txt" ||
                                           (f.size() > 6 && f.substr(f.size() - 6) == ".jsonl"));
      need(is_file(f) && ok_ext,
           fmt::format("{} {}: {}; valid: an existing .txt or .jsonl file",
                       files == &o.train_files ? "--train_file" : "--validation_file", f,
                       is_file(f) ? "unsupported extension" : "no such file"));
    }
  }
  const bool custom = !o.model_name_or_path.empty() || !o.config_name.empty();
  need(!custom || !o.train_files.empty(),
       "--train_file is required with --model_name_or_path or --config_name (the embedded "
       "default needs neither)");
  need(custom || o.train_files.empty(),
       "--train_file needs --model_name_or_path or --config_name (and a tokenizer) to train on");
  need(o.model_name_or_path.empty() || o.config_name.empty(),
       "--model_name_or_path and --config_name: give one (pretrained weights, or a fresh model "
       "from a config)");
  need(o.config_name.empty() || !o.tokenizer_name.empty(),
       "--config_name needs --tokenizer_name (a directory with tokenizer.json)");
  need(o.max_seq_length >= 0,
       fmt::format("--max_seq_length {}: valid: >= 1, or 0 for the model's limit (at most 1024)",
                   o.max_seq_length));
  need(o.task_digits >= 1 && o.task_digits <= 9,
       fmt::format("--task_digits {}: valid: 1 to 9", o.task_digits));
  need(o.num_train_examples >= 1 && o.num_eval_examples >= 1,
       fmt::format("--num_train_examples {} / --num_eval_examples {}: valid: >= 1",
                   o.num_train_examples, o.num_eval_examples));
  need(o.max_eval_generations >= 0,
       fmt::format("--max_eval_generations {}: valid: >= 0", o.max_eval_generations));
  need(
      o.benchmark_steps >= 0,
      fmt::format("--benchmark_steps {}: valid: >= 0 (0 skips the comparison)", o.benchmark_steps));
  const auto& g = o.generation;
  need(g.max_new_tokens >= 0, fmt::format("--max_new_tokens {}: valid: >= 0", g.max_new_tokens));
  need(g.temperature > 0, fmt::format("--temperature {}: valid: > 0", g.temperature));
  need(g.top_k >= 0, fmt::format("--top_k {}: valid: >= 0 (0 disables it)", g.top_k));
  need(g.top_p > 0 && g.top_p <= 1, fmt::format("--top_p {}: valid: in (0, 1]", g.top_p));
}

// ---------------------------------------------------------------------------
// The embedded default: addition of two `digits`-digit numbers (two by
// default), every number written with its lowest digit first and padded with
// zeros: 47 + 5 = 52 is "74+50=" -> "250". Digit i of the answer then
// depends on digit i of both operands and the carry from the digits before,
// all at fixed distances behind it, which a small model learns quickly.

/// `value` as `width` digits, lowest first.
std::string lowest_first(int64_t value, int width) {
  std::string digits = fmt::format("{:0{}d}", value, width);
  std::reverse(digits.begin(), digits.end());
  return digits;
}

std::vector<data::Document> addition_task(int64_t count, int64_t digits, std::mt19937_64& rng,
                                          const char* source) {
  int64_t limit = 1;
  for (int64_t i = 0; i < digits; ++i) limit *= 10;
  std::uniform_int_distribution<int64_t> operand(0, limit - 1);
  const int width = static_cast<int>(digits);
  std::vector<data::Document> docs;
  for (int64_t i = 0; i < count; ++i) {
    const int64_t a = operand(rng), b = operand(rng);
    docs.push_back({fmt::format("{}+{}=", lowest_first(a, width), lowest_first(b, width)),
                    lowest_first(a + b, width + 1), fmt::format("{}:{}", source, i)});
  }
  return docs;
}

/// Train and eval documents of the default: disjoint, from `seed`.
std::pair<std::vector<data::Document>, std::vector<data::Document>> default_documents(
    const Options& o) {
  std::mt19937_64 rng(static_cast<uint64_t>(o.task_seed));
  std::vector<data::Document> eval;
  std::set<std::string> held_out;
  for (auto& d : addition_task(o.num_eval_examples, o.task_digits, rng, "eval")) {
    if (held_out.insert(d.prompt).second) eval.push_back(std::move(d));
  }
  double problems = 1;
  for (int64_t i = 0; i < o.task_digits; ++i) problems *= 100;
  if (2.0 * static_cast<double>(held_out.size()) > problems) {
    throw std::invalid_argument(fmt::format(
        "--num_eval_examples {}: more than half of the {} sums of --task_digits {}; valid: at "
        "most {}",
        o.num_eval_examples, problems, o.task_digits, static_cast<int64_t>(problems / 2)));
  }
  std::vector<data::Document> train;
  while (static_cast<int64_t>(train.size()) < o.num_train_examples) {
    for (auto& d : addition_task(o.num_train_examples - static_cast<int64_t>(train.size()),
                                 o.task_digits, rng, "train")) {
      if (!held_out.count(d.prompt)) train.push_back(std::move(d));
    }
  }
  return {std::move(train), std::move(eval)};
}

// ---------------------------------------------------------------------------

/// Exact match of greedy completions: the tokens generated after each prompt,
/// up to EOS, equal the completion's tokens.
double exact_match(models::CausalLMImpl& model, const Tokenizer& tok,
                   const std::function<std::vector<int64_t>(const std::string&)>& prompt_ids,
                   const std::vector<data::Document>& docs, const torch::Device& device,
                   std::optional<int64_t> eos) {
  std::vector<std::vector<int64_t>> prompts, answers;
  for (const auto& d : docs) {
    if (d.prompt.empty()) continue;
    prompts.push_back(prompt_ids(d.prompt));
    answers.push_back(tok.encode(d.completion, /*add_special_tokens=*/false));
  }
  if (prompts.empty()) return std::nan("");
  torch::NoGradGuard no_grad;
  const bool was_training = model.is_training();
  model.eval();
  int64_t correct = 0;
  const int64_t batch = 64;
  for (size_t start = 0; start < prompts.size(); start += batch) {
    const size_t end = std::min(prompts.size(), start + batch);
    size_t width = 0, longest_answer = 0;
    for (size_t i = start; i < end; ++i) {
      width = std::max(width, prompts[i].size());
      longest_answer = std::max(longest_answer, answers[i].size());
    }
    const int64_t pad = model.config().pad_token_id.value_or(eos.value_or(0));
    auto ids = torch::full({static_cast<int64_t>(end - start), static_cast<int64_t>(width)}, pad,
                           torch::kLong);
    auto mask = torch::zeros_like(ids);
    for (size_t i = start; i < end; ++i) {
      const auto n = static_cast<int64_t>(prompts[i].size());
      const auto row = static_cast<int64_t>(i - start);
      ids[row]
          .narrow(0, static_cast<int64_t>(width) - n, n)
          .copy_(torch::tensor(prompts[i], torch::kLong));
      mask[row].narrow(0, static_cast<int64_t>(width) - n, n).fill_(1);
    }
    models::GenerationConfig greedy;
    greedy.max_new_tokens = static_cast<int64_t>(longest_answer) + 1;
    auto out = model.generate(ids.to(device), greedy, mask.to(device)).cpu();
    for (size_t i = start; i < end; ++i) {
      auto row = out[static_cast<int64_t>(i - start)];
      std::vector<int64_t> got;
      for (int64_t j = static_cast<int64_t>(width); j < row.size(0); ++j) {
        const int64_t t = row[j].item<int64_t>();
        if (eos && t == *eos) break;
        got.push_back(t);
      }
      correct += got == answers[i];
    }
  }
  if (was_training) model.train();
  return static_cast<double>(correct) / static_cast<double>(prompts.size());
}

/// Peak memory so far: CUDA's peak allocated bytes, or the process's peak
/// resident set on CPU.
int64_t peak_memory_bytes(const torch::Device& device) {
  if (device.is_cuda()) return remat::max_memory_allocated(device);
  struct rusage usage {};
  ::getrusage(RUSAGE_SELF, &usage);
  return static_cast<int64_t>(usage.ru_maxrss) * 1024;
}

struct StepCost {
  double median_ms = 0;
  int64_t memory_bytes = 0;
};

/// Forward and backward of one batch, `steps` times (after one warm-up);
/// gradients are cleared and no optimizer step is taken, so the model is
/// unchanged. Memory: CUDA peak allocated in the step; CPU: the step's peak
/// of tensor bytes above what was allocated before it (remat::CpuMemoryScope).
StepCost measure_step(models::CausalLMImpl& model, const data::Batch& batch,
                      const torch::Device& device, int64_t steps) {
  model.train();
  std::vector<double> times;
  StepCost cost;
  for (int64_t s = 0; s <= steps; ++s) {
    model.zero_grad();
    if (device.is_cuda()) {
      torch::cuda::synchronize();
      remat::reset_peak_memory_stats(device);
    }
    const auto start = std::chrono::steady_clock::now();
    remat::CpuMemoryScope cpu_memory;
    models::CausalLMInputs in;
    in.input_ids = batch.input_ids;
    in.attention_mask = batch.attention_mask;
    in.labels = batch.labels;
    auto loss = model.forward(in).loss;
    loss.backward();
    if (device.is_cuda()) torch::cuda::synchronize();
    const double ms =
        std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - start).count();
    if (s == 0) continue;  // warm-up
    times.push_back(ms);
    cost.memory_bytes =
        std::max(cost.memory_bytes,
                 device.is_cuda() ? remat::max_memory_allocated(device) : cpu_memory.peak());
  }
  model.zero_grad();
  std::sort(times.begin(), times.end());
  cost.median_ms = times.empty() ? 0.0 : times[times.size() / 2];
  return cost;
}

void copy_tokenizer_files(const std::string& from, const std::string& to) {
  for (const char* name : {"tokenizer.json", "tokenizer_config.json", "special_tokens_map.json"}) {
    const std::string src = from + "/" + name;
    if (is_file(src)) write_file(to + "/" + name, read_file(src));
  }
}

/// Eval loss and exact-match accuracy at one point of training (NaN: not measured).
struct Evaluation {
  double loss = 0;
  double accuracy = 0;

  nlohmann::json to_json(int64_t step) const {
    auto value = [](double v) { return std::isnan(v) ? nlohmann::json() : nlohmann::json(v); };
    return {{"eval_loss", value(loss)}, {"eval_accuracy", value(accuracy)}, {"step", step}};
  }
};

void append_jsonl(const remat::TrainingArguments& args, const nlohmann::json& record) {
  const auto& r = args.report_to;
  if (std::find(r.begin(), r.end(), "jsonl") == r.end()) return;
  std::ofstream out(args.output_dir + "/log.jsonl", std::ios::app);
  out << record.dump() << "\n";
}

std::string format_metric(double value, const char* spec) {
  return std::isnan(value) ? std::string("n/a") : fmt::format(fmt::runtime(spec), value);
}

int run(int argc, char** argv) {
  CLI::App app{
      "Fine-tunes a causal LM (GPT-2, Llama, Qwen2) with remat::Trainer. Without "
      "--model_name_or_path / --config_name it runs the embedded default: a small Llama-style "
      "model learns two-digit addition from generated examples, with gradient checkpointing "
      "on; its settings (output_dir finetune_output, max_steps 1500, batch 64, learning_rate "
      "1e-3, adam_beta2 0.98, warmup_steps 50, logging_steps 100, save_strategy no, report_to "
      "jsonl) apply unless given.",
      "remat-finetune"};
  Options o;
  remat::TrainingArguments args;
  app.add_option("--model_name_or_path", o.model_name_or_path,
                 "Hugging Face model directory to start from (config.json, safetensors weights, "
                 "tokenizer.json)");
  app.add_option("--config_name", o.config_name,
                 "config.json (or a directory with one) of a freshly initialized model");
  app.add_option("--tokenizer_name", o.tokenizer_name,
                 "Directory with tokenizer.json; default: --model_name_or_path");
  app.add_option("--train_file", o.train_files, "Training data: .txt or .jsonl files")
      ->expected(1, -1);
  app.add_option("--validation_file", o.validation_files,
                 "Evaluation data: .txt or .jsonl files; prompt/completion lines also give "
                 "exact-match accuracy")
      ->expected(1, -1);
  app.add_option("--max_seq_length", o.max_seq_length,
                 "Tokens per example; 0: the model's max_position_embeddings, at most 1024");
  app.add_flag("--packing", o.packing, "Pack documents into blocks of max_seq_length tokens");
  app.add_option("--task_seed", o.task_seed, "Embedded default: seed of the generated examples");
  app.add_option("--task_digits", o.task_digits,
                 "Embedded default: digits of each operand (1 to 9)");
  app.add_option("--num_train_examples", o.num_train_examples,
                 "Embedded default: generated training examples");
  app.add_option("--num_eval_examples", o.num_eval_examples,
                 "Embedded default: held-out examples for eval loss and accuracy");
  app.add_option("--max_eval_generations", o.max_eval_generations,
                 "Prompts generated for exact-match accuracy (0 skips it)");
  app.add_option("--benchmark_steps", o.benchmark_steps,
                 "Steps timed with checkpointing off and on after training (0 skips it)");
  app.add_option("--prompt", o.prompt,
                 "Prompt of the sample generation; default: the first eval prompt");
  app.add_option("--max_new_tokens", o.generation.max_new_tokens,
                 "Sample generation: tokens to generate");
  app.add_flag("--do_sample", o.generation.do_sample, "Sample generation: sample (default greedy)");
  app.add_option("--temperature", o.generation.temperature, "Sample generation: temperature");
  app.add_option("--top_k", o.generation.top_k, "Sample generation: top-k (0 disables)");
  app.add_option("--top_p", o.generation.top_p, "Sample generation: nucleus top-p");
  app.add_option("--generation_seed", o.generation_seed,
                 "Sample generation: seed for sampling (default: --seed)");
  remat::add_training_arguments(app, args);
  try {
    app.parse(argc, argv);
  } catch (const CLI::ParseError& e) {
    return app.exit(e);
  }
  validate(o);

  const bool embedded = o.model_name_or_path.empty() && o.config_name.empty();
  auto unset = [&app](const char* flag) { return app.get_option(flag)->count() == 0; };
  if (embedded) {
    // The embedded default's settings, unless given on the command line.
    if (unset("--output_dir")) args.output_dir = "finetune_output";
    if (unset("--max_steps")) args.max_steps = 1500;
    if (unset("--per_device_train_batch_size")) args.per_device_train_batch_size = 64;
    if (unset("--per_device_eval_batch_size")) args.per_device_eval_batch_size = 100;
    if (unset("--learning_rate")) args.learning_rate = 1e-3;
    if (unset("--adam_beta2")) args.adam_beta2 = 0.98;
    if (unset("--warmup_steps")) args.warmup_steps = 50;
    if (unset("--logging_steps")) args.logging_steps = 100;
    if (unset("--gradient_checkpointing")) args.gradient_checkpointing = true;
    if (unset("--save_strategy")) args.save_strategy = "no";
    if (unset("--report_to")) args.report_to = {"jsonl"};
    if (unset("--max_new_tokens")) o.generation.max_new_tokens = o.task_digits + 2;
  }
  if (unset("--generation_seed")) o.generation_seed = args.seed;
  args.validate();

  // Model and tokenizer.
  std::shared_ptr<models::CausalLMImpl> model;
  std::optional<Tokenizer> tokenizer;
  std::string tokenizer_dir;
  torch::manual_seed(static_cast<uint64_t>(args.seed));
  if (embedded) {
    model = models::AutoModelForCausalLM::from_config(
        models::ModelConfig::from_json(nlohmann::json::parse(remat_finetune::kConfigJson)));
    tokenizer = Tokenizer::from_json(remat_finetune::kTokenizerJson);
  } else {
    if (!o.model_name_or_path.empty()) {
      model = models::AutoModelForCausalLM::from_pretrained(o.model_name_or_path);
    } else {
      model = models::AutoModelForCausalLM::from_config(models::ModelConfig::from_file(
          is_file(o.config_name) ? o.config_name : o.config_name + "/config.json"));
    }
    tokenizer_dir = o.tokenizer_name.empty() ? o.model_name_or_path : o.tokenizer_name;
    if (!is_file(tokenizer_dir + "/tokenizer.json")) {
      throw std::invalid_argument(
          fmt::format("--model_name_or_path {}: has no tokenizer.json; pass --tokenizer_name DIR",
                      tokenizer_dir));
    }
    tokenizer = Tokenizer::from_pretrained(tokenizer_dir);
  }
  const Tokenizer& tok = *tokenizer;
  const auto& config = model->config();
  // Ids the model has no embedding for would fail deep inside the forward.
  if (tok.vocab_size() > config.vocab_size) {
    throw std::invalid_argument(fmt::format(
        "the tokenizer has {} tokens, model vocab_size {}: token ids from {} on have no "
        "embedding; pass the model's own tokenizer (--tokenizer_name) or a model whose "
        "vocab_size is at least {}",
        tok.vocab_size(), config.vocab_size, config.vocab_size, tok.vocab_size()));
  }
  // EOS after every document (the model's, else the tokenizer's); BOS when
  // the tokenizer's post-processor puts a token before every text, as the
  // model saw in pre-training.
  std::optional<int64_t> eos = config.eos_token_ids.empty()
                                   ? tok.eos_token_id()
                                   : std::optional<int64_t>(config.eos_token_ids.front());
  std::optional<int64_t> bos;
  const auto empty_ids = tok.encode("", /*add_special_tokens=*/true);
  const auto text_ids = tok.encode("a", /*add_special_tokens=*/true);
  if (!empty_ids.empty() && !text_ids.empty() && text_ids.front() == empty_ids.front() &&
      empty_ids.front() != eos) {
    bos = empty_ids.front();
  }
  // Prompts for generation, tokenized as the dataset tokenizes them.
  const auto prompt_ids = [&tok, bos](const std::string& prompt) {
    std::vector<int64_t> ids;
    if (bos) ids.push_back(*bos);
    const auto text = tok.encode(prompt, /*add_special_tokens=*/false);
    ids.insert(ids.end(), text.begin(), text.end());
    return ids;
  };

  int64_t max_seq_length = o.max_seq_length;
  if (max_seq_length == 0) max_seq_length = std::min<int64_t>(1024, config.max_position_embeddings);
  if (max_seq_length > config.max_position_embeddings) {
    throw std::invalid_argument(fmt::format(
        "--max_seq_length {}: longer than the model's max_position_embeddings; valid: 1 to {}",
        max_seq_length, config.max_position_embeddings));
  }
  if (o.packing && !eos) {
    throw std::invalid_argument("--packing needs an EOS token; the model and tokenizer have none");
  }
  auto dataset_options = data::CausalLMDatasetOptions()
                             .max_seq_length(max_seq_length)
                             .packing(o.packing)
                             .bos_token_id(bos)
                             .eos_token_id(eos)
                             .vocab_size(config.vocab_size);
  const data::TokenizeFn tokenize = [&tok](std::string_view text) {
    return tok.encode(text, /*add_special_tokens=*/false);
  };

  std::shared_ptr<data::CausalLMDataset> train_set, eval_set;
  std::vector<data::Document> eval_docs;
  if (embedded) {
    auto [train_docs, held_out] = default_documents(o);
    train_set = std::make_shared<data::CausalLMDataset>(
        data::CausalLMDataset::from_documents(train_docs, tokenize, dataset_options));
    eval_docs = std::move(held_out);
  } else {
    train_set = std::make_shared<data::CausalLMDataset>(o.train_files, tokenize, dataset_options);
    for (const auto& f : o.validation_files) {
      auto docs = data::load_documents(f, dataset_options);
      eval_docs.insert(eval_docs.end(), docs.begin(), docs.end());
    }
  }
  if (!eval_docs.empty()) {
    eval_set = std::make_shared<data::CausalLMDataset>(
        data::CausalLMDataset::from_documents(eval_docs, tokenize, dataset_options));
  }
  if (static_cast<int64_t>(eval_docs.size()) > o.max_eval_generations) {
    eval_docs.resize(static_cast<size_t>(o.max_eval_generations));
  }

  remat::Trainer trainer(model, args, train_set, eval_set);
  const torch::Device device = trainer.device();
  // Under torchrun every rank runs this program: all of them train and
  // evaluate (collectives), only rank 0 prints and writes files.
  const bool primary = trainer.state().is_world_process_zero;
  if (!primary) {
    remat::logger()->set_level(spdlog::level::warn);
    std::cout.rdbuf(nullptr);  // discards what this rank would print
  }
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  remat::logger()->info(
      "{} model, {} layers of {}, {:.2f}M parameters; {} training examples, {} "
      "tokens{}",
      config.model_type, config.num_hidden_layers, config.hidden_size, params / 1e6,
      train_set->size(), train_set->num_tokens(),
      embedded ? fmt::format(" (embedded default: {}-digit addition)", o.task_digits) : "");

  auto measure = [&](const char* when) {
    Evaluation m;
    m.loss = eval_set ? trainer.evaluate().at("eval_loss") : std::nan("");
    m.accuracy = exact_match(*model, tok, prompt_ids, eval_docs, device, eos);
    remat::logger()->info("{} training: eval loss {}, exact-match accuracy {} ({} prompts)", when,
                          format_metric(m.loss, "{:.4f}"), format_metric(m.accuracy, "{:.3f}"),
                          eval_docs.size());
    return m;
  };
  if (primary) {
    make_directories(args.output_dir);
    args.to_json_file(args.output_dir + "/training_args.json");
  }
  auto before = measure("before");
  if (primary) append_jsonl(args, before.to_json(0));

  const auto start = std::chrono::steady_clock::now();
  const auto result = trainer.train();
  const double train_seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  double tokens_per_s = 0;
  int64_t records = 0;
  for (const auto& r : trainer.log_history()) {
    if (r.contains("tokens_per_s")) {
      tokens_per_s += r["tokens_per_s"].get<double>();
      ++records;
    }
  }
  tokens_per_s = records ? tokens_per_s / records : 0.0;
  const int64_t peak = peak_memory_bytes(device);

  auto after = measure("after");
  if (primary) append_jsonl(args, after.to_json(result.global_step));

  // The Trainer saved config.json and the weights (plus the tokenizer of a
  // from_pretrained directory); the tokenizer of the other cases goes with them.
  if (primary && embedded) {
    write_file(args.output_dir + "/tokenizer.json", remat_finetune::kTokenizerJson);
    write_file(args.output_dir + "/tokenizer_config.json", remat_finetune::kTokenizerConfigJson);
  } else if (primary && tokenizer_dir != o.model_name_or_path) {
    copy_tokenizer_files(tokenizer_dir, args.output_dir);
  }

  // A sample generation.
  std::string prompt = o.prompt;
  if (prompt.empty() && !eval_docs.empty()) prompt = eval_docs.front().prompt;
  std::string sample;
  if (!prompt.empty()) {
    torch::NoGradGuard no_grad;
    model->eval();
    auto generation = o.generation;
    generation.seed = static_cast<uint64_t>(o.generation_seed);
    const auto ids = prompt_ids(prompt);
    auto out =
        model->generate(torch::tensor(ids, torch::kLong).unsqueeze(0).to(device), generation).cpu();
    std::vector<int64_t> new_ids(out.data_ptr<int64_t>() + ids.size(),
                                 out.data_ptr<int64_t>() + out.size(1));
    sample = tok.decode(new_ids, /*skip_special_tokens=*/true);
  }

  // The trade-off: the same step with checkpointing off and on.
  nlohmann::json table = nlohmann::json::array();
  if (o.benchmark_steps > 0) {
    data::DataCollatorForCausalLM collate(
        data::DataCollatorForCausalLMOptions(config.pad_token_id.value_or(eos.value_or(0))));
    std::vector<data::Example> examples;
    for (int64_t i = 0; i < std::min(train_set->size(), args.per_device_train_batch_size); ++i) {
      examples.push_back(train_set->get(i));
    }
    const auto batch = collate(examples).to(device);
    const auto options = args.gradient_checkpointing_options();
    for (bool on : {false, true}) {
      if (on) {
        model->gradient_checkpointing_enable(options);
      } else {
        model->gradient_checkpointing_disable();
      }
      const auto cost = measure_step(*model, batch, device, o.benchmark_steps);
      table.push_back({{"gradient_checkpointing", on},
                       {"memory_mib", cost.memory_bytes / 1048576.0},
                       {"step_ms", cost.median_ms}});
    }
    if (args.gradient_checkpointing) {
      model->gradient_checkpointing_enable(options);
    } else {
      model->gradient_checkpointing_disable();
    }
  }

  nlohmann::json results = {{"device", device.str()},
                            {"global_step", result.global_step},
                            {"training_loss", result.training_loss},
                            {"train_seconds", train_seconds},
                            {"tokens_per_s", tokens_per_s},
                            {"peak_memory_mib", peak / 1048576.0},
                            {"before", before.to_json(0)},
                            {"after", after.to_json(result.global_step)},
                            {"prompt", prompt},
                            {"sample", sample},
                            {"checkpointing_tradeoff", table}};
  if (primary) write_file(args.output_dir + "/results.json", results.dump(2) + "\n");

  std::cout << "\n";
  std::cout << fmt::format("{:<22}{:>12}{:>12}\n", "", "before", "after");
  std::cout << fmt::format("{:<22}{:>12}{:>12}\n", "eval loss",
                           format_metric(before.loss, "{:.4f}"),
                           format_metric(after.loss, "{:.4f}"));
  std::cout << fmt::format("{:<22}{:>12}{:>12}\n", "exact-match accuracy",
                           format_metric(100 * before.accuracy, "{:.1f}%"),
                           format_metric(100 * after.accuracy, "{:.1f}%"));
  std::cout << fmt::format(
      "\ntrained {} steps in {:.0f} s on {}: {:.0f} tokens/s, peak memory {:.0f} MiB ({})\n",
      result.global_step, train_seconds, device.str(), tokens_per_s, peak / 1048576.0,
      device.is_cuda() ? "allocated" : "process resident set");
  if (!prompt.empty()) std::cout << fmt::format("sample: {}{}\n", prompt, sample);
  if (!table.empty()) {
    std::cout << fmt::format("\n{:<24}{:>14}{:>12}\n", "gradient checkpointing",
                             device.is_cuda() ? "peak MiB" : "step peak MiB", "step ms");
    for (const auto& row : table) {
      std::cout << fmt::format("{:<24}{:>14.1f}{:>12.1f}\n",
                               row["gradient_checkpointing"].get<bool>() ? "on" : "off",
                               row["memory_mib"].get<double>(), row["step_ms"].get<double>());
    }
  }
  std::cout << fmt::format(
      "\nsaved to {} (transformers loads it: "
      "AutoModelForCausalLM.from_pretrained(\"{}\"))\n",
      args.output_dir, args.output_dir);
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    return run(argc, argv);
  } catch (const c10::Error& e) {
    std::cerr << "remat-finetune: error: " << e.what_without_backtrace() << "\n";
    return 1;
  } catch (const std::exception& e) {
    std::cerr << "remat-finetune: error: " << e.what() << "\n";
    return 1;
  }
}
