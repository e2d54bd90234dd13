#include "remat/nn/fused.h"

#include "fused_internal.h"

#include <cstdlib>
#include <string>

#ifdef REMAT_HAVE_CUDA_KERNELS
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>

#include "fused_kernels.h"
#endif

namespace remat::nn {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// ---- The plain expressions (the CPU path and every fallback) ----------------

Tensor swiglu_composite(const Tensor& gate, const Tensor& up) { return torch::silu(gate) * up; }

Tensor rotate_half(const Tensor& x) {
  const auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// cos and sin [b, t, d] broadcast over the heads of x [b, t, h, d].
Tensor rotary_composite(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  return x * cos.unsqueeze(2) + rotate_half(x) * sin.unsqueeze(2);
}

Tensor rms_norm_composite(const Tensor& x, const Tensor& weight, double eps) {
  auto h = x.to(torch::kFloat);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

// ---- Checks shared by both paths --------------------------------------------

void check_swiglu(const Tensor& gate, const Tensor& up) {
  TORCH_CHECK(gate.defined() && up.defined(), "swiglu: gate and up must be defined");
  TORCH_CHECK(gate.sizes() == up.sizes(), "swiglu: gate and up must have the same shape, got gate ",
              gate.sizes(), " and up ", up.sizes());
  TORCH_CHECK(gate.device() == up.device(), "swiglu: gate and up must be on one device, got ",
              gate.device(), " and ", up.device());
}

void check_rotary(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  TORCH_CHECK(x.defined() && cos.defined() && sin.defined(),
              "rotary: x, cos and sin must be defined");
  TORCH_CHECK(x.dim() == 4, "rotary: x must be [batch, tokens, heads, head_dim], got ", x.sizes());
  const int64_t b = x.size(0), t = x.size(1), d = x.size(3);
  TORCH_CHECK(d % 2 == 0, "rotary: head_dim must be even, got x ", x.sizes());
  TORCH_CHECK(cos.sizes() == sin.sizes(), "rotary: cos and sin must have the same shape, got cos ",
              cos.sizes(), " and sin ", sin.sizes());
  TORCH_CHECK(cos.dim() == 3 && (cos.size(0) == b || cos.size(0) == 1) && cos.size(1) == t &&
                  cos.size(2) == d,
              "rotary: cos and sin must be [batch or 1, tokens, head_dim] = [", b, ", ", t, ", ", d,
              "] for x [batch, tokens, heads, head_dim] = ", x.sizes(), ", got cos ", cos.sizes());
  TORCH_CHECK(cos.device() == x.device() && sin.device() == x.device(),
              "rotary: x, cos and sin must be on one device, got ", x.device(), ", ", cos.device(),
              " and ", sin.device());
}

void check_rms_norm(const Tensor& x, const Tensor& weight) {
  TORCH_CHECK(x.defined() && weight.defined(), "rms_norm: x and weight must be defined");
  TORCH_CHECK(x.dim() >= 1 && weight.dim() == 1 && weight.size(0) == x.size(-1),
              "rms_norm: weight must be [x.size(-1)], got x ", x.sizes(), " and weight ",
              weight.sizes());
}

bool kernel_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kHalf || t == at::kBFloat16;
}

#ifdef REMAT_HAVE_CUDA_KERNELS

// The transpose of rotate_half: cat(g2, -g1).
Tensor rotate_half_transposed(const Tensor& g) {
  const auto half = g.size(-1) / 2;
  return torch::cat({g.narrow(-1, half, half), -g.narrow(-1, 0, half)}, -1);
}

kernels::DType to_kernel(at::ScalarType t) {
  switch (t) {
    case at::kHalf:
      return kernels::DType::kFloat16;
    case at::kBFloat16:
      return kernels::DType::kBFloat16;
    default:
      TORCH_INTERNAL_ASSERT(t == at::kFloat, "remat fused kernels: unexpected dtype ", t);
      return kernels::DType::kFloat32;
  }
}

void* current_stream(const Tensor& t) {
  return c10::cuda::getCurrentCUDAStream(t.device().index()).stream();
}

void check_launch(const char* error, const char* what) {
  TORCH_CHECK(error == nullptr, "remat::nn::", what, ": CUDA kernel failed: ", error);
}

bool kernels_on() { return detail::fused_kernels_on(); }

// ---- SwiGLU -----------------------------------------------------------------

bool swiglu_takes(const Tensor& gate, const Tensor& up) {
  return kernels_on() && gate.is_cuda() && gate.layout() == at::kStrided &&
         up.layout() == at::kStrided && gate.scalar_type() == up.scalar_type() &&
         kernel_dtype(gate.scalar_type()) && gate.is_contiguous() && up.is_contiguous();
}

struct SwiGLUFunction : torch::autograd::Function<SwiGLUFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& gate, const Tensor& up) {
    c10::cuda::CUDAGuard guard(gate.device());
    ctx->save_for_backward({gate, up});
    auto out = torch::empty_like(gate, at::MemoryFormat::Contiguous);
    check_launch(
        kernels::swiglu_forward(gate.data_ptr(), up.data_ptr(), out.data_ptr(), gate.numel(),
                                to_kernel(gate.scalar_type()), current_stream(gate)),
        "swiglu");
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& gate = saved[0];
    const auto& up = saved[1];
    const auto& grad = grads[0];
    if (!grad.defined()) return {Tensor(), Tensor()};
    if (torch::GradMode::is_enabled()) {
      // create_graph: the formula in differentiable ops, for double backward.
      const auto g = gate.to(at::kFloat), u = up.to(at::kFloat), d = grad.to(at::kFloat);
      const auto s = torch::sigmoid(g);
      return {(d * u * s * (1 + g * (1 - s))).to(gate.scalar_type()),
              (d * g * s).to(up.scalar_type())};
    }
    c10::cuda::CUDAGuard guard(gate.device());
    const auto d = grad.to(gate.scalar_type()).contiguous();
    auto grad_gate = torch::empty_like(gate, at::MemoryFormat::Contiguous);
    auto grad_up = torch::empty_like(up, at::MemoryFormat::Contiguous);
    check_launch(kernels::swiglu_backward(d.data_ptr(), gate.data_ptr(), up.data_ptr(),
                                          grad_gate.data_ptr(), grad_up.data_ptr(), gate.numel(),
                                          to_kernel(gate.scalar_type()), current_stream(gate)),
                 "swiglu backward");
    return {grad_gate, grad_up};
  }
};

