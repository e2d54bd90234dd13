#include "remat/trainer.h"

#include <ATen/cuda/CUDAContext.h>

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <signal.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <condition_variable>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <mutex>
#include <optional>
#include <sstream>
#include <thread>
#include <unordered_set>

#include "detail/autocast.h"
#include "detail/grad_norm.h"
#include "remat/callbacks.h"
#include "remat/data/data_collator.h"
#include "remat/data/distributed_sampler.h"
#include "remat/distributed/data_parallel.h"
#include "remat/distributed/process_group.h"
#include "remat/flops.h"
#include "remat/grad_scaler.h"
#include "remat/io/safetensors.h"
#include "remat/logging.h"
#include "remat/memory.h"
#include "remat/memory_plan.h"
#include "remat/models/causal_lm.h"
#include "remat/nn/checkpointable.h"
#include "remat/optim/adamw.h"
#include "remat/optim/lr_scheduler.h"
#include "remat/tensorboard.h"

namespace remat {
namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

double seconds_since(Clock::time_point start) {
  return std::chrono::duration<double>(Clock::now() - start).count();
}

// A value for a message: "nan" whatever its sign bit.
std::string number_text(double value) {
  if (std::isnan(value)) return "nan";
  std::ostringstream out;
  out << value;
  return out.str();
}

// Python's round(x, digits), for transformers' speed metrics.
double round_to(double x, int digits) {
  const double scale = std::pow(10.0, digits);
  return std::nearbyint(x * scale) / scale;
}

// The forward's autocast: bf16 or fp16 as the arguments ask, else none.
std::optional<detail::AutocastGuard> mixed_precision(const TrainingArguments& args,
                                                     c10::DeviceType device) {
  if (!args.bf16 && !args.fp16) return std::nullopt;
  return std::optional<detail::AutocastGuard>(
      std::in_place,
      detail::AutocastState::enabled_for(device, args.bf16 ? at::kBFloat16 : at::kHalf));
}

torch::Device pick_device(const TrainingArguments& args) {
  if (!args.use_cpu && torch::cuda::is_available()) return torch::Device(torch::kCUDA, 0);
  return torch::Device(torch::kCPU);
}

// Target tokens of a causal-LM batch: labels shifted by one, -100 ignored.
// Counted on the collator's (host) tensors, so no device synchronization.
int64_t target_tokens(const data::Batch& batch) {
  const auto& labels = batch.labels;
  if (!labels.defined() || labels.dim() < 2 || labels.size(1) < 2) return 0;
  return (labels.narrow(1, 1, labels.size(1) - 1) != data::kIgnoreIndex).sum().item<int64_t>();
}

// Non-padding input tokens (state.num_input_tokens_seen).
int64_t input_tokens(const data::Batch& batch) {
  if (batch.attention_mask.defined()) return batch.attention_mask.sum().item<int64_t>();
  return batch.input_ids.defined() ? batch.input_ids.numel() : 0;
}

// The vocabulary size of a remat causal LM (0 for other models).
int64_t vocab_size_of(const torch::nn::Module& model) {
  auto* lm = dynamic_cast<const models::CausalLMImpl*>(&model);
  return lm != nullptr ? lm->config().vocab_size : 0;
}

// Every input id, and every label but the ignore index, is a token of the
// model: checked on the collator's host tensors (on CUDA a bad id is a device
// assert or a NaN loss). `where` names the batch ("step 3, micro-batch 1").
void check_vocabulary(const data::Batch& batch, int64_t vocab_size, const std::string& where) {
  if (vocab_size <= 0) return;
  auto first_outside = [vocab_size](const torch::Tensor& ids, bool labels) {
    auto bad = (ids < 0).logical_or(ids >= vocab_size);
    if (labels) bad.logical_and_(ids != data::kIgnoreIndex);
    return bad.any().item<bool>() ? bad.flatten().nonzero()[0].item<int64_t>() : int64_t{-1};
  };
  for (bool labels : {false, true}) {
    const auto& ids = labels ? batch.labels : batch.input_ids;
    if (!ids.defined() || !ids.device().is_cpu() || ids.dim() != 2) continue;
    const int64_t at = first_outside(ids, labels);
    if (at < 0) continue;
    const int64_t row = at / ids.size(1), column = at % ids.size(1);
    TORCH_CHECK(false, "Trainer: example ", row, " of the batch of ", where, " has ",
                labels ? "label " : "input id ", ids[row][column].item<int64_t>(), " at position ",
                column, "; the model's vocab_size is ", vocab_size, ", so ids must be in [0, ",
                vocab_size, ")", labels ? " (or -100, ignored)" : "",
                ". Is the tokenizer the model's (one with more tokens than the model's "
                "embedding)?");
  }
}

// HF's interval fields: a value below 1 is a fraction of the total steps.
int64_t steps_from(double value, int64_t total) {
  if (value >= 1) return static_cast<int64_t>(value);
  return std::max<int64_t>(1, static_cast<int64_t>(std::ceil(value * total)));
}

// warmup_steps below 1 is a fraction of the total, rounded up (HF's
// get_warmup_steps).
int64_t warmup_steps(double value, int64_t total) {
  if (value >= 1) return static_cast<int64_t>(value);
  return static_cast<int64_t>(std::ceil(value * total));
}

int64_t pad_token_of(const torch::nn::Module& model) {
  if (auto* lm = dynamic_cast<const models::CausalLMImpl*>(&model)) {
    const auto& c = lm->config();
    if (c.pad_token_id) return *c.pad_token_id;
    if (!c.eos_token_ids.empty()) return c.eos_token_ids.front();
  }
  return 0;
}

// transformers' num_parameters(exclude_embeddings=True): every distinct
// parameter but the weights of embedding modules. Its floating_point_ops is
// 6 x this x input tokens.
int64_t non_embedding_parameters(const torch::nn::Module& model) {
  std::unordered_set<const void*> embeddings, seen;
  for (const auto& module : model.modules()) {
    if (auto* e = dynamic_cast<const torch::nn::EmbeddingImpl*>(module.get())) {
      embeddings.insert(e->weight.unsafeGetTensorImpl());
    }
  }
  int64_t total = 0;
  for (const auto& p : model.parameters()) {
    const void* impl = p.unsafeGetTensorImpl();
    if (embeddings.count(impl) == 0 && seen.insert(impl).second) total += p.numel();
  }
  return total;
}

// ---------------------------------------------------------------------------
// Files

// File-system helpers on POSIX calls: the pip LibTorch exports its own copies
// of std::filesystem operations, and some of them misbehave when linked.
bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

bool is_file(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

void make_directory(const std::string& path) {
  TORCH_CHECK(::mkdir(path.c_str(), 0755) == 0 || errno == EEXIST, "Trainer: cannot create ", path,
              ": ", std::strerror(errno));
}

void remove_tree(const std::string& path) {
  if (!is_directory(path)) return;
  auto remove_entry = [](const char* entry, const struct stat*, int, struct FTW*) {
    return ::remove(entry);
  };
  TORCH_CHECK(::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS) == 0,
              "Trainer: cannot remove ", path, ": ", std::strerror(errno));
}

void fsync_path(const std::string& path, int flags) {
  int fd = ::open(path.c_str(), flags);
  TORCH_CHECK(fd >= 0, "Trainer: cannot open ", path, ": ", std::strerror(errno));
  const int rc = ::fsync(fd);
  ::close(fd);
  TORCH_CHECK(rc == 0, "Trainer: fsync of ", path, " failed: ", std::strerror(errno));
}

// Flushes every file of `dir` and the directory itself to disk.
void fsync_tree(const std::string& dir) {
  auto sync_entry = [](const char* entry, const struct stat* st, int, struct FTW*) {
    fsync_path(entry, S_ISDIR(st->st_mode) ? O_RDONLY | O_DIRECTORY : O_RDONLY);
    return 0;
  };
  TORCH_CHECK(::nftw(dir.c_str(), sync_entry, 16, FTW_PHYS) == 0, "Trainer: cannot sync ", dir);
}

std::vector<std::string> list_directory(const std::string& dir) {
  std::vector<std::string> names;
  DIR* handle = ::opendir(dir.c_str());
  if (handle == nullptr) return names;
  while (auto* entry = ::readdir(handle)) names.emplace_back(entry->d_name);
  ::closedir(handle);
  return names;
}

// checkpoint-<step> directories of `dir`, oldest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> result;
  const std::string prefix = "checkpoint-";
  for (const auto& name : list_directory(dir)) {
    if (name.rfind(prefix, 0) != 0) continue;
    auto digits = name.substr(prefix.size());
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    result.emplace_back(std::stoll(digits), dir + "/" + name);
  }
  std::sort(result.begin(), result.end());
  return result;
}

