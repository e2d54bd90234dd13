#pragma once

/// \file
/// remat::Trainer: the training loop of Hugging Face's Trainer for LibTorch
/// modules, driven by remat::TrainingArguments.
/// \code
///   auto args = remat::TrainingArguments::parse(argc, argv);  // --gradient_checkpointing ...
///   remat::Trainer trainer(model, args, train_dataset, eval_dataset);
///   auto result = trainer.train();      // result.metrics: train_runtime, train_loss, ...
///   auto metrics = trainer.evaluate();  // eval_loss, perplexity
/// \endcode
///
/// The loop: epochs or max_steps, gradient accumulation with the loss
/// normalized by the target tokens of all accumulated micro-batches, AdamW
/// with Hugging Face's parameter groups, every learning-rate schedule,
/// gradient clipping, bf16 autocast, fp16 autocast with a dynamic loss scaler
/// (remat::GradScaler; steps with inf/NaN gradients are skipped), gradient
/// checkpointing, evaluation, per-step logging (also as JSON lines with
/// report_to jsonl), checkpoints (`output_dir/checkpoint-<step>`, written
/// atomically, pruned to save_total_limit, with transformers'
/// trainer_state.json) and exact resume from them.
///
/// Callbacks (remat::TrainerCallback, transformers' hooks and call order)
/// observe the loop and steer it through TrainerControl; a
/// DefaultFlowCallback decides when to log, evaluate, save and stop.
/// SIGINT/SIGTERM during train() finish the current optimizer step, save a
/// checkpoint and return (TrainOutput::interrupted); a second signal ends the
/// process at once. Failures name the step: a non-finite loss or gradient
/// norm (or, with skip_nonfinite_steps, the step is skipped and counted), and
/// out-of-memory errors say what to change.
///
/// Started by torchrun (WORLD_SIZE set), the Trainer joins a process group
/// and trains data parallel: DDP, or FSDP when `fsdp` is set (see
/// docs/distributed.md). Every rank runs the same loop on its shard of the
/// data; rank 0 logs, writes log.jsonl and saves, and the callbacks see
/// state().is_world_process_zero. A stop (SIGINT, SIGTERM, request_stop())
/// on any rank stops all of them after the same step.

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <atomic>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "remat/data/data_loader.h"
#include "remat/data/dataset.h"
#include "remat/trainer_callback.h"
#include "remat/training_arguments.h"

namespace remat {

class ProgressCallback;

namespace distributed {
class ProcessGroup;
class DataParallel;
}  // namespace distributed

/// What Trainer::train() returns (transformers' TrainOutput, plus how the
/// run ended).
struct TrainOutput {
  int64_t global_step = 0;
  /// Mean loss over the optimizer steps of this train() call (as
  /// metrics["train_loss"]).
  double training_loss = 0.0;
  /// transformers' train metrics: train_runtime, train_samples_per_second,
  /// train_steps_per_second, total_flos, train_loss, epoch; with fp16 or
  /// skip_nonfinite_steps also train_skipped_steps; with
  /// skip_memory_metrics false the *_mem_* figures.
  std::map<std::string, double> metrics;
  /// SIGINT, SIGTERM or request_stop() ended the run early; `checkpoint`
  /// holds where it stopped.
  bool interrupted = false;
  /// The last checkpoint this call saved ("" if none).
  std::string checkpoint;
};

/// Trains and evaluates a module as the Hugging Face Trainer does.
class Trainer {
 public:
  using Callbacks = std::vector<std::shared_ptr<TrainerCallback>>;

  /// `model` is trained in place. Without a `collator`, batches are padded by
  /// DataCollatorForCausalLM with the model's pad token (remat causal LMs)
  /// or 0. `callbacks` come after the Trainer's default ones and get
  /// on_init_end before the constructor returns.
  Trainer(std::shared_ptr<torch::nn::Module> model, TrainingArguments args,
          std::shared_ptr<const data::Dataset> train_dataset,
          std::shared_ptr<const data::Dataset> eval_dataset = nullptr,
          data::CollateFn collator = nullptr, Callbacks callbacks = {});
  virtual ~Trainer() = default;

  /// Runs the training loop; saves the final model into output_dir (not when
  /// interrupted). While it runs, SIGINT and SIGTERM stop it after the
  /// current optimizer step with a checkpoint (whatever save_strategy says),
  /// and the previous handlers come back when it returns.
  TrainOutput train();

  /// Loss over the whole eval dataset, per target token: {"eval_loss",
  /// "perplexity", "eval_runtime", "eval_samples_per_second",
  /// "eval_steps_per_second"}, and eval_mem_* with skip_memory_metrics false.
  /// Logged, then passed to on_evaluate.
  std::map<std::string, double> evaluate();

