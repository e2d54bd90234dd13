#pragma once

/// \file
/// Data parallelism over a ProcessGroup: DistributedDataParallel (every rank
/// holds the whole model; gradients are all-reduced in buckets while the
/// backward runs) and FullyShardedDataParallel (parameters, gradients and
/// optimizer state are sharded per decoder layer; checkpointing happens
/// inside each sharded unit).
/// \code
///   auto group =
///   remat::distributed::ProcessGroup::create(remat::distributed::LaunchEnv::from_env());
///   remat::distributed::DistributedDataParallel ddp(model, group);
///   torch::optim::AdamW optimizer(ddp.parameter_groups(torch::optim::AdamWOptions(1e-3)));
///   for (...) {
///     (model->forward(inputs).loss * group->world_size()).backward();
///     ddp.finish_gradient_sync();   // waits for the bucket all-reduces
///     optimizer.step();
///     ddp.after_optimizer_step();
///     optimizer.zero_grad();
///   }
/// \endcode

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "remat/checkpoint.h"
#include "remat/distributed/process_group.h"

namespace remat::distributed {

/// What both data-parallel wrappers offer the training loop. Every call is a
/// collective step: all ranks make the same calls in the same order.
///
/// Gradients are averaged over the ranks (as torch DDP and FSDP do). To make
/// N ranks equal one process on the concatenated batch, each rank's loss is
/// divided by the token count of all ranks and multiplied by world_size
/// before backward (what the Trainer does).
class DataParallel {
 public:
  virtual ~DataParallel() = default;

  /// The process group.
  const std::shared_ptr<ProcessGroup>& group() const { return group_; }
  /// The model being trained (its parameters are the full ones; under FSDP
  /// they hold data only while their unit is gathered).
  const std::shared_ptr<torch::nn::Module>& model() const { return model_; }

  /// AdamW's two parameter groups (decay, no decay) of Hugging Face's Trainer
  /// over the tensors the optimizer steps: the model's parameters under DDP,
  /// the local shards under FSDP (so optimizer state is sharded too).
  virtual std::vector<torch::optim::OptimizerParamGroup> parameter_groups(
      const torch::optim::AdamWOptions& options) const = 0;

  /// The tensors the optimizer steps (their gradients are the reduced ones).
  virtual std::vector<torch::Tensor> parameters() const = 0;

  /// Whether the next backward reduces gradients (torch DDP's `no_sync`
  /// inverted): with gradient accumulation, only the last micro-batch needs
  /// to. Default true. FSDP reduces every micro-batch regardless, as its
  /// gradients are not kept whole.
  virtual void set_requires_gradient_sync(bool sync) { (void)sync; }

  /// Called after each backward: waits for (and launches what is left of)
  /// this backward's gradient reductions.
  virtual void finish_gradient_sync() = 0;

  /// Clips the gradients of parameters() to a global L2 norm of `max_norm`
  /// (infinity: no clipping); returns the norm before clipping, the same on
  /// every rank and equal to the single-process norm.
  double clip_grad_norm(double max_norm) { return clip_grad_norm_tensor(max_norm).item<double>(); }

  /// clip_grad_norm() with the norm left on the group's device as a float64
  /// scalar: no host synchronization (the Trainer reads it back with the
  /// step's other flags).
  virtual torch::Tensor clip_grad_norm_tensor(double max_norm) = 0;

  /// Called after optimizer.step(): FSDP gathers the root unit again.
  virtual void after_optimizer_step() {}

  /// Makes every parameter of the model hold its full value (FSDP gathers
  /// all units) until release_full_parameters(); for saving and loading.
  virtual void gather_full_parameters() {}

  /// Ends gather_full_parameters(). When `loaded` is true, the full values
  /// (changed by a load) are copied into the shards first.
  virtual void release_full_parameters(bool loaded) { (void)loaded; }

  /// Whether the optimizer state differs between ranks (sharded: each rank
  /// saves its own) or not (rank 0 saves it).
  virtual bool sharded_optimizer_state() const { return false; }

 protected:
  DataParallel(std::shared_ptr<torch::nn::Module> model, std::shared_ptr<ProcessGroup> group);
  std::shared_ptr<torch::nn::Module> model_;
  std::shared_ptr<ProcessGroup> group_;
};

/// Options of DistributedDataParallel.
struct DistributedDataParallelOptions {
  /// Bucket size in MiB (TrainingArguments.ddp_bucket_cap_mb; torch's
  /// default 25). Gradients are all-reduced a bucket at a time, as soon as
  /// the backward has produced all of a bucket's gradients. At least 1e-6.
  TORCH_ARG(double, bucket_cap_mb) = 25;
  /// Copy rank 0's parameters and buffers to every rank at construction, so
  /// all replicas start equal. Default true.
  TORCH_ARG(bool, broadcast_parameters) = true;
};

/// Data parallelism with a whole replica per rank: post-accumulate-grad hooks
/// on the parameters launch an asynchronous all-reduce per bucket during the
/// backward. Gradients that arrive during a checkpoint replay are counted
/// once (the replay computes them with an inner grad() that does not touch
/// the parameters' accumulators; the engine then accumulates them, firing
/// the hook once).
class DistributedDataParallel : public DataParallel {
 public:
  DistributedDataParallel(std::shared_ptr<torch::nn::Module> model,
                          std::shared_ptr<ProcessGroup> group,
                          const DistributedDataParallelOptions& options = {});
  ~DistributedDataParallel() override;

