// AdamW with Hugging Face's parameter groups, against the adamw oracle: the
// same tiny model in Python, grouped by Trainer.get_decay_parameter_names and
// trained three steps with torch.optim.AdamW (plain and fused).

#include "remat/optim/adamw.h"

#include <gtest/gtest.h>

#include <sstream>

#include "oracle.h"
#include "support.h"

using remat::optim::adamw_implementation;
using remat::optim::AdamWImplementation;
using remat::optim::create_adamw;
using remat::optim::get_decay_parameter_names;
using remat::optim::get_parameter_groups;

namespace {

constexpr int64_t kVocab = 11, kDim = 8;

// An RMSNorm as Llama's: weight * x / rms(x).
struct RMSNormImpl : torch::nn::Module {
  explicit RMSNormImpl(int64_t dim) : weight(register_parameter("weight", torch::ones({dim}))) {}
  torch::Tensor forward(const torch::Tensor& x) {
    return weight * (x * torch::rsqrt(x.pow(2).mean(-1, /*keepdim=*/true) + 1e-6));
  }
  torch::Tensor weight;
};
TORCH_MODULE(RMSNorm);

struct BlockImpl : torch::nn::Module {
  BlockImpl()
      : input_layernorm(register_module("input_layernorm", RMSNorm(kDim))),
        attn(register_module("attn", torch::nn::Linear(kDim, kDim))),
        attn_norm(register_module("attn_norm", RMSNorm(kDim))),
        norm1(register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({kDim})))),
        up(register_module("up", torch::nn::Linear(kDim, 2 * kDim))),
        down(register_module(
            "down", torch::nn::Linear(torch::nn::LinearOptions(2 * kDim, kDim).bias(false)))),
        gate_scale(register_module("gate_scale", RMSNorm(kDim))) {}

  torch::Tensor forward(torch::Tensor h) {
    h = h + attn(attn_norm(input_layernorm(h)));
    h = norm1(h);
    return h + down(torch::gelu(up(h))) * gate_scale(h);
  }

  RMSNorm input_layernorm;
  torch::nn::Linear attn;
  RMSNorm attn_norm;
  torch::nn::LayerNorm norm1;
  torch::nn::Linear up, down;
  RMSNorm gate_scale;
};
TORCH_MODULE(Block);

// A head that reads a weight owned by another module (tied embeddings).
struct TiedHeadImpl : torch::nn::Module {
  explicit TiedHeadImpl(const torch::Tensor& tied) : weight(register_parameter("weight", tied)) {}
  torch::Tensor forward(const torch::Tensor& x) { return torch::linear(x, weight); }
  torch::Tensor weight;
};
TORCH_MODULE(TiedHead);

std::string implementation_name(AdamWImplementation implementation) {
  switch (implementation) {
    case AdamWImplementation::kForLoop:
      return "ForLoop";
    case AdamWImplementation::kForeach:
      return "Foreach";
    case AdamWImplementation::kFused:
      return "Fused";
  }
  return "?";
}

// The oracle's Tiny model, registered in the same order under the same names.
struct TinyImpl : torch::nn::Module {
  TinyImpl()
      : embed(register_module("embed", torch::nn::Embedding(kVocab, kDim))),
        pos(register_parameter("pos", torch::zeros({5, kDim}))),
        layers(register_module("layers", torch::nn::ModuleList(Block(), Block()))),
        frozen(register_module("frozen", torch::nn::Linear(kDim, kDim))),
        norm(register_module("norm", RMSNorm(kDim))),
        normal_head(register_module("normal_head", torch::nn::Linear(kDim, kDim))),
        lm_head(register_module("lm_head", TiedHead(embed->weight))) {
    for (auto& p : frozen->parameters()) p.set_requires_grad(false);
  }

  torch::Tensor forward(const torch::Tensor& ids) {
    auto h = embed(ids) + pos.slice(0, 0, ids.size(1));
    for (const auto& layer : *layers) h = layer->as<Block>()->forward(h);
    h = h + 0.5 * frozen(h);
    return lm_head(normal_head(norm(h)));
  }

