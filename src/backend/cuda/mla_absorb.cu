// MLA query absorption: qf[t, h] = (W_UK[h]^T q_nope[t, h], q_rope[t, h]) in BF16, the query of the
// multi-query attention over the latent cache.
//
// Block (head h, 64 latent columns; when r is not a multiple of 64 the last block masks the columns past r):
// warp w owns the dn rows w, w + 8, ... of W_UK[h], each lane two adjacent
// columns (one 4-byte load of a BF16 row; a warp reads 128 contiguous bytes). The weights do not depend on
// earlier kernels, so a block loads and dequantises its whole slice (up to 16 rows x 2 columns per lane, i.e.
// dn <= 128) into registers before waiting for the previous kernel (programmatic dependent launch): at batch 1
// the weight latency overlaps the previous kernel's tail. The kernel is specialised per weight type, so the
// 32 loads are independent and in flight together (a generic load_weight per element put a type switch
// between them, and they went out one at a time: ~13 us per call at batch 1 on the H100).
// Tokens are taken 8 at a time (their q_nope rows of head h in shared memory, the 8 warps' partial sums added
// there); blockIdx.z strides over the token groups, so a block reuses its weight registers for several groups.
// Grid: H * r / 64 blocks per z (128 for Moonlight's 16 heads, 1024 for DeepSeek-V3's 128).
#include <algorithm>

#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

constexpr int kTokens = 8, kCols = 64, kWarps = 8, kThreads = 32 * kWarps;
constexpr int kRegRows = 16;                          // W_UK rows per warp held in registers (dn <= 128)
constexpr int kQLoads = kTokens * 128 / kThreads;     // q_nope values per thread and token group (dn <= 128)

// W[n, k] and W[n, k + 1] (k even), dequantised.
template <DType WT>
__device__ __forceinline__ float2 load_pair(const WeightRef& w, int64_t n, int64_t k) {
  const int64_t i = n * w.cols + k;
  if constexpr (WT == DType::BF16) {
    const uint32_t u = *reinterpret_cast<const uint32_t*>(static_cast<const uint16_t*>(w.data) + i);
    return make_float2(bf16_bits_to_float(u & 0xffffu), bf16_bits_to_float(u >> 16));
  } else if constexpr (WT == DType::F16) {
    const __half2 h = *reinterpret_cast<const __half2*>(static_cast<const uint16_t*>(w.data) + i);
    return __half22float2(h);
  } else if constexpr (WT == DType::F32) {
    return *reinterpret_cast<const float2*>(static_cast<const float*>(w.data) + i);
  } else {  // F8_E4M3 with 128x128 block scales: k and k + 1 share a block (k even, block_k even). 32-bit
    // index arithmetic (a 64-bit division per pair cost more than the load) and the bytes by bit placement.
    const uint32_t u = *reinterpret_cast<const uint16_t*>(static_cast<const uint8_t*>(w.data) + i);
    const int kb = (int(w.cols) + w.block_k - 1) / w.block_k;
    const float s = w.scale[int(n) / w.block_n * kb + int(k) / w.block_k] * kE4m3Placed;
    return make_float2(e4m3_placed(u << 24) * s, e4m3_placed(u << 16) * s);
  }
}

// The thread's W_UK slice (rows row0 + warp + kWarps * i < row0 + dn, columns c, c + 1), dequantised. FP8
// where the head's dn rows lie in one 128-row scale block (Moonlight, V3: heads of dn + dv = 256 rows): the
// 16 two-byte loads go out first and the slice's one scale is loaded once, instead of a scale load and two
// integer divisions per pair (load_pair, which every other case takes). Timelines of batch-1 decode
// (bench/RESULTS.md): FP8 absorb 7.1 us a layer against BF16's 3.0 before (H200), 3.5 against 3.1 with this
// (H100).
template <DType WT>
__device__ __forceinline__ void load_slice(const WeightRef& kv_b, int64_t row0, int warp, int64_t dn,
                                           int64_t c, float2 (&w)[kRegRows]) {
  const int64_t r = kv_b.cols;
  if constexpr (WT == DType::F8_E4M3) {
    if (row0 / kv_b.block_n == (row0 + dn - 1) / kv_b.block_n) {
      uint32_t raw[kRegRows];
      const auto* base = static_cast<const uint8_t*>(kv_b.data);
#pragma unroll
      for (int i = 0; i < kRegRows; ++i) {
        const int64_t n = warp + kWarps * i;
        raw[i] = n < dn && c < r ? *reinterpret_cast<const uint16_t*>(base + (row0 + n) * r + c) : 0u;
      }
      const float s =
          c < r ? kv_b.scale[int(row0 / kv_b.block_n) * int(kv_b.kblocks()) + int(c) / kv_b.block_k] *
                      kE4m3Placed
                : 0.0f;
#pragma unroll
      for (int i = 0; i < kRegRows; ++i)
        w[i] = make_float2(e4m3_placed(raw[i] << 24) * s, e4m3_placed(raw[i] << 16) * s);
      return;
    }
  }
#pragma unroll
  for (int i = 0; i < kRegRows; ++i) {
    const int64_t n = warp + kWarps * i;
    w[i] = n < dn && c < r ? load_pair<WT>(kv_b, row0 + n, c) : make_float2(0.0f, 0.0f);
  }
}

