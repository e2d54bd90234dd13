#pragma once

#include <memory>

#include "remat/models/causal_lm.h"

namespace remat::models::detail {

std::shared_ptr<CausalLMImpl> make_gpt2(const ModelConfig& config);
std::shared_ptr<CausalLMImpl> make_llama(const ModelConfig& config);

}  // namespace remat::models::detail
