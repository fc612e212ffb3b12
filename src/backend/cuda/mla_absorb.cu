// MLA query absorption: qf[t, h] = (W_UK[h]^T q_nope[t, h], q_rope[t, h]) in BF16, the query of the
// multi-query attention over the latent cache. Block (h, token group of 8): the 8 tokens' q_nope rows sit in
// shared memory; each thread owns latent columns c and walks the dn rows of W_UK[h], so every weight
// element is read once per token group, coalesced along c, and dequantised (FP8 block scale) on the fly.
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

constexpr int kTokens = 8;

__global__ void __launch_bounds__(256) absorb_kernel(const float* q, WeightRef kv_b, int64_t T, int64_t H, int64_t dn,
                                                     int64_t dv, int64_t dr, uint16_t* qf) {
  extern __shared__ float qs[];  // [kTokens][dn]
  const int64_t h = blockIdx.x, t0 = int64_t(blockIdx.y) * kTokens, r = kv_b.cols, W = r + dr, dh = dn + dr;
  const int nt = int(min(int64_t(kTokens), T - t0));
  for (int64_t i = threadIdx.x; i < kTokens * dn; i += blockDim.x) {
    const int64_t t = i / dn, n = i % dn;
    qs[i] = t < nt ? q[((t0 + t) * H + h) * dh + n] : 0.0f;
  }
  __syncthreads();
  const int64_t row0 = h * (dn + dv);
  for (int64_t c = threadIdx.x; c < r; c += blockDim.x) {
    float acc[kTokens] = {};
    for (int64_t n = 0; n < dn; ++n) {
      const float w = load_weight(kv_b, row0 + n, c);
#pragma unroll
      for (int t = 0; t < kTokens; ++t) acc[t] = fmaf(qs[t * dn + n], w, acc[t]);
    }
    for (int t = 0; t < nt; ++t) qf[((t0 + t) * H + h) * W + c] = float_to_bf16_bits(acc[t]);
  }
  for (int64_t i = threadIdx.x; i < int64_t(nt) * dr; i += blockDim.x) {
    const int64_t t = i / dr, j = i % dr;
    qf[((t0 + t) * H + h) * W + r + j] = float_to_bf16_bits(q[((t0 + t) * H + h) * dh + dn + j]);
  }
}

}  // namespace

void mla_absorb_q(const float* q, const WeightRef& kv_b, int64_t T, int64_t H, int64_t dn, int64_t dv, int64_t dr,
                  uint16_t* qf, cudaStream_t s) {
  if (T == 0) return;
  const size_t smem = size_t(kTokens * dn) * sizeof(float);
  absorb_kernel<<<dim3(unsigned(H), unsigned((T + kTokens - 1) / kTokens)), 256, smem, s>>>(q, kv_b, T, H, dn, dv, dr, qf);
  check_launch("mla_absorb_q");
}

}  // namespace moe::cuda
