// The names TrainingArguments accepts inside its fields (schedulers,
// strategies, reporters, FSDP options, and the keys of its JSON-object fields),
// what each means, and the checks that use them. The docs page prints these
// same tables.

#include <algorithm>
#include <cmath>
#include <fstream>
#include <sstream>

#include "training_arguments_internal.h"

namespace remat::detail {
namespace {

using json = nlohmann::json;

std::string join(const std::vector<std::string>& items) {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? ", " : "") + items[i];
  return out;
}

std::string normalized(const std::string& word) {
  std::string out = word.substr(std::min(word.find_first_not_of('-'), word.size()));
  for (auto& c : out)
    c = c == '-' ? '_' : static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
  return out;
}

// Edit distance counting insertions, deletions, substitutions and swaps of
// neighbours ("fp61" is one edit from "fp16").
size_t edit_distance(const std::string& a, const std::string& b) {
  std::vector<std::vector<size_t>> d(a.size() + 1, std::vector<size_t>(b.size() + 1));
  for (size_t i = 0; i <= a.size(); ++i) d[i][0] = i;
  for (size_t j = 0; j <= b.size(); ++j) d[0][j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    for (size_t j = 1; j <= b.size(); ++j) {
      const size_t cost = a[i - 1] == b[j - 1] ? 0 : 1;
      d[i][j] = std::min({d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + cost});
      if (i > 1 && j > 1 && a[i - 1] == b[j - 2] && a[i - 2] == b[j - 1]) {
        d[i][j] = std::min(d[i][j], d[i - 2][j - 2] + 1);
      }
    }
  }
  return d[a.size()][b.size()];
}

std::vector<std::string> names_of(const std::vector<Choice>& choices) {
  std::vector<std::string> names;
  for (const auto& choice : choices) names.push_back(choice.name);
  return names;
}

std::vector<std::string> names_of(const std::vector<KeySpec>& keys) {
  std::vector<std::string> names;
  for (const auto& key : keys) names.push_back(key.name);
  return names;
}

const KeySpec* find_key(const std::vector<KeySpec>& keys, const std::string& name) {
  auto it =
      std::find_if(keys.begin(), keys.end(), [&](const KeySpec& k) { return k.name == name; });
  return it == keys.end() ? nullptr : &*it;
}

// ---------------------------------------------------------------------------
// What a key's value may be

// The spellings Hugging Face's str_to_bool accepts where fsdp_config is read.
std::optional<bool> hf_bool(const json& value) {
  if (value.is_boolean()) return value.get<bool>();
  if (!value.is_string()) return std::nullopt;
  std::string word = value.get<std::string>();
  std::transform(word.begin(), word.end(), word.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  for (const char* yes : {"y", "yes", "t", "true", "on", "1"})
    if (word == yes) return true;
  for (const char* no : {"n", "no", "f", "false", "off", "0"})
    if (word == no) return false;
  return std::nullopt;
}

bool is_bool(const json& v) { return v.is_boolean(); }
bool is_hf_bool(const json& v) { return hf_bool(v).has_value(); }
bool is_object(const json& v) { return v.is_object(); }

std::function<bool(const json&)> integer_at_least(int64_t low) {
  return [low](const json& v) { return v.is_number_integer() && v.get<int64_t>() >= low; };
}

std::function<bool(const json&)> number_where(std::function<bool(double)> ok) {
  return [ok](const json& v) {
    return v.is_number() && std::isfinite(v.get<double>()) && ok(v.get<double>());
  };
}

std::function<bool(const json&)> string_in(std::vector<std::string> names) {
  return [names](const json& v) {
    return v.is_string() &&
           std::find(names.begin(), names.end(), v.get<std::string>()) != names.end();
  };
}

bool distinct_indices(const json& v) {
  if (!v.is_array()) return false;
  std::vector<int64_t> seen;
  for (const auto& i : v) {
    if (!i.is_number_integer() || i.get<int64_t>() < 0) return false;
    if (std::find(seen.begin(), seen.end(), i.get<int64_t>()) != seen.end()) return false;
    seen.push_back(i.get<int64_t>());
  }
  return true;
}

bool is_string_or_strings(const json& v) {
  if (v.is_string()) return true;
  return v.is_array() &&
         std::all_of(v.begin(), v.end(), [](const json& s) { return s.is_string(); });
}

// ---------------------------------------------------------------------------
// gradient_checkpointing_kwargs

struct CheckpointingKey {
  KeySpec spec;
  std::function<void(GradientCheckpointingKwargs&, const json&)> set;
};

const std::vector<CheckpointingKey>& checkpointing_key_table() {
  static const std::vector<CheckpointingKey> keys = {
      {{"use_reentrant", "a bool", "",
        "Accepted for compatibility; no effect. remat has one checkpoint implementation, which "
        "behaves like PyTorch's non-reentrant one whatever the value: gradients reach the "
        "parameters even when no input requires grad, and torch::autograd::grad and gradient "
        "hooks work.",
        is_bool},
       [](auto& k, const json& v) { k.use_reentrant = v.get<bool>(); }},
      {{"preserve_rng_state", "a bool", "true",
        "Restore the CPU and CUDA generators before the replay, so dropout draws the same masks "
        "as in the forward.",
        is_bool},
       [](auto& k, const json& v) { k.preserve_rng_state = v.get<bool>(); }},
      {{"determinism_check", "\"default\" or \"none\"", "\"default\"",
        "default: the replay must return tensors with the forward's shapes, dtypes and devices, "
        "else backward fails naming the output; none: no check.",
        string_in({"default", "none"})},
       [](auto& k, const json& v) { k.determinism_check = v.get<std::string>(); }},
      {{"check_params", "a bool", "true",
        "Fail in backward when a block read a tensor that requires grad but is neither its "
        "input nor its parameter (that gradient would be lost).",
        is_bool},
       [](auto& k, const json& v) { k.check_params = v.get<bool>(); }},
      {{"every_n_blocks", "an integer >= 1", "1",
        "Checkpoint blocks 0, N, 2N, ... in module order; 1: every block.", integer_at_least(1)},
       [](auto& k, const json& v) { k.every_n_blocks = v.get<int64_t>(); }},
      {{"every_n_layers", "an integer >= 1", "",
        "transformers 5's name for every_n_blocks (it counts decoder layers the same way).",
        integer_at_least(1)},
       [](auto& k, const json& v) { k.every_n_blocks = v.get<int64_t>(); }},
      {{"layers", "a list of distinct integers >= 0", "",
        "Checkpoint exactly these blocks (their indices in module order) instead of every N-th.",
        distinct_indices},
       [](auto& k, const json& v) { k.layers = v.get<std::vector<int64_t>>(); }},
      {{"granularity", "one of \"block\", \"attention\", \"mlp\", \"mlp_up\"", "\"block\"",
        "What each checkpointed block replays: block, the whole layer; attention or mlp, that "
        "part alone; mlp_up, the MLP up to its output projection (keeps only the MLP's input).",
        string_in({"block", "attention", "mlp", "mlp_up"})},
       [](auto& k, const json& v) { k.granularity = v.get<std::string>(); }},
  };
  return keys;
}

// ---------------------------------------------------------------------------
// fsdp

const std::vector<std::string> kShardingStrategies = {"full_shard", "shard_grad_op", "hybrid_shard",
                                                      "hybrid_shard_zero2", "no_shard"};

std::vector<std::string> split_words(const std::string& text) {
  std::istringstream stream(text);
  std::vector<std::string> words;
  for (std::string word; stream >> word;) words.push_back(word);
  return words;
}

// The sharding strategy named in fsdp, or "" when it names none.
std::string sharding_strategy(const TrainingArguments& args) {
  for (const auto& word : split_words(args.fsdp.value_or(""))) {
    if (std::count(kShardingStrategies.begin(), kShardingStrategies.end(), word)) return word;
  }
  return "";
}

}  // namespace

// ---------------------------------------------------------------------------
// The tables

const std::vector<SchedulerSpec>& lr_schedulers() {
  const KeySpec num_cycles{"num_cycles", "a number > 0", "0.5",
                           "Number of cosine waves; 0.5 goes once from the peak down to the end.",
                           number_where([](double v) { return v > 0; })};
  static const std::vector<SchedulerSpec> schedulers = {
      {{"linear", "After the warmup, decays linearly to 0 at the last step."}, {}},
      {{"cosine", "After the warmup, follows a cosine down to 0."}, {num_cycles}},
      {{"cosine_with_min_lr", "After the warmup, follows a cosine down to a minimum."},
       {num_cycles,
        {"min_lr", "a number >= 0", "", "The minimum learning rate; give min_lr or min_lr_rate.",
         number_where([](double v) { return v >= 0; })},
        {"min_lr_rate", "a number in [0, 1]", "",
         "The minimum as a fraction of learning_rate; give min_lr or min_lr_rate.",
         number_where([](double v) { return v >= 0 && v <= 1; })}}},
      {{"constant", "Keeps learning_rate from the first step (no warmup)."}, {}},
      {{"constant_with_warmup", "After the warmup, keeps learning_rate."}, {}},
      {{"polynomial", "After the warmup, decays as a polynomial down to lr_end."},
       {{"lr_end", "a number >= 0, below learning_rate", "1e-07", "The final learning rate.",
         number_where([](double v) { return v >= 0; })},
        {"power", "a number > 0", "1.0", "Exponent of the decay; 1 decays linearly.",
         number_where([](double v) { return v > 0; })}}},
      {{"inverse_sqrt",
        "After the warmup, learning_rate * sqrt(timescale / (step + timescale - warmup))."},
       {{"timescale", "an integer >= 1", "the warmup steps, or 10000 without warmup",
         "Steps over which the rate decays.", integer_at_least(1)}}},
  };
  return schedulers;
}

const std::vector<Choice>& optimizers() {
  static const std::vector<Choice> optimizers = {
      {"adamw_torch_fused",
       "AdamW through ATen's fused kernel (_fused_adamw_): one launch per device and dtype for "
       "all parameters."},
      {"adamw_torch",
       "AdamW through ATen's multi-tensor kernels (_foreach_*), as torch.optim.AdamW runs on "
       "CUDA by default."}};
  return optimizers;
}

const std::vector<Choice>& interval_strategies() {
  static const std::vector<Choice> strategies = {
      {"no", "Never during training."},
      {"steps", "Every logging_steps, eval_steps or save_steps optimizer steps."},
      {"epoch", "At the end of every epoch."}};
  return strategies;
}

const std::vector<Choice>& reporters() {
  static const std::vector<Choice> reporters = {
      {"none", "No reporting besides the console log (the same as an empty list)."},
      {"tensorboard",
       "TensorBoard event files of the logged scalars, in $TENSORBOARD_LOGGING_DIR, else in "
       "output_dir/runs/<date>_<host> (transformers 5 removed logging_dir)."},
      {"jsonl",
       "One JSON object per log (step, epoch and the logged values) appended to "
       "output_dir/log.jsonl."}};
  return reporters;
}

const std::vector<Choice>& fsdp_options() {
  static const std::vector<Choice> options = {
      {"full_shard",
       "Shard parameters, gradients and optimizer states; parameters are gathered for the "
       "forward and again for the backward. FSDP's default sharding."},
      {"shard_grad_op",
       "Shard gradients and optimizer states; parameters stay gathered from the forward to the "
       "backward."},
      {"hybrid_shard", "full_shard within a node, replicated across nodes (FSDP1)."},
      {"hybrid_shard_zero2", "shard_grad_op within a node, replicated across nodes (FSDP1)."},
      {"no_shard", "No sharding, as DDP (FSDP1)."},
      {"offload", "Offload parameters and gradients to the CPU (fsdp_config.cpu_offload)."},
      {"auto_wrap",
       "Make each transformer block an FSDP unit; the default wrapping, accepted for "
       "compatibility."}};
  return options;
}

const std::vector<KeySpec>& fsdp_config_keys() {
  auto one_of = [](std::vector<std::string> names) {
    return KeySpec{"", "one of " + join(names), "", "", string_in(names)};
  };
  auto key = [](std::string name, KeySpec kind, std::string default_value, std::string help) {
    kind.name = std::move(name);
    kind.default_value = std::move(default_value);
    kind.help = std::move(help);
    return kind;
  };
  const KeySpec boolean{"", "a bool", "", "", is_hf_bool};
  static const std::vector<KeySpec> keys = {
      key("version", {"", "1 or 2", "", "", [](const json& v) { return v == 1 || v == 2; }}, "2",
          "FSDP2 (2) or FSDP1 (1); hybrid_shard, hybrid_shard_zero2 and no_shard need FSDP1."),
      key("reshard_after_forward",
          {"", "a bool (FSDP2) or a sharding strategy (FSDP1)", "", "",
           [](const json& v) { return is_hf_bool(v) || string_in(kShardingStrategies)(v); }},
          "true",
          "Free the gathered parameters after the forward (as full_shard) or keep them for the "
          "backward (as shard_grad_op)."),
      key("cpu_offload", boolean, "false", "Offload parameters and gradients to the CPU."),
      key("activation_checkpointing", boolean, "false",
          "Checkpoint inside each FSDP unit; with full sharding, prefer it to "
          "gradient_checkpointing, which gathers the parameters again for the replay."),
      key("cpu_ram_efficient_loading", boolean, "false",
          "Load pretrained weights on the first process only and broadcast them."),
      key("state_dict_type", one_of({"FULL_STATE_DICT", "SHARDED_STATE_DICT", "LOCAL_STATE_DICT"}),
          "\"FULL_STATE_DICT\"", "Checkpoint format: one full state dict, or one file per rank."),
      key("auto_wrap_policy", one_of({"TRANSFORMER_BASED_WRAP", "SIZE_BASED_WRAP", "NO_WRAP"}),
          "\"TRANSFORMER_BASED_WRAP\"", "Which modules become FSDP units."),
      key("transformer_layer_cls_to_wrap",
          {"", "a string or a list of strings", "", "", is_string_or_strings}, "",
          "Class names of the blocks to wrap (TRANSFORMER_BASED_WRAP)."),
      key("min_num_params", {"", "an integer >= 0", "", "", integer_at_least(0)}, "0",
          "Fewest parameters of an FSDP unit (SIZE_BASED_WRAP)."),
      key("forward_prefetch", boolean, "false", "FSDP1: gather the next unit during the forward."),
      key("backward_prefetch", one_of({"BACKWARD_PRE", "BACKWARD_POST", "NO_PREFETCH"}),
          "\"NO_PREFETCH\"", "FSDP1: when to gather the next unit during the backward."),
      key("use_orig_params", boolean, "true", "FSDP1: keep the original parameters."),
      key("sync_module_states", boolean, "true", "FSDP1: broadcast module states from rank 0."),
      key("limit_all_gathers", boolean, "", "FSDP1: rate-limit the all-gathers."),
      key("xla", {"", "false", "", "", [](const json& v) { return hf_bool(v) == false; }}, "false",
          "PyTorch/XLA FSDP, which remat does not run; accepted as false."),
      key("xla_fsdp_v2", boolean, "false", "PyTorch/XLA only; no effect."),
      key("xla_fsdp_grad_ckpt", boolean, "false", "PyTorch/XLA only; no effect."),
      key("xla_fsdp_settings", {"", "a JSON object", "", "", is_object}, "",
          "PyTorch/XLA only; no effect."),
  };
  return keys;
}

const std::vector<KeySpec>& gradient_checkpointing_keys() {
  static const std::vector<KeySpec> keys = [] {
    std::vector<KeySpec> out;
    for (const auto& key : checkpointing_key_table()) out.push_back(key.spec);
    return out;
  }();
  return keys;
}

const std::vector<Choice>& removed_fields() {
  static const std::vector<Choice> removed = {
      {"warmup_ratio",
       "transformers 5 removed it; warmup_steps takes the ratio instead (a value in [0, 1) is a "
       "fraction of the total steps), e.g. --warmup_steps 0.1"},
      {"logging_dir",
       "transformers 5 removed it; TensorBoard logs go to $TENSORBOARD_LOGGING_DIR, else to "
       "output_dir/runs/<date>_<host>"},
      {"overwrite_output_dir",
       "transformers 5 removed it (only example scripts read it); training writes into an "
       "existing output_dir, and --resume_from_checkpoint latest continues a run"},
      {"evaluation_strategy",
       "it was renamed eval_strategy, and transformers 5 removed the old name"},
      {"no_cuda", "it was replaced by use_cpu, and transformers 5 removed the old name"},
  };
  return removed;
}

TrainingArgumentsError removed_field_error(const Choice& removed, const std::string& as_given) {
  return TrainingArgumentsError(removed.name,
                                as_given + " is no longer a training argument: " + removed.help);
}

// ---------------------------------------------------------------------------
// Suggestions

std::string closest_match(const std::string& word, const std::vector<std::string>& candidates) {
  const auto target = normalized(word);
  const size_t allowed = std::max<size_t>(1, target.size() / 3);
  std::string best;
  size_t best_distance = allowed + 1;
  for (const auto& candidate : candidates) {
    const size_t distance = edit_distance(target, normalized(candidate));
    if (distance < best_distance) {
      best = candidate;
      best_distance = distance;
    }
  }
  return best;
}

std::string did_you_mean(const std::string& word, const std::vector<std::string>& candidates,
                         bool as_flag) {
  const auto match = closest_match(word, candidates);
  if (match.empty()) return "";
  return " (did you mean " + (as_flag ? "--" + match : json(match).dump()) + "?)";
}

// ---------------------------------------------------------------------------
// Checks

GradientCheckpointingKwargs parse_gradient_checkpointing_kwargs(const json& kwargs) {
  const std::string field = "gradient_checkpointing_kwargs";
  if (!kwargs.is_object()) fail(field, field + " must be a JSON object, got " + kwargs.dump());
  const auto& table = checkpointing_key_table();
  const auto names = names_of(gradient_checkpointing_keys());
  if (kwargs.contains("every_n_blocks") && kwargs.contains("every_n_layers")) {
    fail(field, field +
                    " gives both every_n_blocks and every_n_layers (transformers 5's name for "
                    "it): give one");
  }
  if (kwargs.contains("layers") &&
      (kwargs.contains("every_n_blocks") || kwargs.contains("every_n_layers"))) {
    fail(field, field + " gives both layers and every_n_blocks/every_n_layers: give one");
  }
  GradientCheckpointingKwargs out;
  for (const auto& [key, value] : kwargs.items()) {
    auto row = std::find_if(table.begin(), table.end(),
                            [&](const CheckpointingKey& k) { return k.spec.name == key; });
    if (row == table.end()) {
      fail(field, field + " has no key " + json(key).dump() + did_you_mean(key, names, false) +
                      "; valid keys: " + join(names));
    }
    if (!row->spec.accepts(value)) {
      fail(field, field + "." + key + " must be " + row->spec.type + ", got " + value.dump());
    }
    row->set(out, value);
  }
  return out;
}

void check_lr_scheduler_kwargs(const TrainingArguments& args) {
  const std::string field = "lr_scheduler_kwargs";
  const auto& kwargs = args.lr_scheduler_kwargs;
  const auto& schedulers = lr_schedulers();
  auto scheduler = std::find_if(schedulers.begin(), schedulers.end(), [&](const SchedulerSpec& s) {
    return s.choice.name == args.lr_scheduler_type;
  });
  if (scheduler == schedulers.end()) return;  // lr_scheduler_type's own check reports it
  const auto& type = args.lr_scheduler_type;
  const auto names = names_of(scheduler->kwargs);
  for (const auto& [key, value] : kwargs.items()) {
    const auto* spec = find_key(scheduler->kwargs, key);
    if (spec == nullptr) {
      fail(field, field + ": the " + type + " scheduler takes " +
                      (names.empty() ? "no arguments" : "only " + join(names)) + ", got " +
                      json(key).dump() + did_you_mean(key, names, false));
    }
    if (!spec->accepts(value)) {
      fail(field, field + "." + key + " must be " + spec->type + ", got " + value.dump());
    }
  }
  if (type == "cosine_with_min_lr" && kwargs.contains("min_lr") == kwargs.contains("min_lr_rate")) {
    fail(field, field +
                    ": the cosine_with_min_lr scheduler needs exactly one of min_lr and "
                    "min_lr_rate, got " +
                    kwargs.dump());
  }
  if (type == "polynomial") {
    const double lr_end = kwargs.value("lr_end", 1e-7);
    if (!(lr_end < args.learning_rate)) {
      fail(field, field + ".lr_end (" + json(lr_end).dump() +
                      ") must be smaller than learning_rate (" + json(args.learning_rate).dump() +
                      ") for the polynomial scheduler");
    }
  }
}

bool fsdp_enabled(const TrainingArguments& args) {
  return !split_words(args.fsdp.value_or("")).empty();
}

void check_fsdp_options(const std::string& field, const std::string& options) {
  const auto valid = names_of(fsdp_options());
  std::vector<std::string> seen, strategies;
  for (const auto& word : split_words(options)) {
    if (std::find(valid.begin(), valid.end(), word) == valid.end()) {
      fail(field, field + " option " + json(word).dump() + " must be one of " + join(valid) +
                      did_you_mean(word, valid, false));
    }
    if (std::count(seen.begin(), seen.end(), word)) {
      fail(field, field + " names " + json(word).dump() + " twice: " + json(options).dump());
    }
    seen.push_back(word);
    if (std::count(kShardingStrategies.begin(), kShardingStrategies.end(), word)) {
      strategies.push_back(word);
    }
  }
  if (strategies.size() > 1) {
    fail(field, field + " " + json(options).dump() + " names several sharding strategies (" +
                    join(strategies) + "): choose one");
  }
}

json load_fsdp_config(const json& fsdp_config) {
  const std::string field = "fsdp_config";
  json config = fsdp_config.is_null() ? json::object() : fsdp_config;
  if (config.is_string()) {
    const auto path = config.get<std::string>();
    std::ifstream file(path);
    if (!file)
      fail(field, field + " names the file " + json(path).dump() + ", which cannot be read");
    try {
      config = json::parse(file);
    } catch (const json::parse_error& e) {
      fail(field, field + " file " + json(path).dump() + " is not valid JSON: " + e.what());
    }
    if (!config.is_object()) {
      fail(field,
           field + " file " + json(path).dump() + " must hold a JSON object, got " + config.dump());
    }
  }
  if (!config.is_object()) {
    fail(field, field + " must be a JSON object or the path of a JSON file, got " + config.dump());
  }
  json out = json::object();
  for (const auto& [key, value] : config.items()) {
    out[key.rfind("fsdp_", 0) == 0 ? key.substr(5) : key] = value;
  }
  return out;
}

void check_fsdp_config(const std::string& field, const json& fsdp_config) {
  const auto& keys = fsdp_config_keys();
  const auto names = names_of(keys);
  const auto config = load_fsdp_config(fsdp_config);
  for (const auto& [key, value] : config.items()) {
    const auto* spec = find_key(keys, key);
    if (spec == nullptr) {
      fail(field, field + " has no key " + json(key).dump() + did_you_mean(key, names, false) +
                      "; valid keys: " + join(names));
    }
    if (!spec->accepts(value)) {
      fail(field, field + "." + key + " must be " + spec->type + ", got " + value.dump());
    }
  }
}

void check_fsdp_combinations(const TrainingArguments& args) {
  if (!fsdp_enabled(args)) return;
  const auto config = load_fsdp_config(args.fsdp_config);
  const auto strategy = sharding_strategy(args);
  const bool fsdp2_strategy =
      strategy.empty() || strategy == "full_shard" || strategy == "shard_grad_op";
  if (config.value("version", int64_t{2}) == 2 && !fsdp2_strategy) {
    fail("fsdp", "fsdp option \"" + strategy +
                     "\" needs FSDP1: set fsdp_config.version to 1 "
                     "(FSDP2, the default, offers full_shard and shard_grad_op)");
  }
  if (args.gradient_checkpointing &&
      hf_bool(config.value("activation_checkpointing", json(false))).value_or(false)) {
    fail("gradient_checkpointing",
         "gradient_checkpointing and fsdp_config.activation_checkpointing are both true: blocks "
         "would be checkpointed twice; keep fsdp_config.activation_checkpointing alone");
  }
}

bool fsdp_reshards_after_forward(const TrainingArguments& args) {
  if (!fsdp_enabled(args)) return false;
  const auto strategy = sharding_strategy(args);
  if (!strategy.empty()) return strategy == "full_shard" || strategy == "hybrid_shard";
  const auto reshard =
      load_fsdp_config(args.fsdp_config).value("reshard_after_forward", json(true));
  if (reshard.is_string() && !hf_bool(reshard)) {
    const auto name = reshard.get<std::string>();
    return name == "full_shard" || name == "hybrid_shard";
  }
  return hf_bool(reshard).value_or(true);
}

// transformers 5.24 (training_args.py) logs: "When using FSDP, prefer
// `fsdp_config['activation_checkpointing']` (FSDP's own activation
// checkpointing) over the `activation_checkpointing` training argument; the
// latter introduces a redundant AllGather in the backward pass."
const char* const kFsdpGradientCheckpointingWarning =
    "When using FSDP with full_shard or hybrid_shard, prefer fsdp_config.activation_checkpointing "
    "(FSDP's own activation checkpointing) over gradient_checkpointing; the latter introduces a "
    "redundant AllGather in the backward pass.";

}  // namespace remat::detail