template <DType WT>
__global__ void __launch_bounds__(kThreads) absorb_kernel(const float* q, WeightRef kv_b, int64_t T, int64_t H, int64_t dn,
                                                     int64_t dv, int64_t dr, uint16_t* qf) {
  extern __shared__ float sh[];
  float* qs = sh;                          // [kTokens][dn]
  float* red = sh + kTokens * dn;          // [kWarps][kTokens][kCols]
  const int64_t h = blockIdx.x, c0 = int64_t(blockIdx.y) * kCols;
  const int64_t r = kv_b.cols, W = r + dr, dh = dn + dr;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t row0 = h * (dn + dv), c = c0 + 2 * lane;

  pdl_trigger();
  float2 w[kRegRows];
  load_slice<WT>(kv_b, row0, warp, dn, c, w);
  pdl_wait();  // q comes from the previous kernels

  for (int64_t t0 = int64_t(blockIdx.z) * kTokens; t0 < T; t0 += int64_t(gridDim.z) * kTokens) {
    const int nt = int(min(int64_t(kTokens), T - t0));
    __syncthreads();  // the previous group's reads of qs and red are done
    // q_nope of the group's tokens: every load in flight before the first store (dn <= 128: 4 per thread).
    const int nq = kTokens * int(dn);
    float v[kQLoads];
#pragma unroll
    for (int k = 0; k < kQLoads; ++k) {
      const int i = int(threadIdx.x) + k * kThreads, t = i / int(dn), n = i % int(dn);
      v[k] = i < nq && t < nt ? q[((t0 + t) * H + h) * dh + n] : 0.0f;
    }
#pragma unroll
    for (int k = 0; k < kQLoads; ++k)
      if (int(threadIdx.x) + k * kThreads < nq) qs[int(threadIdx.x) + k * kThreads] = v[k];
    for (int i = int(threadIdx.x) + kQLoads * kThreads; i < nq; i += kThreads) {  // dn > 128
      const int t = i / int(dn), n = i % int(dn);
      qs[i] = t < nt ? q[((t0 + t) * H + h) * dh + n] : 0.0f;
    }
    __syncthreads();
    float acc[kTokens][2] = {};
#pragma unroll
    for (int i = 0; i < kRegRows; ++i) {
      const int64_t n = warp + kWarps * i;
      if (n >= dn) break;
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const float x = qs[t * dn + n];
        acc[t][0] = fmaf(x, w[i].x, acc[t][0]);
        acc[t][1] = fmaf(x, w[i].y, acc[t][1]);
      }
    }
    for (int64_t n = warp + kWarps * kRegRows; n < dn; n += kWarps) {  // dn > 128: the rest, read now
      const float2 wn = c < r ? load_pair<WT>(kv_b, row0 + n, c) : make_float2(0.0f, 0.0f);
#pragma unroll
      for (int t = 0; t < kTokens; ++t) {
        const float x = qs[t * dn + n];
        acc[t][0] = fmaf(x, wn.x, acc[t][0]);
        acc[t][1] = fmaf(x, wn.y, acc[t][1]);
      }
    }
#pragma unroll
    for (int t = 0; t < kTokens; ++t)
      *reinterpret_cast<float2*>(red + (warp * kTokens + t) * kCols + 2 * lane) = make_float2(acc[t][0], acc[t][1]);
    __syncthreads();
    for (int i = int(threadIdx.x); i < nt * kCols; i += kThreads) {
      const int t = i / kCols, cc = i % kCols;
      if (c0 + cc >= r) continue;  // the last tile of a latent width that is not a multiple of 64
      float s = 0.0f;
#pragma unroll
      for (int k = 0; k < kWarps; ++k) s += red[(k * kTokens + t) * kCols + cc];
      qf[((t0 + t) * H + h) * W + c0 + cc] = float_to_bf16_bits(s);
    }
    if (blockIdx.y == 0) {
      for (int i = int(threadIdx.x); i < nt * int(dr); i += kThreads) {
        const int t = i / int(dr), j = i % int(dr);
        qf[((t0 + t) * H + h) * W + r + j] = float_to_bf16_bits(q[((t0 + t) * H + h) * dh + dn + j]);
      }
    }
  }
}

