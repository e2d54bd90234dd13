// remat-bench: trains a GPT-2- or Llama-shaped model through remat::Trainer
// on random tokens under each checkpointing policy and reports step time,
// throughput, MFU, peak memory and the final loss (the policies must train
// the same). Presets match the anchor tables of docs/benchmarks.md:
//
//   remat-bench --preset gpt2-124m --bf16 --policy none,full,every-2,attention,mlp,mlp-up \
//       --json gpt2.json
//   remat-bench --preset llama-0.85b --bf16 --policy none,full --json llama.json
//   remat-bench --preset tiny --steps 3 --warmup 1          # CPU smoke run
//   remat-bench --preset gpt2-124m --bf16 --policy none --profile 3 # where the time goes
//
// Each optimizer step is timed from the end of the previous one (CUDA
// synchronized); the first --warmup steps are not counted, and the peak is
// the caching allocator's peak allocated bytes over the counted steps.
// --profile K runs K more steps after the counted ones under the Kineto
// profiler and summarizes them (profile_summary.h): device kernel time by
// category, GPU busy time, idle share, top kernels; on CPU the top-level
// aten:: operators instead.

#include <ATen/cuda/CUDAContext.h>
#include <c10/core/CachingDeviceAllocator.h>
#include <remat/flops.h>
#include <remat/logging.h>
#include <remat/memory.h>
#include <remat/models/causal_lm.h>
#include <remat/nn/fused.h>
#include <remat/trainer.h>
#include <stdlib.h>
#include <torch/csrc/autograd/profiler_kineto.h>
#include <unistd.h>
#include <CLI/CLI.hpp>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <iostream>
#include <random>
#include <sstream>

#include <kineto/ActivityType.h>

#include "profile_summary.h"

namespace {

using json = nlohmann::json;
using Clock = std::chrono::steady_clock;

struct Shape {
  std::string arch = "gpt2";
  int64_t layers = 2, hidden = 64, heads = 4, kv_heads = 0, ffn = 256, vocab = 256;
  int64_t batch = 2, seq = 32;
};

Shape preset(const std::string& name) {
  if (name == "gpt2-124m") return {"gpt2", 12, 768, 12, 12, 3072, 50304, 16, 1024};
  if (name == "llama-0.85b") return {"llama", 16, 2048, 32, 8, 5632, 32000, 4, 2048};
  if (name == "tiny") return {};
  throw CLI::ValidationError("--preset", "must be gpt2-124m, llama-0.85b or tiny, got " + name);
}

// The config.json a transformers user would write for the shape; dropout off
// (as in the anchors), so every policy computes exactly the same thing.
remat::models::ModelConfig model_config(const Shape& s) {
  if (s.arch == "gpt2") {
    return remat::models::ModelConfig::from_json({{"model_type", "gpt2"},
                                                  {"n_layer", s.layers},
                                                  {"n_embd", s.hidden},
                                                  {"n_head", s.heads},
                                                  {"n_inner", s.ffn},
                                                  {"vocab_size", s.vocab},
                                                  {"n_positions", std::max<int64_t>(s.seq, 1024)},
                                                  {"attn_pdrop", 0.0},
                                                  {"resid_pdrop", 0.0},
                                                  {"embd_pdrop", 0.0}});
  }
  return remat::models::ModelConfig::from_json(
      {{"model_type", "llama"},
       {"num_hidden_layers", s.layers},
       {"hidden_size", s.hidden},
       {"num_attention_heads", s.heads},
       {"num_key_value_heads", s.kv_heads > 0 ? s.kv_heads : s.heads},
       {"intermediate_size", s.ffn},
       {"vocab_size", s.vocab},
       {"max_position_embeddings", std::max<int64_t>(s.seq, 2048)},
       {"tie_word_embeddings", false}});
}

// Random token ids, the same for every policy: example i is drawn from a
// generator seeded with (seed, i).
class RandomTokens : public remat::data::Dataset {
 public:
  RandomTokens(int64_t size, int64_t seq, int64_t vocab, uint64_t seed)
      : size_(size), seq_(seq), vocab_(vocab), seed_(seed) {}
  int64_t size() const override { return size_; }
  remat::data::Example get(int64_t index) const override {
    std::mt19937_64 rng(seed_ * 1'000'003 + static_cast<uint64_t>(index));
    std::uniform_int_distribution<int64_t> token(0, vocab_ - 1);
    remat::data::Example e;
    for (int64_t i = 0; i < seq_; ++i) e.input_ids.push_back(token(rng));
    e.labels = e.input_ids;
    return e;
  }

