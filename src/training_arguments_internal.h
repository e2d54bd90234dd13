#pragma once

// The tables behind TrainingArguments, shared by its sources and the program
// that generates docs/training_arguments.md. Not installed.

#include <nlohmann/json.hpp>

#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "remat/training_arguments.h"

namespace remat::detail {

/// The words that follow a flag on the command line.
using Words = std::vector<std::string>;

/// A field as the command line and validate() see it, beyond what the public
/// TrainingArgumentsField says.
struct FieldSpec {
  TrainingArgumentsField info;
  /// How many words may follow the flag.
  int min_words = 1;
  int max_words = 1;
  /// Sets the field from the words that followed `flag` (as the user spelled
  /// it); throws TrainingArgumentsError.
  std::function<void(TrainingArguments&, const Words&, const std::string& flag)> parse_words;
  /// The checks of the field alone; throws TrainingArgumentsError.
  std::function<void(const TrainingArguments&)> check;
};

/// Every field, in documentation order.
const std::vector<FieldSpec>& field_specs();

/// The field called `name` (or one of its aliases), or nullptr.
const FieldSpec* find_field(const std::string& name);

/// A name that a field, key or option may take, and what it means.
struct Choice {
  std::string name;
  std::string help;
};

/// A key of a JSON-object field: its name, which values it takes (as text),
/// its default (as text; empty when it has none), what it does, and the check
/// of its value.
struct KeySpec {
  std::string name;
  std::string type;
  std::string default_value;
  std::string help;
  std::function<bool(const nlohmann::json&)> accepts;
};

/// The values of lr_scheduler_type, with the keys of lr_scheduler_kwargs each
/// accepts.
struct SchedulerSpec {
  Choice choice;
  std::vector<KeySpec> kwargs;
};
const std::vector<SchedulerSpec>& lr_schedulers();

/// The values of optim.
const std::vector<Choice>& optimizers();

/// The values of logging_strategy, eval_strategy and save_strategy.
const std::vector<Choice>& interval_strategies();

/// The values of report_to.
const std::vector<Choice>& reporters();

/// The options of fsdp.
const std::vector<Choice>& fsdp_options();

/// The keys of fsdp_config that validate() knows.
const std::vector<KeySpec>& fsdp_config_keys();

/// The keys of gradient_checkpointing_kwargs.
const std::vector<KeySpec>& gradient_checkpointing_keys();

/// Fields that transformers removed, with what replaced them: naming one on
/// the command line or in JSON is an error with this explanation.
const std::vector<Choice>& removed_fields();

/// The error for a removed field `name` given as `as_given` (`--warmup_ratio`).
TrainingArgumentsError removed_field_error(const Choice& removed, const std::string& as_given);

/// gradient_checkpointing_kwargs, checked: the keys that were given.
struct GradientCheckpointingKwargs {
  std::optional<bool> use_reentrant;
  std::optional<bool> preserve_rng_state;
  std::optional<std::string> determinism_check;
  std::optional<bool> check_params;
  std::optional<int64_t> every_n_blocks;
  std::optional<std::vector<int64_t>> layers;  // exactly these blocks
  std::optional<std::string> granularity;      // block, attention, mlp or mlp_up
};

/// Reads gradient_checkpointing_kwargs; throws TrainingArgumentsError for an
/// unknown key (listing the valid ones) or a bad value.
GradientCheckpointingKwargs parse_gradient_checkpointing_kwargs(const nlohmann::json& kwargs);

/// The candidate closest to `word` by edit distance (ignoring case, and `-`
/// against `_`), or "" when none is close enough to be a likely typo.
std::string closest_match(const std::string& word, const std::vector<std::string>& candidates);

/// " (did you mean X?)" for the closest candidate, or "". X is `--name` for
/// flags, the JSON string otherwise.
std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates,
                         bool as_flag);

/// True when fsdp is set to a non-empty list of options.
bool fsdp_enabled(const TrainingArguments& args);

/// True when FSDP is on with a sharding that frees the parameters after the
/// forward (full_shard, hybrid_shard, or FSDP's default), so that replaying a
/// block in backward gathers them once more.
bool fsdp_reshards_after_forward(const TrainingArguments& args);

/// The warning validate() logs for gradient_checkpointing with such FSDP.
extern const char* const kFsdpGradientCheckpointingWarning;

/// TrainingArguments::fsdp_config_object() of `fsdp_config`.
nlohmann::json load_fsdp_config(const nlohmann::json& fsdp_config);

/// The checks of fsdp alone, of fsdp_config alone, of lr_scheduler_kwargs
/// against lr_scheduler_type, and of fsdp against fsdp_config and
/// gradient_checkpointing; all throw TrainingArgumentsError.
void check_fsdp_options(const std::string& field, const std::string& options);
void check_fsdp_config(const std::string& field, const nlohmann::json& fsdp_config);
void check_lr_scheduler_kwargs(const TrainingArguments& args);
void check_fsdp_combinations(const TrainingArguments& args);

/// Throws TrainingArgumentsError(field, message).
[[noreturn]] void fail(const std::string& field, const std::string& message);

}  // namespace remat::detail
