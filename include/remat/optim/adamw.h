#pragma once

/// \file
/// AdamW with the parameter groups of Hugging Face's Trainer (weight decay on
/// every trainable parameter except biases and normalization weights), whose
/// step runs ATen's fused or multi-tensor kernels.
/// \code
///   auto optimizer = remat::optim::create_adamw(
///       *model, torch::optim::AdamWOptions(3e-4).betas({0.9, 0.95}).weight_decay(0.1));
///   optimizer.step();   // one fused kernel per device and dtype
/// \endcode

#include <torch/torch.h>

#include <string>
#include <unordered_map>
#include <vector>

namespace remat::optim {

/// The names (as in `named_parameters()`) of the parameters that get weight
/// decay, decided as transformers' `Trainer.get_decay_parameter_names`: a
/// parameter is left out when a module on its path (below `model`) is a
/// torch::nn::LayerNorm, or when its lower-cased dotted name matches one of
/// `bias`, `layernorm`, `rmsnorm`, `(^|\.)norm($|\.)`, `_norm($|\.)`. So a
/// norm module of your own (an RMSNorm) is recognized by the name it is
/// registered under ("norm", "input_layernorm", "attn_norm", "final_rmsnorm"),
/// not by its class: registered as "ln" or "norm1" it gets decay, as in
/// Hugging Face. Frozen parameters are listed too; the groups skip them.
///
/// Example: for a model with `embed` (Embedding), `norm` (an RMSNorm) and
/// `head` (Linear), `{"embed.weight", "head.weight"}`.
std::vector<std::string> get_decay_parameter_names(const torch::nn::Module& model);

/// The two param groups of Hugging Face's `Trainer.create_optimizer`: first
/// the trainable parameters of get_decay_parameter_names() with
/// `options.weight_decay()`, then the other trainable parameters with weight
/// decay 0; each group is `options` otherwise. A parameter reachable under
/// several names (tied weights) is taken once, under its first name. Either
/// group may be empty.
///
/// Example: `get_parameter_groups(*model, torch::optim::AdamWOptions(1e-3).weight_decay(0.1))`
std::vector<torch::optim::OptimizerParamGroup> get_parameter_groups(
    const torch::nn::Module& model, const torch::optim::AdamWOptions& options);

/// How AdamW::step updates the parameters. All three compute
/// torch::optim::AdamW's update (equal within float rounding).
enum class AdamWImplementation {
  /// torch::optim::AdamW's own step: a loop of several kernels per parameter.
  kForLoop,
  /// ATen's multi-tensor `_foreach_*` kernels: a few launches per step for
  /// all parameters of a device and dtype. Hugging Face's "adamw_torch"
  /// (torch.optim.AdamW's default on CUDA).
  kForeach,
  /// ATen's `_fused_adamw_`: one kernel per device and dtype (CUDA and CPU).
  /// Hugging Face's "adamw_torch_fused", its default since torch 2.8.
  kFused,
};

/// The implementation of a Hugging Face `optim` name: "adamw_torch" →
/// kForeach, "adamw_torch_fused" → kFused; anything else throws, naming the
/// valid names.
AdamWImplementation adamw_implementation(const std::string& optim);

/// torch::optim::AdamW whose step() runs the chosen implementation. Its
/// state (step count, exp_avg, exp_avg_sq, max_exp_avg_sq per parameter) and
/// its archive layout are torch::optim::AdamW's, so save() and load()
/// interchange with torch::optim::AdamW and with the other implementations.
/// Sparse gradients need kForLoop.
///
/// Example: `remat::optim::AdamW opt(params, torch::optim::AdamWOptions(1e-3),
/// remat::optim::AdamWImplementation::kForeach);`
class AdamW : public torch::optim::AdamW {
 public:
  AdamW(const std::vector<torch::optim::OptimizerParamGroup>& param_groups,
        torch::optim::AdamWOptions defaults = {},
        AdamWImplementation implementation = AdamWImplementation::kFused);
  AdamW(std::vector<torch::Tensor> params, torch::optim::AdamWOptions defaults = {},
        AdamWImplementation implementation = AdamWImplementation::kFused);

  torch::Tensor step(LossClosure closure = nullptr) override;
  void load(torch::serialize::InputArchive& archive) override;

  AdamWImplementation implementation() const { return implementation_; }

 private:
  struct Bucket;
  void step_group(torch::optim::OptimizerParamGroup& group);
  void step_bucket(const torch::optim::AdamWOptions& options, Bucket& bucket);

  AdamWImplementation implementation_;
  // The fused kernel reads each parameter's step count from a float tensor
  // on the parameter's device; these mirror the state's step counts.
  std::unordered_map<const void*, torch::Tensor> step_tensors_;
};

/// remat::optim::AdamW over get_parameter_groups(model, options), with
/// `options` as its defaults. Throws when `model` has no trainable parameter.
///
/// Example: `auto optimizer = create_adamw(*model,
/// torch::optim::AdamWOptions(1e-3).weight_decay(0.1));`
AdamW create_adamw(const torch::nn::Module& model, const torch::optim::AdamWOptions& options,
                   AdamWImplementation implementation = AdamWImplementation::kFused);

}  // namespace remat::optim