void rename_path(const std::string& from, const std::string& to) {
  TORCH_CHECK(::rename(from.c_str(), to.c_str()) == 0, "Trainer: cannot rename ", from, " to ", to,
              ": ", std::strerror(errno));
}

void fsync_directory(const std::string& dir) { fsync_path(dir, O_RDONLY | O_DIRECTORY); }

// Written last into a temporary checkpoint directory, after every other file
// is on disk: the directory is a complete checkpoint. It stays in
// checkpoint-<step> after the rename.
constexpr const char* kCompleteMarker = ".checkpoint-complete";

// Deletes a checkpoint directory without ever leaving a half-deleted one
// under a name resume reads: it is renamed to `.trash-<name>-<pid>` first,
// a name train() removes when it starts.
void delete_checkpoint(const std::string& output_dir, const std::string& name, int64_t pid) {
  const std::string trash = output_dir + "/.trash-" + name + "-" + std::to_string(pid);
  remove_tree(trash);
  rename_path(output_dir + "/" + name, trash);
  fsync_directory(output_dir);
  remove_tree(trash);
}

// The hidden directories of interrupted saves and deletions:
// `.tmp-checkpoint-<step>-<pid>` (a checkpoint being written, complete once
// it holds kCompleteMarker) and `.trash-checkpoint-<step>-<pid>` (a
// checkpoint being deleted). Those of a live process (another run writing
// into the same output_dir) are left alone. A complete temporary checkpoint
// whose checkpoint-<step> is missing (killed between the renames that
// replace a checkpoint) is renamed into place, being the only complete
// copy; the others are removed. In a distributed run the pid is rank 0's, and
// only rank 0 calls this.
void recover_interrupted_saves(const std::string& dir) {
  for (const auto& name : list_directory(dir)) {
    const bool tmp = name.rfind(".tmp-checkpoint-", 0) == 0;
    if (!tmp && name.rfind(".trash-checkpoint-", 0) != 0) continue;
    const auto dash = name.rfind('-');
    const auto digits = name.substr(dash + 1);
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    const auto pid = static_cast<pid_t>(std::stoll(digits));
    const bool alive = pid != ::getpid() && (::kill(pid, 0) == 0 || errno == EPERM);
    if (alive) continue;
    const std::string path = dir + "/" + name;
    if (tmp) {
      const std::string final_dir =
          dir + "/" + name.substr(std::string(".tmp-").size(), dash - std::string(".tmp-").size());
      if (is_file(path + "/" + kCompleteMarker) && !is_directory(final_dir)) {
        rename_path(path, final_dir);
        fsync_directory(dir);
        logger()->info("renamed {} to {}: a complete checkpoint whose save was interrupted", path,
                       final_dir);
        continue;
      }
    }
    remove_tree(path);
    logger()->info("removed {}, {}", path,
                   tmp ? "a checkpoint whose save did not finish"
                       : "a checkpoint whose deletion did not finish");
  }
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in, "Trainer: cannot read ", path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

json read_json(const std::string& path) {
  try {
    return json::parse(read_file(path));
  } catch (const json::parse_error& e) {
    TORCH_CHECK(false, "Trainer: ", path, " is not valid JSON: ", e.what());
  }
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path);
  out << content;
  out.close();
  TORCH_CHECK(out.good(), "Trainer: cannot write ", path);
}

std::vector<torch::Tensor> rng_states() {
  std::vector<torch::Tensor> states{at::detail::getDefaultCPUGenerator().get_state()};
  for (c10::DeviceIndex i = 0; i < static_cast<c10::DeviceIndex>(torch::cuda::device_count());
       ++i) {
    states.push_back(at::globalContext().defaultGenerator(c10::Device(c10::kCUDA, i)).get_state());
  }
  return states;
}

void set_rng_states(const std::vector<torch::Tensor>& states) {
  TORCH_CHECK(!states.empty(), "Trainer: the checkpoint's rng_state.pt is empty");
  at::Generator cpu = at::detail::getDefaultCPUGenerator();
  cpu.set_state(states[0]);
  const auto cuda = static_cast<size_t>(torch::cuda::device_count());
  TORCH_CHECK(states.size() == 1 || states.size() == cuda + 1, "Trainer: the checkpoint holds ",
              states.size() - 1, " CUDA generator states but this machine has ", cuda,
              " CUDA devices");
  for (size_t i = 1; i < states.size(); ++i) {
    auto gen = at::globalContext().defaultGenerator(
        c10::Device(c10::kCUDA, static_cast<c10::DeviceIndex>(i - 1)));
    gen.set_state(states[i]);
  }
}

// Runs `read`, which reads the checkpoint file `path`; an error names the
// file and what it should have held.
template <typename Read>
void read_checkpoint_file(const std::string& path, const std::string& holds, Read read) {
  try {
    read();
  } catch (const c10::Error& e) {
    TORCH_CHECK(false, "Trainer: cannot resume from ", path, ", which should hold ", holds, ": ",
                e.what_without_backtrace());
  } catch (const std::exception& e) {
    TORCH_CHECK(false, "Trainer: cannot resume from ", path, ", which should hold ", holds, ": ",
                e.what());
  }
}

// ---------------------------------------------------------------------------
// SIGINT and SIGTERM

// The signal that asked train() to stop, 0 for none. A lock-free atomic, not
// a volatile sig_atomic_t: the handler may run on any thread (the data
// loader's workers too), and lock-free atomics are safe in signal handlers.
std::atomic<int> g_stop_signal{0};
static_assert(std::atomic<int>::is_always_lock_free);

void on_stop_signal(int signal) {
  int none = 0;
  if (g_stop_signal.compare_exchange_strong(none, signal)) return;
  // The second signal: the default action (termination), at once. The
  // signal is blocked while its handler runs, so the re-raised one is
  // delivered when the handler returns.
  struct sigaction dfl {};
  dfl.sa_handler = SIG_DFL;
  sigemptyset(&dfl.sa_mask);
  ::sigaction(signal, &dfl, nullptr);
  ::raise(signal);
}

// Installs on_stop_signal for SIGINT and SIGTERM for its lifetime and puts the
// previous handlers back after. Nested (or concurrent) train() calls share
// one installation. A signal the process ignores (SIG_IGN, as for background
// jobs started with nohup) stays ignored.
class StopSignals {
 public:
  StopSignals() {
    std::lock_guard<std::mutex> lock(mutex());
    if (depth()++ > 0) return;
    g_stop_signal = 0;
    for (auto& slot : slots()) {
      struct sigaction current {};
      ::sigaction(slot.signal, nullptr, &current);
      slot.installed = !((current.sa_flags & SA_SIGINFO) == 0 && current.sa_handler == SIG_IGN);
      if (!slot.installed) continue;
      struct sigaction handler {};
      handler.sa_handler = on_stop_signal;
      sigemptyset(&handler.sa_mask);
      sigaddset(&handler.sa_mask, SIGINT);
      sigaddset(&handler.sa_mask, SIGTERM);
      handler.sa_flags = SA_RESTART;  // file writes in progress carry on
      ::sigaction(slot.signal, &handler, &slot.previous);
    }
  }
  ~StopSignals() {
    std::lock_guard<std::mutex> lock(mutex());
    if (--depth() > 0) return;
    for (auto& slot : slots()) {
      if (slot.installed) ::sigaction(slot.signal, &slot.previous, nullptr);
    }
  }
  StopSignals(const StopSignals&) = delete;
  StopSignals& operator=(const StopSignals&) = delete;

 private:
  struct Slot {
    int signal;
    bool installed;
    struct sigaction previous;
  };
  static std::mutex& mutex() {
    static std::mutex m;
    return m;
  }
  static int& depth() {
    static int d = 0;
    return d;
  }
  static std::array<Slot, 2>& slots() {
    static std::array<Slot, 2> s{Slot{SIGINT, false, {}}, Slot{SIGTERM, false, {}}};
    return s;
  }
};

std::string signal_name(int signal) {
  if (signal == SIGINT) return "SIGINT";
  if (signal == SIGTERM) return "SIGTERM";
  return "signal " + std::to_string(signal);
}

}  // namespace

// ---------------------------------------------------------------------------
// Memory metrics

// transformers' TrainerMemoryTracker: for each stage (init, train, eval) the
// change of allocated memory over the stage and how far the peak inside it
// rose above the end, on the CPU (remat::memory_allocated: the C heap) and on
// the CUDA device. Nested stages (an evaluation during training) are not
// measured on their own. The CPU peak is sampled by a thread every
// millisecond and by the training loop after each forward and backward.
class Trainer::MemoryTracker {
 public:
  explicit MemoryTracker(torch::Device device) : device_(device) {}
  ~MemoryTracker() { stop_sampling(); }

