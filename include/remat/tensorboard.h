#pragma once

/// \file
/// TensorBoard event files, written as `torch.utils.tensorboard.SummaryWriter`
/// writes them, and the Trainer callback that sends the logs there (Hugging
/// Face's TensorBoardCallback, chosen with `report_to tensorboard`).
/// \code
///   remat::SummaryWriter writer("runs/exp1");
///   writer.add_scalar("train/loss", 2.31, /*step=*/10);
///   writer.add_text("notes", "first run");
///   writer.close();   // then: tensorboard --logdir runs
/// \endcode
///
/// This header does not include the torch headers.

#include <nlohmann/json.hpp>

#include <chrono>
#include <cstdint>
#include <cstdio>
#include <memory>
#include <optional>
#include <string>

#include "remat/trainer_callback.h"
#include "remat/training_arguments.h"

namespace remat {

/// Writes scalars and text to one new event file in a directory, in the
/// format TensorBoard reads: the file
/// `events.out.tfevents.<seconds>.<hostname>.<pid>.<n>` (n counts the
/// writers of the process) is a sequence of TFRecords, each an `Event`
/// protobuf; the first holds `file_version: "brain.Event:2"`.
///
/// Records are buffered; flush() (also called every `flush_secs` seconds by
/// the adding calls, close() and the destructor) makes them visible to
/// TensorBoard. Not thread-safe.
///
/// Example: `remat::SummaryWriter writer(dir); writer.add_scalar("loss", 1.5, 1);`
class SummaryWriter {
 public:
  /// Creates `log_dir` (and its parents) and the event file in it. Throws
  /// std::runtime_error naming the path if either cannot be created.
  explicit SummaryWriter(const std::string& log_dir, double flush_secs = 120.0);
  ~SummaryWriter();
  SummaryWriter(const SummaryWriter&) = delete;
  SummaryWriter& operator=(const SummaryWriter&) = delete;

  /// One scalar (TensorBoard's `simple_value`, a float32) under `tag` at
  /// `step`. `wall_time` is seconds since the epoch; default: now.
  void add_scalar(const std::string& tag, double value, int64_t step = 0,
                  std::optional<double> wall_time = std::nullopt);

  /// A text entry, as torch's add_text writes it: the tag `<tag>/text_summary`
  /// holding a string tensor with the text plugin's metadata (shown in
  /// TensorBoard's Text tab; markdown is rendered).
  void add_text(const std::string& tag, const std::string& text, int64_t step = 0,
                std::optional<double> wall_time = std::nullopt);

  /// Writes the buffered records to the file. Throws std::runtime_error on a
  /// write error.
  void flush();

  /// Flushes and closes the file; later adds are errors. Idempotent.
  void close();

  /// The directory the file is in.
  const std::string& log_dir() const { return log_dir_; }
  /// The event file's full path.
  const std::string& file_path() const { return file_path_; }

 private:
  void write_event(const std::string& event);

  std::string log_dir_;
  std::string file_path_;
  std::FILE* file_ = nullptr;
  double flush_secs_;
  std::chrono::steady_clock::time_point last_flush_;
};

/// The TensorBoard tag of a log key, as Hugging Face's rewrite_logs:
/// `eval_loss` -> `eval/loss`, `test_x` -> `test/x`, anything else `k` ->
/// `train/k`.
std::string tensorboard_tag(const std::string& key);

/// Where TensorBoardCallback writes for `args`, as transformers 5.24 decides
/// (it removed logging_dir): `$TENSORBOARD_LOGGING_DIR` (a leading `~` is
/// expanded) when set, else `<output_dir>/runs/<Mon><DD>_<HH>-<MM>-<SS>_<hostname>`
/// with the local time now, e.g. `trainer_output/runs/Nov25_14-03-07_gpu1`.
std::string default_tensorboard_log_dir(const TrainingArguments& args);

/// Sends the Trainer's logs to TensorBoard, as Hugging Face's
/// TensorBoardCallback: on_train_begin writes the training arguments as the
/// text `args`; on_log writes every numeric (or boolean) value of a record as
/// a scalar under tensorboard_tag(key) at state.global_step, every string
/// value as text, and flushes; on_train_end closes the file. Only the
/// world's process zero writes.
///
/// Example: `trainer.add_callback(std::make_shared<remat::TensorBoardCallback>());`
class TensorBoardCallback : public TrainerCallback {
 public:
  /// `log_dir`: where to write; empty: default_tensorboard_log_dir(args),
  /// decided when training begins (or at the first log).
  explicit TensorBoardCallback(std::string log_dir = "");

  void on_train_begin(const TrainingArguments& args, TrainerState& state,
                      TrainerControl& control) override;
  void on_log(const TrainingArguments& args, TrainerState& state, TrainerControl& control,
              const nlohmann::json& logs) override;
  void on_train_end(const TrainingArguments& args, TrainerState& state,
                    TrainerControl& control) override;

  /// The directory written to; empty before the first write.
  const std::string& log_dir() const { return log_dir_; }

 private:
  SummaryWriter& writer(const TrainingArguments& args);

  std::string log_dir_;
  std::unique_ptr<SummaryWriter> writer_;
};

}  // namespace remat
