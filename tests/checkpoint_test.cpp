// remat::checkpoint against the plain (un-checkpointed) computation on CPU:
// gradients must be bitwise equal for deterministic ops.

#include "remat/checkpoint.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include "remat/memory.h"
#include "support.h"
#include "test_models.h"

using remat::test::bitwise_equal;
using remat::test::GptBlock;
using remat::test::GptStack;
using remat::test::Mlp;
using remat::test::parameter_grads;
using Tensors = std::vector<torch::Tensor>;

namespace {

struct CheckpointTest : remat::test::SeedingFixture {};

void expect_all_bitwise_equal(const Tensors& a, const Tensors& b) {
  ASSERT_EQ(a.size(), b.size());
  for (size_t i = 0; i < a.size(); ++i) EXPECT_TRUE(bitwise_equal(a[i], b[i])) << "tensor " << i;
}

bool is_checkpoint_node(const torch::Tensor& t) {
  return t.grad_fn() && t.grad_fn()->name().find("CheckpointFunction") != std::string::npos;
}

// Runs `step` twice from the same RNG state, once plain and once with the
// module's gradients cleared in between, and returns the gradients of each.
template <typename Module, typename Step>
std::pair<Tensors, Tensors> grads_plain_and_checkpointed(Module& module, Step step) {
  torch::manual_seed(42);
  step(false);
  auto plain = parameter_grads(*module);
  module->zero_grad();
  torch::manual_seed(42);
  step(true);
  return {plain, parameter_grads(*module)};
}

}  // namespace

TEST_F(CheckpointTest, MlpGradientsAreBitwiseEqual) {
  Mlp mlp(16);
  auto x = torch::randn({8, 16}, torch::requires_grad());
  torch::Tensor x_grad_plain;
  auto [plain, ckpt] = grads_plain_and_checkpointed(mlp, [&](bool checkpointed) {
    x.mutable_grad() = torch::Tensor();
    auto y = checkpointed ? remat::checkpoint(mlp, x) : mlp(x);
    EXPECT_EQ(is_checkpoint_node(y), checkpointed);
    y.pow(2).sum().backward();
    if (!checkpointed) x_grad_plain = x.grad().clone();
  });
  expect_all_bitwise_equal(plain, ckpt);
  EXPECT_TRUE(bitwise_equal(x_grad_plain, x.grad()));
}

TEST_F(CheckpointTest, CallableFormAndModuleFormCompileSideBySide) {
  Mlp mlp(8);
  auto w = torch::randn({8, 8}, torch::requires_grad());
  auto x = torch::randn({4, 8}, torch::requires_grad());
  auto fn = [&](const Tensors& in) { return Tensors{torch::tanh(in[0].mm(w))}; };
  std::function<Tensors(const Tensors&)> std_fn = fn;

  auto a = remat::checkpoint(fn, {x}, {w})[0];
  auto b = remat::checkpoint(std_fn, {x}, {w})[0];
  auto c = remat::checkpoint(mlp, x);
  std::shared_ptr<remat::test::MlpImpl> as_ptr = mlp.ptr();
  auto d = remat::checkpoint(as_ptr, x);
  auto e = remat::checkpoint(mlp, x, remat::CheckpointOptions().preserve_rng_state(false));
  for (const auto& t : {a, b, c, d, e}) EXPECT_TRUE(is_checkpoint_node(t));
  EXPECT_TRUE(bitwise_equal(a, b));
  EXPECT_TRUE(bitwise_equal(c, d));
  EXPECT_TRUE(bitwise_equal(c, e));
}

TEST_F(CheckpointTest, GptStackWithDropoutMatchesPlainOverSeveralSteps) {
  GptStack model(3, 32, 4, /*dropout=*/0.2);
  auto x = torch::randn({2, 8, 32});
  auto [plain, ckpt] = grads_plain_and_checkpointed(model, [&](bool checkpointed) {
    if (checkpointed) remat::nn::gradient_checkpointing_enable(*model);
    for (int step = 0; step < 3; ++step) model->forward(x).square().mean().backward();
    // The replay must not advance the generator: the next draw is the same.
    static torch::Tensor after_plain;
    auto next = torch::rand({4});
    if (!checkpointed) after_plain = next;
    if (checkpointed) EXPECT_TRUE(bitwise_equal(after_plain, next));
  });
  expect_all_bitwise_equal(plain, ckpt);
}

