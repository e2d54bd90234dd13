#pragma once

/// \file
/// Trainer callbacks, as in Hugging Face's `transformers.TrainerCallback`:
/// the Trainer calls every registered callback at fixed points of the loop,
/// passing the arguments, the mutable TrainerState and a TrainerControl the
/// callback may set to stop training, save, evaluate or log.
/// \code
///   struct StopAtLoss : remat::TrainerCallback {
///     void on_log(const remat::TrainingArguments&, remat::TrainerState&,
///                 remat::TrainerControl& control, const nlohmann::json& logs) override {
///       if (logs.contains("loss") && logs["loss"].get<double>() < 0.1)
///         control.should_training_stop = true;
///     }
///   };
///   trainer.add_callback(std::make_shared<StopAtLoss>());
/// \endcode
/// The call order per optimizer step is the one transformers uses:
/// on_step_begin, (micro-batches), on_pre_optimizer_step, on_optimizer_step,
/// on_step_end, then on_log / on_evaluate / on_save as `control` asks;
/// on_epoch_begin / on_epoch_end around each epoch; on_train_begin /
/// on_train_end around the loop.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "remat/training_arguments.h"

namespace remat {

/// Where training stands; the fields and names of transformers'
/// TrainerState, saved as `trainer_state.json` in every checkpoint.
struct TrainerState {
  /// Fractional epoch: epochs done plus the share of the current one.
  double epoch = 0.0;
  int64_t global_step = 0;
  int64_t max_steps = 0;
  int64_t logging_steps = 500;
  int64_t eval_steps = 500;
  int64_t save_steps = 500;
  int64_t train_batch_size = 0;
  int64_t num_train_epochs = 0;
  /// Non-padding input tokens consumed so far (over all ranks).
  int64_t num_input_tokens_seen = 0;
  double total_flos = 0.0;
  std::vector<nlohmann::json> log_history;
  std::optional<double> best_metric;
  std::optional<int64_t> best_global_step;
  std::optional<std::string> best_model_checkpoint;
  bool is_local_process_zero = true;
  bool is_world_process_zero = true;
  /// transformers' hyper-parameter search fields; remat keeps them only so
  /// the file has transformers' keys (always false / null).
  bool is_hyper_param_search = false;
  std::optional<std::string> trial_name;
  nlohmann::json trial_params = nullptr;
  /// The state of callbacks that save one, by class name; the Trainer
  /// stores its TrainerControl here as transformers does.
  nlohmann::json stateful_callbacks = nlohmann::json::object();

  /// The JSON transformers writes (sorted keys, indent 2 when dumped): the
  /// 20 keys of transformers 5.24's TrainerState, `train_batch_size` null
  /// while 0. transformers.TrainerState.load_from_json reads it.
  nlohmann::json to_json() const;
  /// Reads what to_json() or transformers wrote; missing keys keep their
  /// defaults, unknown keys are errors.
  static TrainerState from_json(const nlohmann::json& json);
  /// to_json() as transformers' save_to_json writes it: indent 2, sorted
  /// keys, a final newline.
  std::string to_json_string() const;
};

/// What callbacks ask the Trainer to do next; reset by the Trainer after it
/// acts (as transformers' TrainerControl).
struct TrainerControl {
  bool should_training_stop = false;
  bool should_epoch_stop = false;
  bool should_save = false;
  bool should_evaluate = false;
  bool should_log = false;

  /// transformers' ExportableState form, kept in
  /// trainer_state.json's stateful_callbacks["TrainerControl"]:
  /// {"args": {the five flags}, "attributes": {}}.
  nlohmann::json state() const;
};

/// Base class of all callbacks; every hook does nothing by default.
class TrainerCallback {
 public:
  virtual ~TrainerCallback() = default;

  virtual void on_init_end(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  virtual void on_train_begin(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  virtual void on_train_end(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  virtual void on_epoch_begin(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  virtual void on_epoch_end(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  virtual void on_step_begin(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  /// After each micro-batch of an accumulated step except the last.
  virtual void on_substep_end(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  /// After gradient clipping, before optimizer.step().
  virtual void on_pre_optimizer_step(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  virtual void on_optimizer_step(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  virtual void on_step_end(const TrainingArguments&, TrainerState&, TrainerControl&) {}
  virtual void on_evaluate(const TrainingArguments&, TrainerState&, TrainerControl&,
                           const std::map<std::string, double>& /*metrics*/) {}
  /// After a checkpoint directory is complete; `checkpoint_dir` is its path.
  virtual void on_save(const TrainingArguments&, TrainerState&, TrainerControl&,
                       const std::string& /*checkpoint_dir*/) {}
  /// Every record the Trainer logs (training lines, evaluations, the final
  /// summary), as appended to state.log_history.
  virtual void on_log(const TrainingArguments&, TrainerState&, TrainerControl&,
                      const nlohmann::json& /*logs*/) {}
};

/// What decides when the Trainer logs, evaluates, saves and stops, as
/// transformers' DefaultFlowCallback: after each optimizer step it sets
/// control.should_log every logging_steps (and after step 1 with
/// logging_first_step), should_evaluate every eval_steps and should_save every
/// save_steps ("steps" strategies), and should_training_stop at max_steps,
/// with a last evaluation and save there for the "steps" strategies; at each
/// epoch end it sets them for the "epoch" strategies. The Trainer registers
/// one before any other callback; callbacks after it may change its
/// decisions.
class DefaultFlowCallback : public TrainerCallback {
 public:
  void on_step_end(const TrainingArguments& args, TrainerState& state,
                   TrainerControl& control) override;
  void on_epoch_end(const TrainingArguments& args, TrainerState& state,
                    TrainerControl& control) override;
};

}  // namespace remat
