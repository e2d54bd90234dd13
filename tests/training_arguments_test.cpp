// TrainingArguments: the command line, JSON, --help, validation and warnings,
// and its defaults against transformers.TrainingArguments (oracle
// training_args_defaults). Compiles without the torch headers.

#include "remat/training_arguments.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>
#include <CLI/CLI.hpp>

#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>

#include "remat/logging.h"

using json = nlohmann::json;
using remat::TrainingArguments;
using remat::TrainingArgumentsError;

namespace {

// Parses `words` as the command line of a program called "train".
TrainingArguments parse(std::vector<std::string> words) {
  words.insert(words.begin(), "train");
  std::vector<const char*> argv;
  for (const auto& word : words) argv.push_back(word.c_str());
  return TrainingArguments::parse(static_cast<int>(argv.size()), argv.data());
}

// The message of the TrainingArgumentsError `fn` throws, or a failure.
::testing::AssertionResult throws_with(const std::function<void()>& fn,
                                       const std::string& substring) {
  try {
    fn();
  } catch (const TrainingArgumentsError& e) {
    const std::string message = e.what();
    if (message.find(substring) != std::string::npos) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure()
           << "message \"" << message << "\" does not contain \"" << substring << "\"";
  }
  return ::testing::AssertionFailure() << "no TrainingArgumentsError thrown";
}

::testing::AssertionResult parse_fails_with(const std::vector<std::string>& words,
                                            const std::string& substring) {
  return throws_with([&] { parse(words); }, substring);
}

const remat::TrainingArgumentsField& field(const std::string& name) {
  for (const auto& f : TrainingArguments::fields()) {
    if (f.name == name) return f;
  }
  throw std::out_of_range("no field " + name);
}

std::set<std::string> field_names() {
  std::set<std::string> names;
  for (const auto& f : TrainingArguments::fields()) names.insert(f.name);
  return names;
}

// Captures what remat logs while alive.
class LogCapture {
 public:
  LogCapture() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_);
    remat::set_logger(std::make_shared<spdlog::logger>("remat-test", sink));
  }
  ~LogCapture() { remat::set_logger(nullptr); }
  int count(const std::string& needle) const {
    int n = 0;
    const auto s = stream_.str();
    for (size_t pos = s.find(needle); pos != std::string::npos; pos = s.find(needle, pos + 1)) ++n;
    return n;
  }
  std::string text() const { return stream_.str(); }

 private:
  std::ostringstream stream_;
};

// A file in the system's temporary directory, removed at the end.
class TempFile {
 public:
  explicit TempFile(const std::string& name, const std::string& content = "")
      : path_((std::filesystem::temp_directory_path() /
               ("remat-training-args-" + std::to_string(::getpid()) + "-" + name))
                  .string()) {
    if (!content.empty()) std::ofstream(path_) << content;
  }
  ~TempFile() { std::filesystem::remove(path_); }
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

const char* kFsdpWarning =
    "When using FSDP with full_shard or hybrid_shard, prefer fsdp_config.activation_checkpointing "
    "(FSDP's own activation checkpointing) over gradient_checkpointing; the latter introduces a "
    "redundant AllGather in the backward pass.";

}  // namespace

// ---------------------------------------------------------------------------
// The command line: every field

struct CliCase {
  std::vector<std::string> words;  // the flag and its values, plus what the check needs
  std::string field;
  json expected;
};

const std::vector<CliCase>& valid_cli_cases() {
  static const std::vector<CliCase> cases = {
      {{"--output_dir", "runs/gpt"}, "output_dir", "runs/gpt"},
      {{"--num_train_epochs", "2.5"}, "num_train_epochs", 2.5},
      {{"--max_steps", "100"}, "max_steps", 100},
      {{"--per_device_train_batch_size", "4"}, "per_device_train_batch_size", 4},
      {{"--per_device_eval_batch_size", "16"}, "per_device_eval_batch_size", 16},
      {{"--gradient_accumulation_steps", "8"}, "gradient_accumulation_steps", 8},
      {{"--learning_rate", "3e-5"}, "learning_rate", 3e-5},
      {{"--lr_scheduler_type", "cosine"}, "lr_scheduler_type", "cosine"},
      {{"--optim", "adamw_torch"}, "optim", "adamw_torch"},
      {{"--lr_scheduler_kwargs", R"({"num_cycles": 1.5})", "--lr_scheduler_type", "cosine"},
       "lr_scheduler_kwargs",
       {{"num_cycles", 1.5}}},
      {{"--warmup_steps", "0.1"}, "warmup_steps", 0.1},
      {{"--weight_decay", "0.01"}, "weight_decay", 0.01},
      {{"--adam_beta1", "0.8"}, "adam_beta1", 0.8},
      {{"--adam_beta2", "0.95"}, "adam_beta2", 0.95},
      {{"--adam_epsilon", "1e-6"}, "adam_epsilon", 1e-6},
      {{"--max_grad_norm", "0"}, "max_grad_norm", 0.0},
      {{"--bf16"}, "bf16", true},
      {{"--fp16", "true"}, "fp16", true},
      {{"--gradient_checkpointing"}, "gradient_checkpointing", true},
      {{"--gradient_checkpointing_kwargs", R"({"use_reentrant": false, "every_n_blocks": 2})",
        "--gradient_checkpointing"},
       "gradient_checkpointing_kwargs",
       {{"use_reentrant", false}, {"every_n_blocks", 2}}},
      {{"--logging_strategy", "epoch"}, "logging_strategy", "epoch"},
      {{"--logging_steps", "10"}, "logging_steps", 10.0},
      {{"--logging_first_step"}, "logging_first_step", true},
      {{"--report_to", "tensorboard", "jsonl"}, "report_to", {"tensorboard", "jsonl"}},
      {{"--disable_tqdm", "True"}, "disable_tqdm", true},
      {{"--skip_memory_metrics", "False"}, "skip_memory_metrics", false},
      {{"--do_train"}, "do_train", true},
      {{"--do_eval", "1"}, "do_eval", true},
      {{"--eval_strategy", "steps"}, "eval_strategy", "steps"},
      {{"--eval_steps", "50", "--eval_strategy", "steps"}, "eval_steps", 50.0},
      {{"--save_strategy", "epoch"}, "save_strategy", "epoch"},
      {{"--save_steps", "0.25"}, "save_steps", 0.25},
      {{"--save_total_limit", "3"}, "save_total_limit", 3},
      {{"--resume_from_checkpoint", "latest"}, "resume_from_checkpoint", "latest"},
      {{"--seed", "1234"}, "seed", 1234},
      {{"--data_seed", "7"}, "data_seed", 7},
      {{"--use_cpu"}, "use_cpu", true},
      {{"--dataloader_drop_last", "yes"}, "dataloader_drop_last", true},
      {{"--dataloader_num_workers", "4"}, "dataloader_num_workers", 4},
      {{"--ddp_timeout", "600"}, "ddp_timeout", 600},
      {{"--fsdp", "full_shard auto_wrap"}, "fsdp", "full_shard auto_wrap"},
      {{"--fsdp_config", R"({"version": 2, "cpu_offload": "true"})", "--fsdp", "shard_grad_op"},
       "fsdp_config",
       {{"version", 2}, {"cpu_offload", true}}},
      {{"--skip_nonfinite_steps"}, "skip_nonfinite_steps", true},
  };
  return cases;
}

