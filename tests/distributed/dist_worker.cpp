// One rank of a distributed test run. distributed_test.cpp (or torchrun)
// starts it once per rank with RANK, WORLD_SIZE, MASTER_ADDR and MASTER_PORT
// set; it writes what the test compares into its output directory.
//
//   dist_worker train OUTDIR [--dp none|ddp|full_shard|shard_grad_op] [--checkpointing 0|1]
//                            [--fsdp_ac 0|1] [--outer 0|1] [--steps N] [--timeout S]
//                            [--die_at STEP] [--stall_at STEP]
//   dist_worker trainer OUTDIR <TrainingArguments flags>

#include <signal.h>
#include <unistd.h>

#include <cstdlib>
#include <fstream>
#include <iostream>
#include <limits>
#include <map>
#include <string>

#include <ATen/autocast_mode.h>

#include <chrono>
#include <optional>

#include "remat/distributed/data_parallel.h"
#include "remat/distributed/process_group.h"
#include "remat/memory.h"
#include "remat/models/causal_lm.h"
#include "remat/optim/adamw.h"
#include "remat/trainer.h"

namespace {

using remat::distributed::Collective;

std::shared_ptr<remat::models::CausalLMImpl> tiny_gpt2(uint64_t seed) {
  torch::manual_seed(seed);
  nlohmann::json config = {{"model_type", "gpt2"}, {"vocab_size", 48},  {"n_positions", 32},
                           {"n_embd", 32},         {"n_layer", 3},      {"n_head", 4},
                           {"resid_pdrop", 0.0},   {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0},
                           {"pad_token_id", 0}};
  return remat::models::AutoModelForCausalLM::from_config(
      remat::models::ModelConfig::from_json(config));
}

// The step's global batch: 6 rows of 12 tokens (6 divides among 1, 2 and 3
// ranks), the same on every rank.
torch::Tensor global_batch(int64_t step) {
  auto gen = at::detail::createCPUGenerator(1000 + step);
  return torch::randint(1, 48, {6, 12}, gen, torch::kLong);
}

std::map<std::string, std::string> parse_flags(int argc, char** argv, int first) {
  std::map<std::string, std::string> flags;
  for (int i = first; i + 1 < argc; i += 2) {
    std::string key = argv[i];
    if (key.rfind("--", 0) != 0) throw std::invalid_argument("expected a --flag, got " + key);
    flags[key.substr(2)] = argv[i + 1];
  }
  return flags;
}

void write_json(const std::string& path, const nlohmann::json& j) {
  std::ofstream(path) << j.dump(2);
}

int train(const std::string& out, std::map<std::string, std::string> flags) {
  auto flag = [&](const std::string& k, const std::string& fallback) {
    return flags.count(k) ? flags[k] : fallback;
  };
  const std::string dp = flag("dp", "ddp");
  const bool checkpointing = flag("checkpointing", "0") == "1";
  const bool outer = flag("outer", "0") == "1";
  const int64_t steps = std::stoll(flag("steps", "3"));
  const int64_t die_at = std::stoll(flag("die_at", "-1"));
  const int64_t stall_at = std::stoll(flag("stall_at", "-1"));

  auto env = remat::distributed::LaunchEnv::from_env();
  auto model = tiny_gpt2(0);
  if (checkpointing) model->gradient_checkpointing_enable();
  model->train();
  std::shared_ptr<remat::distributed::ProcessGroup> group;
  std::unique_ptr<remat::distributed::DataParallel> parallel;
  if (dp != "none") {
    group = remat::distributed::ProcessGroup::create(
        env, remat::distributed::ProcessGroupOptions().use_cpu(true).timeout_seconds(
                 std::stoll(flag("timeout", "30"))));
    if (dp == "ddp") {
      // Small buckets, so several all-reduces overlap the backward.
      parallel = std::make_unique<remat::distributed::DistributedDataParallel>(
          model, group, remat::distributed::DistributedDataParallelOptions().bucket_cap_mb(0.01));
    } else {
      parallel = std::make_unique<remat::distributed::FullyShardedDataParallel>(
          model, group,
          remat::distributed::FullyShardedDataParallelOptions()
              .sharding_strategy(dp)
              .activation_checkpointing(flag("fsdp_ac", "0") == "1"));
    }
  }
  const int64_t world = env.world_size, rank = env.rank;
  // A large epsilon makes each AdamW update proportional to the gradient, so
  // the weights compare the gradients themselves (Adam's normalization would
  // blow float noise in near-zero gradients up to full-size updates).
  const auto adam = torch::optim::AdamWOptions(0.5).eps(1.0).weight_decay(0.1);
  torch::optim::AdamW optimizer(parallel ? parallel->parameter_groups(adam)
                                         : remat::optim::get_parameter_groups(*model, adam),
                                adam);
  nlohmann::json report = {{"losses", nlohmann::json::array()},
                           {"grad_norms", nlohmann::json::array()}};
  for (int64_t step = 0; step < steps; ++step) {
    if (step == die_at && rank == 1) ::raise(SIGKILL);
    if (step == stall_at && rank == 1) ::sleep(600);
    auto ids = global_batch(step);
    const int64_t rows = ids.size(0) / world;
    auto local = ids.narrow(0, rank * rows, rows);
    const int64_t items = ids.size(0) * (ids.size(1) - 1);
    if (group) group->reset_counts();
    remat::models::CausalLMInputs in;
    in.input_ids = local;
    in.labels = local;
    in.num_items_in_batch = items;
    torch::Tensor loss;
    if (outer) {
      // Checkpointing around the whole model, outside the FSDP units.
      std::vector<torch::Tensor> params;
      for (auto& p : model->parameters()) params.push_back(p);
      loss = remat::checkpoint(
          [&](const std::vector<torch::Tensor>&) { return std::vector{model->forward(in).loss}; },
          {}, params, remat::CheckpointOptions().check_params(false))[0];
    } else {
      loss = model->forward(in).loss;
    }
    (loss * world).backward();
    double norm = 0;
    if (parallel) {
      parallel->finish_gradient_sync();
      norm = parallel->clip_grad_norm(1.0);
    } else {
      norm = torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
    }
    optimizer.step();
    if (parallel) parallel->after_optimizer_step();
    optimizer.zero_grad();
    double total = loss.item<double>();
    if (group) total = group->all_reduce_sum(total);
    report["losses"].push_back(total);
    report["grad_norms"].push_back(norm);
    if (group) {
      report["all_gather"] = group->count(Collective::kAllGather);
      report["reduce_scatter"] = group->count(Collective::kReduceScatter);
      report["all_reduce"] = group->count(Collective::kAllReduce);
    }
  }
  if (auto* ddp = dynamic_cast<remat::distributed::DistributedDataParallel*>(parallel.get())) {
    report["buckets"] = ddp->buckets().size();
    report["launched_during_backward"] = ddp->launched_during_backward();
  }
  if (auto* fsdp = dynamic_cast<remat::distributed::FullyShardedDataParallel*>(parallel.get())) {
    report["units"] = fsdp->num_units();
  }
  if (parallel) parallel->gather_full_parameters();
  if (rank == 0) {
    std::vector<torch::Tensor> weights;
    for (auto& [name, t] : model->hf_state_dict()) weights.push_back(t.detach().clone());
    torch::save(weights, out + "/weights.pt");
  }
  if (parallel) parallel->release_full_parameters(false);
  write_json(out + "/report-" + std::to_string(rank) + ".json", report);
  if (group) group->shutdown();
  return 0;
}

// Throughput and memory of DDP/FSDP training of a GPT-2-shaped model on the
// group's device (CUDA with NCCL under torchrun on a GPU machine).
int bench(const std::string& out, std::map<std::string, std::string> flags) {
  auto flag = [&](const std::string& k, const std::string& fallback) {
    return flags.count(k) ? flags[k] : fallback;
  };
  auto num = [&](const std::string& k, const char* fallback) {
    return std::stoll(flag(k, fallback));
  };
  const std::string dp = flag("dp", "ddp");
  const bool checkpointing = flag("checkpointing", "0") == "1";
  const bool bf16 = flag("bf16", "1") == "1";
  const int64_t batch = num("batch", "8"), seq = num("seq", "1024"), steps = num("steps", "20"),
                warmup = num("warmup", "5");
  auto env = remat::distributed::LaunchEnv::from_env();
  auto group = remat::distributed::ProcessGroup::create(env);
  const auto device = group->device();
  torch::manual_seed(0);
  nlohmann::json config = {{"model_type", "gpt2"},
                           {"vocab_size", num("vocab", "50304")},
                           {"n_positions", seq},
                           {"n_embd", num("dim", "768")},
                           {"n_layer", num("layers", "12")},
                           {"n_head", num("heads", "12")},
                           {"resid_pdrop", 0.0},
                           {"embd_pdrop", 0.0},
                           {"attn_pdrop", 0.0}};
  remat::models::FromPretrainedOptions load;
  load.device = device;
  auto model = remat::models::AutoModelForCausalLM::from_config(
      remat::models::ModelConfig::from_json(config), load);
  if (checkpointing) model->gradient_checkpointing_enable();
  model->train();
  std::unique_ptr<remat::distributed::DataParallel> parallel;
  if (dp == "ddp") {
    parallel = std::make_unique<remat::distributed::DistributedDataParallel>(model, group);
  } else {
    parallel = std::make_unique<remat::distributed::FullyShardedDataParallel>(
        model, group, remat::distributed::FullyShardedDataParallelOptions().sharding_strategy(dp));
  }
  const auto adam = torch::optim::AdamWOptions(1e-4).weight_decay(0.1);
  torch::optim::AdamW optimizer(parallel->parameter_groups(adam), adam);
  const int64_t world = group->world_size();
  auto ids = torch::randint(0, num("vocab", "50304"), {batch, seq},
                            torch::TensorOptions().dtype(torch::kLong).device(device));
  std::chrono::steady_clock::time_point start;
  for (int64_t step = 0; step < warmup + steps; ++step) {
    if (step == warmup) {
      if (device.is_cuda()) torch::cuda::synchronize(device.index());
      group->barrier();
      if (device.is_cuda()) remat::reset_peak_memory_stats(device);
      start = std::chrono::steady_clock::now();
    }
    remat::models::CausalLMInputs in;
    in.input_ids = ids;
    in.labels = ids;
    torch::Tensor loss;
    {
      at::autocast::set_autocast_enabled(device.type(), bf16);
      at::autocast::set_autocast_dtype(device.type(), at::kBFloat16);
      loss = model->forward(in).loss;
      at::autocast::set_autocast_enabled(device.type(), false);
      at::autocast::clear_cache();
    }
    (loss * static_cast<double>(world)).backward();
    parallel->finish_gradient_sync();
    parallel->clip_grad_norm(1.0);
    optimizer.step();
    parallel->after_optimizer_step();
    optimizer.zero_grad();
  }
  if (device.is_cuda()) torch::cuda::synchronize(device.index());
  group->barrier();
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  nlohmann::json result = {
      {"dp", dp},
      {"checkpointing", checkpointing},
      {"world_size", world},
      {"rank", env.rank},
      {"device", device.str()},
      {"backend", group->backend()},
      {"batch_per_rank", batch},
      {"seq", seq},
      {"steps", steps},
      {"step_ms", 1000 * seconds / steps},
      {"tokens_per_s", static_cast<double>(batch * seq * world * steps) / seconds},
      {"peak_mib", device.is_cuda() ? remat::max_memory_allocated(device) >> 20 : 0}};
  write_json(out + "/bench-" + dp + (checkpointing ? "-ckpt" : "") + "-w" + std::to_string(world) +
                 "-rank" + std::to_string(env.rank) + ".json",
             result);
  std::cout << result.dump() << std::endl;
  group->shutdown();
  return 0;
}

// Sequences of one length (so each rank's padding equals the single
// process's) continuing "+stride" patterns.
struct PatternDataset : remat::data::Dataset {
  int64_t size() const override { return 24; }
  remat::data::Example get(int64_t index) const override {
    remat::data::Example e;
    for (int64_t t = 0; t < 10; ++t)
      e.input_ids.push_back(3 + (index * 7 + (1 + index % 3) * t) % 40);
    e.labels = e.input_ids;
    return e;
  }
};

// Stops the run at a step, on every rank through request_stop()
// (REMAT_TEST_STOP_AT) or on rank 1 alone through SIGTERM
// (REMAT_TEST_SIGTERM_AT); both come before the step's gradients are reduced,
// so the run stops after that step.
struct Stopper : remat::TrainerCallback {
  remat::Trainer* trainer = nullptr;
  int64_t stop_at = -1, sigterm_at = -1, rank = 0;
  void on_step_begin(const remat::TrainingArguments&, remat::TrainerState& state,
                     remat::TrainerControl&) override {
    const int64_t step = state.global_step + 1;
    if (step == stop_at) trainer->request_stop();
    if (step == sigterm_at && rank == 1) ::raise(SIGTERM);
  }
};

// Multiplies the gradient flowing back by +inf; the forward value is
// unchanged: an fp16 overflow.
struct InfGradient : torch::autograd::Function<InfGradient> {
  static torch::Tensor forward(torch::autograd::AutogradContext*, const torch::Tensor& x) {
    return x.clone();
  }
  static torch::autograd::variable_list backward(torch::autograd::AutogradContext*,
                                                 torch::autograd::variable_list grads) {
    return {grads[0] * std::numeric_limits<float>::infinity()};
  }
};

// Overflows the gradients of rank 1 alone at step REMAT_TEST_INF_GRAD_AT.
struct OverflowingTrainer : remat::Trainer {
  using remat::Trainer::Trainer;
  torch::Tensor compute_loss(torch::nn::Module& model, const remat::data::Batch& batch,
                             int64_t items) override {
    auto loss = remat::Trainer::compute_loss(model, batch, items);
    const bool fault = process_group() && process_group()->rank() == 1 &&
                       state().global_step + 1 == inf_grad_at && model.is_training();
    return fault ? InfGradient::apply(loss) : loss;
  }
  int64_t inf_grad_at = -1;
};

int trainer(int argc, char** argv) {
  // argv[3..]: TrainingArguments flags.
  std::vector<char*> args{argv[0]};
  for (int i = 3; i < argc; ++i) args.push_back(argv[i]);
  auto training_args = remat::TrainingArguments::parse(static_cast<int>(args.size()), args.data());
  auto stopper = std::make_shared<Stopper>();
  auto t_model = tiny_gpt2(0);
  OverflowingTrainer t(t_model, training_args, std::make_shared<PatternDataset>(), nullptr, nullptr,
                       {stopper});
  if (const char* at = std::getenv("REMAT_TEST_INF_GRAD_AT")) t.inf_grad_at = std::stoll(at);
  stopper->trainer = &t;
  if (const char* stop = std::getenv("REMAT_TEST_STOP_AT")) stopper->stop_at = std::stoll(stop);
  if (const char* at = std::getenv("REMAT_TEST_SIGTERM_AT")) stopper->sigterm_at = std::stoll(at);
  const int64_t rank = t.process_group() ? t.process_group()->rank() : 0;
  stopper->rank = rank;
  auto result = t.train();
  auto weights_sum = [](torch::nn::Module& m) {
    double sum = 0;
    for (const auto& p : m.parameters()) sum += p.detach().to(torch::kDouble).sum().item<double>();
    return sum;
  };
  write_json(std::string(argv[2]) + "/result-" + std::to_string(rank) + ".json",
             {{"global_step", result.global_step},
              {"interrupted", result.interrupted},
              {"checkpoint", result.checkpoint},
              {"is_world_process_zero", t.state().is_world_process_zero},
              {"skipped_steps", result.metrics.count("train_skipped_steps")
                                    ? result.metrics.at("train_skipped_steps")
                                    : 0.0},
              {"weights_sum", weights_sum(*t_model)}});
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  if (argc < 3) {
    std::cerr << "usage: dist_worker train|trainer OUTDIR [flags]\n";
    return 2;
  }
  const std::string mode = argv[1], out = argv[2];
  try {
    if (mode == "train") return train(out, parse_flags(argc, argv, 3));
    if (mode == "trainer") return trainer(argc, argv);
    if (mode == "bench") return bench(out, parse_flags(argc, argv, 3));
    std::cerr << "unknown mode " << mode << "\n";
    return 2;
  } catch (const std::exception& e) {
    std::cerr << "dist_worker: " << e.what() << "\n";
    return 1;
  }
}
