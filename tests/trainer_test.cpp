// remat::Trainer's core loop on CPU with a tiny GPT-2: accumulation equals
// one big batch, checkpointing does not change training, the model learns,
// and evaluation, logging, the final save, checkpoints and resume work.
// trainer_callback_test.cpp covers callbacks, trainer_state.json, fp16 and
// the failure paths; trainer_process_test.cpp signals and crashes.

#include "remat/trainer.h"

#include <ATen/autocast_mode.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <fstream>

#include "remat/models/causal_lm.h"
#include "support.h"
#include "trainer_support.h"

using remat::Trainer;
using remat::TrainingArguments;
using namespace remat::test;

namespace {

// Stops training after a given step with a checkpoint, as a callback may.
struct StopAt : remat::TrainerCallback {
  explicit StopAt(int64_t step) : step(step) {}
  void on_step_end(const TrainingArguments&, remat::TrainerState& state,
                   remat::TrainerControl& control) override {
    if (state.global_step == step) control.should_training_stop = control.should_save = true;
  }
  int64_t step;
};

}  // namespace

TEST(TrainerTest, AccumulationEqualsOneBigBatch) {
  // Examples of different lengths, so a per-micro-batch mean would weigh
  // tokens differently; normalizing by all accumulated tokens must not.
  auto dataset = make_dataset(8, 1);
  auto big = base_args("big");
  big.per_device_train_batch_size = 8;
  big.max_steps = 2;
  // A large epsilon makes each AdamW update proportional to the gradient, so
  // the weights compare the gradients themselves.
  big.adam_epsilon = 1.0;
  auto small = big;
  small.output_dir = scratch_dir("small");
  small.per_device_train_batch_size = 2;
  small.gradient_accumulation_steps = 4;

  auto a = tiny_gpt2();
  Trainer(a, big, dataset).train();
  auto b = tiny_gpt2();
  Trainer(b, small, dataset).train();
  auto wa = weights(*a), wb = weights(*b);
  // The same float32 sums in another order (per micro-batch, then
  // accumulated): a gradient's chain of roundings is twice tiny_gpt2's
  // forward (2 layers, n_embd 32, head_dim 8, vocab 48; 8 sequences of at
  // most 11 tokens). Clipped gradients are at most max_grad_norm (1) in size;
  // AdamW with eps 1 moves a weight by at most lr per unit of gradient, and
  // its own 12 roundings a step add 2 gamma_12 |p|.
  const int64_t chain = 2 * remat::test::transformer_chain(2, 32, 4 * 32, 8, 11, 48, 8 * 11);
  const double steps = static_cast<double>(big.max_steps);
  const double atol = steps * big.learning_rate * remat::test::reduction_tolerance(chain, 1.0);
  const double rtol = steps * remat::test::reduction_tolerance(12, 1.0);
  for (size_t i = 0; i < wa.size(); ++i) {
    EXPECT_TRUE(torch::allclose(wa[i], wb[i], rtol, atol))
        << "parameter " << i << ": max difference " << (wa[i] - wb[i]).abs().max().item<double>()
        << ", rtol " << rtol << ", atol " << atol;
  }
}

TEST(TrainerTest, CheckpointingGivesTheSameLossCurve) {
  auto dataset = make_dataset(16, 2);
  auto run = [&](bool checkpointing) {
    auto args = base_args(checkpointing ? "ckpt" : "plain");
    args.per_device_train_batch_size = 4;
    args.max_steps = 5;
    args.gradient_checkpointing = checkpointing;
    auto model = tiny_gpt2();
    Trainer trainer(model, args, dataset);
    trainer.train();
    EXPECT_EQ(model->is_gradient_checkpointing(), checkpointing);
    return losses(trainer);
  };
  auto plain = run(false);
  auto ckpt = run(true);
  ASSERT_EQ(plain.size(), 5u);
  EXPECT_EQ(plain, ckpt);  // bitwise: CPU ops are deterministic
}

TEST(TrainerTest, LearnsEvaluatesLogsAndSaves) {
  auto train = make_dataset(64, 3);
  auto eval = make_dataset(16, 4);
  auto args = base_args("learn");
  args.per_device_train_batch_size = 8;
  args.num_train_epochs = 6;
  args.logging_steps = 8;
  args.eval_strategy = "epoch";
  args.lr_scheduler_type = "cosine";
  args.warmup_steps = 0.1;
  auto model = tiny_gpt2();
  Trainer trainer(model, args, train, eval);
  const double before = trainer.evaluate().at("eval_loss");
  auto result = trainer.train();
  auto metrics = trainer.evaluate();
  EXPECT_EQ(result.global_step, 48);
  EXPECT_LT(metrics.at("eval_loss"), before * 0.6);
  // The trainer reports std::exp(eval_loss): the same operation, bitwise.
  EXPECT_EQ(metrics.at("perplexity"), std::exp(metrics.at("eval_loss")));

  // One JSON line per record, the same records as log_history.
  std::ifstream in(args.output_dir + "/log.jsonl");
  std::string line;
  size_t lines = 0;
  while (std::getline(in, line)) {
    EXPECT_EQ(nlohmann::json::parse(line), trainer.log_history().at(lines));
    ++lines;
  }
  EXPECT_EQ(lines, trainer.log_history().size());
  EXPECT_EQ(losses(trainer).size(), 6u);

  // The final model is a Hugging Face directory remat loads back.
  auto saved = remat::models::AutoModelForCausalLM::from_pretrained(args.output_dir);
  auto expected = weights(*model);
  auto got = weights(*saved);
  for (size_t i = 0; i < expected.size(); ++i) EXPECT_TRUE(torch::equal(expected[i], got[i]));
}