 private:
  int64_t size_, seq_, vocab_;
  uint64_t seed_;
};

// Runs the Kineto profiler over the steps after the timed ones: on from the
// end of step `after` (the timer has synchronized the device) to the end of
// step after + steps; CPU operators always, CUDA kernels, copies and sets on
// CUDA.
class StepProfiler : public remat::TrainerCallback {
 public:
  StepProfiler(torch::Device device, int64_t after, int64_t steps)
      : device_(device), after_(after), steps_(steps) {}
  ~StepProfiler() override {
    if (!active_) return;
    try {
      torch::autograd::profiler::disableProfiler();
    } catch (const std::exception&) {
    }
  }
  void on_step_end(const remat::TrainingArguments&, remat::TrainerState& state,
                   remat::TrainerControl&) override {
    if (state.global_step == after_) start();
    if (state.global_step == after_ + steps_) stop();
  }

  // The profiled steps' result and wall time; null before the last of them.
  torch::autograd::profiler::ProfilerResult* result() const { return result_.get(); }
  int64_t wall_ns() const { return wall_ns_; }
  int64_t steps() const { return steps_; }

 private:
  void start() {
    namespace profiler = torch::autograd::profiler;
    const profiler::ProfilerConfig config(profiler::ProfilerState::KINETO);
    std::set<profiler::ActivityType> activities = {profiler::ActivityType::CPU};
    if (device_.is_cuda()) activities.insert(profiler::ActivityType::CUDA);
    profiler::prepareProfiler(config, activities);
    profiler::enableProfiler(config, activities);
    active_ = true;
    begin_ = Clock::now();
  }
  void stop() {
    if (!active_) return;
    if (device_.is_cuda()) torch::cuda::synchronize();
    wall_ns_ = std::chrono::duration_cast<std::chrono::nanoseconds>(Clock::now() - begin_).count();
    active_ = false;
    result_ = torch::autograd::profiler::disableProfiler();
  }

  torch::Device device_;
  int64_t after_, steps_;
  bool active_ = false;
  Clock::time_point begin_;
  int64_t wall_ns_ = 0;
  std::unique_ptr<torch::autograd::profiler::ProfilerResult> result_;
};

// Records the end time of every optimizer step; resets the peak after the
// warm-up and reads it after the timed steps; with `profile` steps after the
// timed ones, profiles those.
class TimedTrainer : public remat::Trainer {
 public:
  TimedTrainer(std::shared_ptr<torch::nn::Module> model, remat::TrainingArguments args,
               std::shared_ptr<const remat::data::Dataset> data, int64_t warmup, int64_t steps,
               int64_t profile, bool plain_loss, int64_t loss_chunk_rows)
      : Trainer(std::move(model), std::move(args), std::move(data)),
        plain_loss_(plain_loss),
        loss_chunk_rows_(loss_chunk_rows),
        timer_(std::make_shared<StepTimer>(device(), warmup, warmup + steps)) {
    add_callback(timer_);
    // After the timer, so that a step's end is synchronized and recorded
    // before the profiler starts or stops.
    if (profile > 0) {
      profiler_ = std::make_shared<StepProfiler>(device(), warmup + steps, profile);
      add_callback(profiler_);
    }
  }

