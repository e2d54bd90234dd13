// remat::nn's fused kernels on CUDA: SwiGLU, rotary and RMSNorm, forward and
// backward, in float32, float16 and bfloat16, against the plain expressions
// computed in float64 from the same inputs; sizes with a tail that is not a
// multiple of the vector width, misaligned (offset) and strided tensors.
// Then a small Llama on CUDA against the same model on CPU. Skipped without
// CUDA; the kernel tests also skip in a build without the kernels.

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <iostream>
#include <string>
#include <vector>

#include "remat/models/causal_lm.h"
#include "remat/nn/fused.h"
#include "support.h"

namespace {

using torch::Tensor;

const auto kCuda = torch::TensorOptions().device(torch::kCUDA);

// The plain expressions, in whatever dtype they are given.
Tensor rotate_half(const Tensor& x) {
  auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}
Tensor plain_rotary(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  return x * cos.unsqueeze(2) + rotate_half(x) * sin.unsqueeze(2);
}
Tensor plain_rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  auto h = x.to(torch::kFloat);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}
Tensor f64(const Tensor& t) { return t.detach().to(torch::kDouble); }

using remat::test::reduction_gamma;

// expect_close's floor is 1% of the largest reference: an error bounded
// relative to terms as large as the largest reference (a sum whose terms
// cancel) is at most 100 times the floor's share of it.
constexpr double kFloorFactor = 100;

// The rtol for expect_close of a kernel result against the float64
// expression of the same inputs (exact in float64, so the reference is not
// rounded): `roundings` roundings of the result to a 16-bit `dtype`
// (gamma_r, relative to the element itself), plus the float32 arithmetic
// before them: `own` roundings relative to the element (products, quotients,
// positive sums) and `cancelling` relative to terms of the largest
// reference's size (signed sums). CUDA's expf and rsqrtf are within 2 ulp
// (4 u), counted as 4 roundings; '/' is IEEE (no fast math). For a float32
// result the last rounding is one of the float32 ones.
double tolerance(torch::Dtype dtype, int64_t own, int64_t cancelling = 0, int64_t roundings = 1) {
  const double float32 = reduction_gamma(own) + kFloorFactor * reduction_gamma(cancelling);
  return dtype == torch::kFloat ? float32 : reduction_gamma(roundings, dtype) + float32;
}

// SwiGLU's kernels: silu(g) = g / (1 + expf(-g)) is 4 + 1 + 1 roundings, then
// one product. d_gate = d u s (1 + g (1 - s)): s 6, three products, and s's
// error becomes 6 |g| u in 1 - s for large g (|g| <= 15: 5 sigma of 3 randn);
// the sum 1 + g (1 - s) cancels near g = -1.28 (3 roundings on it).
constexpr int64_t kSwigluForward = 7;
constexpr int64_t kSwigluGateOwn = 6 + 3 + 6 * 15;
constexpr int64_t kSwigluGateCancelling = 3;
// Rotary: x1 cos - x2 sin, two products and a signed sum.
constexpr int64_t kRotary = 3;

// Every element within rtol of the float64 reference, relative to its own
// magnitude plus 1% of the largest (results that cancel to near zero carry
// the float32 error of their terms).
void expect_close(const Tensor& got, const Tensor& want, double rtol, const std::string& what) {
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  const auto g = f64(got).cpu(), w = f64(want).cpu();
  ASSERT_TRUE(torch::isfinite(g).all().item<bool>()) << what << ": non-finite values";
  const double scale = w.abs().max().item<double>();
  const auto err = (g - w).abs();
  const auto bound = rtol * (w.abs() + 0.01 * scale) + 1e-30;
  const auto bad = err > bound;
  const int64_t n_bad = bad.sum().item<int64_t>();
  EXPECT_EQ(n_bad, 0) << what << ": " << n_bad << " of " << g.numel()
                      << " elements off; max |error| " << err.max().item<double>()
                      << ", max |reference| " << scale << ", rtol " << rtol;
}

// A tensor of `sizes` whose data starts one element past an aligned address:
// contiguous but never 16-byte aligned, so the kernels take their scalar path.
Tensor misaligned_randn(at::IntArrayRef sizes, torch::Dtype dtype) {
  int64_t n = 1;
  for (auto s : sizes) n *= s;
  return torch::randn({n + 1}, kCuda.dtype(dtype)).narrow(0, 1, n).view(sizes);
}

std::string name_of(const Tensor& t) {
  return t.grad_fn() ? t.grad_fn()->name() : std::string("(no grad_fn)");
}

class FusedCudaTest : public ::testing::TestWithParam<torch::Dtype> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    if (!remat::nn::fused_kernels_available()) {
      GTEST_SKIP() << "remat was built without the fused CUDA kernels";
    }
    torch::manual_seed(0);
  }
  torch::Dtype dtype() const { return GetParam(); }
};

// ---- SwiGLU ----------------------------------------------------------------

