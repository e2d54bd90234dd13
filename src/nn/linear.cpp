#include "remat/nn/linear.h"

#include <ATen/autocast_mode.h>

#include "fused_internal.h"

#include <optional>

namespace remat::nn {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

constexpr auto kCuda = c10::DeviceType::CUDA;

// The code the models ran before: torch::nn::Linear's forward, and
// transformers' Conv1D on the rows of x.
Tensor plain_linear(const Tensor& x, const Tensor& weight, const Tensor& bias,
                    WeightLayout layout) {
  if (layout == WeightLayout::kOutIn) return torch::nn::functional::linear(x, weight, bias);
  auto shape = x.sizes().vec();
  shape.back() = weight.size(1);
  const auto rows = x.reshape({-1, x.size(-1)});
  return (bias.defined() ? torch::addmm(bias, rows, weight) : torch::mm(rows, weight)).view(shape);
}

bool low_precision(at::ScalarType t) { return t == at::kBFloat16 || t == at::kHalf; }

bool float_input(at::ScalarType t) { return t == at::kFloat || low_precision(t); }

bool no_forward_grad(const Tensor& t) { return !t.defined() || !t._fw_grad(0).defined(); }

// The autocast dtype when the mixed-precision path applies, else nullopt.
std::optional<at::ScalarType> mixed_precision_dtype(const Tensor& x, const Tensor& weight,
                                                    const Tensor& bias) {
  if (!detail::fused_kernels_on()) return std::nullopt;
  if (!x.defined() || !weight.defined() || !x.is_cuda() || !weight.is_cuda()) return std::nullopt;
  if (!at::autocast::is_autocast_enabled(kCuda)) return std::nullopt;
  const auto dtype = at::autocast::get_autocast_dtype(kCuda);
  if (!low_precision(dtype) || !torch::GradMode::is_enabled() || !weight.requires_grad()) {
    return std::nullopt;
  }
  if (x.layout() != at::kStrided || weight.layout() != at::kStrided || x.dim() < 2 ||
      weight.dim() != 2 || !float_input(x.scalar_type()) || weight.scalar_type() != at::kFloat ||
      x.device() != weight.device()) {
    return std::nullopt;
  }
  if (bias.defined() && (bias.layout() != at::kStrided || bias.scalar_type() != at::kFloat ||
                         bias.device() != weight.device())) {
    return std::nullopt;
  }
  // Forward-mode AD goes through the plain ops, which have formulas for it.
  if (!no_forward_grad(x) || !no_forward_grad(weight) || !no_forward_grad(bias)) {
    return std::nullopt;
  }
  return dtype;
}

// The low-precision copies autocast made: they are not inputs of the
// autograd node (the float32 weight and bias are), so autograd never routes a
// gradient through their casts.
struct LowPrecisionOperands {
  Tensor weight;  // the weight in the autocast dtype, [out, in] or [in, out]
  Tensor bias;    // the bias in the autocast dtype, where the GEMM adds it
  WeightLayout layout = WeightLayout::kOutIn;
};

// Forward: the plain expression on the low-precision operands (as autocast
// runs it). Backward: the gradient of x in the low-precision dtype as the
// plain backward computes it; those of the weight and the bias in float32.
struct AutocastLinearFunction : torch::autograd::Function<AutocastLinearFunction> {
  // x_lp: x in the autocast dtype (the rows [n, in] for kInOut);
  // weight, bias: the float32 parameters the gradients are for.
  static Tensor forward(AutogradContext* ctx, const Tensor& x_lp, const Tensor& weight,
                        const std::optional<Tensor>& bias, const LowPrecisionOperands& lp) {
    c10::impl::ExcludeDispatchKeyGuard no_autocast(
        at::autocast::get_autocast_dispatch_key_from_device_type(kCuda));
    const auto& w = lp.weight;
    Tensor out;
    if (lp.layout == WeightLayout::kInOut) {
      out = lp.bias.defined() ? at::addmm(lp.bias, x_lp, w) : at::mm(x_lp, w);
    } else if (lp.bias.defined()) {
      // torch::nn::functional::linear on a matrix: addmm, with autocast's
      // cast of the bias.
      out = at::addmm(lp.bias, x_lp, w.t());
    } else {
      // Otherwise matmul, and the (float32) bias added in place after it.
      out = at::matmul(x_lp, w.t());
      if (bias) out.add_(*bias);
    }
    ctx->saved_data["in_out"] = lp.layout == WeightLayout::kInOut;
    ctx->saved_data["bias"] = bias.has_value();
    // What the plain backward keeps: x_lp for the weight's gradient, the
    // low-precision weight for x's. x_lp is x itself when x already had the
    // autocast dtype.
    ctx->save_for_backward(
        {weight.requires_grad() ? x_lp : Tensor(), x_lp.requires_grad() ? w : Tensor()});
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    tensor_list result(4);
    const auto& grad = grads[0];
    if (!grad.defined()) return result;
    c10::impl::ExcludeDispatchKeyGuard no_autocast(
        at::autocast::get_autocast_dispatch_key_from_device_type(kCuda));
    const auto saved = ctx->get_saved_variables();
    const auto& x_lp = saved[0];
    const auto& w_lp = saved[1];
    const bool in_out = ctx->saved_data["in_out"].toBool();
    const bool has_bias = ctx->saved_data["bias"].toBool();
    // Under create_graph (double backward) every formula is differentiable.
    const bool create_graph = torch::GradMode::is_enabled();
    const auto g = grad.reshape({-1, grad.size(-1)});
    if (ctx->needs_input_grad(0)) {
      // As mm's backward computes it: grad @ W ([out, in]) or grad @ W^T.
      result[0] = (in_out ? g.mm(w_lp.t()) : g.mm(w_lp)).reshape(x_lp.sizes());
    }
    if (ctx->needs_input_grad(1)) {
      const auto x = x_lp.reshape({-1, x_lp.size(-1)});
      const auto& a = in_out ? x : g;
      const auto& b = in_out ? g : x;
      // W's gradient: a^T b, [out, in] (grad^T x) or [in, out] (x^T grad),
      // from the low-precision operands into float32.
      result[1] = create_graph ? at::mm(a.t().to(at::kFloat), b.to(at::kFloat))
                               : at::mm(a.t(), b, at::kFloat);
    }
    if (has_bias && ctx->needs_input_grad(2)) {
      const int64_t rows = 0;
      result[2] = at::sum(g, at::IntArrayRef(rows), /*keepdim=*/false, at::kFloat);
    }
    return result;
  }
};

}  // namespace

