#pragma once

/// \file
/// Reading and writing safetensors files and Hugging Face model directories,
/// compatible with Python's `safetensors.torch` and with transformers'
/// `save_pretrained` / `from_pretrained`.
/// \code
///   auto weights = remat::io::load_model_weights("gpt2-small/");
///   remat::io::save_file({{"w", torch::randn({2, 3})}}, "w.safetensors");
/// \endcode
///
/// The supported dtypes are float64, float32, float16, bfloat16, int64,
/// int32, int16, int8, uint8 and bool (safetensors F64 F32 F16 BF16 I64 I32
/// I16 I8 U8 BOOL). Data is little-endian, as the format requires; only
/// little-endian hosts are supported.

#include <torch/torch.h>

#include <map>
#include <memory>
#include <string>
#include <vector>

#include "remat/io/safetensors_header.h"

namespace remat::io {

/// An open safetensors file, memory-mapped. The mapping is private
/// (copy-on-write): the tensors it returns view the file without copying,
/// and writing into them changes only this process's copy, never the file.
/// Each tensor keeps the mapping alive, so tensors outlive the
/// SafetensorsFile they came from. As with any memory mapping, another
/// process truncating the file while it is mapped makes reads fail.
/// Copying a SafetensorsFile is cheap and shares the mapping.
/// \code
///   auto file = remat::io::SafetensorsFile::open("model.safetensors");
///   for (const auto& name : file.keys()) std::cout << name << file.tensor(name).sizes() << "\n";
///   std::string format = file.metadata().at("format");
/// \endcode
class SafetensorsFile {
 public:
  /// Maps and validates the file at `path`. Throws c10::Error naming the path
  /// and the system's reason when it cannot be opened or mapped, and naming
  /// the problem (see parse_safetensors_header) when it is not a valid
  /// safetensors file.
  static SafetensorsFile open(const std::string& path);

  /// The path the file was opened from.
  const std::string& path() const { return path_; }

  /// The parsed header: tensors in the order of their data, metadata, and
  /// the offset of the data section.
  const SafetensorsHeader& header() const { return header_; }

  /// The "__metadata__" string map (empty if the file has none).
  const std::map<std::string, std::string>& metadata() const { return header_.metadata; }

  /// The tensor names, sorted.
  std::vector<std::string> keys() const;

  /// Whether the file holds a tensor called `name`.
  bool contains(const std::string& name) const;

  /// The tensor called `name`, on the CPU, viewing the mapping (copied when
  /// its data is not aligned for its dtype, which the reference writer never
  /// produces). Throws c10::Error listing some of the valid names for an
  /// unknown name.
  torch::Tensor tensor(const std::string& name) const;

 private:
  struct Mapping;

  SafetensorsFile(std::string path, std::shared_ptr<Mapping> mapping, SafetensorsHeader header);
  const TensorEntry& entry(const std::string& name) const;

  std::string path_;
  std::shared_ptr<Mapping> mapping_;
  SafetensorsHeader header_;
  std::map<std::string, size_t> index_;
};

/// Every tensor of the safetensors file at `path`, by name, like Python's
/// `safetensors.torch.load_file`. The tensors view a private mapping of the
/// file (see SafetensorsFile).
/// \code
///   auto tensors = remat::io::load_file("model.safetensors");
///   auto w = tensors.at("lm_head.weight");
/// \endcode
std::map<std::string, torch::Tensor> load_file(const std::string& path);

/// Writes `tensors` to `path` as a safetensors file, like Python's
/// `safetensors.torch.save_file`: data laid out widest dtype first and then
/// by name (so every tensor is aligned), the header padded with spaces to a
/// multiple of 8 bytes; the bytes are the reference's own when `metadata`
/// has at most one entry (it orders several entries arbitrarily). `metadata`
/// defaults to {"format": "pt"}, which transformers requires; pass {} to
/// write none. Tensors may be non-contiguous or on any device; they are
/// written as their contiguous CPU values, little-endian.
///
/// The write is atomic: the file is written under a temporary name in the
/// same directory, flushed to disk, then renamed to `path`, so `path` holds
/// either its old content or the complete new file, never a partial one (a
/// symbolic link at `path` is replaced, not followed).
/// Throws c10::Error for an undefined tensor, an unsupported dtype (complex,
/// unsigned 16-64 bit, float8, ...) or a non-strided layout (checked before
/// anything is written), a tensor named "__metadata__", names or metadata
/// that are not UTF-8, and for any I/O failure (naming the path and the
/// system's reason).
/// \code
///   remat::io::save_file({{"w", w}, {"b", b}}, "ckpt.safetensors");
///   remat::io::save_file(tensors, "x.safetensors", {{"format", "pt"}, {"step", "100"}});
/// \endcode
void save_file(const std::map<std::string, torch::Tensor>& tensors, const std::string& path,
               const std::map<std::string, std::string>& metadata = {{"format", "pt"}});

/// The weights of a Hugging Face model directory: `dir/model.safetensors`
/// if present (transformers' order of preference), else the shards named by
/// `dir/model.safetensors.index.json` ("weight_map": tensor name -> shard
/// file). Throws c10::Error when the directory has neither file, when the
/// index is malformed or names a missing shard, when a tensor appears in two
/// shards, and when a tensor is not in the shard the index names.
/// \code
///   auto weights = remat::io::load_model_weights("checkpoints/step-1000");
/// \endcode
std::map<std::string, torch::Tensor> load_model_weights(const std::string& dir);

/// Writes `tensors` into the Hugging Face model directory `dir` (created if
/// needed) the way transformers' `save_pretrained` does: one
/// `model.safetensors` when the total size is at most `max_shard_bytes`
/// (default 5'000'000'000, transformers' "5GB"), else shards
/// `model-00001-of-0000N.safetensors` ... filled in name order, each up to
/// `max_shard_bytes` (a larger tensor gets a shard of its own), plus
/// `model.safetensors.index.json` with "metadata": {"total_size": bytes} and
/// the "weight_map". Every file carries {"format": "pt"} metadata and is
/// written atomically (see save_file). Weight files of an earlier save that
/// the new one does not use (stale shards, a stale index or
/// `model.safetensors`) are removed afterwards, so that no loader mixes the
/// two saves. config.json and the tokenizer files are not written.
/// \code
///   remat::io::save_model_weights("out/step-1000", weights);
///   remat::io::save_model_weights("out/small-shards", weights, 100'000'000);
/// \endcode
void save_model_weights(const std::string& dir, const std::map<std::string, torch::Tensor>& tensors,
                        int64_t max_shard_bytes = 5'000'000'000);

}  // namespace remat::io
