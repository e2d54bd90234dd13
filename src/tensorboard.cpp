#include "remat/tensorboard.h"

#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <atomic>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <ctime>
#include <stdexcept>

#include "remat/logging.h"
#include "tensorboard_internal.h"

namespace remat {
namespace detail {
namespace {

constexpr uint32_t kCrc32cPolynomial = 0x82F63B78;  // reflected Castagnoli

std::array<uint32_t, 256> make_crc32c_table() {
  std::array<uint32_t, 256> table{};
  for (uint32_t i = 0; i < 256; ++i) {
    uint32_t crc = i;
    for (int bit = 0; bit < 8; ++bit) crc = (crc >> 1) ^ ((crc & 1) ? kCrc32cPolynomial : 0);
    table[i] = crc;
  }
  return table;
}

void append_le(std::string& out, uint64_t value, int bytes) {
  for (int i = 0; i < bytes; ++i) out.push_back(static_cast<char>((value >> (8 * i)) & 0xFF));
}

}  // namespace

uint32_t crc32c(std::string_view data) {
  static const auto table = make_crc32c_table();
  uint32_t crc = 0xFFFFFFFF;
  for (unsigned char byte : data) crc = table[(crc ^ byte) & 0xFF] ^ (crc >> 8);
  return crc ^ 0xFFFFFFFF;
}

uint32_t masked_crc32c(std::string_view data) {
  const uint32_t crc = crc32c(data);
  return ((crc >> 15) | (crc << 17)) + 0xa282ead8u;
}

std::string tfrecord(std::string_view data) {
  std::string length;
  append_le(length, data.size(), 8);
  std::string record = length;
  append_le(record, masked_crc32c(length), 4);
  record.append(data);
  append_le(record, masked_crc32c(data), 4);
  return record;
}

void ProtoWriter::tag(int field, int wire_type) {
  raw_varint((static_cast<uint64_t>(field) << 3) | static_cast<uint64_t>(wire_type));
}

void ProtoWriter::raw_varint(uint64_t value) {
  while (value >= 0x80) {
    out_.push_back(static_cast<char>((value & 0x7F) | 0x80));
    value >>= 7;
  }
  out_.push_back(static_cast<char>(value));
}

ProtoWriter& ProtoWriter::varint(int field, uint64_t value) {
  tag(field, 0);
  raw_varint(value);
  return *this;
}

ProtoWriter& ProtoWriter::fixed64(int field, double value) {
  uint64_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  tag(field, 1);
  append_le(out_, bits, 8);
  return *this;
}

ProtoWriter& ProtoWriter::fixed32(int field, float value) {
  uint32_t bits = 0;
  std::memcpy(&bits, &value, sizeof bits);
  tag(field, 5);
  append_le(out_, bits, 4);
  return *this;
}

ProtoWriter& ProtoWriter::bytes(int field, std::string_view value) {
  tag(field, 2);
  raw_varint(value.size());
  out_.append(value);
  return *this;
}

}  // namespace detail

namespace {

// Field numbers of tensorflow/core/util/event.proto and
// tensorflow/core/framework/{summary,tensor,tensor_shape}.proto.
namespace event {
constexpr int kWallTime = 1, kStep = 2, kFileVersion = 3, kSummary = 5;
}
namespace value {
constexpr int kTag = 1, kSimpleValue = 2, kTensor = 8, kMetadata = 9;
}
constexpr int kSummaryValue = 1;
constexpr int kMetadataPluginData = 1, kPluginName = 1;
constexpr int kTensorDtype = 1, kTensorShape = 2, kTensorStringVal = 8;
constexpr int kShapeDim = 2, kDimSize = 1;
constexpr int kDtString = 7;

double now_seconds() {
  using namespace std::chrono;
  return duration<double>(system_clock::now().time_since_epoch()).count();
}

std::string hostname() {
  std::array<char, 256> name{};
  if (::gethostname(name.data(), name.size() - 1) != 0) return "localhost";
  return name.data();
}

// mkdir -p on POSIX calls (see the note in trainer.cpp on std::filesystem).
void make_directories(const std::string& path) {
  for (size_t pos = 1; pos <= path.size(); ++pos) {
    if (pos != path.size() && path[pos] != '/') continue;
    const std::string prefix = path.substr(0, pos);
    if (::mkdir(prefix.c_str(), 0755) != 0 && errno != EEXIST) {
      throw std::runtime_error(fmt::format("SummaryWriter: cannot create the directory {}: {}",
                                           prefix, std::strerror(errno)));
    }
  }
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0 || !S_ISDIR(st.st_mode)) {
    throw std::runtime_error(
        fmt::format("SummaryWriter: log_dir {} exists and is not a directory", path));
  }
}

std::string make_event(double wall_time, int64_t step, int what_field, const std::string& what) {
  detail::ProtoWriter e;
  e.fixed64(event::kWallTime, wall_time);
  // proto3 leaves default values out, as the Python writer does.
  if (step != 0) e.varint(event::kStep, static_cast<uint64_t>(step));
  e.bytes(what_field, what);
  return e.str();
}

std::string summary_of(const detail::ProtoWriter& value) {
  return detail::ProtoWriter().bytes(kSummaryValue, value.str()).str();
}

}  // namespace

