// remat::Trainer beyond the core loop, on CPU with a tiny GPT-2: callbacks
// (transformers' call order, and control of logging, evaluation, saving and
// stopping), trainer_state.json in transformers' layout, SIGINT/SIGTERM in
// the training process, fp16 with remat::GradScaler (against
// torch.amp.GradScaler), non-finite steps, out-of-memory errors, memory
// metrics and the train metrics.

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <set>

#include "oracle.h"
#include "remat/callbacks.h"
#include "remat/grad_scaler.h"
#include "remat/tensorboard.h"
#include "remat/trainer.h"
#include "support.h"
#include "trainer_support.h"

using remat::Trainer;
using remat::TrainerCallback;
using remat::TrainerControl;
using remat::TrainerState;
using remat::TrainingArguments;
using json = nlohmann::json;
using namespace remat::test;

namespace {

// Records every event with the global step it saw.
struct Recorder : TrainerCallback {
  std::vector<std::string> events;
  std::vector<json> logs;
  std::vector<std::string> saved;
  void note(const std::string& event, const TrainerState& state) {
    events.push_back(event);
    steps.push_back(state.global_step);
  }
  std::vector<int64_t> steps;

  void on_init_end(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_init_end", s);
  }
  void on_train_begin(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_train_begin", s);
  }
  void on_train_end(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_train_end", s);
  }
  void on_epoch_begin(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_epoch_begin", s);
  }
  void on_epoch_end(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_epoch_end", s);
  }
  void on_step_begin(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_step_begin", s);
  }
  void on_substep_end(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_substep_end", s);
  }
  void on_pre_optimizer_step(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_pre_optimizer_step", s);
  }
  void on_optimizer_step(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_optimizer_step", s);
  }
  void on_step_end(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    note("on_step_end", s);
  }
  void on_evaluate(const TrainingArguments&, TrainerState& s, TrainerControl&,
                   const std::map<std::string, double>& metrics) override {
    EXPECT_TRUE(metrics.count("eval_loss"));
    note("on_evaluate", s);
  }
  void on_save(const TrainingArguments&, TrainerState& s, TrainerControl&,
               const std::string& dir) override {
    saved.push_back(dir);
    note("on_save", s);
  }
  void on_log(const TrainingArguments&, TrainerState& s, TrainerControl&,
              const json& record) override {
    logs.push_back(record);
    note("on_log", s);
  }
};

// Runs `action` in on_step_end (or on_step_begin) of step `step`.
struct AtStep : TrainerCallback {
  AtStep(int64_t step, std::function<void(TrainerControl&)> action, bool at_begin = false)
      : step(step), action(std::move(action)), at_begin(at_begin) {}
  void on_step_begin(const TrainingArguments&, TrainerState& s, TrainerControl& c) override {
    if (at_begin && s.global_step + 1 == step) action(c);
  }
  void on_step_end(const TrainingArguments&, TrainerState& s, TrainerControl& c) override {
    if (!at_begin && s.global_step == step) action(c);
  }
  int64_t step;
  std::function<void(TrainerControl&)> action;
  bool at_begin;
};

std::vector<std::string> checkpoints_in(const std::string& dir) {
  std::vector<std::string> names;
  for (int step = 0; step <= 100; ++step) {
    const auto name = "checkpoint-" + std::to_string(step);
    if (exists(dir + "/" + name)) names.push_back(name);
  }
  return names;
}

// Multiplies the gradient flowing back by +inf; the forward value is
// unchanged. A finite loss with infinite gradients: an fp16 overflow.
struct InfGradient : torch::autograd::Function<InfGradient> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) {
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {grads[0] * std::numeric_limits<float>::infinity()};
  }
};

// A Trainer whose loss misbehaves during one optimizer step: its gradient is
// infinite, its value NaN, or computing it runs out of memory.
struct FaultyTrainer : Trainer {
  using Trainer::Trainer;
  enum class Fault { kInfGradient, kNanLoss, kOutOfMemory };
  torch::Tensor compute_loss(torch::nn::Module& model, const remat::data::Batch& batch,
                             int64_t items) override {
    auto loss = Trainer::compute_loss(model, batch, items);
    if (state().global_step + 1 != fault_step || !model.is_training()) return loss;
    switch (fault) {
      case Fault::kInfGradient:
        return InfGradient::apply(loss);
      case Fault::kNanLoss:
        return loss * std::numeric_limits<float>::quiet_NaN();
      case Fault::kOutOfMemory:
        TORCH_CHECK_WITH(OutOfMemoryError, false,
                         "CUDA out of memory. Tried to allocate 2.00 GiB (test)");
    }
    return loss;
  }
  int64_t fault_step = -1;
  Fault fault = Fault::kInfGradient;
};

// Whether each optimizer step changed the weights.
struct UpdateWatcher : TrainerCallback {
  explicit UpdateWatcher(std::shared_ptr<torch::nn::Module> model) : model(std::move(model)) {}
  void on_step_begin(const TrainingArguments&, TrainerState&, TrainerControl&) override {
    before = weights(*model);
  }
  void on_step_end(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    auto after = weights(*model);
    bool same = true;
    for (size_t i = 0; i < after.size(); ++i) same = same && torch::equal(before[i], after[i]);
    if (same) unchanged.insert(s.global_step);
  }
  std::shared_ptr<torch::nn::Module> model;
  std::vector<torch::Tensor> before;
  std::set<int64_t> unchanged;
};

std::vector<json> records_with(const Trainer& trainer, const std::string& key) {
  std::vector<json> out;
  for (const auto& r : trainer.log_history())
    if (r.contains(key)) out.push_back(r);
  return out;
}

}  // namespace

// ---------------------------------------------------------------------------
// Callbacks

