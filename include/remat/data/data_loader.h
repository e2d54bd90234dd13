#pragma once

/// \file
/// Batches for the training loop: a sampler's order, cut into batches,
/// collated on background threads while the model trains.
/// \code
///   remat::data::DataLoader loader(dataset, remat::data::DistributedSampler(dataset->size()),
///                                  remat::data::DataCollatorForCausalLM(pad_id),
///                                  remat::data::DataLoaderOptions().batch_size(16));
///   for (int64_t epoch = 0; epoch < epochs; ++epoch) {
///     for (const remat::data::Batch& batch : loader.epoch(epoch)) train_step(batch);
///   }
/// \endcode

#include <torch/torch.h>

#include <cstdint>
#include <functional>
#include <iterator>
#include <memory>
#include <optional>
#include <vector>

#include "remat/data/data_collator.h"
#include "remat/data/dataset.h"
#include "remat/data/distributed_sampler.h"

namespace remat::data {

/// torch.utils.data.DataLoader's arguments that apply, same names. Workers
/// are threads of this process, not processes.
struct DataLoaderOptions {
  /// Examples per batch (the Trainer's per_device_train_batch_size). Default
  /// 8; at least 1.
  TORCH_ARG(int64_t, batch_size) = 8;

  /// Drop the last batch when it is smaller than batch_size. Default false.
  TORCH_ARG(bool, drop_last) = false;

  /// Threads that build batches ahead of the consumer; batches still come out
  /// in order. 0 builds each batch in the consumer's thread when asked for.
  /// Default 1; at least 0.
  TORCH_ARG(int64_t, num_workers) = 1;

  /// Batches each worker keeps ready (the bound of its queue). Default 2; at
  /// least 1.
  TORCH_ARG(int64_t, prefetch_factor) = 2;
};

/// Turns a list of examples into a batch; DataCollatorForCausalLM is one.
using CollateFn = std::function<Batch(const std::vector<Example>&)>;

namespace detail {
struct BatchStreamState;
}  // namespace detail

/// One epoch's batches, in order, from a DataLoader. Its worker threads start
/// when it is created and stop when it is destroyed, also mid-epoch (a worker
/// busy with a batch finishes that batch first). An exception a worker hits
/// building a batch (in the dataset or the collator) is rethrown by next() in
/// place of that batch, after the batches before it; the stream then ends.
/// Iterable with range-for, once.
class BatchStream {
 public:
  /// Movable (the workers move with the stream), not copyable.
  BatchStream(BatchStream&&) noexcept;
  BatchStream& operator=(BatchStream&&) noexcept;
  BatchStream(const BatchStream&) = delete;
  BatchStream& operator=(const BatchStream&) = delete;
  ~BatchStream();

  /// The next batch; nullopt after the last.
  std::optional<Batch> next();

  /// Batches not yet returned.
  int64_t remaining() const;

  /// Input iterator over the remaining batches (range-for).
  class Iterator {
   public:
    using iterator_category = std::input_iterator_tag;
    using value_type = Batch;
    using difference_type = std::ptrdiff_t;
    using pointer = const Batch*;
    using reference = const Batch&;

    explicit Iterator(BatchStream* stream) : stream_(stream) { ++*this; }
    Iterator() = default;
    const Batch& operator*() const { return *current_; }
    const Batch* operator->() const { return &*current_; }
    Iterator& operator++() {
      current_ = stream_->next();
      return *this;
    }
    bool operator==(const Iterator& other) const { return done() == other.done(); }
    bool operator!=(const Iterator& other) const { return !(*this == other); }

   private:
    bool done() const { return !current_.has_value(); }
    BatchStream* stream_ = nullptr;
    std::optional<Batch> current_;
  };

  /// The first remaining batch; begin() may be called once.
  Iterator begin() { return Iterator(this); }
  /// The end of the stream.
  Iterator end() { return Iterator(); }

 private:
  friend class DataLoader;
  explicit BatchStream(std::unique_ptr<detail::BatchStreamState> state);
  void stop();

  std::unique_ptr<detail::BatchStreamState> state_;
};

/// Cuts a sampler's indices into batches of examples of a dataset and
/// collates them, prefetching on worker threads. The dataset and the collate
/// function are shared with the workers, so they must be safe to call
/// concurrently (DataCollatorForCausalLM and CausalLMDataset are).
///
/// Example: see the file comment.
class DataLoader {
 public:
  DataLoader(std::shared_ptr<const Dataset> dataset, DistributedSampler sampler, CollateFn collate,
             const DataLoaderOptions& options = {});

  /// Batches per epoch (torch's `len(dataloader)`).
  int64_t size() const;

  /// The batches of `epoch` (the sampler's order for that epoch), starting
  /// after the first `skip_first_batches` of them, which are neither read nor
  /// collated: resuming mid-epoch at batch k gives exactly the batches the
  /// uninterrupted epoch gave from k on. 0 <= skip_first_batches <= size().
  ///
  /// Example: `for (const auto& batch : loader.epoch(2, /*skip_first_batches=*/100)) ...`
  BatchStream epoch(int64_t epoch, int64_t skip_first_batches = 0) const;

  /// The options it was built with.
  const DataLoaderOptions& options() const { return options_; }
  /// The sampler that orders each epoch.
  const DistributedSampler& sampler() const { return sampler_; }

 private:
  std::shared_ptr<const Dataset> dataset_;
  DistributedSampler sampler_;
  CollateFn collate_;
  DataLoaderOptions options_;
};

}  // namespace remat::data
