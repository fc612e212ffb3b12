// Token permutation for the routed experts, on the device (no host round trip, so a step stays capturable):
// a counting sort of the T*k (token, slot) assignments by expert gives `perm` (expert-contiguous assignment
// indices) and work items (expert, begin, count <= tile) for the grouped GEMV/GEMM; then the combine that
// adds each token's k expert outputs with their routing weights in slot order (deterministic). Ids -1 (no
// expert, weight 0) get no work item; they end `perm`, so that it stays a permutation of every assignment for
// the kernels that gather and scatter all T*k rows, and the combine skips their (unwritten) rows.
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

// One block. counts, offsets and cursors in shared memory (E <= 1024).
__global__ void __launch_bounds__(1024)
    plan_kernel(const int32_t* ids, int64_t TK, int32_t E, int32_t tile, int32_t max_items, int32_t* perm,
                int32_t* items, int32_t* counts_out) {
  extern __shared__ int32_t sh[];
  int32_t* counts = sh;
  int32_t* offsets = sh + E;
  int32_t* cursor = sh + 2 * E;
  int32_t* item_off = sh + 3 * E;
  __shared__ int32_t total_items, total_rows, skipped;
  pdl_trigger();
  pdl_wait();
  for (int e = threadIdx.x; e < E; e += blockDim.x) counts[e] = cursor[e] = 0;
  __syncthreads();
  for (int64_t a = threadIdx.x; a < TK; a += blockDim.x) {
    const int e = ids[a];
    if (e >= 0 && e < E) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  if (threadIdx.x == 0) {
    int32_t off = 0, it = 0;
    for (int e = 0; e < E; ++e) {
      offsets[e] = off;
      item_off[e] = it;
      off += counts[e];
      it += (counts[e] + tile - 1) / tile;
    }
    total_items = it;
    total_rows = off;
    skipped = 0;
  }
  __syncthreads();
  for (int64_t a = threadIdx.x; a < TK; a += blockDim.x) {
    const int e = ids[a];
    if (e >= 0 && e < E) perm[offsets[e] + atomicAdd(&cursor[e], 1)] = int32_t(a);
    else perm[total_rows + atomicAdd(&skipped, 1)] = int32_t(a);
  }
  for (int e = threadIdx.x; e < E; e += blockDim.x) {
    if (counts_out) counts_out[e] = counts[e];
    const int n = (counts[e] + tile - 1) / tile;
    for (int c = 0; c < n && item_off[e] + c < max_items; ++c) {
      int32_t* item = items + 3 * (item_off[e] + c);
      item[0] = e;
      item[1] = offsets[e] + c * tile;
      item[2] = min(tile, counts[e] - c * tile);
    }
  }
  for (int i = total_items + threadIdx.x; i < max_items; i += blockDim.x) {
    items[3 * i] = 0;
    items[3 * i + 1] = 0;
    items[3 * i + 2] = 0;
  }
}

__global__ void combine_kernel(const float* y, const float* w, int32_t k, int64_t D, const float* plus,
                               float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.y;
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j)
      if (w[t * k + j] != 0.0f) acc = fmaf(w[t * k + j], y[(t * k + j) * D + d], acc);  // 0: an id -1
    out[t * D + d] = plus ? plus[t * D + d] + acc : acc;
  }
}

