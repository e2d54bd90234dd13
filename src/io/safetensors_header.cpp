// Only the standard library and nlohmann-json: the fuzz target builds this
// file on its own, without torch.
#include "remat/io/safetensors_header.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cstring>
#include <limits>
#include <optional>
#include <set>
#include <stdexcept>
#include <tuple>

namespace remat::io {
namespace {

using Json = nlohmann::json;

constexpr const char* kMetadataKey = "__metadata__";
constexpr size_t kMaxQuotedBytes = 80;
constexpr size_t kMaxShownDims = 8;
constexpr size_t kMaxJsonErrorBytes = 200;

struct DtypeInfo {
  const char* name;
  size_t size;
};

// The reference writer's order, widest first: laying tensors out in this
// order keeps each one aligned for its dtype.
constexpr DtypeInfo kDtypes[] = {{"I64", 8}, {"F64", 8}, {"F32", 4}, {"I32", 4}, {"BF16", 2},
                                 {"F16", 2}, {"I16", 2}, {"I8", 1},  {"U8", 1},  {"BOOL", 1}};

[[noreturn]] void fail(const std::string& message) {
  throw std::invalid_argument("safetensors: " + message);
}

// A string from the file, quoted and escaped for a message. Long strings are
// cut, so that a hostile header cannot blow up the message.
std::string quote(const std::string& s) {
  auto shown =
      Json(s.substr(0, kMaxQuotedBytes)).dump(-1, ' ', false, Json::error_handler_t::replace);
  if (s.size() <= kMaxQuotedBytes) return shown;
  return shown + "... (" + std::to_string(s.size()) + " bytes)";
}

std::string dtype_list() {
  std::string list;
  for (const auto& d : kDtypes) list += (list.empty() ? "" : " ") + std::string(d.name);
  return list;
}

const DtypeInfo* find_dtype(const std::string& name) {
  for (const auto& d : kDtypes) {
    if (name == d.name) return &d;
  }
  return nullptr;
}

// A JSON value as a message shows it: scalars in full, containers by kind
// only (they may be huge or deeply nested).
std::string describe(const Json& j) {
  if (j.is_string()) return "the string " + quote(j.get<std::string>());
  if (j.is_array()) return "an array of " + std::to_string(j.size()) + " elements";
  if (j.is_object()) return "an object";
  return j.dump();
}

std::string format_shape(const std::vector<int64_t>& shape) {
  std::string s = "[";
  for (size_t i = 0; i < shape.size() && i < kMaxShownDims; ++i) {
    s += (i ? ", " : "") + std::to_string(shape[i]);
  }
  if (shape.size() > kMaxShownDims) s += ", ... (" + std::to_string(shape.size()) + " dims)";
  return s + "]";
}

std::string format_range(uint64_t begin, uint64_t end) {
  return "[" + std::to_string(begin) + ", " + std::to_string(end) + "]";
}

uint64_t read_u64_le(const uint8_t* p) {
  uint64_t v = 0;
  for (int i = 7; i >= 0; --i) v = (v << 8) | p[i];
  return v;
}

// The offset of the first byte of `s` that does not start a valid UTF-8
// sequence (overlong forms, surrogates and code points past U+10FFFF are
// invalid), or `n` if all of it is valid.
size_t invalid_utf8_offset(const uint8_t* s, size_t n) {
  size_t i = 0;
  while (i < n) {
    const uint8_t c = s[i];
    if (c < 0x80) {
      ++i;
      continue;
    }
    size_t len = 0;
    uint32_t cp = 0;
    uint32_t min = 0;
    if ((c & 0xE0) == 0xC0) {
      len = 2, cp = c & 0x1F, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      len = 3, cp = c & 0x0F, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      len = 4, cp = c & 0x07, min = 0x10000;
    } else {
      return i;
    }
    if (n - i < len) return i;
    for (size_t k = 1; k < len; ++k) {
      if ((s[i + k] & 0xC0) != 0x80) return i;
      cp = (cp << 6) | (s[i + k] & 0x3F);
    }
    if (cp < min || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return i;
    i += len;
  }
  return n;
}

void check_utf8(const std::string& s, const std::string& what) {
  const auto* bytes = reinterpret_cast<const uint8_t*>(s.data());
  const size_t bad = invalid_utf8_offset(bytes, s.size());
  if (bad == s.size()) return;
  fail(what + " " + quote(s) + " is not valid UTF-8 (byte " + std::to_string(bad) +
       "); safetensors headers are UTF-8 JSON");
}

// nlohmann-json reads a NUL byte as the end of its input and skips a leading
// byte-order mark; the reference rejects both, so this parser does too.
void check_json_text(const uint8_t* text, size_t n) {
  const void* nul = n == 0 ? nullptr : std::memchr(text, 0, n);
  if (nul != nullptr) {
    fail("the header is not valid JSON: it has a NUL byte at byte " +
         std::to_string(static_cast<const uint8_t*>(nul) - text) +
         " of the header (the header is padded with spaces)");
  }
  if (n >= 3 && text[0] == 0xEF && text[1] == 0xBB && text[2] == 0xBF) {
    fail("the header is not valid JSON: it starts with a byte-order mark");
  }
}

// Parses the header text. JSON parsers keep the last of duplicate keys
// silently; here a duplicate is an error, because it makes the file
// ambiguous.
Json parse_json(const uint8_t* text, size_t n) {
  check_json_text(text, n);
  std::vector<std::set<std::string>> open_objects;
  std::optional<std::string> duplicate;
  Json::parser_callback_t track_keys = [&](int, Json::parse_event_t event, Json& parsed) {
    if (event == Json::parse_event_t::object_start) open_objects.emplace_back();
    if (event == Json::parse_event_t::object_end) open_objects.pop_back();
    if (event != Json::parse_event_t::key) return true;
    auto key = parsed.get<std::string>();
    if (!open_objects.back().insert(key).second && !duplicate) duplicate = std::move(key);
    return true;
  };
  Json root;
  try {
    root = Json::parse(text, text + n, track_keys);
  } catch (const Json::exception& e) {
    fail("the header is not valid JSON: " + std::string(e.what()).substr(0, kMaxJsonErrorBytes));
  }
  if (duplicate) {
    fail("the header has the key " + quote(*duplicate) +
         " more than once; each tensor name and each field may appear once");
  }
  return root;
}

std::optional<uint64_t> as_u64(const Json& j) {
  if (j.is_number_unsigned()) return j.get<uint64_t>();
  if (j.is_number_integer() && j.get<int64_t>() >= 0) return j.get<int64_t>();
  return std::nullopt;
}

const Json& field(const std::string& name, const Json& entry, const char* key) {
  auto it = entry.find(key);
  if (it == entry.end()) {
    fail("tensor " + quote(name) + " has no \"" + key +
         "\"; each tensor needs \"dtype\", \"shape\" and \"data_offsets\"");
  }
  return *it;
}

std::string parse_dtype(const std::string& name, const Json& j) {
  if (!j.is_string()) {
    fail("tensor " + quote(name) + ": \"dtype\" must be a string such as \"F32\", not " +
         describe(j));
  }
  auto dtype = j.get<std::string>();
  if (find_dtype(dtype) == nullptr) {
    fail("tensor " + quote(name) + " has unknown dtype " + quote(dtype) + "; valid dtypes are " +
         dtype_list());
  }
  return dtype;
}

std::vector<int64_t> parse_shape(const std::string& name, const Json& j) {
  if (!j.is_array()) {
    fail("tensor " + quote(name) + ": \"shape\" must be an array of non-negative integers, not " +
         describe(j));
  }
  std::vector<int64_t> shape;
  shape.reserve(j.size());
  for (size_t i = 0; i < j.size(); ++i) {
    auto dim = as_u64(j[i]);
    if (!dim || *dim > static_cast<uint64_t>(std::numeric_limits<int64_t>::max())) {
      fail("tensor " + quote(name) + ": dimension " + std::to_string(i) + " of \"shape\" is " +
           describe(j[i]) + "; dimensions must be integers from 0 to 2^63-1");
    }
    shape.push_back(static_cast<int64_t>(*dim));
  }
  return shape;
}

// The byte size of a tensor of `shape` and `dtype`. Zero dimensions count as
// one in the overflow check, so that the strides of the tensor fit in 64 bits
// too.
uint64_t byte_size(const std::string& name, const std::vector<int64_t>& shape,
                   const std::string& dtype) {
  const uint64_t limit = std::numeric_limits<int64_t>::max();
  uint64_t numel = 1;
  uint64_t span = 1;
  for (int64_t dim : shape) {
    const auto d = static_cast<uint64_t>(dim);
    if (__builtin_mul_overflow(span, std::max<uint64_t>(d, 1), &span) || span > limit) {
      fail("tensor " + quote(name) + ": shape " + format_shape(shape) +
           " has too many elements; the element count must fit in a signed 64-bit integer");
    }
    numel *= d;
  }
  const uint64_t itemsize = find_dtype(dtype)->size;
  if (numel > std::numeric_limits<uint64_t>::max() / itemsize) {
    fail("tensor " + quote(name) + ": shape " + format_shape(shape) + " of " + dtype +
         " has a byte size that overflows 64 bits");
  }
  return numel * itemsize;
}

std::pair<uint64_t, uint64_t> parse_offsets(const std::string& name, const Json& j) {
  std::optional<uint64_t> begin, end;
  if (j.is_array() && j.size() == 2) begin = as_u64(j[0]), end = as_u64(j[1]);
  if (!begin || !end) {
    fail("tensor " + quote(name) +
         ": \"data_offsets\" must be an array of two non-negative integers [begin, end], not " +
         describe(j));
  }
  if (*begin > *end) {
    fail("tensor " + quote(name) + ": data_offsets " + format_range(*begin, *end) +
         " begin after they end; begin must not exceed end");
  }
  return {*begin, *end};
}

TensorEntry parse_entry(const std::string& name, const Json& j, uint64_t data_size) {
  if (!j.is_object()) {
    fail("tensor " + quote(name) +
         " must be an object with \"dtype\", \"shape\" and \"data_offsets\", not " + describe(j));
  }
  TensorEntry e;
  e.name = name;
  e.dtype = parse_dtype(name, field(name, j, "dtype"));
  e.shape = parse_shape(name, field(name, j, "shape"));
  std::tie(e.begin, e.end) = parse_offsets(name, field(name, j, "data_offsets"));
  const uint64_t nbytes = byte_size(name, e.shape, e.dtype);
  if (e.end > data_size) {
    fail("tensor " + quote(name) + ": data_offsets " + format_range(e.begin, e.end) +
         " end past the data section, which has " + std::to_string(data_size) + " bytes");
  }
  if (e.end - e.begin != nbytes) {
    fail("tensor " + quote(name) + ": data_offsets " + format_range(e.begin, e.end) + " hold " +
         std::to_string(e.end - e.begin) + " bytes, but shape " + format_shape(e.shape) + " of " +
         e.dtype + " needs " + std::to_string(nbytes));
  }
  return e;
}

// The reference reads "__metadata__" as an optional string map, so null is
// accepted as no metadata.
std::map<std::string, std::string> parse_metadata(const Json& j) {
  if (j.is_null()) return {};
  if (!j.is_object()) {
    fail("\"__metadata__\" must be an object mapping strings to strings, not " + describe(j));
  }
  std::map<std::string, std::string> metadata;
  for (auto it = j.begin(); it != j.end(); ++it) {
    if (!it->is_string()) {
      fail("\"__metadata__\" maps " + quote(it.key()) + " to " + describe(*it) +
           "; metadata values must be strings");
    }
    metadata.emplace(it.key(), it->get<std::string>());
  }
  return metadata;
}

// Sorts the tensors by their data and checks that they tile the data
// section: each starts where the previous one ends, and the last ends at the
// end of the file.
void check_tiling(std::vector<TensorEntry>& tensors, uint64_t data_size) {
  std::sort(tensors.begin(), tensors.end(), [](const TensorEntry& a, const TensorEntry& b) {
    return std::tie(a.begin, a.end, a.name) < std::tie(b.begin, b.end, b.name);
  });
  const char* rule =
      "; the tensors must tile the data section exactly, each starting where the "
      "previous one ends";
  uint64_t cursor = 0;
  for (size_t i = 0; i < tensors.size(); ++i) {
    const auto& t = tensors[i];
    if (t.begin < cursor) {
      const auto& p = tensors[i - 1];
      fail("tensors " + quote(p.name) + " " + format_range(p.begin, p.end) + " and " +
           quote(t.name) + " " + format_range(t.begin, t.end) + " overlap" + rule);
    }
    if (t.begin > cursor) {
      fail("no tensor covers data bytes " + format_range(cursor, t.begin) +
           " (a hole before tensor " + quote(t.name) + " " + format_range(t.begin, t.end) + ")" +
           rule);
    }
    cursor = t.end;
  }
  if (cursor != data_size) {
    fail("the tensors end at data byte " + std::to_string(cursor) + " but the data section has " +
         std::to_string(data_size) + " bytes" + rule + ", up to the end of the file");
  }
}

}  // namespace

const std::vector<std::string>& safetensors_dtypes() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (const auto& d : kDtypes) v.emplace_back(d.name);
    return v;
  }();
  return names;
}