TEST(TrainingArgumentsCli, ParsesEveryField) {
  std::set<std::string> covered;
  for (const auto& c : valid_cli_cases()) {
    SCOPED_TRACE(c.words.front());
    const auto args = parse(c.words);
    EXPECT_EQ(field(c.field).get(args), c.expected);
    covered.insert(c.field);
  }
  EXPECT_EQ(covered, field_names()) << "every field needs a command-line case";
}

TEST(TrainingArgumentsCli, EqualsFormAndHyphenatedNames) {
  const auto args = parse({"--learning_rate=1e-3", "--per-device-train-batch-size", "2",
                           "--lr-scheduler-type=constant"});
  EXPECT_EQ(args.learning_rate, 1e-3);
  EXPECT_EQ(args.per_device_train_batch_size, 2);
  EXPECT_EQ(args.lr_scheduler_type, "constant");
}

TEST(TrainingArgumentsCli, NegativeNumbersAreValues) {
  EXPECT_EQ(parse({"--max_steps", "-1"}).max_steps, -1);
  EXPECT_TRUE(parse_fails_with({"--learning_rate", "-1e-4"}, "learning_rate must be >= 0"));
}

TEST(TrainingArgumentsCli, LastValueWins) {
  EXPECT_EQ(parse({"--seed", "1", "--seed", "2"}).seed, 2);
  EXPECT_FALSE(parse({"--bf16", "--bf16", "false"}).bf16);
  EXPECT_EQ(parse({"--report_to", "jsonl", "--report_to", "tensorboard"}).report_to,
            std::vector<std::string>{"tensorboard"});
}

TEST(TrainingArgumentsCli, BoolFlagForms) {
  EXPECT_TRUE(parse({"--gradient_checkpointing"}).gradient_checkpointing);
  for (const std::string word : {"true", "True", "TRUE", "1", "yes", "y", "t"}) {
    EXPECT_TRUE(parse({"--gradient_checkpointing", word}).gradient_checkpointing) << word;
    EXPECT_TRUE(parse({"--gradient_checkpointing=" + word}).gradient_checkpointing) << word;
  }
  for (const std::string word : {"false", "False", "0", "no", "n", "f"}) {
    EXPECT_FALSE(parse({"--gradient_checkpointing", word}).gradient_checkpointing) << word;
  }
  // A bare flag followed by another flag takes no value.
  const auto args = parse({"--gradient_checkpointing", "--bf16"});
  EXPECT_TRUE(args.gradient_checkpointing);
  EXPECT_TRUE(args.bf16);
  // transformers 5's name, hyphenated too.
  EXPECT_TRUE(parse({"--activation_checkpointing"}).gradient_checkpointing);
  EXPECT_TRUE(parse({"--activation-checkpointing", "true"}).gradient_checkpointing);
  EXPECT_TRUE(parse({"--gradient-checkpointing"}).gradient_checkpointing);
  // A bool that defaults to true has --no_<name>, as in Hugging Face.
  EXPECT_FALSE(parse({"--no_skip_memory_metrics"}).skip_memory_metrics);
  EXPECT_FALSE(parse({"--no-skip-memory-metrics"}).skip_memory_metrics);
  EXPECT_TRUE(parse({"--no_skip_memory_metrics", "--skip_memory_metrics"}).skip_memory_metrics);
}

TEST(TrainingArgumentsCli, OptionalBoolIsUnsetUntilGiven) {
  EXPECT_FALSE(parse({}).disable_tqdm.has_value());
  EXPECT_EQ(parse({"--disable_tqdm"}).disable_tqdm, true);
  EXPECT_EQ(parse({"--disable_tqdm", "false"}).disable_tqdm, false);
}

TEST(TrainingArgumentsCli, ReportTo) {
  EXPECT_EQ(parse({"--report_to", "tensorboard", "jsonl"}).report_to,
            (std::vector<std::string>{"tensorboard", "jsonl"}));
  EXPECT_TRUE(parse({"--report_to", "none"}).report_to.empty());
  // The list ends at the next flag.
  const auto args = parse({"--report_to", "jsonl", "--bf16"});
  EXPECT_EQ(args.report_to, std::vector<std::string>{"jsonl"});
  EXPECT_TRUE(args.bf16);
}

TEST(TrainingArgumentsCli, Fsdp) {
  EXPECT_EQ(parse({"--fsdp", "full_shard auto_wrap"}).fsdp, "full_shard auto_wrap");
  // A bare --fsdp is transformers 5's fsdp=True: FSDP with its default, full sharding.
  EXPECT_EQ(parse({"--fsdp"}).fsdp, "full_shard");
  EXPECT_FALSE(parse({}).fsdp.has_value());
}

TEST(TrainingArgumentsCli, DictValuesConvertStringsAsHuggingFace) {
  const auto args = parse({"--gradient_checkpointing", "--gradient_checkpointing_kwargs",
                           R"({"use_reentrant": "False", "every_n_blocks": "3"})"});
  EXPECT_EQ(args.gradient_checkpointing_kwargs,
            (json{{"use_reentrant", false}, {"every_n_blocks", 3}}));
  const auto polynomial =
      parse({"--lr_scheduler_type", "polynomial", "--lr_scheduler_kwargs", R"({"power": "2.5"})"});
  EXPECT_EQ(polynomial.lr_scheduler_kwargs, (json{{"power", 2.5}}));
}

TEST(TrainingArgumentsCli, FsdpConfigPathOrObject) {
  TempFile config("fsdp.json", R"({"fsdp_activation_checkpointing": true, "version": 2})");
  const auto args = parse({"--fsdp", "--fsdp_config", config.path()});
  EXPECT_EQ(args.fsdp_config, config.path());
  EXPECT_EQ(args.fsdp_config_object(), (json{{"activation_checkpointing", true}, {"version", 2}}));
  EXPECT_TRUE(parse_fails_with({"--fsdp", "--fsdp_config", "no-such-dir/fsdp.json"},
                               "fsdp_config names the file \"no-such-dir/fsdp.json\", which "
                               "cannot be read"));
}

struct InvalidCliCase {
  std::vector<std::string> words;
  std::string field;
  std::string message;
};