// qn [T, H, dn] = BF16(q_nope), and qf's rope columns [r, r + dr) of each head = BF16(q_rope).
__global__ void split_q_kernel(const float* q, int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t r,
                               uint16_t* qn, uint16_t* qf) {
  pdl_trigger();
  pdl_wait();  // q comes from the previous kernels
  const int64_t dh = dn + dr, n = T * H * dh;
  for (int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x; i < n;
       i += int64_t(gridDim.x) * blockDim.x) {
    const int64_t th = i / dh, j = i % dh;
    const uint16_t v = float_to_bf16_bits(q[i]);
    if (j < dn)
      qn[th * dn + j] = v;
    else
      qf[th * (r + dr) + r + j - dn] = v;
  }
}

}  // namespace

void mla_split_q(const float* q, int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t r, uint16_t* qn,
                 uint16_t* qf, cudaStream_t s) {
  if (T == 0) return;
  const int64_t blocks = std::min<int64_t>((T * H * (dn + dr) + 255) / 256, 1024);
  launch("mla_split_q", split_q_kernel, dim3(unsigned(blocks)), dim3(256), 0, s, q, T, H, dn, dr, r, qn, qf);
}

void mla_absorb_q(const float* q, const WeightRef& kv_b, int64_t T, int64_t H, int64_t dn, int64_t dv, int64_t dr,
                  uint16_t* qf, cudaStream_t s) {
  if (T == 0) return;
  if (kv_b.cols % 2 != 0) check(cudaErrorInvalidValue, "mla_absorb_q: kv_lora_rank must be even");
  if (kv_b.dtype == DType::F8_E4M3 && kv_b.block_k % 2 != 0) check(cudaErrorInvalidValue, "mla_absorb_q: odd FP8 block");
  const size_t smem = size_t(kTokens * dn + kWarps * kTokens * kCols) * sizeof(float);
  // z: token groups, as many as keep ~8 blocks per SM busy; each block then loops over its share.
  const int64_t ctiles = (kv_b.cols + kCols - 1) / kCols;  // the last tile may be partial (r even)
  const int64_t xy = H * ctiles, groups = (T + kTokens - 1) / kTokens;
  const dim3 grid(unsigned(H), unsigned(ctiles), unsigned(std::clamp<int64_t>(1024 / xy, 1, groups)));
  switch (kv_b.dtype) {
    case DType::BF16: launch("mla_absorb_q", absorb_kernel<DType::BF16>, grid, dim3(kThreads), smem, s, q, kv_b, T, H, dn, dv, dr, qf); break;
    case DType::F16: launch("mla_absorb_q", absorb_kernel<DType::F16>, grid, dim3(kThreads), smem, s, q, kv_b, T, H, dn, dv, dr, qf); break;
    case DType::F32: launch("mla_absorb_q", absorb_kernel<DType::F32>, grid, dim3(kThreads), smem, s, q, kv_b, T, H, dn, dv, dr, qf); break;
    case DType::F8_E4M3: launch("mla_absorb_q", absorb_kernel<DType::F8_E4M3>, grid, dim3(kThreads), smem, s, q, kv_b, T, H, dn, dv, dr, qf); break;
    default: check(cudaErrorInvalidValue, "mla_absorb_q: kv_b_proj weight type");
  }
}

}  // namespace moe::cuda