TEST_F(CheckpointTest, WithoutRngPreservationDropoutMasksDiffer) {
  GptStack model(2, 32, 4, /*dropout=*/0.5);
  auto x = torch::randn({2, 8, 32});
  auto [plain, ckpt] = grads_plain_and_checkpointed(model, [&](bool checkpointed) {
    if (checkpointed) {
      remat::nn::gradient_checkpointing_enable(
          *model, remat::nn::GradientCheckpointingOptions().checkpoint_options(
                      remat::CheckpointOptions().preserve_rng_state(false)));
    }
    model->forward(x).square().mean().backward();
  });
  EXPECT_FALSE(torch::equal(plain[0], ckpt[0]));
}

TEST_F(CheckpointTest, CpuBf16AutocastMatchesPlainAutocast) {
  GptStack model(2, 32, 4, /*dropout=*/0.1);
  auto x = torch::randn({2, 8, 32});
  auto [plain, ckpt] = grads_plain_and_checkpointed(model, [&](bool checkpointed) {
    if (checkpointed) remat::nn::gradient_checkpointing_enable(*model);
    torch::Tensor loss;
    {
      at::autocast::set_autocast_enabled(c10::DeviceType::CPU, true);
      at::autocast::set_autocast_dtype(c10::DeviceType::CPU, at::kBFloat16);
      at::autocast::increment_nesting();
      loss = model->forward(x).to(torch::kFloat).square().mean();
      at::autocast::decrement_nesting();
      at::autocast::clear_cache();
      at::autocast::set_autocast_enabled(c10::DeviceType::CPU, false);
    }
    loss.backward();  // outside autocast: the replay must restore it
  });
  expect_all_bitwise_equal(plain, ckpt);
  EXPECT_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CPU));
}

TEST_F(CheckpointTest, FrozenInputsStillGiveParameterGradients) {
  // An adapter on a frozen embedding: no input requires grad.
  auto embedding = torch::randn({50, 16});
  auto adapter = torch::randn({16, 16}, torch::requires_grad());
  auto ids = torch::randint(0, 50, {4, 6});
  auto fn = [&](const Tensors& in) {
    return Tensors{torch::relu(torch::embedding(embedding, in[0]).matmul(adapter))};
  };
  fn({ids})[0].sum().backward();
  auto plain = adapter.grad().clone();
  adapter.mutable_grad() = torch::Tensor();

  auto y = remat::checkpoint(fn, {ids}, {adapter})[0];
  ASSERT_TRUE(y.requires_grad());
  y.sum().backward();
  ASSERT_TRUE(adapter.grad().defined());
  EXPECT_TRUE(bitwise_equal(plain, adapter.grad()));
}

TEST_F(CheckpointTest, NestedCheckpointsMatchPlain) {
  Mlp inner(8), outer(8);
  auto x = torch::randn({4, 8}, torch::requires_grad());
  auto region = [&](const Tensors& in, bool nested) {
    auto h = nested ? remat::checkpoint(inner, in[0]) : inner(in[0]);
    return Tensors{outer(torch::sin(h))};
  };
  region({x}, false)[0].sum().backward();
  Tensors plain = parameter_grads(*inner);
  for (const auto& g : parameter_grads(*outer)) plain.push_back(g);
  auto x_plain = x.grad().clone();
  inner->zero_grad();
  outer->zero_grad();
  x.mutable_grad() = torch::Tensor();

  auto params = remat::trainable_parameters(*inner);
  for (const auto& p : remat::trainable_parameters(*outer)) params.push_back(p);
  auto y = remat::checkpoint([&](const Tensors& in) { return region(in, true); }, {x}, params)[0];
  y.sum().backward();
  Tensors ckpt = parameter_grads(*inner);
  for (const auto& g : parameter_grads(*outer)) ckpt.push_back(g);
  expect_all_bitwise_equal(plain, ckpt);
  EXPECT_TRUE(bitwise_equal(x_plain, x.grad()));
}

