#include "remat/distributed/process_group.h"

#ifdef REMAT_HAVE_GLOO
#include <torch/csrc/distributed/c10d/ProcessGroupGloo.hpp>
#endif
#include <torch/csrc/distributed/c10d/TCPStore.hpp>

#include <cstdlib>
#include <stdexcept>

#include "nccl_backend.h"
#include "remat/logging.h"

namespace remat::distributed {
namespace {

std::optional<std::string> env_string(const char* name) {
  const char* value = std::getenv(name);
  if (value == nullptr || *value == '\0') return std::nullopt;
  return std::string(value);
}

int64_t env_int(const char* name, int64_t fallback) {
  auto value = env_string(name);
  if (!value) return fallback;
  size_t used = 0;
  int64_t result = 0;
  try {
    result = std::stoll(*value, &used);
  } catch (const std::exception&) {
    used = 0;
  }
  if (used != value->size()) {
    throw std::invalid_argument(std::string("remat::distributed: environment variable ") + name +
                                "=\"" + *value + "\" is not an integer");
  }
  return result;
}

}  // namespace

LaunchEnv LaunchEnv::from_env() {
  LaunchEnv env;
  env.launched = env_string("WORLD_SIZE").has_value();
  env.world_size = env_int("WORLD_SIZE", 1);
  env.rank = env_int("RANK", 0);
  env.local_rank = env_int("LOCAL_RANK", env.rank);
  env.local_world_size = env_int("LOCAL_WORLD_SIZE", env.world_size);
  env.master_addr = env_string("MASTER_ADDR").value_or("127.0.0.1");
  env.master_port = env_int("MASTER_PORT", 29500);
  auto fail = [](const std::string& what) {
    throw std::invalid_argument("remat::distributed: " + what);
  };
  if (env.world_size < 1) fail("WORLD_SIZE=" + std::to_string(env.world_size) + " must be >= 1");
  if (env.rank < 0 || env.rank >= env.world_size) {
    fail("RANK=" + std::to_string(env.rank) +
         " must be in [0, WORLD_SIZE=" + std::to_string(env.world_size) + ")");
  }
  if (env.local_world_size < 1 || env.local_world_size > env.world_size) {
    fail("LOCAL_WORLD_SIZE=" + std::to_string(env.local_world_size) + " must be in [1, " +
         std::to_string(env.world_size) + "]");
  }
  if (env.local_rank < 0 || env.local_rank >= env.local_world_size) {
    fail("LOCAL_RANK=" + std::to_string(env.local_rank) +
         " must be in [0, LOCAL_WORLD_SIZE=" + std::to_string(env.local_world_size) + ")");
  }
  if (env.master_port < 1 || env.master_port > 65535) {
    fail("MASTER_PORT=" + std::to_string(env.master_port) + " must be in [1, 65535]");
  }
  return env;
}

Work::Work(c10::intrusive_ptr<c10d::Work> work, std::string what, int64_t rank,
           int64_t timeout_seconds)
    : work_(std::move(work)),
      what_(std::move(what)),
      rank_(rank),
      timeout_seconds_(timeout_seconds) {}

void Work::wait() {
  if (!work_.defined()) return;
  auto work = std::move(work_);
  work_.reset();
  try {
    work->wait(std::chrono::seconds(timeout_seconds_));
  } catch (const std::exception& e) {
    throw std::runtime_error("remat::distributed: rank " + std::to_string(rank_) + ": " + what_ +
                             " failed; a peer process died or did not take part within "
                             "ddp_timeout = " +
                             std::to_string(timeout_seconds_) + " s: " + e.what());
  }
}

struct ProcessGroup::State {
  c10::intrusive_ptr<c10d::Store> store;
  c10::intrusive_ptr<c10d::Backend> backend;
};

ProcessGroup::~ProcessGroup() {
  try {
    shutdown();
  } catch (const std::exception& e) {
    logger()->warn("remat::distributed: shutdown: {}", e.what());
  }
}

std::shared_ptr<ProcessGroup> ProcessGroup::create(const LaunchEnv& env,
                                                   const ProcessGroupOptions& options) {
  TORCH_CHECK(options.timeout_seconds() >= 1, "remat::distributed: timeout_seconds ",
              options.timeout_seconds(), " must be at least 1");
  const auto& requested = options.backend();
  TORCH_CHECK(requested == "auto" || requested == "nccl" || requested == "gloo",
              "remat::distributed: unknown backend \"", requested,
              "\"; valid: \"auto\", \"nccl\", \"gloo\"");
  std::shared_ptr<ProcessGroup> group(new ProcessGroup());
  group->env_ = env;
  group->timeout_seconds_ = options.timeout_seconds();
  if (options.device()) {
    group->device_ = *options.device();
  } else if (!options.use_cpu() && requested != "gloo" && torch::cuda::is_available()) {
    const auto count = static_cast<int64_t>(torch::cuda::device_count());
    TORCH_CHECK(env.local_rank < count, "remat::distributed: LOCAL_RANK ", env.local_rank,
                " but this node has ", count, " CUDA devices; launch at most ", count,
                " processes per node (torchrun --nproc-per-node)");
    group->device_ = torch::Device(torch::kCUDA, static_cast<c10::DeviceIndex>(env.local_rank));
  }
  group->backend_ = requested == "auto" ? (group->device_.is_cuda() ? "nccl" : "gloo") : requested;
  TORCH_CHECK(group->backend_ != "nccl" || group->device_.is_cuda(),
              "remat::distributed: the nccl backend needs a CUDA device, got ",
              group->device_.str());
  if (group->device_.is_cuda()) torch::cuda::synchronize(group->device_.index());

  const std::chrono::milliseconds timeout(options.timeout_seconds() * 1000);
  c10d::TCPStoreOptions store_options;
  store_options.port = static_cast<uint16_t>(env.master_port);
  // Under torchrun the agent already serves the store at MASTER_PORT.
  const bool agent_store = env_string("TORCHELASTIC_USE_AGENT_STORE").value_or("") == "True";
  store_options.isServer = env.rank == 0 && !agent_store;
  store_options.numWorkers = static_cast<size_t>(env.world_size);
  store_options.waitWorkers = true;
  store_options.timeout = timeout;
  auto state = std::make_unique<State>();
  try {
    state->store = c10::make_intrusive<c10d::TCPStore>(env.master_addr, store_options);
  } catch (const std::exception& e) {
    throw std::runtime_error(
        "remat::distributed: rank " + std::to_string(env.rank) + " could not reach the other " +
        std::to_string(env.world_size - 1) + " ranks at " + env.master_addr + ":" +
        std::to_string(env.master_port) +
        " within ddp_timeout = " + std::to_string(options.timeout_seconds()) + " s: " + e.what());
  }
  if (group->backend_ == "gloo") {
#ifndef REMAT_HAVE_GLOO
    TORCH_CHECK(false,
                "remat::distributed: the gloo backend was not built (no Gloo headers when remat "
                "was configured); install libgloo-dev, as scripts/setup.sh does, and reconfigure");
#else
    auto gloo = c10d::ProcessGroupGloo::Options::create(timeout);
    // Gloo's transport address: GLOO_SOCKET_IFNAME's interface when set (as
    // in PyTorch); the loopback when the run is on one host reached through
    // it; else this host's name.
    const bool loopback = env.master_addr == "127.0.0.1" || env.master_addr == "localhost";
    if (auto ifname = env_string("GLOO_SOCKET_IFNAME")) {
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForInterface(*ifname));
    } else if (loopback) {
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDeviceForHostname(env.master_addr));
    } else {
      gloo->devices.push_back(c10d::ProcessGroupGloo::createDefaultDevice());
    }
    state->backend = c10::make_intrusive<c10d::ProcessGroupGloo>(
        state->store, static_cast<int>(env.rank), static_cast<int>(env.world_size), gloo);
#endif
  } else {
    state->backend = detail::create_nccl_backend(state->store, env.rank, env.world_size, timeout);
  }
  group->state_ = std::move(state);
  logger()->info("remat::distributed: rank {} of {} on {} ({})", env.rank, env.world_size,
                 group->device_.str(), group->backend_);
  return group;
}

