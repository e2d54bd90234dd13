#pragma once

// Shared test support, in the manner of PyTorch's test/cpp/api/support.h.

#include <gtest/gtest.h>
#include <torch/torch.h>

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

}  // namespace remat::test