void check_swiglu(const Tensor& gate_in, const Tensor& up_in, const std::string& what) {
  SCOPED_TRACE(what);
  const auto dtype = gate_in.scalar_type();
  auto gate = gate_in.detach().requires_grad_();
  auto up = up_in.detach().requires_grad_();
  auto out = remat::nn::swiglu(gate, up);
  EXPECT_NE(name_of(out).find("SwiGLU"), std::string::npos) << name_of(out);
  ASSERT_EQ(out.scalar_type(), dtype);
  ASSERT_TRUE(out.is_contiguous());

  auto g = f64(gate).requires_grad_(), u = f64(up).requires_grad_();
  auto want = torch::silu(g) * u;
  // float32 silu and product, one rounding to the dtype.
  expect_close(out, want, tolerance(dtype, kSwigluForward), "forward");

  auto grad = torch::randn(out.sizes(), kCuda.dtype(dtype));
  auto got = torch::autograd::grad({out}, {gate, up}, {grad});
  auto ref = torch::autograd::grad({want}, {g, u}, {f64(grad)});
  ASSERT_EQ(got[0].scalar_type(), dtype);
  ASSERT_EQ(got[1].scalar_type(), dtype);
  expect_close(got[0], ref[0], tolerance(dtype, kSwigluGateOwn, kSwigluGateCancelling), "d_gate");
  // d_up = d silu(g): silu's 6 and one product.
  expect_close(got[1], ref[1], tolerance(dtype, kSwigluForward), "d_up");
}

TEST_P(FusedCudaTest, SwigluForwardAndBackward) {
  // 8-wide vectors: 4 * 1000 elements fill them; 3 * 5 * 37 = 555 and
  // 2 * 2051 leave tails.
  for (auto sizes : std::vector<std::vector<int64_t>>{{4, 1000}, {3, 5, 37}, {2, 2051}, {1}}) {
    check_swiglu(torch::randn(sizes, kCuda.dtype(dtype())) * 3,
                 torch::randn(sizes, kCuda.dtype(dtype())),
                 "aligned " + c10::str(at::IntArrayRef(sizes)));
  }
  check_swiglu(misaligned_randn({3, 1001}, dtype()) * 3, misaligned_randn({3, 1001}, dtype()),
               "misaligned");
  check_swiglu(torch::randn({4, 1000}, kCuda.dtype(dtype())), misaligned_randn({4, 1000}, dtype()),
               "one misaligned input");
}

TEST_P(FusedCudaTest, SwigluFallsBackOnMixedDtypesAndStrides) {
  auto gate = torch::randn({8, 16}, kCuda.dtype(dtype()));
  auto up = torch::randn({8, 16}, kCuda.dtype(torch::kDouble)).requires_grad_();
  auto out = remat::nn::swiglu(gate, up);
  EXPECT_EQ(out.scalar_type(), at::result_type(gate, up));
  EXPECT_TRUE(torch::equal(out, torch::silu(gate) * up));
  // A transposed (non-contiguous) gate: the plain expression.
  auto g2 = torch::randn({16, 8}, kCuda.dtype(dtype())).t();
  auto u2 = torch::randn({8, 16}, kCuda.dtype(dtype()));
  EXPECT_TRUE(torch::equal(remat::nn::swiglu(g2, u2), torch::silu(g2) * u2));
}

TEST_P(FusedCudaTest, SwigluDoubleBackward) {
  auto gate = torch::randn({5, 24}, kCuda.dtype(dtype())).requires_grad_();
  auto up = torch::randn({5, 24}, kCuda.dtype(dtype())).requires_grad_();
  auto g = f64(gate).requires_grad_(), u = f64(up).requires_grad_();
  auto grad = torch::randn({5, 24}, kCuda.dtype(dtype()));
  auto first = torch::autograd::grad({remat::nn::swiglu(gate, up)}, {gate}, {grad}, true, true);
  auto first_ref = torch::autograd::grad({torch::silu(g) * u}, {g}, {f64(grad)}, true, true);
  auto second = torch::autograd::grad({first[0].to(torch::kFloat).sum()}, {gate, up});
  auto second_ref = torch::autograd::grad({first_ref[0].sum()}, {g, u});
  // The second gradients are float32 autograd of the float32 formula (its
  // cast to the dtype passes the gradient through exactly): twice the first
  // gradient's float32 chain, then one rounding where the leaves' casts meet
  // the dtype (the first gradient's own rounding is not on this path).
  const double tol = tolerance(dtype(), 2 * kSwigluGateOwn, 2 * kSwigluGateCancelling);
  expect_close(second[0], second_ref[0], tol, "d2/dgate2");
  expect_close(second[1], second_ref[1], tol, "d2/dgate dup");
}

// ---- Rotary ----------------------------------------------------------------