size_t safetensors_dtype_size(const std::string& dtype) {
  const auto* d = find_dtype(dtype);
  if (d == nullptr) fail("unknown dtype " + quote(dtype) + "; valid dtypes are " + dtype_list());
  return d->size;
}

SafetensorsHeader parse_safetensors_header(const uint8_t* data, size_t size) {
  if (size < 8) {
    fail("the file has " + std::to_string(size) +
         " bytes, fewer than the 8-byte header length that starts every safetensors file");
  }
  const uint64_t n = read_u64_le(data);
  if (n > kMaxSafetensorsHeaderBytes) {
    fail("header length " + std::to_string(n) + " exceeds the limit of " +
         std::to_string(kMaxSafetensorsHeaderBytes) + " bytes");
  }
  if (n > size - 8) {
    fail("header length " + std::to_string(n) +
         " runs past the end of the file: the header needs " + std::to_string(8 + n) +
         " bytes but the file has " + std::to_string(size));
  }
  const uint8_t* text = data + 8;
  const size_t bad = invalid_utf8_offset(text, n);
  if (bad != n) {
    fail("the header is not valid UTF-8 (byte " + std::to_string(bad) +
         " of the header); it must be UTF-8 JSON");
  }
  const Json root = parse_json(text, n);
  if (!root.is_object()) fail("the header must be a JSON object, not " + describe(root));

  SafetensorsHeader header;
  header.data_offset = 8 + n;
  const uint64_t data_size = size - header.data_offset;
  for (auto it = root.begin(); it != root.end(); ++it) {
    if (it.key() == kMetadataKey) {
      header.metadata = parse_metadata(*it);
    } else {
      header.tensors.push_back(parse_entry(it.key(), *it, data_size));
    }
  }
  check_tiling(header.tensors, data_size);
  return header;
}

