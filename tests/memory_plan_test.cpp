// The memory plan: model states counted exactly, the activation estimate
// checked against the measured peak of a real forward and backward (CPU
// here, CUDA in the Cuda-named test), and the start-up table's content.

#include "remat/memory_plan.h"

#include <c10/core/Allocator.h>
#include <c10/util/ThreadLocalDebugInfo.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <algorithm>
#include <memory>
#include <string>
#include <thread>

#include "remat/memory.h"
#include "remat/models/causal_lm.h"
#include "support.h"

namespace {

constexpr double kMiB = 1024.0 * 1024.0;

std::shared_ptr<remat::models::CausalLMImpl> tiny_model(const std::string& type) {
  torch::manual_seed(0);
  nlohmann::json config;
  if (type == "gpt2") {
    config = {{"model_type", "gpt2"}, {"vocab_size", 256}, {"n_positions", 128},
              {"n_embd", 64},         {"n_layer", 4},      {"n_head", 4},
              {"resid_pdrop", 0.0},   {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0}};
  } else {
    config = {{"model_type", "llama"},       {"vocab_size", 256},
              {"hidden_size", 64},           {"intermediate_size", 176},
              {"num_hidden_layers", 4},      {"num_attention_heads", 4},
              {"num_key_value_heads", 2},    {"max_position_embeddings", 128},
              {"tie_word_embeddings", false}};
  }
  return remat::models::AutoModelForCausalLM::from_config(
      remat::models::ModelConfig::from_json(config));
}

// Peak bytes above the start of one training forward and backward on the
// CPU, parameters' gradients included (they start unset).
int64_t measure_cpu_peak(remat::models::CausalLMImpl& model, int64_t batch, int64_t seq_len,
                         bool checkpointing) {
  model.train();
  if (checkpointing) {
    model.gradient_checkpointing_enable();
  } else {
    model.gradient_checkpointing_disable();
  }
  for (auto& p : model.parameters()) p.mutable_grad() = torch::Tensor();
  remat::models::CausalLMInputs in;
  in.input_ids = torch::randint(model.config().vocab_size, {batch, seq_len});
  in.labels = in.input_ids;
  remat::CpuMemoryScope scope;
  auto loss = model.forward(in).loss;
  loss.backward();
  return scope.peak();
}

remat::TrainingArguments args_with_batch(int64_t batch) {
  remat::TrainingArguments args;
  args.per_device_train_batch_size = batch;
  return args;
}

TEST(MemoryPlan, CountsModelStates) {
  auto model = tiny_model("gpt2");
  // Freeze the position embeddings: no gradient, no optimizer state.
  auto wpe = model->named_parameters()["transformer.wpe.weight"];
  wpe.set_requires_grad(false);
  const auto plan = remat::estimate_memory_plan(*model, args_with_batch(2), 16, torch::kCPU);
  // GPT-2 ties the LM head to wte: counted once.
  int64_t total = 0;
  for (const auto& p : model->parameters()) total += p.numel();
  EXPECT_EQ(plan.parameters, total);
  EXPECT_EQ(plan.trainable_parameters, total - wpe.numel());
  EXPECT_DOUBLE_EQ(plan.weights_mib, 4.0 * static_cast<double>(total) / kMiB);
  EXPECT_DOUBLE_EQ(plan.gradients_mib, 4.0 * static_cast<double>(total - wpe.numel()) / kMiB);
  EXPECT_DOUBLE_EQ(plan.optimizer_mib, 8.0 * static_cast<double>(total - wpe.numel()) / kMiB);
  EXPECT_EQ(plan.device, "cpu");
  EXPECT_EQ(plan.batch_size, 2);
  EXPECT_EQ(plan.seq_len, 16);
  EXPECT_GT(plan.device_memory_mib, 64.0);
}

TEST(MemoryPlan, ActivationsScaleWithTheBatchAndBf16HalvesTheMatmulPart) {
  auto model = tiny_model("gpt2");
  const auto one = remat::estimate_memory_plan(*model, args_with_batch(1), 64, torch::kCPU);
  const auto four = remat::estimate_memory_plan(*model, args_with_batch(4), 64, torch::kCPU);
  // Bytes per token times the tokens, over 2^20: scaling the batch by 4 (a
  // power of two) commutes with every rounding, so the two are equal exactly.
  EXPECT_EQ(*four.activations_mib, 4 * *one.activations_mib);
  EXPECT_EQ(*four.activations_checkpointed_mib, 4 * *one.activations_checkpointed_mib);
  EXPECT_LT(*one.activations_checkpointed_mib, *one.activations_mib);
  auto bf16 = args_with_batch(1);
  bf16.bf16 = true;
  const auto half = remat::estimate_memory_plan(*model, bf16, 64, torch::kCPU);
  // The residual stream stays float32 under autocast: less, but not half.
  EXPECT_LT(*half.layer_activations_mib, *one.layer_activations_mib * 0.75);
  EXPECT_GT(*half.layer_activations_mib, *one.layer_activations_mib * 0.5);
  EXPECT_EQ(*half.layer_checkpointed_mib, *one.layer_checkpointed_mib);
  // The largest batch is what fits next to the model states.
  const double room = one.device_memory_mib - one.model_state_mib();
  EXPECT_EQ(*one.max_batch_size, static_cast<int64_t>(room / *one.activations_mib));
  EXPECT_EQ(*one.max_batch_size_checkpointed,
            static_cast<int64_t>(room / *one.activations_checkpointed_mib));
  EXPECT_GT(*one.max_batch_size_checkpointed, *one.max_batch_size);
}

TEST(MemoryPlan, OtherModulesHaveUnknownActivations) {
  torch::nn::Linear linear(10, 5);
  const auto plan =
      remat::estimate_memory_plan(*linear, remat::TrainingArguments(), 8, torch::kCPU);
  EXPECT_EQ(plan.parameters, 55);
  EXPECT_FALSE(plan.activations_mib.has_value());
  EXPECT_FALSE(plan.max_batch_size.has_value());
  ASSERT_THROWS_WITH(
      remat::estimate_memory_plan(*linear, remat::TrainingArguments(), 0, torch::kCPU),
      "seq_len must be at least 1, got 0");
}

// The estimate against the real peak of a forward and backward on the CPU:
// within a factor of 2 either way, with and without checkpointing, for both
// model families; and checkpointing lowers both.
class MemoryPlanMeasured : public ::testing::TestWithParam<std::string> {};

TEST_P(MemoryPlanMeasured, EstimateIsWithinAFactorOfTwoOfTheCpuPeak) {
  constexpr int64_t kBatch = 4, kSeq = 128;
  auto model = tiny_model(GetParam());
  const auto plan = remat::estimate_memory_plan(*model, args_with_batch(kBatch), kSeq, torch::kCPU);
  const double off = static_cast<double>(measure_cpu_peak(*model, kBatch, kSeq, false)) / kMiB;
  const double on = static_cast<double>(measure_cpu_peak(*model, kBatch, kSeq, true)) / kMiB;
  const double estimate_off = *plan.activations_mib + plan.gradients_mib;
  const double estimate_on = *plan.activations_checkpointed_mib + plan.gradients_mib;
  std::cout << GetParam() << ": measured peak " << off << " MiB off, " << on
            << " MiB on; estimated " << estimate_off << " / " << estimate_on << "\n";
  EXPECT_LT(on, off);
  EXPECT_LT(estimate_on, estimate_off);
  EXPECT_GT(estimate_off, 0.5 * off);
  EXPECT_LT(estimate_off, 2.0 * off);
  EXPECT_GT(estimate_on, 0.5 * on);
  EXPECT_LT(estimate_on, 2.0 * on);
}

INSTANTIATE_TEST_SUITE_P(Models, MemoryPlanMeasured, ::testing::Values("gpt2", "llama"));

TEST(MemoryPlanCuda, EstimateIsWithinAFactorOfTwoOfTheCudaPeak) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const torch::Device device(torch::kCUDA, 0);
  constexpr int64_t kBatch = 16, kSeq = 128;
  for (const std::string type : {"gpt2", "llama"}) {
    auto model = tiny_model(type);
    model->to(device);
    model->train();
    const auto plan = remat::estimate_memory_plan(*model, args_with_batch(kBatch), kSeq, device);
    EXPECT_GT(plan.device_memory_mib, 1024.0);
    double peak[2] = {0, 0};
    // A first pass allocates what stays (cuBLAS workspaces, the CUDA
    // context's scratch), so the measured passes see only the step's memory.
    for (bool checkpointing : {false, false, true}) {
      if (checkpointing) {
        model->gradient_checkpointing_enable();
      } else {
        model->gradient_checkpointing_disable();
      }
      for (auto& p : model->parameters()) p.mutable_grad() = torch::Tensor();
      remat::models::CausalLMInputs in;
      in.input_ids = torch::randint(model->config().vocab_size, {kBatch, kSeq},
                                    torch::TensorOptions().device(device).dtype(torch::kLong));
      in.labels = in.input_ids;
      torch::cuda::synchronize();
      const auto before = remat::memory_allocated(device);
      remat::reset_peak_memory_stats(device);
      model->forward(in).loss.backward();
      torch::cuda::synchronize();
      peak[checkpointing] =
          static_cast<double>(remat::max_memory_allocated(device) - before) / kMiB;
    }
    const double estimate_off = *plan.activations_mib + plan.gradients_mib;
    const double estimate_on = *plan.activations_checkpointed_mib + plan.gradients_mib;
    std::cout << type << ": measured peak " << peak[0] << " MiB off, " << peak[1]
              << " MiB on; estimated " << estimate_off << " / " << estimate_on << "\n";
    EXPECT_LT(peak[1], peak[0]) << type;
    EXPECT_GT(estimate_off, 0.5 * peak[0]) << type;
    EXPECT_LT(estimate_off, 2.0 * peak[0]) << type;
    EXPECT_GT(estimate_on, 0.5 * peak[1]) << type;
    EXPECT_LT(estimate_on, 2.0 * peak[1]) << type;
  }
}