const std::vector<InvalidCliCase>& invalid_cli_cases() {
  static const std::vector<InvalidCliCase> cases = {
      {{"--output_dir"}, "output_dir", "--output_dir expects a value (STR)"},
      {{"--num_train_epochs", "three"},
       "num_train_epochs",
       "--num_train_epochs expects a finite number such as 3e-05, got \"three\""},
      {{"--max_steps", "-5"}, "max_steps", "max_steps must be -1 or >= 1, got -5"},
      {{"--per_device_train_batch_size", "-2"},
       "per_device_train_batch_size",
       "per_device_train_batch_size must be >= 1, got -2"},
      {{"--per_device_eval_batch_size", "8.5"},
       "per_device_eval_batch_size",
       "--per_device_eval_batch_size expects an integer, got \"8.5\""},
      {{"--gradient_accumulation_steps", "0"},
       "gradient_accumulation_steps",
       "gradient_accumulation_steps must be >= 1, got 0"},
      {{"--learning_rate", "nan"},
       "learning_rate",
       "--learning_rate expects a finite number such as 3e-05, got \"nan\""},
      {{"--lr_scheduler_type", "cosin"},
       "lr_scheduler_type",
       "lr_scheduler_type must be one of linear, cosine, cosine_with_min_lr, constant, "
       "constant_with_warmup, polynomial, inverse_sqrt, got \"cosin\" (did you mean \"cosine\"?)"},
      {{"--lr_scheduler_kwargs", "[1]"},
       "lr_scheduler_kwargs",
       "--lr_scheduler_kwargs expects a JSON object such as '{\"key\": 1}', got \"[1]\""},
      {{"--warmup_steps", "2.5"},
       "warmup_steps",
       "warmup_steps must be 0, a whole number >= 1, or a fraction in (0, 1), got 2.5"},
      {{"--optim", "adamw_torch_fusd"},
       "optim",
       "optim must be one of adamw_torch_fused, adamw_torch, got \"adamw_torch_fusd\" (did you "
       "mean \"adamw_torch_fused\"?)"},
      {{"--optim", "adafactor"},
       "optim",
       "optim \"adafactor\" is not supported by remat (a transformers optimizer remat does not "
       "implement); valid: adamw_torch_fused, adamw_torch"},
      {{"--weight_decay", "-0.1"}, "weight_decay", "weight_decay must be >= 0, got -0.1"},
      {{"--adam_beta1", "1"}, "adam_beta1", "adam_beta1 must be in [0, 1), got 1.0"},
      {{"--adam_beta2", "-0.5"}, "adam_beta2", "adam_beta2 must be in [0, 1), got -0.5"},
      {{"--adam_epsilon", "0"}, "adam_epsilon", "adam_epsilon must be > 0, got 0.0"},
      {{"--max_grad_norm", "-1"}, "max_grad_norm", "max_grad_norm must be >= 0, got -1.0"},
      {{"--bf16", "maybe"},
       "bf16",
       "--bf16 expects true or false (or yes/no, t/f, y/n, 1/0), got \"maybe\""},
      {{"--fp16", "2"}, "fp16", "--fp16 expects true or false"},
      {{"--gradient_checkpointing", "on"}, "gradient_checkpointing", "got \"on\""},
      {{"--gradient_checkpointing_kwargs", R"({"offload": true})"},
       "gradient_checkpointing_kwargs",
       "gradient_checkpointing_kwargs has no key \"offload\"; valid keys: use_reentrant, "
       "preserve_rng_state, determinism_check, check_params, every_n_blocks, every_n_layers"},
      {{"--logging_strategy", "step"},
       "logging_strategy",
       "logging_strategy must be one of no, steps, epoch, got \"step\" (did you mean \"steps\"?)"},
      {{"--logging_steps", "-10"},
       "logging_steps",
       "logging_steps must be 0, a whole number >= 1, or a fraction in (0, 1), got -10.0"},
      {{"--logging_first_step", "sure"}, "logging_first_step", "got \"sure\""},
      {{"--report_to", "wandb"},
       "report_to",
       "report_to entries must be one of none, tensorboard, jsonl, got \"wandb\""},
      {{"--disable_tqdm", "perhaps"}, "disable_tqdm", "--disable_tqdm expects true or false"},
      {{"--skip_memory_metrics", "x"}, "skip_memory_metrics", "got \"x\""},
      {{"--do_train", "x"}, "do_train", "got \"x\""},
      {{"--do_eval", "x"}, "do_eval", "got \"x\""},
      {{"--eval_strategy", "always"},
       "eval_strategy",
       "eval_strategy must be one of no, steps, epoch, got \"always\""},
      {{"--eval_steps", "0"},
       "eval_steps",
       "eval_steps must be a whole number >= 1 or a fraction in (0, 1), got 0.0"},
      {{"--save_strategy", "best"},
       "save_strategy",
       "save_strategy \"best\" is not supported by remat (it saves on a new best metric, and "
       "remat has no metric_for_best_model); valid: no, steps, epoch"},
      {{"--save_steps", "-1"}, "save_steps", "save_steps must be 0, a whole number >= 1"},
      {{"--save_total_limit", "0"}, "save_total_limit", "save_total_limit must be >= 1, got 0"},
      {{"--resume_from_checkpoint", "--bf16"},
       "resume_from_checkpoint",
       "--resume_from_checkpoint expects a value (STR)"},
      {{"--seed", "-1"}, "seed", "seed must be in [0, 4294967295], got -1"},
      {{"--data_seed", "4294967296"}, "data_seed", "data_seed must be in [0, 4294967295]"},
      {{"--use_cpu", "x"}, "use_cpu", "got \"x\""},
      {{"--dataloader_drop_last", "x"}, "dataloader_drop_last", "got \"x\""},
      {{"--dataloader_num_workers", "-1"},
       "dataloader_num_workers",
       "dataloader_num_workers must be >= 0, got -1"},
      {{"--ddp_timeout", "0"}, "ddp_timeout", "ddp_timeout must be >= 1, got 0"},
      {{"--fsdp", "ful_shard"},
       "fsdp",
       "fsdp option \"ful_shard\" must be one of full_shard, shard_grad_op, hybrid_shard, "
       "hybrid_shard_zero2, no_shard, offload, auto_wrap (did you mean \"full_shard\"?)"},
      {{"--fsdp", "--fsdp_config", R"({"versoin": 1})"},
       "fsdp_config",
       "fsdp_config has no key \"versoin\" (did you mean \"version\"?); valid keys: version, "},
      {{"--skip_nonfinite_steps", "x"}, "skip_nonfinite_steps", "got \"x\""},
  };
  return cases;
}

TEST(TrainingArgumentsCli, InvalidValueOfEveryFieldNamesIt) {
  std::set<std::string> covered;
  for (const auto& c : invalid_cli_cases()) {
    SCOPED_TRACE(c.words.front());
    try {
      parse(c.words);
      ADD_FAILURE() << "no error";
    } catch (const TrainingArgumentsError& e) {
      EXPECT_EQ(e.field(), c.field);
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos)
          << "message: " << e.what() << "\nexpected: " << c.message;
    }
    covered.insert(c.field);
  }
  EXPECT_EQ(covered, field_names()) << "every field needs an invalid command-line case";
}

TEST(TrainingArgumentsCli, MissingValueIsAnError) {
  EXPECT_TRUE(parse_fails_with({"--learning_rate"}, "--learning_rate expects a value (FLOAT)"));
  EXPECT_TRUE(parse_fails_with({"--report_to"}, "--report_to expects a value (STR...)"));
  // A flag is not taken as the value of the flag before it, as with argparse.
  EXPECT_TRUE(parse_fails_with({"--output_dir", "--bf16"}, "--output_dir expects a value (STR)"));
  // Unless the user says so.
  EXPECT_EQ(parse({"--output_dir=--bf16"}).output_dir, "--bf16");
}

