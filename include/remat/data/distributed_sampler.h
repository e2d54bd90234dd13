#pragma once

/// \file
/// The order in which one process visits a dataset: torch's
/// `torch.utils.data.DistributedSampler`, index for index.
/// \code
///   remat::data::DistributedSampler sampler(
///       dataset.size(),
///       remat::data::DistributedSamplerOptions().num_replicas(8).rank(3).seed(42));
///   sampler.set_epoch(epoch);
///   for (int64_t index : sampler.indices()) { ... }
/// \endcode

#include <torch/torch.h>

#include <cstdint>
#include <vector>

namespace remat::data {

/// torch.utils.data.DistributedSampler's arguments, same names and defaults.
struct DistributedSamplerOptions {
  /// Processes sharing the dataset. Default 1; at least 1.
  TORCH_ARG(int64_t, num_replicas) = 1;

  /// This process, in [0, num_replicas). Default 0.
  TORCH_ARG(int64_t, rank) = 0;

  /// Shuffle with a permutation drawn from a CPU generator seeded with
  /// `seed + epoch`. Default true.
  TORCH_ARG(bool, shuffle) = true;

  /// Must be the same on every replica. Default 0.
  TORCH_ARG(int64_t, seed) = 0;

  /// Drop the tail so every replica gets the same number of indices;
  /// otherwise pad by repeating indices from the start. Default false.
  TORCH_ARG(bool, drop_last) = false;
};

/// Which indices of a dataset of `dataset_size` examples this replica
/// visits in each epoch, in order; the same indices as torch's
/// DistributedSampler for the same options and epoch (the permutation is
/// torch.randperm with a generator seeded with `seed + epoch`). With one
/// replica and no drop_last it is a seeded shuffle of the whole dataset, as
/// the Hugging Face Trainer's single-process sampler.
///
/// Example: `DistributedSampler(10, DistributedSamplerOptions().num_replicas(4).rank(1)).indices()`
class DistributedSampler {
 public:
  /// A sampler over `dataset_size` examples.
  explicit DistributedSampler(int64_t dataset_size, const DistributedSamplerOptions& options = {});

  /// Selects the epoch whose order indices() gives (torch's set_epoch).
  void set_epoch(int64_t epoch) { epoch_ = epoch; }
  /// The epoch set last (0 at first).
  int64_t epoch() const { return epoch_; }

  /// This replica's indices for the current epoch (size() of them).
  std::vector<int64_t> indices() const;

  /// Indices per replica per epoch (torch's `num_samples`, `len(sampler)`).
  int64_t size() const { return num_samples_; }

  /// Indices over all replicas (torch's `total_size`).
  int64_t total_size() const { return num_samples_ * options_.num_replicas(); }

  int64_t dataset_size() const { return dataset_size_; }
  /// The options it was built with.
  const DistributedSamplerOptions& options() const { return options_; }

 private:
  int64_t dataset_size_;
  DistributedSamplerOptions options_;
  int64_t num_samples_;
  int64_t epoch_ = 0;
};

}  // namespace remat::data