TEST(TrainerCallbacks, SeeTransformersCallOrder) {
  // 8 examples in batches of 2 with accumulation 2: two optimizer steps per
  // epoch; log, evaluate and save at step 2, the last.
  auto train = make_dataset(8, 11);
  auto eval = make_dataset(4, 12);
  auto args = base_args("order");
  args.per_device_train_batch_size = 2;
  args.gradient_accumulation_steps = 2;
  args.max_steps = 2;
  args.logging_steps = 2;
  args.eval_strategy = "steps";
  args.eval_steps = 2;
  args.save_strategy = "steps";
  args.save_steps = 2;
  auto recorder = std::make_shared<Recorder>();
  Trainer trainer(tiny_gpt2(), args, train, eval, nullptr, {recorder});
  trainer.train();

  const std::vector<std::string> step = {"on_step_begin", "on_substep_end", "on_pre_optimizer_step",
                                         "on_optimizer_step", "on_step_end"};
  std::vector<std::string> expected = {"on_init_end", "on_train_begin", "on_epoch_begin"};
  expected.insert(expected.end(), step.begin(), step.end());
  expected.insert(expected.end(), step.begin(), step.end());
  // The training line, the evaluation's record, then on_evaluate and on_save.
  for (const char* e : {"on_log", "on_log", "on_evaluate", "on_save", "on_epoch_end",
                        "on_log" /* the train metrics */, "on_train_end"})
    expected.push_back(e);
  EXPECT_EQ(recorder->events, expected);
  const std::vector<int64_t> steps = {0, 0, 0, 0, 0, 0, 0, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 2, 2};
  EXPECT_EQ(recorder->steps, steps);
  ASSERT_EQ(recorder->logs.size(), 3u);
  EXPECT_TRUE(recorder->logs[0].contains("loss"));
  EXPECT_TRUE(recorder->logs[1].contains("eval_loss"));
  EXPECT_TRUE(recorder->logs[2].contains("train_loss"));
  EXPECT_EQ(recorder->logs, trainer.log_history());
  EXPECT_EQ(recorder->saved, std::vector<std::string>{args.output_dir + "/checkpoint-2"});
  // The Trainer's DefaultFlowCallback runs first, then its progress bar,
  // then the user's.
  ASSERT_EQ(trainer.callbacks().size(), 3u);
  EXPECT_NE(dynamic_cast<remat::DefaultFlowCallback*>(trainer.callbacks()[0].get()), nullptr);
  EXPECT_NE(dynamic_cast<remat::ProgressCallback*>(trainer.callbacks()[1].get()), nullptr);
  EXPECT_EQ(trainer.callbacks()[2], recorder);
}

TEST(TrainerCallbacks, ReportToTensorboardWritesEventFiles) {
  auto args = base_args("tensorboard");
  args.max_steps = 2;
  args.logging_steps = 1;
  args.report_to = {"tensorboard"};
  const std::string log_dir = args.output_dir + "/tb";
  ::setenv("TENSORBOARD_LOGGING_DIR", log_dir.c_str(), 1);
  Trainer trainer(tiny_gpt2(), args, make_dataset(8, 13));
  trainer.train();
  ::unsetenv("TENSORBOARD_LOGGING_DIR");
  int tensorboard_callbacks = 0;
  for (const auto& c : trainer.callbacks())
    tensorboard_callbacks += dynamic_cast<remat::TensorBoardCallback*>(c.get()) != nullptr;
  EXPECT_EQ(tensorboard_callbacks, 1);
  std::vector<std::string> events;
  for (const auto& entry : std::filesystem::directory_iterator(log_dir)) {
    const auto name = entry.path().filename().string();
    if (name.rfind("events.out.tfevents.", 0) == 0) events.push_back(entry.path().string());
  }
  ASSERT_EQ(events.size(), 1u);
  std::ifstream in(events[0], std::ios::binary);
  const std::string bytes(std::istreambuf_iterator<char>(in), {});
  // The scalars of both logged steps, under transformers' tags.
  EXPECT_NE(bytes.find("train/loss"), std::string::npos);
  EXPECT_NE(bytes.find("train/learning_rate"), std::string::npos);
}

TEST(TrainerCallbacks, EpochEventsAndEpochStrategies) {
  auto train = make_dataset(8, 13);
  auto eval = make_dataset(4, 14);
  auto args = base_args("epochs");
  args.per_device_train_batch_size = 4;
  args.num_train_epochs = 2;
  args.logging_strategy = "epoch";
  args.eval_strategy = "epoch";
  args.save_strategy = "epoch";
  auto recorder = std::make_shared<Recorder>();
  Trainer trainer(tiny_gpt2(), args, train, eval);
  trainer.add_callback(recorder);
  trainer.train();
  std::vector<std::string> expected = {"on_train_begin"};
  for (int epoch = 0; epoch < 2; ++epoch) {
    expected.push_back("on_epoch_begin");
    for (int s = 0; s < 2; ++s) {
      for (const char* e :
           {"on_step_begin", "on_pre_optimizer_step", "on_optimizer_step", "on_step_end"})
        expected.push_back(e);
    }
    for (const char* e : {"on_epoch_end", "on_log", "on_log", "on_evaluate", "on_save"})
      expected.push_back(e);
  }
  expected.push_back("on_log");
  expected.push_back("on_train_end");
  EXPECT_EQ(recorder->events, expected);
  EXPECT_EQ(checkpoints_in(args.output_dir),
            (std::vector<std::string>{"checkpoint-2", "checkpoint-4"}));
  // Each epoch's line averages that epoch's two steps.
  auto lines = records_with(trainer, "loss");
  ASSERT_EQ(lines.size(), 2u);
  EXPECT_EQ(lines[0]["epoch"], 1.0);
  EXPECT_EQ(lines[1]["step"], 4);
}

