// The members of TrainingArguments that return torch-side types. They live
// apart so that training_arguments.h, and the sources behind it, need no torch
// headers: the struct only declares them with a forward-declared return type.

#include <map>
#include <string>

#include "remat/nn/checkpointable.h"
#include "remat/training_arguments.h"
#include "training_arguments_internal.h"

namespace remat {

nn::GradientCheckpointingOptions TrainingArguments::gradient_checkpointing_options() const {
  const auto kwargs = detail::parse_gradient_checkpointing_kwargs(gradient_checkpointing_kwargs);
  nn::GradientCheckpointingOptions options;
  auto& checkpoint = options.checkpoint_options();
  if (kwargs.preserve_rng_state) checkpoint.preserve_rng_state(*kwargs.preserve_rng_state);
  if (kwargs.determinism_check) checkpoint.determinism_check(*kwargs.determinism_check);
  if (kwargs.check_params) checkpoint.check_params(*kwargs.check_params);
  if (kwargs.every_n_blocks) options.every_n_blocks(*kwargs.every_n_blocks);
  if (kwargs.layers) options.blocks(*kwargs.layers);
  if (kwargs.granularity) {
    // The values parse_gradient_checkpointing_kwargs accepts, in the enum's order.
    static const std::map<std::string, nn::Granularity> granularities = {
        {"block", nn::Granularity::kBlock},
        {"attention", nn::Granularity::kAttention},
        {"mlp", nn::Granularity::kMlp},
        {"mlp_up", nn::Granularity::kMlpUp}};
    options.granularity(granularities.at(*kwargs.granularity));
  }
  // use_reentrant has no counterpart: remat has one checkpoint implementation.
  return options;
}

}  // namespace remat
