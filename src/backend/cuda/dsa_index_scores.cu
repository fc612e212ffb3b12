// DeepSeek Sparse Attention on the GPU, the indexer's scores (the CPU twin is backend/cpu/dsa_index_scores.cpp):
//   scores[t, j] = sum_h relu(scale * q[t, h] . k_j) * (weights[t, h] * weight_scale)   j <= positions[t]
//   scores[t, j] = -inf                                                                   j >  positions[t]
// Grid (token t, tile of kPositions positions), kWarps warps. The token's Hi x Di queries (F32) and head weights
// sit in shared memory; warp w takes the tile's positions w, w + kWarps, ...: the F32 key row k_j goes to the
// warp's shared buffer, then for each head the lanes stride Di (a warp sum per head), relu, and the weighted sum
// over heads accumulates in F32 on every lane. CUDA cores: the reference scores in FP8 on the tensor cores, which
// is the next step for long contexts (this reads each key once per token from L2 and does Hi * Di MACs per
// position on CUDA cores).
#include <cmath>

#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps, kPositions = 64;

__global__ void __launch_bounds__(kThreads) index_scores_kernel(const float* q, const float* weights,
                                                                const float* cache, const int32_t* block_table,
                                                                const int32_t* token_seq, const int32_t* positions,
                                                                int32_t max_pages, int32_t page_size, int32_t Hi,
                                                                int32_t Di, int64_t L, float scale, float weight_scale,
                                                                float* scores) {
  extern __shared__ float sm[];
  float* qs = sm;                  // [Hi][Di]
  float* ws = qs + Hi * Di;        // [Hi]
  float* ks = ws + Hi;             // [kWarps][Di]
  const int t = int(blockIdx.x), warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  const int64_t j0 = int64_t(blockIdx.y) * kPositions;
  pdl_wait();  // q and weights come from the previous kernels
  const int pos = positions[t];
  float* out = scores + int64_t(t) * L;
  if (j0 > pos) {  // the whole tile is past the token's position
    for (int64_t j = j0 + threadIdx.x; j < min(L, j0 + kPositions); j += kThreads) out[j] = -INFINITY;
    return;
  }
  for (int i = int(threadIdx.x); i < Hi * Di; i += kThreads) qs[i] = q[int64_t(t) * Hi * Di + i];
  for (int h = int(threadIdx.x); h < Hi; h += kThreads) ws[h] = weights[int64_t(t) * Hi + h] * weight_scale;
  __syncthreads();
  const int32_t* pages = block_table + int64_t(token_seq[t]) * max_pages;
  float* kw = ks + warp * Di;
  for (int64_t j = j0 + warp; j < min(L, j0 + kPositions); j += kWarps) {
    if (j > pos) {
      if (lane == 0) out[j] = -INFINITY;
      continue;
    }
    const float* krow = cache + (int64_t(pages[j / page_size]) * page_size + j % page_size) * Di;
    for (int i = lane; i < Di; i += 32) kw[i] = krow[i];
    __syncwarp();
    float acc = 0.0f;
    for (int h = 0; h < Hi; ++h) {
      const float* qh = qs + h * Di;
      float d = 0.0f;
      for (int i = lane; i < Di; i += 32) d = fmaf(qh[i], kw[i], d);
      d = warp_sum(d) * scale;
      if (d > 0.0f) acc = fmaf(d, ws[h], acc);
    }
    if (lane == 0) out[j] = acc;
    __syncwarp();  // kw is rewritten for the next position
  }
}

}  // namespace

void dsa_index_scores(const float* q, const float* weights, const float* cache, const int32_t* block_table,
                      const int32_t* token_seq, const int32_t* positions, int32_t max_pages, int32_t page_size,
                      int64_t T, int64_t Hi, int64_t Di, int64_t L, float scale, float weight_scale, float* scores,
                      cudaStream_t s) {
  if (T == 0 || L == 0) return;
  const size_t smem = size_t(Hi * Di + Hi + kWarps * Di) * sizeof(float);
  if (smem > size_t(48) << 10) check(cudaErrorInvalidValue, "dsa_index_scores: index heads too wide for shared memory");
  const dim3 grid(unsigned(T), unsigned((L + kPositions - 1) / kPositions));
  launch("dsa_index_scores", index_scores_kernel, grid, dim3(kThreads), smem, s, q, weights, cache, block_table,
         token_seq, positions, max_pages, page_size, int32_t(Hi), int32_t(Di), L, scale, weight_scale, scores);
}

}  // namespace moe::cuda