Work ProcessGroup::track(Collective kind, c10::intrusive_ptr<c10d::Work> work, const char* what) {
  ++counts_[static_cast<size_t>(kind)];
  return Work(std::move(work), what, env_.rank, timeout_seconds_);
}

namespace {
void check_live(const void* state, const char* what) {
  TORCH_CHECK(state != nullptr, "remat::distributed: ", what,
              " on a process group that was shut down");
}
}  // namespace

Work ProcessGroup::all_reduce(torch::Tensor tensor) {
  check_live(state_.get(), "all_reduce");
  std::vector<at::Tensor> tensors{std::move(tensor)};
  return track(Collective::kAllReduce, state_->backend->allreduce(tensors), "all_reduce");
}

Work ProcessGroup::all_gather(torch::Tensor output, torch::Tensor input) {
  check_live(state_.get(), "all_gather");
  TORCH_CHECK(output.numel() == input.numel() * world_size(), "remat::distributed: all_gather of ",
              input.numel(), " elements per rank needs an output of ", input.numel() * world_size(),
              ", got ", output.numel());
  std::vector<at::Tensor> outputs{std::move(output)}, inputs{std::move(input)};
  return track(Collective::kAllGather,
               state_->backend->allgather_into_tensor_coalesced(outputs, inputs), "all_gather");
}

Work ProcessGroup::reduce_scatter(torch::Tensor output, torch::Tensor input) {
  check_live(state_.get(), "reduce_scatter");
  TORCH_CHECK(input.numel() == output.numel() * world_size(),
              "remat::distributed: reduce_scatter into ", output.numel(),
              " elements per rank needs an input of ", output.numel() * world_size(), ", got ",
              input.numel());
  std::vector<at::Tensor> outputs{std::move(output)}, inputs{std::move(input)};
  return track(Collective::kReduceScatter,
               state_->backend->reduce_scatter_tensor_coalesced(outputs, inputs), "reduce_scatter");
}

void ProcessGroup::broadcast(torch::Tensor tensor, int64_t root) {
  check_live(state_.get(), "broadcast");
  std::vector<at::Tensor> tensors{std::move(tensor)};
  c10d::BroadcastOptions options;
  options.rootRank = root;
  track(Collective::kBroadcast, state_->backend->broadcast(tensors, options), "broadcast").wait();
}

void ProcessGroup::barrier() {
  check_live(state_.get(), "barrier");
  if (device_.is_cuda()) {
    // A barrier through a collective on the group's device (as NCCL needs).
    all_reduce(torch::zeros({1}, torch::TensorOptions().device(device_))).wait();
    --counts_[static_cast<size_t>(Collective::kAllReduce)];
    ++counts_[static_cast<size_t>(Collective::kBarrier)];
    return;
  }
  track(Collective::kBarrier, state_->backend->barrier(), "barrier").wait();
}

double ProcessGroup::all_reduce_sum(double value) {
  auto t = torch::full({1}, value, torch::TensorOptions().dtype(torch::kDouble).device(device_));
  all_reduce(t).wait();
  return t.item<double>();
}

void ProcessGroup::shutdown() {
  if (!state_) return;
  auto state = std::move(state_);
  state->backend->shutdown();
  state->backend.reset();
  state->store.reset();
}

}  // namespace remat::distributed
