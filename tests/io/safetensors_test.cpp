// The safetensors reader and writer against the reference: files written by
// Python's safetensors and transformers (tests/io/safetensors_oracle.py) are
// read and compared bitwise with raw bytes the oracle dumped separately; the
// files written here are checked by tests/io/safetensors_check.py, which runs
// after this binary. Malformed files are crafted byte by byte.
#include "remat/io/safetensors.h"

#include <nlohmann/json.hpp>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <set>

#include <dirent.h>
#include <ftw.h>
#include <sys/stat.h>
#include <unistd.h>

#include "support.h"

namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;
using remat::io::load_file;
using remat::io::load_model_weights;
using remat::io::parse_safetensors_header;
using remat::io::SafetensorsFile;
using remat::io::SafetensorsHeader;
using remat::io::save_file;
using remat::io::save_model_weights;
using TensorMap = std::map<std::string, torch::Tensor>;

// ---------------------------------------------------------------------------
// Files and directories. std::filesystem serves for joining paths only: the
// LibTorch wheels export their own copy of its operations, which wins in a
// program linking LibTorch, and not all of them work (remove_all crashes).

bool path_exists(const fs::path& path) {
  struct stat st {};
  return ::stat(path.c_str(), &st) == 0;
}

void make_dirs(const fs::path& dir) {
  fs::path prefix;
  for (const auto& part : dir) {
    prefix /= part;
    if (::mkdir(prefix.c_str(), 0777) != 0 && errno != EEXIST) {
      throw std::runtime_error("cannot create " + prefix.string());
    }
  }
}

void remove_tree(const fs::path& path) {
  auto remove_entry = [](const char* entry, const struct stat*, int, struct FTW*) {
    return ::remove(entry);
  };
  ::nftw(path.c_str(), remove_entry, 16, FTW_DEPTH | FTW_PHYS);
}

fs::path oracle_root() {
  const char* dir = std::getenv("REMAT_ORACLE_DIR");
  if (dir == nullptr) throw std::runtime_error("REMAT_ORACLE_DIR is unset; run the test via ctest");
  return dir;
}

// What safetensors_oracle.py wrote.
fs::path oracle_dir() { return oracle_root() / "safetensors"; }

// Where this test writes the files safetensors_check.py reads.
fs::path output_dir() {
  auto dir = oracle_root() / "safetensors_cpp";
  make_dirs(dir);
  return dir;
}

fs::path scratch_root() {
  return fs::path(::testing::TempDir()) / ("remat_safetensors_test_" + std::to_string(::getpid()));
}

// Removes the scratch directories when the test binary ends.
class ScratchCleanup : public ::testing::Environment {
 public:
  void TearDown() override { remove_tree(scratch_root()); }
};
const auto* const scratch_cleanup = ::testing::AddGlobalTestEnvironment(new ScratchCleanup);

// A fresh empty directory for one test.
fs::path scratch_dir() {
  const auto* info = ::testing::UnitTest::GetInstance()->current_test_info();
  auto dir = scratch_root() / (std::string(info->test_suite_name()) + "." + info->name());
  remove_tree(dir);
  make_dirs(dir);
  return dir;
}

std::string read_bytes(const fs::path& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw std::runtime_error("cannot read " + path.string());
  return {std::istreambuf_iterator<char>(in), std::istreambuf_iterator<char>()};
}

void write_bytes(const fs::path& path, const std::string& bytes) {
  std::ofstream out(path, std::ios::binary);
  out << bytes;
  if (!out) throw std::runtime_error("cannot write " + path.string());
}

std::set<std::string> listing(const fs::path& dir) {
  std::unique_ptr<DIR, int (*)(DIR*)> handle(::opendir(dir.c_str()), &::closedir);
  if (!handle) throw std::runtime_error("cannot list " + dir.string());
  std::set<std::string> names;
  while (const dirent* entry = ::readdir(handle.get())) names.insert(entry->d_name);
  names.erase(".");
  names.erase("..");
  return names;
}

const Json& expected() {
  static const Json json = Json::parse(read_bytes(oracle_dir() / "expected.json"));
  return json;
}

// ---------------------------------------------------------------------------
// Tensors as bytes

std::string dtype_name(torch::ScalarType type) {
  static const std::map<torch::ScalarType, std::string> names = {
      {torch::kDouble, "F64"},    {torch::kFloat, "F32"}, {torch::kHalf, "F16"},
      {torch::kBFloat16, "BF16"}, {torch::kLong, "I64"},  {torch::kInt, "I32"},
      {torch::kShort, "I16"},     {torch::kChar, "I8"},   {torch::kByte, "U8"},
      {torch::kBool, "BOOL"}};
  return names.at(type);
}

