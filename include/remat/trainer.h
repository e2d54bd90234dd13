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
/// The loop: epochs or max_steps, gradient accumulation with the loss
/// normalized by the target tokens of all accumulated micro-batches, AdamW
/// with Hugging Face's parameter groups, every learning-rate schedule,
/// gradient clipping, bf16 autocast, gradient checkpointing, evaluation,
/// per-step logging (also as JSON lines with report_to jsonl), checkpoints
/// (`output_dir/checkpoint-<step>`, written atomically, pruned to
/// save_total_limit) and exact resume from them. fp16 loss scaling, callbacks
/// and signal handling are not part of it yet; fp16 is refused.

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

namespace distributed {
class ProcessGroup;
class DataParallel;
}  // namespace distributed

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

  /// Asks train() to stop after the current optimizer step; it then saves a
  /// checkpoint (unless save_strategy is "no") and returns.
  void request_stop() { stop_requested_ = true; }

  /// Called after every optimizer step with the new global step; the first
  /// hook for subclasses (callbacks come later).
  virtual void on_step_end(int64_t global_step) { (void)global_step; }

  /// Every log record (training lines and evaluations), as in
  /// trainer_state.json's log_history.
  const std::vector<nlohmann::json>& log_history() const { return log_history_; }

  const TrainingArguments& args() const { return args_; }
  const torch::Device& device() const { return device_; }

  /// The process group when the process was started by torchrun (WORLD_SIZE
  /// set), else null. Training then is data parallel: DDP, or FSDP when
  /// `fsdp` is set; rank 0 logs and saves.
  const std::shared_ptr<distributed::ProcessGroup>& process_group() const { return group_; }

 private:
  struct Position;
  void log(nlohmann::json record);
  void save_model() const;
  void save_model_to(const std::string& dir) const;
  static void save_model_files(const torch::nn::Module& model, const std::string& dir);
  std::string optimizer_file() const;
  void save_checkpoint(const Position& position, torch::optim::Optimizer& optimizer,
                       const nlohmann::json& scheduler_state);
  Position resume(const std::string& dir, torch::optim::Optimizer& optimizer,
                  nlohmann::json& scheduler_state);

  std::shared_ptr<torch::nn::Module> model_;
  TrainingArguments args_;
  std::shared_ptr<const data::Dataset> train_dataset_, eval_dataset_;
  data::CollateFn collator_;
  torch::Device device_;
  std::vector<nlohmann::json> log_history_;
  bool stop_requested_ = false;
  std::shared_ptr<distributed::ProcessGroup> group_;
  std::shared_ptr<distributed::DataParallel> parallel_;
};

}  // namespace remat