TEST_F(CheckpointTest, SeveralOutputsWithOneUnused) {
  auto w = torch::randn({6, 6}, torch::requires_grad());
  auto x = torch::randn({3, 6}, torch::requires_grad());
  auto fn = [&](const Tensors& in) {
    auto h = in[0].mm(w);
    return Tensors{h.sin(), h.cos(), h.argmax(1)};  // the last is an integer tensor
  };
  auto plain = fn({x});
  plain[0].sum().backward();
  auto w_plain = w.grad().clone();
  auto x_plain = x.grad().clone();
  w.mutable_grad() = torch::Tensor();
  x.mutable_grad() = torch::Tensor();

  auto outs = remat::checkpoint(fn, {x}, {w});
  ASSERT_EQ(outs.size(), 3u);
  EXPECT_FALSE(outs[2].requires_grad());
  EXPECT_TRUE(bitwise_equal(plain[2], outs[2]));
  outs[0].sum().backward();  // outs[1] is never used
  EXPECT_TRUE(bitwise_equal(w_plain, w.grad()));
  EXPECT_TRUE(bitwise_equal(x_plain, x.grad()));
}

TEST_F(CheckpointTest, AutogradGradComputesOnlyWhatIsAsked) {
  Mlp mlp(8);
  auto x = torch::randn({4, 8}, torch::requires_grad());
  auto plain = torch::autograd::grad({mlp(x).sum()}, {x})[0];
  auto ckpt = torch::autograd::grad({remat::checkpoint(mlp, x).sum()}, {x})[0];
  EXPECT_TRUE(bitwise_equal(plain, ckpt));
  for (const auto& p : mlp->parameters()) EXPECT_FALSE(p.grad().defined());
}

TEST_F(CheckpointTest, DoubleBackwardThroughRegion) {
  auto x = torch::randn({5}, torch::requires_grad());
  auto cube = [](const Tensors& in) { return Tensors{in[0].pow(3)}; };
  auto g_plain = torch::autograd::grad({cube({x})[0].sum()}, {x}, {}, true, true)[0];
  auto gg_plain = torch::autograd::grad({g_plain.sum()}, {x})[0];
  auto g = torch::autograd::grad({remat::checkpoint(cube, {x})[0].sum()}, {x}, {}, true, true)[0];
  auto gg = torch::autograd::grad({g.sum()}, {x})[0];
  EXPECT_TRUE(bitwise_equal(g_plain, g));
  EXPECT_TRUE(bitwise_equal(gg_plain, gg));
}

TEST_F(CheckpointTest, NonContiguousAndIntegerInputs) {
  auto w = torch::randn({5, 8}, torch::requires_grad());
  auto base = torch::randn({5, 8}, torch::requires_grad());
  auto x = base.t();  // non-contiguous view, 8 x 5
  auto index = torch::tensor({4, 0, 2}, torch::kLong);
  auto fn = [&](const Tensors& in) { return Tensors{in[0].index_select(0, in[1]).mm(w).tanh()}; };
  ASSERT_FALSE(x.is_contiguous());
  fn({x, index})[0].sum().backward();
  auto base_plain = base.grad().clone();
  auto w_plain = w.grad().clone();
  base.mutable_grad() = torch::Tensor();
  w.mutable_grad() = torch::Tensor();
  remat::checkpoint(fn, {x, index}, {w})[0].sum().backward();
  EXPECT_TRUE(bitwise_equal(base_plain, base.grad()));
  EXPECT_TRUE(bitwise_equal(w_plain, w.grad()));
}

TEST_F(CheckpointTest, VariadicModuleFormWithFlagsAndTupleOutput) {
  struct TwoInImpl : torch::nn::Module {
    TwoInImpl() : lin(register_module("lin", torch::nn::Linear(4, 4))) {}
    std::tuple<torch::Tensor, torch::Tensor> forward(torch::Tensor a,
                                                     std::optional<torch::Tensor> b, bool negate,
                                                     double scale) {
      auto h = lin(a) * scale;
      if (b) h = h + *b;
      return {negate ? -h : h, h.sum(1)};
    }
    torch::nn::Linear lin;
  };
  auto module = std::make_shared<TwoInImpl>();
  auto a = torch::randn({3, 4}, torch::requires_grad());
  auto b = torch::randn({3, 4}, torch::requires_grad());
  auto [p0, p1] = module->forward(a, b, true, 0.5);
  (p0.sum() + p1.square().sum()).backward();
  Tensors plain{a.grad().clone(), b.grad().clone(), module->lin->weight.grad().clone()};
  a.mutable_grad() = b.mutable_grad() = torch::Tensor();
  module->zero_grad();

  auto [c0, c1] = remat::checkpoint(module, a, std::optional<torch::Tensor>(b), true, 0.5,
                                    remat::CheckpointOptions());
  EXPECT_TRUE(is_checkpoint_node(c0));
  (c0.sum() + c1.square().sum()).backward();
  expect_all_bitwise_equal(plain, {a.grad(), b.grad(), module->lin->weight.grad()});

  auto none = remat::checkpoint(module, a, std::optional<torch::Tensor>(), false, 1.0);
  EXPECT_TRUE(bitwise_equal(std::get<0>(none), std::get<0>(module->forward(a, {}, false, 1.0))));
}

