// Step time and peak memory of a GPT-style block stack (forward + backward),
// plain and checkpointed, on CPU and, when present, CUDA.
//
//   checkpoint_bench --benchmark_format=json
//
// Policies: 0 = no checkpointing, 1 = every block, 2 = every second block.
// CUDA shapes follow GPT-2 small (12 x 768, 12 heads) at 8 x 512 tokens; the
// CPU shapes are small so the benchmark also runs on a laptop.

#include <benchmark/benchmark.h>
#include <remat/remat.h>

#include "test_models.h"

namespace {

struct Shape {
  int64_t layers, dim, heads, batch, seq;
};

const Shape kCudaShape{12, 768, 12, 8, 512};
const Shape kCpuShape{4, 128, 4, 4, 64};

void BM_BlockStack(benchmark::State& state) {
  const bool cuda = state.range(0) == 1;
  const int64_t policy = state.range(1);
  if (cuda && !torch::cuda::is_available()) {
    state.SkipWithError("no CUDA device");
    return;
  }
  const auto shape = cuda ? kCudaShape : kCpuShape;
  const torch::Device device = cuda ? torch::kCUDA : torch::kCPU;
  torch::manual_seed(0);
  remat::test::GptStack model(shape.layers, shape.dim, shape.heads, /*dropout=*/0.0);
  model->to(device);
  if (policy > 0) {
    remat::nn::gradient_checkpointing_enable(
        *model, remat::nn::GradientCheckpointingOptions().every_n_blocks(policy));
  }
  auto x = torch::randn({shape.batch, shape.seq, shape.dim}, device);
  auto step = [&] {
    model->forward(x).square().mean().backward();
    if (cuda) torch::cuda::synchronize();
  };
  step();  // warm-up: allocator, cuBLAS handles
  if (cuda) remat::reset_peak_memory_stats(device);
  for (auto _ : state) step();
  state.SetItemsProcessed(state.iterations() * shape.batch * shape.seq);
  if (cuda) {
    state.counters["peak_MiB"] =
        static_cast<double>(remat::max_memory_allocated(device)) / (1 << 20);
  }
  state.SetLabel(std::string(cuda ? "cuda" : "cpu") + (policy == 0   ? " none"
                                                       : policy == 1 ? " every block"
                                                                     : " every 2nd block"));
}

}  // namespace

BENCHMARK(BM_BlockStack)
    ->ArgNames({"cuda", "policy"})
    ->ArgsProduct({{0, 1}, {0, 1, 2}})
    ->Unit(benchmark::kMillisecond)
    ->UseRealTime()
    ->MinTime(1.0);

BENCHMARK_MAIN();
