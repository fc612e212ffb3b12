// MLA decode attention on Hopper's warpgroup MMA (wgmma) for many heads (H % 64 == 0, r 512, rope 64): the
// absorbed form as in mla_attention.cu (key = the W = 576 wide latent cache row, value = its first 512
// columns), with 64 heads per CTA so each cache tile is read from shared memory once per 64 heads.
//
// Work split: grid (token t x 64-head tile, split s), the head tiles of one token adjacent in launch order
// (at 128 heads the two CTAs of a token run together and the second reads each tile from L2). The split
// logic, the partials (m, l, O) and the combine kernel are those of mla_attention.cu: a split's positions are
// [begin, end) from positions[t] (or the V3.2 index row's valid prefix), cut into tiles of 64 rows.
//
// CTA: 256 threads = 2 warpgroups, one CTA per SM (shared memory). Shared memory, every block [64 rows][64
// BF16] in the 128-byte swizzle of wgmma.cuh (8 KB):
//   Q   [9 blocks]: the 64 heads' absorbed query rows (576 = 9 x 64 columns), copied once;
//   KV  [2 stages][9 blocks]: cache tiles of 64 positions, a ring (tile i+1 lands while i computes), filled
//       by tensor-map copies where mla_tma_applies, else by cp.async (mla_decode_tiles.cuh). The tensor-map
//       copies spare the 256 threads 18 cp.async and their address arithmetic a tile (~20 % of the warps'
//       stall samples at 128 heads, batch 64: 13 % faster on an H100, bench/RESULTS.md);
//   P   [1 block]: softmax weights [64 heads][64 positions] BF16;
//   row max and row sum exchange between the warpgroups, [2][64] F32 each.
// Per tile:
//   1. S = Q K^T: warpgroup w computes the scores of positions 32w .. 32w+31 for all 64 heads (36 wgmma
//      m64n32k16, A = Q K-major, B = the tile's rows K-major), 16 F32 per thread.
//   2. Online softmax in registers (log2 domain, masked past the split's end): quad max per row, the two
//      warpgroups' row maxima meet in shared memory (barrier), so both hold the same running max m and the
//      same alpha = 2^(m_old - m_new); P = 2^(S - m) rounded to BF16 into P (l sums the rounded values).
//   3. O = alpha O + P V: warpgroup w owns output columns 256w .. 256w+255 (128 F32 per thread): 4 wgmma
//      m64n256k16 with A = P (K-major, K = positions) and B = the tile's columns 256w.. (MN-major: positions
//      are rows, the transpose bit).
// Three barriers per tile: tile landed and the previous tile's wgmma retired (the next copy then reuses its
// stage), row maxima exchanged, P written (after fence.proxy.async: the tensor cores read it via the async
// proxy). The library is compiled for sm_90a only, so wherever this binary runs it has wgmma.
#include <cuda.h>
#include <cudaTypedefs.h>

#include <algorithm>
#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/mla_decode_tiles.cuh"
#include "backend/cuda/tensor_core.cuh"
#include "backend/cuda/wgmma.cuh"

namespace moe::cuda {

namespace {

using mla_tiles::kBlock, mla_tiles::kKB, mla_tiles::kLog2e, mla_tiles::kPos, mla_tiles::kR, mla_tiles::kTileB,
    mla_tiles::kW;
constexpr int kHeads = 64, kThreads = 256;
constexpr uint32_t kOffKV = kTileB, kOffP = 3 * kTileB, kOffMax = kOffP + kBlock, kOffSum = kOffMax + 2 * 64 * 4;
constexpr uint32_t kOffBar = kOffSum + 2 * 64 * 4;     // the two stages' mbarriers (tensor-map copies)
constexpr size_t kSmem = size_t(kOffBar) + 16 + 1024;  // + alignment of the base to 1024
static_assert(kSmem <= 227 * 1024, "shared memory of one CTA");
static_assert(kHeads == 64 && kPos == 64 && kThreads == 256, "two warpgroups over a 64 x 64 tile");

__device__ __forceinline__ void st_shared_u32(uint32_t addr, uint32_t v) {
  asm volatile("st.shared.u32 [%0], %1;" ::"r"(addr), "r"(v) : "memory");
}

// kTma: cache tiles by tensor-map copies, else by cp.async (mla_decode_tiles.cuh).
template <bool kTma>
__global__ void __launch_bounds__(kThreads, 1)
    mla_decode_wgmma_kernel(const MlaParams p, const __grid_constant__ CUtensorMap kv_map) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  uint8_t* const sgen = smem_raw + (base - smem_addr(smem_raw));  // generic pointer to `base`
  float* const smax = reinterpret_cast<float*>(sgen + kOffMax);   // [2 warpgroups][64 heads]
  float* const ssum = reinterpret_cast<float*>(sgen + kOffSum);