// ---- Rotary -----------------------------------------------------------------

bool rotary_takes(const Tensor& x, const Tensor& cos, const Tensor& sin, at::ScalarType out_dtype) {
  if (!kernels_on()) return false;
  if (!x.is_cuda() || x.layout() != at::kStrided || cos.layout() != at::kStrided ||
      sin.layout() != at::kStrided) {
    return false;
  }
  const auto xt = x.scalar_type(), ct = cos.scalar_type();
  if (!kernel_dtype(xt) || sin.scalar_type() != ct || (ct != xt && ct != at::kFloat)) return false;
  // The output in the wide dtype, or in x's (rounded once from float32).
  if (out_dtype != at::promote_types(xt, ct) && out_dtype != xt) return false;
  // No gradient flows to cos and sin through the kernel.
  if (torch::GradMode::is_enabled() && (cos.requires_grad() || sin.requires_grad())) return false;
  return true;
}

// The kernel's view of x (or its gradient) [b, t, h, d] with a unit last
// stride, and of cos, sin [b or 1, t, d] with a unit last stride and equal
// strides. Copies only what does not fit.
struct RotaryArgs {
  Tensor a, cos, sin;
  kernels::RotaryShape shape;
};

RotaryArgs rotary_args(const Tensor& a, const Tensor& cos, const Tensor& sin) {
  RotaryArgs r;
  r.a = a.stride(3) == 1 ? a : a.contiguous();
  r.cos = cos;
  r.sin = sin;
  if (cos.stride(2) != 1 || sin.stride(2) != 1 || cos.strides() != sin.strides()) {
    r.cos = cos.contiguous();
    r.sin = sin.contiguous();
  }
  auto& s = r.shape;
  s.batch = r.a.size(0);
  s.tokens = r.a.size(1);
  s.heads = r.a.size(2);
  s.head_dim = r.a.size(3);
  s.a_batch_stride = r.a.stride(0);
  s.a_token_stride = r.a.stride(1);
  s.a_head_stride = r.a.stride(2);
  s.cs_batch_stride = r.cos.size(0) == 1 ? 0 : r.cos.stride(0);
  s.cs_token_stride = r.cos.stride(1);
  return r;
}

