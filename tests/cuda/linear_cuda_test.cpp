// remat::nn::linear under CUDA autocast (bf16 and fp16) with float32
// weights: the forward and the gradient of x bitwise those of the plain
// autocast code (torch::nn::functional::linear, GPT-2's addmm on the rows),
// the weight and bias gradients in float32 and closer to the float64
// reference than the plain path's; the custom autograd node really runs; a
// weight read twice in one autocast region is cast once; composition with
// remat::checkpoint and checkpoint_without_output; double backward; the
// plain path everywhere else; GPT-2 and Llama training steps under bf16
// autocast with each checkpointing policy. Skipped without CUDA.

#include "remat/nn/linear.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <optional>
#include <string>
#include <vector>

#include "remat/checkpoint.h"
#include "remat/memory.h"
#include "remat/models/causal_lm.h"
#include "support.h"

namespace {

using remat::nn::WeightLayout;
using remat::test::bitwise_equal;
using torch::Tensor;

const auto kCuda = torch::TensorOptions().device(torch::kCUDA);

// CUDA autocast to `dtype` for its lifetime, entered and left as
// torch.autocast does (the cast cache is cleared when the outermost ends).
class CudaAutocast {
 public:
  explicit CudaAutocast(torch::Dtype dtype) {
    at::autocast::set_autocast_dtype(c10::DeviceType::CUDA, dtype);
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, true);
    at::autocast::increment_nesting();
  }
  ~CudaAutocast() {
    if (at::autocast::decrement_nesting() == 0) at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(c10::DeviceType::CUDA, false);
  }
  CudaAutocast(const CudaAutocast&) = delete;
  CudaAutocast& operator=(const CudaAutocast&) = delete;
};

// The code the models ran before.
Tensor plain(const Tensor& x, const Tensor& weight, const Tensor& bias, WeightLayout layout) {
  if (layout == WeightLayout::kOutIn) return torch::nn::functional::linear(x, weight, bias);
  auto shape = x.sizes().vec();
  shape.back() = weight.size(1);
  const auto rows = x.reshape({-1, x.size(-1)});
  return (bias.defined() ? torch::addmm(bias, rows, weight) : torch::mm(rows, weight)).view(shape);
}

// Whether y comes out of linear()'s own autograd node (directly, or through
// the view that restores the leading dimensions).
bool through_custom_node(const Tensor& y) {
  auto fn = y.grad_fn();
  for (int depth = 0; fn && depth < 2; ++depth) {
    if (fn->name().find("AutocastLinearFunction") != std::string::npos) return true;
    if (fn->num_outputs() == 0) break;
    fn = fn->next_edge(0).function;
  }
  return false;
}

std::string node_name(const Tensor& y) {
  return y.grad_fn() ? y.grad_fn()->name() : std::string("(no grad_fn)");
}

// max |got - want| / max |want|, in float64.
double relative_error(const Tensor& got, const Tensor& want) {
  const auto g = got.detach().to(torch::kDouble), w = want.detach().to(torch::kDouble);
  return (g - w).abs().max().item<double>() / std::max(w.abs().max().item<double>(), 1e-300);
}

// Fresh leaves holding the same values: x, weight and (optionally) bias.
struct Leaves {
  Tensor x, w, b;
};
Leaves copy_of(const Tensor& x, const Tensor& w, const Tensor& b) {
  return {x.clone().requires_grad_(), w.clone().requires_grad_(),
          b.defined() ? b.clone().requires_grad_() : Tensor()};
}

class LinearCudaTest : public ::testing::TestWithParam<torch::Dtype> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    torch::manual_seed(0);
  }
  torch::Dtype dtype() const { return GetParam(); }
  const torch::Device cuda{torch::kCUDA, 0};
};

struct Case {
  std::vector<int64_t> x_shape;  // [..., in]
  bool bias;
  WeightLayout layout;
  std::string name;
};

