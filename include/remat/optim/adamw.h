#pragma once

/// \file
/// AdamW with the parameter groups of Hugging Face's Trainer: weight decay on
/// every trainable parameter except biases and normalization weights.
/// \code
///   auto optimizer = remat::optim::create_adamw(
///       *model, torch::optim::AdamWOptions(3e-4).betas({0.9, 0.95}).weight_decay(0.1));
/// \endcode

#include <torch/torch.h>

#include <string>
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

/// torch::optim::AdamW over get_parameter_groups(model, options), with
/// `options` as its defaults. Throws when `model` has no trainable parameter.
///
/// Example: `auto optimizer = create_adamw(*model,
/// torch::optim::AdamWOptions(1e-3).weight_decay(0.1));`
torch::optim::AdamW create_adamw(const torch::nn::Module& model,
                                 const torch::optim::AdamWOptions& options);

}  // namespace remat::optim