TEST(TrainerCallbacks, StopTrainingAtTheirStep) {
  auto args = base_args("stop");
  args.per_device_train_batch_size = 4;
  args.max_steps = 10;
  auto recorder = std::make_shared<Recorder>();
  auto stop = std::make_shared<AtStep>(3, [](TrainerControl& c) { c.should_training_stop = true; });
  Trainer trainer(tiny_gpt2(), args, make_dataset(16, 15), nullptr, nullptr, {stop, recorder});
  auto result = trainer.train();
  EXPECT_EQ(result.global_step, 3);
  EXPECT_FALSE(result.interrupted);
  EXPECT_TRUE(checkpoints_in(args.output_dir).empty());         // save_strategy "no"
  EXPECT_TRUE(exists(args.output_dir + "/model.safetensors"));  // a normal end
  EXPECT_EQ(recorder->events.back(), "on_train_end");
  EXPECT_EQ(losses(trainer).size(), 3u);
}

TEST(TrainerCallbacks, AskForSavesEvaluationsAndLogLines) {
  auto args = base_args("ask");
  args.per_device_train_batch_size = 4;
  args.max_steps = 4;
  args.logging_steps = 100;  // no regular line in 4 steps
  std::vector<std::shared_ptr<TrainerCallback>> callbacks = {
      std::make_shared<AtStep>(2, [](TrainerControl& c) { c.should_save = true; }),
      std::make_shared<AtStep>(3, [](TrainerControl& c) { c.should_evaluate = true; }),
      std::make_shared<AtStep>(3, [](TrainerControl& c) { c.should_log = true; })};
  Trainer trainer(tiny_gpt2(), args, make_dataset(16, 16), make_dataset(4, 17), nullptr, callbacks);
  auto result = trainer.train();
  EXPECT_EQ(result.checkpoint, args.output_dir + "/checkpoint-2");
  EXPECT_EQ(checkpoints_in(args.output_dir), std::vector<std::string>{"checkpoint-2"});
  auto lines = records_with(trainer, "loss");
  ASSERT_EQ(lines.size(), 1u);
  EXPECT_EQ(lines[0]["step"], 3);
  auto evals = records_with(trainer, "eval_loss");
  ASSERT_EQ(evals.size(), 1u);
  EXPECT_EQ(evals[0]["step"], 3);
  // The line at step 3 averages steps 1 to 3.
  EXPECT_TRUE(std::isfinite(lines[0]["loss"].get<double>()));
}

TEST(TrainerCallbacks, CanBeRemoved) {
  auto args = base_args("remove");
  args.max_steps = 2;
  auto recorder = std::make_shared<Recorder>();
  Trainer trainer(tiny_gpt2(), args, make_dataset(8, 18));
  trainer.add_callback(recorder);
  EXPECT_TRUE(trainer.remove_callback(recorder));
  EXPECT_FALSE(trainer.remove_callback(recorder));
  trainer.train();
  EXPECT_TRUE(recorder->events.empty());
  ASSERT_THROWS_WITH(trainer.add_callback(nullptr), "the callback is null");
}

// ---------------------------------------------------------------------------
// trainer_state.json

TEST(TrainerStateJson, HasTransformersKeysAndRoundTrips) {
  TrainerState state;
  state.global_step = 7;
  state.epoch = 1.75;
  state.max_steps = 10;
  state.train_batch_size = 4;
  state.log_history = {{{"loss", 2.5}, {"step", 7}}};
  state.best_metric = 0.5;
  state.stateful_callbacks["TrainerControl"] = TrainerControl().state();
  const auto j = state.to_json();
  std::set<std::string> keys;
  for (const auto& item : j.items()) keys.insert(item.key());
  const std::set<std::string> transformers_keys = {"best_global_step",
                                                   "best_metric",
                                                   "best_model_checkpoint",
                                                   "epoch",
                                                   "eval_steps",
                                                   "global_step",
                                                   "is_hyper_param_search",
                                                   "is_local_process_zero",
                                                   "is_world_process_zero",
                                                   "log_history",
                                                   "logging_steps",
                                                   "max_steps",
                                                   "num_input_tokens_seen",
                                                   "num_train_epochs",
                                                   "save_steps",
                                                   "stateful_callbacks",
                                                   "total_flos",
                                                   "train_batch_size",
                                                   "trial_name",
                                                   "trial_params"};
  EXPECT_EQ(keys, transformers_keys);
  EXPECT_EQ(j["best_model_checkpoint"], nullptr);
  const auto back = TrainerState::from_json(j);
  EXPECT_EQ(back.to_json(), j);
  EXPECT_EQ(state.to_json_string(), j.dump(2) + "\n");
  ASSERT_THROWS_WITH(TrainerState::from_json({{"global_step", 1}, {"epoch_index", 0}}),
                     "unknown key \"epoch_index\"");
  ASSERT_THROWS_WITH(TrainerState::from_json({{"global_step", "x"}}), "wrong type");
}

// Writes a real checkpoint's trainer_state.json where
// tests/trainer_state_check.py reads it with transformers.
TEST(TrainerStateJson, CheckpointsHoldTransformersStateAndRematPosition) {
  auto args = base_args("state_json");
  args.per_device_train_batch_size = 4;
  args.max_steps = 3;
  args.save_strategy = "steps";
  args.save_steps = 3;
  args.eval_strategy = "steps";
  args.eval_steps = 2;
  Trainer trainer(tiny_gpt2(), args, make_dataset(16, 19), make_dataset(4, 20));
  trainer.train();
  const std::string dir = args.output_dir + "/checkpoint-3";
  const auto text = slurp(dir + "/trainer_state.json");
  const auto state = json::parse(text);
  EXPECT_EQ(state["global_step"], 3);
  EXPECT_EQ(state["max_steps"], 3);
  EXPECT_EQ(state["eval_steps"], 2);
  EXPECT_EQ(state["train_batch_size"], 4);
  EXPECT_EQ(text, state.dump(2) + "\n");  // sorted keys, indent 2
  EXPECT_TRUE(state["stateful_callbacks"].contains("TrainerControl"));
  EXPECT_FALSE(state.contains("epoch_index"));  // remat's own position is elsewhere
  const auto position = json::parse(slurp(dir + "/remat_state.json"));
  EXPECT_EQ(position["epoch_index"], 0);
  EXPECT_EQ(position["batches_in_epoch"], 3);

  const std::string out = oracle_dir("trainer_cpp");
  std::filesystem::create_directories(out);
  std::ofstream(out + "/trainer_state.json") << text;
  std::ofstream(out + "/expected.json") << json{
      {"global_step", 3},
      {"max_steps", 3},
      {"epoch", state["epoch"]},
      {"log_history_length", state["log_history"].size()},
      {"num_input_tokens_seen", state["num_input_tokens_seen"]},
      {"total_flos", state["total_flos"]}}.dump(2);
}

