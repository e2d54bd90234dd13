#pragma once

/// \file
/// Activation checkpointing for LibTorch: run a region of the forward pass
/// without keeping its activations, and replay it during backward.

#include <torch/torch.h>

#include <functional>
#include <string>
#include <type_traits>
#include <vector>

namespace remat {

/// How checkpoint() records and replays a region.
///
/// Example: `remat::checkpoint(fn, {x}, {w}, remat::CheckpointOptions().preserve_rng_state(false))`
struct CheckpointOptions {
  /// Restore the CPU generator and the generator of every CUDA device the
  /// region's tensors live on before the replay, so random ops (dropout) draw
  /// the same values as in the forward. Default true; turn off only for
  /// regions without random ops, to save the state copy.
  TORCH_ARG(bool, preserve_rng_state) = true;

  /// "default": the replay must return as many tensors as the forward, each
  /// with the same shape, dtype and device, else backward fails naming the
  /// output; "none": no check. Any other value is an error.
  TORCH_ARG(std::string, determinism_check) = "default";

  /// When true (the default), backward fails if the replayed region read a
  /// tensor that requires grad but was passed neither as an input nor in
  /// `params`: that tensor's gradient would otherwise be silently lost.
  TORCH_ARG(bool, check_params) = true;
};

/// A region: takes the checkpointed inputs, returns its outputs.
using RegionFn = std::function<std::vector<torch::Tensor>(const std::vector<torch::Tensor>&)>;

namespace detail {

std::vector<torch::Tensor> checkpoint_region(RegionFn fn, const std::vector<torch::Tensor>& inputs,
                                             const std::vector<torch::Tensor>& params,
                                             const CheckpointOptions& options);

template <typename T>
struct is_module_shared_ptr : std::false_type {};
template <typename T>
struct is_module_shared_ptr<std::shared_ptr<T>> : std::is_base_of<torch::nn::Module, T> {};

/// A module holder (`TORCH_MODULE` type) or a shared_ptr to a module.
template <typename T>
constexpr bool is_module_v = torch::detail::is_module_holder<std::decay_t<T>>::value ||
                             is_module_shared_ptr<std::decay_t<T>>::value;

/// A callable region. Module holders are excluded before invocability is
/// tested: a holder's call operator has a return type that hard-errors in
/// substitution instead of failing softly.
template <typename F>
constexpr bool is_region_fn_v = std::conjunction_v<
    std::negation<std::bool_constant<is_module_v<F>>>,
    std::is_invocable_r<std::vector<torch::Tensor>, F&, const std::vector<torch::Tensor>&>>;

}  // namespace detail

/// Runs `fn(inputs)` without keeping the activations inside it; during
/// backward, replays `fn` with grad on (same RNG and autocast state) and
/// returns gradients for `inputs` and `params` through the autograd engine.
///
/// `params` are the tensors `fn` reads that require grad and are not among
/// `inputs` (weights captured by the callable). They are passed to the
/// autograd node explicitly, so their gradients flow even when no input
/// requires grad (frozen embeddings, adapters). Outside grad mode, or when
/// nothing requires grad, this just calls `fn(inputs)`.
///
/// Example:
/// \code
///   auto out = remat::checkpoint(
///       [&](const std::vector<torch::Tensor>& in) { return std::vector{torch::tanh(in[0].mm(w))};
///       }, {x}, {w});
/// \endcode
template <typename Fn, typename = std::enable_if_t<detail::is_region_fn_v<Fn>>>
std::vector<torch::Tensor> checkpoint(Fn&& fn, const std::vector<torch::Tensor>& inputs,
                                      const std::vector<torch::Tensor>& params = {},
                                      const CheckpointOptions& options = {}) {
  return detail::checkpoint_region(RegionFn(std::forward<Fn>(fn)), inputs, params, options);
}

/// Checkpoints `module->forward(input)`; the module's trainable parameters
/// (recursively) are found and passed to the autograd node.
///
/// Works with a module holder (`remat::checkpoint(block, x)`) and with a
/// `std::shared_ptr` to a module.
template <typename M, typename = std::enable_if_t<detail::is_module_v<M>>>
torch::Tensor checkpoint(M& module, const torch::Tensor& input,
                         const CheckpointOptions& options = {});

/// Checkpoints `module->forward(args...)` for a forward that takes several
/// arguments. Tensor arguments (and engaged `std::optional<torch::Tensor>`)
/// become the region's inputs; other arguments (flags, sizes) are copied and
/// passed again in the replay. A trailing `CheckpointOptions` is taken as the
/// options. `forward` may return a tensor, a `std::vector<torch::Tensor>` or
/// a `std::tuple` of tensors.
///
/// Example: `auto y = remat::checkpoint(block, x, mask, /*causal=*/true);`
template <typename M, typename A0, typename A1, typename... Rest,
          typename = std::enable_if_t<detail::is_module_v<M>>>
auto checkpoint(M& module, A0&& a0, A1&& a1, Rest&&... rest);

/// Like checkpoint(), for a region whose outputs the next operation keeps for
/// its own backward (a linear layer keeps its input to compute its weight
/// gradient): runs `region(inputs)` without keeping its activations, passes
/// the outputs to `consumer`, and frees the outputs' memory once `consumer`
/// has run. Just before the backward reaches `consumer`'s results, the region
/// is replayed (same RNG and autocast state), its outputs are written back
/// into their tensors for `consumer`'s backward, and the region's own
/// backward then uses that replay. So neither the region's activations nor
/// its outputs are held between forward and backward, for one replay of the
/// region and without replaying `consumer` (Megatron-LM's
/// "CheckpointWithoutOutput").
///
/// Returns `consumer`'s results. The region's outputs must be used only by
/// `consumer` (another reader would find their memory freed); an output that
/// shares memory with an input, a parameter or one of `consumer`'s results is
/// left in place. Outside grad mode, or when nothing requires grad, this just
/// returns `consumer(region(inputs))`. Under a double backward
/// (create_graph) the region is replayed again in its own backward.
///
/// Example: a GELU MLP whose up projection and activation are recomputed
/// while its down projection is not:
/// \code
///   auto y = remat::checkpoint_without_output(
///       [&](const std::vector<torch::Tensor>& in) { return std::vector{torch::gelu(fc1(in[0]))};
///       }, {x}, remat::trainable_parameters(*fc1),
///       [&](const std::vector<torch::Tensor>& h) { return std::vector{fc2(h[0])}; })[0];
/// \endcode
std::vector<torch::Tensor> checkpoint_without_output(RegionFn region,
                                                     const std::vector<torch::Tensor>& inputs,
                                                     const std::vector<torch::Tensor>& params,
                                                     RegionFn consumer,
                                                     const CheckpointOptions& options = {});

/// The trainable parameters of `module` (recursively): those that require grad.
std::vector<torch::Tensor> trainable_parameters(const torch::nn::Module& module);

}  // namespace remat

#include "remat/detail/checkpoint-inl.h"