TEST(TrainingArgumentsCli, UnknownFlagSuggestsTheClosestField) {
  try {
    parse({"--lerning_rate", "3e-5"});
    FAIL() << "no error";
  } catch (const TrainingArgumentsError& e) {
    EXPECT_EQ(e.field(), "--lerning_rate");
    EXPECT_STREQ(e.what(),
                 "unrecognized arguments: --lerning_rate (did you mean --learning_rate?) 3e-5");
  }
  EXPECT_TRUE(parse_fails_with({"--fp61"}, "--fp61 (did you mean --fp16?)"));
  EXPECT_TRUE(parse_fails_with({"--gradient_checkpointing_kwarg={}"},
                               "(did you mean --gradient_checkpointing_kwargs?)"));
  EXPECT_TRUE(parse_fails_with({"--per_device_batch_size", "8"},
                               "(did you mean --per_device_eval_batch_size?)"));
  // Nothing close: the error still names the argument.
  EXPECT_TRUE(parse_fails_with({"--model_name_or_path", "gpt2"},
                               "unrecognized arguments: --model_name_or_path gpt2"));
  EXPECT_TRUE(parse_fails_with({"stray"}, "unrecognized arguments: stray"));
}

TEST(TrainingArgumentsCli, RemovedFieldsSayWhatReplacedThem) {
  EXPECT_TRUE(parse_fails_with(
      {"--warmup_ratio", "0.1"},
      "--warmup_ratio is no longer a training argument: transformers 5 removed it; warmup_steps "
      "takes the ratio instead (a value in [0, 1) is a fraction of the total steps), e.g. "
      "--warmup_steps 0.1"));
  EXPECT_TRUE(parse_fails_with({"--logging_dir", "runs"}, "$TENSORBOARD_LOGGING_DIR"));
  EXPECT_TRUE(parse_fails_with({"--overwrite_output_dir"}, "--resume_from_checkpoint latest"));
  EXPECT_TRUE(parse_fails_with({"--evaluation_strategy", "steps"}, "renamed eval_strategy"));
  EXPECT_TRUE(parse_fails_with({"--no_cuda"}, "replaced by use_cpu"));
}

TEST(TrainingArgumentsCli, ParseKnownArgsReturnsTheRestInOrder) {
  const std::vector<const char*> argv = {"train", "--model_name_or_path", "gpt2", "--learning_rate",
                                         "1e-4",  "--block_size",         "512",  "--bf16"};
  auto [args, rest] =
      TrainingArguments::parse_known_args(static_cast<int>(argv.size()), argv.data());
  EXPECT_EQ(args.learning_rate, 1e-4);
  EXPECT_TRUE(args.bf16);
  EXPECT_EQ(rest,
            (std::vector<std::string>{"--model_name_or_path", "gpt2", "--block_size", "512"}));
}

TEST(TrainingArgumentsCli, ProgramAddsItsOwnOptionsToTheSameApp) {
  CLI::App app{"Fine-tunes a model"};
  TrainingArguments args;
  std::string model;
  app.add_option("--model_name_or_path", model, "Model to start from")->required();
  remat::add_training_arguments(app, args);
  app.parse(std::string("--model_name_or_path gpt2 --learning_rate 2e-4 --report_to jsonl"), false);
  args.validate();
  EXPECT_EQ(model, "gpt2");
  EXPECT_EQ(args.learning_rate, 2e-4);
  EXPECT_EQ(args.report_to, std::vector<std::string>{"jsonl"});
  EXPECT_NE(app.help().find("--model_name_or_path"), std::string::npos);
  EXPECT_NE(app.help().find("--gradient_checkpointing"), std::string::npos);
}

TEST(TrainingArgumentsCli, ProgramAppReportsErrorsThroughCli11) {
  CLI::App app{"Fine-tunes a model"};
  TrainingArguments args;
  std::string model;
  app.add_option("--model_name_or_path", model, "Model to start from");
  remat::add_training_arguments(app, args);
  std::ostringstream out, err;
  try {
    app.parse(std::string("--model_name_or_pth gpt2"), false);
    FAIL() << "no error";
  } catch (const CLI::ParseError& e) {
    EXPECT_NE(app.exit(e, out, err), 0);
  }
  EXPECT_NE(err.str().find("--model_name_or_pth (did you mean --model_name_or_path?)"),
            std::string::npos)
      << err.str();
  try {
    app.parse(std::string("--learning_rate fast"), false);
    FAIL() << "no error";
  } catch (const CLI::ParseError& e) {
    app.exit(e, out, err);
  }
  EXPECT_NE(err.str().find("--learning_rate expects a finite number"), std::string::npos)
      << err.str();
}

// ---------------------------------------------------------------------------
// --help

TEST(TrainingArgumentsHelp, ListsEveryFieldWithTypeDefaultAndHelp) {
  std::string help;
  try {
    parse({"--help"});
    FAIL() << "--help did not throw HelpRequested";
  } catch (const remat::HelpRequested& e) {
    help = e.what();
  }
  for (const auto& f : TrainingArguments::fields()) {
    SCOPED_TRACE(f.name);
    const auto shown = f.default_value == "null" ? "unset" : f.default_value;
    EXPECT_NE(help.find("--" + f.name + " " + f.metavar + " (default: " + shown + ")"),
              std::string::npos);
    EXPECT_NE(help.find(f.help.substr(0, 30)), std::string::npos);
  }
  EXPECT_NE(help.find("--learning_rate FLOAT (default: 5e-05)"), std::string::npos) << help;
  EXPECT_NE(help.find("--save_total_limit INT (default: unset)"), std::string::npos);
  EXPECT_NE(help.find("--gradient_checkpointing [BOOL] (default: false)"), std::string::npos);
  EXPECT_NE(help.find("[one of linear, cosine, "), std::string::npos);
  EXPECT_NE(help.find("Gradient checkpointing:"), std::string::npos);
  EXPECT_EQ(help.find("--learning-rate"), std::string::npos) << "hidden spellings are listed";
}

TEST(TrainingArgumentsHelp, ShortFlagAndHelpBeforeOtherErrors) {
  EXPECT_THROW(parse({"-h"}), remat::HelpRequested);
  EXPECT_THROW(parse({"--help", "--unknown"}), remat::HelpRequested);
}

// ---------------------------------------------------------------------------
// JSON

TrainingArguments customized() {
  TrainingArguments args;
  args.output_dir = "runs/x";
  args.num_train_epochs = 1.5;
  args.max_steps = 1000;
  args.per_device_train_batch_size = 4;
  args.learning_rate = 3e-4;
  args.lr_scheduler_type = "cosine_with_min_lr";
  args.lr_scheduler_kwargs = {{"min_lr_rate", 0.1}};
  args.warmup_steps = 0.05;
  args.weight_decay = 0.1;
  args.adam_beta2 = 0.95;
  args.bf16 = true;
  args.gradient_checkpointing = true;
  args.gradient_checkpointing_kwargs = {{"every_n_blocks", 2}, {"preserve_rng_state", false}};
  args.logging_steps = 10;
  args.report_to = {"tensorboard", "jsonl"};
  args.disable_tqdm = true;
  args.eval_strategy = "steps";
  args.eval_steps = 0.1;
  args.save_total_limit = 2;
  args.resume_from_checkpoint = "latest";
  args.data_seed = 3;
  args.fsdp = "shard_grad_op offload";
  args.fsdp_config = {{"version", 2}, {"cpu_offload", true}};
  return args;
}