  void start(const std::string& stage) {
    if (!current_.empty()) return;
    current_ = stage;
    Figures& f = figures_[stage];
    if (device_.is_cuda()) {
      reset_peak_memory_stats(device_);
      f.gpu_begin = memory_allocated(device_);
    }
    f.cpu_begin = memory_allocated(torch::kCPU);
    cpu_peak_ = f.cpu_begin;
    sampling_ = true;
    sampler_ = std::thread([this] {
      std::unique_lock<std::mutex> lock(mutex_);
      while (sampling_) {
        sample();
        wake_.wait_for(lock, std::chrono::milliseconds(1));
      }
    });
  }

  // Records the current CPU figure in the peak.
  void sample() {
    const int64_t now = memory_allocated(torch::kCPU);
    int64_t peak = cpu_peak_.load();
    while (now > peak && !cpu_peak_.compare_exchange_weak(peak, now)) {
    }
  }

  void stop(const std::string& stage) {
    if (current_ != stage) return;
    stop_sampling();
    sample();
    Figures& f = figures_[stage];
    f.cpu_end = memory_allocated(torch::kCPU);
    f.cpu_peak = cpu_peak_.load();
    if (device_.is_cuda()) {
      f.gpu_end = memory_allocated(device_);
      f.gpu_peak = max_memory_allocated(device_);
    }
    f.done = true;
    current_.clear();
  }

  // stop(), then the stage's figures (and, the first time, init's) into
  // `metrics` under transformers' names.
  void stop_and_update(const std::string& stage, std::map<std::string, double>& metrics) {
    if (!current_.empty() && current_ != stage) return;
    stop(stage);
    std::vector<std::string> stages{stage};
    if (!init_reported_ && figures_.count("init") && figures_["init"].done) {
      stages.insert(stages.begin(), "init");
      init_reported_ = true;
    }
    for (const auto& name : stages) {
      const Figures& f = figures_[name];
      if (!f.done) continue;
      metrics[name + "_mem_cpu_alloc_delta"] = static_cast<double>(f.cpu_end - f.cpu_begin);
      metrics[name + "_mem_cpu_peaked_delta"] =
          static_cast<double>(std::max<int64_t>(0, f.cpu_peak - f.cpu_end));
      if (device_.is_cuda()) {
        metrics[name + "_mem_gpu_alloc_delta"] = static_cast<double>(f.gpu_end - f.gpu_begin);
        metrics[name + "_mem_gpu_peaked_delta"] =
            static_cast<double>(std::max<int64_t>(0, f.gpu_peak - f.gpu_end));
      }
    }
    if (stages.front() == "init") {
      metrics["before_init_mem_cpu"] = static_cast<double>(figures_["init"].cpu_begin);
      if (device_.is_cuda())
        metrics["before_init_mem_gpu"] = static_cast<double>(figures_["init"].gpu_begin);
    }
  }

 private:
  struct Figures {
    int64_t cpu_begin = 0, cpu_end = 0, cpu_peak = 0;
    int64_t gpu_begin = 0, gpu_end = 0, gpu_peak = 0;
    bool done = false;
  };

  void stop_sampling() {
    {
      std::lock_guard<std::mutex> lock(mutex_);
      sampling_ = false;
    }
    wake_.notify_all();
    if (sampler_.joinable()) sampler_.join();
  }

  torch::Device device_;
  std::string current_;
  std::map<std::string, Figures> figures_;
  bool init_reported_ = false;
  std::atomic<int64_t> cpu_peak_{0};
  std::mutex mutex_;
  std::condition_variable wake_;
  bool sampling_ = false;
  std::thread sampler_;
};

// ---------------------------------------------------------------------------
// The state of one train() call

// What remat needs beyond trainer_state.json to resume exactly; saved as
// remat_state.json in every checkpoint.
struct Trainer::Position {
  int64_t epoch = 0;             // the epoch being trained
  int64_t batches_in_epoch = 0;  // batches of that epoch already used
  int64_t skipped_steps = 0;     // optimizer steps without an update (fp16 overflow, non-finite)
  double loss_since_log = 0;     // loss of the steps since the last log line (summed)
  int64_t loss_steps_since_log = 0;
  int64_t last_logged_step = 0;

  json to_json() const {
    return {{"format", 1},
            {"epoch_index", epoch},
            {"batches_in_epoch", batches_in_epoch},
            {"skipped_steps", skipped_steps},
            {"loss_since_log", loss_since_log},
            {"loss_steps_since_log", loss_steps_since_log},
            {"last_logged_step", last_logged_step}};
  }
  static Position from_json(const json& j, const std::string& path) {
    TORCH_CHECK(j.is_object() && j.value("format", 0) == 1, "Trainer: ", path,
                " is not a remat_state.json this remat reads");
    Position p;
    try {
      p.epoch = j.at("epoch_index").get<int64_t>();
      p.batches_in_epoch = j.at("batches_in_epoch").get<int64_t>();
      p.skipped_steps = j.at("skipped_steps").get<int64_t>();
      p.loss_since_log = j.at("loss_since_log").get<double>();
      p.loss_steps_since_log = j.at("loss_steps_since_log").get<int64_t>();
      p.last_logged_step = j.at("last_logged_step").get<int64_t>();
    } catch (const json::exception& e) {
      TORCH_CHECK(false, "Trainer: ", path, " is incomplete: ", e.what());
    }
    return p;
  }
};

struct Trainer::Run {
  torch::optim::Optimizer* optimizer = nullptr;
  optim::LRScheduler* scheduler = nullptr;
  GradScaler* scaler = nullptr;  // fp16 only
  std::vector<torch::Tensor> params;

  Position pos;
  int64_t batches = 0;      // per epoch
  int64_t total_steps = 0;  // max_steps of the run
  int64_t epochs = 0;
  double flops_per_token = 0;  // transformers' total_flos: 6 x non-embedding parameters
  // The MFU numerator, CausalLM::training_flops_per_token(seq), which is
  // mfu_flops_at_0 + mfu_flops_per_position x seq; 6 x non-embedding
  // parameters per token for other models.
  double mfu_flops_at_0 = 0, mfu_flops_per_position = 0;
  std::optional<double> peak_flops;

  Clock::time_point start_time;
  int64_t initial_global_step = 0;
  // Loss of the steps since the last log line, summed on the device (read
  // back only when logging or saving); pos.loss_steps_since_log counts them.
  torch::Tensor loss_since_log;
  // This call's logged loss and steps, for train_loss.
  double loss_total = 0;
  int64_t loss_total_steps = 0;
  torch::Tensor grad_norm;   // of the last step
  double learning_rate = 0;  // the last step's
  Clock::time_point log_start;
  int64_t steps_since_log = 0, tokens_since_log = 0;
  double model_flops_since_log = 0;  // of every rank's tokens

  int64_t world = 1;         // processes training together
  bool stop_agreed = false;  // distributed: some rank asked to stop at this step

  int64_t last_update_step = 0;  // the last step whose update was applied

  bool interrupted = false;
  std::string checkpoint;  // the last one saved
  int64_t checkpoint_step = -1;
};

// ---------------------------------------------------------------------------
// Trainer

Trainer::Trainer(std::shared_ptr<torch::nn::Module> model, TrainingArguments args,
                 std::shared_ptr<const data::Dataset> train_dataset,
                 std::shared_ptr<const data::Dataset> eval_dataset, data::CollateFn collator,
                 Callbacks callbacks)
    : model_(std::move(model)),
      args_(std::move(args)),
      train_dataset_(std::move(train_dataset)),
      eval_dataset_(std::move(eval_dataset)),
      collator_(std::move(collator)),
      device_(pick_device(args_)) {
  TORCH_CHECK(model_ != nullptr, "Trainer: model is null");
  args_.validate();
  TORCH_CHECK(args_.eval_strategy == "no" || eval_dataset_ != nullptr, "Trainer: eval_strategy \"",
              args_.eval_strategy,
              "\" needs an eval dataset; pass one or set eval_strategy \"no\"");
  // Started by torchrun: join the group and train on its device.
  if (auto env = distributed::LaunchEnv::from_env(); env.launched) {
    group_ = distributed::ProcessGroup::create(env, distributed::ProcessGroupOptions()
                                                        .use_cpu(args_.use_cpu)
                                                        .timeout_seconds(args_.ddp_timeout));
    device_ = group_->device();
  }
  TORCH_CHECK(group_ || !args_.fsdp || args_.fsdp->empty(), "Trainer: fsdp \"",
              args_.fsdp.value_or(""),
              "\" needs a distributed launch; start the program with torchrun (see "
              "docs/distributed.md), --nproc-per-node 1 for one process");
  checkpoint_pid_ = ::getpid();
  if (group_) {
    auto pid = torch::full({1}, checkpoint_pid_, torch::dtype(torch::kLong).device(device_));
    group_->broadcast(pid, 0);
    checkpoint_pid_ = pid.item<int64_t>();
  }
  set_process_flags();
  if (!args_.skip_memory_metrics) {
    memory_ = std::make_shared<MemoryTracker>(device_);
    memory_->start("init");
  }
  if (!collator_) {
    collator_ =
        data::DataCollatorForCausalLM(data::DataCollatorForCausalLMOptions(pad_token_of(*model_)));
  }
  add_default_callbacks();
  for (auto& callback : callbacks) add_callback(std::move(callback));
  model_->to(device_);
  if (memory_) memory_->stop("init");
  call_callbacks([&](TrainerCallback& c) { c.on_init_end(args_, state_, control_); });
}