std::vector<Case> cases() {
  return {{{4, 64, 96}, false, WeightLayout::kOutIn, "Linear 3-D, no bias"},
          {{4, 64, 96}, true, WeightLayout::kOutIn, "Linear 3-D, bias"},
          {{256, 96}, true, WeightLayout::kOutIn, "Linear matrix, bias"},
          {{256, 96}, false, WeightLayout::kOutIn, "Linear matrix, no bias"},
          {{4, 64, 96}, true, WeightLayout::kInOut, "Conv1D 3-D, bias"},
          {{256, 96}, false, WeightLayout::kInOut, "Conv1D matrix, no bias"}};
}

// For each layout and shape, x in float32 (GPT-2's LayerNorm output) and in
// the autocast dtype (Llama's cast input): linear() against the plain code
// on copies of the same leaves, the gradient of the output the same random
// tensor in the autocast dtype.
TEST_P(LinearCudaTest, MatchesPlainAutocastWithFloat32WeightGradients) {
  const int64_t out = 80;
  for (const auto& c : cases()) {
    for (auto x_dtype : {torch::kFloat, dtype()}) {
      SCOPED_TRACE(c.name + ", x " + c10::toString(x_dtype));
      const int64_t in = c.x_shape.back();
      const auto x0 = torch::randn(c.x_shape, kCuda).to(x_dtype);
      const auto w0 = 0.1 * (c.layout == WeightLayout::kOutIn ? torch::randn({out, in}, kCuda)
                                                              : torch::randn({in, out}, kCuda));
      const auto b0 = c.bias ? torch::randn({out}, kCuda) : Tensor();
      auto ref = copy_of(x0, w0, b0), mine = copy_of(x0, w0, b0);
      Tensor y_ref, y;
      {
        CudaAutocast autocast(dtype());
        y_ref = plain(ref.x, ref.w, ref.b, c.layout);
        y = remat::nn::linear(mine.x, mine.w, mine.b, c.layout);
      }
      EXPECT_TRUE(through_custom_node(y)) << node_name(y);
      ASSERT_EQ(y.scalar_type(), dtype());
      EXPECT_TRUE(bitwise_equal(y, y_ref)) << "forward";

      const auto g = torch::randn(y.sizes(), kCuda.dtype(dtype()));
      y_ref.backward(g);
      y.backward(g);
      ASSERT_EQ(mine.x.grad().scalar_type(), x_dtype);
      EXPECT_TRUE(bitwise_equal(mine.x.grad(), ref.x.grad())) << "gradient of x";

      // float64 references from the operands the GEMMs saw: x and the
      // gradient in the autocast dtype.
      const auto x2 = x0.to(dtype()).to(torch::kDouble).reshape({-1, in});
      const auto g2 = g.to(torch::kDouble).reshape({-1, out});
      const auto want_w = c.layout == WeightLayout::kOutIn ? g2.t().mm(x2) : x2.t().mm(g2);
      ASSERT_EQ(mine.w.grad().scalar_type(), torch::kFloat);
      const double err_w = relative_error(mine.w.grad(), want_w);
      const double err_w_plain = relative_error(ref.w.grad(), want_w);
      std::printf("%s, x %s: weight gradient error %.2e (plain %.2e)\n", c.name.c_str(),
                  c10::toString(x_dtype), err_w, err_w_plain);
      // The products of two 16-bit values are exact in float32: a float32
      // reduction over the rows (cuBLAS's order) within gamma_rows of
      // sum |g x| per element, relative to max |reference| (terms of its
      // scale, as the CPU audit takes them).
      const int64_t rows = x2.size(0);
      EXPECT_LE(err_w, remat::test::reduction_gamma(rows));
      EXPECT_LE(err_w, err_w_plain);
      if (c.bias) {
        const auto want_b = g2.sum(0);
        ASSERT_EQ(mine.b.grad().scalar_type(), torch::kFloat);
        const double err_b = relative_error(mine.b.grad(), want_b);
        // A float32 sum of the rows' gradients (exact 16-bit values).
        EXPECT_LE(err_b, remat::test::reduction_gamma(rows));
        EXPECT_LE(err_b, relative_error(ref.b.grad(), want_b));
      }
    }
  }
}

