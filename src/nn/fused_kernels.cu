// The fused kernels of remat/nn/fused.h: SwiGLU, rotary embeddings and
// RMSNorm, forward and backward (and the chunked loss's cross-entropy rows).
// Memory-bound: every kernel reads its inputs from memory once (RMSNorm reads
// a row a second time, from cache), computes in float32 and writes each
// output once, rounded once. Loads and stores are 16 bytes wide (8 x
// bf16/fp16, 4 x fp32) when every pointer and row is aligned for it, else one
// element at a time.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdint>

#include "fused_kernels.h"

namespace remat::nn::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int64_t kMaxBlocks = int64_t{1} << 20;

// V elements of T loaded or stored as one aligned unit.
template <typename T, int V>
struct alignas(sizeof(T) * V) Vec {
  T v[V];
};

template <typename T, int V>
__device__ __forceinline__ Vec<T, V> load(const T* p) {
  return *reinterpret_cast<const Vec<T, V>*>(p);
}

template <typename T, int V>
__device__ __forceinline__ void store(T* p, const Vec<T, V>& x) {
  *reinterpret_cast<Vec<T, V>*>(p) = x;
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T>
__device__ __forceinline__ T from_float(float x);
template <>
__device__ __forceinline__ float from_float<float>(float x) {
  return x;
}
template <>
__device__ __forceinline__ __half from_float<__half>(float x) {
  return __float2half_rn(x);
}
template <>
__device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

__device__ __forceinline__ int64_t thread_index() {
  return static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;
}
__device__ __forceinline__ int64_t thread_count() {
  return static_cast<int64_t>(gridDim.x) * blockDim.x;
}

// silu(g) as ATen computes it: g / (1 + exp(-g)).
__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// ---- SwiGLU ----------------------------------------------------------------

template <typename T>
__device__ __forceinline__ T swiglu_one(T g, T u) {
  return from_float<T>(silu(to_float(g)) * to_float(u));
}

// n / V vectors of V elements, then the n % V tail one element at a time.
template <typename T, int V>
__global__ void swiglu_forward_kernel(const T* __restrict__ gate, const T* __restrict__ up,
                                      T* __restrict__ out, int64_t n) {
  const int64_t vectors = n / V;
  for (int64_t i = thread_index(); i < vectors; i += thread_count()) {
    const auto g = load<T, V>(gate + i * V);
    const auto u = load<T, V>(up + i * V);
    Vec<T, V> o;
#pragma unroll
    for (int k = 0; k < V; ++k) o.v[k] = swiglu_one(g.v[k], u.v[k]);
    store(out + i * V, o);
  }
  for (int64_t i = vectors * V + thread_index(); i < n; i += thread_count()) {
    out[i] = swiglu_one(gate[i], up[i]);
  }
}

template <typename T>
__device__ __forceinline__ void swiglu_grad_one(T d, T g, T u, T& dg, T& du) {
  const float df = to_float(d), gf = to_float(g), uf = to_float(u);
  const float s = 1.0f / (1.0f + expf(-gf));
  dg = from_float<T>(df * uf * s * (1.0f + gf * (1.0f - s)));
  du = from_float<T>(df * silu(gf));
}

template <typename T, int V>
__global__ void swiglu_backward_kernel(const T* __restrict__ grad_out, const T* __restrict__ gate,
                                       const T* __restrict__ up, T* __restrict__ grad_gate,
                                       T* __restrict__ grad_up, int64_t n) {
  const int64_t vectors = n / V;
  for (int64_t i = thread_index(); i < vectors; i += thread_count()) {
    const auto d = load<T, V>(grad_out + i * V);
    const auto g = load<T, V>(gate + i * V);
    const auto u = load<T, V>(up + i * V);
    Vec<T, V> dg, du;
#pragma unroll
    for (int k = 0; k < V; ++k) swiglu_grad_one(d.v[k], g.v[k], u.v[k], dg.v[k], du.v[k]);
    store(grad_gate + i * V, dg);
    store(grad_up + i * V, du);
  }
  for (int64_t i = vectors * V + thread_index(); i < n; i += thread_count()) {
    swiglu_grad_one(grad_out[i], gate[i], up[i], grad_gate[i], grad_up[i]);
  }
}

// ---- Rotary ----------------------------------------------------------------

// One item is V consecutive positions j of the first half of one row (a
// token's head) and the same V positions of the second half. The products
// and the sum are rounded separately (no fused multiply-add), as ATen's
// x * cos + rotate_half(x) * sin rounds them in float32.
//   forward:  o1 = a1 c1 - a2 s1,  o2 = a2 c2 + a1 s2
//   backward: o1 = a1 c1 + a2 s2,  o2 = a2 c2 - a1 s1
template <typename TA, typename TC, typename TO, int V, bool Backward>
__global__ void rotary_kernel(const TA* __restrict__ a, const TC* __restrict__ cos,
                              const TC* __restrict__ sin, TO* __restrict__ out, RotaryShape s) {
  const int64_t half = s.head_dim / 2;
  const int64_t per_row = half / V;
  const int64_t items = s.batch * s.tokens * s.heads * per_row;
  for (int64_t i = thread_index(); i < items; i += thread_count()) {
    const int64_t row = i / per_row;  // (b * tokens + t) * heads + h
    const int64_t j = (i - row * per_row) * V;
    const int64_t bt = row / s.heads, h = row - bt * s.heads;
    const int64_t b = bt / s.tokens, t = bt - b * s.tokens;
    const int64_t cs = b * s.cs_batch_stride + t * s.cs_token_stride;
    const TA* ar = a + b * s.a_batch_stride + t * s.a_token_stride + h * s.a_head_stride;
    const auto a1 = load<TA, V>(ar + j);
    const auto a2 = load<TA, V>(ar + half + j);
    const auto c1 = load<TC, V>(cos + cs + j);
    const auto c2 = load<TC, V>(cos + cs + half + j);
    const auto s1 = load<TC, V>(sin + cs + j);
    const auto s2 = load<TC, V>(sin + cs + half + j);
    Vec<TO, V> o1, o2;
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const float x1 = to_float(a1.v[k]), x2 = to_float(a2.v[k]);
      const float cos1 = to_float(c1.v[k]), cos2 = to_float(c2.v[k]);
      const float sin1 = to_float(s1.v[k]), sin2 = to_float(s2.v[k]);
      float r1, r2;
      if constexpr (Backward) {
        r1 = __fadd_rn(__fmul_rn(x1, cos1), __fmul_rn(x2, sin2));
        r2 = __fsub_rn(__fmul_rn(x2, cos2), __fmul_rn(x1, sin1));
      } else {
        r1 = __fsub_rn(__fmul_rn(x1, cos1), __fmul_rn(x2, sin1));
        r2 = __fadd_rn(__fmul_rn(x2, cos2), __fmul_rn(x1, sin2));
      }
      o1.v[k] = from_float<TO>(r1);
      o2.v[k] = from_float<TO>(r2);
    }
    TO* orow = out + row * s.head_dim;
    store(orow + j, o1);
    store(orow + half + j, o2);
  }
}