std::string tensor_bytes(const torch::Tensor& t) {
  auto c = t.cpu().contiguous();
  if (c.numel() == 0) return {};
  return {static_cast<const char*>(c.data_ptr()), static_cast<size_t>(c.nbytes())};
}

std::string hex_decode(const std::string& hex) {
  std::string bytes;
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    bytes.push_back(static_cast<char>(std::stoi(hex.substr(i, 2), nullptr, 16)));
  }
  return bytes;
}

// Same names, and for each the dtype, shape and raw bytes the oracle dumped.
void expect_matches(const TensorMap& got, const Json& want) {
  std::set<std::string> got_names, want_names;
  for (const auto& entry : got) got_names.insert(entry.first);
  for (const auto& entry : want.items()) want_names.insert(entry.key());
  ASSERT_EQ(got_names, want_names);
  for (const auto& [name, t] : got) {
    const auto& w = want.at(name);
    EXPECT_EQ(dtype_name(t.scalar_type()), w.at("dtype").get<std::string>()) << name;
    EXPECT_EQ(t.sizes().vec(), w.at("shape").get<std::vector<int64_t>>()) << name;
    EXPECT_EQ(tensor_bytes(t), hex_decode(w.at("hex").get<std::string>())) << name;
  }
}

void expect_same_bytes(const TensorMap& got, const TensorMap& want) {
  ASSERT_EQ(got.size(), want.size());
  for (const auto& [name, t] : want) {
    ASSERT_TRUE(got.count(name)) << name;
    const auto& g = got.at(name);
    EXPECT_EQ(g.scalar_type(), t.scalar_type()) << name;
    EXPECT_EQ(g.sizes(), t.sizes()) << name;
    EXPECT_EQ(tensor_bytes(g), tensor_bytes(t)) << name;
  }
}

// The same tensors as noncontiguous_tensors() in safetensors_check.py.
TensorMap noncontiguous_tensors() {
  using torch::indexing::None;
  using torch::indexing::Slice;
  return {
      {"permuted", torch::arange(24, torch::kFloat).reshape({2, 3, 4}).permute({2, 0, 1})},
      {"strided", torch::arange(10, torch::kLong).index({Slice(None, None, 3)})},
      {"expanded", torch::arange(3, torch::kHalf).expand({4, 3})},
      {"offset_view",
       torch::arange(20, torch::kInt).reshape({4, 5}).index({Slice(1, 3), Slice(1, 4)})},
      {"transposed_bf16", torch::arange(6, torch::kFloat).reshape({2, 3}).to(torch::kBFloat16).t()},
      {"bool_strided", (torch::arange(8).remainder(3) == 0).index({Slice(None, None, 2)})},
  };
}

// ---------------------------------------------------------------------------
// Crafted files

std::string le64(uint64_t n) {
  std::string bytes(8, '\0');
  for (int i = 0; i < 8; ++i) bytes[i] = static_cast<char>((n >> (8 * i)) & 0xFF);
  return bytes;
}

// A file with this exact header text and `data_bytes` zero bytes of data.
std::string raw_file(const std::string& header, size_t data_bytes = 0) {
  return le64(header.size()) + header + std::string(data_bytes, '\0');
}

// Like raw_file, with the header padded to a multiple of 8 bytes as the
// reference writer does.
std::string file_with(std::string header, const std::string& data = "") {
  header.append((8 - header.size() % 8) % 8, ' ');
  return le64(header.size()) + header + data;
}

SafetensorsHeader parse(const std::string& bytes) {
  return parse_safetensors_header(reinterpret_cast<const uint8_t*>(bytes.data()), bytes.size());
}

#define ASSERT_INVALID(bytes, substring) \
  ASSERT_THROWS_TYPE_WITH(parse(bytes), std::invalid_argument, substring)

// One F32 tensor entry.
std::string f32(const std::string& name, const std::string& shape, uint64_t begin, uint64_t end) {
  return "\"" + name + "\":{\"dtype\":\"F32\",\"shape\":" + shape + ",\"data_offsets\":[" +
         std::to_string(begin) + "," + std::to_string(end) + "]}";
}

// ===========================================================================
// Reading files written by the reference

TEST(SafetensorsRead, LoadFileMatchesTheReferenceBitwise) {
  for (const char* name : {"tensors.safetensors", "tensors_pt.safetensors", "empty.safetensors"}) {
    SCOPED_TRACE(name);
    const auto& want = expected().at(name);
    expect_matches(load_file(oracle_dir() / name), want.at("tensors"));
    const auto file = SafetensorsFile::open(oracle_dir() / name);
    EXPECT_EQ(file.metadata(), (want.at("metadata").get<std::map<std::string, std::string>>()));
  }
}