SummaryWriter::SummaryWriter(const std::string& log_dir, double flush_secs)
    : log_dir_(log_dir), flush_secs_(flush_secs), last_flush_(std::chrono::steady_clock::now()) {
  if (log_dir_.empty()) throw std::invalid_argument("SummaryWriter: log_dir is empty");
  make_directories(log_dir_);
  static std::atomic<int64_t> writers{0};
  const auto seconds = static_cast<int64_t>(now_seconds());
  file_path_ = fmt::format("{}/events.out.tfevents.{:010d}.{}.{}.{}", log_dir_, seconds, hostname(),
                           ::getpid(), writers++);
  file_ = std::fopen(file_path_.c_str(), "wb");
  if (file_ == nullptr) {
    throw std::runtime_error(
        fmt::format("SummaryWriter: cannot create {}: {}", file_path_, std::strerror(errno)));
  }
  write_event(make_event(now_seconds(), 0, event::kFileVersion, "brain.Event:2"));
  flush();
}

SummaryWriter::~SummaryWriter() {
  try {
    close();
  } catch (const std::exception& e) {
    logger()->error("{}", e.what());
  }
}

void SummaryWriter::add_scalar(const std::string& tag, double value, int64_t step,
                               std::optional<double> wall_time) {
  detail::ProtoWriter v;
  v.bytes(value::kTag, tag).fixed32(value::kSimpleValue, static_cast<float>(value));
  write_event(make_event(wall_time.value_or(now_seconds()), step, event::kSummary, summary_of(v)));
}

void SummaryWriter::add_text(const std::string& tag, const std::string& text, int64_t step,
                             std::optional<double> wall_time) {
  // torch.utils.tensorboard.summary.text: plugin "text" with an empty
  // TextPluginData (version 0), a DT_STRING tensor of shape [1].
  detail::ProtoWriter plugin;
  plugin.bytes(kPluginName, "text");
  detail::ProtoWriter metadata;
  metadata.bytes(kMetadataPluginData, plugin.str());
  detail::ProtoWriter shape;
  shape.bytes(kShapeDim, detail::ProtoWriter().varint(kDimSize, 1).str());
  detail::ProtoWriter tensor;
  tensor.varint(kTensorDtype, kDtString).bytes(kTensorShape, shape.str());
  tensor.bytes(kTensorStringVal, text);
  detail::ProtoWriter v;
  v.bytes(value::kTag, tag + "/text_summary")
      .bytes(value::kMetadata, metadata.str())
      .bytes(value::kTensor, tensor.str());
  write_event(make_event(wall_time.value_or(now_seconds()), step, event::kSummary, summary_of(v)));
}

