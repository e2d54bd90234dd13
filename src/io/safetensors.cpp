#include "remat/io/safetensors.h"

#include <dirent.h>
#include <fcntl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <regex>
#include <set>
#include <stdexcept>
#include <system_error>

namespace remat::io {

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__,
              "safetensors data is little-endian; remat reads and writes it on little-endian hosts "
              "only");

namespace {

using Json = nlohmann::json;

constexpr const char* kSingleFileName = "model.safetensors";
constexpr const char* kIndexName = "model.safetensors.index.json";
constexpr size_t kMaxSuggestedNames = 5;
constexpr size_t kMaxWriteBytes = size_t{1} << 30;

struct DtypeName {
  const char* name;
  c10::ScalarType type;
};

constexpr DtypeName kDtypes[] = {
    {"F64", c10::kDouble}, {"F32", c10::kFloat}, {"F16", c10::kHalf},  {"BF16", c10::kBFloat16},
    {"I64", c10::kLong},   {"I32", c10::kInt},   {"I16", c10::kShort}, {"I8", c10::kChar},
    {"U8", c10::kByte},    {"BOOL", c10::kBool}};

c10::ScalarType scalar_type(const std::string& dtype) {
  for (const auto& d : kDtypes) {
    if (dtype == d.name) return d.type;
  }
  TORCH_INTERNAL_ASSERT(false, "parse_safetensors_header accepted unknown dtype ", dtype);
}

std::string safetensors_dtype(const std::string& name, const torch::Tensor& t) {
  for (const auto& d : kDtypes) {
    if (t.scalar_type() == d.type) return d.name;
  }
  TORCH_CHECK(false, "safetensors: tensor \"", name, "\" has dtype ", t.scalar_type(),
              ", which remat does not save to safetensors; supported are float64, float32, "
              "float16, bfloat16, int64, int32, int16, int8, uint8 and bool (convert it first, "
              "e.g. with .to(torch::kFloat))");
}

std::string system_error_text(int err) { return std::generic_category().message(err); }

// Paths are handled with POSIX calls rather than std::filesystem: the
// LibTorch wheels export their own copy of some std::filesystem functions,
// which take precedence over the C++ library's in a program that links
// LibTorch, and not all of them work (remove_all crashes).

std::string join_path(const std::string& dir, const std::string& name) {
  if (dir.empty()) return name;
  return dir.back() == '/' ? dir + name : dir + "/" + name;
}

std::string parent_directory(const std::string& path) {
  const auto slash = path.find_last_of('/');
  if (slash == std::string::npos) return ".";
  return slash == 0 ? "/" : path.substr(0, slash);
}

bool path_exists(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

bool is_directory(const std::string& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0 && S_ISDIR(st.st_mode);
}

// mkdir -p.
void create_directories(const std::string& dir) {
  for (size_t end = dir.find('/', 1);; end = dir.find('/', end + 1)) {
    const auto prefix = dir.substr(0, end);
    const int result = ::mkdir(prefix.c_str(), 0777);
    const int err = errno;
    TORCH_CHECK(result == 0 || err == EEXIST, "safetensors: cannot create the directory \"", prefix,
                "\": ", system_error_text(err));
    if (end == std::string::npos) break;
  }
  TORCH_CHECK(is_directory(dir), "safetensors: \"", dir, "\" exists but is not a directory");
}

// The names of the regular files in `dir`.
std::vector<std::string> list_files(const std::string& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> handle(::opendir(dir.c_str()), &::closedir);
  const int err = errno;
  TORCH_CHECK(handle != nullptr, "safetensors: cannot list \"", dir,
              "\": ", system_error_text(err));
  std::vector<std::string> names;
  while (const dirent* entry = ::readdir(handle.get())) {
    struct stat st {};
    const std::string name = entry->d_name;
    if (::stat(join_path(dir, name).c_str(), &st) == 0 && S_ISREG(st.st_mode)) {
      names.push_back(name);
    }
  }
  return names;
}

// The torch-free parser throws std::invalid_argument("safetensors: ...");
// this reports its message as a c10::Error about `subject`.
[[noreturn]] void rethrow_invalid(const std::invalid_argument& e, const std::string& subject) {
  std::string message = e.what();
  const std::string prefix = "safetensors: ";
  if (message.rfind(prefix, 0) == 0) message.erase(0, prefix.size());
  TORCH_CHECK(false, "safetensors: ", subject, ": ", message);
}

class FileDescriptor {
 public:
  explicit FileDescriptor(int fd) : fd_(fd) {}
  ~FileDescriptor() {
    if (fd_ >= 0) ::close(fd_);
  }
  FileDescriptor(const FileDescriptor&) = delete;
  FileDescriptor& operator=(const FileDescriptor&) = delete;
  int get() const { return fd_; }

 private:
  int fd_;
};

// Writes a file under a temporary name next to its destination and renames
// it into place on commit(). Destroyed without commit() (an exception on the
// way), it removes the temporary file, so the destination keeps its old
// content: a crash or an error never leaves a partial file under its name.
class AtomicFile {
 public:
  explicit AtomicFile(std::string path) : path_(std::move(path)) {
    static std::atomic<uint64_t> counter{0};
    for (int attempt = 0; fd_ < 0; ++attempt) {
      temp_ = path_ + ".tmp-" + std::to_string(::getpid()) + "-" + std::to_string(counter++);
      fd_ = ::open(temp_.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0666);
      const int err = errno;
      if (fd_ >= 0) break;
      TORCH_CHECK(err == EEXIST && attempt < 100, "safetensors: cannot write \"", path_,
                  "\": cannot create the temporary file \"", temp_, "\": ", system_error_text(err));
    }
  }

  // Cleanup after a failure: errors here cannot be reported (the write has
  // already failed with its own error), so they are ignored.
  ~AtomicFile() {
    if (fd_ >= 0) ::close(fd_);
    if (!temp_.empty()) ::unlink(temp_.c_str());
  }

  AtomicFile(const AtomicFile&) = delete;
  AtomicFile& operator=(const AtomicFile&) = delete;

  void write(const void* data, size_t size) {
    const auto* p = static_cast<const char*>(data);
    while (size > 0) {
      const ssize_t n = ::write(fd_, p, std::min(size, kMaxWriteBytes));
      const int err = errno;
      if (n < 0 && err == EINTR) continue;
      if (n <= 0) fail("write", n < 0 ? err : EIO);
      p += n;
      size -= static_cast<size_t>(n);
    }
  }

  void commit() {
    check(::fsync(fd_), "flush");
    const int fd = fd_;
    fd_ = -1;
    check(::close(fd), "close");
    check(::rename(temp_.c_str(), path_.c_str()), "rename into place");
    temp_.clear();
    sync_directory();
  }

 private:
  // Checks the result of a system call that returns -1 and sets errno.
  void check(int result, const char* step) const {
    const int err = errno;
    if (result == 0) return;
    fail(step, err);
  }

  [[noreturn]] void fail(const char* step, int err) const {
    TORCH_CHECK(false, "safetensors: cannot write \"", path_, "\": ", step,
                " of the temporary file \"", temp_, "\" failed: ", system_error_text(err));
  }

  // Makes the rename itself durable. Some file systems cannot sync a
  // directory (EINVAL); the file is complete and in place all the same.
  void sync_directory() const {
    const auto dir = parent_directory(path_);
    FileDescriptor fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    int err = errno;
    if (fd.get() >= 0) err = ::fsync(fd.get()) == 0 ? 0 : errno;
    TORCH_CHECK(err == 0 || err == EINVAL, "safetensors: wrote \"", path_,
                "\" but could not sync its directory \"", dir, "\": ", system_error_text(err));
  }

  std::string path_;
  std::string temp_;
  int fd_ = -1;
};

std::string read_text_file(const std::string& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  const int open_err = errno;
  TORCH_CHECK(fd.get() >= 0, "safetensors: cannot open \"", path,
              "\": ", system_error_text(open_err));
  std::string text;
  char buffer[1 << 16];
  for (;;) {
    const ssize_t n = ::read(fd.get(), buffer, sizeof buffer);
    const int err = errno;
    if (n < 0 && err == EINTR) continue;
    TORCH_CHECK(n >= 0, "safetensors: cannot read \"", path, "\": ", system_error_text(err));
    if (n == 0) return text;
    text.append(buffer, static_cast<size_t>(n));
  }
}

void write_text_file(const std::string& path, const std::string& text) {
  AtomicFile file(path);
  file.write(text.data(), text.size());
  file.commit();
}

void check_writable(const std::string& name, const torch::Tensor& t) {
  TORCH_CHECK(t.defined(), "safetensors: tensor \"", name,
              "\" is undefined; only defined tensors can be saved");
  TORCH_CHECK(t.layout() == torch::kStrided, "safetensors: tensor \"", name, "\" has layout ",
              t.layout(), "; only strided (dense) tensors can be saved, convert with .to_dense()");
  safetensors_dtype(name, t);
}

uint64_t byte_size(const torch::Tensor& t) {
  return static_cast<uint64_t>(t.numel()) * static_cast<uint64_t>(t.element_size());
}

// The reference writer's layout: widest dtype first, then by name.
std::vector<std::pair<std::string, torch::Tensor>> writing_order(
    const std::map<std::string, torch::Tensor>& tensors) {
  const auto& dtypes = safetensors_dtypes();
  auto rank = [&dtypes](const torch::Tensor& t) {
    return std::find(dtypes.begin(), dtypes.end(), safetensors_dtype("", t)) - dtypes.begin();
  };
  std::vector<std::pair<std::string, torch::Tensor>> order(tensors.begin(), tensors.end());
  std::stable_sort(order.begin(), order.end(),
                   [&](const auto& a, const auto& b) { return rank(a.second) < rank(b.second); });
  return order;
}

// Up to a few valid names, those sharing the longest prefix with `wanted`
// first, for an error message.
std::string suggest_names(const std::map<std::string, size_t>& index, const std::string& wanted) {
  if (index.empty()) return "the file holds no tensors";
  auto shared_prefix = [&wanted](const std::string& name) {
    auto end = std::mismatch(name.begin(), name.end(), wanted.begin(), wanted.end());
    return end.first - name.begin();
  };
  std::vector<std::string> names;
  for (const auto& entry : index) names.push_back(entry.first);
  std::stable_sort(names.begin(), names.end(), [&](const auto& a, const auto& b) {
    return shared_prefix(a) > shared_prefix(b);
  });
  names.resize(std::min(names.size(), kMaxSuggestedNames));
  std::string list;
  for (const auto& name : names) list += (list.empty() ? "\"" : ", \"") + name + "\"";
  return "it holds " + std::to_string(index.size()) + " tensors, such as " + list;
}

std::map<std::string, std::string> parse_weight_map(const std::string& text,
                                                    const std::string& index_path) {
  Json index;
  try {
    index = Json::parse(text);
  } catch (const Json::exception& e) {
    TORCH_CHECK(false, "safetensors: \"", index_path, "\" is not valid JSON: ", e.what());
  }
  const auto it = index.is_object() ? index.find("weight_map") : index.end();
  TORCH_CHECK(it != index.end() && it->is_object(), "safetensors: \"", index_path,
              "\" must be a JSON object with a \"weight_map\" object mapping tensor names to "
              "shard files");
  std::map<std::string, std::string> weight_map;
  for (auto entry = it->begin(); entry != it->end(); ++entry) {
    const auto& shard = *entry;
    const bool plain_name = shard.is_string() && !shard.get<std::string>().empty() &&
                            shard.get<std::string>().find('/') == std::string::npos &&
                            shard != "." && shard != "..";
    TORCH_CHECK(plain_name, "safetensors: \"", index_path, "\" maps tensor \"", entry.key(),
                "\" to ", shard.is_string() ? shard.dump() : "a " + std::string(shard.type_name()),
                "; shards must be file names in the index's directory");
    weight_map.emplace(entry.key(), shard.get<std::string>());
  }
  return weight_map;
}

std::map<std::string, torch::Tensor> load_sharded(const std::string& dir,
                                                  const std::string& index_path) {
  const auto weight_map = parse_weight_map(read_text_file(index_path), index_path);
  std::set<std::string> shards;
  for (const auto& entry : weight_map) shards.insert(entry.second);
  for (const auto& shard : shards) {
    TORCH_CHECK(path_exists(join_path(dir, shard)), "safetensors: \"", index_path,
                "\" names the shard \"", shard, "\", which is missing from \"", dir, "\"");
  }
  std::map<std::string, torch::Tensor> tensors;
  std::map<std::string, std::string> origin;
  for (const auto& shard : shards) {
    const auto file = SafetensorsFile::open(join_path(dir, shard));
    for (const auto& name : file.keys()) {
      const auto [it, inserted] = origin.emplace(name, shard);
      TORCH_CHECK(inserted, "safetensors: tensor \"", name, "\" appears twice, in the shards \"",
                  it->second, "\" and \"", shard, "\" of \"", index_path, "\"");
      tensors.emplace(name, file.tensor(name));
    }
  }
  for (const auto& [name, shard] : weight_map) {
    const auto it = origin.find(name);
    TORCH_CHECK(it != origin.end() && it->second == shard, "safetensors: \"", index_path,
                "\" puts tensor \"", name, "\" in the shard \"", shard,
                "\", which does not hold it",
                it == origin.end() ? std::string() : " (it is in \"" + it->second + "\")");
  }
  return tensors;
}

struct ShardPlan {
  std::vector<std::vector<std::string>> shards;
  uint64_t total_size = 0;
};

// huggingface_hub's split_torch_state_dict_into_shards, which
// save_pretrained uses: tensors in order fill a shard until the next would
// pass the limit; a tensor over the limit gets a shard of its own.
ShardPlan plan_shards(const std::map<std::string, torch::Tensor>& tensors, uint64_t max_bytes) {
  ShardPlan plan;
  std::vector<std::string> current;
  uint64_t current_size = 0;
  for (const auto& [name, t] : tensors) {
    const uint64_t size = byte_size(t);
    plan.total_size += size;
    if (size > max_bytes) {
      plan.shards.push_back({name});
      continue;
    }
    if (current_size + size > max_bytes) {
      plan.shards.push_back(std::move(current));
      current.clear();
      current_size = 0;
    }
    current.push_back(name);
    current_size += size;
  }
  if (!current.empty()) plan.shards.push_back(std::move(current));
  return plan;
}

std::string shard_file_name(size_t index, size_t count) {
  char name[64];
  std::snprintf(name, sizeof name, "model-%05zu-of-%05zu.safetensors", index, count);
  return name;
}

// Removes the weight files of an earlier save that the new save did not
// write: shards named like transformers', the index, model.safetensors.
void remove_stale_weight_files(const std::string& dir, const std::set<std::string>& written) {
  static const std::regex shard_name(R"(model-\d{5}-of-\d{5}\.safetensors)");
  for (const auto& name : list_files(dir)) {
    const bool weights =
        name == kSingleFileName || name == kIndexName || std::regex_match(name, shard_name);
    if (!weights || written.count(name)) continue;
    const auto path = join_path(dir, name);
    const int result = ::unlink(path.c_str());
    const int err = errno;
    TORCH_CHECK(result == 0 || err == ENOENT, "safetensors: cannot remove the stale weight file \"",
                path, "\": ", system_error_text(err));
  }
}

std::map<std::string, torch::Tensor> subset(const std::map<std::string, torch::Tensor>& tensors,
                                            const std::vector<std::string>& names) {
  std::map<std::string, torch::Tensor> result;
  for (const auto& name : names) result.emplace(name, tensors.at(name));
  return result;
}

}  // namespace

struct SafetensorsFile::Mapping {
  uint8_t* data = nullptr;
  size_t size = 0;

