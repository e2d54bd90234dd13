#pragma once

/// \file
/// What a training run will hold in memory, estimated before it starts, and
/// the start-up table that reports it with the configuration (as llm.c
/// prints one): weights, gradients, AdamW state, activations of one
/// micro-batch with and without gradient checkpointing, and the largest
/// per-device batch that fits.
/// \code
///   auto plan = remat::estimate_memory_plan(*model, args, /*seq_len=*/1024, device);
///   std::cout << remat::startup_table(*model, args, device, plan);
/// \endcode
///
/// The activation estimate is analytic (see docs/trainer.md, "Memory plan"):
/// per decoder layer it counts the tensors autograd keeps for the backward,
/// after Korthikanti et al., "Reducing Activation Recomputation in Large
/// Transformer Models" (2022), adapted to remat's models.

#include <torch/torch.h>

#include <cstdint>
#include <optional>
#include <string>

#include "remat/training_arguments.h"

namespace remat {

/// The memory a training run needs, in MiB (2^20 bytes). Activations are
/// known for remat's causal LMs (remat::models::CausalLMImpl) and unset for
/// any other module.
struct MemoryPlan {
  /// The device the plan is for, e.g. "cuda:0".
  std::string device;
  /// The micro-batch the activations are for: per_device_train_batch_size
  /// sequences of seq_len tokens.
  int64_t batch_size = 0;
  int64_t seq_len = 0;
  /// Parameters (shared tensors counted once) and those that require grad.
  int64_t parameters = 0;
  int64_t trainable_parameters = 0;
  /// Parameters in their dtype.
  double weights_mib = 0.0;
  /// One gradient per trainable parameter, in its dtype.
  double gradients_mib = 0.0;
  /// AdamW's two float32 moments per trainable parameter.
  double optimizer_mib = 0.0;
  /// What one decoder layer keeps for the backward without checkpointing.
  std::optional<double> layer_activations_mib;
  /// What a checkpointed layer keeps instead: its input.
  std::optional<double> layer_checkpointed_mib;
  /// Peak activation memory of one micro-batch (forward and backward),
  /// gradient checkpointing off.
  std::optional<double> activations_mib;
  /// The same with every decoder layer checkpointed.
  std::optional<double> activations_checkpointed_mib;
  /// The device's total memory (CUDA: the card's; CPU: physical memory).
  double device_memory_mib = 0.0;
  /// The largest per_device_train_batch_size whose estimate fits the device
  /// memory (0: not even one sequence), without and with checkpointing.
  std::optional<int64_t> max_batch_size;
  std::optional<int64_t> max_batch_size_checkpointed;

  /// Weights, gradients and optimizer state together.
  double model_state_mib() const { return weights_mib + gradients_mib + optimizer_mib; }
};

/// Estimates the memory of training `model` with `args` (its
/// per_device_train_batch_size, bf16 and gradient_checkpointing settings)
/// on sequences of `seq_len` tokens on `device`. Throws c10::Error for a
/// seq_len below 1, or a device other than cpu and cuda.
///
/// Example: `auto plan = remat::estimate_memory_plan(*model, args, 512, torch::kCUDA);`
MemoryPlan estimate_memory_plan(const torch::nn::Module& model, const TrainingArguments& args,
                                int64_t seq_len, torch::Device device);

/// Total memory of `device` in bytes: the CUDA card's (as cudaMemGetInfo
/// reports it), or the machine's physical memory for cpu.
int64_t device_memory_bytes(const torch::Device& device);

/// The start-up table: a fixed-width text table of the training arguments
/// that differ from their defaults, the parameter counts, device, dtype and
/// `plan`, ending with a newline.
///
/// Example: `remat::logger()->info("\n{}", remat::startup_table(*model, args, device, plan));`
std::string startup_table(const torch::nn::Module& model, const TrainingArguments& args,
                          const torch::Device& device, const MemoryPlan& plan);

}  // namespace remat