TEST(StartupTable, ListsChangedArgumentsCountsDeviceDtypeAndThePlan) {
  auto model = tiny_model("gpt2");
  auto args = args_with_batch(4);
  args.learning_rate = 3e-4;
  args.gradient_checkpointing = true;
  args.output_dir = "runs/tiny";
  args.lr_scheduler_kwargs = {{"num_cycles", 0.5}, {"a_long_key_that_wraps", std::string(60, 'x')}};
  const auto plan = remat::estimate_memory_plan(*model, args, 128, torch::kCPU);
  const auto table = remat::startup_table(*model, args, torch::kCPU, plan);
  std::cout << table;
  auto has_row = [&](const std::string& key, const std::string& value) {
    const auto at = table.find("| " + key + " ");
    if (at == std::string::npos) return false;
    const auto line = table.substr(at, table.find('\n', at) - at);
    return line.find("| " + value + " ") != std::string::npos;
  };
  EXPECT_TRUE(has_row("device", "cpu")) << table;
  EXPECT_TRUE(has_row("dtype", "float32")) << table;
  // 4 layers of 12*64^2 + 13*64 weights, embeddings 256*64 + 128*64, ln_f 2*64.
  const int64_t params = 4 * (12 * 64 * 64 + 13 * 64) + 256 * 64 + 128 * 64 + 2 * 64;
  ASSERT_EQ(plan.parameters, params);
  EXPECT_TRUE(has_row("parameters", "224,640")) << table;
  EXPECT_TRUE(has_row("trainable parameters", "224,640")) << table;
  EXPECT_TRUE(has_row("learning_rate", "0.0003")) << table;
  EXPECT_TRUE(has_row("per_device_train_batch_size", "4")) << table;
  EXPECT_TRUE(has_row("gradient_checkpointing", "true")) << table;
  EXPECT_TRUE(has_row("output_dir", "runs/tiny")) << table;
  EXPECT_EQ(table.find("adam_beta1"), std::string::npos) << "defaults are left out";
  EXPECT_TRUE(has_row("weights", fmt::format("{:.1f}", plan.weights_mib))) << table;
  EXPECT_TRUE(has_row("AdamW state", fmt::format("{:.1f}", plan.optimizer_mib))) << table;
  EXPECT_TRUE(has_row("activations, 4 x 128 tokens",
                      fmt::format("{:.1f} (checkpointed: {:.1f})", *plan.activations_mib,
                                  *plan.activations_checkpointed_mib)))
      << table;
  EXPECT_TRUE(
      has_row("max batch per device", fmt::format("{} (checkpointed: {})", *plan.max_batch_size,
                                                  *plan.max_batch_size_checkpointed)))
      << table;
  // Every line has the same width.
  size_t start = 0, width = table.find('\n');
  while (start < table.size()) {
    const auto end = table.find('\n', start);
    EXPECT_EQ(end - start, width) << table.substr(start, end - start);
    start = end + 1;
  }
}

