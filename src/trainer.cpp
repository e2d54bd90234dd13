#include "remat/trainer.h"

#include <ATen/autocast_mode.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>

#include "remat/data/data_collator.h"
#include "remat/data/distributed_sampler.h"
#include "remat/logging.h"
#include "remat/memory.h"
#include "remat/models/causal_lm.h"
#include "remat/nn/checkpointable.h"
#include "remat/optim/adamw.h"
#include "remat/optim/lr_scheduler.h"

namespace remat {
namespace {

// bf16 autocast for the forward pass, entered like torch.autocast: a nesting
// level, and the cast cache cleared when the outermost level ends.
class Bf16Autocast {
 public:
  Bf16Autocast(bool enabled, c10::DeviceType type) : enabled_(enabled), type_(type) {
    if (!enabled_) return;
    was_enabled_ = at::autocast::is_autocast_enabled(type_);
    previous_dtype_ = at::autocast::get_autocast_dtype(type_);
    at::autocast::set_autocast_enabled(type_, true);
    at::autocast::set_autocast_dtype(type_, at::kBFloat16);
    at::autocast::increment_nesting();
  }
  ~Bf16Autocast() {
    if (!enabled_) return;
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(type_, was_enabled_);
    at::autocast::set_autocast_dtype(type_, previous_dtype_);
  }
  Bf16Autocast(const Bf16Autocast&) = delete;
  Bf16Autocast& operator=(const Bf16Autocast&) = delete;

 private:
  bool enabled_;
  c10::DeviceType type_;
  bool was_enabled_ = false;
  at::ScalarType previous_dtype_ = at::kBFloat16;
};

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

}  // namespace

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
  const auto& report = args_.report_to;
  if (std::find(report.begin(), report.end(), "jsonl") == report.end()) return;
  std::filesystem::create_directories(args_.output_dir);
  std::ofstream out(args_.output_dir + "/log.jsonl", std::ios::app);
  TORCH_CHECK(out, "Trainer: cannot append to ", args_.output_dir, "/log.jsonl");
  out << record.dump() << "\n";
}

void Trainer::save_model() const {
  if (auto* lm = dynamic_cast<const models::CausalLMImpl*>(model_.get())) {
    lm->save_pretrained(args_.output_dir);
    return;
  }
  torch::serialize::OutputArchive archive;
  model_->save(archive);
  archive.save_to(args_.output_dir + "/model.pt");
}

