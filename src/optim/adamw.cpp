#include "remat/optim/adamw.h"

#include <algorithm>
#include <cctype>
#include <cmath>
#include <map>
#include <regex>
#include <unordered_set>

namespace remat::optim {
namespace {

// transformers' forbidden name patterns, searched in the lower-cased name.
bool is_no_decay_name(std::string name) {
  static const std::vector<std::regex> patterns = {
      std::regex("bias"), std::regex("layernorm"), std::regex("rmsnorm"),
      std::regex(R"((?:^|\.)norm(?:$|\.))"), std::regex(R"(_norm(?:$|\.))")};
  std::transform(name.begin(), name.end(), name.begin(),
                 [](unsigned char c) { return static_cast<char>(std::tolower(c)); });
  return std::any_of(patterns.begin(), patterns.end(),
                     [&](const std::regex& p) { return std::regex_search(name, p); });
}

bool is_layer_norm(const torch::nn::Module& module) {
  return dynamic_cast<const torch::nn::LayerNormImpl*>(&module) != nullptr;
}

// transformers' get_parameter_names(model, [LayerNorm], patterns): children
// first (each module once, as Python's named_children), then the module's
// own parameters, each filtered by the patterns relative to `module`.
std::vector<std::string> parameter_names(const torch::nn::Module& module) {
  std::vector<std::string> result;
  std::unordered_set<const torch::nn::Module*> seen;
  for (const auto& child : module.named_children()) {
    if (!seen.insert(child.value().get()).second) continue;
    if (is_layer_norm(*child.value())) continue;
    for (const auto& name : parameter_names(*child.value())) {
      auto full = child.key() + "." + name;
      if (!is_no_decay_name(full)) result.push_back(full);
    }
  }
  for (const auto& param : module.named_parameters(/*recurse=*/false)) {
    if (!is_no_decay_name(param.key())) result.push_back(param.key());
  }
  return result;
}

}  // namespace

std::vector<std::string> get_decay_parameter_names(const torch::nn::Module& model) {
  return parameter_names(model);
}

std::vector<torch::optim::OptimizerParamGroup> get_parameter_groups(
    const torch::nn::Module& model, const torch::optim::AdamWOptions& options) {
  auto names = get_decay_parameter_names(model);
  std::unordered_set<std::string> decay(names.begin(), names.end());
  std::unordered_set<const c10::TensorImpl*> taken;
  std::vector<torch::Tensor> with_decay, without_decay;
  for (const auto& param : model.named_parameters(/*recurse=*/true)) {
    if (!param.value().requires_grad()) continue;
    if (!taken.insert(param.value().unsafeGetTensorImpl()).second) continue;
    (decay.count(param.key()) ? with_decay : without_decay).push_back(param.value());
  }
  std::vector<torch::optim::OptimizerParamGroup> groups;
  groups.emplace_back(std::move(with_decay), std::make_unique<torch::optim::AdamWOptions>(options));
  auto no_decay = std::make_unique<torch::optim::AdamWOptions>(options);
  no_decay->weight_decay(0.0);
  groups.emplace_back(std::move(without_decay), std::move(no_decay));
  return groups;
}

AdamWImplementation adamw_implementation(const std::string& optim) {
  if (optim == "adamw_torch") return AdamWImplementation::kForeach;
  if (optim == "adamw_torch_fused") return AdamWImplementation::kFused;
  TORCH_CHECK(false, "optim must be adamw_torch or adamw_torch_fused, got \"", optim, "\"");
}

AdamW::AdamW(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
             torch::optim::AdamWOptions defaults, AdamWImplementation implementation)
    : torch::optim::AdamW(param_groups, std::move(defaults)), implementation_(implementation) {}

AdamW::AdamW(std::vector<torch::Tensor> params, torch::optim::AdamWOptions defaults,
             AdamWImplementation implementation)
    : torch::optim::AdamW(std::move(params), std::move(defaults)),
      implementation_(implementation) {}

// The parameters of one group on one device with one dtype, with their state.
struct AdamW::Bucket {
  std::vector<torch::Tensor> params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps;
  std::vector<int64_t> step_counts;
};

torch::Tensor AdamW::step(LossClosure closure) {
  if (implementation_ == AdamWImplementation::kForLoop) return torch::optim::AdamW::step(closure);
  torch::Tensor loss;
  if (closure) {
    torch::AutoGradMode enable_grad(true);
    loss = closure();
  }
  torch::NoGradGuard no_grad;
  for (auto& group : param_groups_) step_group(group);
  return loss;
}

void AdamW::step_group(torch::optim::OptimizerParamGroup& group) {
  const auto& options = static_cast<const torch::optim::AdamWOptions&>(group.options());
  std::map<std::pair<std::string, int>, Bucket> buckets;
  for (auto& p : group.params()) {
    if (!p.grad().defined()) continue;
    TORCH_CHECK(!p.grad().is_sparse(),
                "remat::optim::AdamW: sparse gradients need AdamWImplementation::kForLoop");
    auto& slot = state_[p.unsafeGetTensorImpl()];
    if (!slot) {
      auto fresh = std::make_unique<torch::optim::AdamWParamState>();
      fresh->step(0);
      fresh->exp_avg(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      fresh->exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      if (options.amsgrad()) {
        fresh->max_exp_avg_sq(torch::zeros_like(p, torch::MemoryFormat::Preserve));
      }
      slot = std::move(fresh);
    }
    auto& state = static_cast<torch::optim::AdamWParamState&>(*slot);
    auto& bucket = buckets[{p.device().str(), static_cast<int>(p.scalar_type())}];
    bucket.params.push_back(p);
    bucket.grads.push_back(p.grad());
    bucket.exp_avgs.push_back(state.exp_avg());
    bucket.exp_avg_sqs.push_back(state.exp_avg_sq());
    if (options.amsgrad()) bucket.max_exp_avg_sqs.push_back(state.max_exp_avg_sq());
    auto& step = step_tensors_[p.unsafeGetTensorImpl()];
    if (!step.defined() || step.device() != p.device()) {
      step = torch::full({}, static_cast<double>(state.step()),
                         torch::TensorOptions().dtype(torch::kFloat).device(p.device()));
    }
    bucket.steps.push_back(step);
    state.step(state.step() + 1);
    bucket.step_counts.push_back(state.step());
  }
  for (auto& item : buckets) step_bucket(options, item.second);
}

void AdamW::step_bucket(const torch::optim::AdamWOptions& options, Bucket& b) {
  const double lr = options.lr(), wd = options.weight_decay(), eps = options.eps();
  const auto [beta1, beta2] = options.betas();
  if (implementation_ == AdamWImplementation::kFused) {
    at::_foreach_add_(b.steps, 1.0);
    at::_fused_adamw_(b.params, b.grads, b.exp_avgs, b.exp_avg_sqs, b.max_exp_avg_sqs, b.steps, lr,
                      beta1, beta2, wd, eps, options.amsgrad(), /*maximize=*/false);
    return;
  }
  // kForeach: torch::optim::AdamW's arithmetic, a few kernels for the bucket.
  at::_foreach_add_(b.steps, 1.0);
  if (wd != 0) at::_foreach_mul_(b.params, 1 - lr * wd);
  at::_foreach_mul_(b.exp_avgs, beta1);
  at::_foreach_add_(b.exp_avgs, b.grads, 1 - beta1);
  at::_foreach_mul_(b.exp_avg_sqs, beta2);
  at::_foreach_addcmul_(b.exp_avg_sqs, b.grads, b.grads, 1 - beta2);
  std::vector<at::Scalar> root_correction2, step_size;
  for (int64_t count : b.step_counts) {
    const auto n = static_cast<double>(count);
    root_correction2.emplace_back(std::sqrt(1 - std::pow(beta2, n)));
    step_size.emplace_back(-lr / (1 - std::pow(beta1, n)));
  }
  std::vector<torch::Tensor> denom;
  if (options.amsgrad()) {
    at::_foreach_maximum_(b.max_exp_avg_sqs, b.exp_avg_sqs);
    denom = at::_foreach_sqrt(b.max_exp_avg_sqs);
  } else {
    denom = at::_foreach_sqrt(b.exp_avg_sqs);
  }
  at::_foreach_div_(denom, root_correction2);
  at::_foreach_add_(denom, eps);
  at::_foreach_addcdiv_(b.params, b.exp_avgs, denom, step_size);
}

void AdamW::load(torch::serialize::InputArchive& archive) {
  torch::optim::AdamW::load(archive);
  step_tensors_.clear();
}

AdamW create_adamw(const torch::nn::Module& model, const torch::optim::AdamWOptions& options,
                   AdamWImplementation implementation) {
  auto groups = get_parameter_groups(model, options);
  TORCH_CHECK(!groups[0].params().empty() || !groups[1].params().empty(), "create_adamw: module ",
              model.name(), " has no trainable parameters");
  return AdamW(groups, options, implementation);
}

}  // namespace remat::optim