// ---- Launching -------------------------------------------------------------

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

int blocks_for(int64_t work) {
  int64_t blocks = (work + kThreads - 1) / kThreads;
  if (blocks > kMaxBlocks) blocks = kMaxBlocks;
  return static_cast<int>(blocks < 1 ? 1 : blocks);
}

const char* launch_status() {
  const cudaError_t err = cudaGetLastError();
  return err == cudaSuccess ? nullptr : cudaGetErrorString(err);
}

// Calls f(T{}) with the C++ type of `dtype`.
template <typename F>
const char* dispatch(DType dtype, F&& f) {
  switch (dtype) {
    case DType::kFloat32:
      return f(float{});
    case DType::kFloat16:
      return f(__half{});
    case DType::kBFloat16:
      return f(__nv_bfloat16{});
  }
  return "remat fused kernels: unknown dtype";
}

template <typename T>
const char* swiglu_forward_typed(const T* gate, const T* up, T* out, int64_t n,
                                 cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (aligned(gate, 16) && aligned(up, 16) && aligned(out, 16)) {
    swiglu_forward_kernel<T, V>
        <<<blocks_for(n / V + n % V), kThreads, 0, stream>>>(gate, up, out, n);
  } else {
    swiglu_forward_kernel<T, 1><<<blocks_for(n), kThreads, 0, stream>>>(gate, up, out, n);
  }
  return launch_status();
}

