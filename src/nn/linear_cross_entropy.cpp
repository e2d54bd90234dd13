#include "remat/nn/linear_cross_entropy.h"

#include <ATen/autocast_mode.h>

#include <algorithm>

#include "fused_internal.h"

namespace remat::nn {
namespace {

using torch::Tensor;
using torch::autograd::AutogradContext;
using torch::autograd::tensor_list;

// About 512 MiB of float32 logits per chunk: measured on an H100 with GPT-2
// 124M at 16 x 1024 tokens (bf16), chunks of 128 MiB cost 6 ms more per step
// than these (25 chunks against 7) for 720 MiB less peak memory.
constexpr int64_t kChunkElements = int64_t{1} << 27;

// The dtype the plain path's linear would compute the logits in.
at::ScalarType logits_dtype(const Tensor& hidden, const Tensor& weight) {
  const auto device = hidden.device().type();
  const bool castable = at::isFloatingType(hidden.scalar_type()) &&
                        hidden.scalar_type() != at::kDouble && weight.scalar_type() != at::kDouble;
  if (castable && at::autocast::is_autocast_enabled(device)) {
    return at::autocast::get_autocast_dtype(device);
  }
  return at::promote_types(hidden.scalar_type(), weight.scalar_type());
}

struct Result {
  Tensor sum, grad_hidden, grad_weight, grad_bias;
};

// Adds a chunk's share to the gradients of the hidden states and the weight,
// from g = d(sum)/d(logits) of rows [start, start + len) in `dtype`.
void accumulate(Result& r, const Tensor& g, const Tensor& h, const Tensor& w, int64_t start,
                int64_t len, at::ScalarType dtype) {
  if (r.grad_hidden.defined()) {
    auto rows = r.grad_hidden.narrow(0, start, len);
    torch::mm_out(rows, g, w);
  }
  if (r.grad_weight.defined()) {
    if (dtype == at::kFloat) {
      r.grad_weight.addmm_(g.t(), h);
    } else {
      r.grad_weight.add_(torch::mm(g.t(), h));
    }
  }
}

// The summed loss over row chunks and, where asked, the unscaled gradients:
// d(sum)/d(logits) = softmax - one_hot(target) on counted rows, 0 elsewhere.
Result compute(const Tensor& hidden, const Tensor& weight, const Tensor& bias,
               const Tensor& targets, int64_t chunk_rows, int64_t ignore_index,
               std::array<bool, 3> needs_grad) {
  const auto dtype = logits_dtype(hidden, weight);
  const auto h_all = hidden.to(dtype);
  const auto w = weight.to(dtype);
  const auto b = bias.defined() ? bias.to(dtype) : bias;
  const int64_t n = hidden.size(0), vocab = weight.size(0);
  const int64_t rows = chunk_rows > 0
                           ? chunk_rows
                           : std::max<int64_t>(1, kChunkElements / std::max<int64_t>(vocab, 1));
  const auto fp32 = hidden.options().dtype(at::kFloat);
  Result r;
  r.sum = torch::zeros({}, fp32);
  if (needs_grad[0])
    r.grad_hidden = torch::empty({n, hidden.size(1)}, hidden.options().dtype(dtype));
  if (needs_grad[1]) r.grad_weight = torch::zeros(weight.sizes(), fp32);
  if (needs_grad[2] && bias.defined()) r.grad_bias = torch::zeros(bias.sizes(), fp32);
  const bool any_grad = r.grad_hidden.defined() || r.grad_weight.defined() || r.grad_bias.defined();
  for (int64_t start = 0; start < n; start += rows) {
    const int64_t len = std::min(rows, n - start);
    const auto h = h_all.narrow(0, start, len);
    const auto t = targets.narrow(0, start, len);
    if (!b.defined()) {
      // On CUDA one kernel takes the logits in their dtype: each row's loss,
      // and its gradient in place of it.
      auto logits = torch::mm(h, w.t());
      auto losses = detail::cross_entropy_rows(logits, t, ignore_index, any_grad);
      if (losses.defined()) {
        r.sum.add_(losses.sum());
        if (any_grad) accumulate(r, logits, h, w, start, len, dtype);
        continue;
      }
    }
    auto logits = (b.defined() ? torch::addmm(b, h, w.t()) : torch::mm(h, w.t())).to(at::kFloat);
    const auto counted = t != ignore_index;
    const auto safe = torch::where(counted, t, torch::zeros_like(t)).unsqueeze(1);
    const auto lse = torch::logsumexp(logits, 1);
    const auto target_logit = logits.gather(1, safe).squeeze(1);
    r.sum.add_(torch::where(counted, lse - target_logit, torch::zeros_like(lse)).sum());
    if (!any_grad) continue;
    // The softmax in place of the logits, minus 1 at each counted target.
    logits.sub_(lse.unsqueeze(1)).exp_();
    logits.scatter_add_(1, safe, counted.to(at::kFloat).neg().unsqueeze(1));
    logits.mul_(counted.unsqueeze(1));
    accumulate(r, logits.to(dtype), h, w, start, len, dtype);
    if (r.grad_bias.defined()) r.grad_bias.add_(logits.sum(0));
  }
  return r;
}

struct LinearCrossEntropyFunction : torch::autograd::Function<LinearCrossEntropyFunction> {
  // `bias` is an empty tensor when there is none: autograd records every
  // input's metadata, which an undefined tensor lacks.
  static Tensor forward(AutogradContext* ctx, const Tensor& hidden, const Tensor& weight,
                        const Tensor& bias_or_empty, const Tensor& targets, int64_t chunk_rows,
                        int64_t ignore_index) {
    const auto bias = bias_or_empty.numel() > 0 ? bias_or_empty : Tensor();
    auto r = compute(
        hidden, weight, bias, targets, chunk_rows, ignore_index,
        {hidden.requires_grad(), weight.requires_grad(), bias.defined() && bias.requires_grad()});
    ctx->save_for_backward({r.grad_hidden, r.grad_weight, r.grad_bias});
    ctx->saved_data["hidden_dtype"] = static_cast<int64_t>(hidden.scalar_type());
    ctx->saved_data["weight_dtype"] = static_cast<int64_t>(weight.scalar_type());
    ctx->saved_data["bias_dtype"] =
        static_cast<int64_t>(bias.defined() ? bias.scalar_type() : weight.scalar_type());
    return r.sum;
  }

