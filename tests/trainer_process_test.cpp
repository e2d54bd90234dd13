// remat::Trainer as a process: trainer_child (trainer_child.cpp) trains, the
// test signals or kills it at a point the child reports through a progress
// file, then checks what is on disk and resumes. SIGTERM finishes the step,
// saves and exits 0, and the resumed run ends with the same weights as an
// uninterrupted one; a second SIGINT ends the process at once; SIGKILL in the
// middle of a save leaves the earlier checkpoints intact and no partial
// checkpoint-<step>.

#include <gtest/gtest.h>

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <thread>

#include "remat/io/safetensors.h"
#include "support.h"
#include "trainer_support.h"

#ifndef REMAT_TRAINER_CHILD
#error "REMAT_TRAINER_CHILD must name the trainer_child executable"
#endif

using json = nlohmann::json;
using namespace remat::test;

namespace {

struct Child {
  pid_t pid = -1;
  std::string log;
};

// Starts trainer_child with `args`; its output goes to `log`.
Child spawn(const std::vector<std::string>& args, const std::string& log) {
  std::vector<std::string> words{REMAT_TRAINER_CHILD};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
    }
    ::execv(argv[0], argv.data());
    ::_exit(127);
  }
  return {pid, log};
}

// The child's exit status (as waitpid reports it).
int wait_for_exit(const Child& child) {
  int status = 0;
  ::waitpid(child.pid, &status, 0);
  return status;
}

// Waits until `path` holds `text` (the child reports where it stands). Fails
// if the child exits first or after two minutes.
::testing::AssertionResult wait_for_progress(const Child& child, const std::string& path,
                                             const std::string& text) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(2);
  while (std::chrono::steady_clock::now() < deadline) {
    if (slurp(path) == text + "\n") return ::testing::AssertionSuccess();
    int status = 0;
    if (::waitpid(child.pid, &status, WNOHANG) == child.pid) {
      return ::testing::AssertionFailure() << "the child exited (status " << status
                                           << ") before reporting \"" << text << "\"; its output:\n"
                                           << slurp(child.log);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  ::kill(child.pid, SIGKILL);
  return ::testing::AssertionFailure() << "no \"" << text << "\" from the child in 2 minutes";
}

// Runs the child to its end; expects exit code 0 and returns its result.
json run_to_end(const std::vector<std::string>& args, const std::string& output_dir) {
  auto child = spawn(args, output_dir + ".log");
  const int status = wait_for_exit(child);
  EXPECT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << "; output:\n"
                                                             << slurp(child.log);
  return json::parse(slurp(output_dir + "/child_result.json"));
}

void expect_same_weights(const std::string& a, const std::string& b) {
  auto wa = remat::io::load_model_weights(a), wb = remat::io::load_model_weights(b);
  ASSERT_EQ(wa.size(), wb.size());
  for (const auto& [name, tensor] : wa) {
    ASSERT_TRUE(wb.count(name)) << name;
    EXPECT_TRUE(bitwise_equal(tensor, wb.at(name))) << name;
  }
}

const char* const kCheckpointFiles[] = {
    "model.safetensors", "config.json",        "optimizer.pt",     "scheduler.json",
    "rng_state.pt",      "trainer_state.json", "remat_state.json", "training_args.json"};

}  // namespace

TEST(TrainerProcess, SigtermSavesExitsCleanlyAndResumesExactly) {
  const auto dir = scratch_dir("proc_sigterm"), progress = dir + ".progress";
  const std::vector<std::string> common = {"--output_dir", dir, "--max_steps", "7"};
  auto args = common;
  for (const char* a : {"--progress", progress.c_str(), "--pause_at_step", "3"}) args.push_back(a);
  auto child = spawn(args, dir + ".log");
  ASSERT_TRUE(wait_for_progress(child, progress, "step 3"));
  ASSERT_EQ(::kill(child.pid, SIGTERM), 0);
  const int status = wait_for_exit(child);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0) << "status " << status << "; output:\n"
                                                             << slurp(child.log);
  auto result = json::parse(slurp(dir + "/child_result.json"));
  EXPECT_EQ(result["interrupted"], true);
  EXPECT_EQ(result["global_step"], 3);
  EXPECT_EQ(result["checkpoint"], dir + "/checkpoint-3");
  EXPECT_EQ(result["handlers_restored"], true);
  // save_strategy is "no", but an interrupted run saves where it stopped.
  for (const char* file : kCheckpointFiles) {
    EXPECT_TRUE(exists(dir + "/checkpoint-3/" + file)) << file;
  }
  EXPECT_FALSE(exists(dir + "/model.safetensors"));
  EXPECT_NE(slurp(child.log).find("SIGTERM: stopping after step 3"), std::string::npos)
      << slurp(child.log);

  auto resumed_args = common;
  resumed_args.push_back("--resume");
  auto resumed = run_to_end(resumed_args, dir);
  EXPECT_EQ(resumed["interrupted"], false);
  EXPECT_EQ(resumed["global_step"], 7);

  const auto straight_dir = scratch_dir("proc_straight");
  auto straight = run_to_end({"--output_dir", straight_dir, "--max_steps", "7"}, straight_dir);
  EXPECT_EQ(resumed["losses"], straight["losses"]);
  expect_same_weights(dir, straight_dir);
}