bool Trainer::is_main_process() const { return !group_ || group_->rank() == 0; }

// transformers' process flags: callbacks that report (TensorBoard, the
// progress bar, the start-up table) act on rank 0 only.
void Trainer::set_process_flags() {
  state_.is_world_process_zero = !group_ || group_->rank() == 0;
  state_.is_local_process_zero = !group_ || group_->local_rank() == 0;
}

// The Trainer's own callbacks, registered before the user's, in one place:
// the reporting integrations (report_to) and the progress display belong
// here too.
void Trainer::add_default_callbacks() {
  callbacks_.push_back(std::make_shared<DefaultFlowCallback>());
  progress_ = std::make_shared<ProgressCallback>();
  callbacks_.push_back(progress_);
  const auto& report = args_.report_to;
  if (std::find(report.begin(), report.end(), "tensorboard") != report.end()) {
    callbacks_.push_back(std::make_shared<TensorBoardCallback>());
  }
}

bool Trainer::bar_shown() const {
  return progress_ != nullptr && progress_->enabled(args_) && state_.is_world_process_zero;
}

void Trainer::say(const std::string& line) const {
  if (bar_shown()) {
    progress_->write(line);
  } else {
    logger()->info("{}", line);
  }
}

void Trainer::add_callback(std::shared_ptr<TrainerCallback> callback) {
  TORCH_CHECK(callback != nullptr, "Trainer::add_callback: the callback is null");
  callbacks_.push_back(std::move(callback));
}

bool Trainer::remove_callback(const std::shared_ptr<TrainerCallback>& callback) {
  auto it = std::find(callbacks_.begin(), callbacks_.end(), callback);
  if (it == callbacks_.end()) return false;
  callbacks_.erase(it);
  return true;
}

template <typename Hook>
void Trainer::call_callbacks(Hook hook) {
  // A copy: a callback may add or remove callbacks.
  const Callbacks callbacks = callbacks_;
  for (const auto& callback : callbacks) hook(*callback);
}

torch::Tensor Trainer::compute_loss(torch::nn::Module& model, const data::Batch& batch,
                                    int64_t num_items_in_batch) {
  auto* lm = dynamic_cast<models::CausalLMImpl*>(&model);
  TORCH_CHECK(lm != nullptr,
              "Trainer: the model is not a remat causal LM; override Trainer::compute_loss");
  models::CausalLMInputs in;
  in.input_ids = batch.input_ids;
  if (batch.has_padding) in.attention_mask = batch.attention_mask;
  in.labels = batch.labels;
  in.num_items_in_batch = std::max<int64_t>(num_items_in_batch, 1);
  return lm->forward(in).loss;
}

// transformers' Trainer.log: the epoch is added, the record (with the step)
// goes into the history, and on_log sees it.
void Trainer::log(json logs) {
  logs["epoch"] = state_.epoch;
  logs["step"] = state_.global_step;
  state_.log_history.push_back(logs);
  const auto& report = args_.report_to;
  if (is_main_process() && std::find(report.begin(), report.end(), "jsonl") != report.end()) {
    std::filesystem::create_directories(args_.output_dir);
    std::ofstream out(args_.output_dir + "/log.jsonl", std::ios::app);
    TORCH_CHECK(out, "Trainer: cannot append to ", args_.output_dir, "/log.jsonl");
    out << logs.dump() << "\n";
  }
  control_.should_log = false;
  call_callbacks([&](TrainerCallback& c) { c.on_log(args_, state_, control_, logs); });
}

void Trainer::save_model(const std::string& output_dir) const {
  if (auto* lm = dynamic_cast<const models::CausalLMImpl*>(model_.get())) {
    lm->save_pretrained(output_dir);
    return;
  }
  torch::serialize::OutputArchive archive;
  model_->save(archive);
  archive.save_to(output_dir + "/model.pt");
}

void Trainer::load_model(const std::string& dir) {
  if (auto* lm = dynamic_cast<models::CausalLMImpl*>(model_.get())) {
    lm->load_hf_state_dict(io::load_model_weights(dir));
    return;
  }
  torch::serialize::InputArchive archive;
  archive.load_from(dir + "/model.pt", device_);
  model_->load(archive);
}

void Trainer::save_model_files(const std::string& dir) {
  if (parallel_) parallel_->gather_full_parameters();
  if (is_main_process()) save_model(dir);
  if (parallel_) parallel_->release_full_parameters(/*loaded=*/false);
  if (group_) group_->barrier();
}

std::string Trainer::optimizer_file() const {
  if (!parallel_ || !parallel_->sharded_optimizer_state()) return "optimizer.pt";
  return "optimizer.rank" + std::to_string(group_->rank()) + ".pt";
}

// Nothing non-finite is saved: an update that overflowed the weights (too
// high a learning rate) ends training with the step and the parameter. One
// host synchronization per save; a collective in a distributed run (FSDP
// shards differ between the ranks).
void Trainer::check_parameters_finite(const Run& run, const std::string& what) {
  if (run.params.empty()) return;
  std::vector<torch::Tensor> nonfinite;
  nonfinite.reserve(run.params.size());
  for (const auto& p : run.params) {
    nonfinite.push_back(p.detach().isfinite().logical_not().any().to(torch::kDouble));
  }
  auto flags = torch::stack(nonfinite);
  if (group_) {
    flags = flags.to(group_->device());
    group_->all_reduce(flags).wait();
  }
  flags = flags.cpu();
  const auto* bad = flags.data_ptr<double>();
  const auto first = std::find_if(bad, bad + flags.numel(), [](double v) { return v > 0; });
  if (first == bad + flags.numel()) return;
  const auto index = static_cast<size_t>(first - bad);
  std::string name = "#" + std::to_string(index) + " of the optimizer";
  for (const auto& p : model_->named_parameters()) {
    if (p.value().unsafeGetTensorImpl() == run.params[index].unsafeGetTensorImpl()) name = p.key();
  }
  TORCH_CHECK(false, "Trainer: parameter \"", name, "\" is not finite after the update of step ",
              run.last_update_step, ", so ", what,
              " is not saved; lower the learning rate (learning_rate ", args_.learning_rate,
              ") or the gradient norm (max_grad_norm ", args_.max_grad_norm, ")");
}

