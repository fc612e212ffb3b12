// DeepSeek Sparse Attention on the GPU, the selection (the CPU twin is backend/cpu/dsa_topk.cpp): per token, the
// K visible positions of highest index score (equal scores: the lower position first), or every visible position
// while there are no more than K; ascending, padded with -1.
// One block per token, no host synchronisation (graph-capturable):
//   1. Radix select of the K-th largest score over the visible positions: scores map to unsigned keys that sort
//      like the floats; four passes of 8 bits from the top each histogram the keys that share the prefix found so
//      far (shared-memory atomics), and the bin holding the K-th largest fixes the next digit. The result is the
//      threshold key and how many of the keys equal to it are taken (the rest of K after the larger ones).
//   2. Compaction in position order: chunks of kThreads positions; a block scan numbers the keys equal to the
//      threshold (the first `take_equal` of them, in position order, are taken: the lower positions) and a
//      second scan gives each taken position its slot, so the output is ascending.
#include <cub/block/block_scan.cuh>

#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

constexpr int kThreads = 256, kBins = 256;
using Scan = cub::BlockScan<int, kThreads>;

// Larger float -> larger key (-inf lowest of non-NaN); -0.0 and +0.0 are one key, as they compare equal on the CPU.
__device__ __forceinline__ uint32_t order_key(float f) {
  const uint32_t u = __float_as_uint(f == 0.0f ? 0.0f : f);
  return (u & 0x80000000u) ? ~u : (u | 0x80000000u);
}

__global__ void __launch_bounds__(kThreads) topk_kernel(const float* scores, const int32_t* positions, int64_t L,
                                                        int32_t K, int32_t* indices) {
  __shared__ int hist[kBins];
  __shared__ uint32_t s_prefix;
  __shared__ int s_remaining, s_carry_eq, s_carry_out;
  __shared__ typename Scan::TempStorage scan;
  const int t = int(blockIdx.x), tid = int(threadIdx.x);
  pdl_wait();
  const int visible = positions[t] + 1;
  const float* s = scores + int64_t(t) * L;
  int32_t* out = indices + int64_t(t) * K;
  if (visible <= K) {  // dense: every visible position
    for (int i = tid; i < K; i += kThreads) out[i] = i < visible ? i : -1;
    return;
  }
  // 1. Radix select.
  uint32_t prefix = 0, mask = 0;
  int remaining = K;  // how many of the keys matching the prefix are still to be taken
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < kBins; b += kThreads) hist[b] = 0;
    __syncthreads();
    for (int j = tid; j < visible; j += kThreads) {
      const uint32_t key = order_key(s[j]);
      if ((key & mask) == prefix) atomicAdd(&hist[(key >> shift) & 0xff], 1);
    }
    __syncthreads();
    if (tid == 0) {
      int above = 0, b = kBins - 1;
      for (; b > 0 && above + hist[b] < remaining; --b) above += hist[b];
      s_prefix = prefix | (uint32_t(b) << shift);
      s_remaining = remaining - above;
    }
    __syncthreads();
    prefix = s_prefix;
    remaining = s_remaining;
    mask |= 0xffu << shift;
    __syncthreads();  // hist is cleared again
  }
  const uint32_t threshold = prefix;
  const int take_equal = remaining;
  // 2. Ordered compaction.
  if (tid == 0) {
    s_carry_eq = 0;
    s_carry_out = 0;
  }
  __syncthreads();
  for (int base = 0; base < visible; base += kThreads) {
    const int j = base + tid;
    const uint32_t key = j < visible ? order_key(s[j]) : 0u;
    const bool eq = j < visible && key == threshold;
    int eq_rank, eq_total;
    Scan(scan).ExclusiveSum(eq ? 1 : 0, eq_rank, eq_total);
    __syncthreads();
    const bool take = j < visible && (key > threshold || (eq && s_carry_eq + eq_rank < take_equal));
    int slot, taken;
    Scan(scan).ExclusiveSum(take ? 1 : 0, slot, taken);
    if (take) out[s_carry_out + slot] = j;
    __syncthreads();
    if (tid == 0) {
      s_carry_eq += eq_total;
      s_carry_out += taken;
    }
    __syncthreads();
  }
  for (int i = s_carry_out + tid; i < K; i += kThreads) out[i] = -1;  // only if scores held NaN: never taken
}

}  // namespace

void dsa_topk(const float* scores, const int32_t* positions, int64_t T, int64_t L, int64_t K, int32_t* indices,
              cudaStream_t s) {
  if (T == 0) return;
  launch("dsa_topk", topk_kernel, dim3(unsigned(T)), dim3(kThreads), 0, s, scores, positions, L, int32_t(K), indices);
}

}  // namespace moe::cuda