// Outside the cases it is for, linear() is the plain code: autocast off,
// a weight that needs no gradient, no grad mode.
TEST_P(LinearCudaTest, PlainPathElsewhere) {
  const auto x0 = torch::randn({2, 16, 32}, kCuda);
  const auto w0 = torch::randn({24, 32}, kCuda), b0 = torch::randn({24}, kCuda);
  {
    SCOPED_TRACE("autocast off");
    auto ref = copy_of(x0, w0, b0), mine = copy_of(x0, w0, b0);
    auto y = remat::nn::linear(mine.x, mine.w, mine.b);
    auto y_ref = plain(ref.x, ref.w, ref.b, WeightLayout::kOutIn);
    EXPECT_FALSE(through_custom_node(y)) << node_name(y);
    EXPECT_TRUE(bitwise_equal(y, y_ref));
    const auto g = torch::randn(y.sizes(), kCuda);
    y.backward(g);
    y_ref.backward(g);
    EXPECT_TRUE(bitwise_equal(mine.x.grad(), ref.x.grad()));
    EXPECT_TRUE(bitwise_equal(mine.w.grad(), ref.w.grad()));
    EXPECT_TRUE(bitwise_equal(mine.b.grad(), ref.b.grad()));
  }
  {
    SCOPED_TRACE("frozen weight");
    const auto x = x0.clone().requires_grad_();
    CudaAutocast autocast(dtype());
    auto y = remat::nn::linear(x, w0, b0);
    EXPECT_FALSE(through_custom_node(y)) << node_name(y);
    EXPECT_TRUE(bitwise_equal(y, plain(x, w0, b0, WeightLayout::kOutIn)));
  }
  {
    SCOPED_TRACE("no grad mode");
    const auto w = w0.clone().requires_grad_();
    torch::NoGradGuard no_grad;
    CudaAutocast autocast(dtype());
    EXPECT_TRUE(
        bitwise_equal(remat::nn::linear(x0, w, b0), plain(x0, w, b0, WeightLayout::kOutIn)));
  }
}

// Two projections of one weight in one autocast region hold one
// low-precision copy of it (autocast's cast cache), and its gradient sums
// both in float32.
TEST_P(LinearCudaTest, AWeightReadTwiceIsCastOnce) {
  const int64_t in = 1024, out = 1024, rows = 8;
  const auto w = (0.02 * torch::randn({out, in}, kCuda)).requires_grad_();
  const auto x1 = torch::randn({rows, in}, kCuda.dtype(dtype())).requires_grad_();
  const auto x2 = torch::randn({rows, in}, kCuda.dtype(dtype())).requires_grad_();
  {
    // The first GEMMs of the process allocate cuBLAS's workspace: not here.
    CudaAutocast autocast(dtype());
    (void)remat::nn::linear(x1, w);
  }
  Tensor y1, y2;
  int64_t held = 0;
  {
    CudaAutocast autocast(dtype());
    const auto before = remat::memory_allocated(cuda);
    y1 = remat::nn::linear(x1, w);
    y2 = remat::nn::linear(x2, w);
    held = remat::memory_allocated(cuda) - before;
    EXPECT_TRUE(through_custom_node(y1)) << node_name(y1);
    EXPECT_TRUE(bitwise_equal(y1, plain(x1, w, {}, WeightLayout::kOutIn)));
    EXPECT_TRUE(bitwise_equal(y2, plain(x2, w, {}, WeightLayout::kOutIn)));
  }
  const int64_t copy = out * in * 2, outputs = 2 * rows * out * 2;
  std::printf("held by the two projections: %lld bytes (one weight copy: %lld)\n",
              static_cast<long long>(held), static_cast<long long>(copy));
  EXPECT_GE(held, copy + outputs);
  EXPECT_LT(held, copy + copy / 2 + outputs);

  const auto g1 = torch::randn(y1.sizes(), kCuda.dtype(dtype()));
  const auto g2 = torch::randn(y2.sizes(), kCuda.dtype(dtype()));
  torch::autograd::backward({y1, y2}, {g1, g2});
  auto f64 = [](const Tensor& t) { return t.detach().to(torch::kDouble); };
  const auto want = f64(g1).t().mm(f64(x1)) + f64(g2).t().mm(f64(x2));
  ASSERT_EQ(w.grad().scalar_type(), torch::kFloat);
  // Two float32 GEMMs over 8 rows of exact 16-bit products, then their sum:
  // gamma_(rows + 1) relative to the reference's scale.
  EXPECT_LE(relative_error(w.grad(), want), remat::test::reduction_gamma(rows + 1));
}