template <typename T>
const char* swiglu_backward_typed(const T* grad_out, const T* gate, const T* up, T* grad_gate,
                                  T* grad_up, int64_t n, cudaStream_t stream) {
  constexpr int V = 16 / sizeof(T);
  if (aligned(grad_out, 16) && aligned(gate, 16) && aligned(up, 16) && aligned(grad_gate, 16) &&
      aligned(grad_up, 16)) {
    swiglu_backward_kernel<T, V><<<blocks_for(n / V + n % V), kThreads, 0, stream>>>(
        grad_out, gate, up, grad_gate, grad_up, n);
  } else {
    swiglu_backward_kernel<T, 1>
        <<<blocks_for(n), kThreads, 0, stream>>>(grad_out, gate, up, grad_gate, grad_up, n);
  }
  return launch_status();
}

template <typename TA, typename TC, typename TO, bool Backward>
const char* rotary_typed(const void* a, const void* cos, const void* sin, void* out,
                         const RotaryShape& s, cudaStream_t stream) {
  constexpr size_t narrowest = std::min({sizeof(TA), sizeof(TC), sizeof(TO)});
  constexpr int V = static_cast<int>(16 / narrowest);
  const int64_t half = s.head_dim / 2;
  const int64_t rows = s.batch * s.tokens * s.heads;
  const bool vectorized = half % V == 0 && s.a_batch_stride % V == 0 && s.a_token_stride % V == 0 &&
                          s.a_head_stride % V == 0 && s.cs_batch_stride % V == 0 &&
                          s.cs_token_stride % V == 0 && aligned(a, sizeof(TA) * V) &&
                          aligned(cos, sizeof(TC) * V) && aligned(sin, sizeof(TC) * V) &&
                          aligned(out, sizeof(TO) * V);
  const auto* ta = static_cast<const TA*>(a);
  const auto* tc = static_cast<const TC*>(cos);
  const auto* ts = static_cast<const TC*>(sin);
  auto* to = static_cast<TO*>(out);
  if (vectorized) {
    rotary_kernel<TA, TC, TO, V, Backward>
        <<<blocks_for(rows * (half / V)), kThreads, 0, stream>>>(ta, tc, ts, to, s);
  } else {
    rotary_kernel<TA, TC, TO, 1, Backward>
        <<<blocks_for(rows * half), kThreads, 0, stream>>>(ta, tc, ts, to, s);
  }
  return launch_status();
}

// (TA, TC, TO) = (T, T, T), (T, float, T), or (T, float, float) forward /
// (float, float, T) backward: the input a is the forward's x or the
// backward's grad_out.
template <bool Backward>
const char* rotary(const void* a, DType a_dtype, const void* cos, const void* sin, DType cs_dtype,
                   void* out, DType out_dtype, const RotaryShape& s, void* stream) {
  if (s.head_dim <= 0 || s.head_dim % 2 != 0) return "rotary: head_dim must be even and positive";
  if (s.batch * s.tokens * s.heads == 0) return nullptr;
  auto st = static_cast<cudaStream_t>(stream);
  const DType t = Backward ? out_dtype : a_dtype;  // the dtype of x
  const DType wide = Backward ? a_dtype : out_dtype;
  if (a_dtype == cs_dtype && cs_dtype == out_dtype) {
    return dispatch(t, [&](auto tag) {
      using T = decltype(tag);
      return rotary_typed<T, T, T, Backward>(a, cos, sin, out, s, st);
    });
  }
  if (cs_dtype == DType::kFloat32 && a_dtype == out_dtype) {
    // x (or its gradient) and the output in x's dtype, cos and sin float32.
    return dispatch(t, [&](auto tag) {
      using T = decltype(tag);
      return rotary_typed<T, float, T, Backward>(a, cos, sin, out, s, st);
    });
  }
  if (cs_dtype == DType::kFloat32 && wide == DType::kFloat32) {
    return dispatch(t, [&](auto tag) {
      using T = decltype(tag);
      if constexpr (Backward) {
        return rotary_typed<float, float, T, true>(a, cos, sin, out, s, st);
      } else {
        return rotary_typed<T, float, float, false>(a, cos, sin, out, s, st);
      }
    });
  }
  return "rotary: unsupported dtype combination";
}

}  // namespace

const char* swiglu_forward(const void* gate, const void* up, void* out, int64_t n, DType dtype,
                           void* stream) {
  if (n <= 0) return nullptr;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return swiglu_forward_typed(static_cast<const T*>(gate), static_cast<const T*>(up),
                                static_cast<T*>(out), n, static_cast<cudaStream_t>(stream));
  });
}