TEST(SafetensorsRead, OpenExposesSortedKeysAndTheHeader) {
  const auto path = oracle_dir() / "tensors.safetensors";
  const auto file = SafetensorsFile::open(path);
  std::vector<std::string> want;
  for (const auto& entry : expected().at("tensors.safetensors").at("tensors").items()) {
    want.push_back(entry.key());
  }
  std::sort(want.begin(), want.end());
  EXPECT_EQ(file.keys(), want);
  EXPECT_EQ(file.path(), path.string());
  EXPECT_TRUE(file.contains("scalar.f32"));
  EXPECT_TRUE(file.contains("n\u00e4me.\u540d\u524d"));
  EXPECT_FALSE(file.contains("scalar"));

  const auto& header = file.header();
  EXPECT_EQ(header.data_offset % 8, 0u);  // the reference pads the header
  uint64_t cursor = 0;
  for (const auto& t : header.tensors) {  // in data order, tiling the data section
    EXPECT_EQ(t.begin, cursor) << t.name;
    cursor = t.end;
  }
  EXPECT_EQ(header.data_offset + cursor, read_bytes(path).size());
  EXPECT_EQ(file.tensor("scalar.f32").dim(), 0);
  EXPECT_EQ(file.tensor("empty.f16.2x0x3").sizes(), (std::vector<int64_t>{2, 0, 3}));
}

TEST(SafetensorsRead, TensorsViewTheMappingAndKeepItAlive) {
  torch::Tensor t;
  {
    const auto file = SafetensorsFile::open(oracle_dir() / "tensors.safetensors");
    t = file.tensor("f32.random");
    EXPECT_EQ(file.tensor("f32.random").data_ptr(), t.data_ptr());  // no copy
  }
  const auto& want = expected().at("tensors.safetensors").at("tensors").at("f32.random");
  EXPECT_EQ(tensor_bytes(t), hex_decode(want.at("hex").get<std::string>()));
}

TEST(SafetensorsRead, WritingToATensorNeverReachesTheFile) {
  const auto path = scratch_dir() / "copy.safetensors";
  write_bytes(path, read_bytes(oracle_dir() / "tensors.safetensors"));
  const auto before = read_bytes(path);
  auto tensors = load_file(path);
  tensors.at("f32.random").fill_(7.0);
  tensors.at("u8.all").zero_();
  tensors.clear();
  EXPECT_EQ(read_bytes(path), before);
  expect_matches(load_file(path), expected().at("tensors.safetensors").at("tensors"));
}

TEST(SafetensorsRead, MisalignedDataIsCopied) {
  // Three bytes of U8 put the F32 tensor at an odd offset; the reference
  // writer never does this, other writers may.
  float values[2] = {1.5f, -2.25f};
  std::string data = "\x01\x02\x03";
  data.append(reinterpret_cast<const char*>(values), sizeof values);
  const auto header =
      R"({"a":{"dtype":"U8","shape":[3],"data_offsets":[0,3]},)" + f32("b", "[2]", 3, 11) + "}";
  const auto path = scratch_dir() / "misaligned.safetensors";
  write_bytes(path, file_with(header, data));
  const auto tensors = load_file(path);
  const auto& b = tensors.at("b");
  EXPECT_EQ(reinterpret_cast<uintptr_t>(b.data_ptr()) % alignof(float), 0u);
  EXPECT_EQ(b[0].item<float>(), 1.5f);
  EXPECT_EQ(b[1].item<float>(), -2.25f);
  EXPECT_EQ(tensors.at("a")[2].item<uint8_t>(), 3);
}

TEST(SafetensorsRead, UnknownNameListsValidNames) {
  const auto file = SafetensorsFile::open(oracle_dir() / "tensors.safetensors");
  ASSERT_THROWS_WITH(file.tensor("model.layers.0.self_attn.q_proj.wieght"),
                     "no tensor named \"model.layers.0.self_attn.q_proj.wieght\"");
  ASSERT_THROWS_WITH(file.tensor("model.layers.0.self_attn.q_proj.wieght"),
                     "such as \"model.layers.0.self_attn.q_proj.weight\"");
  const auto empty = SafetensorsFile::open(oracle_dir() / "empty.safetensors");
  ASSERT_THROWS_WITH(empty.tensor("x"), "the file holds no tensors");
}

TEST(SafetensorsRead, MissingFileNamesThePathAndTheReason) {
  const auto path = scratch_dir() / "absent.safetensors";
  ASSERT_THROWS_WITH(SafetensorsFile::open(path), path.string());
  ASSERT_THROWS_WITH(load_file(path), "No such file or directory");
  ASSERT_THROWS_WITH(SafetensorsFile::open(scratch_dir()), "is not a regular file");
}

