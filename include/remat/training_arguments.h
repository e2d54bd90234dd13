#pragma once

/// \file
/// The settings of a training run, with the names, types, defaults, command
/// line and checks of Hugging Face's `transformers.TrainingArguments`
/// (transformers 5.24), so that what a user knows carries over.
///
/// \code
///   // train --output_dir out --learning_rate 3e-5 --gradient_checkpointing
///   int main(int argc, char** argv) {
///     auto args = remat::TrainingArguments::parse(argc, argv);
///   }
/// \endcode
///
/// Every field, its default and what is valid are listed in
/// docs/training_arguments.md and by `--help`; both are generated from the one
/// field table that also drives the command line and the JSON form.
///
/// This header does not include the torch headers.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <stdexcept>
#include <string>
#include <utility>
#include <vector>

namespace CLI {
class App;
}  // namespace CLI

namespace remat::nn {
struct GradientCheckpointingOptions;
}  // namespace remat::nn

namespace remat {

/// A bad training argument: an invalid value, an unknown flag or JSON key, a
/// contradiction between fields. The message names the field, the value and
/// what would be valid; field() is the field's name (or the unknown argument).
///
/// Example: `catch (const remat::TrainingArgumentsError& e) { std::cerr << e.what(); }`
class TrainingArgumentsError : public std::invalid_argument {
 public:
  TrainingArgumentsError(std::string field, const std::string& message);

  /// The field (or command-line argument, or JSON key) the error is about.
  const std::string& field() const noexcept { return field_; }

 private:
  std::string field_;
};

/// Thrown by TrainingArguments::parse() and parse_known_args() for `--help`
/// or `-h`: what() is the help text. A program prints it and exits with 0.
///
/// Example: `catch (const remat::HelpRequested& help) { std::cout << help.what(); return 0; }`
class HelpRequested : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

struct TrainingArguments;

/// One field of TrainingArguments as the command line, the JSON form, `--help`
/// and the documentation see it. TrainingArguments::fields() lists them all.
///
/// Example: print the configuration of a run.
/// \code
///   for (const auto& field : remat::TrainingArguments::fields())
///     std::cout << field.name << " = " << field.get(args).dump() << "\n";
/// \endcode
struct TrainingArgumentsField {
  /// The Hugging Face name: the member, the flag `--name` and the JSON key.
  std::string name;
  /// Other names accepted on the command line and in JSON (transformers 5
  /// renamed some fields). The flag `--a-b` is also accepted for `--a_b`.
  std::vector<std::string> aliases;
  /// The group the field is listed under in `--help` and the documentation.
  std::string section;
  /// The C++ type of the member, e.g. `std::optional<int64_t>`.
  std::string type;
  /// What follows the flag on the command line, e.g. `FLOAT`, `[BOOL]`.
  std::string metavar;
  /// One line saying what the field does.
  std::string help;
  /// Which values validate() accepts; empty when any value of the type is.
  std::string valid;
  /// The default, as JSON text (`5e-05`, `"linear"`, `null`).
  std::string default_value;
  /// The field's value as JSON.
  std::function<nlohmann::json(const TrainingArguments&)> get;
  /// Sets the field from JSON; throws TrainingArgumentsError when the JSON
  /// value has the wrong type. Does not run validate().
  std::function<void(TrainingArguments&, const nlohmann::json&)> set;
};

/// The settings of a training run: Hugging Face's TrainingArguments, with the
/// same field names, types (`int` is `int64_t`, `float` is `double`,
/// `Optional[X]` is `std::optional<X>`, a dict is a `nlohmann::json` object)
/// and defaults as transformers 5.24. A plain struct: set fields directly, or
/// fill it from the command line or a JSON file; validate() checks it.
///
/// Deliberate differences from transformers 5.24, each explained in
/// docs/training_arguments.md: output_dir defaults to "trainer_output" itself
/// (Hugging Face declares None and sets that value on construction); the
/// dict fields default to an empty object instead of None (the same meaning);
/// report_to holds the list of reporters (Hugging Face turns "none" into []
/// on construction); gradient_checkpointing is a bool (Hugging Face's
/// `bool | None` becomes False on construction); nothing changes fields
/// behind the user's back (Hugging Face sets do_eval when eval_strategy is not
/// "no"); fields remat does not implement are absent, and those transformers 5
/// removed (warmup_ratio, logging_dir, overwrite_output_dir) are errors that
/// say what replaced them. Fields of remat's own are listed last, under
/// "remat extensions (not in transformers)".
///
/// Example:
/// \code
///   remat::TrainingArguments args;
///   args.output_dir = "runs/gpt";
///   args.learning_rate = 3e-4;
///   args.gradient_checkpointing = true;
///   args.gradient_checkpointing_kwargs = {{"every_n_blocks", 2}};
///   args.validate();
/// \endcode
struct TrainingArguments {
  // --- Output ---