// ---------------------------------------------------------------------------
// Signals, in the training process itself (trainer_process_test.cpp sends
// them from outside)

namespace {
volatile sig_atomic_t g_custom_handler_calls = 0;
void custom_handler(int) { g_custom_handler_calls = g_custom_handler_calls + 1; }
}  // namespace

TEST(TrainerSignals, SigtermFinishesTheStepSavesAndRestoresHandlers) {
  struct sigaction mine {
  }, previous{};
  mine.sa_handler = custom_handler;
  sigemptyset(&mine.sa_mask);
  ASSERT_EQ(::sigaction(SIGTERM, &mine, &previous), 0);
  g_custom_handler_calls = 0;

  auto args = base_args("sigterm");
  args.per_device_train_batch_size = 4;
  args.max_steps = 8;
  // The signal arrives in the middle of step 3 (its first callback): step 3
  // finishes, then the checkpoint, although save_strategy is "no".
  auto signal = std::make_shared<AtStep>(
      3, [](TrainerControl&) { ::raise(SIGTERM); }, true);
  auto recorder = std::make_shared<Recorder>();
  Trainer trainer(tiny_gpt2(), args, make_dataset(16, 21), nullptr, nullptr, {signal, recorder});
  auto result = trainer.train();
  EXPECT_TRUE(result.interrupted);
  EXPECT_EQ(result.global_step, 3);
  EXPECT_EQ(result.checkpoint, args.output_dir + "/checkpoint-3");
  EXPECT_EQ(checkpoints_in(args.output_dir), std::vector<std::string>{"checkpoint-3"});
  EXPECT_FALSE(exists(args.output_dir + "/model.safetensors"));  // no final model
  EXPECT_EQ(recorder->events.back(), "on_train_end");
  EXPECT_EQ(g_custom_handler_calls, 0);  // the Trainer's handler took it

  struct sigaction now {};
  ASSERT_EQ(::sigaction(SIGTERM, nullptr, &now), 0);
  EXPECT_EQ(now.sa_handler, &custom_handler);
  ::raise(SIGTERM);
  EXPECT_EQ(g_custom_handler_calls, 1);
  ::sigaction(SIGTERM, &previous, nullptr);

  // Resuming continues to the end.
  args.resume_from_checkpoint = "latest";
  Trainer resumed(tiny_gpt2(), args, make_dataset(16, 21));
  auto rest = resumed.train();
  EXPECT_FALSE(rest.interrupted);
  EXPECT_EQ(rest.global_step, 8);
}

TEST(TrainerSignals, RequestStopActsLikeSigint) {
  auto args = base_args("request_stop");
  args.per_device_train_batch_size = 4;
  args.max_steps = 8;
  args.save_strategy = "steps";
  args.save_steps = 2;
  std::unique_ptr<Trainer> trainer;
  auto stop = std::make_shared<AtStep>(4, [&](TrainerControl&) { trainer->request_stop(); });
  trainer = std::make_unique<Trainer>(tiny_gpt2(), args, make_dataset(16, 22), nullptr, nullptr,
                                      std::vector<std::shared_ptr<TrainerCallback>>{stop});
  auto result = trainer->train();
  EXPECT_TRUE(result.interrupted);
  EXPECT_EQ(result.global_step, 4);
  // Step 4 saved by save_steps already: not saved twice.
  EXPECT_EQ(checkpoints_in(args.output_dir),
            (std::vector<std::string>{"checkpoint-2", "checkpoint-4"}));
  // A later train() starts afresh (the request does not linger).
  args.resume_from_checkpoint = "latest";
  Trainer again(tiny_gpt2(), args, make_dataset(16, 22));
  EXPECT_EQ(again.train().global_step, 8);
}

TEST(TrainerSignals, AnIgnoredSignalStaysIgnored) {
  struct sigaction ignore {
  }, previous{};
  ignore.sa_handler = SIG_IGN;
  sigemptyset(&ignore.sa_mask);
  ASSERT_EQ(::sigaction(SIGINT, &ignore, &previous), 0);
  auto args = base_args("ignored");
  args.per_device_train_batch_size = 4;
  args.max_steps = 3;
  auto signal = std::make_shared<AtStep>(1, [](TrainerControl&) { ::raise(SIGINT); });
  Trainer trainer(tiny_gpt2(), args, make_dataset(8, 23), nullptr, nullptr, {signal});
  auto result = trainer.train();
  EXPECT_FALSE(result.interrupted);
  EXPECT_EQ(result.global_step, 3);
  struct sigaction now {};
  ::sigaction(SIGINT, nullptr, &now);
  EXPECT_EQ(now.sa_handler, SIG_IGN);
  ::sigaction(SIGINT, &previous, nullptr);
}

// The pid of a process that has exited: what a run killed mid-save leaves
// in the names of its temporary directories.
namespace {
pid_t exited_process() {
  const pid_t pid = ::fork();
  if (pid == 0) ::_exit(0);
  if (pid > 0) ::waitpid(pid, nullptr, 0);
  return pid;
}
}  // namespace