// A collective in a distributed run: every rank writes into one temporary
// directory named with rank 0's pid (rank 0 the model and the state files,
// every rank its optimizer shard under FSDP), and rank 0 renames and prunes.
void Trainer::save_checkpoint(Run& run) {
  const std::string name = "checkpoint-" + std::to_string(state_.global_step);
  const std::string final_dir = args_.output_dir + "/" + name;
  const std::string tmp =
      args_.output_dir + "/.tmp-" + name + "-" + std::to_string(checkpoint_pid_);
  const bool main = is_main_process();
  check_parameters_finite(run, final_dir);
  if (main) {
    remove_tree(tmp);
    make_directory(tmp);
  }
  if (group_) group_->barrier();  // the directory exists for every rank
  save_model_files(tmp);
  const bool sharded = parallel_ && parallel_->sharded_optimizer_state();
  if (main || sharded) {
    const std::string file = tmp + "/" + optimizer_file();
    torch::serialize::OutputArchive archive;
    run.optimizer->save(archive);
    archive.save_to(file);
    if (!main) fsync_path(file, O_RDONLY);  // rank 0 flushes the rest
  }
  // The same on every rank: the step losses are summed over the ranks.
  Position position = run.pos;
  position.loss_since_log = run.loss_since_log.item<double>();
  if (group_) group_->barrier();  // every rank's files are written
  if (main) {
    write_file(tmp + "/scheduler.json", run.scheduler->state().to_json().dump(2));
    torch::save(rng_states(), tmp + "/rng_state.pt");
    if (run.scaler) write_file(tmp + "/scaler.json", run.scaler->state_dict().dump(2));
    state_.stateful_callbacks["TrainerControl"] = control_.state();
    write_file(tmp + "/trainer_state.json", state_.to_json_string());
    json remat_state = position.to_json();
    remat_state["world_size"] = run.world;
    write_file(tmp + "/remat_state.json", remat_state.dump(2));
    args_.to_json_file(tmp + "/training_args.json");
    // Only a complete checkpoint ever carries the final name: write aside,
    // flush, mark complete, then rename. A checkpoint of the same step
    // (saved again after resuming from an earlier one) is renamed out of the
    // way first and deleted after, so a kill at any point leaves a complete
    // copy: the old one, or the marked temporary one that the next start
    // renames into place.
    fsync_tree(tmp);
    write_file(tmp + "/" + kCompleteMarker, "");
    fsync_path(tmp + "/" + kCompleteMarker, O_RDONLY);
    fsync_directory(tmp);
    const std::string trash =
        args_.output_dir + "/.trash-" + name + "-" + std::to_string(checkpoint_pid_);
    const bool replacing = is_directory(final_dir);
    if (replacing) {
      remove_tree(trash);
      rename_path(final_dir, trash);
    }
    rename_path(tmp, final_dir);
    fsync_directory(args_.output_dir);
    if (replacing) remove_tree(trash);
    say("saved " + final_dir);
    if (args_.save_total_limit) {
      auto checkpoints = list_checkpoints(args_.output_dir);
      const auto limit = static_cast<size_t>(*args_.save_total_limit);
      for (size_t i = 0; i + limit < checkpoints.size(); ++i) {
        const auto& path = checkpoints[i].second;
        delete_checkpoint(args_.output_dir, path.substr(path.rfind('/') + 1), checkpoint_pid_);
      }
    }
  } else {
    state_.stateful_callbacks["TrainerControl"] = control_.state();
  }
  if (group_) group_->barrier();  // the checkpoint is complete
  run.checkpoint = final_dir;
  run.checkpoint_step = state_.global_step;
  control_.should_save = false;
  call_callbacks([&](TrainerCallback& c) { c.on_save(args_, state_, control_, final_dir); });
}

void Trainer::resume(const std::string& requested, Run& run) {
  std::string dir = requested;
  if (requested == "latest") {
    auto checkpoints = list_checkpoints(args_.output_dir);
    TORCH_CHECK(!checkpoints.empty(), "Trainer: resume_from_checkpoint \"latest\" but ",
                args_.output_dir, " holds no checkpoint-<step> directory");
    dir = checkpoints.back().second;
  }
  TORCH_CHECK(is_directory(dir), "Trainer: resume_from_checkpoint ", dir, " is not a directory");
  TORCH_CHECK(is_file(dir + "/remat_state.json"), "Trainer: ", dir,
              " has no remat_state.json, so it cannot be resumed exactly (it was not written by "
              "this version of remat's Trainer)");
  const json remat_state = read_json(dir + "/remat_state.json");
  const int64_t saved_world = remat_state.value("world_size", int64_t{1});
  TORCH_CHECK(saved_world == run.world, "Trainer: checkpoint ", dir, " was written by ",
              saved_world, " process", saved_world == 1 ? "" : "es", " but this run has ",
              run.world, "; resume with the same number of processes (torchrun --nproc-per-node)");
  // Under FSDP the full parameters take the loaded values, then the shards.
  if (parallel_) parallel_->gather_full_parameters();
  load_model(dir);
  if (parallel_) parallel_->release_full_parameters(/*loaded=*/true);
  const std::string optimizer_path = dir + "/" + optimizer_file();
  TORCH_CHECK(is_file(optimizer_path), "Trainer: ", dir, " has no ", optimizer_file());
  read_checkpoint_file(optimizer_path, "the optimizer state (AdamW) of this model", [&] {
    torch::serialize::InputArchive archive;
    archive.load_from(optimizer_path, device_);
    try {
      run.optimizer->load(archive);
    } catch (const c10::Error& e) {
      TORCH_CHECK(false, "it does not fit this model's parameters (is it from another model?): ",
                  e.what_without_backtrace());
    }
  });
  const std::string scheduler_path = dir + "/scheduler.json";
  read_checkpoint_file(scheduler_path, "the learning-rate scheduler state", [&] {
    run.scheduler->load_state(optim::LRSchedulerState::from_json(read_json(scheduler_path)));
  });
  const std::string rng_path = dir + "/rng_state.pt";
  read_checkpoint_file(rng_path, "the random generator states (CPU and CUDA)", [&] {
    std::vector<torch::Tensor> states;
    torch::load(states, rng_path);
    set_rng_states(states);
  });
  if (run.scaler) {
    if (is_file(dir + "/scaler.json")) {
      read_checkpoint_file(dir + "/scaler.json", "the fp16 loss scaler state",
                           [&] { run.scaler->load_state_dict(read_json(dir + "/scaler.json")); });
    } else {
      logger()->warn(
          "{} has no scaler.json (it was not trained with fp16): the loss scale starts "
          "at {}",
          dir, run.scaler->options().init_scale());
    }
  }
  const std::string state_path = dir + "/trainer_state.json";
  read_checkpoint_file(state_path, "the TrainerState",
                       [&] { state_ = TrainerState::from_json(read_json(state_path)); });
  set_process_flags();
  run.pos = Position::from_json(remat_state, dir + "/remat_state.json");
  logger()->info("resuming from {} at step {}", dir, state_.global_step);
}

// The model FLOPs of training on `batch` ([rows, seq] token ids): the MFU
// numerator, CausalLM::training_flops_per_token(seq) per token slot.
double Trainer::model_flops(const Run& run, const data::Batch& batch) {
  if (!batch.input_ids.defined() || batch.input_ids.numel() == 0) return 0;
  const int64_t seq = batch.input_ids.size(-1);
  return (run.mfu_flops_at_0 + run.mfu_flops_per_position * static_cast<double>(seq)) *
         static_cast<double>(batch.input_ids.numel());
}

