// TensorBoard event files: the format pieces against known values, and
// files for tests/tensorboard_check.py, which reads them back with the
// tensorboard package (the independent reference).

#include "remat/tensorboard.h"

#include <dirent.h>
#include <ftw.h>
#include <gtest/gtest.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cmath>
#include <cstdlib>
#include <fstream>
#include <string>
#include <vector>

#include "tensorboard_internal.h"

namespace {

std::string cpp_dir() {
  const char* oracle = std::getenv("REMAT_ORACLE_DIR");
  return std::string(oracle != nullptr ? oracle : "oracle") + "/tensorboard_cpp";
}

void remove_tree(const std::string& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) return;
  auto remove_entry = [](const char* entry, const struct stat*, int, struct FTW*) {
    return ::remove(entry);
  };
  ASSERT_EQ(::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS), 0) << path;
}

std::vector<std::string> list_dir(const std::string& dir) {
  std::vector<std::string> names;
  DIR* handle = ::opendir(dir.c_str());
  if (handle == nullptr) return names;
  while (auto* entry = ::readdir(handle)) {
    std::string name = entry->d_name;
    if (name != "." && name != "..") names.push_back(name);
  }
  ::closedir(handle);
  return names;
}

std::string read_file(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// What the check script must find in one directory: saved as expected.json
// next to the event files (TensorBoard reads only files named *tfevents*).
struct Expected {
  void scalar(const std::string& tag, int64_t step, double value) {
    json["scalars"][tag].push_back({step, value});
  }
  void text(const std::string& tag, int64_t step, const std::string& text) {
    json["texts"][tag].push_back({step, text});
  }
  void save(const std::string& dir) const { std::ofstream(dir + "/expected.json") << json.dump(); }
  nlohmann::json json = nlohmann::json::object();
};

TEST(Crc32c, KnownVectors) {
  using remat::detail::crc32c;
  // RFC 3720 B.4 and the common check value.
  EXPECT_EQ(crc32c("123456789"), 0xE3069283u);
  EXPECT_EQ(crc32c(std::string(32, '\0')), 0x8A9136AAu);
  EXPECT_EQ(crc32c(std::string(32, '\xFF')), 0x62A8AB43u);
  std::string ascending;
  for (int i = 0; i < 32; ++i) ascending.push_back(static_cast<char>(i));
  EXPECT_EQ(crc32c(ascending), 0x46DD794Eu);
  EXPECT_EQ(crc32c(""), 0u);
}

TEST(Crc32c, MaskedAsTfRecord) {
  const uint32_t crc = remat::detail::crc32c("123456789");
  EXPECT_EQ(remat::detail::masked_crc32c("123456789"), ((crc >> 15) | (crc << 17)) + 0xa282ead8u);
}

TEST(TfRecord, Framing) {
  const auto record = remat::detail::tfrecord("abc");
  ASSERT_EQ(record.size(), 8u + 4u + 3u + 4u);
  EXPECT_EQ(record.substr(0, 8), std::string("\x03\0\0\0\0\0\0\0", 8));
  EXPECT_EQ(record.substr(12, 3), "abc");
  auto le32 = [&](size_t at) {
    uint32_t v = 0;
    for (int i = 3; i >= 0; --i) v = (v << 8) | static_cast<unsigned char>(record[at + i]);
    return v;
  };
  EXPECT_EQ(le32(8), remat::detail::masked_crc32c(record.substr(0, 8)));
  EXPECT_EQ(le32(15), remat::detail::masked_crc32c("abc"));
}

TEST(ProtoWriter, WireFormat) {
  using remat::detail::ProtoWriter;
  // The examples of the protobuf encoding guide.
  EXPECT_EQ(ProtoWriter().varint(1, 150).str(), "\x08\x96\x01");
  EXPECT_EQ(ProtoWriter().bytes(2, "testing").str(), "\x12\x07testing");
  EXPECT_EQ(ProtoWriter().varint(2, 300).str(), "\x10\xAC\x02");
  EXPECT_EQ(ProtoWriter().fixed32(2, 1.0f).str(), std::string("\x15\x00\x00\x80\x3F", 5));
  EXPECT_EQ(ProtoWriter().fixed64(1, 1.0).str(),
            std::string("\x09\x00\x00\x00\x00\x00\x00\xF0\x3F", 9));
  // A negative int64 is ten bytes of two's complement.
  EXPECT_EQ(ProtoWriter().varint(1, static_cast<uint64_t>(int64_t{-1})).str().size(), 11u);
}

TEST(TensorBoardTag, RewritesAsHuggingFace) {
  EXPECT_EQ(remat::tensorboard_tag("loss"), "train/loss");
  EXPECT_EQ(remat::tensorboard_tag("eval_loss"), "eval/loss");
  EXPECT_EQ(remat::tensorboard_tag("test_accuracy"), "test/accuracy");
  EXPECT_EQ(remat::tensorboard_tag("evaluation"), "train/evaluation");
}

TEST(TensorBoardLogDir, EnvironmentOrOutputDirRuns) {
  remat::TrainingArguments args;
  args.output_dir = "out";
  ::setenv("TENSORBOARD_LOGGING_DIR", "/tmp/tb-here", 1);
  EXPECT_EQ(remat::default_tensorboard_log_dir(args), "/tmp/tb-here");
  ::setenv("TENSORBOARD_LOGGING_DIR", "~/tb", 1);
  EXPECT_EQ(remat::default_tensorboard_log_dir(args), std::string(std::getenv("HOME")) + "/tb");
  ::unsetenv("TENSORBOARD_LOGGING_DIR");
  const auto dir = remat::default_tensorboard_log_dir(args);
  // out/runs/Nov25_14-03-07_<hostname>
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  ASSERT_EQ(dir.rfind("out/runs/", 0), 0u) << dir;
  const auto name = dir.substr(9);
  ASSERT_EQ(name.size(), 14u + 1u + std::string(host).size()) << name;
  EXPECT_NE(std::string("JanFebMarAprMayJunJulAugSepOctNovDec").find(name.substr(0, 3)),
            std::string::npos)
      << name;
  EXPECT_EQ(name[5], '_');
  EXPECT_EQ(name[8], '-');
  EXPECT_EQ(name[11], '-');
  EXPECT_EQ(name[14], '_');
  EXPECT_EQ(name.substr(15), host);
}

TEST(SummaryWriter, FileNameAndErrors) {
  const auto dir = cpp_dir() + "/naming";
  remove_tree(dir);
  remat::SummaryWriter writer(dir + "/nested");
  const auto names = list_dir(dir + "/nested");
  ASSERT_EQ(names.size(), 1u);
  const auto& name = names[0];
  char host[256] = {};
  ::gethostname(host, sizeof host - 1);
  // events.out.tfevents.<10-digit seconds>.<hostname>.<pid>.<n>
  const std::string prefix = "events.out.tfevents.";
  ASSERT_EQ(name.rfind(prefix, 0), 0u) << name;
  EXPECT_EQ(name.substr(prefix.size() + 10, std::string(host).size() + 2),
            "." + std::string(host) + ".");
  EXPECT_NE(name.find("." + std::to_string(::getpid()) + "."), std::string::npos) << name;
  EXPECT_EQ(writer.file_path(), dir + "/nested/" + name);
  // Only the version record so far, flushed on creation.
  const auto content = read_file(writer.file_path());
  EXPECT_NE(content.find("brain.Event:2"), std::string::npos);
  writer.close();
  writer.close();
  EXPECT_THROW(writer.add_scalar("x", 1.0), std::runtime_error);

  std::ofstream(dir + "/a_file") << "x";
  EXPECT_THROW(remat::SummaryWriter(dir + "/a_file"), std::runtime_error);
  EXPECT_THROW(remat::SummaryWriter(""), std::invalid_argument);
}

TEST(SummaryWriter, WritesScalarsAndTextForTheCheck) {
  Expected expected;
  const auto dir = cpp_dir() + "/scalars";
  remove_tree(dir);
  // TensorBoard drops the events after a step that goes backwards (it takes
  // them for a restarted run), so the steps only grow.
  remat::SummaryWriter writer(dir);
  writer.add_scalar("train/negative_step", -0.5, -3);
  expected.scalar("train/negative_step", -3, -0.5);
  for (int64_t step = 1; step <= 5; ++step) {
    const double loss = 4.0 / static_cast<double>(step);
    writer.add_scalar("train/loss", loss, step);
    expected.scalar("train/loss", step, loss);
  }
  const std::string text = "# Heading\n\nünïcödé text, `code` and a | table |";
  writer.add_text("notes", text, 7);
  expected.text("notes/text_summary", 7, text);
  writer.add_scalar("big_step", 1e-3, int64_t{1} << 40);
  expected.scalar("big_step", int64_t{1} << 40, 1e-3);
  writer.flush();
  expected.save(dir);
}

TEST(SummaryWriter, ManyRecordsForTheCheck) {
  Expected expected;
  const auto dir = cpp_dir() + "/many";
  remove_tree(dir);
  remat::SummaryWriter writer(dir);
  for (int64_t step = 0; step < 20000; ++step) {
    const double value = std::sin(0.001 * static_cast<double>(step)) * 100.0;
    writer.add_scalar("series", value, step);
    expected.scalar("series", step, value);
  }
  writer.close();
  expected.save(dir);
}

TEST(SummaryWriter, SeveralFilesInOneDirectoryForTheCheck) {
  Expected expected;
  const auto dir = cpp_dir() + "/multi";
  remove_tree(dir);
  for (int file = 0; file < 3; ++file) {
    remat::SummaryWriter writer(dir);
    for (int64_t i = 0; i < 10; ++i) {
      const int64_t step = file * 10 + i;
      writer.add_scalar("shared", static_cast<double>(step) * 0.5, step);
      expected.scalar("shared", step, static_cast<double>(step) * 0.5);
    }
    const int64_t last = file * 10 + 9;
    writer.add_scalar("file" + std::to_string(file), file, last);
    expected.scalar("file" + std::to_string(file), last, file);
  }
  EXPECT_EQ(list_dir(dir).size(), 3u);
  expected.save(dir);
}

TEST(TensorBoardCallback, WritesLogsAsHuggingFaceForTheCheck) {
  Expected expected;
  const auto dir = cpp_dir() + "/callback";
  remove_tree(dir);
  remat::TrainingArguments args;
  args.output_dir = cpp_dir() + "/callback_output";
  args.learning_rate = 3e-4;
  remat::TrainerState state;
  remat::TrainerControl control;
  remat::TensorBoardCallback callback(dir);
  callback.on_train_begin(args, state, control);
  EXPECT_EQ(callback.log_dir(), dir);
  expected.text("args/text_summary", 0, args.to_json_string());
  for (int64_t step = 1; step <= 3; ++step) {
    state.global_step = step * 10;
    const double loss = 3.0 - 0.5 * static_cast<double>(step);
    callback.on_log(args, state, control,
                    {{"loss", loss},
                     {"learning_rate", 1e-4 * step},
                     {"epoch", 0.25 * step},
                     {"step", step * 10}});
    expected.scalar("train/loss", step * 10, loss);
    expected.scalar("train/learning_rate", step * 10, 1e-4 * step);
    expected.scalar("train/epoch", step * 10, 0.25 * step);
    expected.scalar("train/step", step * 10, step * 10);
  }
  callback.on_log(args, state, control,
                  {{"eval_loss", 1.25},
                   {"eval_perplexity", std::exp(1.25)},
                   {"note", "a string"},
                   {"flag", true},
                   {"dropped", nlohmann::json::array({1, 2})}});
  expected.scalar("eval/loss", 30, 1.25);
  expected.scalar("eval/perplexity", 30, std::exp(1.25));
  expected.scalar("train/flag", 30, 1.0);
  expected.text("train/note/text_summary", 30, "a string");
  callback.on_train_end(args, state, control);
  // A process other than the world's zero writes nothing.
  remat::TensorBoardCallback other(cpp_dir() + "/callback_other_rank");
  state.is_world_process_zero = false;
  other.on_train_begin(args, state, control);
  other.on_log(args, state, control, {{"loss", 1.0}});
  EXPECT_TRUE(list_dir(cpp_dir() + "/callback_other_rank").empty());
  expected.save(dir);
}

TEST(TensorBoardCallback, DefaultDirectoryIsUnderOutputDirRuns) {
  ::unsetenv("TENSORBOARD_LOGGING_DIR");
  remat::TrainingArguments args;
  args.output_dir = cpp_dir() + "/default_dir_output";
  remove_tree(args.output_dir);
  remat::TrainerState state;
  remat::TrainerControl control;
  remat::TensorBoardCallback callback;
  callback.on_log(args, state, control, {{"loss", 2.0}});
  ASSERT_EQ(callback.log_dir().rfind(args.output_dir + "/runs/", 0), 0u) << callback.log_dir();
  EXPECT_EQ(list_dir(args.output_dir + "/runs").size(), 1u);
  EXPECT_EQ(list_dir(callback.log_dir()).size(), 1u);
  callback.on_train_end(args, state, control);
}

}  // namespace