  const int groups = p.H / kHeads;
  const int t = int(blockIdx.x) / groups, h0 = (int(blockIdx.x) % groups) * kHeads, split = int(blockIdx.y);
  const int tid = int(threadIdx.x), wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;

  pdl_trigger();
  pdl_wait();  // positions, block table, qf and the cache come from earlier kernels

  const int32_t* sel = p.indices ? p.indices + int64_t(t) * p.K : nullptr;
  const int2 range = mla_split_range(p, sel, t, split);
  const int begin = range.x, end = range.y;
  const uint32_t bar0 = base + kOffBar;
  if (kTma) mla_init_stage_bars(bar0, tid);
  LatentTiles<kTma, kThreads> tiles(p, sel, t, begin, end, tid);
  const int ntiles = tiles.ntiles;
  auto issue = [&](int k) {  // tile k into stage k % 2
    tiles.issue(k, base + kOffKV + uint32_t(k % 2) * kTileB, bar0 + 8u * uint32_t(k % 2), &kv_map);
  };

  const bool one = p.splits == 1;
  if (ntiles == 0) return mla_write_empty_split(p, t, h0, split, kHeads, tid);

  // Query tile (one group with tile 0): 64 rows x 72 chunks, 18 per thread.
  {
    const uint16_t* q = p.qf + (int64_t(t) * p.H + h0) * kW;
#pragma unroll
    for (int i = 0; i < kHeads * (kW / 8) / kThreads; ++i) {
      const int idx = tid + kThreads * i, r = idx / (kW / 8), ch = idx % (kW / 8);
      cp_async16(base + uint32_t(ch / 8) * kBlock + swz(r, ch % 8), q + int64_t(r) * kW + ch * 8, true);
    }
    cp_async_commit();  // waited for with tile 0 (cp_async_wait<0> waits for committed groups only)
  }
  issue(0);

  // Accumulator rows of this thread (wgmma layout, per warp as mma m16n8): rows 16 warp + lane/4 + 8 q;
  // element 4 j + 2 q + c is column 8 j + 2 (lane % 4) + c of the warpgroup's n-range.
  const int r0 = 16 * warp + lane / 4, cq = 2 * (lane % 4);
  const float scale = p.scale * kLog2e;
  float m_run[2] = {-INFINITY, -INFINITY}, l_run[2] = {0.0f, 0.0f};
  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
  fence_acc(acc);