TEST(SafetensorsRead, InvalidFileNamesThePathAndTheProblem) {
  const auto path = scratch_dir() / "bad.safetensors";
  write_bytes(path, "abc");
  ASSERT_THROWS_WITH(load_file(path), "\"" + path.string() + "\" is not a valid safetensors file");
  ASSERT_THROWS_WITH(load_file(path), "the file has 3 bytes");
  write_bytes(path, "");
  ASSERT_THROWS_WITH(load_file(path), "the file has 0 bytes");
}

// ===========================================================================
// Malformed headers: every check of parse_safetensors_header

TEST(SafetensorsHeader, AcceptsPaddingNullMetadataAndZeroSizeTensors) {
  auto h = parse(file_with(R"({"__metadata__":null,"z":{"dtype":"BOOL","shape":[0],)"
                           R"("data_offsets":[4,4]},)" +
                               f32("a", "[]", 0, 4) + "}",
                           std::string(4, '\0')));
  EXPECT_TRUE(h.metadata.empty());
  ASSERT_EQ(h.tensors.size(), 2u);
  EXPECT_EQ(h.tensors[0].name, "a");
  EXPECT_TRUE(h.tensors[0].shape.empty());
  EXPECT_EQ(h.tensors[1].name, "z");
  EXPECT_EQ(h.data_offset % 8, 0u);
}

TEST(SafetensorsHeader, RejectsFilesShorterThanTheLengthPrefix) {
  ASSERT_INVALID(std::string(), "the file has 0 bytes, fewer than the 8-byte header length");
  ASSERT_INVALID(std::string(7, '\0'), "the file has 7 bytes");
}

TEST(SafetensorsHeader, RejectsHeadersOverTheLimitOrPastTheEnd) {
  ASSERT_INVALID(le64(100'000'001) + "{}",
                 "header length 100000001 exceeds the limit of 100000000");
  ASSERT_INVALID(le64(UINT64_MAX) + "{}", "exceeds the limit");
  ASSERT_INVALID(le64(100'000'000) + "{}", "header length 100000000 runs past the end of the file");
  ASSERT_INVALID(le64(20) + "{}", "needs 28 bytes but the file has 10");
}

TEST(SafetensorsHeader, RejectsInvalidUtf8) {
  ASSERT_INVALID(raw_file("{\"a\xff\":1}"), "not valid UTF-8 (byte 3 of the header)");
  ASSERT_INVALID(raw_file("{\"\xc0\xaf\":1}"), "not valid UTF-8");          // overlong '/'
  ASSERT_INVALID(raw_file("{\"\xed\xa0\x80\":1}"), "not valid UTF-8");      // surrogate
  ASSERT_INVALID(raw_file("{\"\xf4\x90\x80\x80\":1}"), "not valid UTF-8");  // past U+10FFFF
  ASSERT_INVALID(raw_file("{\"\xe2\x82\":1}"), "not valid UTF-8");          // truncated
}

TEST(SafetensorsHeader, RejectsInvalidJson) {
  ASSERT_INVALID(raw_file("{\"a\":"), "the header is not valid JSON");
  ASSERT_INVALID(raw_file("{} x"), "the header is not valid JSON");
  ASSERT_INVALID(raw_file(std::string("{}\0\0", 4)),
                 "the header is not valid JSON: it has a NUL byte at byte 2 of the header");
  ASSERT_INVALID(raw_file("\xef\xbb\xbf{}"), "it starts with a byte-order mark");
  ASSERT_INVALID(raw_file(""), "the header is not valid JSON");
  ASSERT_INVALID(raw_file("{\"a\":\"\\ud800\"}"),
                 "the header is not valid JSON");  // lone surrogate
}

TEST(SafetensorsHeader, RejectsHeadersThatAreNotObjects) {
  ASSERT_INVALID(raw_file("[1,2]"), "the header must be a JSON object, not an array of 2 elements");
  ASSERT_INVALID(raw_file("\"x\""), "the header must be a JSON object, not the string \"x\"");
  ASSERT_INVALID(raw_file("null"), "the header must be a JSON object, not null");
}

TEST(SafetensorsHeader, RejectsDuplicateKeys) {
  ASSERT_INVALID(file_with("{" + f32("a", "[1]", 0, 4) + "," + f32("a", "[1]", 0, 4) + "}",
                           std::string(4, '\0')),
                 "the header has the key \"a\" more than once");
  ASSERT_INVALID(
      raw_file(R"({"a":{"dtype":"F32","dtype":"F32","shape":[],"data_offsets":[0,4]}})", 4),
      "the key \"dtype\" more than once");
}

