#pragma once

/// \file
/// Checkpointable Transformer blocks: the C++ counterpart of Hugging Face's
/// GradientCheckpointingLayer and of `model.gradient_checkpointing_enable()`.
///
/// A block opts in by deriving from CheckpointableModule instead of
/// torch::nn::Module; the model runs it with remat::nn::forward(block, ...),
/// which checkpoints the call while the block is marked, the model is in
/// training mode.
/// \code
///   struct BlockImpl : remat::nn::CheckpointableModule {
///     torch::Tensor forward(torch::Tensor x);
///   };
///   TORCH_MODULE(Block);
///   ...
///   for (auto& block : blocks) x = remat::nn::forward(block, x);
///   ...
///   remat::nn::gradient_checkpointing_enable(*model);  // every block
///   remat::nn::gradient_checkpointing_enable(
///       *model, remat::nn::GradientCheckpointingOptions().every_n_blocks(2));
/// \endcode

#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>

#include "remat/checkpoint.h"

namespace remat::nn {

/// What a marked block checkpoints: the whole block, or part of a
/// Transformer layer, the selective policies that trade less memory saving
/// for less recompute:
/// - kAttention, kMlp: that sub-block, replayed whole in the backward;
/// - kMlpUp: the MLP up to its output projection (its up and gate
///   projections and the activation), through checkpoint_without_output():
///   only the MLP's input (the norm's output) is kept, and the output
///   projection, whose input is recomputed just before its backward, is not
///   replayed. Cheaper than kMlp for most of its saving.
enum class Granularity { kBlock, kAttention, kMlp, kMlpUp };

/// Which blocks gradient_checkpointing_enable() marks, and how they are
/// checkpointed.
struct GradientCheckpointingOptions {
  /// Options for every checkpoint() call of a marked block (the
  /// `gradient_checkpointing_kwargs` of Hugging Face). Default: defaults.
  TORCH_ARG(CheckpointOptions, checkpoint_options) = {};

  /// Mark every N-th checkpointable block in module order: blocks 0, N, 2N,
  /// ... Default 1: every block. Must be at least 1.
  TORCH_ARG(int64_t, every_n_blocks) = 1;

  /// When set, marks exactly the blocks for which it returns true, given the
  /// block's index among checkpointable blocks and its qualified name (e.g.
  /// "layers.3"); `every_n_blocks` then must stay 1. Default: unset.
  TORCH_ARG(std::function<bool(int64_t index, const std::string& name)>, predicate) = nullptr;

  /// When non-empty, marks exactly the blocks of these indices among the
  /// checkpointable blocks, in module order (e.g. {0, 1, 2}: the first three
  /// layers); each must be below the number of blocks, and `every_n_blocks`
  /// must stay 1 and `predicate` unset. Default: empty.
  TORCH_ARG(std::vector<int64_t>, blocks) = {};

  /// What each marked block checkpoints. Default Granularity::kBlock. The
  /// sub-block granularities need blocks that ask checkpoints(part), as
  /// remat's Transformer layers do.
  TORCH_ARG(Granularity, granularity) = Granularity::kBlock;
};

namespace detail {
struct CheckpointingPlan;
}  // namespace detail

/// Runs a block's call in place of nn::forward's own logic: given the call as
/// a region (`fn` over the tensor arguments `inputs`), the block's trainable
/// `params` and whether the block is checkpointing whole, returns the
/// outputs. Sharded data parallelism (remat::distributed::FullyShardedDataParallel)
/// installs one per unit to gather the unit's parameters around the call and
/// to apply checkpointing inside the unit.
using BlockRunner = std::function<std::vector<torch::Tensor>(
    RegionFn fn, const std::vector<torch::Tensor>& inputs, const std::vector<torch::Tensor>& params,
    bool checkpoint)>;

/// Base class for a block that gradient checkpointing can mark. It adds no
/// parameters and no behaviour until gradient_checkpointing_enable() marks it.
class CheckpointableModule : public torch::nn::Module {
 public:
  using torch::nn::Module::Module;