// A checkpoint directory left by a process killed mid-save is removed when
// training starts; one of a live process is left alone.
TEST(TrainerCheckpoints, AbandonedTemporaryDirectoriesAreRemoved) {
  auto args = base_args("abandoned");
  args.per_device_train_batch_size = 4;
  args.max_steps = 1;
  ::mkdir(args.output_dir.c_str(), 0755);
  const pid_t dead = exited_process();
  ASSERT_GT(dead, 0);
  const auto abandoned = args.output_dir + "/.tmp-checkpoint-5-" + std::to_string(dead);
  const auto live = args.output_dir + "/.tmp-checkpoint-6-" + std::to_string(::getppid());
  ASSERT_EQ(::mkdir(abandoned.c_str(), 0755), 0);
  std::ofstream(abandoned + "/model.safetensors") << "partial";
  ASSERT_EQ(::mkdir(live.c_str(), 0755), 0);
  Trainer(tiny_gpt2(), args, make_dataset(4, 24)).train();
  EXPECT_FALSE(exists(abandoned));
  EXPECT_TRUE(exists(live));
}

// A temporary checkpoint marked complete whose checkpoint-<step> is missing
// (the process was killed between the renames that replace a checkpoint) is
// the only complete copy: the next start renames it into place. Trash left
// by an interrupted deletion is removed.
TEST(TrainerCheckpoints, ACompleteTemporaryCheckpointIsRenamedIntoPlace) {
  auto args = base_args("complete_tmp");
  args.per_device_train_batch_size = 4;
  args.max_steps = 1;
  ::mkdir(args.output_dir.c_str(), 0755);
  const pid_t dead = exited_process();
  ASSERT_GT(dead, 0);
  const auto suffix = "-" + std::to_string(dead);
  const auto complete = args.output_dir + "/.tmp-checkpoint-5" + suffix;
  const auto trash = args.output_dir + "/.trash-checkpoint-5" + suffix;
  ASSERT_EQ(::mkdir(complete.c_str(), 0755), 0);
  std::ofstream(complete + "/model.safetensors") << "complete";
  std::ofstream(complete + "/.checkpoint-complete");
  ASSERT_EQ(::mkdir(trash.c_str(), 0755), 0);
  std::ofstream(trash + "/config.json") << "half-deleted";
  Trainer(tiny_gpt2(), args, make_dataset(4, 24)).train();
  EXPECT_FALSE(exists(complete));
  EXPECT_FALSE(exists(trash));
  EXPECT_EQ(slurp(args.output_dir + "/checkpoint-5/model.safetensors"), "complete");
}

// A damaged checkpoint file on resume: the error names the file and what it
// should have held.
TEST(TrainerCheckpoints, DamagedFilesOnResumeAreNamed) {
  auto args = base_args("damaged");
  args.per_device_train_batch_size = 4;
  args.max_steps = 1;
  args.save_strategy = "steps";
  args.save_steps = 1;
  Trainer(tiny_gpt2(), args, make_dataset(4, 24)).train();
  const auto checkpoint = args.output_dir + "/checkpoint-1";
  auto resume_with = [&](const std::string& file, const std::string& content) {
    const auto original = slurp(checkpoint + "/" + file);
    std::ofstream(checkpoint + "/" + file, std::ios::binary) << content;
    auto resumed = args;
    resumed.max_steps = 2;
    resumed.resume_from_checkpoint = checkpoint;
    Trainer trainer(tiny_gpt2(), resumed, make_dataset(4, 24));
    std::string message;
    try {
      trainer.train();
    } catch (const c10::Error& e) {
      message = e.what_without_backtrace();
    }
    std::ofstream(checkpoint + "/" + file, std::ios::binary) << original;
    return message;
  };
  for (const char* file : {"optimizer.pt", "rng_state.pt"}) {
    const auto message = resume_with(file, "not a zip archive");
    EXPECT_NE(message.find(checkpoint + "/" + file), std::string::npos) << message;
  }
  EXPECT_NE(resume_with("optimizer.pt", "x").find("the optimizer state (AdamW)"),
            std::string::npos);
  EXPECT_NE(resume_with("rng_state.pt", "x").find("the random generator states"),
            std::string::npos);
  auto message = resume_with("scheduler.json", R"({"last_epoch": "one"})");
  EXPECT_NE(message.find(checkpoint + "/scheduler.json"), std::string::npos) << message;
  auto state = json::parse(slurp(checkpoint + "/trainer_state.json"));
  state["global_step"] = "one";
  message = resume_with("trainer_state.json", state.dump());
  EXPECT_NE(message.find(checkpoint + "/trainer_state.json"), std::string::npos) << message;
  EXPECT_NE(message.find("\"global_step\" has the wrong type"), std::string::npos) << message;

  // The optimizer state of another model: its parameter groups differ.
  auto other_args = base_args("damaged_other");
  other_args.per_device_train_batch_size = 4;
  other_args.max_steps = 1;
  other_args.save_strategy = "steps";
  other_args.save_steps = 1;
  nlohmann::json config = {{"model_type", "gpt2"}, {"vocab_size", 48}, {"n_positions", 32},
                           {"n_embd", 32},         {"n_layer", 1},     {"n_head", 4},
                           {"pad_token_id", 0}};
  Trainer(remat::models::AutoModelForCausalLM::from_config(
              remat::models::ModelConfig::from_json(config)),
          other_args, make_dataset(4, 24))
      .train();
  message =
      resume_with("optimizer.pt", slurp(other_args.output_dir + "/checkpoint-1/optimizer.pt"));
  EXPECT_NE(message.find(checkpoint + "/optimizer.pt"), std::string::npos) << message;
  EXPECT_NE(message.find("another model"), std::string::npos) << message;
}

// ---------------------------------------------------------------------------
// fp16 and the loss scaler