TEST(TrainingArgumentsJson, RoundTrip) {
  const auto args = customized();
  EXPECT_EQ(TrainingArguments::from_json(args.to_json()), args);
  EXPECT_EQ(TrainingArguments::from_json(json::parse(args.to_json_string())), args);
  EXPECT_EQ(TrainingArguments::from_json(TrainingArguments{}.to_json()), TrainingArguments{});
  EXPECT_NE(args, TrainingArguments{});
}

TEST(TrainingArgumentsJson, FileRoundTrip) {
  TempFile file("training_args.json");
  const auto args = customized();
  args.to_json_file(file.path());
  EXPECT_EQ(TrainingArguments::from_json_file(file.path()), args);
}

TEST(TrainingArgumentsJson, EveryFieldUnderItsName) {
  const auto j = TrainingArguments{}.to_json();
  std::set<std::string> keys;
  for (const auto& [key, value] : j.items()) keys.insert(key);
  EXPECT_EQ(keys, field_names());
  EXPECT_EQ(j["learning_rate"], 5e-5);
  EXPECT_EQ(j["save_total_limit"], nullptr);
  EXPECT_EQ(j["report_to"], json::array());
}

TEST(TrainingArgumentsJson, MissingKeysKeepDefaults) {
  const auto args = TrainingArguments::from_json({{"learning_rate", 1e-3}});
  TrainingArguments expected;
  expected.learning_rate = 1e-3;
  EXPECT_EQ(args, expected);
}

TEST(TrainingArgumentsJson, HuggingFaceForms) {
  const auto args = TrainingArguments::from_json({{"report_to", "none"},
                                                  {"lr_scheduler_kwargs", nullptr},
                                                  {"fsdp", true},
                                                  {"activation_checkpointing", true},
                                                  {"gradient_checkpointing", true}});
  EXPECT_TRUE(args.report_to.empty());
  EXPECT_EQ(args.lr_scheduler_kwargs, json::object());
  EXPECT_EQ(args.fsdp, "full_shard");
  EXPECT_TRUE(args.gradient_checkpointing);
  EXPECT_EQ(TrainingArguments::from_json({{"report_to", "jsonl"}}).report_to,
            std::vector<std::string>{"jsonl"});
  EXPECT_FALSE(TrainingArguments::from_json({{"fsdp", false}}).fsdp.has_value());
}

TEST(TrainingArgumentsJson, Errors) {
  EXPECT_TRUE(throws_with(
      [] {
        TrainingArguments::from_json({{"lerning_rate", 1e-3}});
      },
      "unknown training argument \"lerning_rate\" in JSON (did you mean "
      "\"learning_rate\"?)"));
  EXPECT_TRUE(throws_with(
      [] {
        TrainingArguments::from_json({{"learning_rate", "fast"}});
      },
      "learning_rate must be a number, got \"fast\""));
  EXPECT_TRUE(throws_with(
      [] {
        TrainingArguments::from_json({{"max_steps", 10.5}});
      },
      "max_steps must be an integer, got 10.5"));
  EXPECT_TRUE(throws_with(
      [] {
        TrainingArguments::from_json({{"bf16", "true"}});
      },
      "bf16 must be true or false, got \"true\""));
  EXPECT_TRUE(throws_with(
      [] {
        TrainingArguments::from_json({{"report_to", {1}}});
      },
      "report_to must be a list of strings (or one string), got [1]"));
  EXPECT_TRUE(throws_with(
      [] {
        TrainingArguments::from_json({{"warmup_ratio", 0.1}});
      },
      "\"warmup_ratio\" is no longer a training argument"));
  EXPECT_TRUE(throws_with([] { TrainingArguments::from_json(json::array()); },
                          "training arguments must be a JSON object of fields, got []"));
  EXPECT_TRUE(throws_with(
      [] {
        TrainingArguments::from_json(
            {{"gradient_checkpointing", true}, {"activation_checkpointing", false}});
      },
      "\"activation_checkpointing\" and \"gradient_checkpointing\" name the same field but "
      "differ: false and true"));
  // from_json validates.
  EXPECT_TRUE(throws_with(
      [] {
        TrainingArguments::from_json({{"adam_beta1", 1.0}});
      },
      "adam_beta1 must be in [0, 1)"));
  EXPECT_TRUE(throws_with([] { TrainingArguments::from_json_file("no-such-dir/args.json"); },
                          "cannot read training arguments from no-such-dir/args.json"));
  TempFile broken("broken.json", "{\"learning_rate\": }");
  EXPECT_TRUE(throws_with([&] { TrainingArguments::from_json_file(broken.path()); },
                          broken.path() + " is not valid JSON"));
}

// ---------------------------------------------------------------------------
// validate()

struct RuleCase {
  std::string name;
  std::function<void(TrainingArguments&)> change;
  std::string field;
  std::string message;
};

