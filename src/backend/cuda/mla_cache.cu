// MLA's latent-cache write and the query's rotary part. Rotary pairs are interleaved (v[2i], v[2i+1]);
// angles pos * inv_freq[i] in double as on the CPU (sincos of large angles in F32 would lose digits).
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

__device__ __forceinline__ void rope_pair(float a, float b, int32_t pos, double inv_freq, double attn_factor,
                                          float* o0, float* o1) {
  double sn, cs;
  sincos(double(pos) * inv_freq, &sn, &cs);
  cs *= attn_factor;
  sn *= attn_factor;
  *o0 = float(double(a) * cs - double(b) * sn);
  *o1 = float(double(a) * sn + double(b) * cs);
}

// One block per token t: normalise the latent, rotate the rope key, store both as BF16 at the token's slot.
__device__ __forceinline__ void write_cache_row(int64_t t, const float* kv_a, const WeightRef& norm_w,
                                                float eps, const double* inv_freq, double attn_factor,
                                                const int32_t* positions, const int32_t* slots, int64_t r,
                                                int64_t dr, uint16_t* cache) {
  const int64_t width = r + dr;
  const float* src = kv_a + t * width;
  uint16_t* dst = cache + int64_t(slots[t]) * width;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < r; i += blockDim.x) ss += src[i] * src[i];
  const float total = block_sum(ss);
  const float inv = rsqrtf(total / float(r) + eps);
  for (int64_t i = threadIdx.x; i < r; i += blockDim.x)
    dst[i] = float_to_bf16_bits(load_element(norm_w.data, norm_w.dtype, i) * (src[i] * inv));
  for (int64_t i = threadIdx.x; i < dr / 2; i += blockDim.x) {
    float o0, o1;
    rope_pair(src[r + 2 * i], src[r + 2 * i + 1], positions[t], inv_freq[i], attn_factor, &o0, &o1);
    dst[r + 2 * i] = float_to_bf16_bits(o0);
    dst[r + 2 * i + 1] = float_to_bf16_bits(o1);
  }
}

// Thread idx rotates one pair of q's rope part: (token, head, pair i).
__device__ __forceinline__ void rope_q_pair(int64_t idx, float* q, const double* inv_freq, double attn_factor,
                                            const int32_t* positions, int64_t T, int64_t H, int64_t dn,
                                            int64_t dr) {
  const int64_t half = dr / 2;
  if (idx >= T * H * half) return;
  const int64_t i = idx % half, th = idx / half, t = th / H;
  float* v = q + th * (dn + dr) + dn;
  rope_pair(v[2 * i], v[2 * i + 1], positions[t], inv_freq[i], attn_factor, &v[2 * i], &v[2 * i + 1]);
}

__global__ void __launch_bounds__(256)
    write_cache_kernel(const float* kv_a, WeightRef norm_w, float eps, const double* inv_freq,
                       double attn_factor, const int32_t* positions, const int32_t* slots, int64_t r,
                       int64_t dr, uint16_t* cache) {
  pdl_trigger();
  pdl_wait();
  write_cache_row(blockIdx.x, kv_a, norm_w, eps, inv_freq, attn_factor, positions, slots, r, dr, cache);
}

__global__ void __launch_bounds__(256)
    rope_q_kernel(float* q, const double* inv_freq, double attn_factor, const int32_t* positions, int64_t T,
                  int64_t H, int64_t dn, int64_t dr) {
  pdl_trigger();
  pdl_wait();
  rope_q_pair(blockIdx.x * int64_t(blockDim.x) + threadIdx.x, q, inv_freq, attn_factor, positions, T, H, dn,
              dr);
}

// Both in one launch: blocks [0, T) write the cache rows, the rest rotate q.
__global__ void __launch_bounds__(256)
    rope_and_cache_kernel(const float* kv_a, WeightRef norm_w, float eps, float* q, const double* inv_freq,
                          double attn_factor, const int32_t* positions, const int32_t* slots, int64_t T,
                          int64_t H, int64_t dn, int64_t r, int64_t dr, uint16_t* cache) {
  pdl_trigger();
  pdl_wait();
  if (blockIdx.x < T)
    write_cache_row(blockIdx.x, kv_a, norm_w, eps, inv_freq, attn_factor, positions, slots, r, dr, cache);
  else
    rope_q_pair((blockIdx.x - T) * int64_t(blockDim.x) + threadIdx.x, q, inv_freq, attn_factor, positions, T,
                H, dn, dr);
}

}  // namespace

void mla_rope_and_cache(const float* kv_a, const WeightRef& norm_w, float eps, float* q,
                        const double* inv_freq, double attn_factor, const int32_t* positions,
                        const int32_t* slots, int64_t T, int64_t H, int64_t dn, int64_t r, int64_t dr,
                        uint16_t* cache, cudaStream_t s) {
  if (T == 0) return;
  const unsigned rope_blocks = blocks_for(T * H * (dr / 2), 256);
  launch("mla_rope_and_cache", rope_and_cache_kernel, unsigned(T) + rope_blocks, 256, 0, s, kv_a, norm_w, eps,
         q, inv_freq, attn_factor, positions, slots, T, H, dn, r, dr, cache);
}

void mla_write_cache(const float* kv_a, const WeightRef& norm_w, float eps, const double* inv_freq,
                     double attn_factor, const int32_t* positions, const int32_t* slots, int64_t T, int64_t r,
                     int64_t dr, uint16_t* cache, cudaStream_t s) {
  if (T == 0) return;
  launch("mla_write_cache", write_cache_kernel, unsigned(T), 256, 0, s, kv_a, norm_w, eps, inv_freq,
         attn_factor, positions, slots, r, dr, cache);
}

void mla_rope_q(float* q, const double* inv_freq, double attn_factor, const int32_t* positions, int64_t T,
                int64_t H, int64_t dn, int64_t dr, cudaStream_t s) {
  const int64_t n = T * H * (dr / 2);
  if (n == 0) return;
  launch("mla_rope_q", rope_q_kernel, blocks_for(n, 256), 256, 0, s, q, inv_freq, attn_factor, positions, T,
         H, dn, dr);
}

}  // namespace moe::cuda