  for (int it = 0; it < ntiles; ++it) {
    const uint32_t kv = base + kOffKV + uint32_t(it % 2) * kTileB;
    cp_async_wait<0>();
    if (kTma) {
      mbar_wait(bar0 + 8u * uint32_t(it % 2), uint32_t(it / 2) & 1u);
      tiles.zero_tail(kv, it);
    }
    fence_proxy_async();
    __syncthreads();  // tile it (and Q) landed; both warpgroups retired tile it-1's wgmma
    issue(it + 1);
    // Descriptors are formed next to their wgmma from bases the compiler cannot hoist (opaque), so the 36 query
    // descriptors do not sit in 72 registers for the whole loop next to the 144 accumulators.
    const uint64_t dq = smem_desc(opaque(base)), dk = smem_desc(opaque(kv + uint32_t(wg) * 32 * 128));
    const int j0 = begin + it * kPos;

    // 1. Scores of positions 32 wg .. 32 wg + 31.
    float s[16];
#pragma unroll
    for (int i = 0; i < 16; ++i) s[i] = 0.0f;
    fence_acc(s);  // register writes before wgmma.fence (ptxas otherwise injects waits)
    wgmma_fence();
#pragma unroll
    for (int kb = 0; kb < kKB; ++kb)
#pragma unroll
      for (int kk = 0; kk < 4; ++kk)
        wgmma_m64n32k16(s, dq + desc_step(kb * kBlock + kk * 32), dk + desc_step(kb * kBlock + kk * 32), kb + kk > 0);
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(s);

    // 2. Online softmax.
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int j = 0; j < 4; ++j)
#pragma unroll
      for (int q = 0; q < 2; ++q)
#pragma unroll
        for (int c = 0; c < 2; ++c) {
          const int pos = j0 + 32 * wg + 8 * j + cq + c;
          float& v = s[4 * j + 2 * q + c];
          v = pos < end ? v * scale : -INFINITY;
          mx[q] = fmaxf(mx[q], v);
        }
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      mx[q] = fmaxf(mx[q], __shfl_xor_sync(0xffffffffu, mx[q], 1));
      mx[q] = fmaxf(mx[q], __shfl_xor_sync(0xffffffffu, mx[q], 2));
      if (lane % 4 == 0) smax[wg * 64 + r0 + 8 * q] = mx[q];
    }
    __syncthreads();
    float alpha[2];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int r = r0 + 8 * q;
      const float m_new = fmaxf(m_run[q], fmaxf(smax[r], smax[64 + r]));
      alpha[q] = m_new == -INFINITY ? 1.0f : ex2(m_run[q] - m_new);
      float sum = 0.0f;
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float v0 = s[4 * j + 2 * q], v1 = s[4 * j + 2 * q + 1];
        const uint16_t b0 = float_to_bf16_bits(m_new == -INFINITY ? 0.0f : ex2(v0 - m_new));
        const uint16_t b1 = float_to_bf16_bits(m_new == -INFINITY ? 0.0f : ex2(v1 - m_new));
        sum += bf16_bits_to_float(b0) + bf16_bits_to_float(b1);
        // P[r][32 wg + 8 j + cq .. +1]: chunk 4 wg + j of row r, byte 2 cq inside it.
        st_shared_u32(base + kOffP + swz(r, 4 * wg + j) + uint32_t(2 * cq), uint32_t(b0) | (uint32_t(b1) << 16));
      }
      l_run[q] = l_run[q] * alpha[q] + sum;
      m_run[q] = m_new;
    }
    fence_proxy_async();
    __syncthreads();

    // 3. O = alpha O + P V over columns 256 wg ..
#pragma unroll
    for (int j = 0; j < 32; ++j) {
      acc[4 * j] *= alpha[0];
      acc[4 * j + 1] *= alpha[0];
      acc[4 * j + 2] *= alpha[1];
      acc[4 * j + 3] *= alpha[1];
    }
    fence_acc(acc);
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kPos / 16; ++ks)
      wgmma_m64n256k16<1>(acc, smem_desc(base + kOffP + ks * 32),
                          smem_desc(kv + uint32_t(4 * wg) * kBlock + uint32_t(ks) * 2048, kBlock, 1024));
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(acc);
  }
  cp_async_wait<0>();

  // Row sums: the quad's columns, then the two warpgroups' halves.
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    l_run[q] += __shfl_xor_sync(0xffffffffu, l_run[q], 1);
    l_run[q] += __shfl_xor_sync(0xffffffffu, l_run[q], 2);
    if (lane % 4 == 0) ssum[wg * 64 + r0 + 8 * q] = l_run[q];
  }
  __syncthreads();
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int r = r0 + 8 * q, hh = h0 + r;
    const float L = ssum[r] + ssum[64 + r];
    if (wg == 0 && lane % 4 == 0) {
      if (one && p.lse) p.lse[int64_t(t) * p.H + hh] = mla_lse(m_run[q], L);
      if (!one)
        *reinterpret_cast<float2*>(p.ml_part + ((int64_t(split) * p.T + t) * p.H + hh) * 2) = make_float2(m_run[q], L);
    }
    const float inv = one ? 1.0f / L : 1.0f;
    float* o = (one ? p.o_lat + (int64_t(t) * p.H + hh) * kR : p.o_part + ((int64_t(split) * p.T + t) * p.H + hh) * kR) +
               256 * wg + cq;
