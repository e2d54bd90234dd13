// trainer_child: a training process that trainer_process_test.cpp starts,
// signals and kills. It trains child_model() on child_dataset() with
// child_args() (trainer_support.h) and writes <output_dir>/child_result.json
// (global_step, interrupted, checkpoint, losses, whether the signal handlers
// found before train() are back after it).
//
//   trainer_child --output_dir DIR --max_steps N [--save_steps S] [--resume]
//                 [--resume_from CHECKPOINT] [--save_total_limit L]
//                 [--progress FILE] [--pause_at_step K] [--pause_after_save]
//                 [--hang_in_save K]
//
// --resume: from the latest checkpoint; --resume_from: from CHECKPOINT.
// --pause_at_step K: after step K, write "step K" to FILE and wait for a
//   signal (the test sends SIGINT or SIGTERM once it reads the file).
// --pause_after_save: after the next checkpoint is saved, write "saved" and
//   wait for a signal again.
// --hang_in_save K: while saving checkpoint-K, after the model is written
//   but before the rename, write "in save K" and hang (the test kills it).
//
// SIGINT and SIGTERM stay blocked except while waiting, so that they always
// arrive where the test expects (and never on a data-loader thread).

#include <signal.h>
#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <iostream>

#include "trainer_support.h"

namespace {

std::string g_progress;

void write_progress(const std::string& text) {
  const std::string tmp = g_progress + ".tmp";
  std::ofstream(tmp) << text << "\n";
  std::rename(tmp.c_str(), g_progress.c_str());
}

sigset_t stop_signals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  return set;
}

// Waits, with SIGINT and SIGTERM deliverable, until a handler has run; then
// leaves them unblocked (so a re-raised signal takes effect).
void wait_for_signal() {
  sigset_t unblocked;
  pthread_sigmask(SIG_BLOCK, nullptr, &unblocked);
  sigdelset(&unblocked, SIGINT);
  sigdelset(&unblocked, SIGTERM);
  sigsuspend(&unblocked);
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
}

struct Pauses : remat::TrainerCallback {
  int64_t pause_at_step = -1;
  bool pause_after_save = false;
  bool paused = false;
  void on_step_end(const remat::TrainingArguments&, remat::TrainerState& state,
                   remat::TrainerControl&) override {
    if (state.global_step != pause_at_step) return;
    write_progress("step " + std::to_string(state.global_step));
    wait_for_signal();
    paused = true;
  }
  void on_save(const remat::TrainingArguments&, remat::TrainerState&, remat::TrainerControl&,
               const std::string&) override {
    if (!pause_after_save || !paused) return;
    write_progress("saved");
    wait_for_signal();
  }
};

struct HangingTrainer : remat::Trainer {
  using Trainer::Trainer;
  void save_model(const std::string& dir) const override {
    Trainer::save_model(dir);
    const std::string marker = "/.tmp-checkpoint-" + std::to_string(hang_in_save) + "-";
    if (hang_in_save > 0 && dir.find(marker) != std::string::npos) {
      write_progress("in save " + std::to_string(hang_in_save));
      for (;;) ::pause();
    }
  }
  int64_t hang_in_save = -1;
};

}  // namespace

int main(int argc, char** argv) {
  std::string output_dir;
  int64_t max_steps = 0, save_steps = 0, save_total_limit = 0, pause_at_step = -1,
          hang_in_save = -1;
  bool resume = false, pause_after_save = false;
  std::string resume_from;
  for (int i = 1; i < argc; ++i) {
    const std::string arg = argv[i];
    auto value = [&] {
      if (i + 1 >= argc) {
        std::cerr << arg << " needs a value\n";
        std::exit(2);
      }
      return std::string(argv[++i]);
    };
    if (arg == "--output_dir") {
      output_dir = value();
    } else if (arg == "--max_steps") {
      max_steps = std::stoll(value());
    } else if (arg == "--save_steps") {
      save_steps = std::stoll(value());
    } else if (arg == "--resume") {
      resume = true;
    } else if (arg == "--resume_from") {
      resume_from = value();
    } else if (arg == "--save_total_limit") {
      save_total_limit = std::stoll(value());
    } else if (arg == "--progress") {
      g_progress = value();
    } else if (arg == "--pause_at_step") {
      pause_at_step = std::stoll(value());
    } else if (arg == "--pause_after_save") {
      pause_after_save = true;
    } else if (arg == "--hang_in_save") {
      hang_in_save = std::stoll(value());
    } else {
      std::cerr << "unknown argument " << arg << "\n";
      return 2;
    }
  }
  // Blocked before any thread starts, so every thread inherits the mask.
  const sigset_t set = stop_signals();
  pthread_sigmask(SIG_BLOCK, &set, nullptr);

  auto args = remat::test::child_args(output_dir, max_steps);
  if (save_steps > 0) {
    args.save_strategy = "steps";
    args.save_steps = static_cast<double>(save_steps);
  }
  if (save_total_limit > 0) args.save_total_limit = save_total_limit;
  if (resume) args.resume_from_checkpoint = "latest";
  if (!resume_from.empty()) args.resume_from_checkpoint = resume_from;
  auto pauses = std::make_shared<Pauses>();
  pauses->pause_at_step = pause_at_step;
  pauses->pause_after_save = pause_after_save;
  HangingTrainer trainer(remat::test::child_model(), args, remat::test::child_dataset(), nullptr,
                         nullptr, {pauses});
  trainer.hang_in_save = hang_in_save;

  struct sigaction before_int {
  }, before_term{};
  sigaction(SIGINT, nullptr, &before_int);
  sigaction(SIGTERM, nullptr, &before_term);
  const auto result = trainer.train();
  struct sigaction after_int {
  }, after_term{};
  sigaction(SIGINT, nullptr, &after_int);
  sigaction(SIGTERM, nullptr, &after_term);

  nlohmann::json out = {{"global_step", result.global_step},
                        {"interrupted", result.interrupted},
                        {"checkpoint", result.checkpoint},
                        {"losses", remat::test::losses(trainer)},
                        {"handlers_restored", before_int.sa_handler == after_int.sa_handler &&
                                                  before_term.sa_handler == after_term.sa_handler}};
  std::ofstream(output_dir + "/child_result.json") << out.dump(2);
  return 0;
}
