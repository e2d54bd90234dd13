#include "remat/distributed/data_parallel.h"

#include <torch/csrc/autograd/function_hook.h>
#include <torch/csrc/autograd/variable.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>
#include <set>
#include <sstream>
#include <unordered_map>
#include <unordered_set>

#include "../detail/grad_norm.h"
#include "remat/logging.h"
#include "remat/nn/checkpointable.h"
#include "remat/optim/adamw.h"

namespace remat::detail {

torch::Tensor gradient_norm_squared(const std::vector<torch::Tensor>& tensors,
                                    const torch::Device& device) {
  auto sum = torch::zeros({}, torch::dtype(torch::kDouble).device(device));
  for (const auto& t : tensors) {
    if (t.grad().defined()) sum += t.grad().to(torch::kDouble).pow(2).sum();
  }
  return sum;
}

void scale_gradients(const std::vector<torch::Tensor>& tensors, const torch::Tensor& norm,
                     double max_norm) {
  if (!std::isfinite(max_norm)) return;
  torch::NoGradGuard no_grad;
  auto coef = torch::clamp(max_norm / (norm + 1e-6), std::nullopt, 1.0);
  coef = torch::where(norm.isfinite(), coef, torch::ones_like(coef));
  for (const auto& t : tensors) {
    if (t.grad().defined()) t.grad().mul_(coef.to(t.grad().scalar_type()));
  }
}

torch::Tensor clip_grad_norm(const std::vector<torch::Tensor>& tensors, double max_norm,
                             const torch::Device& device) {
  auto norm = gradient_norm_squared(tensors, device).sqrt();
  scale_gradients(tensors, norm, max_norm);
  return norm;
}

}  // namespace remat::detail

namespace remat::distributed {
namespace {

// A post-accumulate-grad hook: runs after the engine has accumulated a
// gradient into the parameter's .grad, once per backward per parameter.
class GradientHook : public torch::autograd::PostAccumulateGradHook {
 public:
  explicit GradientHook(std::function<void()> fn) : fn_(std::move(fn)) {}
  void operator()(const torch::autograd::Variable&) override { fn_(); }

