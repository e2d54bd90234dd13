// remat::nn::linear on the CPU, where it runs the plain expression: forward
// and gradients bitwise those of torch::nn::functional::linear (and of
// GPT-2's addmm on the rows for the [in, out] layout), without autocast and
// under CPU autocast. (The CUDA autocast path is checked in
// tests/cuda/linear_cuda_test.cpp.)

#include "remat/nn/linear.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <string>
#include <vector>

namespace {

using remat::nn::WeightLayout;
using torch::Tensor;

// The code the models ran before.
Tensor plain(const Tensor& x, const Tensor& weight, const Tensor& bias, WeightLayout layout) {
  if (layout == WeightLayout::kOutIn) return torch::nn::functional::linear(x, weight, bias);
  auto shape = x.sizes().vec();
  shape.back() = weight.size(1);
  const auto rows = x.reshape({-1, x.size(-1)});
  return (bias.defined() ? torch::addmm(bias, rows, weight) : torch::mm(rows, weight)).view(shape);
}

void expect_same(const Tensor& got, const Tensor& want, const std::string& what) {
  ASSERT_EQ(got.defined(), want.defined()) << what;
  if (!got.defined()) return;
  EXPECT_EQ(got.scalar_type(), want.scalar_type()) << what;
  ASSERT_EQ(got.sizes(), want.sizes()) << what;
  EXPECT_TRUE(torch::equal(got, want))
      << what << ": max |diff| "
      << (got.to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
}

struct Case {
  std::vector<int64_t> x_shape;  // [..., in]
  bool bias;
  WeightLayout layout;
  std::string name;
};

std::vector<Case> cases() {
  return {{{6, 8}, true, WeightLayout::kOutIn, "matrix, bias"},
          {{6, 8}, false, WeightLayout::kOutIn, "matrix, no bias"},
          {{2, 3, 8}, true, WeightLayout::kOutIn, "3-D, bias"},
          {{2, 3, 8}, false, WeightLayout::kOutIn, "3-D, no bias"},
          {{2, 3, 8}, true, WeightLayout::kInOut, "Conv1D 3-D, bias"},
          {{6, 8}, false, WeightLayout::kInOut, "Conv1D matrix, no bias"}};
}

// linear() and the plain expression on copies of the same leaves: outputs
// and the gradients of x, weight and bias bitwise equal.
void check_against_plain(torch::Dtype x_dtype) {
  for (const auto& c : cases()) {
    SCOPED_TRACE(c.name);
    const int64_t in = c.x_shape.back(), out = 5;
    const auto x0 = torch::randn(c.x_shape).to(x_dtype);
    const auto w0 =
        c.layout == WeightLayout::kOutIn ? torch::randn({out, in}) : torch::randn({in, out});
    const auto b0 = c.bias ? torch::randn({out}) : Tensor();
    auto leaves = [&] {
      std::vector<Tensor> v{x0.clone().requires_grad_(), w0.clone().requires_grad_()};
      v.push_back(c.bias ? b0.clone().requires_grad_() : Tensor());
      return v;
    };
    auto mine = leaves(), ref = leaves();
    const auto y = remat::nn::linear(mine[0], mine[1], mine[2], c.layout);
    const auto y_ref = plain(ref[0], ref[1], ref[2], c.layout);
    expect_same(y, y_ref, "output");
    ASSERT_TRUE(y.grad_fn());
    EXPECT_EQ(std::string(y.grad_fn()->name()), std::string(y_ref.grad_fn()->name()));
    const auto g = torch::randn(y.sizes()).to(y.scalar_type());
    y.backward(g);
    y_ref.backward(g);
    expect_same(mine[0].grad(), ref[0].grad(), "grad x");
    expect_same(mine[1].grad(), ref[1].grad(), "grad weight");
    if (c.bias) expect_same(mine[2].grad(), ref[2].grad(), "grad bias");
  }
}

TEST(LinearCpu, WithoutAutocastIsThePlainExpression) {
  torch::manual_seed(0);
  check_against_plain(torch::kFloat);
}

// CPU autocast (bf16): the plain expression, autocast's casts included.
TEST(LinearCpu, UnderCpuAutocastIsThePlainExpression) {
  torch::manual_seed(0);
  at::autocast::set_autocast_dtype(c10::DeviceType::CPU, at::kBFloat16);
  at::autocast::set_autocast_enabled(c10::DeviceType::CPU, true);
  at::autocast::increment_nesting();
  for (auto dtype : {torch::kFloat, torch::kBFloat16}) {
    SCOPED_TRACE(c10::toString(dtype));
    check_against_plain(dtype);
  }
  at::autocast::decrement_nesting();
  at::autocast::clear_cache();
  at::autocast::set_autocast_enabled(c10::DeviceType::CPU, false);
}

TEST(LinearCpu, WithoutGradModeIsThePlainExpression) {
  torch::manual_seed(0);
  torch::NoGradGuard no_grad;
  const auto x = torch::randn({2, 3, 8});
  const auto w = torch::randn({5, 8}), b = torch::randn({5});
  expect_same(remat::nn::linear(x, w, b), torch::nn::functional::linear(x, w, b), "Linear");
  const auto wt = w.t().contiguous();
  expect_same(remat::nn::linear(x, wt, b, WeightLayout::kInOut),
              torch::addmm(b, x.reshape({-1, 8}), wt).view({2, 3, 5}), "Conv1D");
}

}  // namespace
