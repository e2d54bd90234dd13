// DataLoader: batches in the sampler's order whatever the number of worker
// threads, skipping for resume, errors from workers, shutdown mid-epoch.

#include "remat/data/data_loader.h"

#include <gtest/gtest.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <thread>

#include "support.h"

using remat::data::Batch;
using remat::data::BatchStream;
using remat::data::DataCollatorForCausalLM;
using remat::data::DataLoader;
using remat::data::DataLoaderOptions;
using remat::data::DistributedSampler;
using remat::data::DistributedSamplerOptions;
using remat::data::Example;

namespace {

// Example i: tokens i+1, ..., of length 1 + i % 4; optionally throws at one
// index, sleeps, and records which threads called get().
struct Numbers : remat::data::Dataset {
  explicit Numbers(int64_t n) : n(n) {}
  int64_t size() const override { return n; }
  Example get(int64_t index) const override {
    calls++;
    {
      std::lock_guard<std::mutex> lock(mutex);
      threads.insert(std::this_thread::get_id());
    }
    if (delay.count() > 0) std::this_thread::sleep_for(delay);
    TORCH_CHECK(index != throw_at, "bad example ", index);
    std::vector<int64_t> ids;
    for (int64_t j = 0; j <= index % 4; ++j) ids.push_back(index + 1 + j);
    return {ids, ids};
  }

  int64_t n;
  int64_t throw_at = -1;
  std::chrono::milliseconds delay{0};
  mutable std::atomic<int64_t> calls{0};
  mutable std::mutex mutex;
  mutable std::set<std::thread::id> threads;
};

DataLoader loader(std::shared_ptr<Numbers> dataset, const DataLoaderOptions& options,
                  int64_t seed = 3) {
  return DataLoader(dataset,
                    DistributedSampler(dataset->size(), DistributedSamplerOptions().seed(seed)),
                    DataCollatorForCausalLM(0), options);
}

// What an epoch must give: the sampler's indices in batches, collated.
std::vector<Batch> expected_batches(const Numbers& dataset, int64_t epoch, int64_t batch_size,
                                    bool drop_last, int64_t seed = 3) {
  DistributedSampler sampler(dataset.size(), DistributedSamplerOptions().seed(seed));
  sampler.set_epoch(epoch);
  auto indices = sampler.indices();
  std::vector<Batch> result;
  for (size_t start = 0; start < indices.size(); start += batch_size) {
    size_t end = std::min(indices.size(), start + batch_size);
    if (drop_last && end - start < static_cast<size_t>(batch_size)) break;
    std::vector<Example> examples;
    for (size_t i = start; i < end; ++i) examples.push_back(dataset.get(indices[i]));
    result.push_back(DataCollatorForCausalLM(0)(examples));
  }
  return result;
}

std::vector<Batch> drain(BatchStream stream) {
  std::vector<Batch> result;
  for (const auto& batch : stream) result.push_back(batch);
  return result;
}

::testing::AssertionResult same_batches(const std::vector<Batch>& a, const std::vector<Batch>& b) {
  if (a.size() != b.size()) return ::testing::AssertionFailure() << a.size() << " vs " << b.size();
  for (size_t i = 0; i < a.size(); ++i) {
    for (auto [x, y] : {std::pair{a[i].input_ids, b[i].input_ids},
                        std::pair{a[i].attention_mask, b[i].attention_mask},
                        std::pair{a[i].labels, b[i].labels}}) {
      auto equal = remat::test::bitwise_equal(x, y);
      if (!equal) return equal << " in batch " << i;
    }
  }
  return ::testing::AssertionSuccess();
}

}  // namespace

TEST(DataLoaderTest, BatchesFollowTheSamplerWithAnyNumberOfWorkers) {
  auto dataset = std::make_shared<Numbers>(23);
  for (bool drop_last : {false, true}) {
    for (int64_t workers : {0, 1, 3}) {
      for (int64_t prefetch : {1, 2}) {
        auto data = loader(dataset, DataLoaderOptions()
                                        .batch_size(4)
                                        .drop_last(drop_last)
                                        .num_workers(workers)
                                        .prefetch_factor(prefetch));
        EXPECT_EQ(data.size(), drop_last ? 5 : 6);
        for (int64_t epoch : {0, 1}) {
          EXPECT_TRUE(same_batches(drain(data.epoch(epoch)),
                                   expected_batches(*dataset, epoch, 4, drop_last)))
              << "workers " << workers << " prefetch " << prefetch << " epoch " << epoch;
        }
      }
    }
  }
}

TEST(DataLoaderTest, SkipFirstBatchesResumesExactly) {
  auto dataset = std::make_shared<Numbers>(30);
  auto data = loader(dataset, DataLoaderOptions().batch_size(4));
  auto full = drain(data.epoch(2));
  ASSERT_EQ(full.size(), 8u);
  for (int64_t skip : {1, 5, 8}) {
    auto rest = drain(data.epoch(2, skip));
    EXPECT_TRUE(same_batches(rest, std::vector<Batch>(full.begin() + skip, full.end())))
        << "skip " << skip;
  }
  dataset->calls = 0;
  auto stream = data.epoch(2, 7);
  EXPECT_EQ(stream.remaining(), 1);
  ASSERT_TRUE(stream.next().has_value());
  EXPECT_EQ(dataset->calls, 2);  // only the last batch (examples 28 and 29 of the order) is read
  ASSERT_THROWS_WITH(data.epoch(0, 9), "skip_first_batches 9 is outside [0, 8]");
  ASSERT_THROWS_WITH(data.epoch(0, -1), "skip_first_batches -1 is outside [0, 8]");
}

