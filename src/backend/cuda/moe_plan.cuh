#pragma once
// The MoE plan as a block-wide device function, shared by moe_plan.cu (its own kernel) and moe_route.cu
// (routing and the plan in one kernel for small batches): a counting sort of the TK (token, slot) assignments
// by expert into `perm` (expert-contiguous; within an expert in the order the atomics arrive, on which no
// consumer's result depends: each assignment's product is computed on its own and the combine sums in slot
// order), per-expert counts, and work items (expert, begin, count <= tile), padded with empty items up to
// max_items.
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

// Shared memory plan_block needs: counts, offsets, cursors and item offsets per expert, and the item total.
inline size_t plan_smem_bytes(int32_t E) { return (size_t(4) * size_t(E) + 1) * sizeof(int32_t); }

// Run by every thread of one block; sh: plan_smem_bytes(E) of shared memory.
__device__ __forceinline__ void plan_block(const int32_t* ids, int64_t TK, int32_t E, int32_t tile,
                                           int32_t max_items, int32_t* perm, int32_t* items,
                                           int32_t* counts_out, int32_t* sh) {
  int32_t* counts = sh;
  int32_t* offsets = sh + E;
  int32_t* cursor = sh + 2 * E;
  int32_t* item_off = sh + 3 * E;
  int32_t& total_items = sh[4 * E];
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
  }
  __syncthreads();
  for (int64_t a = threadIdx.x; a < TK; a += blockDim.x) {
    const int e = ids[a];
    if (e >= 0 && e < E) perm[offsets[e] + atomicAdd(&cursor[e], 1)] = int32_t(a);
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

}  // namespace moe::cuda
