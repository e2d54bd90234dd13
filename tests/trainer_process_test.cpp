// remat::Trainer as a process: trainer_child (trainer_child.cpp) trains, the
// test signals or kills it at a point the child reports through a progress
// file, then checks what is on disk and resumes. SIGTERM finishes the step,
// saves and exits 0, and the resumed run ends with the same weights as an
// uninterrupted one; a second SIGINT ends the process at once; SIGKILL in the
// middle of a save leaves the earlier checkpoints intact and no partial
// checkpoint-<step>. The kill tests preload slow_fs_shim (slow_fs_shim.c),
// which slows deleting and renaming on matching paths, so that the kill lands
// while a checkpoint is being pruned or replaced.

#include <gtest/gtest.h>

#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <random>
#include <thread>

#include "remat/io/safetensors.h"
#include "support.h"
#include "trainer_support.h"

#ifndef REMAT_TRAINER_CHILD
#error "REMAT_TRAINER_CHILD must name the trainer_child executable"
#endif
#ifndef REMAT_SLOW_FS_SHIM
#error "REMAT_SLOW_FS_SHIM must name the slow_fs_shim library"
#endif

extern char** environ;

using json = nlohmann::json;
using namespace remat::test;

namespace {

struct Child {
  pid_t pid = -1;
  std::string log;
};

// Starts trainer_child with `args` and, added to this process's
// environment, `env` ("NAME=value" entries); its output goes to `log`.
Child spawn(const std::vector<std::string>& args, const std::string& log,
            std::vector<std::string> env = {}) {
  std::vector<std::string> words{REMAT_TRAINER_CHILD};
  words.insert(words.end(), args.begin(), args.end());
  std::vector<char*> argv;
  for (auto& w : words) argv.push_back(w.data());
  argv.push_back(nullptr);
  std::vector<char*> envp;
  for (auto& e : env) envp.push_back(e.data());
  for (char** e = environ; *e != nullptr; ++e) envp.push_back(*e);
  envp.push_back(nullptr);
  const pid_t pid = ::fork();
  if (pid == 0) {
    // Only async-signal-safe calls between fork and exec.
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      ::dup2(fd, STDOUT_FILENO);
      ::dup2(fd, STDERR_FILENO);
    }
    ::execve(argv[0], argv.data(), envp.data());
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

std::vector<std::string> entries(const std::string& dir) {
  std::vector<std::string> names;
  if (DIR* handle = ::opendir(dir.c_str())) {
    while (auto* entry = ::readdir(handle)) names.emplace_back(entry->d_name);
    ::closedir(handle);
  }
  return names;
}

bool starts_with(const std::string& text, const std::string& prefix) {
  return text.rfind(prefix, 0) == 0;
}

// Every file of a checkpoint is there.
bool complete(const std::string& checkpoint) {
  for (const char* file : kCheckpointFiles) {
    if (!exists(checkpoint + "/" + file)) return false;
  }
  return true;
}

// Every checkpoint-<step> of `dir` is complete and its weights and state load.
void expect_checkpoints_complete(const std::string& dir, const std::string& when) {
  for (const auto& name : entries(dir)) {
    if (!starts_with(name, "checkpoint-")) continue;
    const auto checkpoint = dir + "/" + name;
    ASSERT_TRUE(complete(checkpoint)) << when << ": " << checkpoint << " is incomplete";
    EXPECT_NO_THROW(remat::io::load_model_weights(checkpoint)) << when << ": " << checkpoint;
    EXPECT_NO_THROW(json::parse(slurp(checkpoint + "/trainer_state.json")))
        << when << ": " << checkpoint;
  }
}

bool has_checkpoint(const std::string& dir) {
  for (const auto& name : entries(dir)) {
    if (starts_with(name, "checkpoint-")) return true;
  }
  return false;
}

// The leftovers of interrupted saves and prunes in `dir`.
std::vector<std::string> hidden_checkpoints(const std::string& dir) {
  std::vector<std::string> names;
  for (const auto& name : entries(dir)) {
    if (starts_with(name, ".") && name.find("checkpoint-") != std::string::npos) {
      names.push_back(name);
    }
  }
  return names;
}

// The environment that preloads slow_fs_shim: calls that delete or rename
// paths containing `pattern` wait 200 ms first.
std::vector<std::string> slow_fs(const std::string& pattern) {
  return {"LD_PRELOAD=" REMAT_SLOW_FS_SHIM, "REMAT_TEST_SLOW_FS=" + pattern};
}

// Polls until `window()` holds, then kills the child with SIGKILL. Fails if
// the child exits first or after 30 seconds.
template <typename Window>
::testing::AssertionResult kill_in_window(const Child& child, Window window) {
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(30);
  while (std::chrono::steady_clock::now() < deadline) {
    if (window()) {
      ::kill(child.pid, SIGKILL);
      const int status = wait_for_exit(child);
      if (WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL) return ::testing::AssertionSuccess();
      return ::testing::AssertionFailure() << "the child was not killed (status " << status << ")";
    }
    int status = 0;
    if (::waitpid(child.pid, &status, WNOHANG) == child.pid) {
      return ::testing::AssertionFailure()
             << "the child exited (status " << status << ") before the window; its output:\n"
             << slurp(child.log);
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  ::kill(child.pid, SIGKILL);
  wait_for_exit(child);
  return ::testing::AssertionFailure() << "no window in 30 seconds";
}

// The weights of an uninterrupted run of `max_steps` steps, in a directory.
std::string straight_run(const std::string& name, int64_t max_steps) {
  const auto dir = scratch_dir(name);
  run_to_end({"--output_dir", dir, "--max_steps", std::to_string(max_steps)}, dir);
  return dir;
}

}  // namespace

TEST(TrainerProcess, SigkillWhilePruningLeavesOnlyCompleteCheckpoints) {
  const auto dir = scratch_dir("proc_prune");
  const std::vector<std::string> common = {"--output_dir", dir, "--max_steps",        "4",
                                           "--save_steps", "1", "--save_total_limit", "2"};
  // Saving checkpoint-3 prunes checkpoint-1; the kill comes while it is being
  // deleted (with the fix: renamed out of the way and being deleted there).
  auto child = spawn(common, dir + ".log", slow_fs("checkpoint-1"));
  ASSERT_TRUE(kill_in_window(child, [&] {
    for (const auto& name : hidden_checkpoints(dir)) {
      if (starts_with(name, ".trash-checkpoint-1-")) return true;
    }
    return exists(dir + "/checkpoint-1") && !complete(dir + "/checkpoint-1");
  }));
  expect_checkpoints_complete(dir, "after the kill");

  auto resumed_args = common;
  resumed_args.push_back("--resume");
  auto resumed = run_to_end(resumed_args, dir);
  EXPECT_EQ(resumed["global_step"], 4);
  EXPECT_TRUE(hidden_checkpoints(dir).empty()) << hidden_checkpoints(dir).front();
  EXPECT_FALSE(exists(dir + "/checkpoint-1"));
  expect_checkpoints_complete(dir, "after the resumed run");
  expect_same_weights(dir, straight_run("proc_prune_straight", 4));
}

TEST(TrainerProcess, SigkillWhileReplacingACheckpointKeepsACompleteCopy) {
  const auto dir = scratch_dir("proc_replace");
  const std::vector<std::string> common = {"--output_dir", dir, "--max_steps", "4",
                                           "--save_steps", "2"};
  run_to_end(common, dir);
  ASSERT_TRUE(complete(dir + "/checkpoint-4"));
  // Resumed from checkpoint-2, the run saves checkpoint-4 again; the kill
  // comes while the old checkpoint-4 is out of the way (or being deleted).
  auto replacing = common;
  for (const auto& a : {std::string("--resume_from"), dir + "/checkpoint-2"}) {
    replacing.push_back(a);
  }
  auto child = spawn(replacing, dir + ".log", slow_fs("checkpoint-4"));
  ASSERT_TRUE(kill_in_window(child, [&] { return !complete(dir + "/checkpoint-4"); }));
  expect_checkpoints_complete(dir, "after the kill");

  // The next start puts the new checkpoint-4 in place and resumes from it.
  auto resumed_args = common;
  resumed_args.push_back("--resume");
  auto resumed = run_to_end(resumed_args, dir);
  EXPECT_NE(slurp(dir + ".log").find("resuming from " + dir + "/checkpoint-4 at step 4"),
            std::string::npos)
      << slurp(dir + ".log");
  EXPECT_EQ(resumed["global_step"], 4);
  EXPECT_TRUE(hidden_checkpoints(dir).empty()) << hidden_checkpoints(dir).front();
  expect_checkpoints_complete(dir, "after the resumed run");
  const auto straight = straight_run("proc_replace_straight", 4);
  expect_same_weights(dir + "/checkpoint-4", straight);
  expect_same_weights(dir, straight);
}

TEST(TrainerProcess, SigkillAtRandomTimesThenResumeEndsLikeAnUninterruptedRun) {
  const auto dir = scratch_dir("proc_random_kill");
  const std::vector<std::string> common = {"--output_dir", dir, "--max_steps",        "6",
                                           "--save_steps", "1", "--save_total_limit", "2"};
  const unsigned seed = std::random_device{}();
  std::mt19937 rng(seed);
  SCOPED_TRACE("seed " + std::to_string(seed));
  // Every delete and rename of a checkpoint is slowed (20 ms), so most of
  // the run is inside a save or a prune.
  auto env = slow_fs("checkpoint-");
  env.push_back("REMAT_TEST_SLOW_FS_MS=20");
  for (int kill = 0; kill < 3; ++kill) {
    auto args = common;
    if (has_checkpoint(dir)) args.push_back("--resume");
    auto child = spawn(args, dir + ".log", env);
    // The child's start-up takes about a second; then it saves every step.
    std::this_thread::sleep_for(
        std::chrono::milliseconds(std::uniform_int_distribution<int>(800, 2000)(rng)));
    ::kill(child.pid, SIGKILL);
    wait_for_exit(child);
    expect_checkpoints_complete(dir, "after kill " + std::to_string(kill + 1));
  }
  auto resumed_args = common;
  if (has_checkpoint(dir)) resumed_args.push_back("--resume");
  auto resumed = run_to_end(resumed_args, dir);
  EXPECT_EQ(resumed["global_step"], 6);
  EXPECT_TRUE(hidden_checkpoints(dir).empty()) << hidden_checkpoints(dir).front();
  expect_checkpoints_complete(dir, "after the resumed run");
  expect_same_weights(dir, straight_run("proc_random_kill_straight", 6));
}

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