TEST(SafetensorsHeader, RejectsEntriesWithMissingOrMistypedFields) {
  ASSERT_INVALID(raw_file(R"({"a":5})"),
                 "tensor \"a\" must be an object with \"dtype\", \"shape\" and \"data_offsets\", "
                 "not 5");
  ASSERT_INVALID(raw_file(R"({"a":{"shape":[],"data_offsets":[0,0]}})"),
                 "tensor \"a\" has no \"dtype\"; each tensor needs");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","data_offsets":[0,0]}})"),
                 "tensor \"a\" has no \"shape\"");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","shape":[]}})"),
                 "tensor \"a\" has no \"data_offsets\"");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":32,"shape":[],"data_offsets":[0,4]}})"),
                 "\"dtype\" must be a string such as \"F32\", not 32");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","shape":"2","data_offsets":[0,8]}})"),
                 "\"shape\" must be an array of non-negative integers, not the string \"2\"");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})"),
                 "dimension 0 of \"shape\" is 2.0; dimensions must be integers");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","shape":[true],"data_offsets":[0,4]}})"),
                 "dimension 0 of \"shape\" is true");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0]}})"),
                 "\"data_offsets\" must be an array of two non-negative integers [begin, end], "
                 "not an array of 1 elements");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[0,4,8]}})"),
                 "not an array of 3 elements");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":[-4,0]}})"),
                 "\"data_offsets\" must be an array of two non-negative integers");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F32","shape":[],"data_offsets":{"0":4}}})"),
                 "not an object");
}

TEST(SafetensorsHeader, RejectsUnknownDtypesListingTheValidOnes) {
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F8_E4M3","shape":[],"data_offsets":[0,1]}})", 1),
                 "tensor \"a\" has unknown dtype \"F8_E4M3\"; valid dtypes are I64 F64 F32 I32 "
                 "BF16 F16 I16 I8 U8 BOOL");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"f32","shape":[],"data_offsets":[0,4]}})", 4),
                 "unknown dtype \"f32\"");
}

TEST(SafetensorsHeader, RejectsNegativeOrOverflowingShapes) {
  ASSERT_INVALID(raw_file("{" + f32("a", "[2,-3]", 0, 0) + "}"),
                 "dimension 1 of \"shape\" is -3; dimensions must be integers from 0 to 2^63-1");
  ASSERT_INVALID(raw_file("{" + f32("a", "[9223372036854775808]", 0, 0) + "}"),
                 "dimension 0 of \"shape\" is 9223372036854775808");
  ASSERT_INVALID(raw_file("{" + f32("a", "[4294967296,4294967296]", 0, 0) + "}"),
                 "shape [4294967296, 4294967296] has too many elements");
  // Zero elements, but strides of 2^62 * 4 would not fit.
  ASSERT_INVALID(raw_file("{" + f32("a", "[0,4611686018427387904,4]", 0, 0) + "}"),
                 "has too many elements");
  ASSERT_INVALID(raw_file(R"({"a":{"dtype":"F64","shape":[4611686018427387904],)"
                          R"("data_offsets":[0,0]}})"),
                 "shape [4611686018427387904] of F64 has a byte size that overflows 64 bits");
}

TEST(SafetensorsHeader, RejectsBadDataOffsets) {
  ASSERT_INVALID(raw_file("{" + f32("a", "[1]", 8, 4) + "}", 8),
                 "tensor \"a\": data_offsets [8, 4] begin after they end");
  ASSERT_INVALID(raw_file("{" + f32("a", "[4]", 0, 16) + "}", 8),
                 "data_offsets [0, 16] end past the data section, which has 8 bytes");
  ASSERT_INVALID(raw_file("{" + f32("a", "[2,2]", 0, 12) + "}", 12),
                 "data_offsets [0, 12] hold 12 bytes, but shape [2, 2] of F32 needs 16");
  ASSERT_INVALID(raw_file("{" + f32("a", "[]", 0, 18446744073709551615u) + "}", 4),
                 "end past the data section");
}

TEST(SafetensorsHeader, RejectsTensorsThatDoNotTileTheData) {
  ASSERT_INVALID(raw_file("{" + f32("a", "[2]", 0, 8) + "," + f32("b", "[2]", 4, 12) + "}", 12),
                 "tensors \"a\" [0, 8] and \"b\" [4, 12] overlap; the tensors must tile");
  ASSERT_INVALID(raw_file("{" + f32("a", "[1]", 0, 4) + "," + f32("b", "[1]", 8, 12) + "}", 12),
                 "no tensor covers data bytes [4, 8] (a hole before tensor \"b\" [8, 12])");
  ASSERT_INVALID(raw_file("{" + f32("a", "[1]", 4, 8) + "}", 8),
                 "no tensor covers data bytes [0, 4]");
  ASSERT_INVALID(raw_file("{" + f32("a", "[1]", 0, 4) + "}", 8),
                 "the tensors end at data byte 4 but the data section has 8 bytes");
  ASSERT_INVALID(raw_file("{}", 1), "the tensors end at data byte 0 but the data section has 1");
  // A zero-size tensor inside another one's bytes, as the reference rejects.
  ASSERT_INVALID(raw_file("{" + f32("a", "[2]", 0, 8) + "," + f32("z", "[0]", 4, 4) + "}", 8),
                 "overlap");
}

