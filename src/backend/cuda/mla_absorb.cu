// MLA query absorption: qf[t, h] = (W_UK[h]^T q_nope[t, h], q_rope[t, h]) in BF16, the query of the
// multi-query attention over the latent cache.
//
// Block (head h, 64 latent columns, token group of 8): the 8 tokens' q_nope rows of head h sit in shared
// memory; warp w walks its share of the dn rows of W_UK[h] (rows w, w + 8, ...), each lane owning two
// adjacent columns (a warp reads 128 contiguous bytes of a BF16 row), dequantising FP8 block scales on the
// fly; the 8 warps' partial sums are added in shared memory. The grid has H * r / 64 blocks per token group
// (128 for Moonlight's 16 heads, 1024 for DeepSeek-V3's 128), so a decode step spreads the W_UK read over
// the GPU instead of one block per head.
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

constexpr int kTokens = 8, kCols = 64, kWarps = 8;

__global__ void __launch_bounds__(256) absorb_kernel(const float* q, WeightRef kv_b, int64_t T, int64_t H, int64_t dn,
                                                     int64_t dv, int64_t dr, uint16_t* qf) {
  extern __shared__ float sh[];
  float* qs = sh;                          // [kTokens][dn]
  float* red = sh + kTokens * dn;          // [kWarps][kTokens][kCols]
  const int64_t h = blockIdx.x, c0 = int64_t(blockIdx.y) * kCols, t0 = int64_t(blockIdx.z) * kTokens;
  const int64_t r = kv_b.cols, W = r + dr, dh = dn + dr;
  const int nt = int(min(int64_t(kTokens), T - t0));
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  for (int64_t i = threadIdx.x; i < kTokens * dn; i += blockDim.x) {
    const int64_t t = i / dn, n = i % dn;
    qs[i] = t < nt ? q[((t0 + t) * H + h) * dh + n] : 0.0f;
  }
  __syncthreads();
  const int64_t row0 = h * (dn + dv), c = c0 + 2 * lane;
  float acc[kTokens][2] = {};
#pragma unroll 4
  for (int64_t n = warp; n < dn; n += kWarps) {
    const float w0 = load_weight(kv_b, row0 + n, c), w1 = load_weight(kv_b, row0 + n, c + 1);
#pragma unroll
    for (int t = 0; t < kTokens; ++t) {
      const float x = qs[t * dn + n];
      acc[t][0] = fmaf(x, w0, acc[t][0]);
      acc[t][1] = fmaf(x, w1, acc[t][1]);
    }
  }
#pragma unroll
  for (int t = 0; t < kTokens; ++t) {
    red[(warp * kTokens + t) * kCols + 2 * lane] = acc[t][0];
    red[(warp * kTokens + t) * kCols + 2 * lane + 1] = acc[t][1];
  }
  __syncthreads();
  for (int i = threadIdx.x; i < nt * kCols; i += blockDim.x) {
    const int t = i / kCols, cc = i % kCols;
    float s = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) s += red[(w * kTokens + t) * kCols + cc];
    qf[((t0 + t) * H + h) * W + c0 + cc] = float_to_bf16_bits(s);
  }
  if (blockIdx.y == 0) {
    for (int64_t i = threadIdx.x; i < int64_t(nt) * dr; i += blockDim.x) {
      const int64_t t = i / dr, j = i % dr;
      qf[((t0 + t) * H + h) * W + r + j] = float_to_bf16_bits(q[((t0 + t) * H + h) * dh + dn + j]);
    }
  }
}

}  // namespace

void mla_absorb_q(const float* q, const WeightRef& kv_b, int64_t T, int64_t H, int64_t dn, int64_t dv, int64_t dr,
                  uint16_t* qf, cudaStream_t s) {
  if (T == 0) return;
  if (kv_b.cols % kCols != 0) check(cudaErrorInvalidValue, "mla_absorb_q: kv_lora_rank must be a multiple of 64");
  const size_t smem = size_t(kTokens * dn + kWarps * kTokens * kCols) * sizeof(float);
  const dim3 grid(unsigned(H), unsigned(kv_b.cols / kCols), unsigned((T + kTokens - 1) / kTokens));
  absorb_kernel<<<grid, 256, smem, s>>>(q, kv_b, T, H, dn, dv, dr, qf);
  check_launch("mla_absorb_q");
}

}  // namespace moe::cuda