  static tensor_list backward(AutogradContext* ctx, tensor_list grad_outputs) {
    const auto saved = ctx->get_saved_variables();
    const auto& scale = grad_outputs[0];
    auto scaled = [&](const Tensor& grad, const char* dtype_key) {
      if (!grad.defined()) return Tensor();
      const auto dtype = static_cast<at::ScalarType>(ctx->saved_data[dtype_key].toInt());
      return (grad.to(at::kFloat) * scale).to(dtype);
    };
    return {scaled(saved[0], "hidden_dtype"),
            scaled(saved[1], "weight_dtype"),
            scaled(saved[2], "bias_dtype"),
            Tensor(),
            Tensor(),
            Tensor()};
  }
};

}  // namespace

Tensor linear_cross_entropy(const Tensor& hidden, const Tensor& weight, const Tensor& targets,
                            const Tensor& bias, const LinearCrossEntropyOptions& options) {
  TORCH_CHECK(hidden.dim() == 2, "linear_cross_entropy: hidden must be [rows, features], got ",
              hidden.sizes());
  TORCH_CHECK(weight.dim() == 2 && weight.size(1) == hidden.size(1),
              "linear_cross_entropy: weight must be [vocab, ", hidden.size(1), "], got ",
              weight.sizes());
  TORCH_CHECK(targets.dim() == 1 && targets.size(0) == hidden.size(0),
              "linear_cross_entropy: targets must be [", hidden.size(0), "], got ",
              targets.sizes());
  TORCH_CHECK(!bias.defined() || (bias.dim() == 1 && bias.size(0) == weight.size(0)),
              "linear_cross_entropy: bias must be [", weight.size(0), "], got ", bias.sizes());
  TORCH_CHECK(options.chunk_rows() >= 0,
              "linear_cross_entropy: chunk_rows must be >= 0 (0: automatic), got ",
              options.chunk_rows());
  const auto t = targets.to(hidden.device(), at::kLong);
  const bool grad =
      torch::GradMode::is_enabled() && (hidden.requires_grad() || weight.requires_grad() ||
                                        (bias.defined() && bias.requires_grad()));
  if (!grad) {
    return compute(hidden, weight, bias, t, options.chunk_rows(), options.ignore_index(),
                   {false, false, false})
        .sum;
  }
  const auto bias_or_empty = bias.defined() ? bias : torch::empty({0}, weight.options());
  return LinearCrossEntropyFunction::apply(hidden, weight, bias_or_empty, t, options.chunk_rows(),
                                           options.ignore_index());
}

}  // namespace remat::nn