  std::vector<torch::optim::OptimizerParamGroup> parameter_groups(
      const torch::optim::AdamWOptions& options) const override;
  std::vector<torch::Tensor> parameters() const override { return params_; }
  void set_requires_gradient_sync(bool sync) override { sync_ = sync; }
  void finish_gradient_sync() override;
  torch::Tensor clip_grad_norm_tensor(double max_norm) override;

  /// Buckets, each a list of indices into parameters() (reverse registration
  /// order, the order gradients tend to arrive in).
  const std::vector<std::vector<size_t>>& buckets() const { return bucket_params_; }
  /// How many bucket all-reduces were launched from inside a backward (by the
  /// gradient hooks) rather than by finish_gradient_sync().
  int64_t launched_during_backward() const { return launched_in_backward_; }

 private:
  struct Bucket;
  void on_gradient(size_t index);
  void launch_ready();
  void launch(size_t bucket);

  std::vector<torch::Tensor> params_;
  std::vector<size_t> bucket_of_;
  std::vector<std::vector<size_t>> bucket_params_;
  std::vector<std::unique_ptr<Bucket>> buckets_;
  size_t next_bucket_ = 0;
  bool sync_ = true;
  int64_t launched_in_backward_ = 0;
};

/// Options of FullyShardedDataParallel, with the names of Hugging Face's
/// `fsdp` and `fsdp_config`.
struct FullyShardedDataParallelOptions {
  /// Reads `fsdp` (e.g. "full_shard auto_wrap") and `fsdp_config` (Hugging
  /// Face keys, `fsdp_` prefix removed: activation_checkpointing,
  /// sync_module_states, reshard_after_forward). Sharding strategies other
  /// than full_shard and shard_grad_op, and offload, are an error naming them.
  static FullyShardedDataParallelOptions from_hf(const std::string& fsdp,
                                                 const nlohmann::json& fsdp_config);

  /// "full_shard" (parameters freed after each unit's forward and gathered
  /// again for its backward) or "shard_grad_op" (kept from forward to
  /// backward; ZeRO-2).
  TORCH_ARG(std::string, sharding_strategy) = "full_shard";
  /// fsdp_config.activation_checkpointing: checkpoint every unit, inside the
  /// unit, so each unit costs one parameter all-gather in the forward and one
  /// in the backward.
  TORCH_ARG(bool, activation_checkpointing) = false;
  /// Options of the in-unit checkpoints.
  TORCH_ARG(CheckpointOptions, checkpoint_options) = {};
  /// Copy rank 0's parameters to every rank before sharding. Default true
  /// (fsdp_config.sync_module_states).
  TORCH_ARG(bool, sync_module_states) = true;
};

/// Fully sharded data parallelism. Each checkpointable block of the model
/// (every decoder layer of remat's causal LMs) is a unit: its parameters are
/// flattened into one buffer, each rank keeps 1/world_size of it (the shard
/// the optimizer steps). The unit's nn::forward call gathers the buffer with
/// one all-gather and frees it afterwards (full_shard); its backward gathers
/// it again, once, and reduce-scatters the gradients into the shards.
/// Checkpointing (activation_checkpointing, or the model's own
/// gradient_checkpointing) runs inside the unit: the replay itself gathers,
/// so there is no second gather. The remaining parameters (embeddings, final
/// norm, LM head) form the root unit, sharded the same way but kept gathered
/// between steps (gathered again after each optimizer step).
class FullyShardedDataParallel : public DataParallel {
 public:
  FullyShardedDataParallel(std::shared_ptr<torch::nn::Module> model,
                           std::shared_ptr<ProcessGroup> group,
                           const FullyShardedDataParallelOptions& options = {});
  ~FullyShardedDataParallel() override;

  std::vector<torch::optim::OptimizerParamGroup> parameter_groups(
      const torch::optim::AdamWOptions& options) const override;
  std::vector<torch::Tensor> parameters() const override;
  void finish_gradient_sync() override;
  torch::Tensor clip_grad_norm_tensor(double max_norm) override;
  void after_optimizer_step() override;
  void gather_full_parameters() override;
  void release_full_parameters(bool loaded) override;
  bool sharded_optimizer_state() const override { return true; }

  /// Units, the root last.
  int64_t num_units() const { return static_cast<int64_t>(units_.size()); }
  /// Elements of the local shards of all units.
  int64_t local_numel() const;
  const FullyShardedDataParallelOptions& options() const { return options_; }

 private:
  struct Unit;
  void gather(Unit& unit);
  void free(Unit& unit);
  void reduce(Unit& unit);
  void on_gradient(Unit& unit);
  std::vector<torch::Tensor> run(Unit& unit, RegionFn fn, const std::vector<torch::Tensor>& inputs,
                                 const std::vector<torch::Tensor>& params, bool checkpoint);

  FullyShardedDataParallelOptions options_;
  std::vector<std::unique_ptr<Unit>> units_;
  std::vector<std::shared_ptr<torch::nn::Module>> blocks_;
};

/// Wraps `model` as `args` ask: FullyShardedDataParallel when `fsdp` names a
/// sharding, else DistributedDataParallel. The model must already be on the
/// group's device.
std::unique_ptr<DataParallel> wrap(std::shared_ptr<torch::nn::Module> model,
                                   std::shared_ptr<ProcessGroup> group,
                                   const std::optional<std::string>& fsdp,
                                   const nlohmann::json& fsdp_config, double bucket_cap_mb = 25);

}  // namespace remat::distributed