// One thread per float4 of a token's output row, all k expert rows loaded before the sum (same order of
// fmaf as combine_kernel, so the same result).
constexpr int kCombineMaxK = 12, kCombineThreads = 128;  // top 8 and the shared experts as routed ones
__global__ void __launch_bounds__(kCombineThreads)
    combine_vec_kernel(const float* y, const float* w, int32_t k, int64_t D, const float* plus, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.y, c = int64_t(blockIdx.x) * kCombineThreads + threadIdx.x;
  if (c >= D / 4) return;
  float4 v[kCombineMaxK];
  float wj[kCombineMaxK];
#pragma unroll
  for (int j = 0; j < kCombineMaxK; ++j)
    if (j < k) {
      v[j] = reinterpret_cast<const float4*>(y + (t * k + j) * D)[c];
      wj[j] = w[t * k + j];
    }
  float4 acc = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
#pragma unroll
  for (int j = 0; j < kCombineMaxK; ++j)
    if (j < k && wj[j] != 0.0f) {  // weight 0: an id -1 (no expert), its row of y unwritten
      acc.x = fmaf(wj[j], v[j].x, acc.x);
      acc.y = fmaf(wj[j], v[j].y, acc.y);
      acc.z = fmaf(wj[j], v[j].z, acc.z);
      acc.w = fmaf(wj[j], v[j].w, acc.w);
    }
  if (plus) {
    const float4 b = reinterpret_cast<const float4*>(plus + t * D)[c];
    acc = make_float4(b.x + acc.x, b.y + acc.y, b.z + acc.z, b.w + acc.w);
  }
  reinterpret_cast<float4*>(out + t * D)[c] = acc;
}

__global__ void gather_bf16_kernel(const float* x, const int32_t* perm, int32_t k, int64_t D, uint16_t* xp,
                                   uint16_t* xp_lo) {
  const int64_t i = blockIdx.y;
  const float* src = x + int64_t(perm[i] / k) * D;
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x) {
    const float v = src[d];
    const uint16_t h = float_to_bf16_bits(v);
    xp[i * D + d] = h;
    if (xp_lo) xp_lo[i * D + d] = float_to_bf16_bits(v - bf16_bits_to_float(h));
  }
}

__global__ void scatter_rows_kernel(const float* yp, const int32_t* perm, int64_t D, float* y) {
  const int64_t i = blockIdx.y;
  float* dst = y + int64_t(perm[i]) * D;
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x)
    dst[d] = yp[i * D + d];
}

unsigned col_blocks(int64_t D) { return unsigned(std::min<int64_t>((D + 255) / 256, 32)); }

}  // namespace

void moe_plan(const int32_t* ids, int64_t TK, int32_t E, int32_t tile, int32_t max_items, int32_t* perm,
              int32_t* items, int32_t* counts, cudaStream_t s) {
  if (E > 1024) check(cudaErrorInvalidValue, "moe_plan: more than 1024 experts");
  launch("moe_plan", plan_kernel, 1, 1024, size_t(4 * E) * sizeof(int32_t), s, ids, TK, E, tile, max_items,
         perm, items, counts);
}

void moe_combine(const float* y, const float* w, int64_t T, int32_t k, int64_t D, const float* plus,
                 float* out, cudaStream_t s) {
  if (T == 0) return;
  const bool aligned = ((reinterpret_cast<uintptr_t>(y) | reinterpret_cast<uintptr_t>(out) |
                         reinterpret_cast<uintptr_t>(plus)) &
                        15) == 0;
  if (k <= kCombineMaxK && D % 4 == 0 && aligned) {
    const unsigned bx = unsigned((D / 4 + kCombineThreads - 1) / kCombineThreads);
    launch("moe_combine", combine_vec_kernel, dim3(bx, unsigned(T)), kCombineThreads, 0, s, y, w, k, D, plus,
           out);
    return;
  }
  launch("moe_combine", combine_kernel, dim3(col_blocks(D), unsigned(T)), 256, 0, s, y, w, k, D, plus, out);
}

void moe_gather_bf16(const float* x, const int32_t* perm, int64_t TK, int32_t k, int64_t D, uint16_t* xp,
                     cudaStream_t s, uint16_t* xp_lo) {
  if (TK == 0) return;
  gather_bf16_kernel<<<dim3(col_blocks(D), unsigned(TK)), 256, 0, s>>>(x, perm, k, D, xp, xp_lo);
  check_launch("moe_gather_bf16");
}

void moe_scatter_rows(const float* yp, const int32_t* perm, int64_t TK, int64_t D, float* y, cudaStream_t s) {
  if (TK == 0) return;
  scatter_rows_kernel<<<dim3(col_blocks(D), unsigned(TK)), 256, 0, s>>>(yp, perm, D, y);
  check_launch("moe_scatter_rows");
}

}  // namespace moe::cuda