// One optimizer step over the micro-batches of `group` (on the host): forward
// and backward of each, clipping, the optimizer and scheduler steps, unless
// the step is skipped (fp16 overflow, or a non-finite loss or norm with
// skip_nonfinite_steps). Reads one flag tensor back from the device.
//
// Data parallel, every rank divides its loss by the target tokens of all
// ranks and scales it by the world size before the backward, which the
// gradient averaging undoes, so N ranks train as one process on the
// concatenated batch. The step's loss, the scaler's inf/NaN finding and the
// stop flag are then summed over the ranks in one all-reduce on the device,
// so every rank takes the same decisions.
void Trainer::training_step(Run& run, std::vector<data::Batch>& group) {
  const int64_t step = state_.global_step + 1;
  size_t micro = 0;    // the micro-batch being run, for the out-of-memory message
  int64_t length = 0;  // its sequence length
  try {
    int64_t items = 0;
    if (!group_) {
      for (const auto& b : group) {
        items += target_tokens(b);
        state_.num_input_tokens_seen += input_tokens(b);
        state_.total_flos += run.flops_per_token * static_cast<double>(b.input_ids.numel());
        run.tokens_since_log += b.input_ids.numel();
        run.model_flops_since_log += model_flops(run, b);
      }
    } else {
      // Target tokens, input tokens, token slots and model FLOPs of all ranks.
      std::array<double, 4> local{};
      for (const auto& b : group) {
        local[0] += static_cast<double>(target_tokens(b));
        local[1] += static_cast<double>(input_tokens(b));
        local[2] += static_cast<double>(b.input_ids.numel());
        local[3] += model_flops(run, b);
      }
      auto counts = torch::tensor(at::ArrayRef<double>(local.data(), local.size()),
                                  torch::dtype(torch::kDouble))
                        .to(group_->device());
      group_->all_reduce(counts).wait();
      counts = counts.cpu();
      const auto* total = counts.data_ptr<double>();
      items = static_cast<int64_t>(total[0]);
      state_.num_input_tokens_seen += static_cast<int64_t>(total[1]);
      state_.total_flos += run.flops_per_token * total[2];
      run.tokens_since_log += static_cast<int64_t>(total[2]);
      run.model_flops_since_log += total[3];
    }
    torch::Tensor step_loss;
    const int64_t vocab_size = vocab_size_of(*model_);
    for (micro = 0; micro < group.size(); ++micro) {
      check_vocabulary(
          group[micro], vocab_size,
          "step " + std::to_string(step) + ", micro-batch " + std::to_string(micro + 1));
      const auto batch = group[micro].to(device_, /*non_blocking=*/true);
      length = batch.input_ids.dim() > 1 ? batch.input_ids.size(1) : batch.input_ids.numel();
      // With accumulation, DDP reduces the gradients of the last micro-batch
      // only (they hold the sum by then).
      if (parallel_) parallel_->set_requires_gradient_sync(micro + 1 == group.size());
      torch::Tensor loss;
      {
        auto autocast = mixed_precision(args_, device_.type());
        loss = compute_loss(*model_, batch, items);
      }
      if (memory_) memory_->sample();
      auto backward_loss = run.world > 1 ? loss * static_cast<double>(run.world) : loss;
      (run.scaler ? run.scaler->scale(backward_loss) : backward_loss).backward();
      if (parallel_) parallel_->finish_gradient_sync();
      if (memory_) memory_->sample();
      auto value = loss.detach().to(torch::kDouble);
      step_loss = step_loss.defined() ? step_loss + value : value;
      if (micro + 1 < group.size()) {
        call_callbacks([&](TrainerCallback& c) { c.on_substep_end(args_, state_, control_); });
      }
    }
    micro = group.size();
    if (run.scaler) run.scaler->unscale_(run.params);
    // max_grad_norm 0: the norm only. Data parallel, the norm of all ranks'
    // gradients (FSDP: of the shards, all-reduced), computed as here.
    const double max_norm =
        args_.max_grad_norm > 0 ? args_.max_grad_norm : std::numeric_limits<double>::infinity();
    run.grad_norm = parallel_ ? parallel_->clip_grad_norm_tensor(max_norm)
                              : detail::clip_grad_norm(run.params, max_norm, device_);
    torch::Tensor stop;
    if (group_) {
      // One all-reduce (sum) of [loss, found_inf, stop]: the loss of all
      // ranks; an inf/NaN gradient on any rank skips the step on all (torch's
      // ShardedGradScaler reduces found_inf likewise); a stop asked on any
      // rank (a signal, request_stop()) stops all after this step.
      const bool stop_here = g_stop_signal.load() != 0 || stop_requested_;
      auto opts = torch::dtype(torch::kDouble).device(group_->device());
      auto reduced = torch::cat(
          {step_loss.to(group_->device()).reshape({1}),
           run.scaler ? run.scaler->found_inf().to(opts).reshape({1}) : torch::zeros({1}, opts),
           torch::full({1}, stop_here ? 1.0 : 0.0, opts)});
      group_->all_reduce(reduced).wait();
      step_loss = reduced[0].to(device_);
      if (run.scaler) {
        const auto& found_inf = run.scaler->found_inf();
        found_inf.copy_((reduced[1] > 0).to(found_inf.options()));
      }
      stop = (reduced[2] > 0).to(device_);
    }
    // The one host synchronization of the step: is the loss finite, is the
    // norm finite, did the scaler find no inf/NaN gradient (and, data
    // parallel, did any rank ask to stop).
    std::vector<torch::Tensor> checks{step_loss.isfinite().to(device_),
                                      run.grad_norm.isfinite().to(device_)};
    const size_t scaler_flag = checks.size();
    if (run.scaler) checks.push_back((run.scaler->found_inf() == 0).to(device_));
    const size_t stop_flag = checks.size();
    if (stop.defined()) checks.push_back(stop);
    const auto flags = torch::stack(checks).cpu();
    const auto* ok = flags.data_ptr<bool>();
    if (stop.defined()) run.stop_agreed = ok[stop_flag];
    const bool overflow = run.scaler != nullptr && !ok[scaler_flag];
    // With fp16 a non-finite norm is an overflow, which the scaler handles.
    const bool nonfinite = !ok[0] || (!ok[1] && run.scaler == nullptr);
    if (nonfinite && !args_.skip_nonfinite_steps) {
      run.optimizer->zero_grad();
      TORCH_CHECK(false, "Trainer: non-finite loss (", number_text(step_loss.item<double>()),
                  ") or gradient norm (", number_text(run.grad_norm.item<double>()), ") at step ",
                  step,
                  "; lower the learning rate or check the data (skip_nonfinite_steps skips such "
                  "steps instead)");
    }
    const bool skip = nonfinite || overflow;
    call_callbacks([&](TrainerCallback& c) { c.on_pre_optimizer_step(args_, state_, control_); });
    if (!skip) {
      run.optimizer->step();
      run.last_update_step = step;
    }
    if (parallel_) parallel_->after_optimizer_step();
    call_callbacks([&](TrainerCallback& c) { c.on_optimizer_step(args_, state_, control_); });
    // The rate this step used (transformers logs it before the scheduler step).
    run.learning_rate = run.scheduler->last_lr().front();
    if (!skip) run.scheduler->step();
    if (run.scaler) run.scaler->update();
    run.optimizer->zero_grad();

    if (ok[0]) {
      run.loss_since_log = run.loss_since_log + step_loss;
      ++run.pos.loss_steps_since_log;
    }
    if (skip) {
      ++run.pos.skipped_steps;
      if (nonfinite) {
        logger()->warn(
            "step {}: non-finite loss ({}) or gradient norm ({}); skipped the update ({} skipped "
            "so far)",
            step, number_text(step_loss.item<double>()), number_text(run.grad_norm.item<double>()),
            run.pos.skipped_steps);
      } else {
        logger()->info(
            "step {}: float16 gradients overflowed; skipped the update, loss scale now {}", step,
            run.scaler->get_scale());
      }
    }
    ++run.steps_since_log;
  } catch (const c10::OutOfMemoryError& e) {
    run.optimizer->zero_grad();
    const std::string where = micro < group.size() ? "micro-batch " + std::to_string(micro + 1) +
                                                         " of " + std::to_string(group.size())
                                                   : std::string("the optimizer update");
    TORCH_CHECK_WITH(
        OutOfMemoryError, false, "Trainer: out of memory on ", device_.str(), " at step ", step,
        " (", where, "): per_device_train_batch_size ", args_.per_device_train_batch_size,
        ", sequence length ", length, ", gradient_accumulation_steps ",
        args_.gradient_accumulation_steps, ", gradient checkpointing ",
        args_.gradient_checkpointing ? "on" : "off",
        args_.bf16 ? ", bf16" : (args_.fp16 ? ", fp16" : ", fp32"), ". To fit, try ",
        args_.gradient_checkpointing ? "" : "--gradient_checkpointing (keeps only block inputs), ",
        "a smaller --per_device_train_batch_size with a larger --gradient_accumulation_steps "
        "(the same effective batch)",
        args_.bf16 || args_.fp16 ? "" : ", --bf16 (about half the activation memory)",
        ", or shorter sequences. The allocator said: ", e.what_without_backtrace());
  }
}

// transformers' _maybe_log_save_evaluate: acts on what control asks.
void Trainer::maybe_log_save_evaluate(Run& run) {
  if (control_.should_log && state_.global_step > run.pos.last_logged_step) {
    const double seconds = seconds_since(run.log_start);
    const double loss_sum = run.loss_since_log.item<double>();
    const int64_t loss_steps = run.pos.loss_steps_since_log;
    // Non-finite values are null, as JSON writes them.
    auto number = [](double v) { return std::isfinite(v) ? json(v) : json(nullptr); };
    json record;
    if (loss_steps > 0) record["loss"] = number(loss_sum / loss_steps);
    if (run.grad_norm.defined()) record["grad_norm"] = number(run.grad_norm.item<double>());
    record["learning_rate"] = run.learning_rate;
    const int64_t steps = std::max<int64_t>(run.steps_since_log, 1);
    record["step_ms"] = 1000 * seconds / steps;
    record["tokens_per_s"] = run.tokens_since_log / std::max(seconds, 1e-9);
    // Model FLOPs utilization of each device where its peak is known (CUDA
    // cards such as the H100; not the CPU), as remat-bench computes it.
    if (run.peak_flops) {
      record["mfu"] = run.model_flops_since_log / std::max(seconds, 1e-9) /
                      static_cast<double>(run.world) / *run.peak_flops;
    }
    if (device_.is_cuda()) record["peak_memory_mib"] = max_memory_allocated(device_) >> 20;
    if (run.scaler) record["loss_scale"] = run.scaler->get_scale();
    if (run.scaler || args_.skip_nonfinite_steps) record["skipped_steps"] = run.pos.skipped_steps;
    if (is_main_process() && !bar_shown()) {
      std::string extra;
      if (record.contains("mfu"))
        extra += fmt::format(" | MFU {:.1f}%", 100 * record["mfu"].get<double>());
      if (record.contains("peak_memory_mib")) {
        extra += fmt::format(" | peak {} MiB", record["peak_memory_mib"].get<int64_t>());
      }
      logger()->info(
          "step {}/{} | loss {:.4f} | grad_norm {:.3f} | lr {:.3e} | {:.1f} ms | {:.0f} tok/s{}",
          state_.global_step, run.total_steps,
          loss_steps > 0 ? loss_sum / loss_steps : std::nan(""),
          run.grad_norm.defined() ? run.grad_norm.item<double>() : std::nan(""), run.learning_rate,
          record["step_ms"].get<double>(), record["tokens_per_s"].get<double>(), extra);
    }
    run.loss_total += loss_sum;
    run.loss_total_steps += loss_steps;
    run.loss_since_log.zero_();
    run.pos.loss_steps_since_log = 0;
    run.pos.last_logged_step = state_.global_step;
    run.steps_since_log = 0;
    run.tokens_since_log = 0;
    run.model_flops_since_log = 0;
    run.log_start = Clock::now();
    log(record);
  }
  if (control_.should_evaluate) evaluate();
  if (control_.should_save) save_checkpoint(run);
}