namespace {

// Runs torch.amp.GradScaler's recorded sequence through remat::GradScaler:
// the same raw gradients, scaled, unscaled and stepped with SGD.
void replay_scaler_oracle(const std::string& run) {
  const auto dir = oracle_dir("grad_scaler");
  const auto ref = read_json(dir + "/" + run + ".json");
  auto tensors = read_tensors(dir, run + "_tensors");
  const auto& o = ref["options"];
  remat::GradScaler scaler(remat::GradScalerOptions()
                               .init_scale(o["init_scale"].get<double>())
                               .growth_factor(o["growth_factor"].get<double>())
                               .backoff_factor(o["backoff_factor"].get<double>())
                               .growth_interval(o["growth_interval"].get<int64_t>()));
  std::vector<torch::Tensor> params;
  for (int k = 0; k < 2; ++k) {
    params.push_back(tensors.at("param" + std::to_string(k)).clone().requires_grad_());
  }
  torch::optim::SGD sgd(params, torch::optim::SGDOptions(0.1));
  const auto& steps = ref["steps"];
  for (size_t t = 0; t < steps.size(); ++t) {
    SCOPED_TRACE("step " + std::to_string(t));
    EXPECT_EQ(scaler.get_scale(), steps[t]["scale_before"].get<double>());
    for (int k = 0; k < 2; ++k) {
      auto raw = tensors.at("grad" + std::to_string(t) + "_" + std::to_string(k));
      params[k].mutable_grad() = scaler.scale(raw);
    }
    scaler.unscale_(sgd);
    EXPECT_EQ(scaler.found_inf().item<float>(), steps[t]["found_inf"].get<double>());
    const bool stepped = scaler.step(sgd);
    EXPECT_EQ(stepped, steps[t]["stepped"].get<bool>());
    scaler.update();
    EXPECT_EQ(scaler.get_scale(), steps[t]["scale_after"].get<double>());
    EXPECT_EQ(scaler.growth_tracker(), steps[t]["growth_tracker"].get<int64_t>());
    sgd.zero_grad();
  }
  for (int k = 0; k < 2; ++k) {
    EXPECT_TRUE(bitwise_equal(params[k].detach(), tensors.at("final" + std::to_string(k))));
  }
  EXPECT_EQ(scaler.state_dict(), ref["state_dict"]);
  remat::GradScaler restored;
  restored.load_state_dict(scaler.state_dict());
  EXPECT_EQ(restored.state_dict(), scaler.state_dict());
}

}  // namespace

TEST(GradScaler, MatchesTorchWithDefaults) { replay_scaler_oracle("defaults"); }
TEST(GradScaler, MatchesTorchGrowingAndBackingOff) { replay_scaler_oracle("growth"); }

TEST(GradScaler, RejectsBadOptions) {
  ASSERT_THROWS_WITH(remat::GradScaler(remat::GradScalerOptions().growth_factor(1.0)),
                     "growth_factor must be > 1");
  ASSERT_THROWS_WITH(remat::GradScaler(remat::GradScalerOptions().backoff_factor(1.0)),
                     "backoff_factor must be < 1");
  remat::GradScaler scaler;
  auto p = torch::ones({2}, torch::requires_grad());
  ASSERT_THROWS_WITH(scaler.unscale_({p}), "call scale(loss) first");
  EXPECT_EQ(scaler.state_dict(), json({{"scale", 65536.0},
                                       {"growth_factor", 2.0},
                                       {"backoff_factor", 0.5},
                                       {"growth_interval", 2000},
                                       {"_growth_tracker", 0}}));
}

TEST(TrainerFp16, SkipsExactlyTheStepWithInfiniteGradients) {
  auto args = base_args("fp16");
  args.per_device_train_batch_size = 4;
  args.max_steps = 6;
  args.fp16 = true;
  args.lr_scheduler_type = "linear";
  auto model = tiny_gpt2();
  auto watcher = std::make_shared<UpdateWatcher>(model);
  FaultyTrainer trainer(model, args, make_dataset(16, 25), nullptr, nullptr, {watcher});
  trainer.fault_step = 3;
  auto result = trainer.train();
  EXPECT_EQ(result.global_step, 6);
  EXPECT_EQ(watcher->unchanged, std::set<int64_t>{3});
  EXPECT_EQ(result.metrics.at("train_skipped_steps"), 1.0);
  auto lines = records_with(trainer, "loss");
  ASSERT_EQ(lines.size(), 6u);
  for (size_t i = 0; i < lines.size(); ++i) {
    SCOPED_TRACE(i);
    EXPECT_EQ(lines[i]["skipped_steps"], i < 2 ? 0 : 1);
    // The scale backs off after the skipped step (and stays: growth needs
    // 2000 clean steps).
    EXPECT_EQ(lines[i]["loss_scale"], i < 2 ? 65536.0 : 32768.0);
    EXPECT_TRUE(std::isfinite(lines[i]["loss"].get<double>()));
  }
  // The scheduler did not step either: step 4 trains at step 3's rate.
  EXPECT_EQ(lines[3]["learning_rate"], lines[2]["learning_rate"]);
  EXPECT_NE(lines[2]["learning_rate"], lines[1]["learning_rate"]);
  EXPECT_TRUE(lines[2]["grad_norm"].is_null());  // infinite
  EXPECT_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CPU));
}