  // As the Trainer's, with the option of the loss from the full logits (the
  // path before the chunked LM head), for before/after measurements.
  torch::Tensor compute_loss(torch::nn::Module& model, const remat::data::Batch& batch,
                             int64_t num_items_in_batch) override {
    if (!plain_loss_ && loss_chunk_rows_ == 0) {
      return Trainer::compute_loss(model, batch, num_items_in_batch);
    }
    remat::models::CausalLMInputs in;
    in.input_ids = batch.input_ids;
    if (batch.has_padding) in.attention_mask = batch.attention_mask;
    in.labels = batch.labels;
    in.num_items_in_batch = std::max<int64_t>(num_items_in_batch, 1);
    in.return_logits = plain_loss_;
    in.loss_chunk_rows = loss_chunk_rows_;
    return dynamic_cast<remat::models::CausalLMImpl&>(model).forward(in).loss;
  }

  // The benchmark keeps no model.
  void save_model(const std::string&) const override {}

  const std::vector<Clock::time_point>& ends() const { return timer_->ends; }
  // The peak allocated bytes over the timed steps (CUDA).
  int64_t timed_peak() const { return timer_->peak; }
  StepProfiler* profiler() const { return profiler_.get(); }

 private:
  // The end of every optimizer step, the device synchronized; the peak
  // memory counted from the end of the warm-up to the end of the timed steps.
  struct StepTimer : remat::TrainerCallback {
    StepTimer(torch::Device device, int64_t warmup, int64_t timed_end)
        : device(device), warmup(warmup), timed_end(timed_end) {}
    void on_step_end(const remat::TrainingArguments&, remat::TrainerState& state,
                     remat::TrainerControl&) override {
      if (device.is_cuda()) torch::cuda::synchronize();
      ends.push_back(Clock::now());
      if (state.global_step == warmup && device.is_cuda()) remat::reset_peak_memory_stats(device);
      if (state.global_step == timed_end && device.is_cuda()) {
        peak = remat::max_memory_allocated(device);
      }
    }
    torch::Device device;
    int64_t warmup, timed_end;
    int64_t peak = 0;
    std::vector<Clock::time_point> ends;
  };

