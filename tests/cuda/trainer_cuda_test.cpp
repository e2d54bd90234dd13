// The Trainer on a CUDA device: bf16 and fp16 (with its loss scaler),
// checkpointing on and off, and exact resume with the CUDA generator state.
// Skipped without a CUDA device.

#include <ATen/cuda/CUDAContext.h>
#include <gtest/gtest.h>
#include <torch/torch.h>

#include <cmath>
#include <memory>
#include <string>
#include <vector>

#include "remat/flops.h"
#include "remat/trainer.h"
#include "support.h"
#include "trainer_support.h"

namespace {

using remat::Trainer;
using remat::TrainingArguments;
using remat::test::args_in;
using remat::test::losses;
using remat::test::make_dataset;
using remat::test::scratch_dir;
using remat::test::tiny_gpt2;
using remat::test::weights;

// A 12-step run on the GPU writing into `dir`.
TrainingArguments cuda_args(const std::string& dir) {
  auto args = args_in(dir);
  args.use_cpu = false;
  args.per_device_train_batch_size = 4;
  args.max_steps = 12;
  args.logging_steps = 1;
  args.learning_rate = 3e-3;
  return args;
}

// Stops training after step 6, as an interruption would (a checkpoint is
// saved at step 6 by save_steps).
struct StopAtSix : remat::TrainerCallback {
  void on_step_end(const TrainingArguments&, remat::TrainerState& state,
                   remat::TrainerControl& control) override {
    if (state.global_step == 6) control.should_training_stop = true;
  }
};

class TrainerCuda : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  }
};

TEST_F(TrainerCuda, MixedPrecisionTrainsOnTheGpu) {
  for (const std::string precision : {"fp32", "bf16", "fp16"}) {
    SCOPED_TRACE(precision);
    auto args = cuda_args(scratch_dir("cuda_" + precision));
    args.bf16 = precision == "bf16";
    args.fp16 = precision == "fp16";
    auto model = tiny_gpt2();
    Trainer trainer(model, args, make_dataset(48, 31));
    EXPECT_TRUE(trainer.device().is_cuda());
    auto result = trainer.train();
    EXPECT_EQ(result.global_step, 12);
    EXPECT_TRUE(model->parameters().front().is_cuda());
    const auto l = losses(trainer);
    ASSERT_EQ(l.size(), 12u);
    for (double v : l) EXPECT_TRUE(std::isfinite(v));
    EXPECT_LT(l.back(), l.front());
    const auto& last = trainer.log_history()[11];
    EXPECT_GT(last.at("peak_memory_mib").get<int64_t>(), -1);
    if (args.fp16) {
      // No overflow on this model: every step applied, the scale untouched.
      EXPECT_EQ(last.at("skipped_steps"), 0);
      EXPECT_EQ(last.at("loss_scale"), 65536.0);
    }
  }
}

TEST_F(TrainerCuda, CheckpointingTrainsTheSameAndResumesExactly) {
  auto run = [](const std::string& dir, bool checkpointing, bool stop_at_6, bool resume) {
    auto args = cuda_args(dir);
    args.gradient_checkpointing = checkpointing;
    args.bf16 = true;
    args.save_strategy = "steps";
    args.save_steps = 6;
    if (resume) args.resume_from_checkpoint = "latest";
    auto model = tiny_gpt2(/*dropout=*/0.1, resume ? 7 : 0);
    std::vector<std::shared_ptr<remat::TrainerCallback>> callbacks;
    if (stop_at_6) callbacks.push_back(std::make_shared<StopAtSix>());
    Trainer trainer(model, args, make_dataset(48, 32), nullptr, nullptr, callbacks);
    trainer.train();
    return std::make_pair(losses(trainer), weights(*model));
  };
  const auto [plain_losses, plain_weights] = run(scratch_dir("cuda_ckpt_off"), false, false, false);
  const auto [ckpt_losses, ckpt_weights] = run(scratch_dir("cuda_ckpt_on"), true, false, false);
  // Bitwise, as on the CPU: checkpointing replays the same kernels on the
  // same inputs with the dropout stream restored. The one reduction on the
  // path whose order is not fixed, the fused attention backward's atomic
  // accumulation of dq over blocks of keys, has one block here (at most 11
  // keys, a block is 64 or more): a sum of one term, exact.
  ASSERT_EQ(plain_losses.size(), ckpt_losses.size());
  EXPECT_EQ(ckpt_losses, plain_losses);
  // Stopped at step 6 and resumed (other initial weights: the checkpoint
  // replaces them): the CUDA dropout stream and the data order carry on.
  const auto dir = scratch_dir("cuda_resume");
  run(dir, true, true, false);
  const auto [resumed_losses, resumed_weights] = run(dir, true, false, true);
  // Bitwise: the checkpoint holds the float32 weights, the optimizer state
  // and the RNG exactly, and steps 7 to 12 run the same kernels (the dq
  // accumulation above is a sum of one term).
  ASSERT_EQ(resumed_losses.size(), ckpt_losses.size());
  for (size_t i = 6; i < ckpt_losses.size(); ++i) {
    EXPECT_EQ(resumed_losses[i], ckpt_losses[i]) << i;
  }
  ASSERT_EQ(resumed_weights.size(), ckpt_weights.size());
  for (size_t i = 0; i < ckpt_weights.size(); ++i) {
    EXPECT_TRUE(remat::test::bitwise_equal(resumed_weights[i], ckpt_weights[i])) << i;
  }
}

// The log line's MFU is remat-bench's: CausalLM::training_flops_per_token(seq)
// times the tokens per second over the device's peak, one definition for
// both (here every row has 12 tokens, so every batch's seq is 12).
TEST_F(TrainerCuda, LoggedMfuIsTheModelFlopsOverThePeak) {
  const auto peak = remat::peak_flops(at::cuda::getDeviceProperties(0)->name, /*bf16=*/true);
  if (!peak) GTEST_SKIP() << "no known peak for " << at::cuda::getDeviceProperties(0)->name;
  auto args = cuda_args(scratch_dir("cuda_mfu"));
  args.bf16 = true;
  auto dataset = std::make_shared<remat::test::VectorDataset>();
  for (int64_t i = 0; i < 48; ++i) {
    remat::data::Example e;
    for (int64_t t = 0; t < 12; ++t) e.input_ids.push_back(3 + (i + t) % 40);
    e.labels = e.input_ids;
    dataset->examples.push_back(e);
  }
  auto model = tiny_gpt2();
  Trainer trainer(model, args, dataset);
  trainer.train();
  int logged = 0;
  for (const auto& record : trainer.log_history()) {
    if (!record.contains("mfu")) continue;  // the run's summary
    const double expected =
        model->training_flops_per_token(12) * record.at("tokens_per_s").get<double>() / *peak;
    // The same products and quotients in another order: a few float64 roundings.
    EXPECT_NEAR(record.at("mfu").get<double>(), expected, 8 * std::ldexp(1.0, -53) * expected);
    ++logged;
  }
  EXPECT_EQ(logged, 12);
}

}  // namespace