Tensor linear(const Tensor& x, const Tensor& weight, const Tensor& bias, WeightLayout layout) {
  const auto dtype = mixed_precision_dtype(x, weight, bias);
  if (!dtype) return plain_linear(x, weight, bias, layout);
  // The casts autocast's addmm / matmul make, through its cache (float32
  // leaves such as parameters are cast once per autocast region; x comes
  // back as is when it already has the dtype).
  const bool in_out = layout == WeightLayout::kInOut;
  const auto x_lp =
      at::autocast::cached_cast(*dtype, in_out ? x.reshape({-1, x.size(-1)}) : x, kCuda);
  LowPrecisionOperands lp;
  lp.layout = layout;
  lp.weight = at::autocast::cached_cast(*dtype, weight, kCuda);
  // The GEMM adds the bias for Conv1D and for a matrix x; otherwise the
  // plain code adds the float32 bias to the product.
  if (bias.defined() && (in_out || x.dim() == 2)) {
    lp.bias = at::autocast::cached_cast(*dtype, bias, kCuda);
  }
  auto out = AutocastLinearFunction::apply(
      x_lp, weight, bias.defined() ? std::optional<Tensor>(bias) : std::nullopt, lp);
  if (!in_out) return out;
  auto shape = x.sizes().vec();
  shape.back() = weight.size(1);
  return out.view(shape);
}

}  // namespace remat::nn
