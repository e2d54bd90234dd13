// Checkpointable blocks: which blocks gradient_checkpointing_enable() marks,
// when a marked block is actually checkpointed, and the use_cache rule.

#include "remat/nn/checkpointable.h"

#include <gtest/gtest.h>
#include <spdlog/sinks/ostream_sink.h>

#include <sstream>

#include "remat/logging.h"
#include "support.h"
#include "test_models.h"

using remat::nn::GradientCheckpointingOptions;
using remat::test::GptStack;

namespace {

struct CheckpointableTest : remat::test::SeedingFixture {};

std::vector<bool> marks(const GptStack& model) {
  std::vector<bool> result;
  for (const auto& block : model->blocks) result.push_back(block->gradient_checkpointing());
  return result;
}

// A block that takes a use_cache flag, as decoder layers with a KV cache do.
struct CachedBlockImpl : remat::nn::CheckpointableModule {
  CachedBlockImpl() : lin(register_module("lin", torch::nn::Linear(4, 4))) {}
  std::tuple<torch::Tensor, torch::Tensor> forward(torch::Tensor x, bool use_cache) {
    auto h = lin(x);
    bool cache = resolve_use_cache(use_cache);
    return {h, cache ? h.detach() : torch::zeros({0})};
  }
  torch::nn::Linear lin;
};
TORCH_MODULE(CachedBlock);

struct CachedModelImpl : torch::nn::Module {
  CachedModelImpl() {
    for (int i = 0; i < 3; ++i)
      blocks.push_back(register_module("b" + std::to_string(i), CachedBlock()));
  }
  std::pair<torch::Tensor, int> forward(torch::Tensor x, bool use_cache) {
    int cached = 0;
    for (auto& block : blocks) {
      auto [h, cache] = remat::nn::forward(block, x, use_cache);
      x = h;
      cached += cache.numel() > 0 ? 1 : 0;
    }
    return {x, cached};
  }
  std::vector<CachedBlock> blocks;
};
TORCH_MODULE(CachedModel);

// Captures what remat logs while alive.
class LogCapture {
 public:
  LogCapture() {
    auto sink = std::make_shared<spdlog::sinks::ostream_sink_mt>(stream_);
    remat::set_logger(std::make_shared<spdlog::logger>("remat-test", sink));
  }
  ~LogCapture() { remat::set_logger(nullptr); }
  std::string text() const { return stream_.str(); }
  int count(const std::string& needle) const {
    int n = 0;
    auto s = text();
    for (size_t pos = s.find(needle); pos != std::string::npos; pos = s.find(needle, pos + 1)) ++n;
    return n;
  }

 private:
  std::ostringstream stream_;
};

}  // namespace

TEST_F(CheckpointableTest, EnableMarksEveryBlockByDefault) {
  GptStack model(4, 16, 2, 0.0);
  EXPECT_FALSE(remat::nn::is_gradient_checkpointing(*model));
  EXPECT_EQ(remat::nn::gradient_checkpointing_enable(*model), 4);
  EXPECT_EQ(marks(model), std::vector<bool>(4, true));
  EXPECT_TRUE(remat::nn::is_gradient_checkpointing(*model));
  remat::nn::gradient_checkpointing_disable(*model);
  EXPECT_EQ(marks(model), std::vector<bool>(4, false));
  EXPECT_FALSE(remat::nn::is_gradient_checkpointing(*model));
}

TEST_F(CheckpointableTest, EveryNthBlock) {
  GptStack model(5, 16, 2, 0.0);
  EXPECT_EQ(remat::nn::gradient_checkpointing_enable(
                *model, GradientCheckpointingOptions().every_n_blocks(2)),
            3);
  EXPECT_EQ(marks(model), (std::vector<bool>{true, false, true, false, true}));
}

TEST_F(CheckpointableTest, PredicateOnIndexAndName) {
  GptStack model(4, 16, 2, 0.0);
  std::vector<std::string> names;
  remat::nn::gradient_checkpointing_enable(
      *model, GradientCheckpointingOptions().predicate([&](int64_t index, const std::string& name) {
        names.push_back(name);
        return index >= 2;
      }));
  EXPECT_EQ(names, (std::vector<std::string>{"blocks.0", "blocks.1", "blocks.2", "blocks.3"}));
  EXPECT_EQ(marks(model), (std::vector<bool>{false, false, true, true}));
}

TEST_F(CheckpointableTest, EnableReplacesEarlierMarks) {
  GptStack model(4, 16, 2, 0.0);
  remat::nn::gradient_checkpointing_enable(*model);
  remat::nn::gradient_checkpointing_enable(*model,
                                           GradientCheckpointingOptions().every_n_blocks(3));
  EXPECT_EQ(marks(model), (std::vector<bool>{true, false, false, true}));
}