 private:
  std::function<void()> fn_;
};

void set_gradient_hook(const torch::Tensor& param, std::function<void()> fn) {
  auto& existing = torch::autograd::impl::post_acc_grad_hooks(param);
  TORCH_CHECK(existing == nullptr,
              "remat::distributed: a parameter already has a post-accumulate-grad hook; a model "
              "can be wrapped for data parallelism only once");
  torch::autograd::impl::set_post_acc_grad_hooks(param,
                                                 std::make_unique<GradientHook>(std::move(fn)));
}

void clear_gradient_hook(const torch::Tensor& param) {
  torch::autograd::impl::set_post_acc_grad_hooks(param, nullptr);
}

// The trainable parameters of `module`, each once (tied weights), in
// registration order, with their first name.
std::vector<std::pair<std::string, torch::Tensor>> unique_trainable(
    const torch::nn::Module& module) {
  std::vector<std::pair<std::string, torch::Tensor>> result;
  std::unordered_set<const c10::TensorImpl*> seen;
  for (const auto& item : module.named_parameters(/*recurse=*/true)) {
    const auto& p = item.value();
    if (!p.requires_grad() || !seen.insert(p.unsafeGetTensorImpl()).second) continue;
    result.emplace_back(item.key(), p);
  }
  return result;
}

void broadcast_state(ProcessGroup& group, torch::nn::Module& module) {
  torch::NoGradGuard no_grad;
  for (auto& p : module.parameters(/*recurse=*/true)) group.broadcast(p.data(), 0);
  for (auto& b : module.buffers(/*recurse=*/true)) group.broadcast(b, 0);
}

void check_device(const torch::nn::Module& module, const ProcessGroup& group) {
  for (const auto& p : module.parameters(/*recurse=*/true)) {
    TORCH_CHECK(p.device() == group.device(), "remat::distributed: a parameter is on ",
                p.device().str(), " but the process group's device is ", group.device().str(),
                "; move the model there first");
  }
}

// Releases a tensor's storage (its views stay valid as metadata), and gives
// it back at its full size, through the storage's own allocator.
void free_storage(const torch::Tensor& t) {
  auto* storage = t.storage().unsafeGetStorageImpl();
  if (storage->nbytes() == 0) return;
  storage->set_data_ptr_noswap(at::DataPtr(nullptr, t.device()));
  storage->set_nbytes(0);
}

void allocate_storage(const torch::Tensor& t, size_t nbytes) {
  auto* storage = t.storage().unsafeGetStorageImpl();
  if (storage->nbytes() == nbytes) return;
  storage->set_data_ptr_noswap(storage->allocator()->allocate(nbytes));
  storage->set_nbytes(nbytes);
}

}  // namespace

DataParallel::DataParallel(std::shared_ptr<torch::nn::Module> model,
                           std::shared_ptr<ProcessGroup> group)
    : model_(std::move(model)), group_(std::move(group)) {
  TORCH_CHECK(model_ != nullptr, "remat::distributed: the model is null");
  TORCH_CHECK(group_ != nullptr, "remat::distributed: the process group is null");
  check_device(*model_, *group_);
}

// ---------------------------------------------------------------------------
// DistributedDataParallel

struct DistributedDataParallel::Bucket {
  std::vector<size_t> params;
  int64_t numel = 0;
  size_t pending = 0;
  bool launched = false;
  torch::Tensor flat;
  Work work;
};

DistributedDataParallel::DistributedDataParallel(std::shared_ptr<torch::nn::Module> model,
                                                 std::shared_ptr<ProcessGroup> group,
                                                 const DistributedDataParallelOptions& options)
    : DataParallel(std::move(model), std::move(group)) {
  TORCH_CHECK(options.bucket_cap_mb() >= 1e-6, "remat::distributed: bucket_cap_mb ",
              options.bucket_cap_mb(), " must be positive");
  if (options.broadcast_parameters()) broadcast_state(*group_, *model_);
  for (auto& [name, p] : unique_trainable(*model_)) params_.push_back(p);
  TORCH_CHECK(!params_.empty(), "remat::distributed: the model has no trainable parameter");
  const double cap = options.bucket_cap_mb() * 1024 * 1024;
  bucket_of_.resize(params_.size());
  for (size_t k = params_.size(); k-- > 0;) {
    const auto& p = params_[k];
    const double bytes = static_cast<double>(p.numel() * p.element_size());
    bool fresh = buckets_.empty();
    if (!fresh) {
      auto& last = *buckets_.back();
      const auto& first = params_[last.params.front()];
      fresh = first.scalar_type() != p.scalar_type() ||
              static_cast<double>(last.numel * first.element_size()) + bytes > cap;
    }
    if (fresh) buckets_.push_back(std::make_unique<Bucket>());
    buckets_.back()->params.push_back(k);
    buckets_.back()->numel += p.numel();
    bucket_of_[k] = buckets_.size() - 1;
  }
  for (auto& b : buckets_) {
    b->pending = b->params.size();
    bucket_params_.push_back(b->params);
  }
  for (size_t k = 0; k < params_.size(); ++k) {
    set_gradient_hook(params_[k], [this, k] { on_gradient(k); });
  }
}

DistributedDataParallel::~DistributedDataParallel() {
  for (const auto& p : params_) clear_gradient_hook(p);
}

std::vector<torch::optim::OptimizerParamGroup> DistributedDataParallel::parameter_groups(
    const torch::optim::AdamWOptions& options) const {
  return optim::get_parameter_groups(*model_, options);
}

void DistributedDataParallel::on_gradient(size_t index) {
  if (!sync_) return;
  auto& bucket = *buckets_[bucket_of_[index]];
  TORCH_CHECK(bucket.pending > 0 && !bucket.launched,
              "remat::distributed: a parameter received its gradient twice in one backward");
  --bucket.pending;
  launch_ready();
}

// Buckets are launched in index order on every rank, so the collectives match.
void DistributedDataParallel::launch_ready() {
  while (next_bucket_ < buckets_.size() && buckets_[next_bucket_]->pending == 0) {
    ++launched_in_backward_;
    launch(next_bucket_++);
  }
}

void DistributedDataParallel::launch(size_t index) {
  auto& bucket = *buckets_[index];
  torch::NoGradGuard no_grad;
  std::vector<torch::Tensor> flats;
  for (size_t k : bucket.params) {
    const auto& p = params_[k];
    flats.push_back(p.grad().defined() ? p.grad().reshape({-1})
                                       : torch::zeros({p.numel()}, p.options()));
  }
  bucket.flat = torch::cat(flats);
  bucket.work = group_->all_reduce(bucket.flat);
  bucket.launched = true;
}

void DistributedDataParallel::finish_gradient_sync() {
  if (!sync_) return;
  // Parameters that took no part in this backward leave their bucket
  // incomplete; launch those buckets now (with zero gradients for them).
  while (next_bucket_ < buckets_.size()) launch(next_bucket_++);
  torch::NoGradGuard no_grad;
  const double world = static_cast<double>(group_->world_size());
  for (auto& bucket : buckets_) {
    bucket->work.wait();
    bucket->flat.div_(world);
    int64_t offset = 0;
    for (size_t k : bucket->params) {
      auto& p = params_[k];
      auto reduced = bucket->flat.narrow(0, offset, p.numel()).view(p.sizes());
      if (p.grad().defined()) {
        p.mutable_grad().copy_(reduced);
      } else {
        p.mutable_grad() = reduced.clone();
      }
      offset += p.numel();
    }
    bucket->flat = torch::Tensor();
    bucket->pending = bucket->params.size();
    bucket->launched = false;
  }
  next_bucket_ = 0;
}

torch::Tensor DistributedDataParallel::clip_grad_norm_tensor(double max_norm) {
  // The gradients are the same on every rank after the all-reduce.
  return detail::clip_grad_norm(params_, max_norm, group_->device());
}

// ---------------------------------------------------------------------------
// FullyShardedDataParallel

FullyShardedDataParallelOptions FullyShardedDataParallelOptions::from_hf(
    const std::string& fsdp, const nlohmann::json& fsdp_config) {
  FullyShardedDataParallelOptions options;
  std::istringstream words(fsdp);
  std::string word;
  while (words >> word) {
    if (word == "full_shard" || word == "shard_grad_op") {
      options.sharding_strategy(word);
    } else if (word == "auto_wrap") {
      // Every decoder layer is a unit: the only wrapping remat does.
    } else {
      throw std::invalid_argument(
          "remat::distributed: fsdp option \"" + word +
          "\" is not supported; supported: full_shard, shard_grad_op, auto_wrap");
    }
  }
  auto flag = [&](const char* key, bool fallback) {
    if (!fsdp_config.contains(key)) return fallback;
    const auto& v = fsdp_config.at(key);
    if (v.is_boolean()) return v.get<bool>();
    if (v.is_string()) {
      auto s = v.get<std::string>();
      std::transform(s.begin(), s.end(), s.begin(), ::tolower);
      if (s == "true" || s == "1" || s == "yes" || s == "on" || s == "y" || s == "t") return true;
      if (s == "false" || s == "0" || s == "no" || s == "off" || s == "n" || s == "f") return false;
    }
    throw std::invalid_argument(std::string("remat::distributed: fsdp_config.") + key + " = " +
                                v.dump() + " is not a boolean");
  };
  options.activation_checkpointing(flag("activation_checkpointing", false));
  options.sync_module_states(flag("sync_module_states", true));
  if (fsdp_config.contains("reshard_after_forward")) {
    const auto& v = fsdp_config.at("reshard_after_forward");
    if (v.is_string()) {
      auto s = v.get<std::string>();
      std::transform(s.begin(), s.end(), s.begin(), ::tolower);
      if (s == "full_shard" || s == "shard_grad_op") {
        options.sharding_strategy(s);
      } else {
        options.sharding_strategy(flag("reshard_after_forward", true) ? "full_shard"
                                                                      : "shard_grad_op");
      }
    } else {
      options.sharding_strategy(flag("reshard_after_forward", true) ? "full_shard"
                                                                    : "shard_grad_op");
    }
  }
  if (fsdp_config.contains("cpu_offload") && flag("cpu_offload", false)) {
    throw std::invalid_argument(
        "remat::distributed: fsdp_config.cpu_offload is not supported; set it to false");
  }
  return options;
}

// One sharded unit. Its parameters live in `full`, a flat buffer laid out as
// one segment per group (decay, no decay), each padded to a multiple of the
// world size; the parameters are views into it. Rank r keeps, per group, the
// r-th 1/world of the segment as a leaf tensor the optimizer steps.
struct FullyShardedDataParallel::Unit {
  struct Group {
    std::vector<torch::Tensor> params;
    std::vector<int64_t> offsets;
    int64_t numel = 0;  // unpadded
    int64_t shard = 0;  // per-rank elements
    int64_t base = 0;   // segment offset in `full`
    int64_t slot = 0;   // offset in a rank's slot of the gathered buffer
    bool decay = true;
    torch::Tensor local;  // the shard, a leaf requiring grad
  };
  std::string name;
  bool root = false;
  std::vector<Group> groups;
  torch::Tensor full;
  size_t full_bytes = 0;
  int64_t slot_numel = 0;  // sum of group shards
  bool gathered = false;
  size_t params = 0;
  size_t pending = 0;
  bool reduced = false;
};

FullyShardedDataParallel::FullyShardedDataParallel(std::shared_ptr<torch::nn::Module> model,
                                                   std::shared_ptr<ProcessGroup> group,
                                                   const FullyShardedDataParallelOptions& options)
    : DataParallel(std::move(model), std::move(group)), options_(options) {
  const auto& strategy = options_.sharding_strategy();
  TORCH_CHECK(strategy == "full_shard" || strategy == "shard_grad_op",
              "remat::distributed: sharding_strategy \"", strategy,
              "\" is not supported; valid: \"full_shard\", \"shard_grad_op\"");
  if (options_.sync_module_states()) broadcast_state(*group_, *model_);

  // Units: every checkpointable block (outermost), then the root.
  std::unordered_map<const c10::TensorImpl*, size_t> unit_of;
  std::vector<std::vector<std::pair<std::string, torch::Tensor>>> members;
  for (const auto& item : model_->named_modules("", /*include_self=*/false)) {
    auto block = std::dynamic_pointer_cast<nn::CheckpointableModule>(item.value());
    if (!block) continue;
    bool nested = false;
    for (const auto& outer : blocks_) {
      for (const auto& m : outer->modules()) nested = nested || m.get() == block.get();
    }
    if (nested) continue;
    std::vector<std::pair<std::string, torch::Tensor>> mine;
    for (auto& [name, p] : unique_trainable(*block)) {
      if (unit_of.count(p.unsafeGetTensorImpl())) continue;
      unit_of[p.unsafeGetTensorImpl()] = members.size();
      mine.emplace_back(item.key() + "." + name, p);
    }
    auto unit = std::make_unique<Unit>();
    unit->name = item.key();
    units_.push_back(std::move(unit));
    members.push_back(std::move(mine));
    blocks_.push_back(block);
  }
  std::vector<std::pair<std::string, torch::Tensor>> rest;
  for (auto& [name, p] : unique_trainable(*model_)) {
    if (!unit_of.count(p.unsafeGetTensorImpl())) rest.emplace_back(name, p);
  }
  auto root = std::make_unique<Unit>();
  root->name = "(root)";
  root->root = true;
  units_.push_back(std::move(root));
  members.push_back(std::move(rest));

  auto decay_names = optim::get_decay_parameter_names(*model_);
  std::set<std::string> decay(decay_names.begin(), decay_names.end());
  const int64_t world = group_->world_size(), rank = group_->rank();
  torch::NoGradGuard no_grad;
  for (size_t u = 0; u < units_.size(); ++u) {
    auto& unit = *units_[u];
    Unit::Group groups[2];
    groups[1].decay = false;
    for (auto& [name, p] : members[u]) {
      auto& g = groups[decay.count(name) ? 0 : 1];
      g.offsets.push_back(g.numel);
      g.params.push_back(p);
      g.numel += p.numel();
    }
    int64_t total = 0;
    for (auto& g : groups) {
      if (g.params.empty()) continue;
      g.shard = (g.numel + world - 1) / world;
      g.base = total;
      g.slot = unit.slot_numel;
      total += g.shard * world;
      unit.slot_numel += g.shard;
      unit.groups.push_back(std::move(g));
    }
    unit.params = members[u].size();
    unit.pending = unit.params;
    if (unit.groups.empty()) continue;
    const auto& first = unit.groups.front().params.front();
    unit.full = torch::zeros({total}, first.options().requires_grad(false));
    unit.full_bytes = static_cast<size_t>(total) * unit.full.element_size();
    for (auto& g : unit.groups) {
      for (size_t i = 0; i < g.params.size(); ++i) {
        auto& p = g.params[i];
        TORCH_CHECK(p.scalar_type() == first.scalar_type(), "remat::distributed: unit ", unit.name,
                    " mixes parameter dtypes (", p.scalar_type(), ", ", first.scalar_type(),
                    "); FSDP needs one dtype per unit");
        auto view = unit.full.narrow(0, g.base + g.offsets[i], p.numel()).view(p.sizes());
        view.copy_(p.detach());
        p.set_data(view);
      }
      g.local = unit.full.narrow(0, g.base + rank * g.shard, g.shard).clone().requires_grad_(true);
    }
    unit.gathered = true;
    if (!unit.root) free(unit);
    for (auto& g : unit.groups) {
      for (auto& p : g.params) {
        Unit* target = &unit;
        set_gradient_hook(p, [this, target] { on_gradient(*target); });
      }
    }
  }
  for (size_t u = 0; u + 1 < units_.size(); ++u) {
    Unit* unit = units_[u].get();
    auto block = std::dynamic_pointer_cast<nn::CheckpointableModule>(blocks_[u]);
    block->set_block_runner([this, unit](RegionFn fn, const std::vector<torch::Tensor>& inputs,
                                         const std::vector<torch::Tensor>& params,
                                         bool checkpoint) {
      return run(*unit, std::move(fn), inputs, params, checkpoint);
    });
  }
  logger()->info("remat::distributed: FSDP ({}) over {} units, {} local elements on rank {}",
                 options_.sharding_strategy(), units_.size(), local_numel(), rank);
}

FullyShardedDataParallel::~FullyShardedDataParallel() {
  for (auto& block : blocks_) {
    std::dynamic_pointer_cast<nn::CheckpointableModule>(block)->set_block_runner(nullptr);
  }
  for (auto& unit : units_) {
    for (auto& g : unit->groups) {
      for (auto& p : g.params) clear_gradient_hook(p);
    }
  }
}

int64_t FullyShardedDataParallel::local_numel() const {
  int64_t n = 0;
  for (const auto& unit : units_) {
    for (const auto& g : unit->groups) n += g.shard;
  }
  return n;
}

std::vector<torch::Tensor> FullyShardedDataParallel::parameters() const {
  std::vector<torch::Tensor> result;
  for (const auto& unit : units_) {
    for (const auto& g : unit->groups) result.push_back(g.local);
  }
  return result;
}

std::vector<torch::optim::OptimizerParamGroup> FullyShardedDataParallel::parameter_groups(
    const torch::optim::AdamWOptions& options) const {
  std::vector<torch::Tensor> decay, no_decay;
  for (const auto& unit : units_) {
    for (const auto& g : unit->groups) (g.decay ? decay : no_decay).push_back(g.local);
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  auto with = [&](std::vector<torch::Tensor> params, double weight_decay) {
    auto o = std::make_unique<torch::optim::AdamWOptions>(options);
    o->weight_decay(weight_decay);
    groups.emplace_back(std::move(params), std::move(o));
  };
  with(std::move(decay), options.weight_decay());
  with(std::move(no_decay), 0.0);
  return groups;
}

void FullyShardedDataParallel::gather(Unit& unit) {
  if (unit.gathered || unit.groups.empty()) return;
  torch::NoGradGuard no_grad;
  const int64_t world = group_->world_size();
  std::vector<torch::Tensor> locals;
  for (auto& g : unit.groups) locals.push_back(g.local.detach());
  auto send = locals.size() == 1 ? locals.front() : torch::cat(locals);
  allocate_storage(unit.full, unit.full_bytes);
  if (unit.groups.size() == 1) {
    // The gathered slots are the segment itself: gather in place.
    group_->all_gather(unit.full, send).wait();
  } else {
    auto gathered = torch::empty({world * unit.slot_numel}, send.options());
    group_->all_gather(gathered, send).wait();
    auto rows = gathered.view({world, unit.slot_numel});
    for (auto& g : unit.groups) {
      unit.full.narrow(0, g.base, world * g.shard)
          .view({world, g.shard})
          .copy_(rows.narrow(1, g.slot, g.shard));
    }
  }
  unit.gathered = true;
}

void FullyShardedDataParallel::free(Unit& unit) {
  if (!unit.gathered || unit.root) return;
  free_storage(unit.full);
  unit.gathered = false;
}

std::vector<torch::Tensor> FullyShardedDataParallel::run(Unit& unit, RegionFn fn,
                                                         const std::vector<torch::Tensor>& inputs,
                                                         const std::vector<torch::Tensor>& params,
                                                         bool checkpoint) {
  const bool reshard = options_.sharding_strategy() == "full_shard";
  const bool training = torch::GradMode::is_enabled();
  std::vector<torch::Tensor> outputs;
  if (training && (checkpoint || options_.activation_checkpointing())) {
    // Checkpointing inside the unit: the region gathers, so the replay in the
    // backward does the backward's one gather.
    RegionFn region = [this, &unit, fn = std::move(fn)](const std::vector<torch::Tensor>& in) {
      gather(unit);
      return fn(in);
    };
    outputs =
        detail::checkpoint_region(std::move(region), inputs, params, options_.checkpoint_options());
    if (reshard) free(unit);
    return outputs;
  }
  gather(unit);
  outputs = fn(inputs);
  if (!training) {
    free(unit);
    return outputs;
  }
  if (reshard) {
    free(unit);
    // Gather again before the first of the unit's backward nodes runs.
    for (auto& out : outputs) {
      if (!out.defined() || !out.requires_grad()) continue;
      Unit* target = &unit;
      out.register_hook([this, target](const torch::Tensor& grad) {
        gather(*target);
        return grad;
      });
    }
  }
  return outputs;
}

void FullyShardedDataParallel::on_gradient(Unit& unit) {
  TORCH_CHECK(unit.pending > 0, "remat::distributed: a parameter of unit ", unit.name,
              " received its gradient twice in one backward");
  if (--unit.pending == 0 && !unit.root) reduce(unit);
}

void FullyShardedDataParallel::reduce(Unit& unit) {
  torch::NoGradGuard no_grad;
  const int64_t world = group_->world_size();
  std::vector<torch::Tensor> rows;
  for (auto& g : unit.groups) {
    std::vector<torch::Tensor> flats;
    for (auto& p : g.params) {
      flats.push_back(p.grad().defined() ? p.grad().reshape({-1})
                                         : torch::zeros({p.numel()}, unit.full.options()));
    }
    const int64_t pad = g.shard * world - g.numel;
    if (pad > 0) flats.push_back(torch::zeros({pad}, unit.full.options()));
    rows.push_back(torch::cat(flats).view({world, g.shard}));
  }
  auto input = (rows.size() == 1 ? rows.front() : torch::cat(rows, 1)).contiguous().view({-1});
  auto output = torch::empty({unit.slot_numel}, input.options());
  group_->reduce_scatter(output, input).wait();
  output.div_(static_cast<double>(world));
  for (auto& g : unit.groups) {
    auto part = output.narrow(0, g.slot, g.shard);
    if (g.local.grad().defined()) {
      g.local.mutable_grad().add_(part);
    } else {
      g.local.mutable_grad() = part.clone();
    }
    for (auto& p : g.params) p.mutable_grad() = torch::Tensor();
  }
  unit.pending = unit.params;
  unit.reduced = true;
  free(unit);
}

void FullyShardedDataParallel::finish_gradient_sync() {
  // Units whose parameters did not all get a gradient, and the root (whose
  // gradients arrive last), in unit order on every rank.
  for (auto& unit : units_) {
    if (unit->groups.empty()) continue;
    const bool partial = unit->pending != unit->params;
    if (unit->root ? partial || !unit->reduced : partial) reduce(*unit);
    unit->reduced = false;
  }
}

torch::Tensor FullyShardedDataParallel::clip_grad_norm_tensor(double max_norm) {
  const auto locals = parameters();
  auto squared = detail::gradient_norm_squared(locals, group_->device());
  group_->all_reduce(squared).wait();
  auto norm = squared.sqrt();
  detail::scale_gradients(locals, norm, max_norm);
  return norm;
}

void FullyShardedDataParallel::after_optimizer_step() {
  auto& root = *units_.back();
  root.gathered = false;
  gather(root);
}

void FullyShardedDataParallel::gather_full_parameters() {
  for (auto& unit : units_) gather(*unit);
}

void FullyShardedDataParallel::release_full_parameters(bool loaded) {
  torch::NoGradGuard no_grad;
  const int64_t rank = group_->rank();
  for (auto& unit : units_) {
    if (loaded && unit->gathered) {
      for (auto& g : unit->groups) {
        g.local.detach().copy_(unit->full.narrow(0, g.base + rank * g.shard, g.shard));
      }
    }
    free(*unit);
  }
}

std::unique_ptr<DataParallel> wrap(std::shared_ptr<torch::nn::Module> model,
                                   std::shared_ptr<ProcessGroup> group,
                                   const std::optional<std::string>& fsdp,
                                   const nlohmann::json& fsdp_config, double bucket_cap_mb) {
  if (fsdp && !fsdp->empty()) {
    return std::make_unique<FullyShardedDataParallel>(
        std::move(model), std::move(group),
        FullyShardedDataParallelOptions::from_hf(*fsdp, fsdp_config));
  }
  return std::make_unique<DistributedDataParallel>(
      std::move(model), std::move(group),
      DistributedDataParallelOptions().bucket_cap_mb(bucket_cap_mb));
}

}  // namespace remat::distributed