  /// True once gradient_checkpointing_enable() marked this block.
  bool gradient_checkpointing() const { return plan_ != nullptr; }

  /// True when the block is marked and in training mode (as Hugging Face's
  /// `gradient_checkpointing and training`): its calls go through
  /// checkpoint(), which, under NoGradGuard, simply runs them.
  bool is_checkpointing() const;

  /// The options the block's checkpoint() calls use.
  const CheckpointOptions& checkpoint_options() const;

  /// True when the block is checkpointing with granularity `part`: a layer
  /// asks checkpoints(Granularity::kAttention) to decide whether to run its
  /// attention through checkpoint().
  bool checkpoints(Granularity part) const;

  /// For blocks that take a KV cache: returns `use_cache`, except while
  /// checkpointing, when the cache cannot be kept and it returns false,
  /// warning once per model (not once per step).
  bool resolve_use_cache(bool use_cache) const;

  /// Routes this block's nn::forward calls through `runner` (nullptr: the
  /// default behaviour).
  void set_block_runner(BlockRunner runner) { runner_ = std::move(runner); }
  /// The runner set by set_block_runner(), or nullptr.
  const BlockRunner& block_runner() const { return runner_; }

 private:
  friend void set_plan(CheckpointableModule&, std::shared_ptr<detail::CheckpointingPlan>);
  std::shared_ptr<detail::CheckpointingPlan> plan_;
  BlockRunner runner_;
};

/// Marks the checkpointable blocks under `root` (root included) as
/// `options` says, replacing earlier marks. Returns how many were marked.
int64_t gradient_checkpointing_enable(torch::nn::Module& root,
                                      const GradientCheckpointingOptions& options = {});

/// Unmarks every checkpointable block under `root`.
void gradient_checkpointing_disable(torch::nn::Module& root);

/// True when some block under `root` is marked.
bool is_gradient_checkpointing(const torch::nn::Module& root);

namespace detail {
template <typename M, typename = void, typename... Args>
struct has_checkpointed_forward : std::false_type {};
template <typename M, typename... Args>
struct has_checkpointed_forward<
    M, std::void_t<decltype(std::declval<M&>()->checkpointed_forward(std::declval<Args>()...))>,
    Args...> : std::true_type {};
}  // namespace detail

/// Runs `block->forward(args...)`, through remat::checkpoint() while the
/// block is checkpointing whole (see CheckpointableModule::checkpoints), or
/// through the block's runner when one is set (see set_block_runner).
///
/// A block may checkpoint itself whole more cheaply than a replay of its
/// whole forward: when it has a `checkpointed_forward(args...)` (same
/// arguments and result as `forward`), that runs instead of
/// remat::checkpoint(). remat's GPT-2 and Llama layers have one: through
/// checkpoint_without_output(), everything up to the MLP's output
/// projection is dropped and replayed, and the projection is not (its
/// output only rebuilds the layer's output, the next layer's kept input).
template <typename M, typename... Args>
auto forward(M& block, Args&&... args) {
  if (const auto& runner = block->block_runner()) {
    const bool whole = block->checkpoints(Granularity::kBlock);
    return remat::detail::region_forward(
        block,
        [&runner, whole](RegionFn fn, const std::vector<torch::Tensor>& inputs,
                         const std::vector<torch::Tensor>& params) {
          return runner(std::move(fn), inputs, params, whole);
        },
        args...);
  }
  if (block->checkpoints(Granularity::kBlock)) {
    if constexpr (detail::has_checkpointed_forward<M, void, Args...>::value) {
      return block->checkpointed_forward(std::forward<Args>(args)...);
    } else {
      return remat::checkpoint(block, std::forward<Args>(args)..., block->checkpoint_options());
    }
  }
  return block->forward(std::forward<Args>(args)...);
}

}  // namespace remat::nn
