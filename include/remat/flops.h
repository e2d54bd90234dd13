#pragma once

/// \file
/// Training FLOPs of a decoder-only Transformer and the peak throughput of
/// known accelerators, for model FLOPs utilization (MFU):
/// achieved FLOP/s divided by the device's peak.
/// \code
///   double per_token = remat::training_flops_per_token(matmul_params, layers, hidden, seq);
///   if (auto peak = remat::peak_flops("NVIDIA H100 80GB HBM3", /*bf16=*/true))
///     mfu = per_token * tokens_per_second / *peak;
/// \endcode

#include <cstdint>
#include <optional>
#include <string>

namespace remat {

/// FLOPs of one training token (forward + backward): 6 per weight of the
/// matrix products (`matmul_params`: every weight a token is multiplied by,
/// the LM head included, lookup-only embeddings excluded) plus
/// 12 * layers * hidden * seq for the attention scores and their weighted
/// sum (PaLM's appendix B; the causal mask's saving is not subtracted, as
/// in llm.c and nanoGPT).
///
/// Example: GPT-2 124M at 1024 tokens: `training_flops_per_token(123.5e6, 12, 768, 1024)`
/// is about 0.85e9.
inline double training_flops_per_token(double matmul_params, int64_t layers, int64_t hidden,
                                       int64_t seq) {
  return 6.0 * matmul_params + 12.0 * static_cast<double>(layers) * static_cast<double>(hidden) *
                                   static_cast<double>(seq);
}

/// Dense peak FLOP/s of a device, by the name CUDA reports
/// (cudaDeviceProp::name): bf16 tensor-core peak when `bf16`, else the
/// float32 non-tensor peak (LibTorch leaves TF32 off). Known: H100 SXM and
/// H200 (989.4 / 67 TFLOP/s), H100 PCIe (756 / 51), A100 (312 / 19.5).
/// nullopt for any other device, the CPU included.
///
/// Example: `peak_flops("NVIDIA H100 80GB HBM3", true)` is 989.4e12.
inline std::optional<double> peak_flops(const std::string& device_name, bool bf16) {
  auto has = [&](const char* part) { return device_name.find(part) != std::string::npos; };
  if (has("H100") && (has("PCIe") || has("PCIE"))) return bf16 ? 756e12 : 51e12;
  if (has("H100") || has("H200")) return bf16 ? 989.4e12 : 67e12;
  if (has("A100")) return bf16 ? 312e12 : 19.5e12;
  return std::nullopt;
}

}  // namespace remat
