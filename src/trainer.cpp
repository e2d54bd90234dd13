#include "remat/trainer.h"

#include <dirent.h>
#include <fcntl.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>

#include "detail/autocast.h"
#include "remat/data/data_collator.h"
#include "remat/data/distributed_sampler.h"
#include "remat/distributed/data_parallel.h"
#include "remat/io/safetensors.h"
#include "remat/logging.h"
#include "remat/memory.h"
#include "remat/models/causal_lm.h"
#include "remat/nn/checkpointable.h"
#include "remat/optim/adamw.h"
#include "remat/optim/lr_scheduler.h"

namespace remat {
namespace {

// bf16 autocast for the forward pass when `enabled`.
std::optional<detail::AutocastGuard> bf16_autocast(bool enabled, c10::DeviceType device) {
  if (!enabled) return std::nullopt;
  return std::optional<detail::AutocastGuard>(
      std::in_place, detail::AutocastState::enabled_for(device, at::kBFloat16));
}

torch::Device pick_device(const TrainingArguments& args) {
  if (!args.use_cpu && torch::cuda::is_available()) return torch::Device(torch::kCUDA, 0);
  return torch::Device(torch::kCPU);
}

// Target tokens of a causal-LM batch: labels shifted by one, -100 ignored.
int64_t target_tokens(const data::Batch& batch) {
  const auto& labels = batch.labels;
  if (labels.size(1) < 2) return 0;
  return (labels.narrow(1, 1, labels.size(1) - 1) != data::kIgnoreIndex).sum().item<int64_t>();
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

// File-system helpers on POSIX calls: the pip LibTorch exports its own copies
// of std::filesystem operations, and some of them misbehave when linked.
bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
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

// checkpoint-<step> directories of `dir`, oldest first.
std::vector<std::pair<int64_t, std::string>> list_checkpoints(const std::string& dir) {
  std::vector<std::pair<int64_t, std::string>> result;
  DIR* handle = ::opendir(dir.c_str());
  if (handle == nullptr) return result;
  const std::string prefix = "checkpoint-";
  while (auto* entry = ::readdir(handle)) {
    std::string name = entry->d_name;
    if (name.rfind(prefix, 0) != 0) continue;
    auto digits = name.substr(prefix.size());
    if (digits.empty() || digits.find_first_not_of("0123456789") != std::string::npos) continue;
    result.emplace_back(std::stoll(digits), dir + "/" + name);
  }
  ::closedir(handle);
  std::sort(result.begin(), result.end());
  return result;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path);
  TORCH_CHECK(in, "Trainer: cannot read ", path);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

void write_file(const std::string& path, const std::string& content) {
  std::ofstream out(path);
  out << content;
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

}  // namespace

// Where training stands: what a checkpoint records to resume exactly.
struct Trainer::Position {
  int64_t global_step = 0;
  int64_t epoch = 0;             // the epoch being trained
  int64_t batches_in_epoch = 0;  // batches of that epoch already used
  double loss_total = 0;

  nlohmann::json to_json() const {
    return {{"global_step", global_step},
            {"epoch_index", epoch},
            {"batches_in_epoch", batches_in_epoch},
            {"loss_total", loss_total}};
  }
};

Trainer::Trainer(std::shared_ptr<torch::nn::Module> model, TrainingArguments args,
                 std::shared_ptr<const data::Dataset> train_dataset,
                 std::shared_ptr<const data::Dataset> eval_dataset, data::CollateFn collator)
    : model_(std::move(model)),
      args_(std::move(args)),
      train_dataset_(std::move(train_dataset)),
      eval_dataset_(std::move(eval_dataset)),
      collator_(std::move(collator)),
      device_(pick_device(args_)) {
  TORCH_CHECK(model_ != nullptr, "Trainer: model is null");
  args_.validate();
  TORCH_CHECK(!args_.fp16,
              "Trainer: fp16 is not supported yet (it needs a dynamic loss scaler); use --bf16");
  TORCH_CHECK(args_.eval_strategy == "no" || eval_dataset_ != nullptr, "Trainer: eval_strategy \"",
              args_.eval_strategy,
              "\" needs an eval dataset; pass one or set eval_strategy \"no\"");
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
  if (!collator_) {
    collator_ =
        data::DataCollatorForCausalLM(data::DataCollatorForCausalLMOptions(pad_token_of(*model_)));
  }
  model_->to(device_);
}

torch::Tensor Trainer::compute_loss(torch::nn::Module& model, const data::Batch& batch,
                                    int64_t num_items_in_batch) {
  auto* lm = dynamic_cast<models::CausalLMImpl*>(&model);
  TORCH_CHECK(lm != nullptr,
              "Trainer: the model is not a remat causal LM; override Trainer::compute_loss");
  models::CausalLMInputs in;
  in.input_ids = batch.input_ids;
  in.attention_mask = batch.attention_mask;
  in.labels = batch.labels;
  in.num_items_in_batch = std::max<int64_t>(num_items_in_batch, 1);
  return lm->forward(in).loss;
}

void Trainer::log(nlohmann::json record) {
  log_history_.push_back(record);
  if (group_ && group_->rank() != 0) return;
  const auto& report = args_.report_to;
  if (std::find(report.begin(), report.end(), "jsonl") == report.end()) return;
  std::filesystem::create_directories(args_.output_dir);
  std::ofstream out(args_.output_dir + "/log.jsonl", std::ios::app);
  TORCH_CHECK(out, "Trainer: cannot append to ", args_.output_dir, "/log.jsonl");
  out << record.dump() << "\n";
}

void Trainer::save_model() const { save_model_to(args_.output_dir); }

void Trainer::save_model_to(const std::string& dir) const {
  if (parallel_) parallel_->gather_full_parameters();
  const bool writes = !group_ || group_->rank() == 0;
  if (writes) save_model_files(*model_, dir);
  if (parallel_) parallel_->release_full_parameters(/*loaded=*/false);
  if (group_) group_->barrier();
}

void Trainer::save_model_files(const torch::nn::Module& model, const std::string& dir) {
  if (auto* lm = dynamic_cast<const models::CausalLMImpl*>(&model)) {
    lm->save_pretrained(dir);
    return;
  }
  torch::serialize::OutputArchive archive;
  model.save(archive);
  archive.save_to(dir + "/model.pt");
}

void Trainer::save_checkpoint(const Position& position, torch::optim::Optimizer& optimizer,
                              const nlohmann::json& scheduler_state) {
  const std::string name = "checkpoint-" + std::to_string(position.global_step);
  const std::string final_dir = args_.output_dir + "/" + name;
  // Rank 0 writes; under FSDP every rank adds its optimizer shard.
  const bool main = !group_ || group_->rank() == 0;
  const std::string tmp = args_.output_dir + "/.tmp-" + name;
  if (main) {
    remove_tree(tmp);
    make_directory(tmp);
  }
  if (group_) group_->barrier();
  save_model_to(tmp);
  const bool sharded = parallel_ && parallel_->sharded_optimizer_state();
  if (main || sharded) {
    torch::serialize::OutputArchive archive;
    optimizer.save(archive);
    archive.save_to(tmp + "/" + optimizer_file());
  }
  if (group_) group_->barrier();
  if (!main) {
    group_->barrier();  // rank 0 renames the directory
    return;
  }
  write_file(tmp + "/scheduler.json", scheduler_state.dump(2));
  torch::save(rng_states(), tmp + "/rng_state.pt");
  nlohmann::json state = position.to_json();
  state["log_history"] = log_history_;
  state["world_size"] = group_ ? group_->world_size() : 1;
  write_file(tmp + "/trainer_state.json", state.dump(2));
  args_.to_json_file(tmp + "/training_args.json");
  // Only a complete checkpoint ever carries the final name: write aside,
  // flush, then rename.
  fsync_tree(tmp);
  remove_tree(final_dir);
  TORCH_CHECK(::rename(tmp.c_str(), final_dir.c_str()) == 0, "Trainer: cannot rename ", tmp, " to ",
              final_dir, ": ", std::strerror(errno));
  fsync_path(args_.output_dir, O_RDONLY | O_DIRECTORY);
  logger()->info("saved {}", final_dir);
  if (args_.save_total_limit) {
    auto checkpoints = list_checkpoints(args_.output_dir);
    const auto limit = static_cast<size_t>(*args_.save_total_limit);
    for (size_t i = 0; i + limit < checkpoints.size(); ++i) remove_tree(checkpoints[i].second);
  }
  if (group_) group_->barrier();
}

std::string Trainer::optimizer_file() const {
  if (!parallel_ || !parallel_->sharded_optimizer_state()) return "optimizer.pt";
  return "optimizer.rank" + std::to_string(group_->rank()) + ".pt";
}

Trainer::Position Trainer::resume(const std::string& requested, torch::optim::Optimizer& optimizer,
                                  nlohmann::json& scheduler_state) {
  std::string dir = requested;
  if (requested == "latest") {
    auto checkpoints = list_checkpoints(args_.output_dir);
    TORCH_CHECK(!checkpoints.empty(), "Trainer: resume_from_checkpoint \"latest\" but ",
                args_.output_dir, " holds no checkpoint-<step> directory");
    dir = checkpoints.back().second;
  }
  TORCH_CHECK(is_directory(dir), "Trainer: resume_from_checkpoint ", dir, " is not a directory");
  auto state = nlohmann::json::parse(read_file(dir + "/trainer_state.json"));
  const int64_t world = group_ ? group_->world_size() : 1;
  const int64_t saved_world = state.value("world_size", int64_t{1});
  TORCH_CHECK(saved_world == world, "Trainer: checkpoint ", dir, " was written by ", saved_world,
              " processes but this run has ", world,
              "; resume with the same number of processes (torchrun --nproc-per-node)");
  if (parallel_) parallel_->gather_full_parameters();
  if (auto* lm = dynamic_cast<models::CausalLMImpl*>(model_.get())) {
    lm->load_hf_state_dict(io::load_model_weights(dir));
  } else {
    torch::serialize::InputArchive archive;
    archive.load_from(dir + "/model.pt", device_);
    model_->load(archive);
  }
  if (parallel_) parallel_->release_full_parameters(/*loaded=*/true);
  torch::serialize::InputArchive archive;
  archive.load_from(dir + "/" + optimizer_file(), device_);
  optimizer.load(archive);
  scheduler_state = nlohmann::json::parse(read_file(dir + "/scheduler.json"));
  std::vector<torch::Tensor> states;
  torch::load(states, dir + "/rng_state.pt");
  set_rng_states(states);
  Position position;
  position.global_step = state.at("global_step").get<int64_t>();
  position.epoch = state.at("epoch_index").get<int64_t>();
  position.batches_in_epoch = state.at("batches_in_epoch").get<int64_t>();
  position.loss_total = state.at("loss_total").get<double>();
  log_history_ = state.at("log_history").get<std::vector<nlohmann::json>>();
  logger()->info("resuming from {} at step {}", dir, position.global_step);
  return position;
}

TrainOutput Trainer::train() {
  TORCH_CHECK(train_dataset_ != nullptr && train_dataset_->size() > 0,
              "Trainer::train: the train dataset is empty");
  torch::manual_seed(static_cast<uint64_t>(args_.seed));
  std::filesystem::create_directories(args_.output_dir);
  if (args_.gradient_checkpointing) {
    nn::gradient_checkpointing_enable(*model_, args_.gradient_checkpointing_options());
  }
  model_->train();
  stop_requested_ = false;
  if (group_) {
    parallel_.reset();  // a second train() wraps afresh
    parallel_ = distributed::wrap(model_, group_, args_.fsdp, args_.fsdp_config_object());
  }
  const int64_t world = group_ ? group_->world_size() : 1;
  const bool main = !group_ || group_->rank() == 0;

  const int64_t seed = args_.data_seed.value_or(args_.seed);
  data::DataLoader loader(train_dataset_,
                          data::DistributedSampler(
                              train_dataset_->size(),
                              data::DistributedSamplerOptions().seed(seed).num_replicas(world).rank(
                                  group_ ? group_->rank() : 0)),
                          collator_,
                          data::DataLoaderOptions()
                              .batch_size(args_.per_device_train_batch_size)
                              .drop_last(args_.dataloader_drop_last)
                              .num_workers(std::max<int64_t>(args_.dataloader_num_workers, 1)));
  const int64_t accumulation = args_.gradient_accumulation_steps;
  const int64_t batches = loader.size();
  TORCH_CHECK(batches > 0, "Trainer::train: no batch of ", args_.per_device_train_batch_size,
              " examples fits the ", train_dataset_->size(), " training examples with drop_last");
  const int64_t steps_per_epoch = (batches + accumulation - 1) / accumulation;
  const int64_t total_steps =
      args_.max_steps > 0
          ? args_.max_steps
          : static_cast<int64_t>(std::ceil(args_.num_train_epochs * steps_per_epoch));
  const int64_t epochs = (total_steps + steps_per_epoch - 1) / steps_per_epoch;

  const auto adamw = torch::optim::AdamWOptions(args_.learning_rate)
                         .betas({args_.adam_beta1, args_.adam_beta2})
                         .eps(args_.adam_epsilon)
                         .weight_decay(args_.weight_decay);
  // Under FSDP the optimizer steps the local shards: its state is sharded.
  auto optimizer = parallel_ ? torch::optim::AdamW(parallel_->parameter_groups(adamw), adamw)
                             : optim::create_adamw(*model_, adamw);
  optim::LRScheduler scheduler(optimizer,
                               optim::LRSchedulerOptions(args_.lr_scheduler_type)
                                   .num_warmup_steps(warmup_steps(args_.warmup_steps, total_steps))
                                   .num_training_steps(total_steps)
                                   .scheduler_specific_kwargs(args_.lr_scheduler_kwargs));
  Position pos;
  if (args_.resume_from_checkpoint) {
    nlohmann::json scheduler_state;
    pos = resume(*args_.resume_from_checkpoint, optimizer, scheduler_state);
    scheduler.load_state(optim::LRSchedulerState::from_json(scheduler_state));
  }
  const int64_t logging_steps = steps_from(args_.logging_steps, total_steps);
  const int64_t eval_steps =
      steps_from(args_.eval_steps.value_or(args_.logging_steps), total_steps);
  const int64_t save_steps = steps_from(args_.save_steps, total_steps);
  auto checkpoint = [&] { save_checkpoint(pos, optimizer, scheduler.state().to_json()); };
  logger()->info(
      "training: {} examples, {} epochs, {} optimizer steps, batch {} x {} accumulation, "
      "gradient checkpointing {}, on {}",
      train_dataset_->size(), epochs, total_steps, args_.per_device_train_batch_size, accumulation,
      args_.gradient_checkpointing ? "on" : "off", device_.str());

  double loss_since_log = 0;
  int64_t steps_since_log = 0, tokens_since_log = 0;
  auto log_start = std::chrono::steady_clock::now();
  if (device_.is_cuda()) reset_peak_memory_stats(device_);
  std::vector<torch::Tensor> params;
  for (const auto& p : model_->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }

  while (pos.epoch < epochs && pos.global_step < total_steps && !stop_requested_) {
    auto stream = loader.epoch(pos.epoch, pos.batches_in_epoch);
    while (pos.global_step < total_steps && !stop_requested_) {
      std::vector<data::Batch> group;
      while (static_cast<int64_t>(group.size()) < accumulation) {
        auto batch = stream.next();
        if (!batch) break;
        group.push_back(batch->to(device_, /*non_blocking=*/true));
      }
      if (group.empty()) break;
      pos.batches_in_epoch += static_cast<int64_t>(group.size());
      int64_t items = 0;
      for (const auto& b : group) items += target_tokens(b);
      // Data parallel: every rank divides by the tokens of all ranks and
      // scales by the world size, which the gradient averaging undoes, so N
      // ranks train as one process on the concatenated batch.
      if (group_) items = static_cast<int64_t>(group_->all_reduce_sum(static_cast<double>(items)));
      double step_loss = 0;
      for (size_t i = 0; i < group.size(); ++i) {
        const auto& b = group[i];
        if (parallel_) parallel_->set_requires_gradient_sync(i + 1 == group.size());
        torch::Tensor loss;
        {
          auto autocast = bf16_autocast(args_.bf16, device_.type());
          loss = compute_loss(*model_, b, items);
        }
        (world > 1 ? loss * static_cast<double>(world) : loss).backward();
        if (parallel_) parallel_->finish_gradient_sync();
        step_loss += loss.item<double>();
        tokens_since_log += b.input_ids.numel() * world;
      }
      if (group_) step_loss = group_->all_reduce_sum(step_loss);
      const double max_norm =
          args_.max_grad_norm > 0 ? args_.max_grad_norm : std::numeric_limits<double>::infinity();
      const double grad_norm = parallel_ ? parallel_->clip_grad_norm(max_norm)
                                         : torch::nn::utils::clip_grad_norm_(params, max_norm);
      const int64_t step = ++pos.global_step;
      TORCH_CHECK(std::isfinite(step_loss) && std::isfinite(grad_norm),
                  "Trainer: non-finite loss (", step_loss, ") or gradient norm (", grad_norm,
                  ") at step ", step, "; lower the learning rate or check the data");
      optimizer.step();
      if (parallel_) parallel_->after_optimizer_step();
      scheduler.step();
      optimizer.zero_grad();
      loss_since_log += step_loss;
      pos.loss_total += step_loss;
      ++steps_since_log;
      on_step_end(step);

      const bool first = step == 1 && args_.logging_first_step;
      if (args_.logging_strategy == "steps" && (step % logging_steps == 0 || first)) {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - log_start).count();
        nlohmann::json record = {
            {"loss", loss_since_log / steps_since_log},
            {"grad_norm", grad_norm},
            {"learning_rate", scheduler.last_lr().front()},
            {"epoch", pos.epoch + static_cast<double>(pos.batches_in_epoch) / batches},
            {"step", step},
            {"step_ms", 1000 * seconds / steps_since_log},
            {"tokens_per_s", tokens_since_log / std::max(seconds, 1e-9)}};
        if (device_.is_cuda()) record["peak_memory_mib"] = max_memory_allocated(device_) >> 20;
        if (main) {
          logger()->info(
              "step {}/{} | loss {:.4f} | grad_norm {:.3f} | lr {:.3e} | {:.1f} ms | {:.0f} tok/s",
              step, total_steps, record["loss"].get<double>(), grad_norm,
              record["learning_rate"].get<double>(), record["step_ms"].get<double>(),
              record["tokens_per_s"].get<double>());
        }
        log(record);
        loss_since_log = 0;
        steps_since_log = 0;
        tokens_since_log = 0;
        log_start = std::chrono::steady_clock::now();
      }
      if (args_.eval_strategy == "steps" && step % eval_steps == 0) evaluate();
      const bool save_now = args_.save_strategy == "steps" && step % save_steps == 0;
      if (save_now || (stop_requested_ && args_.save_strategy != "no")) checkpoint();
    }
    if (stop_requested_) break;
    ++pos.epoch;
    pos.batches_in_epoch = 0;
    if (args_.eval_strategy == "epoch") evaluate();
    if (args_.save_strategy == "epoch") checkpoint();
  }
  TrainOutput result;
  result.global_step = pos.global_step;
  result.training_loss = pos.global_step > 0 ? pos.loss_total / pos.global_step : 0.0;
  if (!stop_requested_) {
    log({{"train_loss", result.training_loss}, {"step", result.global_step}});
    save_model();
  }
  if (parallel_) {
    // Leave every rank with the whole trained model, unwrapped.
    parallel_->gather_full_parameters();
    parallel_.reset();
  }
  return result;
}

std::map<std::string, double> Trainer::evaluate() {
  TORCH_CHECK(eval_dataset_ != nullptr && eval_dataset_->size() > 0,
              "Trainer::evaluate: no eval dataset (or it is empty)");
  const bool was_training = model_->is_training();
  model_->eval();
  data::DataLoader loader(
      eval_dataset_,
      data::DistributedSampler(eval_dataset_->size(),
                               data::DistributedSamplerOptions()
                                   .shuffle(false)
                                   .num_replicas(group_ ? group_->world_size() : 1)
                                   .rank(group_ ? group_->rank() : 0)),
      collator_, data::DataLoaderOptions().batch_size(args_.per_device_eval_batch_size));
  double loss_sum = 0;
  int64_t tokens = 0;
  {
    torch::NoGradGuard no_grad;
    for (const auto& batch : loader.epoch(0)) {
      auto b = batch.to(device_, /*non_blocking=*/true);
      const int64_t items = target_tokens(b);
      if (items == 0) continue;
      auto autocast = bf16_autocast(args_.bf16, device_.type());
      // compute_loss divides by its count: scale back to a sum.
      loss_sum += compute_loss(*model_, b, items).item<double>() * items;
      tokens += items;
    }
  }
  if (was_training) model_->train();
  if (group_) {
    loss_sum = group_->all_reduce_sum(loss_sum);
    tokens = static_cast<int64_t>(group_->all_reduce_sum(static_cast<double>(tokens)));
  }
  TORCH_CHECK(tokens > 0, "Trainer::evaluate: the eval dataset has no target tokens");
  const double loss = loss_sum / tokens;
  std::map<std::string, double> metrics{{"eval_loss", loss}, {"perplexity", std::exp(loss)}};
  logger()->info("eval | loss {:.4f} | perplexity {:.3f}", loss, std::exp(loss));
  log({{"eval_loss", loss}, {"perplexity", std::exp(loss)}});
  return metrics;
}

}  // namespace remat
