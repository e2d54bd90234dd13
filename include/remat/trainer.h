#pragma once

/// \file
/// remat::Trainer: the training loop of Hugging Face's Trainer for LibTorch
/// modules, driven by remat::TrainingArguments.
/// \code
///   auto args = remat::TrainingArguments::parse(argc, argv);  // --gradient_checkpointing ...
///   remat::Trainer trainer(model, args, train_dataset, eval_dataset);
///   auto result = trainer.train();
///   auto metrics = trainer.evaluate();  // eval_loss, perplexity
/// \endcode
///
/// This is the core loop: epochs or max_steps, gradient accumulation with
/// the loss normalized by the target tokens of all accumulated micro-batches,
/// AdamW with Hugging Face's parameter groups, every learning-rate schedule,
/// gradient clipping, bf16 autocast, gradient checkpointing, evaluation and
/// per-step logging (also as JSON lines with report_to jsonl). Checkpoints
/// during training, resume, fp16 loss scaling and callbacks are not part of
/// it yet: fp16 is refused, and save_strategy only produces the final model.

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "remat/data/data_loader.h"
#include "remat/data/dataset.h"
#include "remat/training_arguments.h"

namespace remat {

/// What Trainer::train() returns.
struct TrainOutput {
  int64_t global_step = 0;
  /// Mean loss over all optimizer steps.
  double training_loss = 0.0;
};

/// Trains and evaluates a module as the Hugging Face Trainer does.
class Trainer {
 public:
  /// `model` is trained in place. Without a `collator`, batches are padded by
  /// DataCollatorForCausalLM with the model's pad token (remat causal LMs)
  /// or 0.
  Trainer(std::shared_ptr<torch::nn::Module> model, TrainingArguments args,
          std::shared_ptr<const data::Dataset> train_dataset,
          std::shared_ptr<const data::Dataset> eval_dataset = nullptr,
          data::CollateFn collator = nullptr);
  virtual ~Trainer() = default;

  /// Runs the training loop; saves the final model into output_dir.
  TrainOutput train();

  /// Loss over the whole eval dataset, per target token: {"eval_loss",
  /// "perplexity"}.
  std::map<std::string, double> evaluate();

  /// The loss of one micro-batch: the sum of its token losses divided by
  /// `num_items_in_batch`, the target tokens of all micro-batches of the
  /// optimizer step (so accumulation equals one big batch). The default
  /// works for remat's causal LMs; override it to train any other module.
  virtual torch::Tensor compute_loss(torch::nn::Module& model, const data::Batch& batch,
                                     int64_t num_items_in_batch);

  /// Every log record (training lines and evaluations), as in
  /// trainer_state.json's log_history.
  const std::vector<nlohmann::json>& log_history() const { return log_history_; }

  const TrainingArguments& args() const { return args_; }
  const torch::Device& device() const { return device_; }

 private:
  void log(nlohmann::json record);
  void save_model() const;

  std::shared_ptr<torch::nn::Module> model_;
  TrainingArguments args_;
  std::shared_ptr<const data::Dataset> train_dataset_, eval_dataset_;
  data::CollateFn collator_;
  torch::Device device_;
  std::vector<nlohmann::json> log_history_;
};

}  // namespace remat