  torch::nn::Embedding embed;
  torch::Tensor pos;
  torch::nn::ModuleList layers;
  torch::nn::Linear frozen;
  RMSNorm norm;
  torch::nn::Linear normal_head;
  TiedHead lm_head;
};
TORCH_MODULE(Tiny);

// Python lists the tied head weight once, under the embedding's name.
std::string python_name(const std::string& name) {
  return name == "lm_head.weight" ? "embed.weight" : name;
}

struct AdamWTest : remat::test::SeedingFixture {
  void SetUp() override {
    SeedingFixture::SetUp();
    dir = remat::test::oracle_dir("adamw");
    meta = remat::test::read_json(dir + "/groups.json");
    init = remat::test::read_tensors(dir, "init");
    torch::NoGradGuard no_grad;
    for (auto& param : model->named_parameters())
      param.value().copy_(init.at(python_name(param.key())));
  }

  torch::optim::AdamWOptions options() const {
    auto betas = meta["betas"].get<std::vector<double>>();
    return torch::optim::AdamWOptions(meta["lr"].get<double>())
        .betas({betas[0], betas[1]})
        .eps(meta["eps"].get<double>())
        .weight_decay(meta["weight_decay"].get<double>());
  }

  std::string dir;
  nlohmann::json meta;
  std::map<std::string, torch::Tensor> init;
  Tiny model;
};

// The name of each parameter tensor, first name wins (as Python's named_parameters).
std::map<const c10::TensorImpl*, std::string> names_of(const torch::nn::Module& model) {
  std::map<const c10::TensorImpl*, std::string> result;
  for (const auto& p : model.named_parameters()) {
    result.emplace(p.value().unsafeGetTensorImpl(), p.key());
  }
  return result;
}

// The oracle's batch (3 rows of 5 tokens) and steps.
constexpr int64_t kSeq = 5, kTokens = 3 * kSeq;

// The longest chain of float32 roundings behind the loss: per block the
// norms (2 x 2 kDim for the two RMSNorms, 2 kDim for the LayerNorm, kDim for
// gate_scale), the projections (kDim, kDim, 2 kDim), then the final norm, the
// two heads (2 kDim), the softmax (kVocab) and the mean over the tokens.
constexpr int64_t kForwardChain =
    2 * (4 * kDim + 2 * kDim + kDim + 4 * kDim) + 4 * kDim + kVocab + kTokens;
// A gradient's chain: the forward, then the same reductions backward.
constexpr int64_t kGradientChain = 2 * kForwardChain;
// Roundings of one AdamW step on one element (the moments, their bias
// corrections, the square root, the quotient, the decay and the update).
constexpr int64_t kStepRoundings = 12;

// Python and C++ may order the model's float32 sums differently. A
// gradient then differs by 2 gamma_chain relative to its terms (taken to be
// of the gradient's own scale). AdamW's update lr m/(sqrt(v)+eps) does not
// depend on the gradient's scale, so it moves by at most lr 2 gamma_chain per
// step (|m|/sqrt(v) <= 1 with these betas, to first order); the step's own
// roundings add 2 gamma_k |p| per step, k = kStepRoundings.
::testing::AssertionResult close(const torch::Tensor& actual, const torch::Tensor& expected,
                                 double lr, int64_t steps) {
  const double per_step = lr * remat::test::reduction_tolerance(kGradientChain, 1.0);
  const auto diff = (actual - expected).abs().to(torch::kDouble);
  const auto bound = static_cast<double>(steps) *
                     (per_step + remat::test::reduction_tolerance(kStepRoundings, 1.0) *
                                     expected.abs().to(torch::kDouble));
  if ((diff <= bound).all().item<bool>()) return ::testing::AssertionSuccess();
  return ::testing::AssertionFailure()
         << "max difference " << diff.max().item<double>() << ", over the bound by up to "
         << (diff - bound).max().item<double>();
}

}  // namespace

TEST_F(AdamWTest, DecayNamesMatchTransformers) {
  EXPECT_EQ(get_decay_parameter_names(*model), meta["decay"].get<std::vector<std::string>>());
}

