#include "remat/trainer_callback.h"

#include <c10/util/Exception.h>

#include <set>

namespace remat {
namespace {

using json = nlohmann::json;

template <typename T>
json optional_json(const std::optional<T>& value) {
  return value ? json(*value) : json(nullptr);
}

template <typename T>
std::optional<T> optional_from(const json& value) {
  if (value.is_null()) return std::nullopt;
  return value.get<T>();
}

}  // namespace

json TrainerState::to_json() const {
  // Every field of transformers' TrainerState dataclass, under its name:
  // dataclasses.asdict() writes them all, null ones included.
  return {
      {"best_global_step", optional_json(best_global_step)},
      {"best_metric", optional_json(best_metric)},
      {"best_model_checkpoint", optional_json(best_model_checkpoint)},
      {"epoch", epoch},
      {"eval_steps", eval_steps},
      {"global_step", global_step},
      {"is_hyper_param_search", is_hyper_param_search},
      {"is_local_process_zero", is_local_process_zero},
      {"is_world_process_zero", is_world_process_zero},
      {"log_history", log_history},
      {"logging_steps", logging_steps},
      {"max_steps", max_steps},
      {"num_input_tokens_seen", num_input_tokens_seen},
      {"num_train_epochs", num_train_epochs},
      {"save_steps", save_steps},
      {"stateful_callbacks", stateful_callbacks},
      {"total_flos", total_flos},
      {"train_batch_size", train_batch_size > 0 ? json(train_batch_size) : json(nullptr)},
      {"trial_name", optional_json(trial_name)},
      {"trial_params", trial_params},
  };
}

TrainerState TrainerState::from_json(const json& j) {
  TORCH_CHECK(j.is_object(), "TrainerState::from_json: expected a JSON object, got ",
              j.type_name());
  static const std::set<std::string> known = {"best_global_step",
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
  for (const auto& item : j.items()) {
    TORCH_CHECK(known.count(item.key()) != 0, "TrainerState::from_json: unknown key \"", item.key(),
                "\" (not a field of transformers' TrainerState)");
  }
  TrainerState s;
  auto read = [&](const char* key, auto& field) {
    if (j.contains(key) && !j.at(key).is_null()) {
      try {
        field = j.at(key).get<std::decay_t<decltype(field)>>();
      } catch (const json::exception& e) {
        TORCH_CHECK(false, "TrainerState::from_json: \"", key, "\" has the wrong type: ", e.what());
      }
    }
  };
  read("epoch", s.epoch);
  read("global_step", s.global_step);
  read("max_steps", s.max_steps);
  read("logging_steps", s.logging_steps);
  read("eval_steps", s.eval_steps);
  read("save_steps", s.save_steps);
  read("train_batch_size", s.train_batch_size);
  read("num_train_epochs", s.num_train_epochs);
  read("num_input_tokens_seen", s.num_input_tokens_seen);
  read("total_flos", s.total_flos);
  read("log_history", s.log_history);
  read("is_local_process_zero", s.is_local_process_zero);
  read("is_world_process_zero", s.is_world_process_zero);
  read("is_hyper_param_search", s.is_hyper_param_search);
  if (j.contains("best_metric")) s.best_metric = optional_from<double>(j["best_metric"]);
  if (j.contains("best_global_step"))
    s.best_global_step = optional_from<int64_t>(j["best_global_step"]);
  if (j.contains("best_model_checkpoint"))
    s.best_model_checkpoint = optional_from<std::string>(j["best_model_checkpoint"]);
  if (j.contains("trial_name")) s.trial_name = optional_from<std::string>(j["trial_name"]);
  if (j.contains("trial_params")) s.trial_params = j["trial_params"];
  if (j.contains("stateful_callbacks") && !j["stateful_callbacks"].is_null())
    s.stateful_callbacks = j["stateful_callbacks"];
  return s;
}

std::string TrainerState::to_json_string() const { return to_json().dump(2) + "\n"; }

json TrainerControl::state() const {
  return {{"args",
           {{"should_training_stop", should_training_stop},
            {"should_epoch_stop", should_epoch_stop},
            {"should_save", should_save},
            {"should_evaluate", should_evaluate},
            {"should_log", should_log}}},
          {"attributes", json::object()}};
}

void DefaultFlowCallback::on_step_end(const TrainingArguments& args, TrainerState& state,
                                      TrainerControl& control) {
  const int64_t step = state.global_step;
  if (step == 1 && args.logging_first_step) control.should_log = true;
  if (args.logging_strategy == "steps" && state.logging_steps > 0 &&
      step % state.logging_steps == 0) {
    control.should_log = true;
  }
  const bool eval_now =
      args.eval_strategy == "steps" && state.eval_steps > 0 && step % state.eval_steps == 0;
  if (eval_now) control.should_evaluate = true;
  if (args.save_strategy == "steps" && state.save_steps > 0 && step % state.save_steps == 0) {
    control.should_save = true;
  }
  if (step >= state.max_steps) {
    control.should_training_stop = true;
    // A last evaluation and checkpoint at the end of a "steps" run.
    if (args.eval_strategy == "steps" && !eval_now) control.should_evaluate = true;
    if (args.save_strategy == "steps") control.should_save = true;
  }
}

void DefaultFlowCallback::on_epoch_end(const TrainingArguments& args, TrainerState&,
                                       TrainerControl& control) {
  if (args.logging_strategy == "epoch") control.should_log = true;
  if (args.eval_strategy == "epoch") control.should_evaluate = true;
  if (args.save_strategy == "epoch") control.should_save = true;
}

}  // namespace remat