const char* swiglu_backward(const void* grad_out, const void* gate, const void* up, void* grad_gate,
                            void* grad_up, int64_t n, DType dtype, void* stream) {
  if (n <= 0) return nullptr;
  return dispatch(dtype, [&](auto tag) {
    using T = decltype(tag);
    return swiglu_backward_typed(static_cast<const T*>(grad_out), static_cast<const T*>(gate),
                                 static_cast<const T*>(up), static_cast<T*>(grad_gate),
                                 static_cast<T*>(grad_up), n, static_cast<cudaStream_t>(stream));
  });
}

const char* rotary_forward(const void* x, DType x_dtype, const void* cos, const void* sin,
                           DType cs_dtype, void* out, DType out_dtype, const RotaryShape& shape,
                           void* stream) {
  return rotary<false>(x, x_dtype, cos, sin, cs_dtype, out, out_dtype, shape, stream);
}

const char* rotary_backward(const void* grad_out, DType grad_dtype, const void* cos,
                            const void* sin, DType cs_dtype, void* grad_x, DType gx_dtype,
                            const RotaryShape& shape, void* stream) {
  return rotary<true>(grad_out, grad_dtype, cos, sin, cs_dtype, grad_x, gx_dtype, shape, stream);
}

}  // namespace remat::nn::kernels

// ---- Cross-entropy rows ---------------------------------------------------------

namespace remat::nn::kernels {
namespace {

constexpr int kCeThreads = 512;

// Running maximum m and sum s of exp(x - m); merging two is exact up to
// rounding. An empty state is (-inf, 0).
struct MaxSum {
  float m, s;
};

__device__ __forceinline__ MaxSum merge(MaxSum a, MaxSum b) {
  if (a.m == -INFINITY) return b;
  if (b.m == -INFINITY) return a;
  const float m = fmaxf(a.m, b.m);
  return {m, a.s * expf(a.m - m) + b.s * expf(b.m - m)};
}

__device__ __forceinline__ MaxSum add(MaxSum a, float x) {
  if (x == -INFINITY) return a;
  if (x <= a.m) return {a.m, a.s + expf(x - a.m)};
  return {x, a.s * expf(a.m - x) + 1.0f};
}

// The block's merged state, in every thread.
__device__ MaxSum block_merge(MaxSum v) {
  __shared__ MaxSum warps[kCeThreads / 32];
  __shared__ MaxSum total;
  for (int offset = 16; offset > 0; offset /= 2) {
    MaxSum o{__shfl_xor_sync(0xffffffffu, v.m, offset), __shfl_xor_sync(0xffffffffu, v.s, offset)};
    v = merge(v, o);
  }
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  if (warp == 0) {
    MaxSum w = lane < static_cast<int>(blockDim.x / 32) ? warps[lane] : MaxSum{-INFINITY, 0.0f};
    for (int offset = 16; offset > 0; offset /= 2) {
      MaxSum o{__shfl_xor_sync(0xffffffffu, w.m, offset),
               __shfl_xor_sync(0xffffffffu, w.s, offset)};
      w = merge(w, o);
    }
    if (lane == 0) total = w;
  }
  __syncthreads();
  return total;
}

template <typename T, int V>
__global__ void __launch_bounds__(kCeThreads)
    cross_entropy_kernel(T* __restrict__ logits, const int64_t* __restrict__ targets,
                         float* __restrict__ losses, int64_t vocab, int64_t ignore_index,
                         bool grad) {
  const int64_t row = blockIdx.x;
  T* x = logits + row * vocab;
  const int64_t vectors = vocab / V;
  MaxSum state{-INFINITY, 0.0f};
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
    const auto v = load<T, V>(x + i * V);
#pragma unroll
    for (int k = 0; k < V; ++k) state = add(state, to_float(v.v[k]));
  }
  for (int64_t j = vectors * V + threadIdx.x; j < vocab; j += blockDim.x) {
    state = add(state, to_float(x[j]));
  }
  const MaxSum all = block_merge(state);
  const float lse = all.m + logf(all.s);
  const int64_t target = targets[row];
  const bool counted = target != ignore_index;
  const bool valid = !counted || (target >= 0 && target < vocab);
  if (threadIdx.x == 0) {
    losses[row] = !counted ? 0.0f : valid ? lse - to_float(x[target]) : NAN;
  }
  if (!grad) return;
  __syncthreads();  // the target's logit is read before it is overwritten
  for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
    auto v = load<T, V>(x + i * V);
#pragma unroll
    for (int k = 0; k < V; ++k) {
      const int64_t j = i * V + k;
      const float g = counted ? expf(to_float(v.v[k]) - lse) - (j == target ? 1.0f : 0.0f) : 0.0f;
      v.v[k] = from_float<T>(g);
    }
    store(x + i * V, v);
  }
  for (int64_t j = vectors * V + threadIdx.x; j < vocab; j += blockDim.x) {
    const float g = counted ? expf(to_float(x[j]) - lse) - (j == target ? 1.0f : 0.0f) : 0.0f;
    x[j] = from_float<T>(g);
  }
}

}  // namespace