void SummaryWriter::write_event(const std::string& event) {
  if (file_ == nullptr) {
    throw std::runtime_error(fmt::format("SummaryWriter: {} is closed", file_path_));
  }
  const auto record = detail::tfrecord(event);
  if (std::fwrite(record.data(), 1, record.size(), file_) != record.size()) {
    throw std::runtime_error(
        fmt::format("SummaryWriter: cannot write {}: {}", file_path_, std::strerror(errno)));
  }
  const std::chrono::duration<double> since_flush = std::chrono::steady_clock::now() - last_flush_;
  if (since_flush.count() >= flush_secs_) flush();
}

void SummaryWriter::flush() {
  if (file_ == nullptr) return;
  if (std::fflush(file_) != 0) {
    throw std::runtime_error(
        fmt::format("SummaryWriter: cannot write {}: {}", file_path_, std::strerror(errno)));
  }
  last_flush_ = std::chrono::steady_clock::now();
}

void SummaryWriter::close() {
  if (file_ == nullptr) return;
  std::FILE* file = file_;
  file_ = nullptr;
  if (std::fclose(file) != 0) {
    throw std::runtime_error(
        fmt::format("SummaryWriter: cannot write {}: {}", file_path_, std::strerror(errno)));
  }
}

std::string tensorboard_tag(const std::string& key) {
  for (const char* prefix : {"eval", "test"}) {
    const std::string with_underscore = std::string(prefix) + "_";
    if (key.rfind(with_underscore, 0) == 0) {
      return std::string(prefix) + "/" + key.substr(with_underscore.size());
    }
  }
  return "train/" + key;
}

std::string default_tensorboard_log_dir(const TrainingArguments& args) {
  if (const char* env = std::getenv("TENSORBOARD_LOGGING_DIR"); env != nullptr && *env != '\0') {
    std::string dir = env;
    const char* home = std::getenv("HOME");
    if (dir[0] == '~' && (dir.size() == 1 || dir[1] == '/') && home != nullptr) {
      dir = home + dir.substr(1);
    }
    return dir;
  }
  // datetime.now().strftime("%b%d_%H-%M-%S"), with the C locale's month names.
  static const char* const kMonths[] = {"Jan", "Feb", "Mar", "Apr", "May", "Jun",
                                        "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"};
  const std::time_t now = std::time(nullptr);
  std::tm local{};
  ::localtime_r(&now, &local);
  return fmt::format("{}/runs/{}{:02d}_{:02d}-{:02d}-{:02d}_{}", args.output_dir,
                     kMonths[local.tm_mon], local.tm_mday, local.tm_hour, local.tm_min,
                     local.tm_sec, hostname());
}

TensorBoardCallback::TensorBoardCallback(std::string log_dir) : log_dir_(std::move(log_dir)) {}

SummaryWriter& TensorBoardCallback::writer(const TrainingArguments& args) {
  if (!writer_) {
    if (log_dir_.empty()) log_dir_ = default_tensorboard_log_dir(args);
    writer_ = std::make_unique<SummaryWriter>(log_dir_);
  }
  return *writer_;
}

void TensorBoardCallback::on_train_begin(const TrainingArguments& args, TrainerState& state,
                                         TrainerControl&) {
  if (!state.is_world_process_zero) return;
  writer(args).add_text("args", args.to_json_string());
}

void TensorBoardCallback::on_log(const TrainingArguments& args, TrainerState& state,
                                 TrainerControl&, const nlohmann::json& logs) {
  if (!state.is_world_process_zero) return;
  auto& w = writer(args);
  for (const auto& [key, value] : logs.items()) {
    const auto tag = tensorboard_tag(key);
    if (value.is_number() || value.is_boolean()) {
      w.add_scalar(tag, value.is_boolean() ? double(value.get<bool>()) : value.get<double>(),
                   state.global_step);
    } else if (value.is_string()) {
      w.add_text(tag, value.get<std::string>(), state.global_step);
    } else {
      logger()->warn(
          "TensorBoardCallback: dropped the log value {} of key \"{}\": only numbers and strings "
          "are written",
          value.dump(), key);
    }
  }
  w.flush();
}

void TensorBoardCallback::on_train_end(const TrainingArguments&, TrainerState&, TrainerControl&) {
  if (!writer_) return;
  writer_->close();
  writer_.reset();
}

}  // namespace remat
