// remat::nn's fused functions on CPU, where they run the plain ATen
// expressions: bitwise the unfused model code, forward and gradients, and
// clear errors for inputs of the wrong shape. (The CUDA kernels are checked
// in tests/cuda/fused_cuda_test.cpp.)

#include "remat/nn/fused.h"

#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using torch::Tensor;

// The unfused code as the models had it.
Tensor plain_swiglu(const Tensor& gate, const Tensor& up) { return torch::silu(gate) * up; }

Tensor rotate_half(const Tensor& x) {
  auto half = x.size(-1) / 2;
  return torch::cat({-x.narrow(-1, half, half), x.narrow(-1, 0, half)}, -1);
}

// On [batch, heads, tokens, head_dim], as LlamaAttention applied it before.
Tensor plain_rotary_bhtd(const Tensor& x, const Tensor& cos, const Tensor& sin) {
  return x * cos.unsqueeze(1) + rotate_half(x) * sin.unsqueeze(1);
}

Tensor plain_rms_norm(const Tensor& x, const Tensor& weight, double eps) {
  auto h = x.to(torch::kFloat);
  h = h * torch::rsqrt(h.pow(2).mean(-1, /*keepdim=*/true) + eps);
  return weight * h.to(x.scalar_type());
}

void expect_same(const Tensor& got, const Tensor& want) {
  ASSERT_TRUE(got.defined());
  ASSERT_TRUE(want.defined());
  EXPECT_EQ(got.scalar_type(), want.scalar_type());
  EXPECT_EQ(got.sizes(), want.sizes());
  EXPECT_TRUE(torch::equal(got, want))
      << "max |diff| "
      << (got.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
}

// Runs f and expects a c10::Error whose message contains every one of `parts`.
template <typename F>
void expect_error(F&& f, const std::vector<std::string>& parts) {
  try {
    f();
    ADD_FAILURE() << "no error thrown";
  } catch (const c10::Error& e) {
    const std::string message = e.what_without_backtrace();
    for (const auto& part : parts) {
      EXPECT_NE(message.find(part), std::string::npos) << "\"" << part << "\" not in: " << message;
    }
  }
}

class FusedCpuTest : public ::testing::TestWithParam<torch::Dtype> {
 protected:
  void SetUp() override { torch::manual_seed(0); }
  torch::TensorOptions opts() const { return torch::TensorOptions().dtype(GetParam()); }
};

TEST_P(FusedCpuTest, SwigluIsThePlainExpression) {
  auto gate = torch::randn({3, 5, 37}, opts()).requires_grad_();
  auto up = torch::randn({3, 5, 37}, opts()).requires_grad_();
  auto out = remat::nn::swiglu(gate, up);
  auto want = plain_swiglu(gate, up);
  expect_same(out, want);
  auto grad = torch::randn_like(out);
  auto got_grads = torch::autograd::grad({out}, {gate, up}, {grad});
  auto want_grads = torch::autograd::grad({want}, {gate, up}, {grad});
  expect_same(got_grads[0], want_grads[0]);
  expect_same(got_grads[1], want_grads[1]);
}

TEST_P(FusedCpuTest, RotaryIsThePlainExpressionBeforeTheTranspose) {
  const int64_t b = 2, t = 5, h = 3, d = 8;
  auto x = torch::randn({b, t, h, d}, opts()).requires_grad_();
  // float32 cos and sin with a lower-precision x, as under autocast.
  for (auto cs_dtype : {GetParam(), torch::kFloat}) {
    SCOPED_TRACE(c10::toString(cs_dtype));
    auto cos = torch::randn({b, t, d}, torch::TensorOptions().dtype(cs_dtype));
    auto sin = torch::randn({b, t, d}, torch::TensorOptions().dtype(cs_dtype));
    auto out = remat::nn::rotary(x, cos, sin);
    EXPECT_EQ(out.scalar_type(), at::result_type(x, cos));
    // The same values as the rotation applied to the [b, h, t, d] view.
    auto want = plain_rotary_bhtd(x.transpose(1, 2), cos, sin).transpose(1, 2);
    expect_same(out, want);
    auto grad = torch::randn_like(out);
    auto got_grad = torch::autograd::grad({out}, {x}, {grad})[0];
    auto want_grad = torch::autograd::grad({want}, {x}, {grad})[0];
    EXPECT_EQ(got_grad.scalar_type(), x.scalar_type());
    expect_same(got_grad, want_grad);
  }
}

TEST_P(FusedCpuTest, RotaryBroadcastsABatchOfOneCosAndSin) {
  auto x = torch::randn({3, 4, 2, 6}, opts());
  auto cos = torch::randn({1, 4, 6}, opts());
  auto sin = torch::randn({1, 4, 6}, opts());
  expect_same(remat::nn::rotary(x, cos, sin),
              plain_rotary_bhtd(x.transpose(1, 2), cos, sin).transpose(1, 2));
}

TEST_P(FusedCpuTest, RotaryWithAnOutputDtypeIsTheCastResult) {
  auto x = torch::randn({2, 4, 3, 8}, opts());
  auto cos = torch::randn({2, 4, 8}), sin = torch::randn({2, 4, 8});
  auto out = remat::nn::rotary(x, cos, sin, GetParam());
  EXPECT_EQ(out.scalar_type(), GetParam());
  expect_same(out, remat::nn::rotary(x, cos, sin).to(GetParam()));
}

TEST_P(FusedCpuTest, RmsNormIsThePlainExpression) {
  auto x = torch::randn({2, 7, 24}, opts()).requires_grad_();
  auto weight = (1 + 0.1 * torch::randn({24}, opts())).requires_grad_();
  auto out = remat::nn::rms_norm(x, weight, 1e-6);
  auto want = plain_rms_norm(x, weight, 1e-6);
  expect_same(out, want);
  auto grad = torch::randn_like(out);
  auto got_grads = torch::autograd::grad({out}, {x, weight}, {grad});
  auto want_grads = torch::autograd::grad({want}, {x, weight}, {grad});
  expect_same(got_grads[0], want_grads[0]);
  expect_same(got_grads[1], want_grads[1]);
}

// With an output dtype: bitwise the call without it, cast; the gradients
// bitwise those through the cast.
TEST_P(FusedCpuTest, RmsNormWithAnOutputDtypeIsTheCastResult) {
  for (auto out_dtype : {torch::kBFloat16, torch::kHalf, torch::kFloat, GetParam()}) {
    SCOPED_TRACE(c10::toString(out_dtype));
    auto x = torch::randn({2, 7, 24}, opts()).requires_grad_();
    auto weight = (1 + 0.1 * torch::randn({24}, opts())).requires_grad_();
    auto out = remat::nn::rms_norm(x, weight, 1e-6, out_dtype);
    EXPECT_EQ(out.scalar_type(), out_dtype);
    auto want = remat::nn::rms_norm(x, weight, 1e-6).to(out_dtype);
    expect_same(out, want);
    auto grad = torch::randn(out.sizes()).to(out_dtype);
    auto got_grads = torch::autograd::grad({out}, {x, weight}, {grad});
    auto want_grads = torch::autograd::grad({want}, {x, weight}, {grad});
    EXPECT_EQ(got_grads[0].scalar_type(), GetParam());
    expect_same(got_grads[0], want_grads[0]);
    expect_same(got_grads[1], want_grads[1]);
  }
  // No dtype is the call without one.
  auto x = torch::randn({3, 16}, opts());
  auto weight = torch::randn({16}, opts());
  expect_same(remat::nn::rms_norm(x, weight, 1e-5, std::nullopt),
              remat::nn::rms_norm(x, weight, 1e-5));
}

INSTANTIATE_TEST_SUITE_P(Dtypes, FusedCpuTest,
                         ::testing::Values(torch::kFloat, torch::kBFloat16, torch::kDouble),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

TEST(FusedErrors, SwigluShapeMismatchNamesBothShapes) {
  expect_error(
      [] {
        remat::nn::swiglu(torch::zeros({2, 3}), torch::zeros({2, 4}));
      },
      {"swiglu", "[2, 3]", "[2, 4]"});
  // No broadcasting either.
  expect_error(
      [] {
        remat::nn::swiglu(torch::zeros({2, 3}), torch::zeros({3}));
      },
      {"swiglu", "[2, 3]", "[3]"});
}

TEST(FusedErrors, RotaryShapesAreChecked) {
  // cos and sin for another head_dim.
  expect_error(
      [] {
        remat::nn::rotary(torch::zeros({2, 5, 3, 8}), torch::zeros({2, 5, 6}),
                          torch::zeros({2, 5, 6}));
      },
      {"rotary", "[2, 5, 3, 8]", "[2, 5, 6]", "head_dim"});
  // An odd head_dim.
  expect_error(
      [] {
        remat::nn::rotary(torch::zeros({2, 5, 3, 7}), torch::zeros({2, 5, 7}),
                          torch::zeros({2, 5, 7}));
      },
      {"rotary", "even", "[2, 5, 3, 7]"});
  // cos and sin for another number of tokens.
  expect_error(
      [] {
        remat::nn::rotary(torch::zeros({2, 5, 3, 8}), torch::zeros({2, 4, 8}),
                          torch::zeros({2, 4, 8}));
      },
      {"rotary", "[2, 5, 3, 8]", "[2, 4, 8]"});
  // cos and sin of different shapes.
  expect_error(
      [] {
        remat::nn::rotary(torch::zeros({2, 5, 3, 8}), torch::zeros({2, 5, 8}),
                          torch::zeros({1, 5, 8}));
      },
      {"rotary", "[2, 5, 8]", "[1, 5, 8]"});
  // x in the [batch, heads, tokens] order of attention, or of another rank.
  expect_error(
      [] {
        remat::nn::rotary(torch::zeros({2, 3, 5, 8}), torch::zeros({2, 5, 8}),
                          torch::zeros({2, 5, 8}));
      },
      {"rotary", "[2, 3, 5, 8]", "[2, 5, 8]"});
  expect_error(
      [] {
        remat::nn::rotary(torch::zeros({5, 3, 8}), torch::zeros({5, 8}), torch::zeros({5, 8}));
      },
      {"rotary", "[5, 3, 8]"});
}

TEST(FusedErrors, RmsNormWeightMustMatchTheLastDimension) {
  expect_error(
      [] {
        remat::nn::rms_norm(torch::zeros({2, 8}), torch::ones({6}), 1e-6);
      },
      {"rms_norm", "[2, 8]", "[6]"});
  // The same with an output dtype.
  expect_error(
      [] {
        remat::nn::rms_norm(torch::zeros({2, 8}), torch::ones({6}), 1e-6, torch::kBFloat16);
      },
      {"rms_norm", "[2, 8]", "[6]"});
}

TEST(FusedKernels, AvailabilityIsReported) {
  // True exactly in builds with the CUDA kernels; recorded for the logs.
  RecordProperty("fused_kernels_available", remat::nn::fused_kernels_available() ? "1" : "0");
  SUCCEED();
}

}  // namespace