const char* cross_entropy_rows(void* logits, DType dtype, const int64_t* targets, float* losses,
                               int64_t rows, int64_t vocab, int64_t ignore_index, bool grad,
                               void* stream) {
  if (rows <= 0) return nullptr;
  if (vocab <= 0) return "cross_entropy_rows: vocab must be positive";
  if (rows > 0x7fffffff) return "cross_entropy_rows: too many rows for one launch";
  auto st = static_cast<cudaStream_t>(stream);
  return dispatch(dtype, [&](auto tag) -> const char* {
    using T = decltype(tag);
    constexpr int V = 16 / sizeof(T);
    auto* x = static_cast<T*>(logits);
    const bool vectorized = vocab % V == 0 && aligned(x, 16);
    if (vectorized) {
      cross_entropy_kernel<T, V><<<static_cast<unsigned>(rows), kCeThreads, 0, st>>>(
          x, targets, losses, vocab, ignore_index, grad);
    } else {
      cross_entropy_kernel<T, 1><<<static_cast<unsigned>(rows), kCeThreads, 0, st>>>(
          x, targets, losses, vocab, ignore_index, grad);
    }
    return launch_status();
  });
}

}  // namespace remat::nn::kernels

// ---- RMSNorm ---------------------------------------------------------------------

namespace remat::nn::kernels {
namespace {

constexpr int kRmsThreads = 256;
// The backward keeps each block's sums of grad_weight in shared memory up to
// this many bytes (hidden <= 10240; a block may have 48 KiB without opting
// in), else in the block's row of the workspace itself.
constexpr int64_t kRmsSharedBytes = 40 * 1024;
// The rows of the workspace: at most this many blocks in the backward.
constexpr int64_t kRmsMaxBackwardBlocks = 4096;
// The workspace reduction: kReduceColumns consecutive columns per block (one
// 128-byte line per workspace row), kReduceRows threads down each column.
constexpr int kReduceColumns = 32;
constexpr int kReduceRows = 16;

// The sum of v over the block, the same in every thread, added in a fixed
// order. blockDim.x is a multiple of 32; every thread of the block calls it.
__device__ float block_sum(float v) {
  __shared__ float warps[32];
  for (int offset = 16; offset > 0; offset /= 2) v += __shfl_xor_sync(0xffffffffu, v, offset);
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  if (lane == 0) warps[warp] = v;
  __syncthreads();
  float total = 0.0f;
  const int n = blockDim.x / 32;
  for (int w = 0; w < n; ++w) total += warps[w];
  __syncthreads();  // all have read warps[] before a later call writes it
  return total;
}

// One block per row (grid-stride over the rows), V elements per load; hidden
// is a multiple of V. The row is read twice: for its sum of squares, then
// (from cache) for the output.
template <typename TX, typename TO, int V>
__global__ void __launch_bounds__(kRmsThreads)
    rms_norm_forward_kernel(const TX* __restrict__ x, const TX* __restrict__ weight,
                            TO* __restrict__ out, float* __restrict__ rstd_out, int64_t rows,
                            int64_t hidden, float eps) {
  const int64_t vectors = hidden / V;
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const TX* xr = x + row * hidden;
    float sum = 0.0f;
    for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
      const auto v = load<TX, V>(xr + i * V);
#pragma unroll
      for (int k = 0; k < V; ++k) {
        const float f = to_float(v.v[k]);
        sum = fmaf(f, f, sum);
      }
    }
    const float rstd = rsqrtf(block_sum(sum) / static_cast<float>(hidden) + eps);
    if (rstd_out != nullptr && threadIdx.x == 0) rstd_out[row] = rstd;
    TO* orow = out + row * hidden;
    for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
      const auto v = load<TX, V>(xr + i * V);
      const auto w = load<TX, V>(weight + i * V);
      Vec<TO, V> o;
#pragma unroll
      for (int k = 0; k < V; ++k) {
        // weight * (x * rstd), as transformers orders it; one rounding.
        o.v[k] = from_float<TO>(to_float(w.v[k]) * (to_float(v.v[k]) * rstd));
      }
      store(orow + i * V, o);
    }
  }
}