TEST(SafetensorsHeader, RejectsMetadataThatIsNotAStringMap) {
  ASSERT_INVALID(raw_file(R"({"__metadata__":[1]})"),
                 "\"__metadata__\" must be an object mapping strings to strings, not an array");
  ASSERT_INVALID(raw_file(R"({"__metadata__":"pt"})"), "not the string \"pt\"");
  ASSERT_INVALID(raw_file(R"({"__metadata__":{"format":"pt","step":100}})"),
                 "\"__metadata__\" maps \"step\" to 100; metadata values must be strings");
}

TEST(SafetensorsHeader, CutsLongNamesInMessages) {
  const std::string name(10000, 'x');
  try {
    parse(raw_file("{\"" + name + R"(":{"dtype":"Q4","shape":[],"data_offsets":[0,0]}})"));
    FAIL() << "expected an error";
  } catch (const std::invalid_argument& e) {
    const std::string message = e.what();
    EXPECT_LT(message.size(), 400u) << message;
    EXPECT_NE(message.find("(10000 bytes)"), std::string::npos) << message;
  }
}

TEST(SafetensorsHeader, SerializeRoundTripsAndRejectsBadNames) {
  SafetensorsHeader h;
  h.tensors = {{"w", "BF16", {2, 3}, 0, 12}, {"s", "I64", {}, 12, 20}};
  h.metadata = {{"format", "pt"}, {"note", "\"quoted\"\n"}};
  const auto bytes = remat::io::serialize_safetensors_header(h);
  EXPECT_EQ((bytes.size() - 8) % 8, 0u);
  const auto back = parse(bytes + std::string(20, '\0'));
  EXPECT_EQ(back.tensors, h.tensors);
  EXPECT_EQ(back.metadata, h.metadata);

  auto serialize_with = [](remat::io::TensorEntry e) {
    SafetensorsHeader bad;
    bad.tensors = {std::move(e)};
    return remat::io::serialize_safetensors_header(bad);
  };
  ASSERT_THROWS_TYPE_WITH(serialize_with({"__metadata__", "F32", {}, 0, 4}), std::invalid_argument,
                          "cannot be named \"__metadata__\"");
  ASSERT_THROWS_TYPE_WITH(serialize_with({"bad\xff", "F32", {}, 0, 4}), std::invalid_argument,
                          "is not valid UTF-8");
  ASSERT_THROWS_TYPE_WITH(serialize_with({"a", "C64", {}, 0, 8}), std::invalid_argument,
                          "unknown dtype \"C64\"");
  h.tensors.push_back(h.tensors[0]);
  ASSERT_THROWS_TYPE_WITH(remat::io::serialize_safetensors_header(h), std::invalid_argument,
                          "tensor name \"w\" appears twice");
}

// ===========================================================================
// Writing

TEST(SafetensorsWrite, ByteIdenticalToTheReferenceWriter) {
  const auto dir = scratch_dir();
  save_file(load_file(oracle_dir() / "tensors_pt.safetensors"), dir / "a.safetensors");
  EXPECT_EQ(read_bytes(dir / "a.safetensors"), read_bytes(oracle_dir() / "tensors_pt.safetensors"));
  save_file({}, dir / "empty.safetensors", {});
  EXPECT_EQ(read_bytes(dir / "empty.safetensors"), read_bytes(oracle_dir() / "empty.safetensors"));
  EXPECT_EQ(listing(dir), (std::set<std::string>{"a.safetensors", "empty.safetensors"}));
}

TEST(SafetensorsWrite, RoundTripsEveryDtypeWithMetadata) {
  const auto& want = expected().at("tensors.safetensors");
  const auto metadata = want.at("metadata").get<std::map<std::string, std::string>>();
  const auto path = output_dir() / "tensors.safetensors";
  save_file(load_file(oracle_dir() / "tensors.safetensors"), path, metadata);
  expect_matches(load_file(path), want.at("tensors"));
  EXPECT_EQ(SafetensorsFile::open(path).metadata(), metadata);
}

TEST(SafetensorsWrite, NonContiguousTensorsAreWrittenByValue) {
  const auto tensors = noncontiguous_tensors();
  for (const auto& [name, t] : tensors) EXPECT_FALSE(t.is_contiguous()) << name;
  const auto path = output_dir() / "noncontig.safetensors";
  save_file(tensors, path);
  expect_same_bytes(load_file(path), tensors);
}

