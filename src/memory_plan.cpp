#include "remat/memory_plan.h"

#include <fmt/format.h>
#include <unistd.h>

#include <c10/core/CachingDeviceAllocator.h>

#include <algorithm>
#include <unordered_set>
#include <utility>
#include <vector>

#include "remat/models/causal_lm.h"
#include "remat/nn/fused.h"

namespace remat {
namespace {

constexpr double kMiB = 1024.0 * 1024.0;

// Bytes per token that autograd keeps for the backward (see docs/trainer.md,
// "Memory plan"). Element counts are per token; `residual` bytes apply to
// the residual stream and the normalizations (float32 under bf16 autocast,
// which does not lower them), `compute` bytes to what the matmuls and the
// attention save (bfloat16 under autocast).
struct TokenBytes {
  double layer = 0.0;           // one decoder layer, checkpointing off
  double layer_boundary = 0.0;  // a checkpointed layer: its input
  double head_kept = 0.0;       // final norm and log-probabilities
  double head_backward = 0.0;   // gradients of the logits, transient
};

TokenBytes token_bytes(const models::ModelConfig& c, int64_t seq_len, double residual,
                       double compute, bool cuda) {
  const double h = static_cast<double>(c.hidden_size);
  const double inner = static_cast<double>(c.intermediate_size);
  const double heads = static_cast<double>(c.num_attention_heads);
  const double q = heads * static_cast<double>(c.head_dim);
  const double kv = static_cast<double>(c.num_key_value_heads * c.head_dim);
  const double vocab = static_cast<double>(c.vocab_size);
  // A dropout mask: bool on CUDA (fused kernel), the activation's dtype on
  // the CPU.
  const double mask = cuda ? 1.0 : compute;
  const bool gpt2 = c.model_type == "gpt2";
  const double attention_dropout = gpt2 ? c.attn_pdrop : c.attention_dropout;

  TokenBytes t;
  double residual_elements = 0.0, compute_elements = 0.0, final_norm_residual = 0.0;
  if (gpt2) {
    // LayerNorm inputs (block input, attention output + residual); c_attn
    // input, q/k/v, SDPA output, heads merged for c_proj; c_fc input, c_fc
    // output and the activation's output.
    residual_elements = 2 * h;
    compute_elements = h + 3 * h + h + h + h + 2 * inner;
    if (c.resid_pdrop > 0) t.layer += 2 * h * mask;
    final_norm_residual = h;
  } else {
    // RMSNorm keeps its input and the normalized float32 value, twice per
    // layer; projections' inputs; rotated q and k, v; SDPA output, heads
    // merged for o_proj; gate, its activation, up and their product. With
    // the fused CUDA kernels RMSNorm keeps only its input (and a scale per
    // row) and SwiGLU only gate and up.
    const bool fused = cuda && nn::fused_kernels_available();
    residual_elements = fused ? 2 * h : 4 * h;
    compute_elements = 2 * h + q + 2 * kv + q + q + (fused ? 3 : 4) * inner;
    final_norm_residual = 2 * h;
  }
  t.layer += residual_elements * residual + compute_elements * compute;
  // SDPA keeps no seq_len x seq_len matrix, except with attention dropout on
  // the CPU, where it falls back to the math path: probabilities, mask and
  // dropped probabilities per head.
  if (attention_dropout > 0 && !cuda) {
    t.layer += 3 * heads * static_cast<double>(seq_len) * compute;
  }
  t.layer_boundary = h * residual;
  // Final norm (its input, and the LM head's input), then the float32
  // log-probabilities cross-entropy keeps; its backward makes two float32
  // gradients of the logits' size.
  t.head_kept = final_norm_residual * residual + h * compute + 4 * vocab;
  t.head_backward = 2 * 4 * vocab;
  return t;
}

// Each parameter tensor once, even when registered twice (tied weights).
std::vector<torch::Tensor> unique_parameters(const torch::nn::Module& model) {
  std::vector<torch::Tensor> result;
  std::unordered_set<const void*> seen;
  for (const auto& p : model.parameters(/*recurse=*/true)) {
    if (seen.insert(p.unsafeGetTensorImpl()).second) result.push_back(p);
  }
  return result;
}

torch::ScalarType model_dtype(const std::vector<torch::Tensor>& params) {
  for (const auto& p : params) {
    if (p.is_floating_point()) return p.scalar_type();
  }
  return torch::kFloat;
}

std::optional<int64_t> max_batch(double memory, double states, double per_sequence) {
  if (per_sequence <= 0) return std::nullopt;
  return std::max<int64_t>(0, static_cast<int64_t>((memory - states) / per_sequence));
}

std::string with_commas(int64_t value) {
  auto digits = std::to_string(value);
  for (int pos = static_cast<int>(digits.size()) - 3; pos > (value < 0 ? 1 : 0); pos -= 3) {
    digits.insert(static_cast<size_t>(pos), ",");
  }
  return digits;
}

std::string dtype_name(torch::ScalarType dtype) {
  switch (dtype) {
    case torch::kFloat:
      return "float32";
    case torch::kDouble:
      return "float64";
    case torch::kHalf:
      return "float16";
    case torch::kBFloat16:
      return "bfloat16";
    default:
      return c10::toString(dtype);
  }
}

std::string mib(double value) { return fmt::format("{:.1f}", value); }

}  // namespace

int64_t device_memory_bytes(const torch::Device& device) {
  if (device.is_cuda()) {
    auto index = device.has_index() ? device.index() : c10::DeviceIndex(0);
    return static_cast<int64_t>(c10::getDeviceAllocator(c10::kCUDA)->getMemoryInfo(index).second);
  }
  TORCH_CHECK(device.is_cpu(), "device_memory_bytes: unsupported device ", device,
              "; valid devices are cpu and cuda");
  return static_cast<int64_t>(::sysconf(_SC_PHYS_PAGES)) *
         static_cast<int64_t>(::sysconf(_SC_PAGE_SIZE));
}

MemoryPlan estimate_memory_plan(const torch::nn::Module& model, const TrainingArguments& args,
                                int64_t seq_len, torch::Device device) {
  TORCH_CHECK(seq_len >= 1, "estimate_memory_plan: seq_len must be at least 1, got ", seq_len);
  TORCH_CHECK(device.is_cpu() || device.is_cuda(), "estimate_memory_plan: unsupported device ",
              device, "; valid devices are cpu and cuda");
  MemoryPlan plan;
  plan.device = device.str();
  plan.batch_size = args.per_device_train_batch_size;
  plan.seq_len = seq_len;
  const auto params = unique_parameters(model);
  double weight_bytes = 0, grad_bytes = 0;
  for (const auto& p : params) {
    const auto bytes = static_cast<double>(p.numel() * static_cast<int64_t>(p.element_size()));
    plan.parameters += p.numel();
    weight_bytes += bytes;
    if (!p.requires_grad()) continue;
    plan.trainable_parameters += p.numel();
    grad_bytes += bytes;
  }
  plan.weights_mib = weight_bytes / kMiB;
  plan.gradients_mib = grad_bytes / kMiB;
  plan.optimizer_mib = 2.0 * 4.0 * static_cast<double>(plan.trainable_parameters) / kMiB;
  const double memory = static_cast<double>(device_memory_bytes(device));
  plan.device_memory_mib = memory / kMiB;

  const auto* lm = dynamic_cast<const models::CausalLMImpl*>(&model);
  if (lm == nullptr) return plan;
  const auto& config = lm->config();
  const double residual = static_cast<double>(c10::elementSize(model_dtype(params)));
  const double compute = args.bf16 ? 2.0 : residual;
  const auto t = token_bytes(config, seq_len, residual, compute, device.is_cuda());
  const double layers = static_cast<double>(config.num_hidden_layers);
  const double off = layers * t.layer + t.head_kept + t.head_backward;
  const double on = layers * t.layer_boundary + t.head_kept + std::max(t.head_backward, t.layer);
  const double tokens_per_sequence = static_cast<double>(seq_len);
  const double tokens = static_cast<double>(plan.batch_size) * tokens_per_sequence;
  plan.layer_activations_mib = t.layer * tokens / kMiB;
  plan.layer_checkpointed_mib = t.layer_boundary * tokens / kMiB;
  plan.activations_mib = off * tokens / kMiB;
  plan.activations_checkpointed_mib = on * tokens / kMiB;
  const double states = weight_bytes + grad_bytes + plan.optimizer_mib * kMiB;
  plan.max_batch_size = max_batch(memory, states, off * tokens_per_sequence);
  plan.max_batch_size_checkpointed = max_batch(memory, states, on * tokens_per_sequence);
  return plan;
}

std::string startup_table(const torch::nn::Module& model, const TrainingArguments& args,
                          const torch::Device& device, const MemoryPlan& plan) {
  constexpr int kKey = 34, kValue = 56;
  const std::string rule = fmt::format("+{:-<{}}+{:-<{}}+\n", "", kKey + 2, "", kValue + 2);
  std::string out = rule;
  // A value too long for its column continues on the next rows.
  auto row = [&](const std::string& key, const std::string& value) {
    size_t at = 0;
    do {
      out += fmt::format("| {:<{}} | {:<{}} |\n", at == 0 ? key : "", kKey,
                         value.substr(at, kValue), kValue);
      at += kValue;
    } while (at < value.size());
  };
  auto section = [&](const std::string& title) {
    out += rule;
    row(title, "");
    out += rule;
  };

  const auto params = unique_parameters(model);
  const auto dtype = model_dtype(params);
  row("device", device.str());
  row("dtype", dtype_name(dtype) + (args.bf16 ? " (bf16 autocast)" : ""));
  row("parameters", with_commas(plan.parameters));
  row("trainable parameters", with_commas(plan.trainable_parameters));

  section("training arguments (not default)");
  const auto defaults = TrainingArguments().to_json();
  const auto values = args.to_json();
  bool any = false;
  for (const auto& field : TrainingArguments::fields()) {
    const auto& value = values.at(field.name);
    if (defaults.contains(field.name) && defaults.at(field.name) == value) continue;
    row(field.name, value.is_string() ? value.get<std::string>() : value.dump());
    any = true;
  }
  if (!any) row("(all defaults)", "");

  section("memory plan (MiB)");
  row("weights", mib(plan.weights_mib));
  row("gradients", mib(plan.gradients_mib));
  row("AdamW state", mib(plan.optimizer_mib));
  const auto batch = fmt::format("{} x {} tokens", plan.batch_size, plan.seq_len);
  if (plan.activations_mib) {
    row("activations per layer",
        fmt::format("{} (checkpointed: {})", mib(*plan.layer_activations_mib),
                    mib(*plan.layer_checkpointed_mib)));
    row("activations, " + batch, fmt::format("{} (checkpointed: {})", mib(*plan.activations_mib),
                                             mib(*plan.activations_checkpointed_mib)));
    row("total, checkpointing off", mib(plan.model_state_mib() + *plan.activations_mib));
    row("total, checkpointing on",
        mib(plan.model_state_mib() + *plan.activations_checkpointed_mib));
  } else {
    row("activations, " + batch, "unknown (not a remat causal LM)");
  }
  row("device memory", mib(plan.device_memory_mib));
  if (plan.max_batch_size) {
    row("max batch per device", fmt::format("{} (checkpointed: {})", *plan.max_batch_size,
                                            *plan.max_batch_size_checkpointed));
  }
  row("gradient checkpointing", args.gradient_checkpointing ? "on" : "off");
  out += rule;
  return out;
}

}  // namespace remat