TEST_F(CheckpointableTest, SubBlockGranularityLeavesTheBlockCallToTheBlock) {
  GptStack model(2, 16, 2, 0.0);
  remat::nn::gradient_checkpointing_enable(
      *model, GradientCheckpointingOptions().granularity(remat::nn::Granularity::kMlp));
  const auto& block = model->blocks[0];
  EXPECT_TRUE(block->checkpoints(remat::nn::Granularity::kMlp));
  EXPECT_FALSE(block->checkpoints(remat::nn::Granularity::kBlock));
  EXPECT_FALSE(block->checkpoints(remat::nn::Granularity::kAttention));
  auto y = model->forward(torch::randn({1, 4, 16}));
  EXPECT_EQ(y.grad_fn()->name().find("CheckpointFunction"), std::string::npos);
  model->eval();
  EXPECT_FALSE(block->checkpoints(remat::nn::Granularity::kMlp));
}

TEST_F(CheckpointableTest, InvalidOptionsAreErrors) {
  GptStack model(2, 16, 2, 0.0);
  ASSERT_THROWS_WITH(remat::nn::gradient_checkpointing_enable(
                         *model, GradientCheckpointingOptions().every_n_blocks(0)),
                     "invalid every_n_blocks 0; it must be at least 1");
  ASSERT_THROWS_WITH(remat::nn::gradient_checkpointing_enable(
                         *model, GradientCheckpointingOptions().every_n_blocks(2).predicate(
                                     [](int64_t, const std::string&) { return true; })),
                     "every_n_blocks 2 and a predicate were both given");
  ASSERT_THROWS_WITH(remat::nn::gradient_checkpointing_enable(
                         *model, GradientCheckpointingOptions().checkpoint_options(
                                     remat::CheckpointOptions().determinism_check("always"))),
                     "invalid determinism_check \"always\"");
}

TEST_F(CheckpointableTest, CheckpointsOnlyInTraining) {
  GptStack model(2, 16, 2, 0.0);
  remat::nn::gradient_checkpointing_enable(*model);
  auto x = torch::randn({1, 4, 16});
  auto node_name = [&] { return model->forward(x).grad_fn()->name(); };
  EXPECT_NE(node_name().find("CheckpointFunction"), std::string::npos);
  model->eval();
  EXPECT_FALSE(model->blocks[0]->is_checkpointing());
  EXPECT_EQ(node_name().find("CheckpointFunction"), std::string::npos);
  model->train();
  EXPECT_TRUE(model->blocks[0]->is_checkpointing());
  torch::NoGradGuard no_grad;
  EXPECT_FALSE(model->forward(x).requires_grad());
}

TEST_F(CheckpointableTest, UseCacheForcedOffWithOneWarningPerModel) {
  LogCapture log;
  CachedModel model;
  auto x = torch::randn({2, 4});
  EXPECT_EQ(model->forward(x, true).second, 3);  // not checkpointing: caches kept
  remat::nn::gradient_checkpointing_enable(*model);
  for (int step = 0; step < 5; ++step) {
    auto [y, cached] = model->forward(x, true);
    EXPECT_EQ(cached, 0);
    y.sum().backward();
  }
  EXPECT_EQ(log.count("use_cache=true is incompatible with gradient checkpointing"), 1);

  CachedModel other;
  remat::nn::gradient_checkpointing_enable(*other);
  other->forward(x, true);
  EXPECT_EQ(log.count("use_cache=true is incompatible with gradient checkpointing"), 2);

  model->eval();
  EXPECT_EQ(model->forward(x, true).second, 3);  // inference keeps the cache
}

TEST_F(CheckpointableTest, WarnsWhenNothingIsMarked) {
  LogCapture log;
  auto plain = std::make_shared<torch::nn::LinearImpl>(2, 2);
  EXPECT_EQ(remat::nn::gradient_checkpointing_enable(*plain), 0);
  EXPECT_EQ(log.count("no checkpointable block was marked"), 1);
}

TEST(LoggingTest, LoggerIsNamedRematAndCanBeSilenced) {
  auto logger = remat::logger();
  EXPECT_EQ(logger->name(), "remat");
  EXPECT_EQ(spdlog::get("remat"), logger);
  std::ostringstream out;
  auto quiet = std::make_shared<spdlog::logger>(
      "remat-quiet", std::make_shared<spdlog::sinks::ostream_sink_mt>(out));
  quiet->set_level(spdlog::level::off);
  remat::set_logger(quiet);
  GptStack model(1, 8, 2, 0.0);
  auto plain = std::make_shared<torch::nn::LinearImpl>(2, 2);
  remat::nn::gradient_checkpointing_enable(*plain);
  EXPECT_TRUE(out.str().empty());
  remat::set_logger(nullptr);
  EXPECT_EQ(remat::logger(), logger);
}