  /// Where checkpoints, logs and the final model are written.
  std::string output_dir = "trainer_output";

  // --- Training length and batch size ---

  /// Number of passes over the training data; a fraction runs that part of
  /// the last epoch. Ignored when max_steps > 0.
  double num_train_epochs = 3.0;
  /// Number of optimizer steps to train for, overriding num_train_epochs;
  /// -1: train for num_train_epochs.
  int64_t max_steps = -1;
  /// Batch size per device for training.
  int64_t per_device_train_batch_size = 8;
  /// Batch size per device for evaluation.
  int64_t per_device_eval_batch_size = 8;
  /// Batches whose gradients are summed before each optimizer step.
  int64_t gradient_accumulation_steps = 1;

  // --- Learning rate and scheduler ---

  /// Peak learning rate of AdamW, reached at the end of the warmup.
  double learning_rate = 5e-5;
  /// The learning-rate schedule: linear, cosine, cosine_with_min_lr, constant,
  /// constant_with_warmup, polynomial or inverse_sqrt.
  std::string lr_scheduler_type = "linear";
  /// Extra arguments of the schedule, e.g. `{"num_cycles": 0.5}` for cosine.
  nlohmann::json lr_scheduler_kwargs = nlohmann::json::object();
  /// Linear warmup from 0 to learning_rate: a whole number of steps, or a
  /// value in [0, 1) as a fraction of the total steps. transformers 5 removed
  /// warmup_ratio and gave its role to this field.
  double warmup_steps = 0;

  // --- AdamW ---

  /// The AdamW implementation, by Hugging Face's name: "adamw_torch_fused"
  /// (ATen's fused kernel, one launch per device and dtype; Hugging Face's
  /// default with torch >= 2.8) or "adamw_torch" (ATen's multi-tensor
  /// kernels). Both compute torch.optim.AdamW's update.
  std::string optim = "adamw_torch_fused";
  /// Decoupled weight decay; not applied to biases and normalization weights.
  double weight_decay = 0.0;
  /// Decay rate of the first-moment estimate.
  double adam_beta1 = 0.9;
  /// Decay rate of the second-moment estimate.
  double adam_beta2 = 0.999;
  /// Added to the denominator for numerical stability.
  double adam_epsilon = 1e-8;
  /// Global gradient-norm clipping before each optimizer step; 0 disables it.
  double max_grad_norm = 1.0;

  // --- Mixed precision ---

  /// bfloat16 autocast.
  bool bf16 = false;
  /// float16 autocast with loss scaling.
  bool fp16 = false;

  // --- Gradient checkpointing ---

  /// Checkpoint the model's blocks: keep only their inputs in the forward and
  /// recompute them during backward. transformers 5 calls it
  /// activation_checkpointing; the command line and JSON accept both names.
  bool gradient_checkpointing = false;
  /// How blocks are checkpointed: use_reentrant, preserve_rng_state,
  /// determinism_check, check_params, every_n_blocks (see
  /// gradient_checkpointing_options()). Also read as
  /// activation_checkpointing_kwargs.
  nlohmann::json gradient_checkpointing_kwargs = nlohmann::json::object();

  // --- Logging ---