TEST(TrainerFp16, TrainsCloseToFp32AndResumesWithTheScalerState) {
  auto dataset = make_dataset(16, 26);
  const auto ref32_dir = scratch_dir("fp16_ref32"), straight_dir = scratch_dir("fp16_straight"),
             resume_dir = scratch_dir("fp16_resume");
  auto run = [&](const std::string& dir, bool fp16, int64_t stop_at, bool resume) {
    auto args = args_in(dir);
    args.per_device_train_batch_size = 4;
    args.max_steps = 6;
    args.fp16 = fp16;
    if (resume) args.resume_from_checkpoint = "latest";
    auto model = tiny_gpt2(0.0, resume ? 5 : 0);
    std::vector<std::shared_ptr<TrainerCallback>> callbacks;
    if (stop_at > 0) {
      callbacks.push_back(std::make_shared<AtStep>(
          stop_at, [](TrainerControl& c) { c.should_training_stop = c.should_save = true; }));
    }
    auto trainer =
        std::make_shared<FaultyTrainer>(model, args, dataset, nullptr, nullptr, callbacks);
    trainer->fault_step = fp16 ? 2 : -1;  // an fp16 overflow; fp32 would stop with an error
    trainer->train();
    return std::make_pair(trainer, model);
  };
  auto [fp32, fp32_model] = run(ref32_dir, false, -1, false);
  (void)fp32_model;
  auto [straight, straight_model] = run(straight_dir, true, -1, false);
  auto [first, first_model] = run(resume_dir, true, 4, false);
  (void)first_model;
  const auto scaler = json::parse(slurp(first->args().output_dir + "/checkpoint-4/scaler.json"));
  EXPECT_EQ(scaler["scale"], 32768.0);      // backed off at step 2
  EXPECT_EQ(scaler["_growth_tracker"], 2);  // steps 3 and 4 were clean
  auto [resumed, resumed_model] = run(resume_dir, true, -1, true);
  EXPECT_EQ(losses(*resumed), losses(*straight));
  auto want = weights(*straight_model), got = weights(*resumed_model);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(torch::equal(want[i], got[i])) << i;
  // float16 rounding changes the losses, a little.
  auto a = losses(*fp32), b = losses(*straight);
  ASSERT_EQ(a.size(), b.size());
  EXPECT_NE(a, b);
  // tiny_gpt2: 6 matmuls a layer (q/k/v, scores, values, output, two MLP) in
  // 2 layers, plus the head, in float16.
  EXPECT_TRUE(remat::test::within_tolerance(
      b.front(), a.front(),
      remat::test::autocast_loss_tolerance(6 * 2 + 1, a.front(), torch::kHalf)));
}

// ---------------------------------------------------------------------------
// Non-finite steps and out-of-memory errors

TEST(TrainerFailures, NonFiniteLossNamesTheStep) {
  auto args = base_args("nan");
  args.per_device_train_batch_size = 4;
  args.max_steps = 5;
  FaultyTrainer trainer(tiny_gpt2(), args, make_dataset(16, 27));
  trainer.fault_step = 3;
  trainer.fault = FaultyTrainer::Fault::kNanLoss;
  ASSERT_THROWS_WITH(trainer.train(), "non-finite loss (nan) or gradient norm (nan) at step 3");
  // The failed step changed nothing and the history stops before it.
  EXPECT_EQ(trainer.state().global_step, 2);
}

// An update that overflows the weights: the checkpoint of that step is not
// saved, and the error names the step and a parameter.
TEST(TrainerFailures, NonFiniteWeightsAreNeverSaved) {
  auto args = base_args("inf_weights");
  args.per_device_train_batch_size = 4;
  args.max_steps = 3;
  args.learning_rate = 1e38;
  args.save_strategy = "steps";
  args.save_steps = 1;
  auto model = tiny_gpt2();
  Trainer trainer(model, args, make_dataset(16, 27));
  std::string message;
  try {
    trainer.train();
  } catch (const c10::Error& e) {
    message = e.what_without_backtrace();
  }
  EXPECT_NE(message.find("after the update of step 1"), std::string::npos) << message;
  bool names_a_parameter = false;
  for (const auto& p : model->named_parameters()) {
    if (!p.value().isfinite().all().item<bool>() &&
        message.find("parameter \"" + p.key() + "\"") != std::string::npos) {
      names_a_parameter = true;
    }
  }
  EXPECT_TRUE(names_a_parameter) << message;
  EXPECT_FALSE(exists(args.output_dir + "/checkpoint-1"));
  EXPECT_FALSE(exists(args.output_dir + "/model.safetensors"));
}

TEST(TrainerFailures, SkipNonfiniteStepsSkipsAndCounts) {
  for (auto fault : {FaultyTrainer::Fault::kNanLoss, FaultyTrainer::Fault::kInfGradient}) {
    auto args = base_args("skip_nonfinite");
    args.per_device_train_batch_size = 4;
    args.max_steps = 5;
    args.skip_nonfinite_steps = true;
    auto model = tiny_gpt2();
    auto watcher = std::make_shared<UpdateWatcher>(model);
    FaultyTrainer trainer(model, args, make_dataset(16, 28), nullptr, nullptr, {watcher});
    trainer.fault_step = 3;
    trainer.fault = fault;
    auto result = trainer.train();
    EXPECT_EQ(result.global_step, 5);
    EXPECT_EQ(watcher->unchanged, std::set<int64_t>{3});
    EXPECT_EQ(result.metrics.at("train_skipped_steps"), 1.0);
    EXPECT_TRUE(std::isfinite(result.training_loss));
    const auto& line3 = trainer.log_history().at(2);
    EXPECT_EQ(line3["step"], 3);
    EXPECT_EQ(line3["skipped_steps"], 1);
    // A NaN loss is left out of the average (the line has none to show).
    EXPECT_EQ(line3.contains("loss"), fault == FaultyTrainer::Fault::kInfGradient);
  }
}

TEST(TrainerFailures, OutOfMemorySaysWhatToTry) {
  auto args = base_args("oom");
  args.per_device_train_batch_size = 4;
  args.gradient_accumulation_steps = 2;
  args.max_steps = 3;
  FaultyTrainer trainer(tiny_gpt2(), args, make_dataset(16, 29));
  trainer.fault_step = 2;
  trainer.fault = FaultyTrainer::Fault::kOutOfMemory;
  try {
    trainer.train();
    FAIL() << "no out-of-memory error";
  } catch (const c10::OutOfMemoryError& e) {
    const std::string message = e.what_without_backtrace();
    for (const char* part :
         {"out of memory on cpu at step 2 (micro-batch 1 of 2)", "per_device_train_batch_size 4",
          "sequence length ", "gradient_accumulation_steps 2", "gradient checkpointing off",
          "--gradient_checkpointing", "--gradient_accumulation_steps", "--bf16",
          "Tried to allocate 2.00 GiB (test)"}) {
      EXPECT_NE(message.find(part), std::string::npos) << part << " not in: " << message;
    }
  }
}

