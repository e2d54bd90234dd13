#pragma once

/// \file
/// remat::GradScaler: dynamic loss scaling for float16 training, step for
/// step what torch.amp.GradScaler does (the same ATen kernels, the same
/// scale and growth-tracker updates, the same state_dict keys).
/// \code
///   remat::GradScaler scaler;                    // scale 65536, x2 every 2000 clean steps
///   scaler.scale(loss).backward();
///   scaler.unscale_(optimizer);                   // optional: to clip the true gradients
///   torch::nn::utils::clip_grad_norm_(model->parameters(), 1.0);
///   bool stepped = scaler.step(optimizer);        // skipped when a gradient is inf/NaN
///   scaler.update();                              // backs off after a skip, grows after 2000
///   clean steps
/// \endcode
/// The scaler works on CPU and CUDA tensors; its scale lives on the device
/// of the first loss it scales.

#include <torch/torch.h>
#include <nlohmann/json.hpp>

#include <cstdint>
#include <vector>

namespace remat {

/// torch.amp.GradScaler's constructor arguments, with its defaults.
struct GradScalerOptions {
  /// The scale before the first update.
  TORCH_ARG(double, init_scale) = 65536.0;
  /// The scale is multiplied by this after growth_interval clean steps (> 1).
  TORCH_ARG(double, growth_factor) = 2.0;
  /// The scale is multiplied by this after a step with inf/NaN gradients (< 1).
  TORCH_ARG(double, backoff_factor) = 0.5;
  /// Consecutive steps without inf/NaN gradients before the scale grows.
  TORCH_ARG(int64_t, growth_interval) = 2000;
};

/// Dynamic loss scaling, as torch.amp.GradScaler: scale() multiplies the loss
/// so float16 gradients do not underflow; unscale_() divides the gradients
/// back and records whether any is inf or NaN; step() runs the optimizer
/// only when none is; update() halves the scale after such a step and doubles
/// it after growth_interval clean ones.
class GradScaler {
 public:
  explicit GradScaler(GradScalerOptions options = {});

  /// `loss` times the current scale (a float32 scalar on the loss's device,
  /// created on the first call).
  torch::Tensor scale(const torch::Tensor& loss);

  /// Divides the gradients of `params` by the scale in place and records
  /// whether any of them holds an inf or NaN (no host synchronization).
  /// Once per step, after the last backward; step() calls it if you did not.
  void unscale_(const std::vector<torch::Tensor>& params);
  /// unscale_() of every parameter of `optimizer`.
  void unscale_(torch::optim::Optimizer& optimizer);

  /// Whether the gradients unscale_() saw held an inf or NaN, as a float32
  /// scalar tensor on the scale's device (0: none); undefined before
  /// unscale_(). Data-parallel training overwrites it in place with the
  /// finding of all ranks before step() and update(), so every rank skips
  /// the same steps and keeps the same scale.
  const torch::Tensor& found_inf() const { return found_inf_; }

  /// Unscales the gradients unless unscale_() ran this step, then runs
  /// `optimizer.step()` unless they hold an inf or NaN. Returns whether it
  /// stepped. Synchronizes with the device once (to read found_inf).
  bool step(torch::optim::Optimizer& optimizer);

  /// Ends the step: the scale backs off if the step found an inf/NaN, grows
  /// after growth_interval clean steps (torch's `_amp_update_scale_`).
  /// Without an unscale_() this step (nothing scaled), does nothing.
  void update();

  /// The current scale (synchronizes with the device).
  double get_scale() const;
  /// Clean steps since the last growth or backoff (synchronizes).
  int64_t growth_tracker() const;
  const GradScalerOptions& options() const { return options_; }

  /// torch.amp.GradScaler.state_dict(): {"scale", "growth_factor",
  /// "backoff_factor", "growth_interval", "_growth_tracker"}.
  nlohmann::json state_dict() const;
  /// Restores what state_dict() returned.
  void load_state_dict(const nlohmann::json& state);

 private:
  void lazy_init(const torch::Device& device);

  GradScalerOptions options_;
  int64_t init_growth_tracker_ = 0;
  torch::Tensor scale_;           // float32 scalar
  torch::Tensor growth_tracker_;  // int32 scalar
  torch::Tensor found_inf_;       // float32 scalar, set by unscale_()
  bool unscaled_ = false;         // unscale_() ran since the last update()
};

}  // namespace remat
