// Data parallelism across real processes on localhost (Gloo): each test
// starts dist_worker once per rank with torchrun's environment variables,
// waits for all of them (bounded) and compares what they wrote.
#include <arpa/inet.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <map>
#include <string>
#include <thread>
#include <vector>

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include "remat/distributed/data_parallel.h"
#include "remat/distributed/process_group.h"
#include "remat/io/safetensors.h"
#include "support.h"

namespace {

// A port no one listens on now: bind port 0, read what the kernel gave.
int free_port() {
  int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = 0;
  EXPECT_EQ(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)), 0);
  socklen_t len = sizeof(addr);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
  ::close(fd);
  return ntohs(addr.sin_port);
}

std::string scratch(const std::string& name) {
  std::string dir = ::testing::TempDir() + "remat_dist_" + name + "_" + std::to_string(::getpid());
  ::mkdir(dir.c_str(), 0755);
  return dir;
}

struct Exit {
  int code = -1;  // exit status, or -1 when killed by a signal or still running
  bool timed_out = false;
};

// Starts `argv` `world` times with RANK/WORLD_SIZE/... set, waits at most
// `limit` for all of them; those still running then are killed.
std::vector<Exit> launch(int world, const std::vector<std::string>& argv,
                         std::chrono::seconds limit = std::chrono::seconds(120),
                         const std::string& stop_at = "", bool plain = false, int wait_for = -1) {
  const int port = free_port();
  std::vector<pid_t> pids;
  for (int rank = 0; rank < world; ++rank) {
    pid_t pid = ::fork();
    if (pid == 0 && plain) {
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    if (pid == 0) {
      if (!stop_at.empty()) ::setenv("REMAT_TEST_STOP_AT", stop_at.c_str(), 1);
      ::setenv("RANK", std::to_string(rank).c_str(), 1);
      ::setenv("LOCAL_RANK", std::to_string(rank).c_str(), 1);
      ::setenv("WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("LOCAL_WORLD_SIZE", std::to_string(world).c_str(), 1);
      ::setenv("MASTER_ADDR", "127.0.0.1", 1);
      ::setenv("MASTER_PORT", std::to_string(port).c_str(), 1);
      ::setenv("OMP_NUM_THREADS", "1", 1);
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      ::execv(args[0], args.data());
      ::_exit(127);
    }
    pids.push_back(pid);
  }
  std::vector<Exit> exits(world);
  std::vector<bool> done(world, false);
  const auto deadline = std::chrono::steady_clock::now() + limit;
  int remaining = world;
  while (remaining > 0) {
    for (int r = 0; r < world; ++r) {
      if (done[r]) continue;
      int status = 0;
      if (::waitpid(pids[r], &status, WNOHANG) == pids[r]) {
        done[r] = true;
        --remaining;
        exits[r].code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
      }
    }
    if (remaining == 0) break;
    // When only the first `wait_for` ranks matter, the rest are killed once
    // those have ended.
    bool enough = wait_for > 0;
    for (int r = 0; r < wait_for && r < world; ++r) enough = enough && done[r];
    if (enough || std::chrono::steady_clock::now() > deadline) {
      for (int r = 0; r < world; ++r) {
        if (done[r]) continue;
        exits[r].timed_out = !enough;
        ::kill(pids[r], SIGKILL);
        ::waitpid(pids[r], nullptr, 0);
      }
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return exits;
}

std::vector<std::string> worker(const std::string& mode, const std::string& out,
                                std::vector<std::string> flags = {}) {
  std::vector<std::string> argv{REMAT_DIST_WORKER, mode, out};
  argv.insert(argv.end(), flags.begin(), flags.end());
  return argv;
}

void expect_success(const std::vector<Exit>& exits) {
  for (size_t r = 0; r < exits.size(); ++r) {
    EXPECT_FALSE(exits[r].timed_out) << "rank " << r << " did not finish";
    EXPECT_EQ(exits[r].code, 0) << "rank " << r << " failed";
  }
}

std::vector<torch::Tensor> load_weights(const std::string& dir) {
  std::vector<torch::Tensor> weights;
  torch::load(weights, dir + "/weights.pt");
  return weights;
}

nlohmann::json report(const std::string& dir, int rank) {
  std::ifstream in(dir + "/report-" + std::to_string(rank) + ".json");
  return nlohmann::json::parse(in);
}

// dist_worker's train run: tiny_gpt2 (3 layers, n_embd 32, 4 heads, vocab 48),
// 3 steps of global_batch (6 rows of 12 tokens, 66 predicted), gradients
// clipped to norm 1, AdamW with lr 0.5 and eps 1.
constexpr int64_t kLayers = 3, kEmbd = 32, kHeadDim = 8, kVocab = 48, kSeq = 12, kTokens = 66,
                  kSteps = 3, kLargestTensor = 4 * kEmbd * kEmbd;
constexpr double kLr = 0.5, kClip = 1.0;

// Data parallelism sums the same float32 terms in another order (rank-local
// sums, then the collective): a gradient element's chain of roundings is
// twice the forward's (support.h's transformer_chain).
constexpr int64_t kChain =
    2 * remat::test::transformer_chain(kLayers, kEmbd, 4 * kEmbd, kHeadDim, kSeq, kVocab, kTokens);

// Clipped gradients (and their terms) are at most kClip in size, so two
// orders differ by 2 gamma_chain kClip per element; AdamW with eps = 1 moves
// a weight by at most lr per unit of gradient difference, at each step.
const double kWeightTolerance = kSteps * kLr * remat::test::reduction_tolerance(kChain, kClip);

void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(remat::test::within_tolerance(a[i], b[i], kWeightTolerance)) << "weight " << i;
  }
}

// The reported loss (a sum over the batch's tokens of positive terms, so
// sum|terms| is the loss) and the unclipped gradient norm (each gradient
// within 2 gamma_chain of itself, then a norm over at most the largest
// tensor's elements) computed in two orders.
void expect_same_losses_and_norms(const nlohmann::json& got, const nlohmann::json& want,
                                  const std::string& what) {
  for (size_t i = 0; i < want["losses"].size(); ++i) {
    const double loss = want["losses"][i].get<double>(), norm = want["grad_norms"][i].get<double>();
    EXPECT_TRUE(remat::test::within_tolerance(got["losses"][i].get<double>(), loss,
                                              remat::test::reduction_tolerance(kChain, loss)))
        << what << " loss " << i;
    EXPECT_TRUE(remat::test::within_tolerance(
        got["grad_norms"][i].get<double>(), norm,
        remat::test::reduction_tolerance(kChain + kLargestTensor, norm)))
        << what << " grad norm " << i;
  }
}

// Single-process training on the concatenated batch, the reference.
std::string reference(const std::string& name, bool checkpointing) {
  auto dir = scratch(name);
  expect_success(launch(
      1, worker("train", dir, {"--dp", "none", "--checkpointing", checkpointing ? "1" : "0"})));
  return dir;
}

class DataParallelTest : public ::testing::TestWithParam<std::tuple<int, bool>> {};

TEST_P(DataParallelTest, DdpEqualsSingleProcessOnTheConcatenatedBatch) {
  const auto [world, checkpointing] = GetParam();
  const std::string ckpt = checkpointing ? "1" : "0";
  auto single = reference("single", checkpointing);
  auto ddp = scratch("ddp");
  expect_success(launch(world, worker("train", ddp, {"--dp", "ddp", "--checkpointing", ckpt})));
  expect_close(load_weights(ddp), load_weights(single));
  auto r = report(ddp, 0), s = report(single, 0);
  expect_same_losses_and_norms(r, s, "ddp");
  // Several buckets, launched by the gradient hooks while backward ran
  // (with checkpointing: by gradients that arrived during the replays).
  EXPECT_GT(r["buckets"].get<int64_t>(), 2);
  EXPECT_EQ(r["launched_during_backward"].get<int64_t>(), 3 * r["buckets"].get<int64_t>());
}

TEST_P(DataParallelTest, FsdpEqualsDdp) {
  const auto [world, checkpointing] = GetParam();
  const std::string ckpt = checkpointing ? "1" : "0";
  auto ddp = scratch("ddp_ref");
  expect_success(launch(world, worker("train", ddp, {"--dp", "ddp", "--checkpointing", ckpt})));
  for (const std::string strategy : {"full_shard", "shard_grad_op"}) {
    auto fsdp = scratch(strategy);
    expect_success(
        launch(world, worker("train", fsdp, {"--dp", strategy, "--checkpointing", ckpt})));
    expect_close(load_weights(fsdp), load_weights(ddp));
    expect_same_losses_and_norms(report(fsdp, 0), report(ddp, 0), strategy);
  }
}

INSTANTIATE_TEST_SUITE_P(Worlds, DataParallelTest,
                         ::testing::Combine(::testing::Values(2, 3), ::testing::Bool()));

// full_shard costs each layer unit one all-gather in the forward and one in
// the backward when checkpointing is inside the unit (activation_checkpointing
// or the model's gradient_checkpointing, which FSDP routes there); the root
// unit is gathered once per step, after the optimizer step. Checkpointing
// around the units instead replays their forward, which gathers a third time.
TEST(FsdpCollectivesTest, CheckpointingInsideTheUnitCostsNoExtraAllGather) {
  const int64_t layers = 3;
  auto count = [&](std::vector<std::string> flags) {
    auto dir = scratch("count");
    flags.insert(flags.begin(), {"--dp", "full_shard", "--steps", "2"});
    expect_success(launch(2, worker("train", dir, flags)));
    auto r = report(dir, 1);
    EXPECT_EQ(r["units"].get<int64_t>(), layers + 1);
    EXPECT_EQ(r["reduce_scatter"].get<int64_t>(), layers + 1);
    return r["all_gather"].get<int64_t>();
  };
  EXPECT_EQ(count({}), 2 * layers + 1);
  EXPECT_EQ(count({"--fsdp_ac", "1"}), 2 * layers + 1);
  EXPECT_EQ(count({"--checkpointing", "1"}), 2 * layers + 1);
  EXPECT_EQ(count({"--outer", "1"}), 3 * layers + 1);
}

TEST(FailureTest, AKilledRankMakesTheOthersFailWithinTheTimeout) {
  auto dir = scratch("killed");
  auto exits = launch(3, worker("train", dir, {"--steps", "4", "--die_at", "2", "--timeout", "10"}),
                      std::chrono::seconds(60));
  EXPECT_EQ(exits[1].code, -1);  // killed
  for (int r : {0, 2}) {
    EXPECT_FALSE(exits[r].timed_out) << "rank " << r << " hung";
    EXPECT_EQ(exits[r].code, 1) << "rank " << r;
  }
}

TEST(FailureTest, AStuckRankMakesTheOthersFailAfterTheTimeout) {
  auto dir = scratch("stuck");
  auto exits =
      launch(2, worker("train", dir, {"--steps", "3", "--stall_at", "1", "--timeout", "3"}),
             std::chrono::seconds(60), "", false, /*wait_for=*/1);
  EXPECT_FALSE(exits[0].timed_out) << "rank 0 hung past the limit";
  EXPECT_EQ(exits[0].code, 1);
}

std::vector<std::string> trainer_flags(const std::string& out,
                                       std::vector<std::string> extra = {}) {
  std::vector<std::string> flags{"--output_dir",
                                 out,
                                 "--use_cpu",
                                 "true",
                                 "--max_steps",
                                 "4",
                                 "--learning_rate",
                                 "0.01",
                                 "--per_device_train_batch_size",
                                 "2",
                                 "--save_strategy",
                                 "steps",
                                 "--save_steps",
                                 "2",
                                 "--logging_steps",
                                 "1",
                                 "--report_to",
                                 "jsonl",
                                 "--ddp_timeout",
                                 "30"};
  flags.insert(flags.end(), extra.begin(), extra.end());
  return flags;
}

std::map<std::string, torch::Tensor> final_weights(const std::string& dir) {
  return remat::io::load_model_weights(dir);
}

// The two runs' final weights are equal bit for bit: they made the same
// operations in the same order.
void expect_same_weights(const std::string& a, const std::string& b) {
  auto wa = final_weights(a), wb = final_weights(b);
  ASSERT_EQ(wa.size(), wb.size());
  for (const auto& [name, t] : wa) {
    ASSERT_TRUE(wb.count(name)) << name;
    EXPECT_TRUE(remat::test::bitwise_equal(t, wb.at(name))) << name;
  }
}

std::vector<std::string> trainer_run(const std::string& out, const std::string& fsdp,
                                     std::vector<std::string> extra = {}) {
  auto flags = trainer_flags(out, std::move(extra));
  if (!fsdp.empty()) flags.insert(flags.end(), {"--fsdp", fsdp});
  return worker("trainer", out, flags);
}

class TrainerResumeTest : public ::testing::TestWithParam<std::string> {};

// A 2-rank run stopped after step 2 (which saves checkpoint-2) and resumed
// ends where the uninterrupted run does; the checkpoint records the world
// size, and resuming it with 3 ranks is refused.
TEST_P(TrainerResumeTest, ResumingATwoRankRunEqualsTheUninterruptedRun) {
  const auto fsdp = GetParam();
  auto straight = scratch("straight" + fsdp);
  expect_success(launch(2, trainer_run(straight, fsdp)));
  auto resumed = scratch("resumed" + fsdp);
  expect_success(launch(2, trainer_run(resumed, fsdp), std::chrono::seconds(120), "2"));
  std::ifstream position(resumed + "/checkpoint-2/remat_state.json");
  ASSERT_TRUE(position.good());
  EXPECT_EQ(nlohmann::json::parse(position)["world_size"].get<int64_t>(), 2);
  // trainer_state.json keeps transformers' keys only.
  std::ifstream state(resumed + "/checkpoint-2/trainer_state.json");
  ASSERT_TRUE(state.good());
  EXPECT_FALSE(nlohmann::json::parse(state).contains("world_size"));
  if (!fsdp.empty()) {
    EXPECT_EQ(::access((resumed + "/checkpoint-2/optimizer.rank1.pt").c_str(), F_OK), 0);
  }
  expect_success(launch(2, trainer_run(resumed, fsdp, {"--resume_from_checkpoint", "latest"})));
  expect_same_weights(straight, resumed);

  auto exits = launch(
      3, trainer_run(resumed, fsdp, {"--resume_from_checkpoint", resumed + "/checkpoint-2"}));
  for (const auto& e : exits) EXPECT_EQ(e.code, 1);
}

INSTANTIATE_TEST_SUITE_P(Sharding, TrainerResumeTest, ::testing::Values("", "full_shard"),
                         [](const auto& info) { return info.param.empty() ? "ddp" : "fsdp"; });

// Two Trainer ranks equal, bit for bit, one process that accumulates their
// micro-batches: step k gives rank r example 2k + r (DistributedSampler deals
// every other index) and the one process the same two as its micro-batches;
// the shapes are the same, the all-reduce of two gradients is one addition
// (a + b == b + a), scaling the loss by the world size and averaging by it
// are exact (a power of two), and both clip with the same float64 norm over
// the parameters in the same order. (Equal to one process on the combined
// batch only up to summation order, one larger product summing the tokens
// differently: trainer_test checks accumulation against one batch.)
TEST(TrainerDistributedTest, TwoRanksEqualOneProcessAccumulatingTheirBatches) {
  auto two = scratch("two");
  expect_success(launch(2, trainer_run(two, "", {"--per_device_train_batch_size", "1"})));
  auto one = scratch("one");
  auto flags = trainer_flags(
      one, {"--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "2"});
  auto argv = worker("trainer", one, flags);
  // A plain process: no launcher variables; one thread, as the ranks.
  pid_t pid = ::fork();
  if (pid == 0) {
    ::setenv("OMP_NUM_THREADS", "1", 1);
    std::vector<char*> args;
    for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
    args.push_back(nullptr);
    ::execv(args[0], args.data());
    ::_exit(127);
  }
  int status = 0;
  ::waitpid(pid, &status, 0);
  ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0);
  expect_same_weights(two, one);
}

nlohmann::json result(const std::string& dir, int rank) {
  std::ifstream in(dir + "/result-" + std::to_string(rank) + ".json");
  return nlohmann::json::parse(in);
}

// SIGTERM to rank 1 alone: the ranks agree on the stop in the step's
// all-reduce, so both stop after the same step (neither waits in a collective
// the other left), save that step's checkpoint and return; resuming it ends
// where the uninterrupted run does.
TEST(TrainerDistributedTest, ASignalOnOneRankStopsEveryRankAfterTheSameStep) {
  auto straight = scratch("sig_straight");
  expect_success(launch(2, trainer_run(straight, "")));
  auto dir = scratch("sigterm");
  ::setenv("REMAT_TEST_SIGTERM_AT", "3", 1);
  auto exits = launch(2, trainer_run(dir, ""), std::chrono::seconds(120));
  ::unsetenv("REMAT_TEST_SIGTERM_AT");
  expect_success(exits);
  for (int r : {0, 1}) {
    auto res = result(dir, r);
    EXPECT_TRUE(res["interrupted"].get<bool>()) << "rank " << r;
    EXPECT_EQ(res["global_step"], 3) << "rank " << r;
    EXPECT_EQ(res["checkpoint"], dir + "/checkpoint-3") << "rank " << r;
    EXPECT_EQ(res["is_world_process_zero"].get<bool>(), r == 0);
  }
  EXPECT_NE(::access((dir + "/model.safetensors").c_str(), F_OK), 0);  // no final save
  expect_success(launch(2, trainer_run(dir, "", {"--resume_from_checkpoint", "latest"})));
  expect_same_weights(straight, dir);
}

// fp16 under FSDP with an overflow on rank 1 alone: the ranks agree on the
// found inf/NaN, so both skip the same step, back off the loss scale alike
// and end with the same (full) model.
TEST(TrainerDistributedTest, AnFp16OverflowOnOneRankSkipsTheStepOnEveryRank) {
  auto dir = scratch("fp16");
  ::setenv("REMAT_TEST_INF_GRAD_AT", "2", 1);
  auto exits = launch(2, trainer_run(dir, "full_shard", {"--fp16", "true"}));
  ::unsetenv("REMAT_TEST_INF_GRAD_AT");
  expect_success(exits);
  auto r0 = result(dir, 0), r1 = result(dir, 1);
  EXPECT_EQ(r0["skipped_steps"], 1.0);
  EXPECT_EQ(r1["skipped_steps"], 1.0);
  EXPECT_EQ(r0["weights_sum"], r1["weights_sum"]);
  std::ifstream in(dir + "/checkpoint-4/scaler.json");
  ASSERT_TRUE(in.good());
  EXPECT_EQ(nlohmann::json::parse(in)["scale"], 32768.0);
}

// torchrun starts the ranks (--no-python: the worker is a program).
TEST(TorchrunTest, LaunchesTheRanks) {
  const std::string torchrun = REMAT_TORCHRUN;
  if (::access(torchrun.c_str(), X_OK) != 0) GTEST_SKIP() << "no torchrun at " << torchrun;
  auto dir = scratch("torchrun");
  std::vector<std::string> argv{torchrun,
                                "--no-python",
                                "--nproc-per-node",
                                "2",
                                "--master-addr",
                                "127.0.0.1",
                                "--master-port",
                                std::to_string(free_port()),
                                REMAT_DIST_WORKER,
                                "trainer",
                                dir};
  for (const auto& f : trainer_flags(dir, {"--max_steps", "2"})) argv.push_back(f);
  auto exits = launch(1, argv, std::chrono::seconds(120), "", /*plain=*/true);
  expect_success(exits);
  std::ifstream log(dir + "/log.jsonl");
  int lines = 0;
  for (std::string line; std::getline(log, line);) ++lines;
  EXPECT_EQ(lines, 3);  // two steps and the summary, from rank 0 only
  EXPECT_EQ(::access((dir + "/model.safetensors").c_str(), F_OK), 0);
}

// On a CUDA machine: DDP and FSDP over NCCL, one rank per GPU (1, and 2
// when there are two GPUs), on a small GPT-2 shape.
TEST(DistributedCudaTest, NcclTrainsDdpAndFsdp) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  std::vector<int> worlds{1};
  if (torch::cuda::device_count() >= 2) worlds.push_back(2);
  for (int world : worlds) {
    for (const std::string dp : {"ddp", "full_shard"}) {
      auto dir = scratch("nccl_" + dp);
      expect_success(launch(
          world, worker("bench", dir,
                        {"--dp",    dp,  "--checkpointing", "1",   "--layers", "2", "--dim", "64",
                         "--heads", "4", "--vocab",         "128", "--batch",  "2", "--seq", "32",
                         "--steps", "3", "--warmup",        "1"})));
      std::ifstream in(dir + "/bench-" + dp + "-ckpt-w" + std::to_string(world) + "-rank0.json");
      ASSERT_TRUE(in.good()) << dp << " world " << world;
      auto result = nlohmann::json::parse(in);
      EXPECT_EQ(result["backend"], "nccl");
      EXPECT_GT(result["tokens_per_s"].get<double>(), 0);
      EXPECT_GT(result["peak_mib"].get<int64_t>(), 0);
    }
  }
}

TEST(FsdpOptionsTest, ReadsHuggingFaceNames) {
  using remat::distributed::FullyShardedDataParallelOptions;
  auto o = FullyShardedDataParallelOptions::from_hf(
      "full_shard auto_wrap",
      {{"activation_checkpointing", "true"}, {"sync_module_states", false}});
  EXPECT_EQ(o.sharding_strategy(), "full_shard");
  EXPECT_TRUE(o.activation_checkpointing());
  EXPECT_FALSE(o.sync_module_states());
  o = FullyShardedDataParallelOptions::from_hf("full_shard", {{"reshard_after_forward", false}});
  EXPECT_EQ(o.sharding_strategy(), "shard_grad_op");
  EXPECT_EQ(FullyShardedDataParallelOptions::from_hf("shard_grad_op", {}).sharding_strategy(),
            "shard_grad_op");
  EXPECT_THROW(FullyShardedDataParallelOptions::from_hf("hybrid_shard", {}), std::invalid_argument);
  EXPECT_THROW(FullyShardedDataParallelOptions::from_hf("full_shard offload", {}),
               std::invalid_argument);
  EXPECT_THROW(FullyShardedDataParallelOptions::from_hf("full_shard", {{"cpu_offload", true}}),
               std::invalid_argument);
}

TEST(LaunchEnvTest, RejectsInconsistentVariables) {
  ::setenv("WORLD_SIZE", "2", 1);
  ::setenv("RANK", "2", 1);
  EXPECT_THROW(remat::distributed::LaunchEnv::from_env(), std::invalid_argument);
  ::setenv("RANK", "x", 1);
  EXPECT_THROW(remat::distributed::LaunchEnv::from_env(), std::invalid_argument);
  ::setenv("RANK", "1", 1);
  auto env = remat::distributed::LaunchEnv::from_env();
  EXPECT_EQ(env.rank, 1);
  EXPECT_EQ(env.world_size, 2);
  ::unsetenv("WORLD_SIZE");
  ::unsetenv("RANK");
}

}  // namespace