TEST(TrainerTest, ResumeContinuesExactlyWhereTrainingStopped) {
  // Dropout on, and the stop falls mid-epoch: the resumed run must restore
  // weights, AdamW moments, the schedule, the generator and the data order.
  auto dataset = make_dataset(16, 6);
  auto args = base_args("resume");
  args.per_device_train_batch_size = 4;
  args.max_steps = 7;
  args.lr_scheduler_type = "cosine";
  args.save_strategy = "steps";
  args.save_steps = 100;
  auto straight_args = args;
  straight_args.output_dir = scratch_dir("straight");
  straight_args.save_strategy = "no";
  auto straight = tiny_gpt2(0.1);
  Trainer reference(straight, straight_args, dataset);
  reference.train();

  auto first = tiny_gpt2(0.1);
  Trainer interrupted(first, args, dataset, nullptr, nullptr, {std::make_shared<StopAt>(3)});
  EXPECT_EQ(interrupted.train().global_step, 3);
  ASSERT_TRUE(exists(args.output_dir + "/checkpoint-3/model.safetensors"));
  ASSERT_TRUE(exists(args.output_dir + "/checkpoint-3/trainer_state.json"));

  auto resumed_model = tiny_gpt2(0.1, /*seed=*/99);  // other weights: the checkpoint's must win
  args.resume_from_checkpoint = "latest";
  Trainer resumed(resumed_model, args, dataset);
  EXPECT_EQ(resumed.train().global_step, 7);
  EXPECT_EQ(losses(resumed), losses(reference));
  auto want = weights(*straight), got = weights(*resumed_model);
  for (size_t i = 0; i < want.size(); ++i) EXPECT_TRUE(torch::equal(want[i], got[i])) << i;
}

TEST(TrainerTest, SaveTotalLimitKeepsTheNewestCheckpoints) {
  auto dataset = make_dataset(8, 7);
  auto args = base_args("limit");
  args.per_device_train_batch_size = 4;
  args.max_steps = 4;
  args.save_strategy = "steps";
  args.save_steps = 1;
  args.save_total_limit = 2;
  Trainer(tiny_gpt2(), args, dataset).train();
  for (int step : {1, 2})
    EXPECT_FALSE(exists(args.output_dir + "/checkpoint-" + std::to_string(step)));
  for (int step : {3, 4})
    EXPECT_TRUE(exists(args.output_dir + "/checkpoint-" + std::to_string(step)));
  args.resume_from_checkpoint = args.output_dir + "/checkpoint-1";
  ASSERT_THROWS_WITH(Trainer(tiny_gpt2(), args, dataset).train(), "is not a directory");
}

TEST(TrainerTest, Bf16RunsTheForwardUnderAutocast) {
  auto dataset = make_dataset(8, 8);
  auto run = [&](bool bf16) {
    auto args = base_args(bf16 ? "bf16" : "fp32");
    args.per_device_train_batch_size = 4;
    args.max_steps = 3;
    args.bf16 = bf16;
    Trainer trainer(tiny_gpt2(), args, dataset);
    trainer.train();
    return losses(trainer);
  };
  auto fp32 = run(false);
  auto bf16 = run(true);
  ASSERT_EQ(bf16.size(), 3u);
  for (double loss : bf16) EXPECT_TRUE(std::isfinite(loss));
  EXPECT_NE(fp32, bf16);  // the bf16 matmuls round differently
  // tiny_gpt2: 6 matmuls a layer (q/k/v, scores, values, output, two MLP) in
  // 2 layers, plus the head.
  EXPECT_TRUE(remat::test::within_tolerance(
      bf16.front(), fp32.front(),
      remat::test::autocast_loss_tolerance(6 * 2 + 1, fp32.front(), torch::kBFloat16)));
  EXPECT_FALSE(at::autocast::is_autocast_enabled(c10::DeviceType::CPU));
}

TEST(TrainerTest, InvalidSetupsAreErrors) {
  auto dataset = make_dataset(4, 5);
  auto args = base_args("errors");
  args.eval_strategy = "steps";
  args.eval_steps = 10;
  ASSERT_THROWS_WITH(Trainer(tiny_gpt2(), args, dataset),
                     "eval_strategy \"steps\" needs an eval dataset");
  args.eval_strategy = "no";
  auto plain = std::make_shared<torch::nn::LinearImpl>(2, 2);
  Trainer trainer(plain, args, dataset);
  ASSERT_THROWS_WITH(trainer.train(), "override Trainer::compute_loss");
}

// Token ids the model has no embedding for (a tokenizer larger than the
// model): an error on the host batch, naming the step, the example and the
// id, before anything reaches the device. (The data are shuffled, so the
// step and the example are not asserted.)
TEST(TrainerTest, TokensBeyondTheVocabularyAreErrors) {
  auto args = base_args("beyond_vocab");
  args.per_device_train_batch_size = 2;
  args.max_steps = 2;
  auto dataset = make_dataset(4, 5);
  dataset->examples[3].input_ids[2] = 48;
  ASSERT_THROWS_WITH(Trainer(tiny_gpt2(), args, dataset).train(),
                     "has input id 48 at position 2; the model's vocab_size is 48");
  dataset = make_dataset(4, 5);
  dataset->examples[0].labels[1] = 60;
  ASSERT_THROWS_WITH(Trainer(tiny_gpt2(), args, dataset).train(),
                     "has label 60 at position 1; the model's vocab_size is 48");
}
