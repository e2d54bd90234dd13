#include "remat/grad_scaler.h"

#include <ATen/ops/_amp_foreach_non_finite_check_and_unscale.h>
#include <ATen/ops/_amp_update_scale.h>

#include <map>
#include <utility>

namespace remat {

GradScaler::GradScaler(GradScalerOptions options) : options_(options) {
  TORCH_CHECK(options_.growth_factor() > 1.0, "GradScaler: growth_factor must be > 1, got ",
              options_.growth_factor());
  TORCH_CHECK(options_.backoff_factor() < 1.0, "GradScaler: backoff_factor must be < 1, got ",
              options_.backoff_factor());
  TORCH_CHECK(options_.growth_interval() >= 1, "GradScaler: growth_interval must be >= 1, got ",
              options_.growth_interval());
}

void GradScaler::lazy_init(const torch::Device& device) {
  if (scale_.defined()) return;
  scale_ = torch::full({}, options_.init_scale(), torch::dtype(torch::kFloat32).device(device));
  growth_tracker_ =
      torch::full({}, init_growth_tracker_, torch::dtype(torch::kInt32).device(device));
}

torch::Tensor GradScaler::scale(const torch::Tensor& loss) {
  lazy_init(loss.device());
  return loss * scale_.to(loss.device(), /*non_blocking=*/true);
}

void GradScaler::unscale_(const std::vector<torch::Tensor>& params) {
  TORCH_CHECK(scale_.defined(),
              "GradScaler::unscale_: nothing was scaled this step; call scale(loss) first");
  TORCH_CHECK(!unscaled_, "GradScaler::unscale_: already called since the last update()");
  torch::NoGradGuard no_grad;
  // torch: the reciprocal in double, then float.
  const auto inv_scale = scale_.to(torch::kDouble).reciprocal().to(torch::kFloat);
  // Gradients by device and dtype, as torch groups them for the foreach kernel.
  std::map<std::pair<std::string, c10::ScalarType>, std::vector<torch::Tensor>> groups;
  std::vector<torch::Device> devices;
  for (const auto& p : params) {
    const auto& g = p.grad();
    if (!g.defined()) continue;
    TORCH_CHECK(g.scalar_type() != torch::kHalf,
                "GradScaler::unscale_: float16 gradients (of float16 parameters) cannot be "
                "unscaled; keep the parameters in float32 and let autocast cast the compute");
    TORCH_CHECK(!g.is_sparse(), "GradScaler::unscale_: sparse gradients are not supported");
    groups[{g.device().str(), g.scalar_type()}].push_back(g);
  }
  std::map<std::string, std::pair<torch::Tensor, torch::Tensor>>
      per_device;  // found_inf, inv_scale
  for (auto& [key, grads] : groups) {
    const auto device = grads.front().device();
    auto it = per_device.find(key.first);
    if (it == per_device.end()) {
      auto found = torch::zeros({}, torch::dtype(torch::kFloat32).device(device));
      it = per_device.emplace(key.first, std::make_pair(found, inv_scale.to(device, true))).first;
    }
    at::_amp_foreach_non_finite_check_and_unscale_(grads, it->second.first, it->second.second);
  }
  found_inf_ = torch::zeros({}, torch::dtype(torch::kFloat32).device(scale_.device()));
  bool first = true;
  for (auto& [device, pair] : per_device) {
    auto found = pair.first.to(scale_.device(), /*non_blocking=*/true);
    if (first) {
      found_inf_ = found;
      first = false;
    } else {
      found_inf_ = found_inf_ + found;
    }
  }
  unscaled_ = true;
}

void GradScaler::unscale_(torch::optim::Optimizer& optimizer) {
  std::vector<torch::Tensor> params;
  for (const auto& group : optimizer.param_groups()) {
    params.insert(params.end(), group.params().begin(), group.params().end());
  }
  unscale_(params);
}

bool GradScaler::step(torch::optim::Optimizer& optimizer) {
  if (!unscaled_) unscale_(optimizer);
  if (found_inf_.item<float>() != 0.0f) return false;
  optimizer.step();
  return true;
}

void GradScaler::update() {
  if (!unscaled_) return;
  at::_amp_update_scale_(scale_, growth_tracker_, found_inf_, options_.growth_factor(),
                         options_.backoff_factor(), options_.growth_interval());
  unscaled_ = false;
}

double GradScaler::get_scale() const {
  return scale_.defined() ? scale_.item<float>() : options_.init_scale();
}

int64_t GradScaler::growth_tracker() const {
  return growth_tracker_.defined() ? growth_tracker_.item<int>() : init_growth_tracker_;
}

nlohmann::json GradScaler::state_dict() const {
  return {{"scale", get_scale()},
          {"growth_factor", options_.growth_factor()},
          {"backoff_factor", options_.backoff_factor()},
          {"growth_interval", options_.growth_interval()},
          {"_growth_tracker", growth_tracker()}};
}

void GradScaler::load_state_dict(const nlohmann::json& state) {
  TORCH_CHECK(state.is_object() && !state.empty(),
              "GradScaler::load_state_dict: expected the object state_dict() returns, got ",
              state.dump());
  for (const char* key :
       {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}) {
    TORCH_CHECK(state.contains(key), "GradScaler::load_state_dict: missing \"", key, "\"");
  }
  options_.init_scale(state["scale"].get<double>());
  options_.growth_factor(state["growth_factor"].get<double>());
  options_.backoff_factor(state["backoff_factor"].get<double>());
  options_.growth_interval(state["growth_interval"].get<int64_t>());
  init_growth_tracker_ = state["_growth_tracker"].get<int64_t>();
  if (scale_.defined()) scale_.fill_(options_.init_scale());
  if (growth_tracker_.defined()) growth_tracker_.fill_(init_growth_tracker_);
}

}  // namespace remat