TEST_F(CheckpointTest, GradientsAccumulateAndHooksFire) {
  Mlp mlp(8);
  auto x = torch::randn({4, 8});
  mlp(x).sum().backward();
  auto plain = mlp->fc1->weight.grad().clone();
  mlp->zero_grad();
  int hook_calls = 0;
  // A hook that changes the gradient: applied twice it would show.
  mlp->fc1->weight.register_hook([&](torch::Tensor g) {
    ++hook_calls;
    return g * 3;
  });
  remat::checkpoint(mlp, x).sum().backward();
  EXPECT_EQ(hook_calls, 1);
  EXPECT_TRUE(bitwise_equal(plain * 3, mlp->fc1->weight.grad()));
  remat::checkpoint(mlp, x).sum().backward();
  EXPECT_EQ(hook_calls, 2);
  EXPECT_TRUE(bitwise_equal(plain * 6, mlp->fc1->weight.grad()));
  // The hook fires once under torch::autograd::grad too.
  torch::autograd::grad({remat::checkpoint(mlp, x).sum()}, {mlp->fc1->weight});
  EXPECT_EQ(hook_calls, 3);
}

TEST_F(CheckpointTest, OutsideGradModeJustCallsTheFunction) {
  auto w = torch::randn({4, 4}, torch::requires_grad());
  int calls = 0;
  auto fn = [&](const Tensors& in) {
    ++calls;
    return Tensors{in[0].mm(w)};
  };
  torch::NoGradGuard no_grad;
  auto y = remat::checkpoint(fn, {torch::randn({2, 4})}, {w})[0];
  EXPECT_EQ(calls, 1);
  EXPECT_FALSE(y.requires_grad());
}

TEST_F(CheckpointTest, KeepsOnlyTheInputsBetweenForwardAndBackward) {
  // Six 8 MiB tanh outputs are kept without checkpointing (tanh's backward
  // needs its result; the mm outputs are freed); with it, only the output.
  auto w = torch::randn({1024, 1024}, torch::requires_grad());
  auto x = torch::randn({2048, 1024}, torch::requires_grad());
  auto fn = [&](const Tensors& in) {
    auto h = in[0];
    for (int i = 0; i < 6; ++i) h = torch::tanh(h.mm(w));
    return Tensors{h};
  };
  const auto cpu = torch::Device(torch::kCPU);
  auto held = [&](bool checkpointed) {
    auto before = remat::memory_allocated(cpu);
    auto y = checkpointed ? remat::checkpoint(fn, {x}, {w})[0] : fn({x})[0];
    auto bytes = remat::memory_allocated(cpu) - before;
    y.sum().backward();
    return bytes;
  };
  const int64_t activation = 2048 * 1024 * 4;  // one float matrix of x's shape
  auto plain = held(false);
  auto ckpt = held(true);
  EXPECT_GE(plain, 6 * activation * 95 / 100);
  EXPECT_LE(ckpt, activation * 105 / 100);
}

// ---- checkpoint_without_output ------------------------------------------------

namespace {

Tensors parameter_grads_of(const Tensors& tensors) {
  Tensors grads;
  for (const auto& t : tensors) grads.push_back(t.grad().clone());
  return grads;
}

// fc2(dropout(gelu(fc1(x)))) with fc1, the activation and dropout as the
// region and fc2 as its consumer; `seen` receives the region's output.
Tensors mlp_without_output(Mlp& mlp, const torch::Tensor& x, double dropout, int* replays,
                           torch::Tensor* seen = nullptr) {
  auto region = [&mlp, dropout, replays](const Tensors& in) {
    ++*replays;
    return Tensors{torch::dropout(torch::gelu(mlp->fc1(in[0])), dropout, /*train=*/true)};
  };
  auto consumer = [&mlp, seen](const Tensors& h) {
    if (seen != nullptr) *seen = h[0];
    return Tensors{mlp->fc2(h[0])};
  };
  return remat::checkpoint_without_output(region, {x}, remat::trainable_parameters(*mlp->fc1),
                                          consumer);
}

}  // namespace