const std::vector<RuleCase>& rule_cases() {
  static const std::vector<RuleCase> cases = {
      {"negative batch size", [](auto& a) { a.per_device_train_batch_size = -1; },
       "per_device_train_batch_size", "per_device_train_batch_size must be >= 1, got -1"},
      {"zero eval batch size", [](auto& a) { a.per_device_eval_batch_size = 0; },
       "per_device_eval_batch_size", "per_device_eval_batch_size must be >= 1, got 0"},
      {"negative learning rate", [](auto& a) { a.learning_rate = -1e-4; }, "learning_rate",
       "learning_rate must be >= 0, got -0.0001"},
      {"infinite learning rate", [](auto& a) { a.learning_rate = INFINITY; }, "learning_rate",
       "learning_rate must be a finite number, got inf"},
      {"nan epochs", [](auto& a) { a.num_train_epochs = NAN; }, "num_train_epochs",
       "num_train_epochs must be a finite number, got nan"},
      {"beta1 of 1", [](auto& a) { a.adam_beta1 = 1.0; }, "adam_beta1",
       "adam_beta1 must be in [0, 1), got 1.0"},
      {"negative beta2", [](auto& a) { a.adam_beta2 = -0.1; }, "adam_beta2",
       "adam_beta2 must be in [0, 1), got -0.1"},
      {"zero epsilon", [](auto& a) { a.adam_epsilon = 0; }, "adam_epsilon",
       "adam_epsilon must be > 0, got 0.0"},
      {"negative weight decay", [](auto& a) { a.weight_decay = -0.01; }, "weight_decay",
       "weight_decay must be >= 0, got -0.01"},
      {"negative max_grad_norm", [](auto& a) { a.max_grad_norm = -1; }, "max_grad_norm",
       "max_grad_norm must be >= 0, got -1.0"},
      {"unknown scheduler", [](auto& a) { a.lr_scheduler_type = "cosine_annealing"; },
       "lr_scheduler_type", "lr_scheduler_type must be one of linear, cosine"},
      {"Hugging Face scheduler remat lacks",
       [](auto& a) { a.lr_scheduler_type = "cosine_with_restarts"; }, "lr_scheduler_type",
       "lr_scheduler_type \"cosine_with_restarts\" is not supported by remat (a transformers "
       "scheduler remat does not implement); valid: linear, cosine,"},
      {"scheduler kwarg of another scheduler",
       [](auto& a) {
         a.lr_scheduler_kwargs = {{"num_cycles", 2}};
       },
       "lr_scheduler_kwargs",
       "lr_scheduler_kwargs: the linear scheduler takes no arguments, got \"num_cycles\""},
      {"scheduler kwarg typo",
       [](auto& a) {
         a.lr_scheduler_type = "cosine";
         a.lr_scheduler_kwargs = {{"num_cycle", 2}};
       },
       "lr_scheduler_kwargs",
       "lr_scheduler_kwargs: the cosine scheduler takes only num_cycles, got \"num_cycle\" (did "
       "you mean \"num_cycles\"?)"},
      {"scheduler kwarg value",
       [](auto& a) {
         a.lr_scheduler_type = "inverse_sqrt";
         a.lr_scheduler_kwargs = {{"timescale", 0}};
       },
       "lr_scheduler_kwargs", "lr_scheduler_kwargs.timescale must be an integer >= 1, got 0"},
      {"cosine_with_min_lr without a minimum",
       [](auto& a) { a.lr_scheduler_type = "cosine_with_min_lr"; }, "lr_scheduler_kwargs",
       "the cosine_with_min_lr scheduler needs exactly one of min_lr and min_lr_rate, got {}"},
      {"cosine_with_min_lr with both",
       [](auto& a) {
         a.lr_scheduler_type = "cosine_with_min_lr";
         a.lr_scheduler_kwargs = {{"min_lr", 1e-6}, {"min_lr_rate", 0.1}};
       },
       "lr_scheduler_kwargs", "needs exactly one of min_lr and min_lr_rate"},
      {"polynomial lr_end above the rate",
       [](auto& a) {
         a.lr_scheduler_type = "polynomial";
         a.lr_scheduler_kwargs = {{"lr_end", 1e-3}};
       },
       "lr_scheduler_kwargs",
       "lr_scheduler_kwargs.lr_end (0.001) must be smaller than learning_rate (5e-05) for the "
       "polynomial scheduler"},
      {"warmup ratio above 1", [](auto& a) { a.warmup_steps = 1.5; }, "warmup_steps",
       "warmup_steps must be 0, a whole number >= 1, or a fraction in (0, 1), got 1.5"},
      {"negative warmup", [](auto& a) { a.warmup_steps = -1; }, "warmup_steps",
       "warmup_steps must be 0, a whole number >= 1"},
      {"unknown logging strategy", [](auto& a) { a.logging_strategy = "always"; },
       "logging_strategy", "logging_strategy must be one of no, steps, epoch, got \"always\""},
      {"logging every 0 steps", [](auto& a) { a.logging_steps = 0; }, "logging_steps",
       "logging_strategy \"steps\" needs logging_steps > 0, got 0"},
      {"fractional logging steps", [](auto& a) { a.logging_steps = 10.5; }, "logging_steps",
       "logging_steps must be 0, a whole number >= 1, or a fraction in (0, 1), got 10.5"},
      {"unknown eval strategy", [](auto& a) { a.eval_strategy = "epochs"; }, "eval_strategy",
       "eval_strategy must be one of no, steps, epoch, got \"epochs\" (did you mean \"epoch\"?)"},
      {"eval steps of 0",
       [](auto& a) {
         a.eval_strategy = "steps";
         a.eval_steps = 0;
       },
       "eval_steps", "eval_steps must be a whole number >= 1 or a fraction in (0, 1), got 0.0"},
      {"negative eval steps", [](auto& a) { a.eval_steps = -5; }, "eval_steps",
       "eval_steps must be a whole number >= 1 or a fraction in (0, 1), got -5.0"},
      {"eval by steps with nothing to count",
       [](auto& a) {
         a.eval_strategy = "steps";
         a.logging_strategy = "no";
         a.logging_steps = 0;
       },
       "eval_steps",
       "eval_strategy \"steps\" needs eval_steps, or logging_steps > 0 for it to default to"},
      {"unknown save strategy", [](auto& a) { a.save_strategy = "never"; }, "save_strategy",
       "save_strategy must be one of no, steps, epoch, got \"never\""},
      {"save every 0 steps", [](auto& a) { a.save_steps = 0; }, "save_steps",
       "save_strategy \"steps\" needs save_steps > 0, got 0"},
      {"save_total_limit of 0", [](auto& a) { a.save_total_limit = 0; }, "save_total_limit",
       "save_total_limit must be >= 1, got 0"},
      {"bf16 and fp16",
       [](auto& a) {
         a.bf16 = true;
         a.fp16 = true;
       },
       "fp16", "bf16 and fp16 are both true: choose at most one mixed-precision mode"},
      {"max_steps of 0", [](auto& a) { a.max_steps = 0; }, "max_steps",
       "max_steps must be -1 or >= 1, got 0"},
      {"zero epochs", [](auto& a) { a.num_train_epochs = 0; }, "num_train_epochs",
       "num_train_epochs must be > 0 when max_steps is -1 (nothing would be trained), got 0"},
      {"negative epochs", [](auto& a) { a.num_train_epochs = -1; }, "num_train_epochs",
       "num_train_epochs must be >= 0, got -1.0"},
      {"empty output_dir", [](auto& a) { a.output_dir = ""; }, "output_dir",
       "output_dir must be a non-empty string"},
      {"seed out of numpy's range", [](auto& a) { a.seed = int64_t{1} << 33; }, "seed",
       "seed must be in [0, 4294967295], got 8589934592"},
      {"negative data seed", [](auto& a) { a.data_seed = -3; }, "data_seed",
       "data_seed must be in [0, 4294967295], got -3"},
      {"negative workers", [](auto& a) { a.dataloader_num_workers = -2; }, "dataloader_num_workers",
       "dataloader_num_workers must be >= 0, got -2"},
      {"zero ddp timeout", [](auto& a) { a.ddp_timeout = 0; }, "ddp_timeout",
       "ddp_timeout must be >= 1, got 0"},
      {"unknown reporter", [](auto& a) { a.report_to = {"tensorbord"}; }, "report_to",
       "report_to entries must be one of none, tensorboard, jsonl, got \"tensorbord\" (did you "
       "mean \"tensorboard\"?)"},
      {"none with a reporter",
       [](auto& a) {
         a.report_to = {"none", "jsonl"};
       },
       "report_to", "report_to cannot combine \"none\" with reporters, got [\"none\",\"jsonl\"]"},
      {"a reporter twice",
       [](auto& a) {
         a.report_to = {"jsonl", "jsonl"};
       },
       "report_to", "report_to names \"jsonl\" twice"},
      {"unknown checkpointing key",
       [](auto& a) {
         a.gradient_checkpointing_kwargs = {{"use_reentrnt", false}};
       },
       "gradient_checkpointing_kwargs",
       "gradient_checkpointing_kwargs has no key \"use_reentrnt\" (did you mean "
       "\"use_reentrant\"?); valid keys: use_reentrant, preserve_rng_state, determinism_check, "
       "check_params, every_n_blocks, every_n_layers"},
      {"checkpointing key of the wrong type",
       [](auto& a) {
         a.gradient_checkpointing_kwargs = {{"use_reentrant", "no"}};
       },
       "gradient_checkpointing_kwargs",
       "gradient_checkpointing_kwargs.use_reentrant must be a bool, got \"no\""},
      {"every_n_blocks of 0",
       [](auto& a) {
         a.gradient_checkpointing_kwargs = {{"every_n_blocks", 0}};
       },
       "gradient_checkpointing_kwargs",
       "gradient_checkpointing_kwargs.every_n_blocks must be an integer >= 1, got 0"},
      {"unknown determinism check",
       [](auto& a) {
         a.gradient_checkpointing_kwargs = {{"determinism_check", "strict"}};
       },
       "gradient_checkpointing_kwargs",
       "gradient_checkpointing_kwargs.determinism_check must be \"default\" or \"none\", got "
       "\"strict\""},
      {"every_n_blocks and every_n_layers",
       [](auto& a) {
         a.gradient_checkpointing_kwargs = {{"every_n_blocks", 2}, {"every_n_layers", 2}};
       },
       "gradient_checkpointing_kwargs",
       "gradient_checkpointing_kwargs gives both every_n_blocks and every_n_layers"},
      {"scheduler kwargs that are not an object",
       [](auto& a) { a.lr_scheduler_kwargs = json::array({1}); }, "lr_scheduler_kwargs",
       "lr_scheduler_kwargs must be a JSON object, got [1]"},
      {"kwargs that are not an object",
       [](auto& a) { a.gradient_checkpointing_kwargs = json::array(); },
       "gradient_checkpointing_kwargs", "gradient_checkpointing_kwargs must be a JSON object"},
      {"two sharding strategies", [](auto& a) { a.fsdp = "full_shard shard_grad_op"; }, "fsdp",
       "fsdp \"full_shard shard_grad_op\" names several sharding strategies (full_shard, "
       "shard_grad_op): choose one"},
      {"an FSDP option twice", [](auto& a) { a.fsdp = "offload offload"; }, "fsdp",
       "fsdp names \"offload\" twice"},
      {"FSDP1 strategy on FSDP2", [](auto& a) { a.fsdp = "hybrid_shard"; }, "fsdp",
       "fsdp option \"hybrid_shard\" needs FSDP1: set fsdp_config.version to 1"},
      {"fsdp_config version",
       [](auto& a) {
         a.fsdp = "full_shard";
         a.fsdp_config = {{"version", 3}};
       },
       "fsdp_config", "fsdp_config.version must be 1 or 2, got 3"},
      {"fsdp_config value",
       [](auto& a) {
         a.fsdp = "full_shard";
         a.fsdp_config = {{"auto_wrap_policy", "BLOCK_WRAP"}};
       },
       "fsdp_config",
       "fsdp_config.auto_wrap_policy must be one of TRANSFORMER_BASED_WRAP, SIZE_BASED_WRAP, "
       "NO_WRAP, "
       "got \"BLOCK_WRAP\""},
      {"fsdp_config that is neither object nor path", [](auto& a) { a.fsdp_config = 3; },
       "fsdp_config", "fsdp_config must be a JSON object or the path of a JSON file, got 3"},
      {"checkpointing twice under FSDP",
       [](auto& a) {
         a.gradient_checkpointing = true;
         a.fsdp = "full_shard";
         a.fsdp_config = {{"activation_checkpointing", true}};
       },
       "gradient_checkpointing",
       "gradient_checkpointing and fsdp_config.activation_checkpointing are both true: blocks "
       "would be checkpointed twice; keep fsdp_config.activation_checkpointing alone"},
      {"empty resume_from_checkpoint", [](auto& a) { a.resume_from_checkpoint = ""; },
       "resume_from_checkpoint", "resume_from_checkpoint must be a non-empty string"},
  };
  return cases;
}

