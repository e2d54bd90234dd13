#include "remat/data/data_loader.h"

#include <condition_variable>
#include <deque>
#include <exception>
#include <mutex>
#include <thread>
#include <variant>

namespace remat::data {
namespace detail {

// A built batch, or what stopped its worker from building it.
using Item = std::variant<Batch, std::exception_ptr>;

// The bounded queue of one worker; worker w builds batches w, w + W, ...
struct WorkerQueue {
  std::mutex mutex;
  std::condition_variable changed;
  std::deque<Item> items;
};

struct BatchStreamState {
  BatchStreamState(std::shared_ptr<const Dataset> dataset, CollateFn collate)
      : dataset(std::move(dataset)), collate(std::move(collate)) {}
  ~BatchStreamState() { stop(); }
  BatchStreamState(const BatchStreamState&) = delete;
  BatchStreamState& operator=(const BatchStreamState&) = delete;

  std::shared_ptr<const Dataset> dataset;
  CollateFn collate;
  std::vector<std::vector<int64_t>> batches;  // example indices of each batch
  size_t capacity = 1;
  std::vector<std::unique_ptr<WorkerQueue>> queues;
  std::vector<std::thread> workers;
  std::atomic<bool> stopping{false};
  size_t next = 0;  // the batch next() returns next
  bool failed = false;

  Batch build(size_t index) const {
    std::vector<Example> examples;
    examples.reserve(batches[index].size());
    for (auto i : batches[index]) examples.push_back(dataset->get(i));
    return collate(examples);
  }

  void work(size_t worker) {
    auto& queue = *queues[worker];
    for (size_t index = worker; index < batches.size(); index += queues.size()) {
      Item item;
      try {
        item = build(index);
      } catch (...) {
        item = std::current_exception();
      }
      bool error = std::holds_alternative<std::exception_ptr>(item);
      std::unique_lock<std::mutex> lock(queue.mutex);
      queue.changed.wait(lock, [&] { return stopping || queue.items.size() < capacity; });
      if (stopping) return;
      queue.items.push_back(std::move(item));
      queue.changed.notify_all();
      if (error) return;
    }
  }

  Item take(size_t index) {
    if (queues.empty()) {
      try {
        return build(index);
      } catch (...) {
        return std::current_exception();
      }
    }
    auto& queue = *queues[index % queues.size()];
    std::unique_lock<std::mutex> lock(queue.mutex);
    queue.changed.wait(lock, [&] { return !queue.items.empty(); });
    Item item = std::move(queue.items.front());
    queue.items.pop_front();
    queue.changed.notify_all();
    return item;
  }

  void stop() {
    stopping = true;
    for (auto& queue : queues) {
      { std::lock_guard<std::mutex> lock(queue->mutex); }
      queue->changed.notify_all();
    }
    for (auto& worker : workers) {
      if (worker.joinable()) worker.join();
    }
  }
};

}  // namespace detail

BatchStream::BatchStream(std::unique_ptr<detail::BatchStreamState> state)
    : state_(std::move(state)) {}

BatchStream::BatchStream(BatchStream&&) noexcept = default;

BatchStream& BatchStream::operator=(BatchStream&& other) noexcept {
  state_ = std::move(other.state_);  // the previous state's destructor stops its workers
  return *this;
}

BatchStream::~BatchStream() = default;

void BatchStream::stop() {
  if (state_) state_->stop();
}

int64_t BatchStream::remaining() const {
  if (!state_ || state_->failed) return 0;
  return static_cast<int64_t>(state_->batches.size() - state_->next);
}

std::optional<Batch> BatchStream::next() {
  if (remaining() == 0) return std::nullopt;
  auto item = state_->take(state_->next++);
  if (auto* batch = std::get_if<Batch>(&item)) return std::move(*batch);
  state_->failed = true;
  stop();
  std::rethrow_exception(std::get<std::exception_ptr>(item));
}

DataLoader::DataLoader(std::shared_ptr<const Dataset> dataset, DistributedSampler sampler,
                       CollateFn collate, const DataLoaderOptions& options)
    : dataset_(std::move(dataset)),
      sampler_(std::move(sampler)),
      collate_(std::move(collate)),
      options_(options) {
  TORCH_CHECK(dataset_, "DataLoader needs a dataset, got nullptr");
  TORCH_CHECK(collate_, "DataLoader needs a collate function, got an empty one");
  TORCH_CHECK(sampler_.dataset_size() == dataset_->size(), "The sampler covers ",
              sampler_.dataset_size(), " examples but the dataset has ", dataset_->size());
  TORCH_CHECK(options_.batch_size() >= 1, "batch_size must be at least 1, got ",
              options_.batch_size());
  TORCH_CHECK(options_.num_workers() >= 0, "num_workers must be >= 0, got ",
              options_.num_workers());
  TORCH_CHECK(options_.prefetch_factor() >= 1, "prefetch_factor must be at least 1, got ",
              options_.prefetch_factor());
}

int64_t DataLoader::size() const {
  auto samples = sampler_.size(), batch = options_.batch_size();
  return options_.drop_last() ? samples / batch : (samples + batch - 1) / batch;
}

BatchStream DataLoader::epoch(int64_t epoch, int64_t skip_first_batches) const {
  TORCH_CHECK(skip_first_batches >= 0 && skip_first_batches <= size(), "skip_first_batches ",
              skip_first_batches, " is outside [0, ", size(), "], the batches of an epoch");
  auto sampler = sampler_;
  sampler.set_epoch(epoch);
  auto indices = sampler.indices();
  auto state = std::make_unique<detail::BatchStreamState>(dataset_, collate_);
  auto batch = options_.batch_size();
  for (int64_t b = skip_first_batches; b < size(); ++b) {
    auto begin = indices.begin() + b * batch;
    auto end = indices.begin() + std::min<int64_t>((b + 1) * batch, indices.size());
    state->batches.emplace_back(begin, end);
  }
  state->capacity = static_cast<size_t>(options_.prefetch_factor());
  auto workers = std::min<int64_t>(options_.num_workers(), state->batches.size());
  for (int64_t w = 0; w < workers; ++w) {
    state->queues.push_back(std::make_unique<detail::WorkerQueue>());
  }
  for (int64_t w = 0; w < workers; ++w) {
    state->workers.emplace_back(&detail::BatchStreamState::work, state.get(), w);
  }
  return BatchStream(std::move(state));
}

}  // namespace remat::data
