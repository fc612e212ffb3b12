// DeepSeek Sparse Attention on the GPU: the lightning indexer's per-token key and its queries' rotary part (the
// CPU twin is backend/cpu/dsa_index_cache.cpp; the maths in Backend's comments).
//   dsa_write_index_cache: one warp per new token: LayerNorm of wk(x) over its Di values (mean and variance in
//     F32 from warp sums), times w plus b, rope on the first dr values in the half-split layout (pairs
//     (v[i], v[i + dr/2]), HF's rotate_half; MLA's own rope is interleaved), stored as F32 at the token's slot
//     (model/latent_cache.h says why not BF16 or the published FP8).
//   dsa_rope_q: one thread per (token, head, pair), in place on the F32 queries.
// Angles pos * inv_freq[i] in double, as mla_cache.cu and the CPU do (F32 sincos of large angles loses digits).
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

__device__ __forceinline__ void rope_half_pair(float* a, float* b, int32_t pos, double inv_freq, double attn_factor) {
  double sn, cs;
  sincos(double(pos) * inv_freq, &sn, &cs);
  cs *= attn_factor;
  sn *= attn_factor;
  const double x = *a, y = *b;
  *a = float(x * cs - y * sn);
  *b = float(y * cs + x * sn);
}

__global__ void __launch_bounds__(32) write_index_cache_kernel(const float* k, WeightRef nw, WeightRef nb, float eps,
                                                               const double* inv_freq, double attn_factor,
                                                               const int32_t* positions, const int32_t* slots,
                                                               int32_t Di, int32_t dr, float* cache) {
  extern __shared__ float row[];  // [Di]
  const int t = int(blockIdx.x), lane = int(threadIdx.x);
  pdl_wait();  // k comes from the previous kernel
  const float* src = k + int64_t(t) * Di;
  float s = 0.0f;
  for (int i = lane; i < Di; i += 32) {
    row[i] = src[i];
    s += row[i];
  }
  const float mean = warp_sum(s) / float(Di);
  float v = 0.0f;
  for (int i = lane; i < Di; i += 32) {
    const float d = row[i] - mean;
    v += d * d;
  }
  const float inv = rsqrtf(warp_sum(v) / float(Di) + eps);
  for (int i = lane; i < Di; i += 32) row[i] = (row[i] - mean) * inv * load_weight(nw, 0, i) + load_weight(nb, 0, i);
  __syncwarp();
  const int half = dr / 2;
  for (int i = lane; i < half; i += 32) rope_half_pair(&row[i], &row[i + half], positions[t], inv_freq[i], attn_factor);
  __syncwarp();
  pdl_trigger();
  float* dst = cache + int64_t(slots[t]) * Di;
  for (int i = lane; i < Di; i += 32) dst[i] = row[i];
}

__global__ void rope_q_kernel(float* q, const double* inv_freq, double attn_factor, const int32_t* positions,
                              int64_t T, int32_t Hi, int32_t Di, int32_t dr) {
  pdl_wait();
  const int64_t half = dr / 2, idx = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (idx >= T * Hi * half) return;
  const int64_t i = idx % half, th = idx / half, t = th / Hi;
  float* v = q + th * Di;
  rope_half_pair(&v[i], &v[i + half], positions[t], inv_freq[i], attn_factor);
}

}  // namespace

void dsa_write_index_cache(const float* k, const WeightRef& norm_w, const WeightRef& norm_b, float eps,
                           const double* inv_freq, double attn_factor, const int32_t* positions, const int32_t* slots,
                           int64_t T, int64_t Di, int64_t dr, float* cache, cudaStream_t s) {
  if (T == 0) return;
  launch("dsa_write_index_cache", write_index_cache_kernel, dim3(unsigned(T)), dim3(32), size_t(Di) * sizeof(float), s,
         k, norm_w, norm_b, eps, inv_freq, attn_factor, positions, slots, int32_t(Di), int32_t(dr), cache);
}

void dsa_rope_q(float* q, const double* inv_freq, double attn_factor, const int32_t* positions, int64_t T, int64_t Hi,
                int64_t Di, int64_t dr, cudaStream_t s) {
  const int64_t n = T * Hi * (dr / 2);
  if (n == 0) return;
  launch("dsa_rope_q", rope_q_kernel, dim3(unsigned((n + 255) / 256)), dim3(256), 0, s, q, inv_freq, attn_factor,
         positions, T, int32_t(Hi), int32_t(Di), int32_t(dr));
}

}  // namespace moe::cuda
