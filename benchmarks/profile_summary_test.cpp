// benchmarks/profile_summary.h: remat-bench --profile's categories, busy time
// and per-step figures, on hand-made events (no profiler, no torch).

#include "profile_summary.h"

#include <gtest/gtest.h>

namespace {

using remat_bench::categorize;
using remat_bench::EventKind;
using remat_bench::ProfileEvent;

ProfileEvent kernel(std::string name, int64_t start, int64_t duration) {
  return {std::move(name), start, duration, EventKind::kKernel, 0};
}

ProfileEvent op(std::string name, int64_t start, int64_t duration, uint64_t thread = 1) {
  return {std::move(name), start, duration, EventKind::kCpuOp, thread};
}

const remat_bench::CategoryTime& category(const remat_bench::ProfileSummary& s,
                                          const std::string& name) {
  for (const auto& c : s.categories) {
    if (c.category == name) return c;
  }
  throw std::runtime_error("no category " + name);
}

// gamma_n for float64 (u = 2^-53): the relative error of n roundings.
constexpr double gamma64(int n) { return n * 0x1p-53 / (1 - n * 0x1p-53); }

// idle_percent: the two per-step times (2 roundings each), their quotient,
// 1 - it and the factor 100, against an expression of 3 roundings: at most
// 8 roundings of values of at most 100, in two orders.
constexpr double kIdlePercentTolerance = 2 * gamma64(8) * 100;

TEST(ProfileSummaryTest, KernelNamesFallIntoCategories) {
  // GEMMs: cuBLAS (nvjet, xmma, sm90_), CUTLASS, the split-K reduction.
  EXPECT_EQ(categorize("nvjet_tst_128x256_64x4_1x2_h_bz_coopA_NTN"), "gemm");
  EXPECT_EQ(categorize("nvjet_sm90_tst_192x128_64x5_1x2_h_bz_coopB_bias_NNT"), "gemm");
  EXPECT_EQ(categorize("void cutlass::Kernel2<cutlass_80_simt_sgemm_128x32_8x5_nn_align1>("
                       "cutlass_80_simt_sgemm_128x32_8x5_nn_align1::Params)"),
            "gemm");
  EXPECT_EQ(categorize("sm90_xmma_gemm_bf16bf16_bf16f32_f32_tn_n_tilesize128x128x64"), "gemm");
  EXPECT_EQ(categorize("void cutlass::Kernel2<cutlass_80_wmma_tensorop_bf16_s161616gemm>"), "gemm");
  EXPECT_EQ(categorize("ampere_bf16_s16816gemm_bf16_128x64_ldg8_f2f_stages_64x4_tn"), "gemm");
  EXPECT_EQ(categorize("void cublasLt::splitKreduce_kernel<32, 16, int, float>"), "gemm");
  // Attention, including names that also say cutlass or sm90_.
  EXPECT_EQ(categorize("void pytorch_flash::flash_fwd_kernel<Flash_fwd_kernel_traits<64>>"),
            "attention");
  EXPECT_EQ(categorize("fmha_cutlassF_bf16_aligned_64x64_rf_sm80"), "attention");
  EXPECT_EQ(categorize("cudnn_generated_fort_native_sdpa_sm90_flash_fprop_wgmma_f16_knob_7_"
                       "64x128x64_4x1x1_cga1x1x1_kernel0_0"),
            "attention");
  EXPECT_EQ(categorize("void cudnn::fusion::compute_dot_do_o_specialized<true, 64>(void const*)"),
            "attention");
  EXPECT_EQ(categorize("void attention_kernel_backward_batched<AttentionBackwardKernel>"),
            "attention");
  // The optimizer: fused AdamW, the multi-tensor kernels.
  EXPECT_EQ(categorize("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<"
                       "FusedAdamMathFunctor<float, 4>>"),
            "optimizer");
  EXPECT_EQ(categorize("void at::native::(anonymous namespace)::multi_tensor_apply_kernel<"
                       "at::native::(anonymous namespace)::TensorListMetadata<1>, "
                       "at::native::LpNormFunctor<float, (at::native::NormType)1>>"),
            "optimizer");
  EXPECT_EQ(categorize("void at::native::lpnorm_cleanup<float, (at::native::NormType)1>"),
            "optimizer");
  // The total norm of the clipped gradients is a plain reduction.
  EXPECT_EQ(categorize("void at::native::reduce_kernel<512, 1, at::native::ReduceOp<float, "
                       "at::native::NormTwoOps<float, float, float, true>>>"),
            "reduction");
  EXPECT_EQ(categorize("void at::native::(anonymous namespace)::vectorized_layer_norm_kernel"
                       "<c10::BFloat16, float>"),
            "norm");
  EXPECT_EQ(categorize("void at::native::(anonymous namespace)::GammaBetaBackwardCUDAKernel"),
            "norm");
  EXPECT_EQ(categorize("void at::native::cunn_SoftMaxForward<8, float, LogSoftMaxEpilogue>"),
            "loss");
  EXPECT_EQ(categorize("void at::native::nll_loss_forward_reduce_cuda_kernel_2d<float>"), "loss");
  EXPECT_EQ(categorize("void at::native::reduce_kernel<512, 1, ReduceOp<float, MeanOps>>"),
            "reduction");
  EXPECT_EQ(categorize("void at::native::vectorized_elementwise_kernel<4, CUDAFunctor_add>"),
            "elementwise");
  EXPECT_EQ(categorize("void at::native::unrolled_elementwise_kernel<direct_copy_kernel_cuda>"),
            "elementwise");
  EXPECT_EQ(categorize("void at::native::index_elementwise_kernel<128, 4>"), "elementwise");
  EXPECT_EQ(categorize("void at::native::CatArrayBatchedCopy<float, unsigned int, 3>"),
            "elementwise");
  EXPECT_EQ(categorize("void at::native::embedding_backward_feature_kernel<float>"), "other");
  // Copies and sets by kind, and by Kineto's names.
  EXPECT_EQ(categorize("Memcpy HtoD (Pageable -> Device)", EventKind::kMemcpy), "memcpy/memset");
  EXPECT_EQ(categorize("Memset (Device)", EventKind::kMemset), "memcpy/memset");
  EXPECT_EQ(categorize("Memcpy DtoD (Device -> Device)"), "memcpy/memset");
}

TEST(ProfileSummaryTest, CpuOperatorNamesFallIntoCategories) {
  EXPECT_EQ(categorize("aten::mm", EventKind::kCpuOp), "gemm");
  EXPECT_EQ(categorize("aten::addmm", EventKind::kCpuOp), "gemm");
  EXPECT_EQ(categorize("aten::linear", EventKind::kCpuOp), "gemm");
  EXPECT_EQ(categorize("aten::_fused_adamw_", EventKind::kCpuOp), "optimizer");
  EXPECT_EQ(categorize("aten::_foreach_norm", EventKind::kCpuOp), "optimizer");
  EXPECT_EQ(categorize("aten::native_layer_norm", EventKind::kCpuOp), "norm");
  EXPECT_EQ(categorize("aten::scaled_dot_product_attention", EventKind::kCpuOp), "attention");
  EXPECT_EQ(
      categorize("aten::_scaled_dot_product_flash_attention_for_cpu_backward", EventKind::kCpuOp),
      "attention");
  EXPECT_EQ(categorize("aten::_log_softmax", EventKind::kCpuOp), "loss");
  EXPECT_EQ(categorize("aten::nll_loss_forward", EventKind::kCpuOp), "loss");
  EXPECT_EQ(categorize("aten::logsumexp", EventKind::kCpuOp), "loss");
  EXPECT_EQ(categorize("aten::copy_", EventKind::kCpuOp), "elementwise");
  EXPECT_EQ(categorize("aten::mul", EventKind::kCpuOp), "other");
}

TEST(ProfileSummaryTest, CategoriesInRuleOrder) {
  const std::vector<std::string> expected = {"memcpy/memset", "attention",   "optimizer",
                                             "gemm",          "norm",        "loss",
                                             "reduction",     "elementwise", "other"};
  EXPECT_EQ(remat_bench::profile_categories(), expected);
}

TEST(ProfileSummaryTest, UnionCountsOverlapOnce) {
  using remat_bench::union_ns;
  EXPECT_EQ(union_ns({}), 0);
  EXPECT_EQ(union_ns({{0, 10}}), 10);
  EXPECT_EQ(union_ns({{0, 10}, {20, 5}}), 15);              // disjoint
  EXPECT_EQ(union_ns({{0, 10}, {5, 10}}), 15);              // overlapping
  EXPECT_EQ(union_ns({{20, 5}, {0, 100}, {50, 10}}), 100);  // nested, unsorted
  EXPECT_EQ(union_ns({{0, 10}, {10, 10}}), 20);             // touching
  EXPECT_EQ(union_ns({{0, 10}, {0, 10}}), 10);              // identical
  EXPECT_EQ(union_ns({{0, 10}, {5, 0}, {30, -3}}), 10);     // empty and negative
}

TEST(ProfileSummaryTest, PerStepFiguresOverTwoSteps) {
  // Two steps of 1 ms wall each: per step a 300 us GEMM overlapping a 100 us
  // elementwise kernel by 50 us on another stream, a 100 us attention kernel
  // and a 50 us copy.
  std::vector<ProfileEvent> events;
  for (int64_t step = 0; step < 2; ++step) {
    const int64_t t = step * 1'000'000;
    events.push_back(kernel("nvjet_tst_gemm", t, 300'000));
    events.push_back(kernel("vectorized_elementwise_kernel", t + 250'000, 100'000));
    events.push_back(kernel("flash_fwd_kernel", t + 400'000, 100'000));
    events.push_back(
        {"Memcpy HtoD (Pinned -> Device)", t + 600'000, 50'000, EventKind::kMemcpy, 0});
  }
  // CPU operators are ignored when there are device events.
  events.push_back(op("aten::mm", 0, 900'000));
  const auto s = remat_bench::summarize_profile(events, 2, 2'000'000);
  EXPECT_EQ(s.source, "device");
  EXPECT_EQ(s.steps, 2);
  EXPECT_DOUBLE_EQ(s.wall_ms_per_step, 1.0);
  EXPECT_DOUBLE_EQ(s.total_ms_per_step, 0.55);
  EXPECT_DOUBLE_EQ(s.busy_ms_per_step, 0.50);  // 350 + 100 + 50 us
  EXPECT_NEAR(s.idle_percent, 50.0, kIdlePercentTolerance);
  EXPECT_DOUBLE_EQ(s.launches_per_step, 4.0);
  EXPECT_DOUBLE_EQ(category(s, "gemm").ms_per_step, 0.3);
  EXPECT_DOUBLE_EQ(category(s, "gemm").count_per_step, 1.0);
  // 100 * 300000 / 550000 and 100 * 300 / 550: exact products, then one
  // rounding of the same quotient, so equal exactly.
  EXPECT_EQ(category(s, "gemm").percent, 100.0 * 300 / 550);
  EXPECT_DOUBLE_EQ(category(s, "attention").ms_per_step, 0.1);
  EXPECT_DOUBLE_EQ(category(s, "elementwise").ms_per_step, 0.1);
  EXPECT_DOUBLE_EQ(category(s, "memcpy/memset").ms_per_step, 0.05);
  EXPECT_DOUBLE_EQ(category(s, "optimizer").ms_per_step, 0.0);
  EXPECT_EQ(s.categories.size(), remat_bench::profile_categories().size());
  double percent = 0;
  for (const auto& c : s.categories) percent += c.percent;
  // Each percentage one rounding, then a sum of k of them: gamma_k of 100.
  EXPECT_NEAR(percent, 100.0, gamma64(static_cast<int>(s.categories.size())) * 100);
}

TEST(ProfileSummaryTest, TopEventsByTotalTimeTruncated) {
  const std::string long_name =
      "void at::native::vectorized_elementwise_kernel<" + std::string(200, 'x') + ">";
  std::vector<ProfileEvent> events = {
      kernel("short_gemm", 0, 10'000), kernel("short_gemm", 20'000, 10'000),
      kernel("flash_fwd", 40'000, 30'000), kernel(long_name, 80'000, 5'000),
      kernel("reduce_kernel", 90'000, 1'000)};
  remat_bench::SummaryOptions options;
  options.top = 3;
  options.name_chars = 40;
  const auto s = remat_bench::summarize_profile(events, 1, 100'000, options);
  ASSERT_EQ(s.top.size(), 3u);
  EXPECT_EQ(s.top[0].name, "flash_fwd");
  EXPECT_EQ(s.top[0].category, "attention");
  EXPECT_DOUBLE_EQ(s.top[0].ms_per_step, 0.03);
  EXPECT_EQ(s.top[1].name, "short_gemm");
  EXPECT_DOUBLE_EQ(s.top[1].count_per_step, 2.0);
  EXPECT_DOUBLE_EQ(s.top[1].ms_per_step, 0.02);
  EXPECT_DOUBLE_EQ(s.top[1].mean_us, 10.0);
  EXPECT_EQ(s.top[2].name.size(), 40u);
  EXPECT_EQ(s.top[2].name, long_name.substr(0, 37) + "...");
  EXPECT_EQ(s.top[2].category, "elementwise");
}

TEST(ProfileSummaryTest, TruncationKeepsUtf8Whole) {
  // "é" is two bytes; a cut inside it moves before it.
  const std::string name = std::string(36, 'a') + "\xC3\xA9" + std::string(10, 'b');
  remat_bench::SummaryOptions options;
  options.name_chars = 40;
  const auto s = remat_bench::summarize_profile({kernel(name, 0, 1)}, 1, 10, options);
  ASSERT_EQ(s.top.size(), 1u);
  EXPECT_EQ(s.top[0].name, std::string(36, 'a') + "...");
  EXPECT_NO_THROW(remat_bench::to_json(s).dump());
}

TEST(ProfileSummaryTest, CpuRunsCountTopLevelAtenOperators) {
  // Thread 1: aten::linear holds aten::t and aten::addmm; an autograd node
  // holds aten::mm (top level: the node is no aten:: operator); then the
  // fused AdamW. Thread 2 runs an aten::mm at the same time.
  std::vector<ProfileEvent> events = {
      op("aten::linear", 0, 100),
      op("aten::t", 0, 5),
      op("aten::addmm", 10, 80),
      op("aten::copy_", 20, 10),  // inside aten::addmm
      op("autograd::engine::evaluate_function: MmBackward0", 200, 120),
      op("MmBackward0", 205, 110),
      op("aten::mm", 210, 50),
      op("aten::mm", 270, 40),
      op("aten::_fused_adamw_", 400, 100),
      op("aten::mm", 50, 100, 2),
  };
  const auto top = remat_bench::top_level_aten_ops(events);
  std::vector<std::string> names;
  for (const auto& e : top) names.push_back(e.name);
  EXPECT_EQ(names, (std::vector<std::string>{"aten::linear", "aten::mm", "aten::mm", "aten::mm",
                                             "aten::_fused_adamw_"}));

  const auto s = remat_bench::summarize_profile(events, 2, 1000);
  EXPECT_EQ(s.source, "cpu_ops");
  EXPECT_DOUBLE_EQ(s.launches_per_step, 2.5);
  EXPECT_DOUBLE_EQ(category(s, "gemm").count_per_step, 2.0);
  // linear 100 + mm 50 + 40 + 100 (thread 2), per step.
  EXPECT_DOUBLE_EQ(category(s, "gemm").ms_per_step, 290e-6 / 2);
  EXPECT_DOUBLE_EQ(category(s, "optimizer").ms_per_step, 100e-6 / 2);
  // Busy: [0, 150) across both threads, [210, 260), [270, 310), [400, 500).
  EXPECT_DOUBLE_EQ(s.busy_ms_per_step, 340e-6 / 2);
  EXPECT_NEAR(s.idle_percent, 100.0 * (1 - 340.0 / 1000), kIdlePercentTolerance);
}

TEST(ProfileSummaryTest, EmptyProfileIsZeroNotNan) {
  const auto s = remat_bench::summarize_profile({}, 3, 0);
  EXPECT_EQ(s.source, "cpu_ops");
  EXPECT_EQ(s.total_ms_per_step, 0.0);
  EXPECT_EQ(s.idle_percent, 0.0);
  for (const auto& c : s.categories) EXPECT_EQ(c.percent, 0.0);
  EXPECT_TRUE(s.top.empty());
  const auto j = remat_bench::to_json(s);
  EXPECT_EQ(j["categories"].size(), remat_bench::profile_categories().size());
  EXPECT_FALSE(remat_bench::format_profile(s).empty());
}

TEST(ProfileSummaryTest, JsonFields) {
  const auto s = remat_bench::summarize_profile({kernel("nvjet_x", 0, 2'000'000)}, 2, 4'000'000);
  const auto j = remat_bench::to_json(s);
  for (const char* key :
       {"source", "steps", "wall_ms_per_step", "total_ms_per_step", "busy_ms_per_step",
        "idle_percent", "launches_per_step", "categories", "top"}) {
    EXPECT_TRUE(j.contains(key)) << key;
  }
  EXPECT_EQ(j["categories"][3]["category"], "gemm");
  EXPECT_DOUBLE_EQ(j["categories"][3]["ms_per_step"].get<double>(), 1.0);
  EXPECT_DOUBLE_EQ(j["categories"][3]["percent"].get<double>(), 100.0);
  EXPECT_EQ(j["top"][0]["name"], "nvjet_x");
  EXPECT_DOUBLE_EQ(j["top"][0]["mean_us"].get<double>(), 2000.0);
  EXPECT_DOUBLE_EQ(j["idle_percent"].get<double>(), 50.0);
  const auto table = remat_bench::format_profile(s);
  EXPECT_NE(table.find("GPU busy 1.00 ms/step (idle 50.0%)"), std::string::npos) << table;
  EXPECT_NE(table.find("nvjet_x"), std::string::npos) << table;
}

}  // namespace