TEST_F(AdamWTest, GroupsMatchTheTrainer) {
  auto groups = get_parameter_groups(*model, options());
  ASSERT_EQ(groups.size(), 2u);
  auto names = names_of(*model);
  for (size_t g = 0; g < 2; ++g) {
    std::vector<std::string> actual;
    for (const auto& p : groups[g].params()) actual.push_back(names.at(p.unsafeGetTensorImpl()));
    EXPECT_EQ(actual, meta["groups"][g].get<std::vector<std::string>>()) << "group " << g;
  }
  auto& decay = static_cast<torch::optim::AdamWOptions&>(groups[0].options());
  auto& no_decay = static_cast<torch::optim::AdamWOptions&>(groups[1].options());
  EXPECT_EQ(decay.weight_decay(), 0.1);
  EXPECT_EQ(no_decay.weight_decay(), 0.0);
  EXPECT_EQ(no_decay.lr(), 1e-3);
  EXPECT_EQ(std::get<1>(no_decay.betas()), 0.95);
}

struct AdamWImplementationTest : AdamWTest, ::testing::WithParamInterface<AdamWImplementation> {};

TEST_P(AdamWImplementationTest, ThreeStepsMatchTorchAdamW) {
  auto steps = remat::test::read_tensors(dir, "steps");
  auto fused = remat::test::read_tensors(dir, "fused");
  auto ids = init.at("input_ids"), targets = init.at("targets");
  auto optimizer = create_adamw(*model, options(), GetParam());
  EXPECT_EQ(optimizer.implementation(), GetParam());
  for (int step = 1; step <= meta["steps"].get<int>(); ++step) {
    auto logits = model->forward(ids);
    auto loss =
        torch::nn::functional::cross_entropy(logits.reshape({-1, kVocab}), targets.reshape({-1}));
    // The loss: a sum of positive terms in the forward chain's orders, so
    // 2 gamma_chain relative to itself; the earlier steps' weight differences
    // add at most their size times the gradient (both tiny: first order).
    const double want = meta["losses"][step - 1].get<double>();
    EXPECT_TRUE(remat::test::within_tolerance(
        loss.item<double>(), want, remat::test::reduction_tolerance(kForwardChain, want)));
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    for (const auto& p : model->named_parameters()) {
      auto key = std::to_string(step) + "/" + python_name(p.key());
      const double lr = options().lr();
      EXPECT_TRUE(close(p.value(), steps.at(key), lr, step)) << key;
      EXPECT_TRUE(close(p.value(), fused.at(key), lr, step)) << key << " (fused)";
    }
  }
  EXPECT_TRUE(torch::equal(model->frozen->weight, init.at("frozen.weight")));
}

INSTANTIATE_TEST_SUITE_P(AdamW, AdamWImplementationTest,
                         ::testing::Values(AdamWImplementation::kForLoop,
                                           AdamWImplementation::kForeach,
                                           AdamWImplementation::kFused),
                         [](const auto& info) { return implementation_name(info.param); });