TEST_F(CheckpointTest, WithoutOutputGradientsAreBitwiseEqualAndTheRegionReplaysOnce) {
  Mlp mlp(16);
  auto x = torch::randn({8, 16}, torch::requires_grad());
  torch::Tensor x_grad_plain;
  int calls = 0;
  auto [plain, ckpt] = grads_plain_and_checkpointed(mlp, [&](bool checkpointed) {
    x.mutable_grad() = torch::Tensor();
    torch::Tensor y;
    if (checkpointed) {
      y = mlp_without_output(mlp, x, /*dropout=*/0.3, &calls)[0];
      EXPECT_EQ(calls, 1);
    } else {
      y = mlp->fc2(torch::dropout(torch::gelu(mlp->fc1(x)), 0.3, true));
    }
    y.pow(2).sum().backward();
    if (!checkpointed) x_grad_plain = x.grad().clone();
  });
  EXPECT_EQ(calls, 2);  // the forward and one replay, shared by both backwards
  expect_all_bitwise_equal(plain, ckpt);
  EXPECT_TRUE(bitwise_equal(x_grad_plain, x.grad()));
}

TEST_F(CheckpointTest, WithoutOutputFreesTheOutputUntilTheConsumersBackward) {
  Mlp mlp(64);
  auto x = torch::randn({256, 64}, torch::requires_grad());
  int calls = 0;
  torch::Tensor seen;
  auto held = [&](bool plain) {
    remat::CpuMemoryScope scope;
    auto y = plain ? mlp(x) : mlp_without_output(mlp, x, 0.0, &calls, &seen)[0];
    return std::make_pair(y, scope.current());
  };
  const int64_t activation = 256 * 256 * 4;
  auto [y_plain, plain] = held(true);
  auto [y, ours] = held(false);
  // Plain keeps fc1's output (for gelu) and gelu's (for fc2); here only
  // fc2's output (and the RNG state) remain.
  EXPECT_GE(plain, 2 * activation + y.nbytes());
  EXPECT_LE(ours, y.nbytes() + activation / 8);
  auto want = torch::gelu(mlp->fc1(x)).detach();
  // Kept: fc2's output only; the 256 x 256 activation's memory is gone.
  EXPECT_EQ(seen.storage().nbytes(), 0u);
  auto loss = y.sum();
  loss.backward();
  EXPECT_EQ(seen.storage().nbytes(), want.nbytes());
  EXPECT_TRUE(bitwise_equal(seen, want));
}

// tanh keeps its result for its backward, so the replayed output cannot
// lend its memory: it is copied into the freed tensor instead.
TEST_F(CheckpointTest, WithoutOutputCopiesAnOutputTheReplayKeeps) {
  auto w1 = torch::randn({16, 32}, torch::requires_grad());
  auto w2 = torch::randn({32, 8}, torch::requires_grad());
  auto x = torch::randn({4, 16}, torch::requires_grad());
  torch::Tensor seen;
  auto y = remat::checkpoint_without_output(
      [&](const Tensors& in) { return Tensors{torch::tanh(in[0].mm(w1))}; }, {x}, {w1},
      [&](const Tensors& h) {
        seen = h[0];
        return Tensors{h[0].mm(w2)};
      })[0];
  EXPECT_EQ(seen.storage().nbytes(), 0u);
  y.square().sum().backward();
  EXPECT_TRUE(bitwise_equal(seen, torch::tanh(x.mm(w1)).detach()));
  auto got = parameter_grads_of({x, w1, w2});
  for (auto* t : {&x, &w1, &w2}) t->mutable_grad() = torch::Tensor();
  torch::tanh(x.mm(w1)).mm(w2).square().sum().backward();
  expect_all_bitwise_equal(got, parameter_grads_of({x, w1, w2}));
}