TrainOutput Trainer::train() {
  TORCH_CHECK(train_dataset_ != nullptr && train_dataset_->size() > 0,
              "Trainer::train: the train dataset is empty");
  torch::manual_seed(static_cast<uint64_t>(args_.seed));
  std::filesystem::create_directories(args_.output_dir);
  if (args_.gradient_checkpointing) {
    nn::gradient_checkpointing_enable(*model_, args_.gradient_checkpointing_options());
  }
  if (args_.save_strategy != "no") {
    logger()->warn(
        "Trainer: checkpoints during training are not written yet; the final model "
        "is saved to {}",
        args_.output_dir);
  }
  model_->train();

  const int64_t seed = args_.data_seed.value_or(args_.seed);
  data::DataLoader loader(train_dataset_,
                          data::DistributedSampler(train_dataset_->size(),
                                                   data::DistributedSamplerOptions().seed(seed)),
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

  auto optimizer = optim::create_adamw(*model_, torch::optim::AdamWOptions(args_.learning_rate)
                                                    .betas({args_.adam_beta1, args_.adam_beta2})
                                                    .eps(args_.adam_epsilon)
                                                    .weight_decay(args_.weight_decay));
  optim::LRScheduler scheduler(optimizer,
                               optim::LRSchedulerOptions(args_.lr_scheduler_type)
                                   .num_warmup_steps(warmup_steps(args_.warmup_steps, total_steps))
                                   .num_training_steps(total_steps)
                                   .scheduler_specific_kwargs(args_.lr_scheduler_kwargs));
  const int64_t logging_steps = steps_from(args_.logging_steps, total_steps);
  const int64_t eval_steps =
      steps_from(args_.eval_steps.value_or(args_.logging_steps), total_steps);
  logger()->info(
      "training: {} examples, {} epochs, {} optimizer steps, batch {} x {} "
      "accumulation, gradient checkpointing {}, on {}",
      train_dataset_->size(), epochs, total_steps, args_.per_device_train_batch_size, accumulation,
      args_.gradient_checkpointing ? "on" : "off", device_.str());

  TrainOutput result;
  double loss_since_log = 0, loss_total = 0;
  int64_t steps_since_log = 0, tokens_since_log = 0;
  auto log_start = std::chrono::steady_clock::now();
  if (device_.is_cuda()) reset_peak_memory_stats(device_);
  std::vector<torch::Tensor> params;
  for (const auto& p : model_->parameters()) {
    if (p.requires_grad()) params.push_back(p);
  }

  for (int64_t epoch = 0; epoch < epochs && result.global_step < total_steps; ++epoch) {
    auto stream = loader.epoch(epoch);
    while (result.global_step < total_steps) {
      std::vector<data::Batch> group;
      while (static_cast<int64_t>(group.size()) < accumulation) {
        auto batch = stream.next();
        if (!batch) break;
        group.push_back(batch->to(device_, /*non_blocking=*/true));
      }
      if (group.empty()) break;
      int64_t items = 0;
      for (const auto& b : group) items += target_tokens(b);
      double step_loss = 0;
      for (const auto& b : group) {
        torch::Tensor loss;
        {
          Bf16Autocast autocast(args_.bf16, device_.type());
          loss = compute_loss(*model_, b, items);
        }
        loss.backward();
        step_loss += loss.item<double>();
        tokens_since_log += b.input_ids.numel();
      }
      const double grad_norm =
          args_.max_grad_norm > 0
              ? torch::nn::utils::clip_grad_norm_(params, args_.max_grad_norm)
              : torch::nn::utils::clip_grad_norm_(params, std::numeric_limits<double>::infinity());
      ++result.global_step;
      TORCH_CHECK(std::isfinite(step_loss) && std::isfinite(grad_norm),
                  "Trainer: non-finite loss (", step_loss, ") or gradient norm (", grad_norm,
                  ") at step ", result.global_step, "; lower the learning rate or check the data");
      optimizer.step();
      scheduler.step();
      optimizer.zero_grad();
      loss_since_log += step_loss;
      loss_total += step_loss;
      ++steps_since_log;

      const int64_t step = result.global_step;
      const bool first = step == 1 && args_.logging_first_step;
      if (args_.logging_strategy == "steps" && (step % logging_steps == 0 || first)) {
        const double seconds =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - log_start).count();
        nlohmann::json record = {
            {"loss", loss_since_log / steps_since_log},
            {"grad_norm", grad_norm},
            {"learning_rate", scheduler.last_lr().front()},
            {"epoch",
             epoch + static_cast<double>(step - epoch * steps_per_epoch) / steps_per_epoch},
            {"step", step},
            {"step_ms", 1000 * seconds / steps_since_log},
            {"tokens_per_s", tokens_since_log / std::max(seconds, 1e-9)}};
        if (device_.is_cuda()) record["peak_memory_mib"] = max_memory_allocated(device_) >> 20;
        logger()->info(
            "step {}/{} | loss {:.4f} | grad_norm {:.3f} | lr {:.3e} | {:.1f} ms | {:.0f} "
            "tok/s",
            step, total_steps, record["loss"].get<double>(), grad_norm,
            record["learning_rate"].get<double>(), record["step_ms"].get<double>(),
            record["tokens_per_s"].get<double>());
        log(record);
        loss_since_log = 0;
        steps_since_log = 0;
        tokens_since_log = 0;
        log_start = std::chrono::steady_clock::now();
      }
      if (args_.eval_strategy == "steps" && step % eval_steps == 0) evaluate();
    }
    if (args_.eval_strategy == "epoch") evaluate();
  }
  result.training_loss = result.global_step > 0 ? loss_total / result.global_step : 0.0;
  log({{"train_loss", result.training_loss}, {"step", result.global_step}});
  save_model();
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
                               data::DistributedSamplerOptions().shuffle(false)),
      collator_, data::DataLoaderOptions().batch_size(args_.per_device_eval_batch_size));
  double loss_sum = 0;
  int64_t tokens = 0;
  {
    torch::NoGradGuard no_grad;
    for (const auto& batch : loader.epoch(0)) {
      auto b = batch.to(device_, /*non_blocking=*/true);
      const int64_t items = target_tokens(b);
      if (items == 0) continue;
      Bf16Autocast autocast(args_.bf16, device_.type());
      // compute_loss divides by its count: scale back to a sum.
      loss_sum += compute_loss(*model_, b, items).item<double>() * items;
      tokens += items;
    }
  }
  if (was_training) model_->train();
  TORCH_CHECK(tokens > 0, "Trainer::evaluate: the eval dataset has no target tokens");
  const double loss = loss_sum / tokens;
  std::map<std::string, double> metrics{{"eval_loss", loss}, {"perplexity", std::exp(loss)}};
  logger()->info("eval | loss {:.4f} | perplexity {:.3f}", loss, std::exp(loss));
  log({{"eval_loss", loss}, {"perplexity", std::exp(loss)}});
  return metrics;
}

}  // namespace remat