TEST(StartupTable, SaysWhenAllArgumentsAreDefaultsAndActivationsUnknown) {
  torch::nn::Linear linear(4, 4);
  remat::TrainingArguments args;
  const auto plan = remat::estimate_memory_plan(*linear, args, 8, torch::kCPU);
  const auto table = remat::startup_table(*linear, args, torch::kCPU, plan);
  EXPECT_NE(table.find("(all defaults)"), std::string::npos) << table;
  EXPECT_NE(table.find("unknown (not a remat causal LM)"), std::string::npos) << table;
}

}  // namespace

TEST(CpuMemoryScope, CountsEveryAllocationAndFreeOfItsThread) {
  constexpr int64_t kBytes = 4 << 20;
  auto outside = torch::empty({kBytes}, torch::kUInt8);
  remat::CpuMemoryScope scope;
  EXPECT_EQ(scope.current(), 0);
  {
    auto a = torch::empty({kBytes}, torch::kUInt8);
    auto b = torch::empty({kBytes}, torch::kUInt8);
    EXPECT_EQ(scope.current(), 2 * kBytes);
  }
  EXPECT_EQ(scope.current(), 0);
  EXPECT_EQ(scope.peak(), 2 * kBytes);
  scope.reset_peak();
  EXPECT_EQ(scope.peak(), 0);
  // Freeing a tensor allocated before the scope does not count.
  outside.reset();
  EXPECT_EQ(scope.current(), 0);
  // Another thread's allocations are not this scope's.
  std::thread([&] { auto t = torch::empty({kBytes}, torch::kUInt8); }).join();
  EXPECT_EQ(scope.current(), 0);
  EXPECT_EQ(scope.peak(), 0);
}