// The replayed graph keeps an output the consumer also keeps (a layer norm
// keeps its input): the output is copied back, not handed over.
TEST_F(CheckpointTest, WithoutOutputCopiesAnOutputTheReplayedGraphReads) {
  torch::nn::LayerNorm norm(torch::nn::LayerNormOptions({16}));
  auto w1 = torch::randn({16, 16}, torch::requires_grad());
  auto w2 = torch::randn({16, 16}, torch::requires_grad());
  auto x = torch::randn({4, 16}, torch::requires_grad());
  auto params = remat::trainable_parameters(*norm);
  params.push_back(w1);
  auto region = [&](const Tensors& in) {
    auto y = in[0].mm(w1);
    return Tensors{y, norm(y)};
  };
  auto y = remat::checkpoint_without_output(
      region, {x}, params, [&](const Tensors& o) { return Tensors{o[0] + o[1].mm(w2)}; })[0];
  y.square().sum().backward();
  auto got = parameter_grads_of({x, w1, w2});
  for (auto* t : {&x, &w1, &w2}) t->mutable_grad() = torch::Tensor();
  auto h = x.mm(w1);
  (h + norm(h).mm(w2)).square().sum().backward();
  expect_all_bitwise_equal(got, parameter_grads_of({x, w1, w2}));
}

TEST_F(CheckpointTest, WithoutOutputWithFrozenInputAndBf16Autocast) {
  Mlp mlp(16);
  auto x = torch::randn({8, 16});  // no grad: the region's parameters still get theirs
  int calls = 0;
  auto run = [&](bool checkpointed) {
    mlp->zero_grad();
    at::autocast::set_autocast_enabled(c10::DeviceType::CPU, true);
    at::autocast::set_autocast_dtype(c10::DeviceType::CPU, at::kBFloat16);
    at::autocast::increment_nesting();
    auto y = checkpointed ? mlp_without_output(mlp, x, 0.0, &calls)[0]
                          : mlp->fc2(torch::gelu(mlp->fc1(x)));
    at::autocast::decrement_nesting();
    at::autocast::clear_cache();
    at::autocast::set_autocast_enabled(c10::DeviceType::CPU, false);
    EXPECT_EQ(y.scalar_type(), at::kBFloat16);
    y.to(torch::kFloat).square().sum().backward();  // outside autocast
    return parameter_grads(*mlp);
  };
  auto plain = run(false);
  auto ckpt = run(true);
  expect_all_bitwise_equal(plain, ckpt);
  EXPECT_TRUE(ckpt[0].defined());
}

TEST_F(CheckpointTest, WithoutOutputLeavesAnOutputThatAliasesAnInput) {
  auto w = torch::randn({8, 8}, torch::requires_grad());
  auto x = torch::randn({4, 8}, torch::requires_grad());
  torch::Tensor seen;
  auto y = remat::checkpoint_without_output(
      [](const Tensors& in) {
        return Tensors{in[0].view({8, 4})};
      },
      {x}, {},
      [&](const Tensors& h) {
        seen = h[0];
        return Tensors{h[0].t().mm(w)};
      })[0];
  EXPECT_EQ(x.storage().nbytes(), x.nbytes());  // still there
  y.sum().backward();
  auto x2 = x.detach().requires_grad_(true);
  x2.view({8, 4}).t().mm(w.detach()).sum().backward();
  EXPECT_TRUE(bitwise_equal(x.grad(), x2.grad()));
}

TEST_F(CheckpointTest, WithoutOutputOutsideGradModeJustCallsBoth) {
  Mlp mlp(8);
  auto x = torch::randn({4, 8});
  int calls = 0;
  torch::NoGradGuard no_grad;
  torch::Tensor seen;
  auto y = mlp_without_output(mlp, x, 0.0, &calls, &seen)[0];
  EXPECT_EQ(calls, 1);
  EXPECT_EQ(seen.storage().nbytes(), seen.nbytes());
  EXPECT_TRUE(bitwise_equal(y, mlp(x)));
}

TEST_F(CheckpointTest, WithoutOutputRetainGraphBackwardTwice) {
  Mlp mlp(8);
  auto x = torch::randn({4, 8}, torch::requires_grad());
  int calls = 0;
  auto y = mlp_without_output(mlp, x, 0.0, &calls)[0].sum();
  y.backward({}, /*retain_graph=*/true);
  auto first = x.grad().clone();
  y.backward();
  // The second backward replays the same operations on the same inputs, so
  // it equals the first bitwise, and first + first is exactly 2 * first.
  EXPECT_TRUE(bitwise_equal(x.grad(), 2 * first));
}