TEST(SafetensorsWrite, CudaTensorsAreCopiedToTheHost) {
  if (!torch::cuda::is_available()) GTEST_SKIP() << "no CUDA device";
  const TensorMap tensors = {
      {"w", torch::randn({8, 5}, torch::kCUDA).t()},
      {"b", torch::arange(7, torch::TensorOptions(torch::kCUDA).dtype(torch::kBFloat16))}};
  const auto path = scratch_dir() / "cuda.safetensors";
  save_file(tensors, path);
  expect_same_bytes(load_file(path), tensors);
}

TEST(SafetensorsWrite, RejectsBadInputsBeforeWritingAnything) {
  const auto dir = scratch_dir();
  const auto path = dir / "x.safetensors";
  ASSERT_THROWS_WITH(save_file({{"u", torch::Tensor()}}, path), "tensor \"u\" is undefined");
  ASSERT_THROWS_WITH(save_file({{"c", torch::zeros({2}, torch::kComplexFloat)}}, path),
                     "tensor \"c\" has dtype ComplexFloat");
  ASSERT_THROWS_WITH(save_file({{"c", torch::zeros({2}, torch::kComplexFloat)}}, path),
                     "supported are float64, float32, float16, bfloat16, int64");
  ASSERT_THROWS_WITH(save_file({{"s", torch::zeros({2, 2}).to_sparse()}}, path), "layout Sparse");
  ASSERT_THROWS_WITH(save_file({{"__metadata__", torch::zeros({1})}}, path),
                     "cannot be named \"__metadata__\"");
  ASSERT_THROWS_WITH(save_file({{"bad\xff", torch::zeros({1})}}, path), "is not valid UTF-8");
  ASSERT_THROWS_WITH(save_file({{"a", torch::zeros({1})}}, path, {{"k", "\xc0"}}),
                     "is not valid UTF-8");
  EXPECT_TRUE(listing(dir).empty());
}

TEST(SafetensorsWrite, FailedSaveKeepsTheExistingFile) {
  const auto dir = scratch_dir();
  const auto path = dir / "weights.safetensors";
  save_file({{"a", torch::arange(4, torch::kFloat)}}, path);
  const auto before = read_bytes(path);
  const TensorMap bad = {{"a", torch::ones({4})}, {"c", torch::zeros({2}, torch::kComplexFloat)}};
  ASSERT_THROWS_WITH(save_file(bad, path), "ComplexFloat");
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(listing(dir), std::set<std::string>{"weights.safetensors"});
}

TEST(SafetensorsWrite, FailureMidWriteRemovesTheTemporaryFile) {
  // A meta tensor has a shape but no data: the header and the first tensor
  // are written before copying it out fails.
  const auto dir = scratch_dir();
  const auto path = dir / "weights.safetensors";
  save_file({{"a", torch::arange(4, torch::kFloat)}}, path);
  const auto before = read_bytes(path);
  const TensorMap bad = {{"a", torch::ones({4})},
                         {"z", torch::empty({4}, torch::TensorOptions(torch::kMeta))}};
  EXPECT_THROW(save_file(bad, path), c10::Error);
  EXPECT_EQ(read_bytes(path), before);
  EXPECT_EQ(listing(dir), std::set<std::string>{"weights.safetensors"});
}

TEST(SafetensorsWrite, UnwritablePathNamesThePathAndTheReason) {
  const auto path = scratch_dir() / "missing" / "x.safetensors";
  ASSERT_THROWS_WITH(save_file({{"a", torch::ones({1})}}, path),
                     "cannot write \"" + path.string() + "\"");
  ASSERT_THROWS_WITH(save_file({{"a", torch::ones({1})}}, path), "No such file or directory");
}

// ===========================================================================
// Model directories

TEST(SafetensorsModel, LoadsShardedAndSingleFileModelsAsTheReference) {
  const auto& want = expected().at("tiny_model");
  expect_matches(load_model_weights(oracle_dir() / "tiny_model_sharded"), want);
  expect_matches(load_model_weights(oracle_dir() / "tiny_model_single"), want);
}