// x [b, t, h, d] (any strides), cos and sin [b or 1, t, d] of cs_dtype.
void check_rotary(const Tensor& x_in, const Tensor& cos, const Tensor& sin,
                  const std::string& what) {
  SCOPED_TRACE(what);
  const auto x_dtype = x_in.scalar_type();
  const auto out_dtype = at::result_type(x_in, cos);
  auto x = x_in.detach().requires_grad_();
  auto out = remat::nn::rotary(x, cos, sin);
  EXPECT_NE(name_of(out).find("Rotary"), std::string::npos) << name_of(out);
  ASSERT_EQ(out.scalar_type(), out_dtype);
  ASSERT_EQ(out.sizes(), x.sizes());

  auto xd = f64(x).requires_grad_();
  auto want = plain_rotary(xd, f64(cos), f64(sin));
  // Two products and a signed sum in float32, one rounding to out_dtype.
  expect_close(out, want, tolerance(out_dtype, 0, kRotary), "forward");
  if (out_dtype == torch::kFloat) {
    // float32 products and sums rounded as ATen rounds them: bit for bit.
    EXPECT_TRUE(torch::equal(out, plain_rotary(x.detach(), cos, sin)))
        << "forward differs from the plain float32 expression";
  }

  // The gradient arrives transposed, as from attention's [b, h, t, d] view.
  auto grad = torch::randn({x.size(0), x.size(2), x.size(1), x.size(3)}, kCuda.dtype(out_dtype))
                  .transpose(1, 2);
  auto got = torch::autograd::grad({out}, {x}, {grad})[0];
  auto ref = torch::autograd::grad({want}, {xd}, {f64(grad)})[0];
  ASSERT_EQ(got.scalar_type(), x_dtype);
  // The same arithmetic on the gradient, one rounding to x's dtype.
  expect_close(got, ref, tolerance(x_dtype, 0, kRotary), "backward");
  if (x_dtype == torch::kFloat && out_dtype == torch::kFloat) {
    auto x2 = x.detach().requires_grad_();
    auto plain = torch::autograd::grad({plain_rotary(x2, cos, sin)}, {x2}, {grad})[0];
    EXPECT_TRUE(torch::equal(got, plain)) << "backward differs from the plain float32 autograd";
  }
}

TEST_P(FusedCudaTest, RotaryForwardAndBackward) {
  // cos and sin of x's dtype, and float32 ones (autocast: bf16 q, fp32 cos).
  for (auto cs_dtype : {dtype(), torch::kFloat}) {
    const auto cs = kCuda.dtype(cs_dtype);
    const std::string tag = std::string(" cos ") + c10::toString(cs_dtype);
    // head_dim 64 and 128: vectorized; 6 (half 3) and 10 (half 5): scalar.
    for (auto s : std::vector<std::vector<int64_t>>{
             {2, 5, 3, 64}, {1, 17, 4, 128}, {1, 7, 2, 6}, {3, 2, 5, 10}}) {
      const int64_t b = s[0], t = s[1], h = s[2], d = s[3];
      check_rotary(torch::randn({b, t, h, d}, kCuda.dtype(dtype())), torch::randn({b, t, d}, cs),
                   torch::randn({b, t, d}, cs), "sizes " + c10::str(at::IntArrayRef(s)) + tag);
    }
    // A batch of one cos and sin broadcast over three.
    check_rotary(torch::randn({3, 9, 2, 64}, kCuda.dtype(dtype())), torch::randn({1, 9, 64}, cs),
                 torch::randn({1, 9, 64}, cs), "broadcast batch" + tag);
    // x misaligned, then cos misaligned.
    check_rotary(misaligned_randn({2, 5, 3, 64}, dtype()), torch::randn({2, 5, 64}, cs),
                 torch::randn({2, 5, 64}, cs), "misaligned x" + tag);
    check_rotary(torch::randn({2, 5, 3, 64}, kCuda.dtype(dtype())),
                 misaligned_randn({2, 5, 64}, cs_dtype), misaligned_randn({2, 5, 64}, cs_dtype),
                 "misaligned cos, sin" + tag);
    // x a transposed [b, h, t, d] tensor; cos, sin with a padded token stride.
    check_rotary(torch::randn({2, 3, 5, 64}, kCuda.dtype(dtype())).transpose(1, 2),
                 torch::randn({2, 5, 72}, cs).narrow(2, 0, 64),
                 torch::randn({2, 5, 72}, cs).narrow(2, 0, 64), "strided" + tag);
  }
}

// rotary(x, cos, sin, x's dtype) with float32 cos and sin (autocast): the
// float32 result rounded once, equal to the wide result cast to x's dtype;
// the backward from a gradient of x's dtype equals the wide path's backward
// from that gradient upcast.
TEST_P(FusedCudaTest, RotaryInTheInputsDtype) {
  if (dtype() == torch::kFloat) GTEST_SKIP() << "the same as the float32 path";
  const auto cs = kCuda.dtype(torch::kFloat);
  for (auto s : std::vector<std::vector<int64_t>>{{2, 5, 3, 64}, {1, 7, 2, 6}}) {
    SCOPED_TRACE(c10::str(at::IntArrayRef(s)));
    auto x = torch::randn({s[0], s[1], s[2], s[3]}, kCuda.dtype(dtype())).requires_grad_();
    auto cos = torch::randn({s[0], s[1], s[3]}, cs), sin = torch::randn({s[0], s[1], s[3]}, cs);
    auto out = remat::nn::rotary(x, cos, sin, dtype());
    EXPECT_NE(name_of(out).find("Rotary"), std::string::npos) << name_of(out);
    ASSERT_EQ(out.scalar_type(), dtype());
    auto x2 = x.detach().requires_grad_();
    auto wide = remat::nn::rotary(x2, cos, sin);
    ASSERT_EQ(wide.scalar_type(), torch::kFloat);
    EXPECT_TRUE(torch::equal(out, wide.to(dtype())));
    auto grad = torch::randn(out.sizes(), kCuda.dtype(dtype()));
    auto got = torch::autograd::grad({out}, {x}, {grad})[0];
    auto want = torch::autograd::grad({wide}, {x2}, {grad.to(torch::kFloat)})[0];
    ASSERT_EQ(got.scalar_type(), dtype());
    EXPECT_TRUE(torch::equal(got, want));
  }
}