// ---- errors ----------------------------------------------------------------

TEST_F(CheckpointTest, InputModifiedInPlaceIsAnError) {
  auto w = torch::randn({4, 4}, torch::requires_grad());
  auto x = torch::randn({2, 4});
  auto y = remat::checkpoint([&](const Tensors& in) { return Tensors{in[0].mm(w)}; }, {x}, {w})[0];
  x.add_(1);
  ASSERT_THROWS_WITH(y.sum().backward(), "modified by an inplace operation");
}

TEST_F(CheckpointTest, SecondBackwardWithoutRetainGraphIsAnError) {
  Mlp mlp(4);
  auto loss = remat::checkpoint(mlp, torch::randn({2, 4})).sum();
  loss.backward();
  ASSERT_THROWS_WITH(loss.backward(), "backward through the graph a second time");
}

TEST_F(CheckpointTest, SecondBackwardWithRetainGraphWorks) {
  GptStack model(1, 16, 2, /*dropout=*/0.3);
  remat::nn::gradient_checkpointing_enable(*model);
  auto loss = model->forward(torch::randn({1, 4, 16})).sum();
  loss.backward({}, /*retain_graph=*/true);
  auto once = parameter_grads(*model);
  loss.backward();
  auto twice = parameter_grads(*model);
  for (size_t i = 0; i < once.size(); ++i) EXPECT_TRUE(bitwise_equal(once[i] * 2, twice[i]));
}

TEST_F(CheckpointTest, ReplayThatChangesShapeIsAnError) {
  auto w = torch::randn({4, 4}, torch::requires_grad());
  int64_t rows = 2;
  auto fn = [&](const Tensors& in) { return Tensors{in[0].mm(w).narrow(0, 0, rows)}; };
  auto y = remat::checkpoint(fn, {torch::randn({3, 4})}, {w})[0];
  rows = 1;
  ASSERT_THROWS_WITH(y.sum().backward(), "output 0 of the replay has shape [1, 4]");
}

TEST_F(CheckpointTest, DeterminismCheckNoneSkipsTheCheck) {
  auto w = torch::randn({4, 4}, torch::requires_grad());
  int64_t rows = 2;
  auto fn = [&](const Tensors& in) { return Tensors{in[0].mm(w).narrow(0, 0, rows)}; };
  auto options = remat::CheckpointOptions().determinism_check("none");
  auto y = remat::checkpoint(fn, {torch::randn({3, 4})}, {w}, options)[0];
  rows = 1;
  // Unchecked, the [1, 4] replay takes the [2, 4] gradient (autograd sums it
  // down to the broadcast shape): exactly the silent error the check exists for.
  EXPECT_NO_THROW(y.sum().backward());
}

TEST_F(CheckpointTest, InvalidDeterminismCheckIsAnError) {
  auto x = torch::randn({2}, torch::requires_grad());
  auto fn = [](const Tensors& in) { return in; };
  ASSERT_THROWS_WITH(
      remat::checkpoint(fn, {x}, {}, remat::CheckpointOptions().determinism_check("strict")),
      "invalid determinism_check \"strict\"; valid values are \"default\" and \"none\"");
}

TEST_F(CheckpointTest, UnlistedParameterIsAnError) {
  auto w = torch::randn({4, 4}, torch::requires_grad());
  auto x = torch::randn({2, 4}, torch::requires_grad());
  auto y = remat::checkpoint([&](const Tensors& in) { return Tensors{in[0].mm(w)}; }, {x})[0];
  ASSERT_THROWS_WITH(y.sum().backward(), "neither among its inputs nor its params");
}

TEST_F(CheckpointTest, UndefinedInputAndEmptyOutputAreErrors) {
  auto x = torch::randn({2}, torch::requires_grad());
  ASSERT_THROWS_WITH(remat::checkpoint([](const Tensors& in) { return in; }, {torch::Tensor()}),
                     "input 0 is an undefined tensor");
  ASSERT_THROWS_WITH(remat::checkpoint([](const Tensors&) { return Tensors{}; }, {x}),
                     "the region returned no tensors");
}
