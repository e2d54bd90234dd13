// Learning-rate schedules against transformers.get_scheduler (the
// lr_scheduler oracle), exact resume, and the errors for bad arguments.

#include "remat/optim/lr_scheduler.h"

#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "oracle.h"
#include "support.h"

using nlohmann::json;
using remat::optim::get_lr_lambda;
using remat::optim::LRScheduler;
using remat::optim::LRSchedulerOptions;
using remat::optim::LRSchedulerState;

namespace {

// Two param groups: the default lr and a group of its own, as the oracle.
struct TwoGroupSgd {
  explicit TwoGroupSgd(const std::vector<double>& lrs)
      : optimizer(groups(lrs), torch::optim::SGDOptions(lrs[0])) {}

  static std::vector<torch::optim::OptimizerParamGroup> groups(const std::vector<double>& lrs) {
    std::vector<torch::optim::OptimizerParamGroup> result;
    result.emplace_back(std::vector<torch::Tensor>{torch::zeros({2}, torch::requires_grad())});
    result.emplace_back(std::vector<torch::Tensor>{torch::zeros({3}, torch::requires_grad())},
                        std::make_unique<torch::optim::SGDOptions>(lrs[1]));
    return result;
  }

  torch::optim::SGD optimizer;
};

LRSchedulerOptions options_of(const json& c) {
  LRSchedulerOptions options(c["name"].get<std::string>());
  options.num_warmup_steps(c["num_warmup_steps"].get<int64_t>());
  if (!c["num_training_steps"].is_null()) {
    options.num_training_steps(c["num_training_steps"].get<int64_t>());
  }
  return options.scheduler_specific_kwargs(c["kwargs"]);
}

std::string describe(const json& c) {
  return c["name"].get<std::string>() + " warmup=" + c["num_warmup_steps"].dump() +
         " total=" + c["num_training_steps"].dump() + " kwargs=" + c["kwargs"].dump();
}

const json& cases() {
  static const json all =
      remat::test::read_json(remat::test::oracle_dir("lr_scheduler") + "/schedules.json");
  return all;
}

// A schedule's value is at most 16 float64 roundings (ratios, cos, sqrt or
// pow, products), each relative to the base lr: 2 gamma_16 in two
// orders. Near a schedule's zero (1 + cos(pi p), 1 - sqrt(p) at the last of
// n steps) a rounding of the base lr's size is amplified relative to the value
// by up to about n^2 (the cosine: 2 / (pi / n)^2 / pi^2 = 2 n^2 / pi^2 from
// cos itself, 2 n from its argument); so 2 gamma_16 (1 + n^2) relative.
::testing::AssertionResult close(const std::vector<double>& actual, const json& expected,
                                 size_t steps) {
  const double n = static_cast<double>(steps);
  const double rtol = remat::test::reduction_tolerance(16, 1.0, torch::kDouble) * (1 + n * n);
  auto reference = expected.get<std::vector<double>>();
  if (actual.size() != reference.size()) {
    return ::testing::AssertionFailure()
           << actual.size() << " groups, expected " << reference.size();
  }
  for (size_t g = 0; g < actual.size(); ++g) {
    if (std::abs(actual[g] - reference[g]) > rtol * std::abs(reference[g])) {
      return ::testing::AssertionFailure()
             << "group " << g << ": " << actual[g] << " vs " << reference[g] << ", rtol " << rtol;
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace

TEST(LRSchedulerTest, OracleCoversEveryType) {
  std::set<std::string> seen;
  for (const auto& c : cases()) seen.insert(c["name"].get<std::string>());
  for (const auto& name : remat::optim::scheduler_types()) EXPECT_TRUE(seen.count(name)) << name;
}

TEST(LRSchedulerTest, MatchesTransformersAtEveryStep) {
  for (const auto& c : cases()) {
    TwoGroupSgd sgd(c["lr"].get<std::vector<double>>());
    LRScheduler scheduler(sgd.optimizer, options_of(c));
    const auto& lrs = c["lrs"];
    ASSERT_TRUE(close(scheduler.last_lr(), lrs[0], lrs.size()))
        << describe(c) << " at construction";
    for (size_t step = 1; step < lrs.size(); ++step) {
      scheduler.step();
      ASSERT_TRUE(close(scheduler.last_lr(), lrs[step], lrs.size()))
          << describe(c) << " step " << step;
      ASSERT_EQ(sgd.optimizer.param_groups()[1].options().get_lr(), scheduler.last_lr()[1]);
    }
    EXPECT_EQ(scheduler.state().last_epoch, c["state"]["last_epoch"].get<int64_t>());
    EXPECT_EQ(scheduler.state().base_lrs, c["state"]["base_lrs"].get<std::vector<double>>());
  }
}

TEST(LRSchedulerTest, ResumeFromSavedStateEqualsUninterruptedRun) {
  for (const auto& c : cases()) {
    const auto& lrs = c["lrs"];
    auto lr = c["lr"].get<std::vector<double>>();
    for (size_t stop : {size_t{1}, lrs.size() / 2, lrs.size() - 1}) {
      TwoGroupSgd first(lr);
      LRScheduler interrupted(first.optimizer, options_of(c));
      for (size_t step = 1; step <= stop; ++step) interrupted.step();
      auto saved = interrupted.state().to_json().dump();

      TwoGroupSgd second(lr);
      LRScheduler resumed(second.optimizer, options_of(c));
      resumed.load_state(LRSchedulerState::from_json(json::parse(saved)));
      ASSERT_EQ(resumed.last_lr(), interrupted.last_lr()) << describe(c) << " resumed at " << stop;
      ASSERT_EQ(second.optimizer.param_groups()[0].options().get_lr(), interrupted.last_lr()[0]);
      for (size_t step = stop + 1; step < lrs.size(); ++step) {
        resumed.step();
        interrupted.step();
        ASSERT_EQ(resumed.last_lr(), interrupted.last_lr()) << describe(c) << " step " << step;
        ASSERT_TRUE(close(resumed.last_lr(), lrs[step], lrs.size()))
            << describe(c) << " step " << step;
      }
    }
  }
}

TEST(LRSchedulerTest, LambdaIsTheMultiplier) {
  auto linear = get_lr_lambda(LRSchedulerOptions("linear").num_training_steps(10), 1e-3);
  EXPECT_EQ(linear(0), 1.0);
  EXPECT_EQ(linear(5), 0.5);
  EXPECT_EQ(linear(10), 0.0);
  auto warm = get_lr_lambda(LRSchedulerOptions("constant_with_warmup").num_warmup_steps(4), 1.0);
  EXPECT_EQ(warm(1), 0.25);
  EXPECT_EQ(warm(4), 1.0);
}

TEST(LRSchedulerTest, DefaultIsLinear) {
  LRSchedulerOptions options;
  EXPECT_EQ(options.name(), "linear");
  EXPECT_EQ(options.num_warmup_steps(), 0);
  EXPECT_FALSE(options.num_training_steps().has_value());
  EXPECT_TRUE(options.scheduler_specific_kwargs().empty());
}

TEST(LRSchedulerTest, StateJson) {
  LRSchedulerState state{7, {1e-3, 5e-4}};
  EXPECT_EQ(state.to_json(), json::parse(R"({"last_epoch": 7, "base_lrs": [0.001, 0.0005]})"));
  auto back = LRSchedulerState::from_json(state.to_json());
  EXPECT_EQ(back.last_epoch, 7);
  EXPECT_EQ(back.base_lrs, state.base_lrs);
  ASSERT_THROWS_WITH(LRSchedulerState::from_json(json::parse(R"({"base_lrs": []})")),
                     "with \"last_epoch\" and \"base_lrs\"");
  ASSERT_THROWS_WITH(
      LRSchedulerState::from_json(json::parse(R"({"last_epoch": 1.5, "base_lrs": []})")),
      "\"last_epoch\" must be an integer, got 1.5");
  ASSERT_THROWS_WITH(
      LRSchedulerState::from_json(json::parse(R"({"last_epoch": 1, "base_lrs": ["a"]})")),
      "\"base_lrs\" must be an array of numbers, got [\"a\"]");
}

TEST(LRSchedulerTest, LoadStateChecksGroupsAndStep) {
  TwoGroupSgd sgd({1e-3, 5e-4});
  LRScheduler scheduler(sgd.optimizer, LRSchedulerOptions("linear").num_training_steps(10));
  ASSERT_THROWS_WITH(scheduler.load_state({3, {1e-3}}),
                     "state has 1 base_lrs but the optimizer has 2 param groups");
  ASSERT_THROWS_WITH(scheduler.load_state({-1, {1e-3, 1e-3}}), "last_epoch must be >= 0, got -1");
}

TEST(LRSchedulerTest, ErrorsNameTheBadValue) {
  auto build = [](const LRSchedulerOptions& options) { return get_lr_lambda(options, 1e-3); };
  ASSERT_THROWS_WITH(build(LRSchedulerOptions("cosinus").num_training_steps(10)),
                     "Invalid lr_scheduler_type 'cosinus'; valid types: linear, cosine, "
                     "cosine_with_restarts, polynomial, constant, constant_with_warmup, "
                     "inverse_sqrt, cosine_with_min_lr, cosine_warmup_with_min_lr, "
                     "warmup_stable_decay");
  ASSERT_THROWS_WITH(build(LRSchedulerOptions("reduce_lr_on_plateau")),
                     "'reduce_lr_on_plateau' adapts to an evaluation metric and is not supported");
  ASSERT_THROWS_WITH(
      build(LRSchedulerOptions("linear").num_training_steps(10).num_warmup_steps(-1)),
      "num_warmup_steps must be >= 0, got -1");
  ASSERT_THROWS_WITH(build(LRSchedulerOptions("linear").num_training_steps(-5)),
                     "num_training_steps must be >= 0, got -5");
  ASSERT_THROWS_WITH(build(LRSchedulerOptions("cosine")),
                     "lr_scheduler_type 'cosine' needs num_training_steps");
  ASSERT_THROWS_WITH(
      build(LRSchedulerOptions("cosine").num_training_steps(10).scheduler_specific_kwargs(
          {{"num_cycle", 1}})),
      "Unknown lr_scheduler_kwargs key \"num_cycle\" for 'cosine'; valid keys: "
      "num_cycles");
  ASSERT_THROWS_WITH(build(LRSchedulerOptions("constant").scheduler_specific_kwargs({{"x", 1}})),
                     "Unknown lr_scheduler_kwargs key \"x\" for 'constant'; valid keys: (none)");
  ASSERT_THROWS_WITH(
      build(LRSchedulerOptions("linear").num_training_steps(10).scheduler_specific_kwargs(
          json::array({1}))),
      "lr_scheduler_kwargs must be a JSON object, got [1]");
  ASSERT_THROWS_WITH(
      build(LRSchedulerOptions("cosine").num_training_steps(10).scheduler_specific_kwargs(
          {{"num_cycles", "two"}})),
      "lr_scheduler_kwargs[\"num_cycles\"] of 'cosine' must be a number, got \"two\"");
}

TEST(LRSchedulerTest, TypeSpecificErrors) {
  auto build = [](const std::string& name, int64_t warmup, int64_t total, const json& kwargs) {
    return get_lr_lambda(LRSchedulerOptions(name)
                             .num_warmup_steps(warmup)
                             .num_training_steps(total)
                             .scheduler_specific_kwargs(kwargs),
                         1e-3);
  };
  ASSERT_THROWS_WITH(build("polynomial", 10, 10, json::object()),
                     "got num_warmup_steps = num_training_steps = 10");
  ASSERT_THROWS_WITH(build("polynomial", 0, 10, {{"lr_end", 1e-3}}),
                     "lr_end (0.001) must be smaller than initial lr (0.001)");
  ASSERT_THROWS_WITH(build("polynomial", 0, 10, {{"power", -1}}),
                     "lr_scheduler_kwargs[\"power\"] of 'polynomial' must be >= 0, got -1");
  ASSERT_THROWS_WITH(build("cosine_with_min_lr", 0, 10, json::object()),
                     "'cosine_with_min_lr' needs one of lr_scheduler_kwargs min_lr or min_lr_rate");
  ASSERT_THROWS_WITH(
      build("cosine_warmup_with_min_lr", 0, 10, {{"min_lr", 1e-5}, {"min_lr_rate", 0.1}}),
      "takes one of lr_scheduler_kwargs min_lr or min_lr_rate, got both");
  ASSERT_THROWS_WITH(build("inverse_sqrt", 0, 10, {{"timescale", 0}}),
                     "lr_scheduler_kwargs[\"timescale\"] of 'inverse_sqrt' must be > 0, got 0");
  ASSERT_THROWS_WITH(build("warmup_stable_decay", 0, 10, json::object()),
                     "'warmup_stable_decay' needs lr_scheduler_kwargs[\"num_decay_steps\"]");
  ASSERT_THROWS_WITH(
      build("warmup_stable_decay", 0, 10, {{"num_decay_steps", 2}, {"decay_type", "exp"}}),
      "lr_scheduler_kwargs[\"decay_type\"] of 'warmup_stable_decay' is \"exp\"; valid "
      "values: linear, cosine, 1-sqrt");
  ASSERT_THROWS_WITH(get_lr_lambda(LRSchedulerOptions("warmup_stable_decay")
                                       .scheduler_specific_kwargs({{"num_decay_steps", 2}}),
                                   1e-3),
                     "needs num_training_steps or lr_scheduler_kwargs[\"num_stable_steps\"]");
}
