#include "remat/optim/adamw.h"

#include <algorithm>
#include <cctype>
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

torch::optim::AdamW create_adamw(const torch::nn::Module& model,
                                 const torch::optim::AdamWOptions& options) {
  auto groups = get_parameter_groups(model, options);
  TORCH_CHECK(!groups[0].params().empty() || !groups[1].params().empty(), "create_adamw: module ",
              model.name(), " has no trainable parameters");
  return torch::optim::AdamW(groups, options);
}

}  // namespace remat::optim
