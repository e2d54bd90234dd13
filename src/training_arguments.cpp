// TrainingArguments: the field table, and the JSON form and checks it drives.
//
// Every field is one row of field_specs(): its name, section, help line, the
// rule validate() applies, and a codec (by the member's type) that turns it
// into JSON and back and reads it from command-line words. The command line
// (training_arguments_cli.cpp), --help, to_json/from_json and the generated
// docs/training_arguments.md all read this table, so they cannot disagree.

#include "remat/training_arguments.h"

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <map>
#include <sstream>

#include "remat/logging.h"
#include "training_arguments_internal.h"

namespace remat {

TrainingArgumentsError::TrainingArgumentsError(std::string field, const std::string& message)
    : std::invalid_argument(message), field_(std::move(field)) {}

namespace detail {

void fail(const std::string& field, const std::string& message) {
  throw TrainingArgumentsError(field, message);
}

}  // namespace detail

namespace {

using detail::fail;
using detail::Words;
using json = nlohmann::json;

// ---------------------------------------------------------------------------
// Values in messages

std::string render(double value) {
  if (std::isnan(value)) return "nan";
  if (std::isinf(value)) return value > 0 ? "inf" : "-inf";
  return json(value).dump();
}
std::string render(int64_t value) { return std::to_string(value); }
std::string render(const std::string& value) { return json(value).dump(); }
std::string render(const std::vector<std::string>& value) { return json(value).dump(); }
std::string render(const json& value) { return value.dump(); }

// A bound in a rule's text: 0 rather than 0.0.
std::string bound(double value) {
  return value == std::floor(value) ? std::to_string(static_cast<int64_t>(value)) : render(value);
}

std::string join(const std::vector<std::string>& items, const std::string& separator = ", ") {
  std::string out;
  for (size_t i = 0; i < items.size(); ++i) out += (i ? separator : "") + items[i];
  return out;
}

template <typename Named>
std::vector<std::string> names_of(const std::vector<Named>& items) {
  std::vector<std::string> names;
  for (const auto& item : items) names.push_back(item.name);
  return names;
}

// ---------------------------------------------------------------------------
// Command-line words

bool is_bare(const Words& words) {
  return words.empty() || (words.size() == 1 && words[0].empty());
}

std::string lowercase(std::string text) {
  std::transform(text.begin(), text.end(), text.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return text;
}

// The spellings Hugging Face's HfArgumentParser accepts (string_to_bool).
std::optional<bool> parse_bool(const std::string& word) {
  const auto w = lowercase(word);
  if (w == "yes" || w == "true" || w == "t" || w == "y" || w == "1") return true;
  if (w == "no" || w == "false" || w == "f" || w == "n" || w == "0") return false;
  return std::nullopt;
}

std::optional<int64_t> parse_int(const std::string& word) {
  const char* begin = word.data() + (word.size() > 1 && word[0] == '+' ? 1 : 0);
  const char* end = word.data() + word.size();
  int64_t value = 0;
  auto [rest, error] = std::from_chars(begin, end, value);
  if (error != std::errc() || rest != end || begin == end) return std::nullopt;
  return value;
}

std::optional<double> parse_double(const std::string& word) {
  if (word.empty() || std::isspace(static_cast<unsigned char>(word[0]))) return std::nullopt;
  char* end = nullptr;
  errno = 0;
  const double value = std::strtod(word.c_str(), &end);
  if (end != word.c_str() + word.size() || errno == ERANGE || !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

bool all_digits(const std::string& text) {
  return !text.empty() && std::all_of(text.begin(), text.end(),
                                      [](unsigned char c) { return std::isdigit(c) != 0; });
}

// Hugging Face's _convert_str_dict: in a dict given as text on the command
// line, the strings "true"/"false" become bools and digit strings numbers.
json convert_strings(json value) {
  for (auto& [key, item] : value.items()) {
    if (item.is_object()) {
      item = convert_strings(item);
      continue;
    }
    if (!item.is_string()) continue;
    const auto text = item.get<std::string>();
    const auto lower = lowercase(text);
    auto without_dot = text;
    if (auto dot = without_dot.find('.'); dot != std::string::npos) without_dot.erase(dot, 1);
    if (lower == "true" || lower == "false") {
      item = lower == "true";
    } else if (all_digits(text) && parse_int(text)) {
      item = *parse_int(text);
    } else if (all_digits(without_dot)) {
      item = std::strtod(text.c_str(), nullptr);
    }
  }
  return value;
}

json parse_object_word(const std::string& flag, const std::string& field, const std::string& word) {
  json value;
  try {
    value = json::parse(word);
  } catch (const json::parse_error& e) {
    fail(field, flag + " expects a JSON object such as '{\"key\": 1}', got " + render(word) + " (" +
                    e.what() + ")");
  }
  if (!value.is_object()) {
    fail(field, flag + " expects a JSON object such as '{\"key\": 1}', got " + render(word));
  }
  return convert_strings(value);
}

// ---------------------------------------------------------------------------
// Codecs: one per member type, turning a value into JSON and back, and
// reading it from command-line words. Errors name the field (JSON) or the flag
// as the user spelled it (command line), the value, and what is expected.

struct BoolCodec {
  using Value = bool;
  using Checked = bool;
  static std::string type() { return "bool"; }
  static std::string metavar() { return "[BOOL]"; }
  static constexpr int min_words = 0, max_words = 1;
  static json to_json(bool value) { return value; }
  static bool from_json(const std::string& field, const json& value) {
    if (!value.is_boolean()) fail(field, field + " must be true or false, got " + render(value));
    return value.get<bool>();
  }
  static bool from_words(const std::string& field, const std::string& flag, const Words& words) {
    if (is_bare(words)) return true;
    if (auto value = parse_bool(words[0])) return *value;
    fail(field,
         flag + " expects true or false (or yes/no, t/f, y/n, 1/0), got " + render(words[0]));
  }
};

struct IntCodec {
  using Value = int64_t;
  using Checked = int64_t;
  static std::string type() { return "int64_t"; }
  static std::string metavar() { return "INT"; }
  static constexpr int min_words = 1, max_words = 1;
  static json to_json(int64_t value) { return value; }
  static int64_t from_json(const std::string& field, const json& value) {
    if (value.is_number_unsigned() && value.get<uint64_t>() > uint64_t(INT64_MAX)) {
      fail(field, field + " must be an integer that fits in int64_t, got " + render(value));
    }
    if (!value.is_number_integer())
      fail(field, field + " must be an integer, got " + render(value));
    return value.get<int64_t>();
  }
  static int64_t from_words(const std::string& field, const std::string& flag, const Words& words) {
    if (auto value = parse_int(words.at(0))) return *value;
    fail(field, flag + " expects an integer, got " + render(words[0]));
  }
};

struct DoubleCodec {
  using Value = double;
  using Checked = double;
  static std::string type() { return "double"; }
  static std::string metavar() { return "FLOAT"; }
  static constexpr int min_words = 1, max_words = 1;
  static json to_json(double value) { return value; }
  static double from_json(const std::string& field, const json& value) {
    if (!value.is_number()) fail(field, field + " must be a number, got " + render(value));
    return value.get<double>();
  }
  static double from_words(const std::string& field, const std::string& flag, const Words& words) {
    if (auto value = parse_double(words.at(0))) return *value;
    fail(field, flag + " expects a finite number such as 3e-05, got " + render(words[0]));
  }
};

struct StringCodec {
  using Value = std::string;
  using Checked = std::string;
  static std::string type() { return "std::string"; }
  static std::string metavar() { return "STR"; }
  static constexpr int min_words = 1, max_words = 1;
  static json to_json(const std::string& value) { return value; }
  static std::string from_json(const std::string& field, const json& value) {
    if (!value.is_string()) fail(field, field + " must be a string, got " + render(value));
    return value.get<std::string>();
  }
  static std::string from_words(const std::string&, const std::string&, const Words& words) {
    return words.at(0);
  }
};

// std::optional<X>: null in JSON; on the command line, X's form.
template <typename Inner>
struct OptionalCodec {
  using Value = std::optional<typename Inner::Value>;
  using Checked = typename Inner::Checked;
  static std::string type() { return "std::optional<" + Inner::type() + ">"; }
  static std::string metavar() { return Inner::metavar(); }
  static constexpr int min_words = Inner::min_words, max_words = Inner::max_words;
  static json to_json(const Value& value) { return value ? Inner::to_json(*value) : json(nullptr); }
  static Value from_json(const std::string& field, const json& value) {
    if (value.is_null()) return std::nullopt;
    return Inner::from_json(field, value);
  }
  static Value from_words(const std::string& field, const std::string& flag, const Words& words) {
    return Inner::from_words(field, flag, words);
  }
};

// report_to: a list of reporter names; "none" alone means the empty list, as
// Hugging Face turns it into []. JSON also takes a single string.
struct ReportToCodec {
  using Value = std::vector<std::string>;
  using Checked = Value;
  static std::string type() { return "std::vector<std::string>"; }
  static std::string metavar() { return "STR..."; }
  static constexpr int min_words = 1, max_words = 1 << 20;
  static json to_json(const Value& value) { return value; }
  static Value normalized(Value value) {
    if (value == Value{"none"}) value.clear();
    return value;
  }
  static Value from_json(const std::string& field, const json& value) {
    if (value.is_string()) return normalized({value.get<std::string>()});
    const bool strings =
        value.is_array() &&
        std::all_of(value.begin(), value.end(), [](const json& v) { return v.is_string(); });
    if (!strings)
      fail(field, field + " must be a list of strings (or one string), got " + render(value));
    return normalized(value.get<Value>());
  }
  static Value from_words(const std::string&, const std::string&, const Words& words) {
    return normalized(words);
  }
};

// The dict fields (lr_scheduler_kwargs, gradient_checkpointing_kwargs): a JSON
// object; null reads as the empty object, as Hugging Face treats None as {}.
struct ObjectCodec {
  using Value = json;
  using Checked = json;
  static std::string type() { return "nlohmann::json"; }
  static std::string metavar() { return "JSON"; }
  static constexpr int min_words = 1, max_words = 1;
  static json to_json(const json& value) { return value; }
  static json from_json(const std::string& field, const json& value) {
    if (value.is_null()) return json::object();
    if (!value.is_object()) fail(field, field + " must be a JSON object, got " + render(value));
    return value;
  }
  static json from_words(const std::string& field, const std::string& flag, const Words& words) {
    return parse_object_word(flag, field, words.at(0));
  }
};

// fsdp_config: a JSON object, or the path of a JSON file. On the command line
// a word starting with "{" is the object, anything else a path (as Hugging Face).
struct FsdpConfigCodec : ObjectCodec {
  static std::string metavar() { return "JSON|PATH"; }
  static json from_json(const std::string& field, const json& value) {
    if (value.is_string()) return value;
    if (value.is_null()) return json::object();
    if (!value.is_object()) {
      fail(field,
           field + " must be a JSON object or the path of a JSON file, got " + render(value));
    }
    return value;
  }
  static json from_words(const std::string& field, const std::string& flag, const Words& words) {
    const auto& word = words.at(0);
    const auto start = word.find_first_not_of(" \t\n");
    if (start != std::string::npos && word[start] == '{')
      return parse_object_word(flag, field, word);
    return word;
  }
};

// fsdp: space-separated options. A bare --fsdp (and JSON true, transformers 5's
// fsdp=True) means full_shard, FSDP's default sharding; JSON false means unset.
struct FsdpCodec : OptionalCodec<StringCodec> {
  static std::string metavar() { return "[OPTIONS]"; }
  static constexpr int min_words = 0, max_words = 1;
  static Value from_json(const std::string& field, const json& value) {
    if (value.is_boolean()) return value.get<bool>() ? Value("full_shard") : std::nullopt;
    return OptionalCodec<StringCodec>::from_json(field, value);
  }
  static Value from_words(const std::string&, const std::string&, const Words& words) {
    if (is_bare(words)) return "full_shard";
    return words[0];
  }
};

// ---------------------------------------------------------------------------
// Rules: what validate() accepts for one field, as text (for --help, the docs
// and the message) and as a check.

template <typename T>
struct Rule {
  std::string valid;
  std::function<void(const std::string& field, const T& value)> check;
};

template <typename T>
Rule<T> rule(std::string valid, std::function<bool(const T&)> ok) {
  auto check = [valid, ok](const std::string& field, const T& value) {
    if (!ok(value)) fail(field, field + " must be " + valid + ", got " + render(value));
  };
  return {valid, check};
}

Rule<int64_t> at_least(int64_t low) {
  return rule<int64_t>(">= " + render(low), [low](int64_t v) { return v >= low; });
}

Rule<double> at_least(double low) {
  return rule<double>(">= " + bound(low), [low](double v) { return v >= low; });
}

Rule<double> above(double low) {
  return rule<double>("> " + bound(low), [low](double v) { return v > low; });
}

Rule<double> unit_interval() {
  return rule<double>("in [0, 1)", [](double v) { return v >= 0 && v < 1; });
}

// A number of steps: a whole number, or a fraction (0, 1) of the total steps.
Rule<double> steps(bool zero_allowed) {
  const std::string valid = zero_allowed ? "0, a whole number >= 1, or a fraction in (0, 1)"
                                         : "a whole number >= 1 or a fraction in (0, 1)";
  return rule<double>(valid, [zero_allowed](double v) {
    if (v == 0) return zero_allowed;
    return v > 0 && (v < 1 || v == std::floor(v));
  });
}

Rule<std::string> not_empty() {
  return rule<std::string>("a non-empty string", [](const std::string& v) { return !v.empty(); });
}

// numpy, which Hugging Face's set_seed also seeds, takes seeds in [0, 2^32).
Rule<int64_t> seed_range() {
  return rule<int64_t>("in [0, 4294967295]", [](int64_t v) { return v >= 0 && v <= 4294967295; });
}

// A name among `choices`. Names in `unsupported` are Hugging Face values remat
// does not implement: the message says so and why.
Rule<std::string> one_of(const std::vector<detail::Choice>& choices,
                         std::vector<detail::Choice> unsupported = {}) {
  const auto names = names_of(choices);
  const auto valid = "one of " + join(names);
  auto check = [names, valid, unsupported](const std::string& field, const std::string& value) {
    if (std::find(names.begin(), names.end(), value) != names.end()) return;
    for (const auto& hf : unsupported) {
      if (hf.name == value) {
        fail(field, field + " " + render(value) + " is not supported by remat (" + hf.help +
                        "); valid: " + join(names));
      }
    }
    fail(field, field + " must be " + valid + ", got " + render(value) +
                    detail::did_you_mean(value, names, false));
  };
  return {valid, check};
}

template <typename T>
void check_finite(const std::string& field, const T& value) {
  if constexpr (std::is_same_v<T, double>) {
    if (!std::isfinite(value))
      fail(field, field + " must be a finite number, got " + render(value));
  }
}

// ---------------------------------------------------------------------------
// The field table

template <typename Codec>
detail::FieldSpec field(const char* section, const char* name,
                        typename Codec::Value TrainingArguments::*member, const char* help,
                        Rule<typename Codec::Checked> rule = {},
                        std::vector<std::string> aliases = {}) {
  detail::FieldSpec spec;
  const std::string field_name = name;
  auto& info = spec.info;
  info.name = field_name;
  info.aliases = std::move(aliases);
  info.section = section;
  info.type = Codec::type();
  info.metavar = Codec::metavar();
  info.help = help;
  info.valid = rule.valid;
  info.get = [member](const TrainingArguments& args) { return Codec::to_json(args.*member); };
  info.set = [member, field_name](TrainingArguments& args, const json& value) {
    args.*member = Codec::from_json(field_name, value);
  };
  info.default_value = info.get(TrainingArguments{}).dump();
  spec.min_words = Codec::min_words;
  spec.max_words = Codec::max_words;
  spec.parse_words = [member, field_name](TrainingArguments& args, const Words& words,
                                          const std::string& flag) {
    args.*member = Codec::from_words(field_name, flag, words);
  };
  spec.check = [member, field_name, rule](const TrainingArguments& args) {
    const auto& value = args.*member;
    auto check_one = [&](const typename Codec::Checked& v) {
      check_finite(field_name, v);
      if (rule.check) rule.check(field_name, v);
    };
    if constexpr (std::is_same_v<typename Codec::Value, typename Codec::Checked>) {
      check_one(value);
    } else if (value) {
      check_one(*value);
    }
  };
  return spec;
}

void check_report_to(const std::string& field, const std::vector<std::string>& value) {
  const auto names = names_of(detail::reporters());
  for (const auto& reporter : value) {
    if (std::find(names.begin(), names.end(), reporter) == names.end()) {
      fail(field, field + " entries must be one of " + join(names) + ", got " + render(reporter) +
                      detail::did_you_mean(reporter, names, false));
    }
    if (std::count(value.begin(), value.end(), reporter) > 1) {
      fail(field, field + " names " + render(reporter) + " twice: " + render(value));
    }
  }
  if (value.size() > 1 && std::count(value.begin(), value.end(), "none") > 0) {
    fail(field, field + " cannot combine \"none\" with reporters, got " + render(value));
  }
}

void must_be_object(const std::string& field, const json& value) {
  if (!value.is_object()) fail(field, field + " must be a JSON object, got " + render(value));
}

void check_gradient_checkpointing_kwargs(const std::string&, const json& kwargs) {
  detail::parse_gradient_checkpointing_kwargs(kwargs);
}

std::vector<detail::FieldSpec> make_field_specs() {
  using A = TrainingArguments;
  const char* output = "Output";
  const char* length = "Training length and batch size";
  const char* schedule = "Learning rate and scheduler";
  const char* adamw = "AdamW";
  const char* precision = "Mixed precision";
  const char* checkpointing = "Gradient checkpointing";
  const char* logging = "Logging";
  const char* evaluation = "Scripts and evaluation";
  const char* saving = "Checkpoints";
  const char* seeds = "Reproducibility";
  const char* hardware = "Hardware and data loading";
  const char* distributed = "Distributed";
  const char* extensions = "remat extensions (not in transformers)";
  const std::vector<detail::Choice> hf_schedulers = {
      {"cosine_with_restarts", "a transformers scheduler remat does not implement"},
      {"reduce_lr_on_plateau", "a transformers scheduler remat does not implement"},
      {"cosine_warmup_with_min_lr", "a transformers scheduler remat does not implement"},
      {"warmup_stable_decay", "a transformers scheduler remat does not implement"},
      {"greedy", "a transformers scheduler remat does not implement"}};
  std::vector<detail::Choice> hf_optimizers;
  for (const char* name :
       {"adamw_torch_xla", "adamw_torch_npu_fused", "adafactor", "adamw_anyprecision",
        "adamw_torch_4bit", "adamw_torch_8bit", "ademamix", "sgd", "adagrad", "adamw_bnb_8bit"}) {
    hf_optimizers.push_back({name, "a transformers optimizer remat does not implement"});
  }
  std::vector<detail::Choice> schedulers;
  for (const auto& scheduler : detail::lr_schedulers()) schedulers.push_back(scheduler.choice);
  const auto& strategies = detail::interval_strategies();
  const std::vector<detail::Choice> best = {
      {"best", "it saves on a new best metric, and remat has no metric_for_best_model"}};

  return {
      field<StringCodec>(output, "output_dir", &A::output_dir,
                         "Where checkpoints, logs and the final model are written.", not_empty()),

      field<DoubleCodec>(length, "num_train_epochs", &A::num_train_epochs,
                         "Passes over the training data; a fraction runs that part of the last "
                         "epoch. Ignored when max_steps > 0.",
                         at_least(0.0)),
      field<IntCodec>(length, "max_steps", &A::max_steps,
                      "Optimizer steps to train for, overriding num_train_epochs; -1: train for "
                      "num_train_epochs.",
                      rule<int64_t>("-1 or >= 1", [](int64_t v) { return v == -1 || v >= 1; })),
      field<IntCodec>(length, "per_device_train_batch_size", &A::per_device_train_batch_size,
                      "Batch size per device for training.", at_least(int64_t{1})),
      field<IntCodec>(length, "per_device_eval_batch_size", &A::per_device_eval_batch_size,
                      "Batch size per device for evaluation.", at_least(int64_t{1})),
      field<IntCodec>(length, "gradient_accumulation_steps", &A::gradient_accumulation_steps,
                      "Batches whose gradients are summed before each optimizer step.",
                      at_least(int64_t{1})),

      field<DoubleCodec>(schedule, "learning_rate", &A::learning_rate,
                         "Peak learning rate of AdamW, reached at the end of the warmup.",
                         at_least(0.0)),
      field<StringCodec>(schedule, "lr_scheduler_type", &A::lr_scheduler_type,
                         "The learning-rate schedule after the warmup.",
                         one_of(schedulers, hf_schedulers)),
      field<ObjectCodec>(schedule, "lr_scheduler_kwargs", &A::lr_scheduler_kwargs,
                         "Extra arguments of the schedule, as a JSON object.",
                         {"the keys the chosen schedule takes", must_be_object}),
      field<DoubleCodec>(schedule, "warmup_steps", &A::warmup_steps,
                         "Linear warmup from 0 to learning_rate: a number of steps, or a fraction "
                         "of the total steps (transformers 5 folded warmup_ratio into it).",
                         steps(true)),

      field<StringCodec>(adamw, "optim", &A::optim,
                         "The AdamW implementation: ATen's fused kernel or its multi-tensor "
                         "kernels; both compute torch.optim.AdamW's update.",
                         one_of(detail::optimizers(), hf_optimizers)),
      field<DoubleCodec>(adamw, "weight_decay", &A::weight_decay,
                         "Decoupled weight decay; not applied to biases and normalization "
                         "weights.",
                         at_least(0.0)),
      field<DoubleCodec>(adamw, "adam_beta1", &A::adam_beta1,
                         "Decay rate of the first-moment estimate.", unit_interval()),
      field<DoubleCodec>(adamw, "adam_beta2", &A::adam_beta2,
                         "Decay rate of the second-moment estimate.", unit_interval()),
      field<DoubleCodec>(adamw, "adam_epsilon", &A::adam_epsilon,
                         "Added to the denominator for numerical stability.", above(0.0)),
      field<DoubleCodec>(adamw, "max_grad_norm", &A::max_grad_norm,
                         "Clip the global gradient norm to this before each optimizer step; 0 "
                         "disables clipping.",
                         at_least(0.0)),

      field<BoolCodec>(precision, "bf16", &A::bf16, "Train with bfloat16 autocast."),
      field<BoolCodec>(precision, "fp16", &A::fp16,
                       "Train with float16 autocast and loss scaling (prefer bf16 where the "
                       "hardware has it)."),

      field<BoolCodec>(checkpointing, "gradient_checkpointing", &A::gradient_checkpointing,
                       "Recompute each block's activations during backward instead of keeping "
                       "them: less memory for one more forward. transformers 5 calls it "
                       "activation_checkpointing; both names work.",
                       {}, {"activation_checkpointing"}),
      field<ObjectCodec>(checkpointing, "gradient_checkpointing_kwargs",
                         &A::gradient_checkpointing_kwargs,
                         "How blocks are checkpointed, as a JSON object. Also read as "
                         "activation_checkpointing_kwargs.",
                         {"keys " + join(names_of(detail::gradient_checkpointing_keys())),
                          check_gradient_checkpointing_kwargs},
                         {"activation_checkpointing_kwargs"}),

      field<StringCodec>(logging, "logging_strategy", &A::logging_strategy,
                         "When to log: no, steps (every logging_steps) or epoch.",
                         one_of(strategies)),
      field<DoubleCodec>(logging, "logging_steps", &A::logging_steps,
                         "Log every this many optimizer steps, or this fraction of the total "
                         "steps; > 0 when logging_strategy is steps.",
                         steps(true)),
      field<BoolCodec>(logging, "logging_first_step", &A::logging_first_step,
                       "Also log after the first optimizer step."),
      field<ReportToCodec>(logging, "report_to", &A::report_to,
                           "Where logs go besides the console; none: nowhere else.",
                           {"names among " + join(names_of(detail::reporters())), check_report_to}),
      field<OptionalCodec<BoolCodec>>(logging, "disable_tqdm", &A::disable_tqdm,
                                      "Hide the progress bar; unset: hidden when remat's logger "
                                      "level is above warning."),
      field<BoolCodec>(logging, "skip_memory_metrics", &A::skip_memory_metrics,
                       "Leave memory figures out of the logged metrics (collecting them costs "
                       "time); --no_skip_memory_metrics includes them."),

      field<BoolCodec>(evaluation, "do_train", &A::do_train,
                       "For scripts: whether to train. The Trainer does not read it."),
      field<BoolCodec>(evaluation, "do_eval", &A::do_eval,
                       "For scripts: whether to evaluate. The Trainer evaluates as eval_strategy "
                       "says."),
      field<StringCodec>(evaluation, "eval_strategy", &A::eval_strategy,
                         "When to evaluate during training: no, steps (every eval_steps) or "
                         "epoch.",
                         one_of(strategies)),
      field<OptionalCodec<DoubleCodec>>(evaluation, "eval_steps", &A::eval_steps,
                                        "Evaluate every this many optimizer steps, or this "
                                        "fraction of the total steps; unset: logging_steps.",
                                        steps(false)),

      field<StringCodec>(saving, "save_strategy", &A::save_strategy,
                         "When to save a checkpoint: no, steps (every save_steps) or epoch.",
                         one_of(strategies, best)),
      field<DoubleCodec>(saving, "save_steps", &A::save_steps,
                         "Save every this many optimizer steps, or this fraction of the total "
                         "steps; > 0 when save_strategy is steps.",
                         steps(true)),
      field<OptionalCodec<IntCodec>>(saving, "save_total_limit", &A::save_total_limit,
                                     "Keep at most this many checkpoints in output_dir, deleting "
                                     "the oldest; unset: keep all.",
                                     at_least(int64_t{1})),
      field<OptionalCodec<StringCodec>>(saving, "resume_from_checkpoint",
                                        &A::resume_from_checkpoint,
                                        "Checkpoint to resume from: a checkpoint directory, or "
                                        "latest for the newest one in output_dir.",
                                        not_empty()),

      field<IntCodec>(seeds, "seed", &A::seed,
                      "Seed of the random generators, set at the start of training.", seed_range()),
      field<OptionalCodec<IntCodec>>(seeds, "data_seed", &A::data_seed,
                                     "Seed of the data sampler; unset: seed.", seed_range()),

      field<BoolCodec>(hardware, "use_cpu", &A::use_cpu,
                       "Train on the CPU even when a GPU is present."),
      field<BoolCodec>(hardware, "dataloader_drop_last", &A::dataloader_drop_last,
                       "Drop the last incomplete batch of each epoch."),
      field<IntCodec>(hardware, "dataloader_num_workers", &A::dataloader_num_workers,
                      "Worker threads loading batches; 0: the training thread loads them.",
                      at_least(int64_t{0})),

      field<IntCodec>(distributed, "ddp_timeout", &A::ddp_timeout,
                      "Timeout of the process-group operations, in seconds.", at_least(int64_t{1})),
      field<FsdpCodec>(distributed, "fsdp", &A::fsdp,
                       "Fully Sharded Data Parallel, as space-separated options; a bare --fsdp "
                       "means full_shard.",
                       {"options among " + join(names_of(detail::fsdp_options())) +
                            ", at most one sharding strategy",
                        detail::check_fsdp_options}),
      field<FsdpConfigCodec>(
          distributed, "fsdp_config", &A::fsdp_config,
          "FSDP settings with Hugging Face's keys: a JSON object, or the path "
          "of a JSON file.",
          {"keys " + join(names_of(detail::fsdp_config_keys())), detail::check_fsdp_config}),

      field<BoolCodec>(extensions, "skip_nonfinite_steps", &A::skip_nonfinite_steps,
                       "On a non-finite loss or gradient norm, skip that optimizer step (no "
                       "update, counted in skipped_steps) instead of stopping with an error."),
  };
}

// ---------------------------------------------------------------------------
// Checks that involve several fields

void check_combinations(const TrainingArguments& args) {
  if (args.bf16 && args.fp16) {
    fail("fp16", "bf16 and fp16 are both true: choose at most one mixed-precision mode");
  }
  if (args.max_steps == -1 && args.num_train_epochs == 0) {
    fail("num_train_epochs",
         "num_train_epochs must be > 0 when max_steps is -1 (nothing would be trained), got 0");
  }
  if (args.logging_strategy == "steps" && args.logging_steps == 0) {
    fail("logging_steps", "logging_strategy \"steps\" needs logging_steps > 0, got 0");
  }
  if (args.eval_strategy == "steps" && !args.eval_steps && args.logging_steps == 0) {
    fail("eval_steps",
         "eval_strategy \"steps\" needs eval_steps, or logging_steps > 0 for it to default to; "
         "eval_steps is unset and logging_steps is 0");
  }
  if (args.save_strategy == "steps" && args.save_steps == 0) {
    fail("save_steps", "save_strategy \"steps\" needs save_steps > 0, got 0");
  }
  detail::check_lr_scheduler_kwargs(args);
  detail::check_fsdp_combinations(args);
}

}  // namespace

namespace detail {

const std::vector<FieldSpec>& field_specs() {
  static const std::vector<FieldSpec> specs = make_field_specs();
  return specs;
}

const FieldSpec* find_field(const std::string& name) {
  for (const auto& spec : field_specs()) {
    const auto& aliases = spec.info.aliases;
    if (spec.info.name == name ||
        std::find(aliases.begin(), aliases.end(), name) != aliases.end()) {
      return &spec;
    }
  }
  return nullptr;
}

}  // namespace detail

// ---------------------------------------------------------------------------
// TrainingArguments

const std::vector<TrainingArgumentsField>& TrainingArguments::fields() {
  static const std::vector<TrainingArgumentsField> fields = [] {
    std::vector<TrainingArgumentsField> out;
    for (const auto& spec : detail::field_specs()) out.push_back(spec.info);
    return out;
  }();
  return fields;
}

void TrainingArguments::validate() const {
  for (const auto& spec : detail::field_specs()) spec.check(*this);
  check_combinations(*this);
  for (const auto& warning : warnings()) logger()->warn("{}", warning);
}

std::vector<std::string> TrainingArguments::warnings() const {
  std::vector<std::string> out;
  if (gradient_checkpointing && detail::fsdp_reshards_after_forward(*this)) {
    out.push_back(detail::kFsdpGradientCheckpointingWarning);
  }
  if (!gradient_checkpointing && !gradient_checkpointing_kwargs.empty()) {
    out.push_back(
        "gradient_checkpointing_kwargs is set but gradient_checkpointing is false: the kwargs "
        "have no effect");
  }
  if (!detail::fsdp_enabled(*this) && !fsdp_config.empty()) {
    out.push_back("fsdp_config is set but fsdp is not: fsdp_config has no effect");
  }
  return out;
}

nlohmann::json TrainingArguments::to_json() const {
  json out = json::object();
  for (const auto& spec : detail::field_specs()) out[spec.info.name] = spec.info.get(*this);
  return out;
}

std::string TrainingArguments::to_json_string() const { return to_json().dump(2) + "\n"; }

void TrainingArguments::to_json_file(const std::string& path) const {
  std::ofstream file(path);
  file << to_json_string();
  file.close();
  if (!file) fail("", "cannot write training arguments to " + path + ": " + std::strerror(errno));
}

TrainingArguments TrainingArguments::from_json(const nlohmann::json& json) {
  if (!json.is_object()) {
    fail("", "training arguments must be a JSON object of fields, got " + render(json));
  }
  std::vector<std::string> names;
  for (const auto& spec : detail::field_specs()) {
    names.push_back(spec.info.name);
    names.insert(names.end(), spec.info.aliases.begin(), spec.info.aliases.end());
  }
  TrainingArguments args;
  std::map<const detail::FieldSpec*, std::pair<std::string, nlohmann::json>> seen;
  for (const auto& [key, value] : json.items()) {
    const auto* spec = detail::find_field(key);
    if (spec == nullptr) {
      for (const auto& removed : detail::removed_fields()) {
        if (removed.name == key) throw detail::removed_field_error(removed, render(key));
      }
      fail(key, "unknown training argument " + render(key) + " in JSON" +
                    detail::did_you_mean(key, names, false));
    }
    if (auto earlier = seen.find(spec); earlier != seen.end() && earlier->second.second != value) {
      fail(spec->info.name, render(earlier->second.first) + " and " + render(key) +
                                " name the same field but differ: " +
                                render(earlier->second.second) + " and " + render(value));
    }
    seen[spec] = {key, value};
    spec->info.set(args, value);
  }
  args.validate();
  return args;
}

TrainingArguments TrainingArguments::from_json_file(const std::string& path) {
  std::ifstream file(path);
  if (!file) fail("", "cannot read training arguments from " + path + ": " + std::strerror(errno));
  nlohmann::json json;
  try {
    json = nlohmann::json::parse(file);
  } catch (const nlohmann::json::parse_error& e) {
    fail("", path + " is not valid JSON: " + e.what());
  }
  return from_json(json);
}

nlohmann::json TrainingArguments::fsdp_config_object() const {
  return detail::load_fsdp_config(fsdp_config);
}

bool operator==(const TrainingArguments& a, const TrainingArguments& b) {
  for (const auto& spec : detail::field_specs()) {
    if (spec.info.get(a) != spec.info.get(b)) return false;
  }
  return true;
}

bool operator!=(const TrainingArguments& a, const TrainingArguments& b) { return !(a == b); }

}  // namespace remat
