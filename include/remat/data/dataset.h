#pragma once

/// \file
/// What a training dataset gives the data loader: examples of token ids and
/// labels, by index.
/// \code
///   struct Repeat : remat::data::Dataset {
///     int64_t size() const override { return 100; }
///     remat::data::Example get(int64_t i) const override { return {{1, 2, 3}, {1, 2, 3}}; }
///   };
/// \endcode

#include <cstdint>
#include <vector>

namespace remat::data {

/// The label the loss ignores: torch's cross_entropy `ignore_index` and
/// Hugging Face's -100 (prompt tokens, padding).
constexpr int64_t kIgnoreIndex = -100;

/// One causal-LM example: the model's input tokens and, position by
/// position, the label each is scored against (kIgnoreIndex: not at all).
/// The model shifts labels itself, as Hugging Face models do, so for plain
/// text `labels == input_ids`.
///
/// Example: `Example{{5, 6, 7}, {kIgnoreIndex, 6, 7}}`
struct Example {
  std::vector<int64_t> input_ids;
  std::vector<int64_t> labels;
};

/// A map-style dataset: `size()` examples, `get(i)` for i in [0, size()).
/// The data loader calls `get` from its worker threads at the same time, so
/// it must be safe to call concurrently (a dataset that only reads its own
/// members is).
class Dataset {
 public:
  /// Datasets are used through pointers to this base.
  virtual ~Dataset() = default;

  /// The number of examples.
  virtual int64_t size() const = 0;

  /// Example `index`, 0 <= index < size().
  virtual Example get(int64_t index) const = 0;
};

}  // namespace remat::data