  bool plain_loss_;
  int64_t loss_chunk_rows_;
  std::shared_ptr<StepTimer> timer_;
  std::shared_ptr<StepProfiler> profiler_;
};

struct Policy {
  std::string name;
  std::optional<remat::nn::GradientCheckpointingOptions> options;
  int64_t every_n = 1;
};

Policy parse_policy(const std::string& name) {
  using remat::nn::Granularity;
  remat::nn::GradientCheckpointingOptions o;
  if (name == "none") return {name, std::nullopt};
  if (name == "full") return {name, o};
  if (name == "attention") return {name, o.granularity(Granularity::kAttention)};
  if (name == "mlp") return {name, o.granularity(Granularity::kMlp)};
  if (name == "mlp-up") return {name, o.granularity(Granularity::kMlpUp)};
  if (name.rfind("every-", 0) == 0) {
    try {
      size_t used = 0;
      const int64_t n = std::stoll(name.substr(6), &used);
      if (n >= 1 && used == name.size() - 6) return {name, o.every_n_blocks(n), n};
    } catch (const std::exception&) {
    }
  }
  throw CLI::ValidationError("--policy",
                             "must be none, full, every-N (N >= 1), attention, mlp "
                             "or mlp-up, got \"" +
                                 name + "\"");
}

// What a policy must keep in bytes, by a simple count of the tensors the
// backward reads (bf16 autocast: matmul inputs and outputs in 2 bytes, the
// residual stream and norm outputs in 4), for T tokens:
//   per layer, no checkpointing: 12·T·h (norm inputs and outputs) + the
//   attention's q, k, v, output and log-sum-exp + the MLP's hidden tensors;
//   a checkpointed layer keeps its 4·T·h input, a checkpointed sub-block
//   drops its own tensors; a replay needs one layer's (sub-block's) worth
//   while the layers below it still hold theirs;
//   the loss keeps its gradient of the hidden states and one chunk of logits.
double activation_floor_bytes(const Shape& s, const Policy& p, bool bf16) {
  const double t = static_cast<double>(s.batch * s.seq), h = static_cast<double>(s.hidden);
  const double a = bf16 ? 2.0 : 4.0;
  const double kv =
      h * static_cast<double>(s.kv_heads > 0 ? s.kv_heads : s.heads) / static_cast<double>(s.heads);
  const double attention =
      a * t * (h + 2 * kv) + a * t * h + 4.0 * t * static_cast<double>(s.heads);
  const double mlp = a * t * static_cast<double>(s.ffn) * (s.arch == "gpt2" ? 2.0 : 4.0);
  const double layer = 12.0 * t * h + attention + mlp;
  const double loss =
      a * t * h + static_cast<double>(std::min<int64_t>(
                      s.batch * s.seq, std::max<int64_t>(1, (int64_t{1} << 25) / s.vocab))) *
                      static_cast<double>(s.vocab) * (4.0 + a);
  if (p.name == "none") return static_cast<double>(s.layers) * layer + loss;
  // mlp-up replays what mlp does, less the output projection, whose input
  // it also frees: the same floor.
  if (p.name == "attention" || p.name == "mlp" || p.name == "mlp-up") {
    const double sub = p.name == "attention" ? attention : mlp;
    return static_cast<double>(s.layers) * (layer - sub) + sub + loss;
  }
  // Whole layers (full, every-N): the backward of layer k, from the last
  // down, holds what layers below k keep plus layer k's activations (kept,
  // or replayed from its kept input).
  double held_below = 0, worst = 0;
  for (int64_t k = 0; k < s.layers; ++k) {
    const bool checkpointed = k % p.every_n == 0;
    worst = std::max(worst, held_below + (checkpointed ? 4.0 * t * h : 0.0) + layer);
    held_below += checkpointed ? 4.0 * t * h : layer;
  }
  return std::max(worst, held_below) + loss;
}

std::string device_name(const torch::Device& device) {
  if (!device.is_cuda()) return "cpu";
  return at::cuda::getDeviceProperties(device.index() < 0 ? 0 : device.index())->name;
}

// The profiler's events the summary reads: device kernels, copies and sets,
// and CPU operators (not runtime calls, user annotations or GPU-side ranges).
std::vector<remat_bench::ProfileEvent> profile_events(
    const torch::autograd::profiler::ProfilerResult& result) {
  using libkineto::ActivityType;
  using remat_bench::EventKind;
  std::vector<remat_bench::ProfileEvent> out;
  for (const auto& e : result.events()) {
    EventKind kind;
    switch (static_cast<ActivityType>(e.activityType())) {
      case ActivityType::CONCURRENT_KERNEL:
        kind = EventKind::kKernel;
        break;
      case ActivityType::GPU_MEMCPY:
        kind = EventKind::kMemcpy;
        break;
      case ActivityType::GPU_MEMSET:
        kind = EventKind::kMemset;
        break;
      case ActivityType::CPU_OP:
        kind = EventKind::kCpuOp;
        break;
      default:
        continue;
    }
    out.push_back({e.name(), static_cast<int64_t>(e.startNs()),
                   static_cast<int64_t>(e.durationNs()), kind, e.startThreadId()});
  }
  return out;
}

struct RunOptions {
  torch::Device device = torch::kCPU;
  bool bf16 = false, plain_loss = false;
  int64_t loss_chunk_rows = 0;
  int64_t warmup = 3, steps = 10;
  int64_t profile = 0;        // steps profiled after the timed ones
  std::string profile_trace;  // where to save their chrome trace ("": nowhere)
  std::string optim = "adamw_torch_fused";
  uint64_t seed = 0;
};

// The result record of one policy; with o.profile, *profile_table gets the
// profile's table.
json run_policy(const Shape& s, const Policy& policy, const RunOptions& o,
                std::string* profile_table) {
  const auto& device = o.device;
  const bool bf16 = o.bf16;
  const int64_t warmup = o.warmup, steps = o.steps;
  const auto& optim = o.optim;
  const uint64_t seed = o.seed;
  torch::manual_seed(seed);
  remat::models::FromPretrainedOptions options;
  options.device = device;
  auto model = remat::models::AutoModelForCausalLM::from_config(model_config(s), options);
  if (policy.options) model->gradient_checkpointing_enable(*policy.options);
  int64_t params = 0;
  for (const auto& p : model->parameters()) params += p.numel();
  char dir_template[] = "/tmp/remat-bench-XXXXXX";
  const char* dir = mkdtemp(dir_template);
  TORCH_CHECK(dir != nullptr, "remat-bench: cannot create a temporary output directory");
  remat::TrainingArguments args;
  args.output_dir = dir;
  args.per_device_train_batch_size = s.batch;
  args.max_steps = warmup + steps + o.profile;
  args.logging_steps = 1;
  args.learning_rate = 3e-4;
  args.lr_scheduler_type = "constant";
  args.weight_decay = 0.1;
  args.bf16 = bf16;
  args.save_strategy = "no";
  args.optim = optim;
  args.seed = static_cast<int64_t>(seed);
  args.use_cpu = !device.is_cuda();
  args.validate();
  auto data =
      std::make_shared<RandomTokens>(s.batch * (warmup + steps + o.profile), s.seq, s.vocab, seed);
  TimedTrainer trainer(model, args, data, warmup, steps, o.profile, o.plain_loss,
                       o.loss_chunk_rows);
  const auto start = Clock::now();
  trainer.train();
  rmdir(dir);

  // The timed steps only: the profiled ones come after them.
  std::vector<double> step_ms;
  const size_t timed_end = std::min(trainer.ends().size(), static_cast<size_t>(warmup + steps));
  for (size_t i = static_cast<size_t>(warmup); i < timed_end; ++i) {
    const auto begin = i == 0 ? start : trainer.ends()[i - 1];
    step_ms.push_back(std::chrono::duration<double, std::milli>(trainer.ends()[i] - begin).count());
  }
  std::vector<double> losses;
  for (const auto& record : trainer.log_history()) {
    if (record.contains("loss") && losses.size() < static_cast<size_t>(warmup + steps)) {
      losses.push_back(record["loss"].get<double>());
    }
  }
  auto sorted = step_ms;
  std::sort(sorted.begin(), sorted.end());
  const double median =
      sorted.empty() ? 0.0 : (sorted[(sorted.size() - 1) / 2] + sorted[sorted.size() / 2]) / 2.0;
  const double tokens = static_cast<double>(s.batch * s.seq);
  const double tokens_per_s = median > 0 ? tokens / (median / 1000.0) : 0.0;
  const double model_state = 16.0 * static_cast<double>(params);  // weights, grads, m, v
  // Non-default paths are named, so compare.py keeps them apart.
  std::string framework = "remat";
  if (o.plain_loss) framework += "+plain_loss";
  if (!o.plain_loss && o.loss_chunk_rows > 0) {
    framework += "+chunk" + std::to_string(o.loss_chunk_rows);
  }
  if (optim != "adamw_torch_fused") framework += "+" + optim;
  json r = {{"framework", framework},
            {"arch", s.arch},
            {"layers", s.layers},
            {"hidden", s.hidden},
            {"heads", s.heads},
            {"kv_heads", s.kv_heads > 0 ? s.kv_heads : s.heads},
            {"ffn", s.ffn},
            {"vocab", s.vocab},
            {"batch", s.batch},
            {"seq", s.seq},
            {"bf16", bf16},
            {"optim", optim},
            {"loss", o.plain_loss ? "from full logits" : "chunked"},
            {"policy", policy.name},
            {"device", device_name(device)},
            {"params", params},
            {"warmup", warmup},
            {"steps", steps},
            {"step_ms", step_ms},
            {"median_step_ms", median},
            {"tokens_per_s", tokens_per_s},
            {"model_state_mib", model_state / (1 << 20)},
            {"activation_floor_mib", activation_floor_bytes(s, policy, bf16) / (1 << 20)},
            {"losses", losses},
            {"final_loss", losses.empty() ? json(nullptr) : json(losses.back())}};
  const double flops = model->training_flops_per_token(s.seq);
  r["flops_per_token"] = flops;
  const auto peak = remat::peak_flops(r["device"].get<std::string>(), bf16);
  r["mfu"] = peak ? json(flops * tokens_per_s / *peak) : json(nullptr);
  if (device.is_cuda()) {
    const double peak_mib = static_cast<double>(trainer.timed_peak()) / (1 << 20);
    r["peak_allocated_mib"] = peak_mib;
    r["peak_minus_model_state_mib"] = peak_mib - model_state / (1 << 20);
  } else {
    r["peak_allocated_mib"] = nullptr;
    r["peak_minus_model_state_mib"] = nullptr;
  }
  if (o.profile > 0) {
    auto* profiler = trainer.profiler();
    if (profiler == nullptr || profiler->result() == nullptr) {
      std::fprintf(stderr, "remat-bench: %s: the profiled steps did not run\n",
                   policy.name.c_str());
      r["profile"] = nullptr;
      return r;
    }
    const auto summary = remat_bench::summarize_profile(profile_events(*profiler->result()),
                                                        profiler->steps(), profiler->wall_ns());
    if (device.is_cuda() && summary.source != "device") {
      std::fprintf(stderr,
                   "remat-bench: %s: the profiler recorded no CUDA kernels (is CUPTI "
                   "available?); the profile counts CPU operators\n",
                   policy.name.c_str());
    }
    r["profile"] = remat_bench::to_json(summary);
    if (!o.profile_trace.empty()) {
      profiler->result()->save(o.profile_trace);
      r["profile"]["trace"] = o.profile_trace;
    }
    if (profile_table != nullptr) *profile_table = remat_bench::format_profile(summary);
  }
  return r;
}

// Where --profile_trace PATH puts a policy's trace: PATH itself for one
// policy; for several, PATH with ".POLICY" before its extension.
std::string trace_path(const std::string& path, const std::string& policy, bool several) {
  if (!several) return path;
  const size_t slash = path.find_last_of('/');
  const size_t dot = path.find_last_of('.');
  if (dot != std::string::npos && (slash == std::string::npos || dot > slash + 1)) {
    return path.substr(0, dot) + "." + policy + path.substr(dot);
  }
  return path + "." + policy;
}

std::string number(const json& value, const char* format) {
  if (value.is_null()) return "-";
  char buffer[64];
  std::snprintf(buffer, sizeof(buffer), format, value.get<double>());
  return buffer;
}

void print_table(const std::vector<json>& results) {
  std::printf("%-10s %10s %12s %7s %12s %14s %12s %11s\n", "policy", "step ms", "tokens/s", "MFU",
              "peak MiB", "peak-state MiB", "floor MiB", "final loss");
  for (const auto& r : results) {
    std::printf(
        "%-10s %10s %12s %7s %12s %14s %12s %11s\n", r["policy"].get<std::string>().c_str(),
        number(r["median_step_ms"], "%.1f").c_str(), number(r["tokens_per_s"], "%.0f").c_str(),
        r["mfu"].is_null() ? "-" : number(json(100 * r["mfu"].get<double>()), "%.1f%%").c_str(),
        number(r["peak_allocated_mib"], "%.0f").c_str(),
        number(r["peak_minus_model_state_mib"], "%.0f").c_str(),
        number(r["activation_floor_mib"], "%.0f").c_str(), number(r["final_loss"], "%.4f").c_str());
  }
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{
      "remat-bench: step time, throughput, MFU and peak memory of training through "
      "remat::Trainer, per checkpointing policy"};
  std::string preset_name = "tiny", device_arg, json_path, optim = "adamw_torch_fused";
  std::string policies = "none,full";
  Shape s;
  int64_t steps = 10, warmup = 3, profile = 0;
  std::string profile_trace;
  uint64_t seed = 0;
  bool bf16 = false, plain_loss = false;
  int64_t loss_chunk_rows = 0;
  std::string arch;  // empty: the preset's
  int64_t layers = 0, hidden = 0, heads = 0, kv_heads = 0, ffn = 0, vocab = 0, batch = 0,
          seq = 0;  // 0: the preset's
  app.add_option("--preset", preset_name, "gpt2-124m, llama-0.85b or tiny (the default)");
  app.add_option("--arch", arch, "gpt2 or llama (overrides the preset)")
      ->check(CLI::IsMember({"gpt2", "llama"}));
  app.add_option("--layers", layers, "decoder layers")->check(CLI::PositiveNumber);
  app.add_option("--hidden", hidden, "hidden size")->check(CLI::PositiveNumber);
  app.add_option("--heads", heads, "attention heads")->check(CLI::PositiveNumber);
  app.add_option("--kv_heads", kv_heads, "key/value heads (llama)")->check(CLI::PositiveNumber);
  app.add_option("--ffn", ffn, "MLP hidden size")->check(CLI::PositiveNumber);
  app.add_option("--vocab", vocab, "vocabulary size")->check(CLI::PositiveNumber);
  app.add_option("--batch", batch, "sequences per step")->check(CLI::PositiveNumber);
  app.add_option("--seq", seq, "tokens per sequence")->check(CLI::PositiveNumber);
  app.add_option("--steps", steps, "timed optimizer steps")->check(CLI::PositiveNumber);
  app.add_option("--warmup", warmup, "untimed steps first")->check(CLI::NonNegativeNumber);
  app.add_option("--profile", profile,
                 "K: after the timed steps, K more under the Kineto profiler (not timed); prints "
                 "and records under \"profile\" per step: kernel time by category (gemm, "
                 "attention, optimizer, norm, loss, reduction, elementwise, memcpy/memset, "
                 "other), GPU busy ms (the union of kernel intervals), idle %, launches and the "
                 "top 15 kernels; on CPU the top-level aten:: operators (default 0: off)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--profile_trace", profile_trace,
                 "with --profile: save the profiled steps' chrome trace here (with several "
                 "policies, PATH.POLICY.EXT per policy)");
  app.add_option(
      "--policy", policies,
      "comma-separated: none, full, every-N, attention, mlp, mlp-up (default none,full)");
  app.add_flag("--bf16", bf16, "bf16 autocast, as TrainingArguments.bf16");
  app.add_flag("--plain_loss", plain_loss,
               "compute the loss from the full logits (return_logits) instead of chunk by chunk");
  app.add_option("--loss_chunk_rows", loss_chunk_rows,
                 "tokens per chunk of the chunked loss (default 0: about 512 MiB of fp32 logits)")
      ->check(CLI::NonNegativeNumber);
  app.add_option("--optim", optim, "adamw_torch_fused (default) or adamw_torch")
      ->check(CLI::IsMember({"adamw_torch_fused", "adamw_torch"}));
  std::string sdpa = "default";
  app.add_option("--sdpa", sdpa,
                 "attention kernel preference on CUDA: default (ATen's order: flash first) or "
                 "cudnn (cuDNN's fused attention first)")
      ->check(CLI::IsMember({"default", "cudnn"}));
  app.add_option("--device", device_arg, "cuda or cpu (default: cuda when available)");
  app.add_option("--seed", seed, "seed of the weights and the tokens");
  app.add_option("--json", json_path, "write the results (a JSON array) here");
  CLI11_PARSE(app, argc, argv);
  try {
    s = preset(preset_name);
    if (!arch.empty()) s.arch = arch;
    const std::vector<std::pair<int64_t*, int64_t>> overrides = {
        {&s.layers, layers}, {&s.hidden, hidden}, {&s.heads, heads}, {&s.kv_heads, kv_heads},
        {&s.ffn, ffn},       {&s.vocab, vocab},   {&s.batch, batch}, {&s.seq, seq}};
    for (const auto& [field, value] : overrides) {
      if (value > 0) *field = value;
    }
    std::vector<Policy> parsed;
    std::stringstream list(policies);
    for (std::string item; std::getline(list, item, ',');) parsed.push_back(parse_policy(item));
    if (!profile_trace.empty() && profile == 0) {
      throw CLI::ValidationError("--profile_trace", "needs --profile K with K > 0");
    }
    const torch::Device device(device_arg.empty() ? (torch::cuda::is_available() ? "cuda" : "cpu")
                                                  : device_arg);
    remat::logger()->set_level(spdlog::level::warn);
    if (sdpa == "cudnn") {
      using B = at::SDPBackend;
      std::vector<int64_t> order;
      for (auto b : {B::cudnn_attention, B::flash_attention, B::efficient_attention, B::math,
                     B::overrideable}) {
        order.push_back(static_cast<int64_t>(b));
      }
      at::globalContext().setSDPPriorityOrder(order);
    }
    std::vector<json> results;
    std::vector<std::string> profile_tables;
    for (const auto& policy : parsed) {
      RunOptions run;
      run.device = device;
      run.bf16 = bf16;
      run.plain_loss = plain_loss;
      run.loss_chunk_rows = loss_chunk_rows;
      run.warmup = warmup;
      run.steps = steps;
      run.profile = profile;
      if (!profile_trace.empty()) {
        run.profile_trace = trace_path(profile_trace, policy.name, parsed.size() > 1);
      }
      run.optim = optim;
      run.seed = seed;
      std::string table;
      results.push_back(run_policy(s, policy, run, &table));
      results.back()["sdpa"] = sdpa;
      results.back()["fused_kernels"] = remat::nn::fused_kernels_available();
      profile_tables.push_back(table);
      if (device.is_cuda()) c10::getDeviceAllocator(c10::kCUDA)->emptyCache();
      std::fprintf(stderr, "%s: %.1f ms\n", policy.name.c_str(),
                   results.back()["median_step_ms"].get<double>());
    }
    std::printf(
        "%s %s, %ld layers x %ld hidden, %ld heads (%ld kv), ffn %ld, vocab %ld, "
        "batch %ld x %ld, %s, %s, on %s\n",
        preset_name.c_str(), s.arch.c_str(), static_cast<long>(s.layers),
        static_cast<long>(s.hidden), static_cast<long>(s.heads),
        static_cast<long>(s.kv_heads > 0 ? s.kv_heads : s.heads), static_cast<long>(s.ffn),
        static_cast<long>(s.vocab), static_cast<long>(s.batch), static_cast<long>(s.seq),
        bf16 ? "bf16" : "fp32", optim.c_str(),
        results.front()["device"].get<std::string>().c_str());
    print_table(results);
    for (size_t i = 0; i < results.size(); ++i) {
      if (profile_tables[i].empty()) continue;
      std::printf("\nprofile of policy %s, %s", results[i]["policy"].get<std::string>().c_str(),
                  profile_tables[i].c_str());
    }
    if (!json_path.empty()) {
      std::ofstream out(json_path);
      if (!out) throw std::runtime_error("cannot write " + json_path);
      out << json(results).dump(2) << "\n";
    }
  } catch (const std::exception& e) {
    std::fprintf(stderr, "remat-bench: %s\n", e.what());
    return 1;
  }
  return 0;
}