struct RotaryFunction : torch::autograd::Function<RotaryFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& cos, const Tensor& sin,
                        at::ScalarType out_dtype) {
    c10::cuda::CUDAGuard guard(x.device());
    ctx->save_for_backward({cos, sin});
    ctx->saved_data["x_dtype"] = static_cast<int64_t>(x.scalar_type());
    const auto args = rotary_args(x, cos, sin);
    auto out = torch::empty(x.sizes(), x.options().dtype(out_dtype));
    check_launch(
        kernels::rotary_forward(args.a.data_ptr(), to_kernel(x.scalar_type()), args.cos.data_ptr(),
                                args.sin.data_ptr(), to_kernel(cos.scalar_type()), out.data_ptr(),
                                to_kernel(out_dtype), args.shape, current_stream(x)),
        "rotary");
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& cos = saved[0];
    const auto& sin = saved[1];
    const auto x_dtype = static_cast<at::ScalarType>(ctx->saved_data["x_dtype"].toInt());
    const auto& grad = grads[0];
    if (!grad.defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};
    if (torch::GradMode::is_enabled()) {
      // create_graph: the formula in differentiable ops, for double backward.
      const auto c = cos.unsqueeze(2), s = sin.unsqueeze(2);
      return {(grad * c + rotate_half_transposed(grad * s)).to(x_dtype), Tensor(), Tensor(),
              Tensor()};
    }
    c10::cuda::CUDAGuard guard(grad.device());
    // The gradient arrives in the output's dtype: the wide one, or x's.
    const auto out_dtype =
        grad.scalar_type() == x_dtype ? x_dtype : at::promote_types(x_dtype, cos.scalar_type());
    const auto args = rotary_args(grad.to(out_dtype), cos, sin);
    auto grad_x = torch::empty(grad.sizes(), grad.options().dtype(x_dtype));
    check_launch(kernels::rotary_backward(args.a.data_ptr(), to_kernel(out_dtype),
                                          args.cos.data_ptr(), args.sin.data_ptr(),
                                          to_kernel(cos.scalar_type()), grad_x.data_ptr(),
                                          to_kernel(x_dtype), args.shape, current_stream(grad)),
                 "rotary backward");
    return {grad_x, Tensor(), Tensor(), Tensor()};
  }
};

// ---- RMSNorm ----------------------------------------------------------------

// x and weight of one kernel dtype, on one device, x with a unit last stride
// (its rows are copied when they are not dense); the output in x's dtype, or
// float32 x into a 16-bit output. (A 16-bit x into the other 16-bit dtype
// runs the call without dtype and casts: rounding the float32 value once to
// the target could differ from that by more than one of its ulps.)
bool rms_norm_takes(const Tensor& x, const Tensor& weight, at::ScalarType out_dtype) {
  const auto xt = x.scalar_type();
  const bool dtypes = out_dtype == xt ||
                      (xt == at::kFloat && (out_dtype == at::kBFloat16 || out_dtype == at::kHalf));
  return kernels_on() && x.is_cuda() && x.layout() == at::kStrided &&
         weight.layout() == at::kStrided && weight.device() == x.device() &&
         weight.scalar_type() == xt && kernel_dtype(xt) && dtypes && x.numel() > 0 &&
         x.stride(-1) == 1;
}

