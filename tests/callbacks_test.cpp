// The progress bar: its line against tqdm's (tests/oracles/progress_oracle.py)
// and the callback's exact output for a hand-driven training run.

#include "remat/callbacks.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>

#include "remat/logging.h"

namespace {

using nlohmann::json;

json oracle() {
  const char* dir = std::getenv("REMAT_ORACLE_DIR");
  std::ifstream in(std::string(dir != nullptr ? dir : "oracle") + "/progress/progress.json");
  EXPECT_TRUE(in) << "run the progress oracle first (REMAT_ORACLE_DIR)";
  return json::parse(in);
}

TEST(ProgressFormat, MatchesTqdm) {
  const auto cases = oracle();
  ASSERT_GE(cases.size(), 10u);
  for (const auto& c : cases) {
    EXPECT_EQ(remat::format_progress(c["n"].get<int64_t>(), c["total"].get<int64_t>(),
                                     c["elapsed"].get<double>(), c["postfix"].get<std::string>()),
              c["line"].get<std::string>())
        << c.dump();
  }
}

TEST(ProgressFormat, Intervals) {
  EXPECT_EQ(remat::format_interval(0.0), "00:00");
  EXPECT_EQ(remat::format_interval(59.9), "00:59");
  EXPECT_EQ(remat::format_interval(61.0), "01:01");
  EXPECT_EQ(remat::format_interval(3599.0), "59:59");
  EXPECT_EQ(remat::format_interval(3725.0), "1:02:05");
  EXPECT_EQ(remat::format_interval(100 * 3600.0), "100:00:00");
}

TEST(ProgressFormat, RemainingTimeIsStepsLeftTimesSecondsPerStep) {
  // 25 of 100 steps in 50 s: 2 s per step, 75 steps left -> 150 s.
  const auto line = remat::format_progress(25, 100, 50.0);
  EXPECT_NE(line.find("[00:50<02:30,  2.00s/it]"), std::string::npos) << line;
  EXPECT_EQ(line.substr(0, 5), " 25%|");
}

TEST(ProgressFormat, LogRecordAsHuggingFacePrintsIt) {
  json record = {{"loss", 2.30625}, {"learning_rate", 5e-05}, {"epoch", 0.5},
                 {"step", 10},      {"total_flos", 1e12},     {"note", "hi"}};
  EXPECT_EQ(remat::format_log_record(record),
            "{'epoch': '0.5', 'learning_rate': '5e-05', 'loss': '2.306', 'note': 'hi', "
            "'step': 10}");
}

// A clock the test moves by hand.
struct FakeClock {
  double now = 100.0;
  remat::ProgressCallback::Clock fn() {
    return [this] { return now; };
  }
};

struct TrainingRun {
  remat::TrainingArguments args;
  remat::TrainerState state;
  remat::TrainerControl control;
};

TEST(ProgressCallback, DrawsThrottlesPrintsLogsAboveAndEndsTheLine) {
  std::ostringstream out;
  FakeClock clock;
  remat::ProgressCallback bar(out, /*out_is_terminal=*/true, clock.fn(), 0.1);
  TrainingRun run;
  run.state.max_steps = 4;
  bar.on_train_begin(run.args, run.state, run.control);
  std::string want = "\r  0%|                    | 0/4 [00:00<?, ?it/s]";
  EXPECT_EQ(out.str(), want);

  clock.now += 0.05;  // within the throttle: no redraw
  run.state.global_step = 1;
  bar.on_step_end(run.args, run.state, run.control);
  EXPECT_EQ(out.str(), want);

  clock.now += 0.95;  // 1 s in, step 2
  run.state.global_step = 2;
  bar.on_step_end(run.args, run.state, run.control);
  want += "\r 50%|██████████          | 2/4 [00:01<00:01,  2.00it/s]";
  EXPECT_EQ(out.str(), want);

  // A log record: cleared line, the record, the bar again with the loss.
  bar.on_log(run.args, run.state, run.control, {{"loss", 2.5}, {"step", 2}});
  const std::string cleared = "\r" + std::string(55, ' ') + "\r";
  want += cleared + "{'loss': '2.5', 'step': 2}\n" +
          "\r 50%|██████████          | 2/4 [00:01<00:01,  2.00it/s, loss=2.5]";
  EXPECT_EQ(out.str(), want);

  // The last step always draws, throttle or not.
  clock.now += 0.01;
  run.state.global_step = 4;
  bar.on_step_end(run.args, run.state, run.control);
  want += "\r100%|████████████████████| 4/4 [00:01<00:00,  3.96it/s, loss=2.5]";
  EXPECT_EQ(out.str(), want);

  bar.on_train_end(run.args, run.state, run.control);
  want += "\r100%|████████████████████| 4/4 [00:01<00:00,  3.96it/s, loss=2.5]\n";
  EXPECT_EQ(out.str(), want);

  // After training, write() prints plain lines.
  bar.write("done");
  EXPECT_EQ(out.str(), want + "done\n");
}

TEST(ProgressCallback, AShorterLineBlanksTheRestOfTheLongerOne) {
  std::ostringstream out;
  FakeClock clock;
  remat::ProgressCallback bar(out, true, clock.fn(), 0.0);
  TrainingRun run;
  run.state.max_steps = 3;
  bar.on_train_begin(run.args, run.state, run.control);
  run.state.global_step = 1;
  clock.now += 1801.0;  // 2 steps left at 1801 s each: 1:00:02 remaining
  bar.on_step_end(run.args, run.state, run.control);
  run.state.global_step = 2;
  clock.now += 1.0;  // 15:01 left at 901.00s/it: three columns shorter
  bar.on_step_end(run.args, run.state, run.control);
  const auto text = out.str();
  EXPECT_EQ(text.substr(text.rfind('\r')),
            "\r 67%|█████████████▎      | 2/3 [30:02<15:01, 901.00s/it]   ");
}

TEST(ProgressCallback, ShowsAsDisableTqdmAndTheTerminalSay) {
  TrainingRun run;
  std::ostringstream out;
  remat::ProgressCallback tty(out, true), pipe(out, false);
  EXPECT_TRUE(tty.enabled(run.args));
  EXPECT_FALSE(pipe.enabled(run.args));
  run.args.disable_tqdm = false;
  EXPECT_TRUE(pipe.enabled(run.args));
  run.args.disable_tqdm = true;
  EXPECT_FALSE(tty.enabled(run.args));
  run.args.disable_tqdm.reset();
  const auto level = remat::logger()->level();
  remat::logger()->set_level(spdlog::level::err);
  EXPECT_FALSE(tty.enabled(run.args));
  remat::logger()->set_level(level);
}

TEST(ProgressCallback, WritesNothingWhenDisabledOrNotProcessZero) {
  for (bool process_zero : {true, false}) {
    std::ostringstream out;
    remat::ProgressCallback bar(out, /*out_is_terminal=*/process_zero ? false : true);
    TrainingRun run;
    run.state.max_steps = 3;
    run.state.is_world_process_zero = process_zero;
    bar.on_train_begin(run.args, run.state, run.control);
    run.state.global_step = 3;
    bar.on_step_end(run.args, run.state, run.control);
    bar.on_log(run.args, run.state, run.control, {{"loss", 1.0}});
    bar.on_train_end(run.args, run.state, run.control);
    EXPECT_EQ(out.str(), "") << "process_zero=" << process_zero;
  }
}

}  // namespace