TEST(SafetensorsModel, SavesShardedAndSingleFileModels) {
  const auto weights = load_model_weights(oracle_dir() / "tiny_model_sharded");
  const auto max_shard = expected().at("tiny_model_max_shard_size").get<int64_t>();
  const auto sharded = output_dir() / "model_sharded";
  save_model_weights(sharded, weights, max_shard);
  EXPECT_FALSE(path_exists(sharded / "model.safetensors"));
  const auto index = Json::parse(read_bytes(sharded / "model.safetensors.index.json"));
  uint64_t total = 0;
  for (const auto& [name, t] : weights) total += t.nbytes();
  EXPECT_EQ(index.at("metadata").at("total_size").get<uint64_t>(), total);
  EXPECT_EQ(index.at("weight_map").size(), weights.size());
  std::set<std::string> shards;
  for (const auto& entry : index.at("weight_map")) shards.insert(entry.get<std::string>());
  EXPECT_GE(shards.size(), 3u);
  for (const auto& shard : shards) {
    EXPECT_EQ(shard.substr(0, 6), "model-");
    EXPECT_EQ(shard.substr(11), "-of-" +
                                    std::string(5 - std::to_string(shards.size()).size(), '0') +
                                    std::to_string(shards.size()) + ".safetensors");
    EXPECT_EQ(SafetensorsFile::open(sharded / shard).metadata().at("format"), "pt");
  }
  expect_same_bytes(load_model_weights(sharded), weights);

  const auto single = output_dir() / "model_single";
  save_model_weights(single, weights);
  EXPECT_FALSE(path_exists(single / "model.safetensors.index.json"));
  expect_same_bytes(load_model_weights(single), weights);
}

TEST(SafetensorsModel, ResavingRemovesStaleWeightFilesOnly) {
  const auto weights = load_model_weights(oracle_dir() / "tiny_model_sharded");
  const auto dir = scratch_dir();
  write_bytes(dir / "config.json", "{}");
  save_model_weights(dir, weights, 5000);
  const auto seven_shards = listing(dir);
  save_model_weights(dir, weights);
  EXPECT_EQ(listing(dir), (std::set<std::string>{"config.json", "model.safetensors"}));
  save_model_weights(dir, weights, 9000);
  const auto resharded = listing(dir);
  EXPECT_FALSE(resharded.count("model.safetensors"));
  EXPECT_NE(resharded, seven_shards);
  for (const auto& name : resharded) {
    if (name == "config.json" || name == "model.safetensors.index.json") continue;
    EXPECT_NE(name.find("-of-0000" + std::to_string(resharded.size() - 2)), std::string::npos)
        << name;
  }
  expect_same_bytes(load_model_weights(dir), weights);
}

TEST(SafetensorsModel, ReportsBrokenShardedDirectories) {
  const auto dir = scratch_dir();
  const auto one = [](float v) { return TensorMap{{"x", torch::full({2}, v)}}; };
  auto write_index = [&dir](const std::string& text) {
    write_bytes(dir / "model.safetensors.index.json", text);
  };
  ASSERT_THROWS_WITH(load_model_weights(dir), "no model weights in \"" + dir.string() + "\"");
  ASSERT_THROWS_WITH(load_model_weights(dir / "absent"), "(it is not a directory)");

  write_index(R"({"weight_map":{"x":"a.safetensors"}})");
  ASSERT_THROWS_WITH(load_model_weights(dir),
                     "names the shard \"a.safetensors\", which is missing from");
  save_file(one(1), dir / "a.safetensors");
  save_file({{"x", torch::ones({2})}, {"y", torch::ones({2})}}, dir / "b.safetensors");
  write_index(R"({"weight_map":{"x":"a.safetensors","y":"b.safetensors"}})");
  ASSERT_THROWS_WITH(load_model_weights(dir),
                     "tensor \"x\" appears twice, in the shards \"a.safetensors\" and "
                     "\"b.safetensors\"");
  write_index(R"({"weight_map":{"x":"a.safetensors","y":"a.safetensors"}})");
  ASSERT_THROWS_WITH(load_model_weights(dir),
                     "puts tensor \"y\" in the shard \"a.safetensors\", which does not hold it");
  save_file({{"y", torch::ones({2})}}, dir / "c.safetensors");
  write_index(R"({"weight_map":{"x":"c.safetensors","y":"a.safetensors"}})");
  ASSERT_THROWS_WITH(load_model_weights(dir),
                     "puts tensor \"x\" in the shard \"c.safetensors\", which does not hold it (it "
                     "is in \"a.safetensors\")");
  write_index(R"({"weight_map":{"x":"../a.safetensors"}})");
  ASSERT_THROWS_WITH(load_model_weights(dir), "shards must be file names in the index's directory");
  write_index(R"({"metadata":{}})");
  ASSERT_THROWS_WITH(load_model_weights(dir), "with a \"weight_map\" object");
  write_index("{");
  ASSERT_THROWS_WITH(load_model_weights(dir), "model.safetensors.index.json\" is not valid JSON");
}

TEST(SafetensorsModel, RejectsANonPositiveShardSize) {
  ASSERT_THROWS_WITH(save_model_weights(scratch_dir(), {}, 0),
                     "max_shard_bytes must be positive, got 0");
}

}  // namespace