std::string serialize_safetensors_header(const SafetensorsHeader& header) {
  std::string json = "{";
  auto append = [&json](const std::string& key, const std::string& value) {
    if (json.size() > 1) json += ',';
    json += Json(key).dump() + ':' + value;
  };
  if (!header.metadata.empty()) {
    for (const auto& [key, value] : header.metadata) {
      check_utf8(key, "metadata key");
      check_utf8(value, "the metadata value of " + quote(key) + ",");
    }
    append(kMetadataKey, Json(header.metadata).dump());
  }
  std::set<std::string> names;
  for (const auto& t : header.tensors) {
    check_utf8(t.name, "tensor name");
    if (t.name == kMetadataKey) {
      fail("a tensor cannot be named \"__metadata__\"; that key holds the file's metadata");
    }
    if (!names.insert(t.name).second) fail("tensor name " + quote(t.name) + " appears twice");
    safetensors_dtype_size(t.dtype);
    nlohmann::ordered_json entry = {
        {"dtype", t.dtype}, {"shape", t.shape}, {"data_offsets", {t.begin, t.end}}};
    append(t.name, entry.dump());
  }
  json += '}';
  json.append((8 - json.size() % 8) % 8, ' ');

  std::string bytes(8, '\0');
  for (size_t i = 0; i < 8; ++i) bytes[i] = static_cast<char>((json.size() >> (8 * i)) & 0xFF);
  return bytes + json;
}

}  // namespace remat::io