// One block per row (grid-stride over the rows). With xh = x * rstd and
// g = grad_out * weight: grad_x = rstd * (g - xh * mean(g * xh)); the block
// adds grad_out * xh of its rows into acc, its own sums of grad_weight, with
// element k of vector i (column i * V + k) at acc[k * vectors + i] so that
// consecutive threads touch consecutive addresses. acc is dynamic shared
// memory (shared_acc) or the block's row of the workspace; either way it ends
// in the workspace row, in that layout.
template <typename TX, typename TO, int V>
__global__ void __launch_bounds__(kRmsThreads)
    rms_norm_backward_kernel(const TO* __restrict__ grad_out, const TX* __restrict__ x,
                             const TX* __restrict__ weight, const float* __restrict__ rstd,
                             TX* __restrict__ grad_x, float* __restrict__ workspace,
                             bool shared_acc, int64_t rows, int64_t hidden) {
  extern __shared__ float shared[];
  const int64_t vectors = hidden / V;
  const bool want_w = workspace != nullptr;
  float* acc = !want_w ? nullptr : shared_acc ? shared : workspace + blockIdx.x * hidden;
  if (want_w) {
    // Each thread owns (and alone touches) the entries of its vectors.
    for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
#pragma unroll
      for (int k = 0; k < V; ++k) acc[k * vectors + i] = 0.0f;
    }
  }
  for (int64_t row = blockIdx.x; row < rows; row += gridDim.x) {
    const float r = rstd[row];
    const TO* dyr = grad_out + row * hidden;
    const TX* xr = x + row * hidden;
    float c = 0.0f;
    if (grad_x != nullptr) {
      float dot = 0.0f;
      for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
        const auto dy = load<TO, V>(dyr + i * V);
        const auto xv = load<TX, V>(xr + i * V);
        const auto w = load<TX, V>(weight + i * V);
#pragma unroll
        for (int k = 0; k < V; ++k) {
          dot = fmaf(to_float(dy.v[k]) * to_float(w.v[k]), to_float(xv.v[k]) * r, dot);
        }
      }
      c = block_sum(dot) / static_cast<float>(hidden);
    }
    TX* gxr = grad_x == nullptr ? nullptr : grad_x + row * hidden;
    for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
      const auto dy = load<TO, V>(dyr + i * V);
      const auto xv = load<TX, V>(xr + i * V);
      if (want_w) {
#pragma unroll
        for (int k = 0; k < V; ++k) {
          acc[k * vectors + i] =
              fmaf(to_float(dy.v[k]), to_float(xv.v[k]) * r, acc[k * vectors + i]);
        }
      }
      if (gxr != nullptr) {
        const auto w = load<TX, V>(weight + i * V);
        Vec<TX, V> o;
#pragma unroll
        for (int k = 0; k < V; ++k) {
          const float g = to_float(dy.v[k]) * to_float(w.v[k]);
          const float xh = to_float(xv.v[k]) * r;
          o.v[k] = from_float<TX>(r * (g - xh * c));
        }
        store(gxr + i * V, o);
      }
    }
  }
  if (want_w && shared_acc) {
    float* dst = workspace + blockIdx.x * hidden;
    for (int64_t i = threadIdx.x; i < vectors; i += blockDim.x) {
#pragma unroll
      for (int k = 0; k < V; ++k) dst[k * vectors + i] = acc[k * vectors + i];
    }
  }
}

