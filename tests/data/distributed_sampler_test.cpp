// DistributedSampler against torch.utils.data.DistributedSampler (the
// distributed_sampler oracle), and its errors.

#include "remat/data/distributed_sampler.h"

#include <gtest/gtest.h>

#include <algorithm>

#include "oracle.h"
#include "support.h"

using remat::data::DistributedSampler;
using remat::data::DistributedSamplerOptions;

TEST(DistributedSamplerTest, SameIndicesAsTorch) {
  auto cases =
      remat::test::read_json(remat::test::oracle_dir("distributed_sampler") + "/orders.json");
  ASSERT_GT(cases.size(), 600u);
  for (const auto& c : cases) {
    DistributedSampler sampler(c["n"].get<int64_t>(),
                               DistributedSamplerOptions()
                                   .num_replicas(c["num_replicas"].get<int64_t>())
                                   .rank(c["rank"].get<int64_t>())
                                   .shuffle(c["shuffle"].get<bool>())
                                   .seed(c["seed"].get<int64_t>())
                                   .drop_last(c["drop_last"].get<bool>()));
    sampler.set_epoch(c["epoch"].get<int64_t>());
    ASSERT_EQ(sampler.indices(), c["indices"].get<std::vector<int64_t>>())
        << c.dump().substr(0, 160);
    ASSERT_EQ(sampler.size(), c["num_samples"].get<int64_t>());
    ASSERT_EQ(sampler.total_size(), c["total_size"].get<int64_t>());
  }
}

TEST(DistributedSamplerTest, EpochChangesTheOrderAndDoesNotDrawFromTheGlobalGenerator) {
  DistributedSampler sampler(20);
  torch::manual_seed(1);
  auto before = torch::rand({1});
  torch::manual_seed(1);
  auto first = sampler.indices();
  EXPECT_TRUE(torch::equal(torch::rand({1}), before));
  sampler.set_epoch(1);
  EXPECT_EQ(sampler.epoch(), 1);
  EXPECT_NE(sampler.indices(), first);
  sampler.set_epoch(0);
  EXPECT_EQ(sampler.indices(), first);
}

TEST(DistributedSamplerTest, ReplicasCoverTheDataset) {
  std::vector<int64_t> seen;
  for (int64_t rank = 0; rank < 3; ++rank) {
    DistributedSampler sampler(10, DistributedSamplerOptions().num_replicas(3).rank(rank));
    auto indices = sampler.indices();
    seen.insert(seen.end(), indices.begin(), indices.end());
  }
  std::sort(seen.begin(), seen.end());
  seen.erase(std::unique(seen.begin(), seen.end()), seen.end());
  EXPECT_EQ(seen.size(), 10u);
}

TEST(DistributedSamplerTest, Errors) {
  ASSERT_THROWS_WITH(DistributedSampler(10, DistributedSamplerOptions().num_replicas(2).rank(2)),
                     "Invalid rank 2, rank should be in the interval [0, 1]");
  ASSERT_THROWS_WITH(DistributedSampler(10, DistributedSamplerOptions().rank(-1)),
                     "Invalid rank -1, rank should be in the interval [0, 0]");
  ASSERT_THROWS_WITH(DistributedSampler(10, DistributedSamplerOptions().num_replicas(0)),
                     "num_replicas must be at least 1, got 0");
  ASSERT_THROWS_WITH(DistributedSampler(-1), "dataset_size must be >= 0, got -1");
}