TEST(TrainingArgumentsValidate, DefaultsAreValid) {
  EXPECT_NO_THROW(TrainingArguments{}.validate());
}

TEST(TrainingArgumentsValidate, EveryRuleNamesFieldValueAndWhatIsValid) {
  for (const auto& c : rule_cases()) {
    SCOPED_TRACE(c.name);
    TrainingArguments args;
    c.change(args);
    try {
      args.validate();
      ADD_FAILURE() << "no error";
    } catch (const TrainingArgumentsError& e) {
      EXPECT_EQ(e.field(), c.field);
      EXPECT_NE(std::string(e.what()).find(c.message), std::string::npos)
          << "message: " << e.what() << "\nexpected: " << c.message;
    }
  }
}

TEST(TrainingArgumentsValidate, AcceptsWhatHuggingFaceAccepts) {
  TrainingArguments args;
  args.max_steps = 10;
  args.num_train_epochs = 0;  // max_steps overrides it
  args.warmup_steps = 100;
  args.logging_strategy = "no";
  args.logging_steps = 0;
  args.save_strategy = "no";
  args.save_steps = 0;
  args.eval_strategy = "steps";
  args.eval_steps = 0.25;
  args.max_grad_norm = 0;
  args.report_to = {"none"};
  args.fsdp = "";
  args.lr_scheduler_type = "cosine_with_min_lr";
  args.lr_scheduler_kwargs = {{"min_lr", 1e-6}, {"num_cycles", 0.5}};
  EXPECT_NO_THROW(args.validate());
  args.fsdp = "hybrid_shard offload";
  args.fsdp_config = {{"fsdp_version", 1}, {"fsdp_reshard_after_forward", "hybrid_shard"}};
  EXPECT_NO_THROW(args.validate());
  // eval_steps unset takes logging_steps.
  TrainingArguments by_steps;
  by_steps.eval_strategy = "steps";
  EXPECT_NO_THROW(by_steps.validate());
}

TEST(TrainingArgumentsValidate, GradientCheckpointingKwargsKeys) {
  TrainingArguments args;
  args.gradient_checkpointing = true;
  args.gradient_checkpointing_kwargs = {{"use_reentrant", true},
                                        {"preserve_rng_state", false},
                                        {"determinism_check", "none"},
                                        {"check_params", false},
                                        {"every_n_blocks", 3}};
  EXPECT_NO_THROW(args.validate());
  args.gradient_checkpointing_kwargs = {{"every_n_layers", 2}};
  EXPECT_NO_THROW(args.validate());
}

// ---------------------------------------------------------------------------
// Warnings

TEST(TrainingArgumentsWarnings, GradientCheckpointingWithFullShardFsdp) {
  for (const std::string fsdp : {"full_shard", "full_shard auto_wrap", "offload"}) {
    SCOPED_TRACE(fsdp);
    LogCapture log;
    TrainingArguments args;
    args.gradient_checkpointing = true;
    args.fsdp = fsdp;
    args.validate();
    EXPECT_EQ(log.count(kFsdpWarning), 1) << log.text();
    EXPECT_EQ(log.count("[warning]"), 1) << log.text();
  }
  LogCapture log;
  TrainingArguments hybrid;
  hybrid.gradient_checkpointing = true;
  hybrid.fsdp = "hybrid_shard";
  hybrid.fsdp_config = {{"version", 1}};
  hybrid.validate();
  EXPECT_EQ(log.count(kFsdpWarning), 1);
}