// grad_weight from the workspace [blocks, hidden] (rows in the backward
// kernel's layout for vectors of v): each column summed over the blocks in a
// fixed order (kReduceRows strided partial sums, then those in order), one
// rounding.
template <typename TW>
__global__ void __launch_bounds__(kReduceColumns* kReduceRows)
    rms_norm_weight_grad_kernel(const float* __restrict__ workspace, TW* __restrict__ grad_weight,
                                int64_t blocks, int64_t hidden, int v) {
  __shared__ float sums[kReduceRows][kReduceColumns + 1];
  const int cx = threadIdx.x % kReduceColumns, ry = threadIdx.x / kReduceColumns;
  const int64_t p = static_cast<int64_t>(blockIdx.x) * kReduceColumns + cx;
  float s = 0.0f;
  if (p < hidden) {
    for (int64_t b = ry; b < blocks; b += kReduceRows) s += workspace[b * hidden + p];
  }
  sums[ry][cx] = s;
  __syncthreads();
  if (ry == 0 && p < hidden) {
    float total = 0.0f;
#pragma unroll
    for (int r = 0; r < kReduceRows; ++r) total += sums[r][cx];
    const int64_t vectors = hidden / v;
    const int64_t k = p / vectors, i = p - k * vectors;
    grad_weight[i * v + k] = from_float<TW>(total);
  }
}

template <typename TX, typename TO>
constexpr int rms_vector() {
  return static_cast<int>(16 / std::min(sizeof(TX), sizeof(TO)));
}

// Threads per block for rows of `vectors` loads: whole warps, at most
// kRmsThreads.
int rms_threads(int64_t vectors) {
  const int64_t warps = std::max<int64_t>((vectors + 31) / 32, 1);
  return static_cast<int>(std::min<int64_t>(warps * 32, kRmsThreads));
}

bool rms_shared_acc(int64_t hidden) {
  return hidden * static_cast<int64_t>(sizeof(float)) <= kRmsSharedBytes;
}

// Calls f(TX{}, TO{}) with the C++ types of the two dtypes: the same one, or
// float32 x with a 16-bit output.
template <typename F>
const char* dispatch_rms(DType x_dtype, DType out_dtype, F&& f) {
  if (x_dtype == out_dtype) {
    return dispatch(x_dtype, [&](auto t) { return f(t, t); });
  }
  if (x_dtype == DType::kFloat32) {
    if (out_dtype == DType::kFloat16) return f(float{}, __half{});
    if (out_dtype == DType::kBFloat16) return f(float{}, __nv_bfloat16{});
  }
  return "rms_norm: unsupported dtype combination";
}

template <typename TX, typename TO>
const char* rms_norm_forward_typed(const void* x, const void* weight, void* out, float* rstd,
                                   int64_t rows, int64_t hidden, float eps, cudaStream_t stream) {
  constexpr int V = rms_vector<TX, TO>();
  const bool vectorized = hidden % V == 0 && aligned(x, sizeof(TX) * V) &&
                          aligned(weight, sizeof(TX) * V) && aligned(out, sizeof(TO) * V);
  const auto blocks = static_cast<unsigned>(std::min(rows, kMaxBlocks));
  const auto* tx = static_cast<const TX*>(x);
  const auto* tw = static_cast<const TX*>(weight);
  auto* to = static_cast<TO*>(out);
  if (vectorized) {
    rms_norm_forward_kernel<TX, TO, V>
        <<<blocks, rms_threads(hidden / V), 0, stream>>>(tx, tw, to, rstd, rows, hidden, eps);
  } else {
    rms_norm_forward_kernel<TX, TO, 1>
        <<<blocks, rms_threads(hidden), 0, stream>>>(tx, tw, to, rstd, rows, hidden, eps);
  }
  return launch_status();
}

// The blocks of the backward kernel that fit on the device at once (at most
// one per row): enough to keep it busy, and as few workspace rows as that.
template <typename TX, typename TO>
int64_t rms_norm_backward_blocks_typed(int64_t rows, int64_t hidden) {
  constexpr int V = rms_vector<TX, TO>();
  const bool vectorized = hidden % V == 0;
  const int threads = rms_threads(vectorized ? hidden / V : hidden);
  const size_t shared = rms_shared_acc(hidden) ? hidden * sizeof(float) : 0;
  int device = 0, sms = 0, per_sm = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err == cudaSuccess)
    err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device);
  if (err == cudaSuccess) {
    err = vectorized ? cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                           &per_sm, rms_norm_backward_kernel<TX, TO, V>, threads, shared)
                     : cudaOccupancyMaxActiveBlocksPerMultiprocessor(
                           &per_sm, rms_norm_backward_kernel<TX, TO, 1>, threads, shared);
  }
  int64_t blocks = 1024;
  if (err == cudaSuccess && sms > 0 && per_sm > 0) {
    blocks = static_cast<int64_t>(sms) * per_sm;
  } else {
    (void)cudaGetLastError();  // a failed query is not a launch error
  }
  return std::max<int64_t>(1, std::min({blocks, rows, kRmsMaxBackwardBlocks}));
}

