// remat/flops.h: the FLOPs count and the peak table behind remat-bench's MFU.

#include "remat/flops.h"

#include <gtest/gtest.h>

TEST(FlopsTest, Gpt2SmallIsAboutPointEightFiveGflopPerToken) {
  // GPT-2 124M with the LM head tied to the embedding: 124,439,808 weights
  // minus the 1024 x 768 position table; 1024 tokens of context.
  const double matmul_params = 124'439'808.0 - 1024.0 * 768.0;
  const double flops = remat::training_flops_per_token(matmul_params, 12, 768, 1024);
  EXPECT_DOUBLE_EQ(flops, 6.0 * matmul_params + 12.0 * 12 * 768 * 1024);
  EXPECT_NEAR(flops / 1e9, 0.85, 0.01);
}

TEST(FlopsTest, PeakByDeviceName) {
  EXPECT_EQ(remat::peak_flops("NVIDIA H100 80GB HBM3", true), 989.4e12);
  EXPECT_EQ(remat::peak_flops("NVIDIA H100 80GB HBM3", false), 67e12);
  EXPECT_EQ(remat::peak_flops("NVIDIA H200", true), 989.4e12);
  EXPECT_EQ(remat::peak_flops("NVIDIA H100 PCIe", true), 756e12);
  EXPECT_EQ(remat::peak_flops("NVIDIA A100-SXM4-80GB", true), 312e12);
  EXPECT_FALSE(remat::peak_flops("cpu", true).has_value());
  EXPECT_FALSE(remat::peak_flops("NVIDIA GeForce RTX 4090", true).has_value());
}