TEST_P(FusedCudaTest, RotaryFallsBackWhenCosNeedsAGradient) {
  auto x = torch::randn({2, 5, 3, 16}, kCuda.dtype(dtype())).requires_grad_();
  auto cos = torch::randn({2, 5, 16}, kCuda.dtype(dtype())).requires_grad_();
  auto sin = torch::randn({2, 5, 16}, kCuda.dtype(dtype()));
  auto out = remat::nn::rotary(x, cos, sin);
  EXPECT_EQ(name_of(out).find("Rotary"), std::string::npos) << name_of(out);
  EXPECT_TRUE(torch::equal(out, plain_rotary(x, cos, sin)));
  auto grads = torch::autograd::grad({out.sum()}, {x, cos});
  EXPECT_TRUE(grads[1].defined());
}

TEST_P(FusedCudaTest, RotaryDoubleBackward) {
  auto x = torch::randn({2, 5, 3, 16}, kCuda.dtype(dtype())).requires_grad_();
  auto cos = torch::randn({2, 5, 16}, kCuda);
  auto sin = torch::randn({2, 5, 16}, kCuda);
  auto grad = torch::randn({2, 5, 3, 16}, kCuda).requires_grad_();
  // The gradient of x is linear in the output gradient: its own gradient
  // with respect to that output gradient is rotary's forward applied to ones.
  auto dx = torch::autograd::grad({remat::nn::rotary(x, cos, sin)}, {x}, {grad}, true, true)[0];
  auto ddx = torch::autograd::grad({dx.to(torch::kFloat).sum()}, {grad})[0];
  // d sum(R^T grad) / d grad = R(ones) = ones * cos + rotate_half(ones) * sin.
  auto ones = torch::ones({2, 5, 3, 16}, kCuda.dtype(torch::kDouble));
  // ddx is float32 (grad's dtype): the casts pass ones through exactly, the
  // products with ones are exact, and the two paths' sum is one rounding.
  expect_close(ddx, plain_rotary(ones, f64(cos), f64(sin)), tolerance(torch::kFloat, 0, 1),
               "d(dx)/dgrad");
}

// ---- RMSNorm ---------------------------------------------------------------

TEST_P(FusedCudaTest, RmsNormUsesAtenFusedKernel) {
  for (int64_t dim : {2048, 1000, 37}) {
    SCOPED_TRACE(dim);
    auto x = (torch::randn({3, 7, dim}, kCuda.dtype(dtype())) * 2).requires_grad_();
    auto weight = (1 + 0.1 * torch::randn({dim}, kCuda.dtype(dtype()))).requires_grad_();
    auto out = remat::nn::rms_norm(x, weight, 1e-6);
    EXPECT_NE(name_of(out).find("FusedRmsNorm"), std::string::npos) << name_of(out);
    ASSERT_EQ(out.scalar_type(), dtype());

    auto xd = f64(x).requires_grad_(), wd = f64(weight).requires_grad_();
    auto want = wd * xd * torch::rsqrt(xd.pow(2).mean(-1, true) + 1e-6);
    // ATen's kernel, order of summation unknown: rstd from a positive sum
    // of dim squares (gamma_dim, halved by the square root), the mean, eps
    // and rsqrt (1 + 1 + 4), then x * rstd * weight (2). In a 16-bit dtype
    // the composite rounds twice (x * rstd to the dtype, then the product
    // with weight); ATen's kernel rounds at most as often.
    const int64_t rstd = dim / 2 + 6;
    expect_close(out, want, tolerance(dtype(), rstd + 2, 0, 2), "forward");
    auto grad = torch::randn(out.sizes(), kCuda.dtype(dtype()));
    auto got = torch::autograd::grad({out}, {x, weight}, {grad});
    auto ref = torch::autograd::grad({want}, {xd, wd}, {f64(grad)});
    // dx = rstd (g - xh mean(g xh)): a signed sum over the row (dim, its
    // products 2, the mean 1), then xh c and the difference (2); dweight a
    // signed sum over 21 rows of grad xh. Two roundings in a 16-bit dtype
    // (grad * weight, then the result), as the composite's backward.
    expect_close(got[0], ref[0], tolerance(dtype(), rstd + 2, dim + 5, 2), "dx");
    expect_close(got[1], ref[1], tolerance(dtype(), rstd + 2, 21, 2), "dweight");
  }
}

TEST_P(FusedCudaTest, RmsNormOfMixedDtypesIsThePlainExpression) {
  auto x = torch::randn({4, 64}, kCuda.dtype(dtype()));
  auto weight = torch::randn({64}, kCuda.dtype(torch::kDouble));
  EXPECT_TRUE(torch::equal(remat::nn::rms_norm(x, weight, 1e-5), plain_rms_norm(x, weight, 1e-5)));
}

// ---- RMSNorm into an output dtype (remat's kernel) -------------------------

// The longest chain of additions in remat's RMSNorm row sums (block_sum, a
// fixed order): each thread's strided fma over at most hidden / 256 + 8
// elements, 5 shuffle levels, then the block's 8 warps in order.
int64_t row_sum_depth(int64_t hidden) { return hidden / 256 + 8 + 5 + 8; }