template <typename TX, typename TO>
const char* rms_norm_backward_typed(const void* grad_out, const void* x, const void* weight,
                                    const float* rstd, void* grad_x, void* grad_weight,
                                    float* workspace, int64_t blocks, int64_t rows, int64_t hidden,
                                    cudaStream_t stream) {
  constexpr int V = rms_vector<TX, TO>();
  const bool vectorized = hidden % V == 0 && aligned(grad_out, sizeof(TO) * V) &&
                          aligned(x, sizeof(TX) * V) && aligned(weight, sizeof(TX) * V) &&
                          (grad_x == nullptr || aligned(grad_x, sizeof(TX) * V));
  const bool want_w = grad_weight != nullptr;
  const bool shared_acc = want_w && rms_shared_acc(hidden);
  const size_t shared = shared_acc ? hidden * sizeof(float) : 0;
  float* ws = want_w ? workspace : nullptr;
  const auto* dy = static_cast<const TO*>(grad_out);
  const auto* tx = static_cast<const TX*>(x);
  const auto* tw = static_cast<const TX*>(weight);
  auto* gx = static_cast<TX*>(grad_x);
  const auto grid = static_cast<unsigned>(blocks);
  if (vectorized) {
    rms_norm_backward_kernel<TX, TO, V><<<grid, rms_threads(hidden / V), shared, stream>>>(
        dy, tx, tw, rstd, gx, ws, shared_acc, rows, hidden);
  } else {
    rms_norm_backward_kernel<TX, TO, 1><<<grid, rms_threads(hidden), shared, stream>>>(
        dy, tx, tw, rstd, gx, ws, shared_acc, rows, hidden);
  }
  if (const char* err = launch_status()) return err;
  if (want_w) {
    const auto columns = static_cast<unsigned>((hidden + kReduceColumns - 1) / kReduceColumns);
    rms_norm_weight_grad_kernel<TX><<<columns, kReduceColumns * kReduceRows, 0, stream>>>(
        workspace, static_cast<TX*>(grad_weight), blocks, hidden, vectorized ? V : 1);
  }
  return launch_status();
}

}  // namespace

const char* rms_norm_forward(const void* x, const void* weight, DType x_dtype, void* out,
                             DType out_dtype, float* rstd, int64_t rows, int64_t hidden, float eps,
                             void* stream) {
  if (rows <= 0) return nullptr;
  if (hidden <= 0) return "rms_norm: hidden must be positive";
  return dispatch_rms(x_dtype, out_dtype, [&](auto tx, auto to) {
    return rms_norm_forward_typed<decltype(tx), decltype(to)>(
        x, weight, out, rstd, rows, hidden, eps, static_cast<cudaStream_t>(stream));
  });
}

int64_t rms_norm_backward_blocks(int64_t rows, int64_t hidden, DType x_dtype, DType out_dtype) {
  int64_t blocks = 1;
  if (rows <= 0 || hidden <= 0) return blocks;
  dispatch_rms(x_dtype, out_dtype, [&](auto tx, auto to) -> const char* {
    blocks = rms_norm_backward_blocks_typed<decltype(tx), decltype(to)>(rows, hidden);
    return nullptr;
  });
  return blocks;
}

const char* rms_norm_backward(const void* grad_out, DType out_dtype, const void* x,
                              const void* weight, DType x_dtype, const float* rstd, void* grad_x,
                              void* grad_weight, float* workspace, int64_t blocks, int64_t rows,
                              int64_t hidden, void* stream) {
  if (rows <= 0) return nullptr;
  if (hidden <= 0) return "rms_norm backward: hidden must be positive";
  if (blocks <= 0 || blocks > 0x7fffffff) return "rms_norm backward: bad number of blocks";
  if (grad_weight != nullptr && workspace == nullptr) {
    return "rms_norm backward: grad_weight needs a workspace";
  }
  if (grad_x == nullptr && grad_weight == nullptr) return nullptr;
  return dispatch_rms(x_dtype, out_dtype, [&](auto tx, auto to) {
    return rms_norm_backward_typed<decltype(tx), decltype(to)>(
        grad_out, x, weight, rstd, grad_x, grad_weight, workspace, blocks, rows, hidden,
        static_cast<cudaStream_t>(stream));
  });
}

}  // namespace remat::nn::kernels