  /// The loss of one micro-batch: the sum of its token losses divided by
  /// `num_items_in_batch`, the target tokens of all micro-batches of the
  /// optimizer step (so accumulation equals one big batch). The default
  /// works for remat's causal LMs; override it to train any other module.
  virtual torch::Tensor compute_loss(torch::nn::Module& model, const data::Batch& batch,
                                     int64_t num_items_in_batch);

  /// Writes the model into `output_dir` (a Hugging Face directory for remat's
  /// causal LMs, else `model.pt`): the final model, and the model part of
  /// every checkpoint. Override to save a custom module differently (resume
  /// then needs a matching `model.pt` or Hugging Face directory). In a
  /// distributed run the Trainer calls it on rank 0 only, with the full
  /// parameters gathered.
  virtual void save_model(const std::string& output_dir) const;

  /// Asks train() to stop as SIGINT does: after the current optimizer step,
  /// with a checkpoint. Safe to call from any thread, or from a callback. In
  /// a distributed run the ranks agree on the stop once per step, when their
  /// gradients are reduced: a request made after that (from on_step_end, say)
  /// stops all ranks after the next step.
  void request_stop() { stop_requested_ = true; }

  /// Registers a callback after those already there.
  void add_callback(std::shared_ptr<TrainerCallback> callback);
  /// Removes `callback`; returns whether it was registered.
  bool remove_callback(const std::shared_ptr<TrainerCallback>& callback);
  /// The callbacks in call order, the default ones first.
  const Callbacks& callbacks() const { return callbacks_; }

  /// Where training stands (global step, epoch, log history, ...), as
  /// callbacks see it and trainer_state.json records it.
  const TrainerState& state() const { return state_; }

  /// Every log record (training lines, evaluations, the final metrics), as in
  /// trainer_state.json's log_history.
  const std::vector<nlohmann::json>& log_history() const { return state_.log_history; }

  const TrainingArguments& args() const { return args_; }
  const torch::Device& device() const { return device_; }

  /// The process group when the process was started by torchrun (WORLD_SIZE
  /// set), else null. Training then is data parallel: DDP, or FSDP when
  /// `fsdp` is set; rank 0 logs and saves.
  const std::shared_ptr<distributed::ProcessGroup>& process_group() const { return group_; }

 private:
  struct Position;
  struct Run;
  class MemoryTracker;

  void add_default_callbacks();
  template <typename Hook>
  void call_callbacks(Hook hook);
  void log(nlohmann::json logs);
  void training_step(Run& run, std::vector<data::Batch>& group);
  static double model_flops(const Run& run, const data::Batch& batch);
  void maybe_log_save_evaluate(Run& run);
  bool stop_if_interrupted(Run& run);
  void save_checkpoint(Run& run);
  // Throws, naming the step and the parameter, if a parameter is not finite;
  // `what` is what would have been saved.
  void check_parameters_finite(const Run& run, const std::string& what);
  void resume(const std::string& dir, Run& run);
  void load_model(const std::string& dir);
  // save_model() of the full model: gathered under FSDP, written by rank 0
  // (the others wait).
  void save_model_files(const std::string& dir);
  // optimizer.pt, or optimizer.rank<r>.pt where the optimizer state is
  // sharded (FSDP).
  std::string optimizer_file() const;
  bool is_main_process() const;
  void set_process_flags();
  std::map<std::string, double> train_metrics(const Run& run);

  std::shared_ptr<torch::nn::Module> model_;
  TrainingArguments args_;
  std::shared_ptr<const data::Dataset> train_dataset_, eval_dataset_;
  data::CollateFn collator_;
  torch::Device device_;
  Callbacks callbacks_;
  TrainerState state_;
  TrainerControl control_;
  std::shared_ptr<MemoryTracker> memory_;
  // The progress bar among the default callbacks; while it draws, the
  // per-step and evaluation lines go above it instead of to the logger.
  std::shared_ptr<ProgressCallback> progress_;
  // A line for the console that keeps the progress bar intact.
  void say(const std::string& line) const;
  bool bar_shown() const;
  std::atomic<bool> stop_requested_{false};
  std::shared_ptr<distributed::ProcessGroup> group_;
  std::shared_ptr<distributed::DataParallel> parallel_;
  // The process id in the name of the temporary checkpoint directory: rank
  // 0's, the same on every rank (they all write into it).
  int64_t checkpoint_pid_ = 0;
};

}  // namespace remat