// remat's RMSNorm kernel against float64, one rounding of each result to its
// dtype (rms_norm_*_kernel in src/nn/fused_kernels.cu). rstd: the positive
// sum of squares (its depth, halved by the square root), / hidden, + eps,
// rsqrtf (1 + 1 + 4).
int64_t rstd_roundings(int64_t hidden) { return row_sum_depth(hidden) / 2 + 6; }
// The output w * (x * rstd): two products.
double rms_forward_tolerance(torch::Dtype out, int64_t hidden) {
  return tolerance(out, rstd_roundings(hidden) + 2);
}
// grad_x = r (g - xh c), c = sum(dy w * x r) / hidden: rstd and the
// products (3) relative to the element; the signed dot (its depth, 2
// products before each fma, / hidden) and xh c, g - xh c (2) relative to
// the reference's scale.
double rms_grad_x_tolerance(torch::Dtype x, int64_t hidden) {
  return tolerance(x, rstd_roundings(hidden) + 3, row_sum_depth(hidden) + 5);
}
// grad_weight: a signed sum of dy * x r over the rows (each block's rows in
// order, then the workspace's columns in 16 strided partial sums and those in
// order: rows / blocks + blocks / 16 + 16, at most rows + 17 deep whatever
// the block count), each term rstd and 2 products.
double rms_grad_weight_tolerance(torch::Dtype x, int64_t hidden, int64_t rows) {
  return tolerance(x, rstd_roundings(hidden) + 2, rows + 17);
}

// The spacing of `dtype` at each |t| (float64): 2^(exponent - mantissa bits),
// the subnormal spacing below the smallest normal.
Tensor ulp_of(const Tensor& t, torch::Dtype dtype) {
  const int mantissa = dtype == torch::kBFloat16 ? 7 : dtype == torch::kHalf ? 10 : 23;
  const int min_exponent = dtype == torch::kHalf ? -14 : -126;
  const auto a = f64(t).abs().clamp_min(std::ldexp(1.0, min_exponent));
  return torch::exp2(torch::floor(torch::log2(a)) - mantissa);
}

Tensor plain_rms_norm_f64(const Tensor& xd, const Tensor& wd, double eps) {
  return wd * xd * torch::rsqrt(xd.pow(2).mean(-1, /*keepdim=*/true) + eps);
}

bool is_remat_rms_norm(const Tensor& t) {
  return name_of(t).find("RmsNormFunction") != std::string::npos;
}

// rms_norm(x, weight, eps, out_dtype) through the kernel: the forward against
// the float64 plain expression and within `ulps` of the call without dtype
// cast to out_dtype; grad_x and grad_weight against float64 autograd.
void check_rms_norm_to(const Tensor& x_in, const Tensor& weight_in, torch::Dtype out_dtype,
                       const std::string& what) {
  SCOPED_TRACE(what);
  const double eps = 1e-6;
  const auto x_dtype = x_in.scalar_type();
  auto x = x_in.detach().requires_grad_();
  auto weight = weight_in.detach().requires_grad_();
  auto out = remat::nn::rms_norm(x, weight, eps, out_dtype);
  EXPECT_TRUE(is_remat_rms_norm(out)) << name_of(out);
  ASSERT_EQ(out.scalar_type(), out_dtype);
  ASSERT_EQ(out.sizes(), x.sizes());

  auto xd = f64(x).requires_grad_(), wd = f64(weight).requires_grad_();
  auto want = plain_rms_norm_f64(xd, wd, eps);
  const int64_t hidden = x.size(-1), rows = x.numel() / hidden;
  expect_close(out, want, rms_forward_tolerance(out_dtype, hidden), "forward");
  {
    // The float32 results (ATen's and the kernel's) differ in their last
    // bits: one rounding apart in a 16-bit dtype, a few ulps in float32.
    torch::NoGradGuard no_grad;
    const auto cast = remat::nn::rms_norm(x.detach(), weight.detach(), eps).to(out_dtype);
    const auto a = f64(out), b = f64(cast);
    const double ulps = out_dtype == torch::kFloat ? 16 : 1;
    const auto bound = ulps * ulp_of(torch::maximum(a.abs(), b.abs()), out_dtype);
    const auto bad = (a - b).abs() > bound;
    EXPECT_EQ(bad.sum().item<int64_t>(), 0)
        << "more than " << ulps << " ulp from rms_norm(...).to(dtype); max |diff| "
        << (a - b).abs().max().item<double>();
  }

  auto grad = torch::randn(out.sizes(), kCuda.dtype(out_dtype));
  auto got = torch::autograd::grad({out}, {x, weight}, {grad});
  auto ref = torch::autograd::grad({want}, {xd, wd}, {f64(grad)});
  ASSERT_EQ(got[0].scalar_type(), x_dtype);
  ASSERT_EQ(got[1].scalar_type(), x_dtype);
  ASSERT_EQ(got[0].sizes(), x.sizes());
  expect_close(got[0], ref[0], rms_grad_x_tolerance(x_dtype, hidden), "grad_x");
  expect_close(got[1], ref[1], rms_grad_weight_tolerance(x_dtype, hidden, rows), "grad_weight");
}

struct RmsNormCase {
  torch::Dtype x, out;
};

class RmsNormToDtypeCudaTest : public ::testing::TestWithParam<RmsNormCase> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    if (!remat::nn::fused_kernels_available()) {
      GTEST_SKIP() << "remat was built without the fused CUDA kernels";
    }
    torch::manual_seed(0);
  }
  Tensor x(at::IntArrayRef sizes) const {
    return torch::randn(sizes, kCuda.dtype(GetParam().x)) * 2;
  }
  Tensor weight(int64_t hidden) const {
    return 1 + 0.1 * torch::randn({hidden}, kCuda.dtype(GetParam().x));
  }
};