#pragma unroll
    for (int j = 0; j < 32; ++j)
      *reinterpret_cast<float2*>(o + 8 * j) = make_float2(acc[4 * j + 2 * q] * inv, acc[4 * j + 2 * q + 1] * inv);
  }
}

}  // namespace

bool mla_wgmma_applies(int64_t H, int64_t r, int64_t dr) {
  return H > 0 && H % 16 == 0 && r == kR && dr == kW - kR;
}
int mla_wgmma_heads(int64_t H) { return H % kHeads == 0 ? kHeads : mla_narrow_heads(H); }
bool mla_wgmma_preferred(int64_t T, int64_t H, int64_t capacity) {
  return H % kHeads == 0 || capacity >= 2048 || T * capacity >= 32768;
}

void configure_mla_decode_wgmma_kernel() {
  for (auto* kernel : {mla_decode_wgmma_kernel<false>, mla_decode_wgmma_kernel<true>})
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)),
          "mla_decode_wgmma smem");
}

bool mla_tma_applies(const MlaParams& p) {
  const int ps = p.page_size;
  return !p.indices && p.cache_rows > 0 && ps >= 8 && ps % 8 == 0 && (kPos % ps == 0 || ps % kPos == 0);
}

// cuTensorMapEncodeTiled comes from the driver through the runtime (no link to libcuda).
CUtensorMap mla_latent_cache_map(const MlaParams& p) {
  static const PFN_cuTensorMapEncodeTiled_v12000 encode = [] {
    void* fn = nullptr;
    cudaDriverEntryPointQueryResult q{};
    check(cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &fn, 12000, cudaEnableDefault, &q),
          "cuTensorMapEncodeTiled entry point");
    if (q != cudaDriverEntryPointSuccess || !fn)
      check(cudaErrorNotSupported, "cuTensorMapEncodeTiled entry point");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(fn);
  }();
  CUtensorMap map{};
  const cuuint64_t dims[2] = {cuuint64_t(kW), cuuint64_t(p.cache_rows)}, strides[1] = {cuuint64_t(kW) * 2};
  const cuuint32_t box[2] = {64, cuuint32_t(std::min(p.page_size, kPos))}, elem[2] = {1, 1};
  const CUresult r = encode(&map, CU_TENSOR_MAP_DATA_TYPE_BFLOAT16, 2, const_cast<uint16_t*>(p.cache), dims,
                            strides, box, elem, CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                            CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    check(cudaErrorInvalidValue, "mla_attention_wgmma: cuTensorMapEncodeTiled of the latent cache");
  return map;
}

void mla_attention_wgmma(const MlaParams& p, cudaStream_t s) {
  if (!mla_wgmma_applies(p.H, p.r, p.dr))
    check(cudaErrorInvalidValue, "mla_attention_wgmma: needs H % 16 == 0, r 512, rope 64");
  if (p.H % kHeads != 0) return mla_attention_narrow(p, s);  // mla_decode_narrow.cu
  const dim3 grid(unsigned(p.T) * unsigned(p.H / kHeads), unsigned(p.splits));
  if (mla_tma_applies(p))
    launch("mla_attention_wgmma", mla_decode_wgmma_kernel<true>, grid, dim3(kThreads), kSmem, s, p,
           mla_latent_cache_map(p));
  else
    launch("mla_attention_wgmma", mla_decode_wgmma_kernel<false>, grid, dim3(kThreads), kSmem, s, p,
           CUtensorMap{});
}

}  // namespace moe::cuda