  Mapping() = default;
  ~Mapping() {
    if (data != nullptr) ::munmap(data, size);
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
};

SafetensorsFile::SafetensorsFile(std::string path, std::shared_ptr<Mapping> mapping,
                                 SafetensorsHeader header)
    : path_(std::move(path)), mapping_(std::move(mapping)), header_(std::move(header)) {
  for (size_t i = 0; i < header_.tensors.size(); ++i) index_.emplace(header_.tensors[i].name, i);
}

SafetensorsFile SafetensorsFile::open(const std::string& path) {
  FileDescriptor fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
  int err = errno;
  TORCH_CHECK(fd.get() >= 0, "safetensors: cannot open \"", path, "\": ", system_error_text(err));
  struct stat st {};
  const int stat_result = ::fstat(fd.get(), &st);
  err = errno;
  TORCH_CHECK(stat_result == 0, "safetensors: cannot stat \"", path,
              "\": ", system_error_text(err));
  TORCH_CHECK(S_ISREG(st.st_mode), "safetensors: \"", path,
              "\" is not a regular file; expected a .safetensors file");

  auto mapping = std::make_shared<Mapping>();
  mapping->size = static_cast<size_t>(st.st_size);
  if (mapping->size > 0) {
    // Private and writable: writes to the returned tensors are copy-on-write
    // and never reach the file.
    void* data =
        ::mmap(nullptr, mapping->size, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd.get(), /*offset=*/0);
    err = errno;
    TORCH_CHECK(data != MAP_FAILED, "safetensors: cannot map \"", path, "\" (", mapping->size,
                " bytes) into memory: ", system_error_text(err));
    mapping->data = static_cast<uint8_t*>(data);
  }
  SafetensorsHeader header;
  try {
    header = parse_safetensors_header(mapping->data, mapping->size);
  } catch (const std::invalid_argument& e) {
    rethrow_invalid(e, "\"" + path + "\" is not a valid safetensors file");
  }
  return SafetensorsFile(path, std::move(mapping), std::move(header));
}

std::vector<std::string> SafetensorsFile::keys() const {
  std::vector<std::string> names;
  names.reserve(index_.size());
  for (const auto& entry : index_) names.push_back(entry.first);
  return names;
}

bool SafetensorsFile::contains(const std::string& name) const { return index_.count(name) > 0; }

const TensorEntry& SafetensorsFile::entry(const std::string& name) const {
  const auto it = index_.find(name);
  TORCH_CHECK(it != index_.end(), "safetensors: no tensor named \"", name, "\" in \"", path_,
              "\"; ", suggest_names(index_, name));
  return header_.tensors[it->second];
}

torch::Tensor SafetensorsFile::tensor(const std::string& name) const {
  const auto& e = entry(name);
  const auto options = torch::TensorOptions().dtype(scalar_type(e.dtype));
  const size_t nbytes = e.end - e.begin;
  if (nbytes == 0) return torch::empty(e.shape, options);
  uint8_t* data = mapping_->data + header_.data_offset + e.begin;
  if (reinterpret_cast<uintptr_t>(data) % safetensors_dtype_size(e.dtype) != 0) {
    auto copy = torch::empty(e.shape, options);
    std::memcpy(copy.data_ptr(), data, nbytes);
    return copy;
  }
  auto keep_alive = mapping_;
  return torch::from_blob(
      data, e.shape, [keep_alive](void*) {}, options);
}

std::map<std::string, torch::Tensor> load_file(const std::string& path) {
  const auto file = SafetensorsFile::open(path);
  std::map<std::string, torch::Tensor> tensors;
  for (const auto& name : file.keys()) tensors.emplace(name, file.tensor(name));
  return tensors;
}

void save_file(const std::map<std::string, torch::Tensor>& tensors, const std::string& path,
               const std::map<std::string, std::string>& metadata) {
  for (const auto& [name, t] : tensors) check_writable(name, t);
  const auto order = writing_order(tensors);
  SafetensorsHeader header;
  header.metadata = metadata;
  uint64_t offset = 0;
  for (const auto& [name, t] : order) {
    const uint64_t size = byte_size(t);
    header.tensors.push_back(
        {name, safetensors_dtype(name, t), t.sizes().vec(), offset, offset + size});
    offset += size;
  }
  std::string prefix;
  try {
    prefix = serialize_safetensors_header(header);
  } catch (const std::invalid_argument& e) {
    rethrow_invalid(e, "cannot write \"" + path + "\"");
  }

  AtomicFile file(path);
  file.write(prefix.data(), prefix.size());
  for (const auto& [name, t] : order) {
    const auto cpu = t.detach().resolve_conj().resolve_neg().to(torch::kCPU).contiguous();
    file.write(cpu.data_ptr(), byte_size(cpu));
  }
  file.commit();
}

std::map<std::string, torch::Tensor> load_model_weights(const std::string& dir) {
  const auto single = join_path(dir, kSingleFileName);
  if (path_exists(single)) return load_file(single);
  const auto index = join_path(dir, kIndexName);
  if (path_exists(index)) return load_sharded(dir, index);
  TORCH_CHECK(false, "safetensors: no model weights in \"", dir, "\": it has neither ",
              kSingleFileName, " nor ", kIndexName,
              is_directory(dir) ? "" : " (it is not a directory)");
}

void save_model_weights(const std::string& dir, const std::map<std::string, torch::Tensor>& tensors,
                        int64_t max_shard_bytes) {
  TORCH_CHECK(max_shard_bytes > 0, "save_model_weights: max_shard_bytes must be positive, got ",
              max_shard_bytes);
  for (const auto& [name, t] : tensors) check_writable(name, t);
  create_directories(dir);

  const auto plan = plan_shards(tensors, static_cast<uint64_t>(max_shard_bytes));
  std::set<std::string> written;
  if (plan.shards.size() <= 1) {
    save_file(tensors, join_path(dir, kSingleFileName));
    written.insert(kSingleFileName);
  } else {
    Json weight_map = Json::object();
    for (size_t i = 0; i < plan.shards.size(); ++i) {
      const auto name = shard_file_name(i + 1, plan.shards.size());
      save_file(subset(tensors, plan.shards[i]), join_path(dir, name));
      for (const auto& tensor_name : plan.shards[i]) weight_map[tensor_name] = name;
      written.insert(name);
    }
    const Json index = {{"metadata", {{"total_size", plan.total_size}}},
                        {"weight_map", weight_map}};
    // json.dumps(index, indent=2, sort_keys=True) + "\n", as transformers writes it.
    write_text_file(join_path(dir, kIndexName), index.dump(2, ' ', /*ensure_ascii=*/true) + "\n");
    written.insert(kIndexName);
  }
  remove_stale_weight_files(dir, written);
}

}  // namespace remat::io