TEST_P(RmsNormToDtypeCudaTest, ForwardAndBackward) {
  const auto out = GetParam().out;
  // Vector widths 4 (float32 to float32) and 8 (any 16-bit tensor): 2048 and
  // 24 are multiples of both; 37 and 2050 of neither (the scalar path).
  for (int64_t hidden : {2048, 24, 37, 2050}) {
    check_rms_norm_to(x({3, 7, hidden}), weight(hidden), out, "hidden " + std::to_string(hidden));
  }
  check_rms_norm_to(x({1, 2048}), weight(2048), out, "one row");
  // Misaligned (scalar path) x, then weight; scaled in place, keeping the
  // odd offset.
  check_rms_norm_to(misaligned_randn({3, 7, 2048}, GetParam().x).mul_(2), weight(2048), out,
                    "misaligned x");
  check_rms_norm_to(x({3, 7, 2048}), misaligned_randn({2048}, GetParam().x).mul_(0.1).add_(1), out,
                    "misaligned weight");
  // Rows that are not dense (a unit last stride, a padded row stride).
  check_rms_norm_to(x({4, 5, 2100}).narrow(2, 0, 2048), weight(2048), out, "padded rows");
  // A row too wide for the backward's shared-memory sums (10240 floats): the
  // workspace holds them.
  check_rms_norm_to(x({9, 13000}), weight(13000), out, "hidden 13000");
}

TEST_P(RmsNormToDtypeCudaTest, ManyRows) {
  // A Llama 0.85B step's rows: 4 x 2048 tokens of hidden 2048.
  check_rms_norm_to(x({4, 2048, 2048}), weight(2048), GetParam().out, "8192 x 2048");
}

// The gradients bitwise the same from run to run (no atomics), and each one
// the same when it is the only one asked for.
TEST_P(RmsNormToDtypeCudaTest, BackwardIsDeterministic) {
  const auto out_dtype = GetParam().out;
  const auto x0 = x({64, 512}), w0 = weight(512);
  const auto grad = torch::randn({64, 512}, kCuda.dtype(out_dtype));
  auto run = [&](bool want_x, bool want_w) {
    auto xx = x0.detach().requires_grad_(want_x);
    auto ww = w0.detach().requires_grad_(want_w);
    auto out = remat::nn::rms_norm(xx, ww, 1e-6, out_dtype);
    EXPECT_TRUE(is_remat_rms_norm(out)) << name_of(out);
    std::vector<Tensor> inputs;
    if (want_x) inputs.push_back(xx);
    if (want_w) inputs.push_back(ww);
    return torch::autograd::grad({out}, inputs, {grad});
  };
  const auto first = run(true, true), second = run(true, true);
  EXPECT_TRUE(torch::equal(first[0], second[0]));
  EXPECT_TRUE(torch::equal(first[1], second[1]));
  EXPECT_TRUE(torch::equal(run(true, false)[0], first[0]));
  EXPECT_TRUE(torch::equal(run(false, true)[0], first[1]));
}

// create_graph: the first gradients from the formula in differentiable ops,
// and their gradients, against float64.
TEST_P(RmsNormToDtypeCudaTest, DoubleBackward) {
  const auto out_dtype = GetParam().out, x_dtype = GetParam().x;
  const double eps = 1e-6;
  auto xx = x({5, 24}).requires_grad_();
  auto ww = weight(24).requires_grad_();
  auto xd = f64(xx).requires_grad_(), wd = f64(ww).requires_grad_();
  auto grad = torch::randn({5, 24}, kCuda.dtype(out_dtype));
  auto out = remat::nn::rms_norm(xx, ww, eps, out_dtype);
  EXPECT_TRUE(is_remat_rms_norm(out)) << name_of(out);
  auto first = torch::autograd::grad({out}, {xx, ww}, {grad}, true, true);
  auto first_ref =
      torch::autograd::grad({plain_rms_norm_f64(xd, wd, eps)}, {xd, wd}, {f64(grad)}, true, true);
  // The formula in float32 ATen ops (order unknown) over 5 rows of 24, one
  // rounding to x's dtype: rstd 24 / 2 + 6, the products 3; the signed sums
  // over the row (24 + 5, as grad_x above) and over the 5 rows.
  const int64_t own = 24 / 2 + 6 + 3, cancelling = 24 + 5 + 5;
  expect_close(first[0], first_ref[0], tolerance(x_dtype, own, cancelling), "grad_x");
  expect_close(first[1], first_ref[1], tolerance(x_dtype, own, cancelling), "grad_weight");
  // A scalar of both first gradients, differentiated again. The factors are
  // values of x's dtype: the first gradients' casts round what flows back
  // through them to that dtype.
  const auto cx = torch::randn({5, 24}, kCuda.dtype(x_dtype)).to(torch::kFloat);
  const auto cw = torch::randn({24}, kCuda.dtype(x_dtype)).to(torch::kFloat);
  auto second = torch::autograd::grad(
      {(first[0].to(torch::kFloat) * cx).sum() + (first[1].to(torch::kFloat) * cw).sum()},
      {xx, ww});
  auto second_ref = torch::autograd::grad(
      {(first_ref[0] * f64(cx)).sum() + (first_ref[1] * f64(cw)).sum()}, {xd, wd});
  // Float32 autograd through that formula: twice its chains; the gradient
  // reaches x and weight through their casts to float32, one rounding to x's
  // dtype (cx and cw are exact, the first gradients' rounding is off this
  // path).
  const double tol = tolerance(x_dtype, 2 * own, 2 * cancelling);
  expect_close(second[0], second_ref[0], tol, "d(grads)/dx");
  expect_close(second[1], second_ref[1], tol, "d(grads)/dweight");
}

