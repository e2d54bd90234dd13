#pragma once

// Shared test support, in the manner of PyTorch's test/cpp/api/support.h.

#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

namespace remat::test {

/// Seeds the global generators before each test, so every test draws the
/// same numbers whatever runs before it.
struct SeedingFixture : public ::testing::Test {
  void SetUp() override { torch::manual_seed(0); }
};

/// Asserts that `statement` throws a c10::Error whose message contains
/// `substring`.
#define ASSERT_THROWS_WITH(statement, substring)                                             \
  do {                                                                                       \
    try {                                                                                    \
      (void)(statement);                                                                     \
      FAIL() << "Expected statement `" #statement "` to throw";                              \
    } catch (const c10::Error& e) {                                                          \
      std::string message = e.what_without_backtrace();                                      \
      ASSERT_NE(message.find(substring), std::string::npos)                                  \
          << "Error message \"" << message << "\" does not contain \"" << substring << "\""; \
    }                                                                                        \
  } while (false)

/// Asserts that `statement` throws an exception of `type` (derived from
/// std::exception) whose what() contains `substring`.
#define ASSERT_THROWS_TYPE_WITH(statement, type, substring)                                  \
  do {                                                                                       \
    try {                                                                                    \
      (void)(statement);                                                                     \
      FAIL() << "Expected statement `" #statement "` to throw " #type;                       \
    } catch (const type& e) {                                                                \
      std::string message = e.what();                                                        \
      ASSERT_NE(message.find(substring), std::string::npos)                                  \
          << "Error message \"" << message << "\" does not contain \"" << substring << "\""; \
    }                                                                                        \
  } while (false)

/// Bitwise equality: same shape, dtype and every element identical.
inline ::testing::AssertionResult bitwise_equal(const torch::Tensor& a, const torch::Tensor& b) {
  if (!a.defined() || !b.defined()) {
    if (a.defined() == b.defined()) return ::testing::AssertionSuccess();
    return ::testing::AssertionFailure() << "one tensor is undefined";
  }
  if (a.sizes() != b.sizes() || a.scalar_type() != b.scalar_type()) {
    return ::testing::AssertionFailure()
           << "shape/dtype differ: " << a.sizes() << " " << a.scalar_type() << " vs " << b.sizes()
           << " " << b.scalar_type();
  }
  if (torch::equal(a.cpu(), b.cpu())) return ::testing::AssertionSuccess();
  auto diff = (a.cpu().to(torch::kDouble) - b.cpu().to(torch::kDouble)).abs().max().item<double>();
  return ::testing::AssertionFailure() << "tensors differ, max abs difference " << diff;
}

/// The unit roundoff u of a floating dtype, half the distance from 1 to the
/// next number: 2^-24 float32, 2^-53 float64, 2^-8 bfloat16, 2^-11 float16.
inline double unit_roundoff(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kDouble:
      return std::ldexp(1.0, -53);
    case torch::kBFloat16:
      return std::ldexp(1.0, -8);
    case torch::kHalf:
      return std::ldexp(1.0, -11);
    default:
      TORCH_CHECK(dtype == torch::kFloat, "unit_roundoff: expected a floating dtype, got ", dtype);
      return std::ldexp(1.0, -24);
  }
}

/// gamma_n = n u / (1 - n u), the worst-case relative error of a reduction of
/// n terms in any order (Higham, Accuracy and Stability of Numerical
/// Algorithms, section 3.1), or of n successive roundings.
/// Example: reduction_gamma(32) is about 1.9e-6 for float32.
inline double reduction_gamma(int64_t n, torch::ScalarType dtype = torch::kFloat) {
  const double nu = static_cast<double>(n) * unit_roundoff(dtype);
  TORCH_CHECK(nu < 0.5, "reduction_gamma: n u = ", nu, " is too large for a bound");
  return nu / (1 - nu);
}

/// The largest |a - b| between two evaluations of the same length-n
/// reduction in two different orders: each is within gamma_n sum|terms| of
/// the exact value, so they differ by at most 2 gamma_n sum|terms|. `scale`
/// is sum|terms|, or an upper bound on it (n times the largest term).
/// Example: reduction_tolerance(66, 4.0) for a float32 loss summed over 66
/// tokens of at most 4 each.
inline double reduction_tolerance(int64_t n, double scale,
                                  torch::ScalarType dtype = torch::kFloat) {
  return 2 * reduction_gamma(n, dtype) * scale;
}

/// The longest chain of roundings from a decoder-only transformer's inputs
/// to its loss, the n of gamma_n for a value it computes: per layer the two
/// norms (2 x 2 hidden: mean and variance), attention (head_dim for the
/// scores, 2 seq for the softmax and the values) and the projections (hidden
/// each for q/k/v, the output and the MLP's up, intermediate for its down);
/// then the final norm (2 hidden), the head (hidden), the softmax (vocab) and
/// the sum over the batch's tokens. A gradient's chain is twice this: the
/// backward repeats the reductions.
/// Example: transformer_chain(2, 32, 128, 8, 12, 48, 24) for tiny GPT-2.
constexpr int64_t transformer_chain(int64_t layers, int64_t hidden, int64_t intermediate,
                                    int64_t head_dim, int64_t seq, int64_t vocab, int64_t tokens) {
  const int64_t layer = 4 * hidden + (head_dim + 2 * seq) + (3 * hidden + intermediate);
  return layers * layer + 3 * hidden + vocab + tokens;
}

/// The largest |loss - float32 loss| when a model's matmuls run in a 16-bit
/// dtype under autocast: each matmul rounds its two inputs and its output, so
/// the path from the inputs to the loss holds 3 roundings per matmul: gamma_k
/// relative to the loss, k = 3 x matmuls (the float32 path's own roundings are
/// smaller by 2^16 and left out).
/// Example: autocast_loss_tolerance(13, 3.9, torch::kBFloat16).
inline double autocast_loss_tolerance(int64_t matmuls, double loss, torch::ScalarType dtype) {
  return reduction_gamma(3 * matmuls, dtype) * std::abs(loss);
}

/// Asserts max |got - want| <= allowed (in float64, same shape) and reports
/// both numbers; NaNs fail.
inline ::testing::AssertionResult within_tolerance(const torch::Tensor& got,
                                                   const torch::Tensor& want, double allowed) {
  if (got.sizes() != want.sizes()) {
    return ::testing::AssertionFailure()
           << "shapes differ: " << got.sizes() << " vs " << want.sizes();
  }
  const auto diff = (got.detach().cpu().to(torch::kDouble) - want.detach().cpu().to(torch::kDouble))
                        .abs()
                        .max()
                        .item<double>();
  if (diff <= allowed) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure() << "max abs difference " << diff << ", allowed " << allowed;
}

/// within_tolerance for two numbers.
inline ::testing::AssertionResult within_tolerance(double got, double want, double allowed) {
  const double diff = std::abs(got - want);
  if (diff <= allowed) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << got << " vs " << want << ": difference " << diff << ", allowed " << allowed;
}

/// The largest |x| of a tensor, in float64: the scale a relative tolerance
/// is taken against.
inline double max_abs(const torch::Tensor& x) {
  return x.detach().cpu().to(torch::kDouble).abs().max().item<double>();
}

}  // namespace remat::test