// A region of linear + GELU, its bf16 output consumed by a second linear:
// plainly, under remat::checkpoint, and under checkpoint_without_output (the
// consumer keeps the region's output itself, whose memory is then freed, not
// a copy). Gradients bitwise equal: the replay runs the same code under the
// restored autocast state.
TEST_P(LinearCudaTest, ComposesWithCheckpointAndCheckpointWithoutOutput) {
  const int64_t d = 256, hidden = 1024;
  const auto x = torch::randn({8, 512, d}, kCuda).requires_grad_();
  const auto w1 = (0.05 * torch::randn({hidden, d}, kCuda)).requires_grad_();
  const auto b1 = (0.1 * torch::randn({hidden}, kCuda)).requires_grad_();
  const auto w2 = (0.05 * torch::randn({d, hidden}, kCuda)).requires_grad_();
  const auto g = torch::randn({8, 512, d}, kCuda.dtype(dtype()));
  const remat::RegionFn region = [&](const std::vector<Tensor>& in) {
    return std::vector<Tensor>{torch::gelu(remat::nn::linear(in[0], w1, b1))};
  };
  const remat::RegionFn consumer = [&](const std::vector<Tensor>& h) {
    return std::vector<Tensor>{remat::nn::linear(h[0], w2)};
  };
  enum Mode { kPlain, kCheckpoint, kWithoutOutput };
  auto run = [&](Mode mode, int64_t* held) {
    const auto before = remat::memory_allocated(cuda);
    Tensor y;
    {
      CudaAutocast autocast(dtype());
      if (mode == kPlain) {
        y = consumer(region({x}))[0];
        EXPECT_TRUE(through_custom_node(y)) << node_name(y);
      } else if (mode == kCheckpoint) {
        y = consumer(remat::checkpoint(region, {x}, {w1, b1}))[0];
      } else {
        y = remat::checkpoint_without_output(region, {x}, {w1, b1}, consumer)[0];
      }
    }
    *held = remat::memory_allocated(cuda) - before;
    y.backward(g);
    std::vector<Tensor> grads;
    for (const auto& t : {x, w1, b1, w2}) {
      grads.push_back(t.grad().clone());
      t.mutable_grad() = Tensor();
    }
    return grads;
  };
  int64_t plain_held = 0, ckpt_held = 0, without_held = 0;
  const auto want = run(kPlain, &plain_held);
  const auto ckpt = run(kCheckpoint, &ckpt_held);
  const auto without = run(kWithoutOutput, &without_held);
  const char* names[] = {"x", "w1", "b1", "w2"};
  for (size_t i = 0; i < want.size(); ++i) {
    EXPECT_TRUE(bitwise_equal(ckpt[i], want[i])) << "checkpoint, gradient of " << names[i];
    EXPECT_TRUE(bitwise_equal(without[i], want[i]))
        << "checkpoint_without_output, gradient of " << names[i];
  }
  EXPECT_EQ(want[1].scalar_type(), torch::kFloat);
  // The region's output: 4096 x 1024 in the autocast dtype, 8 MiB. Kept
  // plainly (by the consumer and GELU's backward); under
  // checkpoint_without_output its memory is freed, and the consumer holds
  // no copy of it.
  const int64_t h_bytes = 8 * 512 * hidden * 2;
  std::printf("held after forward: plain %lld, checkpoint %lld, without output %lld bytes\n",
              static_cast<long long>(plain_held), static_cast<long long>(ckpt_held),
              static_cast<long long>(without_held));
  EXPECT_GE(plain_held, h_bytes);
  EXPECT_LT(without_held, h_bytes / 2);
}