INSTANTIATE_TEST_SUITE_P(Dtypes, RmsNormToDtypeCudaTest,
                         ::testing::Values(RmsNormCase{torch::kFloat, torch::kBFloat16},
                                           RmsNormCase{torch::kFloat, torch::kHalf},
                                           RmsNormCase{torch::kBFloat16, torch::kBFloat16},
                                           RmsNormCase{torch::kHalf, torch::kHalf},
                                           RmsNormCase{torch::kFloat, torch::kFloat}),
                         [](const auto& info) {
                           return std::string(c10::toString(info.param.x)) + "_to_" +
                                  c10::toString(info.param.out);
                         });

// What the kernel does not take runs the call without dtype, then the cast:
// a 16-bit x into the other 16-bit dtype or into float32, a weight of another
// dtype, an x whose last dimension is strided.
TEST(RmsNormToDtypeCudaFallback, IsTheCastResult) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  torch::manual_seed(0);
  struct Case {
    Tensor x, weight;
    torch::Dtype out;
    std::string what;
  };
  std::vector<Case> cases{
      {torch::randn({4, 64}, kCuda.dtype(torch::kBFloat16)),
       torch::randn({64}, kCuda.dtype(torch::kBFloat16)), torch::kHalf, "bf16 into fp16"},
      {torch::randn({4, 64}, kCuda.dtype(torch::kHalf)),
       torch::randn({64}, kCuda.dtype(torch::kHalf)), torch::kFloat, "fp16 into fp32"},
      {torch::randn({4, 64}, kCuda), torch::randn({64}, kCuda.dtype(torch::kBFloat16)),
       torch::kBFloat16, "fp32 x, bf16 weight"},
      {torch::randn({64, 4}, kCuda).t(), torch::randn({64}, kCuda), torch::kBFloat16,
       "transposed x"},
  };
  for (auto& c : cases) {
    SCOPED_TRACE(c.what);
    auto x = c.x.detach().requires_grad_();
    auto out = remat::nn::rms_norm(x, c.weight, 1e-5, c.out);
    EXPECT_FALSE(is_remat_rms_norm(out)) << name_of(out);
    ASSERT_EQ(out.scalar_type(), c.out);
    EXPECT_TRUE(torch::equal(out, remat::nn::rms_norm(x, c.weight, 1e-5).to(c.out)));
  }
}

INSTANTIATE_TEST_SUITE_P(Dtypes, FusedCudaTest,
                         ::testing::Values(torch::kFloat, torch::kBFloat16, torch::kHalf),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

// ---- A small Llama: CUDA (fused where built) against CPU -------------------

double relative_error(const Tensor& got, const Tensor& want) {
  auto diff = (f64(got).cpu() - f64(want).cpu()).abs().max().item<double>();
  return diff / std::max(f64(want).abs().max().item<double>(), 1e-12);
}

class FusedLlamaCudaTest : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    torch::manual_seed(0);
    // Grouped heads, head_dim 32, SwiGLU, untied head; float32 on CPU.
    nlohmann::json j{{"model_type", "llama"},
                     {"hidden_size", 128},
                     {"num_attention_heads", 4},
                     {"num_key_value_heads", 2},
                     {"intermediate_size", 344},
                     {"num_hidden_layers", 2},
                     {"vocab_size", 256},
                     {"max_position_embeddings", 128},
                     {"tie_word_embeddings", false},
                     {"rms_norm_eps", 1e-6}};
    config = remat::models::ModelConfig::from_json(j);
    cpu = remat::models::AutoModelForCausalLM::from_config(config);
    {
      // Weights at a scale that makes every block matter.
      torch::NoGradGuard no_grad;
      for (auto& p : cpu->parameters()) {
        if (p.dim() == 1) {
          p.copy_(1 + 0.1 * torch::randn_like(p));
        } else {
          p.normal_(0.0, 0.05);
        }
      }
    }
    input_ids = torch::randint(0, 256, {2, 48}, torch::kLong);
  }

  // A copy of the CPU model on CUDA.
  std::shared_ptr<remat::models::CausalLMImpl> cuda_copy() {
    remat::models::FromPretrainedOptions options;
    options.device = torch::kCUDA;
    auto model = remat::models::AutoModelForCausalLM::from_config(config, options);
    torch::NoGradGuard no_grad;
    auto src = cpu->named_parameters();
    for (auto& item : model->named_parameters()) item.value().copy_(src[item.key()]);
    return model;
  }

  // The forward's chain of roundings (support.h's transformer_chain) for this
  // config and input_ids: 2 layers, hidden 128, intermediate 344, head_dim
  // 32, 48 tokens a sequence, vocab 256, 96 tokens: 3472.
  int64_t forward_chain() const {
    return remat::test::transformer_chain(2, 128, 344, 32, input_ids.size(1), 256,
                                          input_ids.numel());
  }
  // The matmuls on the path from the inputs to the loss: per layer q (or k,
  // v), the scores, the values, the output, gate (or up) and down; then the
  // head.
  static constexpr int64_t kPathMatmuls = 6 * 2 + 1;

  remat::models::ModelConfig config;
  std::shared_ptr<remat::models::CausalLMImpl> cpu;
  Tensor input_ids;
};