TEST(TrainingArgumentsWarnings, NoFsdpWarningWithoutResharding) {
  LogCapture log;
  TrainingArguments args;
  args.gradient_checkpointing = true;
  args.fsdp = "shard_grad_op";
  args.validate();
  args.fsdp = "offload";
  args.fsdp_config = {{"reshard_after_forward", false}};
  args.validate();
  args.gradient_checkpointing = false;
  args.fsdp = "full_shard";
  args.fsdp_config = {{"activation_checkpointing", true}};
  args.validate();
  EXPECT_EQ(log.count(kFsdpWarning), 0) << log.text();
  EXPECT_TRUE(args.warnings().empty());
}

TEST(TrainingArgumentsWarnings, SettingsWithoutEffect) {
  TrainingArguments args;
  args.gradient_checkpointing_kwargs = {{"every_n_blocks", 2}};
  args.fsdp_config = {{"cpu_offload", true}};
  EXPECT_EQ(args.warnings(),
            (std::vector<std::string>{
                "gradient_checkpointing_kwargs is set but gradient_checkpointing is false: the "
                "kwargs have no effect",
                "fsdp_config is set but fsdp is not: fsdp_config has no effect"}));
}

// ---------------------------------------------------------------------------
// The field table

TEST(TrainingArgumentsFields, TableIsComplete) {
  std::set<std::string> names;
  for (const auto& f : TrainingArguments::fields()) {
    SCOPED_TRACE(f.name);
    EXPECT_TRUE(names.insert(f.name).second) << "duplicate";
    EXPECT_FALSE(f.help.empty());
    EXPECT_FALSE(f.section.empty());
    EXPECT_FALSE(f.type.empty());
    EXPECT_EQ(f.default_value, f.get(TrainingArguments{}).dump());
    TrainingArguments args;
    f.set(args, f.get(customized()));
    EXPECT_EQ(f.get(args), f.get(customized()));
  }
  EXPECT_EQ(field("warmup_steps").type, "double");
  EXPECT_EQ(field("save_total_limit").type, "std::optional<int64_t>");
  EXPECT_EQ(field("lr_scheduler_kwargs").type, "nlohmann::json");
  EXPECT_EQ(field("gradient_checkpointing").aliases,
            std::vector<std::string>{"activation_checkpointing"});
}

// ---------------------------------------------------------------------------
// Defaults against transformers.TrainingArguments

namespace {

json oracle_defaults() {
  const char* dir = std::getenv("REMAT_ORACLE_DIR");
  if (dir == nullptr) throw std::runtime_error("REMAT_ORACLE_DIR is not set (run through ctest)");
  std::ifstream file(std::string(dir) + "/training_args_defaults/defaults.json");
  if (!file) throw std::runtime_error("oracle training_args_defaults has not run");
  return json::parse(file);
}

// The Python base types a remat field's C++ type corresponds to.
std::vector<std::string> python_types(const std::string& cpp) {
  const std::string optional = "std::optional<";
  if (cpp.rfind(optional, 0) == 0) {
    auto inner = python_types(cpp.substr(optional.size(), cpp.size() - optional.size() - 1));
    inner.push_back("None");
    std::sort(inner.begin(), inner.end());
    return inner;
  }
  if (cpp == "bool") return {"bool"};
  if (cpp == "int64_t") return {"int"};
  if (cpp == "double") return {"float"};
  if (cpp == "std::string") return {"str"};
  if (cpp == "std::vector<std::string>") return {"list[str]"};
  if (cpp == "nlohmann::json") return {"dict"};
  return {"?" + cpp};
}

}  // namespace

TEST(TrainingArgumentsDefaults, EqualHuggingFace) {
  const auto oracle = oracle_defaults();
  ASSERT_EQ(oracle["transformers"], "5.24.0");
  const auto& hf = oracle["fields"];

  // Where a remat default deliberately differs from the value of an instance
  // of transformers.TrainingArguments built with no arguments.
  const std::map<std::string, std::string> different_value = {
      // Hugging Face's None and remat's {} both mean "no extra arguments"; an
      // object is simpler to fill in C++ (args.lr_scheduler_kwargs["power"] = 2).
      {"lr_scheduler_kwargs", "{} for None"},
      {"gradient_checkpointing_kwargs", "{} for None"},
      {"fsdp_config", "{} for None"},
      // Hugging Face resolves None from its logger's level when the object is
      // built; remat keeps it unset, to follow remat::logger() when training.
      {"disable_tqdm", "unset until training"},
  };
  // Where the C++ type deliberately differs from Hugging Face's annotation.
  const std::map<std::string, std::string> different_type = {
      // Hugging Face declares None and sets these when the object is built;
      // remat holds the resulting value and type from the start.
      {"output_dir", "str | None, set to \"trainer_output\""},
      {"gradient_checkpointing", "bool | None, set to False"},
      {"report_to", "None | str | list[str], set to a list"},
      // JSON objects; None reads as {}. fsdp_config may also hold a path, as a
      // JSON string.
      {"lr_scheduler_kwargs", "dict | str | None"},
      {"gradient_checkpointing_kwargs", "dict | str | None"},
      {"fsdp_config", "dict | str | None"},
  };

  const TrainingArguments defaults;
  for (const auto& f : TrainingArguments::fields()) {
    SCOPED_TRACE(f.name);
    if (f.section == "remat extensions (not in transformers)") {
      EXPECT_FALSE(hf.contains(f.name)) << "a remat extension that transformers now has";
      continue;
    }
    ASSERT_TRUE(hf.contains(f.name)) << "transformers.TrainingArguments has no field " << f.name;
    const auto& reference = hf[f.name];
    if (different_value.count(f.name) == 0) {
      EXPECT_EQ(f.get(defaults), reference["resolved"]);
    }
    if (different_type.count(f.name) == 0) {
      EXPECT_EQ(json(python_types(f.type)), reference["types"]);
    }
    for (const auto& alias : f.aliases) EXPECT_TRUE(hf.contains(alias)) << alias;
  }
  // The documented differences are what they say.
  EXPECT_EQ(hf["lr_scheduler_kwargs"]["resolved"], nullptr);
  EXPECT_EQ(defaults.lr_scheduler_kwargs, json::object());
  EXPECT_EQ(hf["disable_tqdm"]["declared"], nullptr);
  EXPECT_FALSE(defaults.disable_tqdm.has_value());
  EXPECT_EQ(hf["output_dir"]["resolved"], "trainer_output");
  EXPECT_EQ(hf["report_to"]["resolved"], json::array());
  EXPECT_EQ(hf["gradient_checkpointing"]["resolved"], false);
}

TEST(TrainingArgumentsDefaults, RemovedFieldsAreGoneFromHuggingFace) {
  const auto hf = oracle_defaults()["fields"];
  for (const std::string name :
       {"warmup_ratio", "logging_dir", "overwrite_output_dir", "evaluation_strategy", "no_cuda"}) {
    EXPECT_FALSE(hf.contains(name)) << name;
    EXPECT_TRUE(parse_fails_with({"--" + name}, "--" + name + " is no longer a training argument"));
  }
}