TEST(DataLoaderTest, WorkerErrorIsRethrownInPlaceOfItsBatch) {
  for (int64_t workers : {0, 1, 3}) {
    auto dataset = std::make_shared<Numbers>(20);
    auto data = loader(dataset, DataLoaderOptions().batch_size(2).num_workers(workers));
    auto order = DistributedSampler(20, DistributedSamplerOptions().seed(3)).indices();
    dataset->throw_at = order[9];  // in batch 4
    auto stream = data.epoch(0);
    for (int batch = 0; batch < 4; ++batch) ASSERT_TRUE(stream.next().has_value()) << batch;
    ASSERT_THROWS_WITH(stream.next(), "bad example " + std::to_string(order[9]));
    EXPECT_FALSE(stream.next().has_value()) << "workers " << workers;
    EXPECT_EQ(stream.remaining(), 0);
  }
}

TEST(DataLoaderTest, CollatorErrorReachesTheConsumer) {
  struct Ragged : remat::data::Dataset {
    int64_t size() const override { return 4; }
    Example get(int64_t) const override { return {{1, 2}, {1}}; }
  };
  DataLoader data(std::make_shared<Ragged>(), DistributedSampler(4), DataCollatorForCausalLM(0),
                  DataLoaderOptions().batch_size(2));
  auto stream = data.epoch(0);
  ASSERT_THROWS_WITH(stream.next(), "Example 0 has 2 input_ids but 1 labels");
}

TEST(DataLoaderTest, DestroyingMidEpochStopsTheWorkers) {
  auto dataset = std::make_shared<Numbers>(200);
  auto data = loader(dataset, DataLoaderOptions().batch_size(2).num_workers(3).prefetch_factor(1));
  {
    auto stream = data.epoch(0);
    ASSERT_TRUE(stream.next().has_value());
    std::this_thread::sleep_for(std::chrono::milliseconds(50));  // let the queues fill
  }
  dataset->delay = std::chrono::milliseconds(20);
  { auto stream = data.epoch(1); }  // workers busy inside get()
  auto calls = dataset->calls.load();
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  EXPECT_EQ(dataset->calls, calls) << "a worker outlived its stream";
}

TEST(DataLoaderTest, PrefetchRunsOnWorkerThreadsAndIsBounded) {
  auto dataset = std::make_shared<Numbers>(400);
  const int64_t workers = 2, prefetch = 2, batch = 4;
  auto data =
      loader(dataset,
             DataLoaderOptions().batch_size(batch).num_workers(workers).prefetch_factor(prefetch));
  auto stream = data.epoch(0);
  auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(10);
  while (dataset->calls < workers * prefetch * batch &&
         std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  std::this_thread::sleep_for(std::chrono::milliseconds(50));
  // Each worker holds `prefetch` batches and may have built one more it cannot queue.
  EXPECT_LE(dataset->calls, workers * (prefetch + 1) * batch);
  EXPECT_GE(dataset->calls, workers * prefetch * batch);
  EXPECT_EQ(dataset->threads.count(std::this_thread::get_id()), 0u);
  EXPECT_EQ(dataset->threads.size(), static_cast<size_t>(workers));
}

TEST(DataLoaderTest, MoveAssignmentStopsThePreviousStream) {
  auto dataset = std::make_shared<Numbers>(12);
  auto data = loader(dataset, DataLoaderOptions().batch_size(3));
  auto stream = data.epoch(0);
  ASSERT_TRUE(stream.next().has_value());
  stream = data.epoch(1);
  EXPECT_EQ(stream.remaining(), 4);
  EXPECT_TRUE(same_batches(drain(std::move(stream)), expected_batches(*dataset, 1, 3, false)));
}

TEST(DataLoaderTest, Errors) {
  auto dataset = std::make_shared<Numbers>(10);
  DistributedSampler sampler(10);
  DataCollatorForCausalLM collate(0);
  ASSERT_THROWS_WITH(DataLoader(nullptr, sampler, collate), "DataLoader needs a dataset");
  ASSERT_THROWS_WITH(DataLoader(dataset, sampler, remat::data::CollateFn()),
                     "DataLoader needs a collate function, got an empty one");
  ASSERT_THROWS_WITH(DataLoader(dataset, DistributedSampler(11), collate),
                     "The sampler covers 11 examples but the dataset has 10");
  ASSERT_THROWS_WITH(DataLoader(dataset, sampler, collate, DataLoaderOptions().batch_size(0)),
                     "batch_size must be at least 1, got 0");
  ASSERT_THROWS_WITH(DataLoader(dataset, sampler, collate, DataLoaderOptions().num_workers(-1)),
                     "num_workers must be >= 0, got -1");
  ASSERT_THROWS_WITH(DataLoader(dataset, sampler, collate, DataLoaderOptions().prefetch_factor(0)),
                     "prefetch_factor must be at least 1, got 0");
}

TEST(DataLoaderTest, AnyCollateFunction) {
  auto dataset = std::make_shared<Numbers>(5);
  auto count = [](const std::vector<Example>& examples) {
    auto n = static_cast<int64_t>(examples.size());
    return Batch{torch::full({1}, n), torch::ones({1}), torch::zeros({1})};
  };
  DataLoader data(dataset, DistributedSampler(5), count, DataLoaderOptions().batch_size(2));
  std::vector<int64_t> sizes;
  for (const auto& batch : data.epoch(0)) sizes.push_back(batch.input_ids.item<int64_t>());
  EXPECT_EQ(sizes, (std::vector<int64_t>{2, 2, 1}));
}

TEST(DataLoaderTest, DefaultOptions) {
  DataLoaderOptions options;
  EXPECT_EQ(options.batch_size(), 8);
  EXPECT_FALSE(options.drop_last());
  EXPECT_EQ(options.num_workers(), 1);
  EXPECT_EQ(options.prefetch_factor(), 2);
}