// ---------------------------------------------------------------------------
// Metrics

namespace {

// Holds a big tensor from on_train_begin to the end (a stage allocation)
// and a second one during step 2 only (a peak).
struct Allocator : TrainerCallback {
  static constexpr int64_t kKept = 64 << 20, kPeak = 32 << 20;
  void on_train_begin(const TrainingArguments&, TrainerState&, TrainerControl&) override {
    kept = torch::ones({kKept / 4});
  }
  void on_step_begin(const TrainingArguments&, TrainerState& s, TrainerControl&) override {
    if (s.global_step + 1 == 2) peak = torch::ones({kPeak / 4});
  }
  void on_step_end(const TrainingArguments&, TrainerState&, TrainerControl&) override {
    peak = torch::Tensor();
  }
  torch::Tensor kept, peak;
};

}  // namespace

TEST(TrainerMetrics, MemoryMetricsAsTransformersReportsThem) {
  auto args = base_args("memory");
  args.per_device_train_batch_size = 4;
  args.max_steps = 3;
  args.skip_memory_metrics = false;
  args.eval_strategy = "steps";
  args.eval_steps = 2;
  auto allocator = std::make_shared<Allocator>();
  Trainer trainer(tiny_gpt2(), args, make_dataset(16, 30), make_dataset(4, 31), nullptr,
                  {allocator});
  auto metrics = trainer.train().metrics;
  for (const char* key :
       {"init_mem_cpu_alloc_delta", "init_mem_cpu_peaked_delta", "before_init_mem_cpu",
        "train_mem_cpu_alloc_delta", "train_mem_cpu_peaked_delta"}) {
    EXPECT_TRUE(metrics.count(key)) << key;
  }
  EXPECT_FALSE(metrics.count("train_mem_gpu_alloc_delta"));  // a CPU run
  EXPECT_GE(metrics.at("train_mem_cpu_alloc_delta"), Allocator::kKept);
  EXPECT_GE(metrics.at("train_mem_cpu_peaked_delta"), Allocator::kPeak);
  EXPECT_LT(metrics.at("train_mem_cpu_peaked_delta"), 4 * Allocator::kPeak);
  EXPECT_GT(metrics.at("before_init_mem_cpu"), 0);
  // An evaluation inside training is not measured on its own ...
  for (const auto& r : records_with(trainer, "eval_loss"))
    EXPECT_FALSE(r.contains("eval_mem_cpu_alloc_delta"));
  // ... one after it is, and init is reported once.
  allocator->kept = torch::Tensor();
  auto eval = trainer.evaluate();
  EXPECT_TRUE(eval.count("eval_mem_cpu_alloc_delta"));
  EXPECT_TRUE(eval.count("eval_mem_cpu_peaked_delta"));
  EXPECT_FALSE(eval.count("init_mem_cpu_alloc_delta"));
  // Off by default.
  auto plain = base_args("memory_off");
  plain.max_steps = 1;
  auto off = Trainer(tiny_gpt2(), plain, make_dataset(8, 32)).train().metrics;
  EXPECT_FALSE(off.count("train_mem_cpu_alloc_delta"));
}

TEST(TrainerMetrics, TrainOutputCarriesTransformersMetrics) {
  // Equal lengths, so there is no padding and every input token counts.
  auto dataset = std::make_shared<VectorDataset>();
  for (int i = 0; i < 8; ++i) {
    remat::data::Example e;
    for (int t = 0; t < 8; ++t) e.input_ids.push_back(3 + (i + 2 * t) % 40);
    e.labels = e.input_ids;
    dataset->examples.push_back(e);
  }
  auto args = base_args("metrics");
  args.per_device_train_batch_size = 4;
  args.num_train_epochs = 2;
  auto model = tiny_gpt2();
  Trainer trainer(model, args, dataset);
  auto result = trainer.train();
  const auto& m = result.metrics;
  for (const char* key : {"train_runtime", "train_samples_per_second", "train_steps_per_second",
                          "total_flos", "train_loss", "epoch"}) {
    EXPECT_TRUE(m.count(key)) << key;
  }
  EXPECT_FALSE(m.count("train_skipped_steps"));  // neither fp16 nor skip_nonfinite_steps
  EXPECT_EQ(result.global_step, 4);
  EXPECT_EQ(m.at("epoch"), 2.0);
  EXPECT_GT(m.at("train_runtime"), 0);
  auto per_step = losses(trainer);
  double mean = 0;
  for (double l : per_step) mean += l;
  mean /= static_cast<double>(per_step.size());
  // train_loss sums the logged losses in logging order and divides by the
  // steps: the same float64 operations as here, so equal bitwise.
  EXPECT_EQ(m.at("train_loss"), mean);
  EXPECT_EQ(result.training_loss, m.at("train_loss"));
  // transformers' estimate: 6 x non-embedding parameters x input tokens.
  int64_t params = 0;
  for (const auto& item : model->named_parameters()) {
    const auto& name = item.key();
    if (name.find("wte") == std::string::npos && name.find("wpe") == std::string::npos &&
        name.find("lm_head") == std::string::npos)
      params += item.value().numel();
  }
  EXPECT_EQ(trainer.state().num_input_tokens_seen, 2 * 64);
  EXPECT_EQ(m.at("total_flos"), 6.0 * static_cast<double>(params) * 2 * 64);
  // The last record is these metrics, with the step.
  auto last = trainer.log_history().back();
  EXPECT_EQ(last["step"], 4);
  EXPECT_EQ(last["train_loss"], m.at("train_loss"));
}