// Double backward (create_graph) runs differentiable formulas: second-order
// gradients agree with the plain path's to the autocast dtype's rounding.
TEST_P(LinearCudaTest, DoubleBackward) {
  // Both paths round to the autocast dtype at the first gradient's GEMM
  // output, at the second GEMMs' inputs (the squares' gradients) and at
  // their outputs: 3 roundings each, possibly at other points, so 2 gamma_3
  // apart (2.4e-2 bf16, 2.9e-3 fp16); their float32 sums over 64 rows, 48 and
  // 40 features add 2 gamma_(64 + 48 + 40).
  const double tol = remat::test::reduction_tolerance(3, 1.0, dtype()) +
                     remat::test::reduction_tolerance(64 + 48 + 40, 1.0);
  const auto x0 = torch::randn({64, 48}, kCuda);
  const auto w0 = 0.1 * torch::randn({40, 48}, kCuda), b0 = torch::randn({40}, kCuda);
  const auto g = torch::randn({64, 40}, kCuda.dtype(dtype()));
  for (auto layout : {WeightLayout::kOutIn, WeightLayout::kInOut}) {
    SCOPED_TRACE(layout == WeightLayout::kOutIn ? "Linear" : "Conv1D");
    const auto w_init = layout == WeightLayout::kOutIn ? w0 : w0.t().contiguous();
    auto second_order = [&](bool mine) {
      auto l = copy_of(x0, w_init, b0);
      Tensor y;
      {
        CudaAutocast autocast(dtype());
        y = mine ? remat::nn::linear(l.x, l.w, l.b, layout) : plain(l.x, l.w, l.b, layout);
      }
      if (mine) EXPECT_TRUE(through_custom_node(y)) << node_name(y);
      auto first = torch::autograd::grad({y}, {l.x, l.w}, {g}, /*retain_graph=*/true,
                                         /*create_graph=*/true);
      (first[0].to(torch::kFloat).square().sum() + first[1].to(torch::kFloat).square().sum())
          .backward();
      return std::vector<Tensor>{l.x.grad(), l.w.grad()};
    };
    const auto want = second_order(false), got = second_order(true);
    ASSERT_TRUE(got[0].defined() && got[1].defined());
    EXPECT_LE(relative_error(got[0], want[0]), tol) << "x";
    EXPECT_LE(relative_error(got[1], want[1]), tol) << "weight";
  }
}

// ---- The models ---------------------------------------------------------------

class LinearModelsCudaTest : public ::testing::TestWithParam<std::string> {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
    torch::manual_seed(0);
  }
};

