// The transformers parity checks of tests/models on CUDA: fp32 with tight
// tolerances, bf16 with the tolerances stated below. Skipped without CUDA.

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>

#include "remat/io/safetensors.h"
#include "remat/models/causal_lm.h"
#include "support.h"

namespace fs = std::filesystem;
using remat::models::AutoModelForCausalLM;
using remat::models::CausalLMInputs;

namespace {

// Max |got - want| relative to max |want|.
double relative_error(const torch::Tensor& got, const torch::Tensor& want) {
  auto diff = (got.cpu().to(torch::kDouble) - want.to(torch::kDouble)).abs().max().item<double>();
  return diff / std::max(want.abs().max().item<double>(), 1e-12);
}

// The forward's chain of roundings (support.h's transformer_chain) for the
// model's config and these inputs, as tests/models/causal_lm_test.cpp.
int64_t forward_chain(const remat::models::CausalLMImpl& model, const torch::Tensor& ids) {
  const auto& c = model.config();
  const int64_t head_dim = c.head_dim > 0 ? c.head_dim : c.hidden_size / c.num_attention_heads;
  return remat::test::transformer_chain(c.num_hidden_layers, c.hidden_size, c.intermediate_size,
                                        head_dim, ids.size(1), c.vocab_size, ids.numel());
}

class CudaModelParityTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    const char* root = std::getenv("REMAT_ORACLE_DIR");
    dir = (fs::path(root ? root : "oracle") / "models" / GetParam()).string();
    ref = remat::io::load_file((fs::path(dir) / "reference.safetensors").string());
  }
  std::shared_ptr<remat::models::CausalLMImpl> load(torch::Dtype dtype) {
    remat::models::FromPretrainedOptions options;
    options.device = torch::kCUDA;
    options.dtype = dtype;
    return AutoModelForCausalLM::from_pretrained(dir, options);
  }
  std::string dir;
  std::map<std::string, torch::Tensor> ref;
};

TEST_P(CudaModelParityTest, Fp32LogitsLossAndGradients) {
  auto model = load(torch::kFloat);
  model->train();
  model->gradient_checkpointing_enable();
  CausalLMInputs in;
  in.input_ids = ref.at("input_ids").cuda();
  {
    torch::NoGradGuard no_grad;
    const double logits_error = relative_error(model->forward(in).logits, ref.at("logits"));
    RecordProperty("fp32_logits_rel_error", std::to_string(logits_error));
    // Float32 in other kernels' orders than transformers' on the CPU:
    // 2 gamma_chain relative to max |logit|.
    EXPECT_LE(logits_error,
              remat::test::reduction_tolerance(forward_chain(*model, in.input_ids), 1.0));
  }
  // With labels the loss is computed chunk by chunk, without logits.
  in.labels = ref.at("labels").cuda();
  auto out = model->forward(in);
  EXPECT_FALSE(out.logits.defined());
  // The loss over the same chain (the chunked path only reorders the head's
  // sums within it).
  const int64_t chain = forward_chain(*model, in.input_ids);
  EXPECT_LE(relative_error(out.loss.reshape(1), ref.at("loss")),
            remat::test::reduction_tolerance(chain, 1.0));
  out.loss.backward();
  double worst = 0;
  for (const auto& item : model->named_parameters()) {
    worst = std::max(worst, relative_error(item.value().grad(), ref.at("grad." + item.key())));
  }
  RecordProperty("fp32_grad_rel_error", std::to_string(worst));
  // A gradient's chain is twice the forward's.
  EXPECT_LE(worst, remat::test::reduction_tolerance(2 * chain, 1.0));
}

TEST_P(CudaModelParityTest, Fp32GreedyGenerate) {
  auto model = load(torch::kFloat);
  model->eval();
  remat::models::GenerationConfig g;
  g.max_new_tokens = 8;
  g.pad_token_id = 0;
  g.eos_token_ids = std::vector<int64_t>{2};
  auto out = model->generate(ref.at("generate.input_ids").cuda(), g,
                             ref.at("generate.attention_mask").cuda());
  EXPECT_TRUE(torch::equal(out.cpu(), ref.at("generate.output")));
}

TEST_P(CudaModelParityTest, Bf16Logits) {
  // Every op rounds to bf16: 3 roundings per matmul on the path (6 a layer,
  // plus the head) and, per layer, the two norms' outputs and statistics (4),
  // the two residual adds, the activation and the softmax (4); then the final
  // norm (2). gamma_k(bf16) relative to max |logit| (the float32 reference's
  // own error is 2^16 times smaller).
  auto model = load(torch::kBFloat16);
  model->eval();
  torch::NoGradGuard no_grad;
  CausalLMInputs in;
  in.input_ids = ref.at("input_ids").cuda();
  auto logits = model->forward(in).logits;
  ASSERT_EQ(logits.scalar_type(), torch::kBFloat16);
  const double error = relative_error(logits.to(torch::kFloat), ref.at("logits"));
  RecordProperty("bf16_logits_rel_error", std::to_string(error));
  std::cout << GetParam() << ": bf16 logits relative error " << error << "\n";
  const int64_t layers = model->config().num_hidden_layers;
  EXPECT_LE(error,
            remat::test::reduction_gamma(3 * (6 * layers + 1) + 8 * layers + 2, torch::kBFloat16));
}

INSTANTIATE_TEST_SUITE_P(Transformers, CudaModelParityTest,
                         ::testing::Values("gpt2_tied", "gpt2_untied", "llama_gqa",
                                           "llama_linear_bias_tied", "llama_dynamic",
                                           "llama3_head_dim", "qwen2"));

}  // namespace
