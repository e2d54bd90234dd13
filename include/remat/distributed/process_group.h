#pragma once

/// \file
/// A process group for data-parallel training, set up from the environment
/// torchrun gives each process (RANK, LOCAL_RANK, WORLD_SIZE,
/// LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) through c10d's TCPStore: NCCL
/// on CUDA devices, Gloo on the CPU.
/// \code
///   auto group = remat::distributed::ProcessGroup::create(
///       remat::distributed::LaunchEnv::from_env(),
///       remat::distributed::ProcessGroupOptions().timeout_seconds(60));
///   group->all_reduce(t).wait();  // sums t over all ranks, in place
/// \endcode

#include <torch/torch.h>
#include <torch/csrc/distributed/c10d/Work.hpp>

#include <array>
#include <cstdint>
#include <memory>
#include <string>

namespace remat::distributed {

/// Where this process stands in a launch: torchrun's environment variables.
struct LaunchEnv {
  /// RANK: this process among all, in [0, world_size).
  int64_t rank = 0;
  /// LOCAL_RANK: this process on its node; picks the CUDA device.
  int64_t local_rank = 0;
  /// WORLD_SIZE: processes in the run.
  int64_t world_size = 1;
  /// LOCAL_WORLD_SIZE: processes on this node.
  int64_t local_world_size = 1;
  /// MASTER_ADDR: the host of rank 0's TCPStore.
  std::string master_addr = "127.0.0.1";
  /// MASTER_PORT: its port.
  int64_t master_port = 29500;
  /// True when WORLD_SIZE was set: the process was started by a launcher
  /// (torchrun), so it joins a process group even at world size 1.
  bool launched = false;

  /// Reads the variables; unset ones keep the single-process defaults.
  /// Malformed or inconsistent values (RANK outside [0, WORLD_SIZE), a
  /// non-numeric port) are an error naming the variable.
  static LaunchEnv from_env();

  /// True when the launch has more than one process.
  bool distributed() const { return world_size > 1; }
};

/// How ProcessGroup::create() connects.
struct ProcessGroupOptions {
  /// "nccl", "gloo", or "auto" (the default): NCCL when `device` is CUDA,
  /// Gloo otherwise.
  TORCH_ARG(std::string, backend) = "auto";
  /// The device collectives run on. Default: CUDA device LOCAL_RANK when CUDA
  /// is available and `use_cpu` is off, else the CPU.
  TORCH_ARG(std::optional<torch::Device>, device) = std::nullopt;
  /// Train on the CPU even where CUDA is available (TrainingArguments.use_cpu).
  TORCH_ARG(bool, use_cpu) = false;
  /// Seconds a rendezvous or a collective may wait for a peer before it fails
  /// (TrainingArguments.ddp_timeout). Default 1800; at least 1.
  TORCH_ARG(int64_t, timeout_seconds) = 1800;
};

/// The collectives a ProcessGroup counts.
enum class Collective { kAllReduce, kAllGather, kReduceScatter, kBroadcast, kBarrier };

/// An asynchronous collective. wait() blocks until it is done and turns a
/// failure (a dead peer, a timeout) into an exception naming the rank.
class Work {
 public:
  Work() = default;
  Work(c10::intrusive_ptr<c10d::Work> work, std::string what, int64_t rank,
       int64_t timeout_seconds);
  /// Waits for completion; throws std::runtime_error on failure. A default
  /// constructed (or already waited) Work returns at once.
  void wait();
  bool pending() const { return work_.defined(); }

 private:
  c10::intrusive_ptr<c10d::Work> work_;
  std::string what_;
  int64_t rank_ = 0;
  int64_t timeout_seconds_ = 0;
};

/// A group of all processes of the launch, backed by a c10d backend.
class ProcessGroup {
 public:
  /// Connects to the other ranks through a TCPStore at MASTER_ADDR:MASTER_PORT
  /// (rank 0 serves it) and creates the backend. Waits at most
  /// `options.timeout_seconds()` for every rank to join.
  static std::shared_ptr<ProcessGroup> create(const LaunchEnv& env,
                                              const ProcessGroupOptions& options = {});
  ~ProcessGroup();
  ProcessGroup(const ProcessGroup&) = delete;
  ProcessGroup& operator=(const ProcessGroup&) = delete;

  int64_t rank() const { return env_.rank; }
  int64_t world_size() const { return env_.world_size; }
  int64_t local_rank() const { return env_.local_rank; }
  const LaunchEnv& env() const { return env_; }
  /// "nccl" or "gloo".
  const std::string& backend() const { return backend_; }
  /// The device tensors passed to collectives must live on.
  const torch::Device& device() const { return device_; }
  int64_t timeout_seconds() const { return timeout_seconds_; }

  /// Sums `tensor` over all ranks, in place.
  Work all_reduce(torch::Tensor tensor);
  /// Concatenates every rank's `input` into `output` (world_size times its
  /// numel), in rank order.
  Work all_gather(torch::Tensor output, torch::Tensor input);
  /// Sums `input` (world_size times the numel of `output`) over all ranks and
  /// gives rank r the r-th chunk in `output`.
  Work reduce_scatter(torch::Tensor output, torch::Tensor input);
  /// Copies `tensor` of rank `root` to every rank (blocking).
  void broadcast(torch::Tensor tensor, int64_t root = 0);
  /// Waits until every rank has reached it (blocking).
  void barrier();
  /// Sums a number over all ranks (blocking).
  double all_reduce_sum(double value);

  /// How many collectives of `kind` this process issued.
  int64_t count(Collective kind) const { return counts_[static_cast<size_t>(kind)]; }
  void reset_counts() { counts_.fill(0); }

  /// Waits for the other ranks, then releases the backend and the store.
  /// Called by the destructor when not called before.
  void shutdown();

 private:
  struct State;
  ProcessGroup() = default;
  Work track(Collective kind, c10::intrusive_ptr<c10d::Work> work, const char* what);

  LaunchEnv env_;
  std::string backend_;
  torch::Device device_ = torch::kCPU;
  int64_t timeout_seconds_ = 1800;
  std::unique_ptr<State> state_;
  std::array<int64_t, 5> counts_{};
};

}  // namespace remat::distributed