namespace {

// Parameters of several shapes in two groups (one without decay), with
// gradients that change each step.
struct Problem {
  explicit Problem(int64_t seed, torch::Dtype dtype = torch::kFloat,
                   torch::Device device = torch::kCPU) {
    torch::manual_seed(seed);
    auto options = torch::TensorOptions().dtype(dtype).device(device);
    for (auto shape : {std::vector<int64_t>{7, 5}, {5}, {3, 2, 4}, {1}}) {
      params.push_back(torch::randn(shape, options).requires_grad_());
    }
  }
  std::vector<torch::optim::OptimizerParamGroup> groups(const torch::optim::AdamWOptions& o) const {
    auto no_decay = std::make_unique<torch::optim::AdamWOptions>(o);
    no_decay->weight_decay(0).lr(o.lr() / 2);
    std::vector<torch::optim::OptimizerParamGroup> g;
    g.emplace_back(std::vector<torch::Tensor>{params[0], params[2]},
                   std::make_unique<torch::optim::AdamWOptions>(o));
    g.emplace_back(std::vector<torch::Tensor>{params[1], params[3]}, std::move(no_decay));
    return g;
  }
  void set_grads(int step) {
    for (size_t i = 0; i < params.size(); ++i) {
      auto g = torch::sin(torch::arange(params[i].numel(), params[i].options().requires_grad(false))
                                  .reshape(params[i].sizes()) *
                              (step + 1.0) +
                          static_cast<double>(i));
      params[i].mutable_grad() = g;
    }
  }
  std::vector<torch::Tensor> params;
};

torch::optim::AdamWOptions test_options(bool amsgrad) {
  return torch::optim::AdamWOptions(3e-2)
      .betas({0.9, 0.95})
      .eps(1e-6)
      .weight_decay(0.1)
      .amsgrad(amsgrad);
}

// Both optimizers see the same gradients; only the order of a step's
// roundings differs (kStepRoundings per element and step, each relative to
// |p| or to the update lr m/(sqrt(v)+eps), and |m|/sqrt(v) <= 1.02 for betas
// (0.9, 0.95) by Cauchy-Schwarz): per step 2 gamma_k (|p| + lr), summed over
// the steps (a difference carried into the next step is not amplified).
void expect_close(const std::vector<torch::Tensor>& a, const std::vector<torch::Tensor>& b,
                  int64_t steps, double lr) {
  ASSERT_EQ(a.size(), b.size());
  const double per_step = remat::test::reduction_tolerance(kStepRoundings, 1.0);
  const double rtol = static_cast<double>(steps) * per_step;
  const double atol = static_cast<double>(steps) * per_step * 1.02 * lr;
  for (size_t i = 0; i < a.size(); ++i) {
    EXPECT_TRUE(
        torch::allclose(a[i].cpu().to(torch::kDouble), b[i].cpu().to(torch::kDouble), rtol, atol))
        << "parameter " << i << ": max difference "
        << (a[i].cpu() - b[i].cpu()).abs().max().item<double>() << ", rtol " << rtol << ", atol "
        << atol;
  }
}

}  // namespace

struct AdamWEquivalenceTest : ::testing::TestWithParam<std::tuple<AdamWImplementation, bool>> {};

// Ten steps with two groups (their own lr and decay), amsgrad on and off,
// and a learning-rate change midway as a scheduler makes.
TEST_P(AdamWEquivalenceTest, TenStepsEqualTorchAdamW) {
  const auto [implementation, amsgrad] = GetParam();
  Problem reference(1), tested(1);
  torch::optim::AdamW expected(reference.groups(test_options(amsgrad)), test_options(amsgrad));
  remat::optim::AdamW actual(tested.groups(test_options(amsgrad)), test_options(amsgrad),
                             implementation);
  for (int step = 0; step < 10; ++step) {
    if (step == 5) {
      for (auto* opt : {static_cast<torch::optim::Optimizer*>(&expected),
                        static_cast<torch::optim::Optimizer*>(&actual)}) {
        for (auto& group : opt->param_groups()) {
          auto& o = static_cast<torch::optim::AdamWOptions&>(group.options());
          o.lr(o.lr() * 0.5);
        }
      }
    }
    reference.set_grads(step);
    tested.set_grads(step);
    expected.step();
    actual.step();
  }
  expect_close(tested.params, reference.params, 10, test_options(amsgrad).lr());
  // Moments equal too: the state is torch::optim::AdamW's. v is an average
  // of the same squared gradients, 3 roundings a step relative to v, over
  // 10 steps and two orders: 2 gamma_30 relative.
  for (size_t i = 0; i < tested.params.size(); ++i) {
    void* key = tested.params[i].unsafeGetTensorImpl();
    auto& state = static_cast<torch::optim::AdamWParamState&>(*actual.state().at(key));
    EXPECT_EQ(state.step(), 10);
    auto& ref_state = static_cast<torch::optim::AdamWParamState&>(
        *expected.state().at(reference.params[i].unsafeGetTensorImpl()));
    EXPECT_TRUE(torch::allclose(state.exp_avg_sq(), ref_state.exp_avg_sq(),
                                remat::test::reduction_tolerance(3 * 10, 1.0), 0.0));
  }
}

INSTANTIATE_TEST_SUITE_P(AdamW, AdamWEquivalenceTest,
                         ::testing::Combine(::testing::Values(AdamWImplementation::kForeach,
                                                              AdamWImplementation::kFused),
                                            ::testing::Bool()),
                         [](const auto& info) {
                           return implementation_name(std::get<0>(info.param)) +
                                  (std::get<1>(info.param) ? "_amsgrad" : "");
                         });

