// AdamW with Hugging Face's parameter groups, against the adamw oracle: the
// same tiny model in Python, grouped by Trainer.get_decay_parameter_names and
// trained three steps with torch.optim.AdamW (plain and fused).

#include "remat/optim/adamw.h"

#include <gtest/gtest.h>

#include "oracle.h"
#include "support.h"

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

::testing::AssertionResult close(const torch::Tensor& actual, const torch::Tensor& expected) {
  auto diff = (actual - expected).abs();
  auto bound = 1e-6 * expected.abs() + 1e-9;
  if ((diff <= bound).all().item<bool>()) return ::testing::AssertionSuccess();
  auto worst = (diff / expected.abs().clamp_min(1e-12)).max().item<double>();
  return ::testing::AssertionFailure() << "max relative difference " << worst;
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

TEST_F(AdamWTest, ThreeStepsMatchTorchAdamW) {
  auto steps = remat::test::read_tensors(dir, "steps");
  auto fused = remat::test::read_tensors(dir, "fused");
  auto ids = init.at("input_ids"), targets = init.at("targets");
  auto optimizer = create_adamw(*model, options());
  for (int step = 1; step <= meta["steps"].get<int>(); ++step) {
    auto logits = model->forward(ids);
    auto loss =
        torch::nn::functional::cross_entropy(logits.reshape({-1, kVocab}), targets.reshape({-1}));
    EXPECT_NEAR(loss.item<double>(), meta["losses"][step - 1].get<double>(), 1e-6);
    loss.backward();
    optimizer.step();
    optimizer.zero_grad();
    for (const auto& p : model->named_parameters()) {
      auto key = std::to_string(step) + "/" + python_name(p.key());
      EXPECT_TRUE(close(p.value(), steps.at(key))) << key;
      EXPECT_TRUE(close(p.value(), fused.at(key))) << key << " (fused)";
    }
  }
  EXPECT_TRUE(torch::equal(model->frozen->weight, init.at("frozen.weight")));
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
