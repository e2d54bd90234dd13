#include "remat/data/distributed_sampler.h"

#include <ATen/CPUGeneratorImpl.h>

#include <numeric>

namespace remat::data {

DistributedSampler::DistributedSampler(int64_t dataset_size,
                                       const DistributedSamplerOptions& options)
    : dataset_size_(dataset_size), options_(options) {
  auto replicas = options_.num_replicas();
  TORCH_CHECK(dataset_size >= 0, "dataset_size must be >= 0, got ", dataset_size);
  TORCH_CHECK(replicas >= 1, "num_replicas must be at least 1, got ", replicas);
  TORCH_CHECK(options_.rank() >= 0 && options_.rank() < replicas, "Invalid rank ", options_.rank(),
              ", rank should be in the interval [0, ", replicas - 1, "]");
  // torch: ceil((n - r) / r) with drop_last and a remainder, else ceil(n / r).
  num_samples_ =
      options_.drop_last() ? dataset_size / replicas : (dataset_size + replicas - 1) / replicas;
}

std::vector<int64_t> DistributedSampler::indices() const {
  std::vector<int64_t> order(dataset_size_);
  if (options_.shuffle()) {
    auto generator = at::detail::createCPUGenerator();
    {
      std::lock_guard<std::mutex> lock(generator.mutex());
      generator.set_current_seed(static_cast<uint64_t>(options_.seed() + epoch_));
    }
    auto permutation = torch::randperm(dataset_size_, generator, torch::kLong);
    std::copy_n(permutation.data_ptr<int64_t>(), dataset_size_, order.begin());
  } else {
    std::iota(order.begin(), order.end(), 0);
  }
  // Padding repeats the order from its start; rank r takes every
  // num_replicas-th index from position r.
  std::vector<int64_t> result;
  result.reserve(num_samples_);
  for (int64_t i = options_.rank(); i < total_size(); i += options_.num_replicas()) {
    result.push_back(order[i % dataset_size_]);
  }
  return result;
}

}  // namespace remat::data