// CUDA against CPU, both float32: the same computation in other kernels'
// orders, as the transformers parity tests on the CPU: logits and loss
// 2 gamma_chain relative to their largest (4.1e-4 here), gradients with
// checkpointing on 2 gamma_(2 chain) (8.3e-4).
TEST_F(FusedLlamaCudaTest, Fp32MatchesCpuWithCheckpointing) {
  RecordProperty("fused_kernels_available", remat::nn::fused_kernels_available() ? "1" : "0");
  remat::models::CausalLMInputs in;
  in.input_ids = input_ids;
  Tensor cpu_logits;
  {
    torch::NoGradGuard no_grad;
    cpu->eval();
    cpu_logits = cpu->forward(in).logits;
  }
  in.labels = input_ids;
  cpu->train();
  auto cpu_loss = cpu->forward(in).loss;
  cpu_loss.backward();

  auto model = cuda_copy();
  model->train();
  model->gradient_checkpointing_enable();
  remat::models::CausalLMInputs cin;
  cin.input_ids = input_ids.cuda();
  {
    torch::NoGradGuard no_grad;
    const double err = relative_error(model->forward(cin).logits, cpu_logits);
    RecordProperty("logits_rel_error", std::to_string(err));
    EXPECT_LE(err, remat::test::reduction_tolerance(forward_chain(), 1.0));
  }
  cin.labels = input_ids.cuda();
  auto loss = model->forward(cin).loss;
  const double loss_err = relative_error(loss.reshape(1), cpu_loss.reshape(1));
  RecordProperty("loss_rel_error", std::to_string(loss_err));
  EXPECT_LE(loss_err, remat::test::reduction_tolerance(forward_chain(), 1.0));
  loss.backward();
  auto cpu_params = cpu->named_parameters();
  double worst = 0;
  for (const auto& item : model->named_parameters()) {
    ASSERT_TRUE(item.value().grad().defined()) << item.key();
    const double err = relative_error(item.value().grad(), cpu_params[item.key()].grad());
    EXPECT_LE(err, remat::test::reduction_tolerance(2 * forward_chain(), 1.0)) << item.key();
    worst = std::max(worst, err);
  }
  RecordProperty("grad_rel_error", std::to_string(worst));
}

// bf16 autocast on CUDA for its lifetime.
class Bf16Autocast {
 public:
  Bf16Autocast() {
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, torch::kBFloat16);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, true);
  }
  ~Bf16Autocast() {
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, false);
    at::autocast::clear_cache();
  }
};

// bf16 autocast with float32 weights (the training setup): bf16 q and k with
// float32 cos and sin through the rotary kernel, SwiGLU in bf16, the decoder
// layers' RMSNorms from the float32 residual stream into bf16 in one kernel. Against the
// float32 CPU model, with and without checkpointing: the loss within
// autocast_loss_tolerance (3 bf16 roundings per matmul on the path, 13
// matmuls: gamma_39(bf16) = 0.18 relative), the gradients twice that chain
// (gamma_78(bf16) = 0.44 relative to their largest). The fused kernels' bf16
// roundings are the matmuls' input roundings counted there; the float32
// part is 2^16 times smaller.
TEST_F(FusedLlamaCudaTest, Bf16AutocastTrainingStepMatchesCpu) {
  remat::models::CausalLMInputs in;
  in.input_ids = input_ids;
  in.labels = input_ids;
  cpu->train();
  auto cpu_loss = cpu->forward(in).loss;
  cpu_loss.backward();
  auto cpu_params = cpu->named_parameters();

  for (bool checkpointing : {false, true}) {
    SCOPED_TRACE(checkpointing ? "checkpointing" : "no checkpointing");
    auto model = cuda_copy();
    model->train();
    if (checkpointing) model->gradient_checkpointing_enable();
    remat::models::CausalLMInputs cin;
    cin.input_ids = input_ids.cuda();
    cin.labels = input_ids.cuda();
    Tensor loss;
    {
      Bf16Autocast autocast;
      loss = model->forward(cin).loss;
    }
    loss.backward();
    const double loss_err = relative_error(loss.reshape(1), cpu_loss.reshape(1));
    RecordProperty(checkpointing ? "bf16_loss_rel_error_ckpt" : "bf16_loss_rel_error",
                   std::to_string(loss_err));
    EXPECT_LE(loss_err, remat::test::autocast_loss_tolerance(kPathMatmuls, 1.0, torch::kBFloat16));
    double worst = 0;
    for (const auto& item : model->named_parameters()) {
      ASSERT_TRUE(item.value().grad().defined()) << item.key();
      ASSERT_EQ(item.value().grad().scalar_type(), torch::kFloat) << item.key();
      const double err = relative_error(item.value().grad(), cpu_params[item.key()].grad());
      EXPECT_LE(err, remat::test::autocast_loss_tolerance(2 * kPathMatmuls, 1.0, torch::kBFloat16))
          << item.key();
      worst = std::max(worst, err);
    }
    std::cout << (checkpointing ? "checkpointing" : "no checkpointing")
              << ": bf16 autocast loss relative error " << loss_err
              << ", worst gradient relative error " << worst << "\n";
  }
}

}  // namespace