// optimizer.pt written by one implementation resumes in another (and in
// torch::optim::AdamW): same archive layout, and the fused step counts are
// rebuilt from the loaded state.
TEST(AdamWSerialization, ResumesAcrossImplementations) {
  Problem straight(2), resumed(2);
  remat::optim::AdamW uninterrupted(straight.groups(test_options(false)), test_options(false),
                                    AdamWImplementation::kFused);
  remat::optim::AdamW first(resumed.groups(test_options(false)), test_options(false),
                            AdamWImplementation::kFused);
  for (int step = 0; step < 3; ++step) {
    straight.set_grads(step);
    resumed.set_grads(step);
    uninterrupted.step();
    first.step();
  }
  torch::serialize::OutputArchive out;
  first.save(out);
  std::stringstream bytes;
  out.save_to(bytes);
  torch::optim::AdamW plain(resumed.groups(test_options(false)), test_options(false));
  torch::serialize::InputArchive in;
  in.load_from(bytes);
  plain.load(in);
  resumed.set_grads(3);
  plain.step();
  torch::serialize::OutputArchive out2;
  plain.save(out2);
  std::stringstream bytes2;
  out2.save_to(bytes2);
  remat::optim::AdamW last(resumed.groups(test_options(false)), test_options(false),
                           AdamWImplementation::kForeach);
  torch::serialize::InputArchive in2;
  in2.load_from(bytes2);
  last.load(in2);
  for (int step = 3; step < 6; ++step) {
    straight.set_grads(step);
    uninterrupted.step();
    if (step > 3) {
      resumed.set_grads(step);
      last.step();
    }
  }
  expect_close(resumed.params, straight.params, 6, test_options(false).lr());
}

TEST(AdamWNames, HuggingFaceOptimNames) {
  EXPECT_EQ(adamw_implementation("adamw_torch"), AdamWImplementation::kForeach);
  EXPECT_EQ(adamw_implementation("adamw_torch_fused"), AdamWImplementation::kFused);
  ASSERT_THROWS_WITH(adamw_implementation("adafactor"),
                     "optim must be adamw_torch or adamw_torch_fused, got \"adafactor\"");
}

TEST(AdamWGroups, NoTrainableParametersIsAnError) {
  torch::nn::Linear linear(2, 2);
  for (auto& p : linear->parameters()) p.set_requires_grad(false);
  ASSERT_THROWS_WITH(create_adamw(*linear, torch::optim::AdamWOptions(1e-3)),
                     "create_adamw: module torch::nn::LinearImpl has no trainable parameters");
}

TEST(AdamWGroups, EmptyGroupIsKept) {
  torch::nn::Sequential norms(torch::nn::LayerNorm(torch::nn::LayerNormOptions({4})));
  auto groups = get_parameter_groups(*norms, torch::optim::AdamWOptions(1e-3));
  EXPECT_TRUE(groups[0].params().empty());
  EXPECT_EQ(groups[1].params().size(), 2u);
  auto optimizer = create_adamw(*norms, torch::optim::AdamWOptions(1e-3));
  EXPECT_EQ(optimizer.param_groups().size(), 2u);
}

// As in transformers, only modules below the root are checked for their
// type: a LayerNorm passed as the model itself has its weight decayed.
TEST(AdamWGroups, RootModuleIsJudgedByParameterNamesOnly) {
  torch::nn::LayerNorm norm(torch::nn::LayerNormOptions({4}));
  EXPECT_EQ(get_decay_parameter_names(*norm), std::vector<std::string>{"weight"});
}

// Python's named_children yields a module registered twice once, under its
// first name; so does the C++ side.
TEST(AdamWGroups, SharedModuleIsListedOnce) {
  torch::nn::Linear shared(2, 2);
  torch::nn::Sequential model(shared, shared);
  EXPECT_EQ(get_decay_parameter_names(*model), std::vector<std::string>{"0.weight"});
  auto groups = get_parameter_groups(*model, torch::optim::AdamWOptions(1e-3));
  EXPECT_EQ(groups[0].params().size(), 1u);
  EXPECT_EQ(groups[1].params().size(), 1u);
}