TEST(TrainerProcess, SecondSignalEndsTheProcessAtOnce) {
  const auto dir = scratch_dir("proc_twice"), progress = dir + ".progress";
  auto child = spawn({"--output_dir", dir, "--max_steps", "7", "--progress", progress,
                      "--pause_at_step", "2", "--pause_after_save"},
                     dir + ".log");
  ASSERT_TRUE(wait_for_progress(child, progress, "step 2"));
  ASSERT_EQ(::kill(child.pid, SIGINT), 0);
  // The first signal: the child saves checkpoint-2, then waits again.
  ASSERT_TRUE(wait_for_progress(child, progress, "saved"));
  ASSERT_EQ(::kill(child.pid, SIGINT), 0);
  const int status = wait_for_exit(child);
  EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGINT) << "status " << status;
  EXPECT_FALSE(exists(dir + "/child_result.json"));  // train() never returned
  for (const char* file : kCheckpointFiles) {
    EXPECT_TRUE(exists(dir + "/checkpoint-2/" + file)) << file;
  }
}

TEST(TrainerProcess, SigkillDuringASaveLeavesTheEarlierCheckpoints) {
  const auto dir = scratch_dir("proc_kill"), progress = dir + ".progress";
  const std::vector<std::string> common = {"--output_dir", dir, "--max_steps", "5",
                                           "--save_steps", "1"};
  auto args = common;
  for (const char* a : {"--progress", progress.c_str(), "--hang_in_save", "3"}) args.push_back(a);
  auto child = spawn(args, dir + ".log");
  // The child is inside the save of checkpoint-3: the model is written, the
  // optimizer and state are not, nothing is renamed.
  ASSERT_TRUE(wait_for_progress(child, progress, "in save 3"));
  ASSERT_EQ(::kill(child.pid, SIGKILL), 0);
  const int status = wait_for_exit(child);
  ASSERT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) << "status " << status;

  const auto tmp = dir + "/.tmp-checkpoint-3-" + std::to_string(child.pid);
  EXPECT_TRUE(exists(tmp + "/model.safetensors"));
  EXPECT_FALSE(exists(tmp + "/trainer_state.json"));
  EXPECT_FALSE(exists(dir + "/checkpoint-3"));
  for (const std::string step : {"1", "2"}) {
    for (const char* file : kCheckpointFiles) {
      EXPECT_TRUE(exists(dir + "/checkpoint-" + step + "/" + file)) << step << " " << file;
    }
  }
  EXPECT_EQ(json::parse(slurp(dir + "/checkpoint-2/trainer_state.json"))["global_step"], 2);

  // The next run resumes from checkpoint-2, removes the partial directory
  // and ends where an uninterrupted run ends.
  auto resumed_args = common;
  resumed_args.push_back("--resume");
  auto resumed = run_to_end(resumed_args, dir);
  EXPECT_EQ(resumed["global_step"], 5);
  EXPECT_FALSE(exists(tmp));
  for (int step = 1; step <= 5; ++step) {
    EXPECT_TRUE(exists(dir + "/checkpoint-" + std::to_string(step) + "/remat_state.json"));
  }
  const auto straight_dir = scratch_dir("proc_kill_straight");
  auto straight = run_to_end({"--output_dir", straight_dir, "--max_steps", "5"}, straight_dir);
  EXPECT_EQ(resumed["losses"], straight["losses"]);
  expect_same_weights(dir, straight_dir);
}