// After SIGINT, SIGTERM or request_stop(): a checkpoint of where training
// stands (unless one was just saved), and the loop ends.
// In a distributed run the ranks act on what the step's all-reduce agreed
// (training_step), so all of them stop after the same step.
bool Trainer::stop_if_interrupted(Run& run) {
  const int signal = g_stop_signal.load();
  const bool stop = group_ ? run.stop_agreed : (signal != 0 || stop_requested_);
  if (!stop) return false;
  const std::string cause = signal != 0       ? signal_name(signal)
                            : stop_requested_ ? "request_stop()"
                                              : "a stop on another rank";
  logger()->warn("{}: stopping after step {}{}", cause, state_.global_step,
                 signal != 0 ? " (send it again to end the process at once)" : "");
  if (run.checkpoint_step != state_.global_step && state_.global_step > 0) save_checkpoint(run);
  if (!run.checkpoint.empty()) {
    logger()->warn(
        "training interrupted at step {}; resume from {} with "
        "--resume_from_checkpoint latest",
        state_.global_step, run.checkpoint);
  }
  run.interrupted = true;
  control_.should_training_stop = true;
  return true;
}

std::map<std::string, double> Trainer::train_metrics(const Run& run) {
  const double runtime = seconds_since(run.start_time);
  const int64_t steps = state_.global_step - run.initial_global_step;
  const int64_t total_batch =
      args_.per_device_train_batch_size * args_.gradient_accumulation_steps * run.world;
  const double planned_samples =
      args_.max_steps > 0 ? static_cast<double>(args_.max_steps * total_batch)
                          : static_cast<double>(train_dataset_->size()) * args_.num_train_epochs;
  const double samples =
      planned_samples * static_cast<double>(steps) / std::max<int64_t>(run.total_steps, 1);
  std::map<std::string, double> metrics;
  metrics["train_runtime"] = round_to(runtime, 4);
  if (runtime > 0) {
    metrics["train_samples_per_second"] = round_to(samples / runtime, 3);
    metrics["train_steps_per_second"] = round_to(static_cast<double>(steps) / runtime, 3);
  }
  metrics["total_flos"] = state_.total_flos;
  const double loss_sum = run.loss_total + run.loss_since_log.item<double>();
  const int64_t loss_steps = run.loss_total_steps + run.pos.loss_steps_since_log;
  metrics["train_loss"] = loss_steps > 0 ? loss_sum / loss_steps : 0.0;
  if (run.scaler || args_.skip_nonfinite_steps) {
    metrics["train_skipped_steps"] = static_cast<double>(run.pos.skipped_steps);
  }
  if (memory_) memory_->stop_and_update("train", metrics);
  metrics["epoch"] = state_.epoch;
  return metrics;
}

TrainOutput Trainer::train() {
  TORCH_CHECK(train_dataset_ != nullptr && train_dataset_->size() > 0,
              "Trainer::train: the train dataset is empty");
  Run run;
  run.start_time = Clock::now();
  if (memory_) memory_->start("train");
  // Ends the stage if an error leaves train() (a no-op after the metrics).
  struct EndStage {
    MemoryTracker* tracker;
    ~EndStage() {
      if (tracker) tracker->stop("train");
    }
  } end_stage{memory_.get()};
  torch::manual_seed(static_cast<uint64_t>(args_.seed));
  std::filesystem::create_directories(args_.output_dir);
  if (is_main_process()) recover_interrupted_saves(args_.output_dir);
  if (args_.gradient_checkpointing) {
    nn::gradient_checkpointing_enable(*model_, args_.gradient_checkpointing_options());
  }
  model_->train();
  stop_requested_ = false;
  if (group_) {
    // After checkpointing is on: FSDP checkpoints inside its units.
    parallel_.reset();  // a second train() wraps afresh
    parallel_ = distributed::wrap(model_, group_, args_.fsdp, args_.fsdp_config_object());
    run.world = group_->world_size();
  }

  const int64_t seed = args_.data_seed.value_or(args_.seed);
  data::DataLoader loader(
      train_dataset_,
      data::DistributedSampler(
          train_dataset_->size(),
          data::DistributedSamplerOptions().seed(seed).num_replicas(run.world).rank(
              group_ ? group_->rank() : 0)),
      collator_,
      data::DataLoaderOptions()
          .batch_size(args_.per_device_train_batch_size)
          .drop_last(args_.dataloader_drop_last)
          .num_workers(std::max<int64_t>(args_.dataloader_num_workers, 1)));
  const int64_t accumulation = args_.gradient_accumulation_steps;
  run.batches = loader.size();
  TORCH_CHECK(run.batches > 0, "Trainer::train: no batch of ", args_.per_device_train_batch_size,
              " examples fits the ", train_dataset_->size(), " training examples with drop_last");
  const int64_t steps_per_epoch = (run.batches + accumulation - 1) / accumulation;
  run.total_steps = args_.max_steps > 0
                        ? args_.max_steps
                        : static_cast<int64_t>(std::ceil(args_.num_train_epochs * steps_per_epoch));
  run.epochs = (run.total_steps + steps_per_epoch - 1) / steps_per_epoch;

  const auto adamw = torch::optim::AdamWOptions(args_.learning_rate)
                         .betas({args_.adam_beta1, args_.adam_beta2})
                         .eps(args_.adam_epsilon)
                         .weight_decay(args_.weight_decay);
  const auto implementation = optim::adamw_implementation(args_.optim);
  // Under FSDP the optimizer steps the local shards: its state is sharded.
  auto optimizer = parallel_
                       ? optim::AdamW(parallel_->parameter_groups(adamw), adamw, implementation)
                       : optim::create_adamw(*model_, adamw, implementation);
  optim::LRScheduler scheduler(
      optimizer, optim::LRSchedulerOptions(args_.lr_scheduler_type)
                     .num_warmup_steps(warmup_steps(args_.warmup_steps, run.total_steps))
                     .num_training_steps(run.total_steps)
                     .scheduler_specific_kwargs(args_.lr_scheduler_kwargs));
  std::optional<GradScaler> scaler;
  if (args_.fp16) scaler.emplace();
  run.optimizer = &optimizer;
  run.scheduler = &scheduler;
  run.scaler = scaler ? &*scaler : nullptr;
  for (const auto& p : parallel_ ? parallel_->parameters() : model_->parameters()) {
    if (p.requires_grad()) run.params.push_back(p);
  }
  run.flops_per_token = 6.0 * static_cast<double>(non_embedding_parameters(*model_));
  if (auto* lm = dynamic_cast<const models::CausalLMImpl*>(model_.get())) {
    run.mfu_flops_at_0 = lm->training_flops_per_token(0);
    run.mfu_flops_per_position = lm->training_flops_per_token(1) - run.mfu_flops_at_0;
  } else {
    run.mfu_flops_at_0 = run.flops_per_token;
  }
  if (device_.is_cuda()) {
    run.peak_flops =
        peak_flops(at::cuda::getDeviceProperties(device_.has_index() ? device_.index() : 0)->name,
                   args_.bf16 || args_.fp16);
  }

  // A new state for this run; the records logged before it (an evaluation
  // before training) stay in the history.
  auto history = std::move(state_.log_history);
  state_ = TrainerState();
  state_.log_history = std::move(history);
  set_process_flags();
  if (args_.resume_from_checkpoint) resume(*args_.resume_from_checkpoint, run);
  state_.max_steps = run.total_steps;
  state_.num_train_epochs = run.epochs;
  state_.train_batch_size = args_.per_device_train_batch_size;
  state_.logging_steps = steps_from(args_.logging_steps, run.total_steps);
  state_.eval_steps = steps_from(args_.eval_steps.value_or(args_.logging_steps), run.total_steps);
  state_.save_steps = steps_from(args_.save_steps, run.total_steps);
  run.initial_global_step = state_.global_step;
  // The loss not yet logged when the checkpoint was saved carries on.
  run.loss_since_log =
      torch::full({}, run.pos.loss_since_log, torch::dtype(torch::kDouble).device(device_));

  if (is_main_process()) {
    logger()->info(
        "training: {} examples, {} epochs, {} optimizer steps, batch {} x {} accumulation{}, "
        "gradient checkpointing {}, {}, on {}",
        train_dataset_->size(), run.epochs, run.total_steps, args_.per_device_train_batch_size,
        accumulation,
        group_ ? " x " + std::to_string(run.world) + " ranks (" +
                     (parallel_->sharded_optimizer_state() ? "FSDP" : "DDP") + ")"
               : std::string(),
        args_.gradient_checkpointing ? "on" : "off",
        args_.bf16 ? "bf16" : (args_.fp16 ? "fp16 with loss scaling" : "fp32"), device_.str());
  }
  if (state_.is_world_process_zero) {
    // The memory plan for the longest sequence among the first examples.
    size_t seq_len = 1;
    for (int64_t i = 0, n = std::min<int64_t>(train_dataset_->size(), 256); i < n; ++i) {
      seq_len = std::max(seq_len, train_dataset_->get(i).input_ids.size());
    }
    const auto plan = estimate_memory_plan(*model_, args_, static_cast<int64_t>(seq_len), device_);
    say("\n" + startup_table(*model_, args_, device_, plan));
  }

  StopSignals signals;
  run.log_start = Clock::now();
  // The peak the log lines report (the memory tracker, when on, reset it).
  if (device_.is_cuda() && !memory_) reset_peak_memory_stats(device_);
  control_ = TrainerControl();
  call_callbacks([&](TrainerCallback& c) { c.on_train_begin(args_, state_, control_); });

  while (run.pos.epoch < run.epochs && state_.global_step < run.total_steps &&
         !control_.should_training_stop) {
    control_.should_epoch_stop = false;
    call_callbacks([&](TrainerCallback& c) { c.on_epoch_begin(args_, state_, control_); });
    auto stream = loader.epoch(run.pos.epoch, run.pos.batches_in_epoch);
    bool data_left = true;
    while (state_.global_step < run.total_steps) {
      std::vector<data::Batch> group;
      while (static_cast<int64_t>(group.size()) < accumulation) {
        auto batch = stream.next();
        if (!batch) break;
        group.push_back(std::move(*batch));
      }
      if (group.empty()) {
        data_left = false;
        break;
      }
      control_.should_log = control_.should_evaluate = control_.should_save = false;
      call_callbacks([&](TrainerCallback& c) { c.on_step_begin(args_, state_, control_); });
      run.pos.batches_in_epoch += static_cast<int64_t>(group.size());
      training_step(run, group);
      ++state_.global_step;
      state_.epoch = static_cast<double>(run.pos.epoch) +
                     static_cast<double>(run.pos.batches_in_epoch) / run.batches;
      call_callbacks([&](TrainerCallback& c) { c.on_step_end(args_, state_, control_); });
      maybe_log_save_evaluate(run);
      if (stop_if_interrupted(run)) break;
      if (control_.should_epoch_stop || control_.should_training_stop) break;
    }
    if (run.interrupted) break;
    // The epoch is over when its data is (or a callback ended it); training
    // stopped inside it resumes inside it.
    if (!data_left || run.pos.batches_in_epoch >= run.batches || control_.should_epoch_stop) {
      ++run.pos.epoch;
      run.pos.batches_in_epoch = 0;
    }
    call_callbacks([&](TrainerCallback& c) { c.on_epoch_end(args_, state_, control_); });
    maybe_log_save_evaluate(run);
    if (stop_if_interrupted(run)) break;
  }

  TrainOutput result;
  result.global_step = state_.global_step;
  result.metrics = train_metrics(run);
  result.training_loss = result.metrics.at("train_loss");
  result.interrupted = run.interrupted;
  result.checkpoint = run.checkpoint;
  if (!run.interrupted) {
    json record(result.metrics);
    log(record);
    check_parameters_finite(run, "the model in " + args_.output_dir);
    save_model_files(args_.output_dir);
  }
  if (parallel_) {
    // Leave every rank with the whole trained model, unwrapped.
    parallel_->gather_full_parameters();
    parallel_.reset();
  }
  call_callbacks([&](TrainerCallback& c) { c.on_train_end(args_, state_, control_); });
  return result;
}

