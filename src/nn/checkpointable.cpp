#include "remat/nn/checkpointable.h"

#include <algorithm>
#include <atomic>

#include "remat/logging.h"

namespace remat::nn {
namespace detail {

// Shared by the blocks one gradient_checkpointing_enable() call marked, so
// that model-wide state (the use_cache warning) is per model, not per block.
struct CheckpointingPlan {
  CheckpointOptions options;
  Granularity granularity = Granularity::kBlock;
  std::atomic<bool> use_cache_warned{false};
};

}  // namespace detail

void set_plan(CheckpointableModule& block, std::shared_ptr<detail::CheckpointingPlan> plan) {
  block.plan_ = std::move(plan);
}

namespace {

template <typename Visit>
void for_each_block(torch::nn::Module& root, Visit&& visit) {
  int64_t index = 0;
  for (const auto& item : root.named_modules(/*name_prefix=*/"", /*include_self=*/true)) {
    if (auto* block = dynamic_cast<CheckpointableModule*>(item.value().get())) {
      visit(*block, index++, item.key());
    }
  }
}

void validate(const GradientCheckpointingOptions& options) {
  TORCH_CHECK(options.every_n_blocks() >= 1,
              "gradient_checkpointing_enable: invalid every_n_blocks ", options.every_n_blocks(),
              "; it must be at least 1 (1 marks every block)");
  TORCH_CHECK(!options.predicate() || options.every_n_blocks() == 1,
              "gradient_checkpointing_enable: every_n_blocks ", options.every_n_blocks(),
              " and a predicate were both given; use one of them");
  TORCH_CHECK(options.blocks().empty() || (options.every_n_blocks() == 1 && !options.predicate()),
              "gradient_checkpointing_enable: blocks and ",
              options.predicate() ? "a predicate" : "every_n_blocks", " were both given; use one");
  const auto& check = options.checkpoint_options().determinism_check();
  TORCH_CHECK(check == "default" || check == "none",
              "gradient_checkpointing_enable: invalid determinism_check \"", check,
              "\"; valid values are \"default\" and \"none\"");
}

}  // namespace

bool CheckpointableModule::is_checkpointing() const { return plan_ != nullptr && is_training(); }

bool CheckpointableModule::checkpoints(Granularity part) const {
  return is_checkpointing() && plan_->granularity == part;
}

const CheckpointOptions& CheckpointableModule::checkpoint_options() const {
  static const CheckpointOptions defaults;
  return plan_ ? plan_->options : defaults;
}

bool CheckpointableModule::resolve_use_cache(bool use_cache) const {
  if (!use_cache || !is_checkpointing()) return use_cache;
  warn_once(plan_->use_cache_warned,
            "use_cache=true is incompatible with gradient checkpointing in training: the "
            "replay cannot keep a KV cache. Setting use_cache=false.");
  return false;
}

int64_t gradient_checkpointing_enable(torch::nn::Module& root,
                                      const GradientCheckpointingOptions& options) {
  validate(options);
  auto plan = std::make_shared<detail::CheckpointingPlan>();
  plan->options = options.checkpoint_options();
  plan->granularity = options.granularity();
  const auto& blocks = options.blocks();
  if (!blocks.empty()) {
    int64_t count = 0;
    for_each_block(root, [&](CheckpointableModule&, int64_t, const std::string&) { ++count; });
    for (int64_t b : blocks) {
      TORCH_CHECK(b >= 0 && b < count, "gradient_checkpointing_enable: block ", b,
                  " does not exist: the model has ", count, " checkpointable blocks, indices 0 to ",
                  count - 1);
    }
  }
  int64_t marked = 0;
  for_each_block(root, [&](CheckpointableModule& block, int64_t index, const std::string& name) {
    bool mark = !blocks.empty() ? std::find(blocks.begin(), blocks.end(), index) != blocks.end()
                : options.predicate() ? options.predicate()(index, name)
                                      : index % options.every_n_blocks() == 0;
    set_plan(block, mark ? plan : nullptr);
    marked += mark ? 1 : 0;
  });
  if (marked == 0) {
    logger()->warn(
        "gradient_checkpointing_enable: no checkpointable block was marked in {}; derive blocks "
        "from remat::nn::CheckpointableModule and check the policy",
        root.name());
  }
  return marked;
}

void gradient_checkpointing_disable(torch::nn::Module& root) {
  for_each_block(root, [](CheckpointableModule& block, int64_t, const std::string&) {
    set_plan(block, nullptr);
  });
}

bool is_gradient_checkpointing(const torch::nn::Module& root) {
  bool any = false;
  // named_modules() is non-const; the walk only reads.
  for_each_block(const_cast<torch::nn::Module&>(root),
                 [&](CheckpointableModule& block, int64_t, const std::string&) {
                   any = any || block.gradient_checkpointing();
                 });
  return any;
}

}  // namespace remat::nn