  /// When to log: "no", "steps" (every logging_steps) or "epoch".
  std::string logging_strategy = "steps";
  /// Log every this many optimizer steps: a whole number, or a value in
  /// (0, 1) as a fraction of the total steps.
  double logging_steps = 500;
  /// Also log after the first optimizer step.
  bool logging_first_step = false;
  /// Where logs go besides the console: "tensorboard", "jsonl"; empty (or
  /// {"none"}) for nowhere. transformers 5 removed logging_dir: TensorBoard
  /// files go to $TENSORBOARD_LOGGING_DIR, else output_dir/runs/<date>_<host>.
  std::vector<std::string> report_to = {};
  /// Hide the progress bar; unset: hidden when remat's logger level is above
  /// warning.
  std::optional<bool> disable_tqdm;
  /// Leave memory figures out of the logged metrics.
  bool skip_memory_metrics = true;

  // --- Scripts and evaluation ---

  /// For scripts: whether to train. The Trainer does not read it.
  bool do_train = false;
  /// For scripts: whether to evaluate. The Trainer evaluates as
  /// eval_strategy says.
  bool do_eval = false;
  /// When to evaluate during training: "no", "steps" or "epoch".
  std::string eval_strategy = "no";
  /// Evaluate every this many optimizer steps (whole number, or fraction of
  /// the total in (0, 1)); unset: logging_steps.
  std::optional<double> eval_steps;

  // --- Checkpoints ---

  /// When to save a checkpoint: "no", "steps" or "epoch".
  std::string save_strategy = "steps";
  /// Save every this many optimizer steps (whole number, or fraction of the
  /// total in (0, 1)).
  double save_steps = 500;
  /// Keep at most this many checkpoints, deleting the oldest; unset: all.
  std::optional<int64_t> save_total_limit;
  /// Checkpoint to resume from: a checkpoint directory, or "latest" for the
  /// newest checkpoint in output_dir; unset: start from scratch.
  std::optional<std::string> resume_from_checkpoint;

  // --- Reproducibility ---

  /// Seed of the random generators, set at the start of training.
  int64_t seed = 42;
  /// Seed of the data sampler; unset: seed.
  std::optional<int64_t> data_seed;

  // --- Hardware and data loading ---

  /// Train on the CPU even when a GPU is present.
  bool use_cpu = false;
  /// Drop the last incomplete batch of each epoch.
  bool dataloader_drop_last = false;
  /// Worker threads loading batches; 0: the training thread loads them.
  int64_t dataloader_num_workers = 0;

  // --- Distributed ---

  /// Timeout of the process-group operations, in seconds.
  int64_t ddp_timeout = 1800;
  /// Fully Sharded Data Parallel: space-separated options (full_shard,
  /// shard_grad_op, hybrid_shard, hybrid_shard_zero2, no_shard, offload,
  /// auto_wrap); unset or empty: no FSDP.
  std::optional<std::string> fsdp;
  /// FSDP settings with Hugging Face's keys (version, reshard_after_forward,
  /// cpu_offload, activation_checkpointing, ...): a JSON object, or the path
  /// of a JSON file as a JSON string.
  nlohmann::json fsdp_config = nlohmann::json::object();

  // --- remat extensions (not in transformers) ---

  /// On a non-finite loss or gradient norm, skip that optimizer step (no
  /// update; counted, logged and reported as train_skipped_steps) instead of
  /// stopping with an error naming the step.
  bool skip_nonfinite_steps = false;

  /// Checks every field and the combinations of fields; throws
  /// TrainingArgumentsError naming the field, the value and what is valid.
  /// Logs warnings() through remat::logger().
  ///
  /// Example: `args.per_device_train_batch_size = 0; args.validate();  // throws`
  void validate() const;

  /// Advice about valid but doubtful combinations, such as
  /// gradient_checkpointing with FSDP full sharding. validate() logs them.
  std::vector<std::string> warnings() const;

  /// Every field under its name, as written to training_args.json.
  ///
  /// Example: `std::ofstream("training_args.json") << args.to_json().dump(2);`
  nlohmann::json to_json() const;