std::map<std::string, double> Trainer::evaluate() {
  TORCH_CHECK(eval_dataset_ != nullptr && eval_dataset_->size() > 0,
              "Trainer::evaluate: no eval dataset (or it is empty)");
  const auto start = Clock::now();
  if (memory_) memory_->start("eval");
  struct EndStage {
    MemoryTracker* tracker;
    ~EndStage() {
      if (tracker) tracker->stop("eval");
    }
  } end_stage{memory_.get()};
  const bool was_training = model_->is_training();
  model_->eval();
  // Data parallel: each rank evaluates its shard (the shards are padded to
  // one size by repeating examples, as torch's DistributedSampler does).
  data::DataLoader loader(
      eval_dataset_,
      data::DistributedSampler(eval_dataset_->size(),
                               data::DistributedSamplerOptions()
                                   .shuffle(false)
                                   .num_replicas(group_ ? group_->world_size() : 1)
                                   .rank(group_ ? group_->rank() : 0)),
      collator_, data::DataLoaderOptions().batch_size(args_.per_device_eval_batch_size));
  // FSDP's forward gathers parameters with the other ranks: every rank runs
  // every batch, even one without targets.
  const bool collective_forward = parallel_ && parallel_->sharded_optimizer_state();
  // Summed on the device; read back once at the end.
  auto loss_sum = torch::zeros({}, torch::dtype(torch::kDouble).device(device_));
  int64_t tokens = 0, batches = 0;
  const int64_t vocab_size = vocab_size_of(*model_);
  {
    torch::NoGradGuard no_grad;
    for (const auto& batch : loader.epoch(0)) {
      const int64_t items = target_tokens(batch);
      ++batches;
      if (items == 0 && !collective_forward) continue;
      check_vocabulary(batch, vocab_size, "evaluation batch " + std::to_string(batches));
      auto b = batch.to(device_, /*non_blocking=*/true);
      auto autocast = mixed_precision(args_, device_.type());
      if (items == 0) {
        compute_loss(*model_, b, 1);
        continue;
      }
      // compute_loss divides by its count: scale back to a sum.
      loss_sum +=
          compute_loss(*model_, b, items).detach().to(torch::kDouble) * static_cast<double>(items);
      tokens += items;
      if (memory_) memory_->sample();
    }
  }
  if (was_training) model_->train();
  double loss_total = 0;
  if (group_) {
    // The loss and target tokens of all ranks, in one all-reduce.
    auto sums = torch::stack({loss_sum.to(group_->device()),
                              torch::full({}, static_cast<double>(tokens),
                                          torch::dtype(torch::kDouble).device(group_->device()))});
    group_->all_reduce(sums).wait();
    sums = sums.cpu();
    loss_total = sums[0].item<double>();
    tokens = static_cast<int64_t>(sums[1].item<double>());
  } else if (tokens > 0) {
    loss_total = loss_sum.item<double>();
  }
  TORCH_CHECK(tokens > 0, "Trainer::evaluate: the eval dataset has no target tokens");
  const double loss = loss_total / tokens;
  std::map<std::string, double> metrics{{"eval_loss", loss}, {"perplexity", std::exp(loss)}};
  const double runtime = seconds_since(start);
  metrics["eval_runtime"] = round_to(runtime, 4);
  if (runtime > 0) {
    metrics["eval_samples_per_second"] =
        round_to(static_cast<double>(eval_dataset_->size()) / runtime, 3);
    metrics["eval_steps_per_second"] = round_to(static_cast<double>(batches) / runtime, 3);
  }
  if (memory_) memory_->stop_and_update("eval", metrics);
  // With the bar drawn, the record itself is printed above it (on_log).
  if (is_main_process() && !bar_shown()) {
    logger()->info("eval | loss {:.4f} | perplexity {:.3f}", loss, std::exp(loss));
  }
  log(json(metrics));
  control_.should_evaluate = false;
  call_callbacks([&](TrainerCallback& c) { c.on_evaluate(args_, state_, control_, metrics); });
  return metrics;
}

}  // namespace remat