struct RmsNormFunction : torch::autograd::Function<RmsNormFunction> {
  static Tensor forward(AutogradContext* ctx, const Tensor& x, const Tensor& weight, double eps,
                        at::ScalarType out_dtype) {
    c10::cuda::CUDAGuard guard(x.device());
    const int64_t hidden = x.size(-1), rows = x.numel() / hidden;
    const auto xc = x.contiguous();
    const auto wc = weight.contiguous();
    auto out = torch::empty(x.sizes(), x.options().dtype(out_dtype));
    auto rstd = torch::empty({rows}, x.options().dtype(at::kFloat));
    check_launch(
        kernels::rms_norm_forward(xc.data_ptr(), wc.data_ptr(), to_kernel(x.scalar_type()),
                                  out.data_ptr(), to_kernel(out_dtype), rstd.data_ptr<float>(),
                                  rows, hidden, static_cast<float>(eps), current_stream(x)),
        "rms_norm");
    ctx->save_for_backward({x, weight, rstd});
    ctx->saved_data["eps"] = eps;
    ctx->saved_data["out_dtype"] = static_cast<int64_t>(out_dtype);
    return out;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grads) {
    const auto saved = ctx->get_saved_variables();
    const auto& x = saved[0];
    const auto& weight = saved[1];
    const auto& rstd = saved[2];
    const double eps = ctx->saved_data["eps"].toDouble();
    const auto out_dtype = static_cast<at::ScalarType>(ctx->saved_data["out_dtype"].toInt());
    const auto& grad = grads[0];
    if (!grad.defined()) return {Tensor(), Tensor(), Tensor(), Tensor()};
    if (torch::GradMode::is_enabled()) {
      // create_graph: the formula in differentiable ops, for double backward.
      const auto xf = x.to(at::kFloat), d = grad.to(at::kFloat);
      const auto r = torch::rsqrt(xf.pow(2).mean(-1, /*keepdim=*/true) + eps);
      const auto xh = xf * r;
      const auto g = d * weight.to(at::kFloat);
      const auto grad_x = r * (g - xh * (g * xh).mean(-1, /*keepdim=*/true));
      const auto grad_w = (d * xh).reshape({-1, x.size(-1)}).sum(0);
      return {grad_x.to(x.scalar_type()), grad_w.to(weight.scalar_type()), Tensor(), Tensor()};
    }
    const bool want_x = ctx->needs_input_grad(0), want_w = ctx->needs_input_grad(1);
    if (!want_x && !want_w) return {Tensor(), Tensor(), Tensor(), Tensor()};
    c10::cuda::CUDAGuard guard(x.device());
    const int64_t hidden = x.size(-1), rows = x.numel() / hidden;
    const auto xk = to_kernel(x.scalar_type()), ok = to_kernel(out_dtype);
    const auto d = grad.to(out_dtype).contiguous();
    const auto xc = x.contiguous();
    const auto wc = weight.contiguous();
    const int64_t blocks = kernels::rms_norm_backward_blocks(rows, hidden, xk, ok);
    Tensor grad_x, grad_w, workspace;
    if (want_x) grad_x = torch::empty(x.sizes(), x.options());
    if (want_w) {
      grad_w = torch::empty({hidden}, weight.options());
      workspace = torch::empty({blocks, hidden}, x.options().dtype(at::kFloat));
    }
    check_launch(kernels::rms_norm_backward(
                     d.data_ptr(), ok, xc.data_ptr(), wc.data_ptr(), xk, rstd.data_ptr<float>(),
                     want_x ? grad_x.data_ptr() : nullptr, want_w ? grad_w.data_ptr() : nullptr,
                     want_w ? workspace.data_ptr<float>() : nullptr, blocks, rows, hidden,
                     current_stream(x)),
                 "rms_norm backward");
    return {grad_x, grad_w, Tensor(), Tensor()};
  }
};