  /// to_json() as indented text.
  std::string to_json_string() const;

  /// Writes to_json_string() to `path`; throws TrainingArgumentsError if the
  /// file cannot be written.
  void to_json_file(const std::string& path) const;

  /// Reads a JSON object of fields (missing ones keep their defaults; unknown
  /// keys are errors with a "did you mean" suggestion) and validates the
  /// result, as Hugging Face's HfArgumentParser.parse_json_file does.
  ///
  /// Example: `auto args = TrainingArguments::from_json({{"learning_rate", 3e-4}});`
  static TrainingArguments from_json(const nlohmann::json& json);

  /// from_json() of the file at `path`.
  static TrainingArguments from_json_file(const std::string& path);

  /// Parses a command line of training arguments with Hugging Face's syntax
  /// and validates the result: `--learning_rate 3e-5`, `--bf16` (a bare bool
  /// flag is true) or `--bf16 false`, `--report_to tensorboard jsonl`,
  /// `--lr_scheduler_kwargs '{"num_cycles": 1}'`, `--fsdp "full_shard offload"`.
  /// argv[0] is the program. Unknown arguments are errors with a "did you
  /// mean" suggestion; `--help` throws HelpRequested with the list of fields.
  ///
  /// Example: `auto args = remat::TrainingArguments::parse(argc, argv);`
  static TrainingArguments parse(int argc, const char* const* argv);

  /// parse() for programs with arguments of their own: the arguments that
  /// are not training arguments are returned, in order, instead of rejected
  /// (Hugging Face's `return_remaining_strings=True`). To list the program's
  /// own flags in `--help` and check them, use add_training_arguments().
  ///
  /// Example: `auto [args, rest] = remat::TrainingArguments::parse_known_args(argc, argv);`
  static std::pair<TrainingArguments, std::vector<std::string>> parse_known_args(
      int argc, const char* const* argv);

  /// fsdp_config as a JSON object: the contents of the file when fsdp_config
  /// is a path, with the `fsdp_` prefix Hugging Face allows on keys removed.
  /// Throws TrainingArgumentsError if the file cannot be read or parsed.
  nlohmann::json fsdp_config_object() const;

  /// The remat::nn::GradientCheckpointingOptions that gradient_checkpointing_kwargs
  /// describe, for remat::nn::gradient_checkpointing_enable(). Needs
  /// <remat/nn/checkpointable.h> (which includes torch) at the call site.
  ///
  /// Example:
  /// \code
  ///   if (args.gradient_checkpointing)
  ///     remat::nn::gradient_checkpointing_enable(*model, args.gradient_checkpointing_options());
  /// \endcode
  nn::GradientCheckpointingOptions gradient_checkpointing_options() const;

  /// The field table, in the order of `--help` and the documentation.
  static const std::vector<TrainingArgumentsField>& fields();
};

/// Two TrainingArguments are equal when every field is.
bool operator==(const TrainingArguments& a, const TrainingArguments& b);
/// Negation of operator==.
bool operator!=(const TrainingArguments& a, const TrainingArguments& b);

/// Adds every training argument to `app` as an option (with Hugging Face's
/// syntax, help text, type and default), writing into `args` as `app` parses.
/// The program adds its own options to the same app. Unknown arguments make
/// app.exit() print a "did you mean" suggestion. Call args.validate() after
/// parsing. Needs <CLI/CLI.hpp> at the call site.
///
/// Example:
/// \code
///   CLI::App app{"Fine-tunes a model"};
///   remat::TrainingArguments args;
///   std::string model_name_or_path;
///   app.add_option("--model_name_or_path", model_name_or_path, "Model to start from")->required();
///   remat::add_training_arguments(app, args);
///   try {
///     app.parse(argc, argv);
///     args.validate();
///   } catch (const CLI::ParseError& e) {
///     return app.exit(e);
///   }
/// \endcode
void add_training_arguments(CLI::App& app, TrainingArguments& args);

}  // namespace remat
