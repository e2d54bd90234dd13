#pragma once

// What the Trainer tests share: a learnable toy dataset, a tiny GPT-2,
// arguments for short CPU runs, scratch directories, and the configuration
// of the training child process (trainer_child.cpp) the process tests start.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <fstream>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "remat/data/dataset.h"
#include "remat/models/causal_lm.h"
#include "remat/trainer.h"

namespace remat::test {

struct VectorDataset : remat::data::Dataset {
  std::vector<remat::data::Example> examples;
  int64_t size() const override { return static_cast<int64_t>(examples.size()); }
  remat::data::Example get(int64_t index) const override { return examples.at(index); }
};

// Sequences that continue "+stride" patterns: learnable, of different
// lengths, with a masked prompt token.
inline std::shared_ptr<VectorDataset> make_dataset(int64_t n, uint64_t seed) {
  auto dataset = std::make_shared<VectorDataset>();
  std::mt19937_64 rng(seed);
  for (int64_t i = 0; i < n; ++i) {
    const int64_t length = 6 + static_cast<int64_t>(rng() % 6);
    const int64_t start = 3 + static_cast<int64_t>(rng() % 20),
                  stride = 1 + static_cast<int64_t>(rng() % 3);
    remat::data::Example e;
    for (int64_t t = 0; t < length; ++t) e.input_ids.push_back(3 + (start + stride * t) % 40);
    e.labels = e.input_ids;
    e.labels[0] = remat::data::kIgnoreIndex;
    dataset->examples.push_back(e);
  }
  return dataset;
}

inline std::shared_ptr<remat::models::CausalLMImpl> tiny_gpt2(double dropout = 0.0,
                                                              uint64_t seed = 0) {
  torch::manual_seed(seed);
  nlohmann::json config = {{"model_type", "gpt2"},   {"vocab_size", 48},
                           {"n_positions", 32},      {"n_embd", 32},
                           {"n_layer", 2},           {"n_head", 4},
                           {"resid_pdrop", dropout}, {"embd_pdrop", dropout},
                           {"attn_pdrop", dropout},  {"pad_token_id", 0}};
  return remat::models::AutoModelForCausalLM::from_config(
      remat::models::ModelConfig::from_json(config));
}

inline bool exists(const std::string& path) { return ::access(path.c_str(), F_OK) == 0; }

// Removes `path` and everything under it, if it exists. (Not
// std::filesystem::remove_all: the pip LibTorch exports a copy of it that
// crashes when linked.)
inline void remove_tree(const std::string& path) {
  auto remove_entry = [](const char* entry, const struct stat*, int, struct FTW*) {
    return ::remove(entry);
  };
  ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

// A directory name for a test's output, with nothing there yet (also when a
// test runs again in the same process, as with --gtest_repeat): the
// directory and its `.progress` and `.log` siblings are removed.
inline std::string scratch_dir(const std::string& name) {
  const auto dir =
      ::testing::TempDir() + "remat_trainer_" + name + "_" + std::to_string(::getpid());
  for (const auto& path : {dir, dir + ".progress", dir + ".log"}) remove_tree(path);
  return dir;
}

// Arguments for a short CPU run writing into `output_dir`.
inline remat::TrainingArguments args_in(const std::string& output_dir) {
  remat::TrainingArguments args;
  args.output_dir = output_dir;
  args.use_cpu = true;
  args.learning_rate = 1e-2;
  args.save_strategy = "no";
  args.logging_steps = 1;
  args.report_to = {"jsonl"};
  args.dataloader_num_workers = 1;
  return args;
}

// args_in() a fresh scratch directory.
inline remat::TrainingArguments base_args(const std::string& name) {
  return args_in(scratch_dir(name));
}

inline std::vector<torch::Tensor> weights(const torch::nn::Module& model) {
  std::vector<torch::Tensor> result;
  for (const auto& p : model.parameters()) result.push_back(p.detach().clone());
  return result;
}

inline std::vector<double> losses(const remat::Trainer& trainer) {
  std::vector<double> result;
  for (const auto& record : trainer.log_history()) {
    if (record.contains("loss")) result.push_back(record["loss"].get<double>());
  }
  return result;
}

inline std::string slurp(const std::string& path) {
  std::ifstream in(path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// The run trainer_child performs (and the tests compare against): 16
// examples, batches of 4, dropout on, a cosine schedule.
inline std::shared_ptr<VectorDataset> child_dataset() { return make_dataset(16, 6); }
inline std::shared_ptr<remat::models::CausalLMImpl> child_model() { return tiny_gpt2(0.1); }
inline remat::TrainingArguments child_args(const std::string& output_dir, int64_t max_steps) {
  remat::TrainingArguments args;
  args.output_dir = output_dir;
  args.use_cpu = true;
  args.learning_rate = 1e-2;
  args.per_device_train_batch_size = 4;
  args.max_steps = max_steps;
  args.lr_scheduler_type = "cosine";
  args.save_strategy = "no";
  args.logging_steps = 1;
  args.dataloader_num_workers = 1;
  return args;
}

}  // namespace remat::test