#endif  // REMAT_HAVE_CUDA_KERNELS

}  // namespace

namespace detail {

bool fused_kernels_on() {
  static const bool on = [] {
    const char* v = std::getenv("REMAT_FUSED_KERNELS");
    return v == nullptr || std::string(v) != "0";
  }();
  return on;
}

Tensor cross_entropy_rows(Tensor& logits, const Tensor& targets, int64_t ignore_index, bool grad) {
#ifdef REMAT_HAVE_CUDA_KERNELS
  if (!kernels_on() || !logits.is_cuda() || logits.dim() != 2 || !logits.is_contiguous() ||
      !kernel_dtype(logits.scalar_type()) || targets.dim() != 1 ||
      targets.size(0) != logits.size(0) || targets.scalar_type() != at::kLong ||
      targets.device() != logits.device()) {
    return Tensor();
  }
  c10::cuda::CUDAGuard guard(logits.device());
  const auto t = targets.contiguous();
  auto losses = torch::empty({logits.size(0)}, logits.options().dtype(at::kFloat));
  check_launch(
      kernels::cross_entropy_rows(logits.data_ptr(), to_kernel(logits.scalar_type()),
                                  t.data_ptr<int64_t>(), losses.data_ptr<float>(), logits.size(0),
                                  logits.size(1), ignore_index, grad, current_stream(logits)),
      "linear_cross_entropy");
  return losses;
#else
  (void)logits, (void)targets, (void)ignore_index, (void)grad;
  return Tensor();
#endif
}

}  // namespace detail

bool fused_kernels_available() {
#ifdef REMAT_HAVE_CUDA_KERNELS
  return kernels_on();
#else
  return false;
#endif
}

Tensor swiglu(const Tensor& gate, const Tensor& up) {
  check_swiglu(gate, up);
#ifdef REMAT_HAVE_CUDA_KERNELS
  if (swiglu_takes(gate, up)) return SwiGLUFunction::apply(gate, up);
#endif
  return swiglu_composite(gate, up);
}

Tensor rotary(const Tensor& x, const Tensor& cos, const Tensor& sin,
              std::optional<at::ScalarType> dtype) {
  check_rotary(x, cos, sin);
  const auto out_dtype = dtype.value_or(at::result_type(x, cos));
#ifdef REMAT_HAVE_CUDA_KERNELS
  if (rotary_takes(x, cos, sin, out_dtype)) return RotaryFunction::apply(x, cos, sin, out_dtype);
#endif
  auto out = rotary_composite(x, cos, sin);
  return dtype ? out.to(*dtype) : out;
}

Tensor rms_norm(const Tensor& x, const Tensor& weight, double eps,
                std::optional<at::ScalarType> dtype) {
  check_rms_norm(x, weight);
#ifdef REMAT_HAVE_CUDA_KERNELS
  if (dtype && rms_norm_takes(x, weight, *dtype)) {
    return RmsNormFunction::apply(x, weight, eps, *dtype);
  }
#endif
  // ATen's rms_norm dispatches to _fused_rms_norm (a CUDA kernel with its own
  // backward) for inputs like these; calling it directly also keeps the
  // result in x's dtype under autocast, as the plain expression does.
  Tensor out;
  if (x.is_cuda() && weight.device() == x.device() && x.scalar_type() == weight.scalar_type() &&
      kernel_dtype(x.scalar_type()) && x.layout() == at::kStrided && x.numel() > 0) {
    out = std::get<0>(at::_fused_rms_norm(x, {x.size(-1)}, weight, eps));
  } else {
    out = rms_norm_composite(x, weight, eps);
  }
  return dtype ? out.to(*dtype) : out;
}

}  // namespace remat::nn
