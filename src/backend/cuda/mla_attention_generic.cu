// MLA attention over the paged BF16 latent cache, absorbed form, for the latent and rope widths the tensor-core
// kernel of mla_attention.cu is not compiled for: the general path, so that every checkpoint the CPU backend
// runs also runs on the GPU (any kv_lora_rank r and rope width dr; the cache row is W = r + dr wide).
//
// One block per (token t, head h), kWarps warps. The query row (W values, BF16) goes to shared memory as F32.
// Warp w takes the causal positions w, w + kWarps, ... of the token's sequence, one at a time: its lanes stride
// the W columns of the cache row for the score s = scale * qf . c_j (a warp reduction, every lane gets the sum),
// then update the warp's own online softmax (running max m, sum l, natural-log domain) and its accumulator
// acc_w[0 .. r) = sum_j exp(s_j - m) c_j[0 .. r) in shared memory (lane-strided columns). At the end the warps'
// states merge: o = sum_w exp(m_w - M) acc_w / sum_w exp(m_w - M) l_w, and lse = M + ln L when asked.
// CUDA cores and F32 throughout (operands rounded to BF16 only where the cache and the absorbed query are):
// each cache row is read once per head from L2, so this path is slow (no head sharing, no tensor cores) but
// exact up to F32 sums. It ignores MlaParams::splits (one pass over all positions, no combine).
// With MlaParams::indices (DeepSeek-V3.2's sparse attention) the positions are the token's selected ones (the
// tensor-core kernel takes the same list for its compiled widths).
#include <cmath>

#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

constexpr int kWarps = 4, kThreads = 32 * kWarps;

__global__ void __launch_bounds__(kThreads) mla_generic_kernel(const MlaParams p) {
  extern __shared__ float sm[];
  const int W = p.r + p.dr;
  float* q = sm;                         // [W]
  float* acc = sm + W;                   // [kWarps][r]
  float* ml = acc + kWarps * p.r;        // [kWarps][2]: m, l
  const int t = int(blockIdx.x) / p.H, h = int(blockIdx.x) % p.H;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  float* a = acc + warp * p.r;
  for (int c = lane; c < p.r; c += 32) a[c] = 0.0f;
  pdl_wait();  // qf comes from the previous kernel
  const uint16_t* qrow = p.qf + (int64_t(t) * p.H + h) * W;
  for (int c = int(threadIdx.x); c < W; c += kThreads) q[c] = bf16_bits_to_float(qrow[c]);
  __syncthreads();

  // Dense: positions 0 .. positions[t]. Sparse: the first len entries of the token's index row (a valid
  // ascending prefix, then -1s: len by binary search).
  const int32_t* sel = p.indices ? p.indices + int64_t(t) * p.K : nullptr;
  const int len = sel ? valid_prefix(sel, p.K) : p.positions[t] + 1;
  const int32_t* pages = p.block_table + int64_t(p.token_seq[t]) * p.max_pages;
  float m = -INFINITY, l = 0.0f;
  for (int i = warp; i < len; i += kWarps) {
    const int j = sel ? sel[i] : i;
    const uint16_t* row = p.cache + (int64_t(pages[j / p.page_size]) * p.page_size + j % p.page_size) * W;
    float s = 0.0f;
    for (int c = lane; c < W; c += 32) s = fmaf(q[c], bf16_bits_to_float(row[c]), s);
    s = warp_sum(s) * p.scale;
    const float m_new = fmaxf(m, s);             // finite: s is
    const float alpha = expf(m - m_new), e = expf(s - m_new);  // alpha = 0 on the first position (m = -inf)
    l = l * alpha + e;
    for (int c = lane; c < p.r; c += 32) a[c] = fmaf(e, bf16_bits_to_float(row[c]), a[c] * alpha);
    m = m_new;
  }
  if (lane == 0) {
    ml[2 * warp] = m;
    ml[2 * warp + 1] = l;
  }
  pdl_trigger();
  __syncthreads();

  // Merge the warps (a warp with no position has m = -inf, l = 0; warp 0 always has one, so M is finite).
  float M = -INFINITY;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) M = fmaxf(M, ml[2 * w]);
  float f[kWarps], L = 0.0f;
#pragma unroll
  for (int w = 0; w < kWarps; ++w) {
    f[w] = expf(ml[2 * w] - M);
    L += f[w] * ml[2 * w + 1];
  }
  const float inv = 1.0f / L;
  float* out = p.o_lat + (int64_t(t) * p.H + h) * p.r;
  for (int c = int(threadIdx.x); c < p.r; c += kThreads) {
    float o = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) o = fmaf(f[w], acc[w * p.r + c], o);
    out[c] = o * inv;
  }
  if (p.lse && threadIdx.x == 0) p.lse[int64_t(t) * p.H + h] = M + logf(L);
}

}  // namespace

void mla_attention_generic(const MlaParams& p, cudaStream_t s) {
  if (p.T == 0) return;
  const size_t smem = size_t(p.r + p.dr + kWarps * p.r + 2 * kWarps) * sizeof(float);
  if (smem > size_t(48) << 10) check(cudaErrorInvalidValue, "mla_attention_generic: latent too wide for the general kernel");
  launch("mla_attention_generic", mla_generic_kernel, dim3(unsigned(int64_t(p.T) * p.H)), dim3(kThreads), smem, s, p);
}

}  // namespace moe::cuda