// GPT-2 (Conv1D projections with biases) and Llama with attention and MLP
// biases (projections through remat::nn::linear, float32 bias added after
// the GEMM on 3-D inputs), float32 weights: a bf16 autocast step on CUDA
// with each checkpointing policy against the float32 model on the CPU. Loss
// and gradients within bf16's few percent; every gradient float32.
TEST_P(LinearModelsCudaTest, Bf16AutocastStepWithEveryCheckpointingPolicy) {
  using remat::nn::GradientCheckpointingOptions;
  using remat::nn::Granularity;
  const nlohmann::json j =
      GetParam() == "gpt2"
          ? nlohmann::json{{"model_type", "gpt2"}, {"vocab_size", 256}, {"n_positions", 64},
                           {"n_embd", 128},        {"n_layer", 2},      {"n_head", 4},
                           {"resid_pdrop", 0.0},   {"embd_pdrop", 0.0}, {"attn_pdrop", 0.0}}
          : nlohmann::json{{"model_type", "llama"},
                           {"hidden_size", 128},
                           {"num_attention_heads", 4},
                           {"num_key_value_heads", 2},
                           {"intermediate_size", 344},
                           {"num_hidden_layers", 2},
                           {"vocab_size", 256},
                           {"max_position_embeddings", 128},
                           {"attention_bias", true},
                           {"mlp_bias", true},
                           {"tie_word_embeddings", false},
                           {"rms_norm_eps", 1e-6}};
  const auto config = remat::models::ModelConfig::from_json(j);
  auto cpu = remat::models::AutoModelForCausalLM::from_config(config);
  {
    // Weights at a scale that makes every block matter.
    torch::NoGradGuard no_grad;
    for (auto& item : cpu->named_parameters()) {
      auto& p = item.value();
      const bool norm = item.key().find("ln_") != std::string::npos ||
                        item.key().find("norm") != std::string::npos;
      if (p.dim() == 1) {
        p.copy_((norm ? 1.0 : 0.0) + 0.1 * torch::randn_like(p));
      } else {
        p.normal_(0.0, 0.05);
      }
    }
  }
  remat::models::CausalLMInputs in;
  in.input_ids = torch::randint(0, 256, {2, 48}, torch::kLong);
  in.labels = in.input_ids;
  cpu->train();
  const auto cpu_loss = cpu->forward(in).loss;
  cpu_loss.backward();
  auto cpu_params = cpu->named_parameters();

  const std::vector<std::pair<std::string, std::optional<GradientCheckpointingOptions>>> policies{
      {"none", std::nullopt},
      {"block", GradientCheckpointingOptions()},
      {"attention", GradientCheckpointingOptions().granularity(Granularity::kAttention)},
      {"mlp up", GradientCheckpointingOptions().granularity(Granularity::kMlpUp)}};
  for (const auto& [name, options] : policies) {
    SCOPED_TRACE(name);
    remat::models::FromPretrainedOptions to_cuda;
    to_cuda.device = torch::kCUDA;
    auto model = remat::models::AutoModelForCausalLM::from_config(config, to_cuda);
    {
      torch::NoGradGuard no_grad;
      for (auto& item : model->named_parameters()) item.value().copy_(cpu_params[item.key()]);
    }
    model->train();
    if (options) model->gradient_checkpointing_enable(*options);
    remat::models::CausalLMInputs cin;
    cin.input_ids = in.input_ids.cuda();
    cin.labels = in.input_ids.cuda();
    Tensor loss;
    {
      CudaAutocast autocast(torch::kBFloat16);
      loss = model->forward(cin).loss;
    }
    loss.backward();
    // 6 matmuls a layer on the path (q/k/v, scores, values, output, two
    // MLP) in 2 layers, plus the head, 3 bf16 roundings each: gamma_39(bf16)
    // = 0.18 relative; a gradient's chain is twice that (gamma_78 = 0.44,
    // relative to its largest element).
    constexpr int64_t kPathMatmuls = 6 * 2 + 1;
    EXPECT_LE(relative_error(loss.cpu().reshape(1), cpu_loss.reshape(1)),
              remat::test::autocast_loss_tolerance(kPathMatmuls, 1.0, torch::kBFloat16));
    double worst = 0;
    for (const auto& item : model->named_parameters()) {
      const auto& grad = item.value().grad();
      ASSERT_TRUE(grad.defined()) << item.key();
      ASSERT_EQ(grad.scalar_type(), torch::kFloat) << item.key();
      const double err = relative_error(grad.cpu(), cpu_params[item.key()].grad());
      EXPECT_LE(err, remat::test::autocast_loss_tolerance(2 * kPathMatmuls, 1.0, torch::kBFloat16))
          << item.key();
      worst = std::max(worst, err);
    }
    std::printf("%s, %s: worst gradient relative error %.3e\n", GetParam().c_str(), name.c_str(),
                worst);
  }
}

INSTANTIATE_TEST_SUITE_P(Models, LinearModelsCudaTest, ::testing::Values("gpt2", "llama"));

INSTANTIATE_TEST_SUITE_P(Dtypes, LinearCudaTest, ::testing::Values(torch::kBFloat16, torch::kHalf),
                         [](const auto& info) { return std::string(c10::toString(info.param)); });

}  // namespace
