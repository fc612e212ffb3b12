// MLA decode attention on wgmma for few heads (16 or 32 a CTA: Moonlight, DeepSeek-V2-Lite; r 512, rope 64),
// the absorbed form of mla_attention.cu (key = the W = 576 wide latent cache row, value = its first 512
// columns). At 16 heads a cache row feeds 30 FLOP a byte: the kernel is there to stream the cache at the copy
// rate, which mma.sync with its fragment loads does not reach on an H200 (65 % of copy, bench/RESULTS.md).
//
// The products are transposed so the 64 positions of a tile are wgmma's M (a head count of 16 is below its
// minimum M of 64) and the heads are its N:
//   S^T [64 pos][N heads] = K [64 pos][576] Q^T: 36 wgmma m64nNk16, A = the cache tile as it lands (K-major),
//     B = the query rows [N][576] (K-major);
//   O^T [512][N] += V^T [512][64 pos] P^T [64 pos][N]: per 64 latent columns (8 M-blocks) and 16 positions
//     (4 k-steps) one wgmma, A = the tile's columns read with the transpose bit (MN-major), B = P [N][64 pos]
//     (K-major), written by the softmax.
// Work split: grid (token t x N-head group, split s), the groups of one token adjacent in launch order; the
// splits, partials (m, l, O) and combine are those of mla_attention.cu. CTA: one warpgroup (128 threads), one
// CTA an SM (shared memory: two 72 KB stages). Per tile: wait for it, then the previous tile's stage is
// refilled with the next tile (one tile in flight while the warpgroup works; a second one in flight gained
// nothing: the kernel streams at ~85 % of the DRAM's peak, bench/gpu/NOTES-mla.md), S^T, the online softmax
// over the 64 positions of each head column (warp maxima meet in shared memory), P^T to shared memory, O^T.
#include <cuda.h>

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
constexpr int kThreads = 128, kMB = kR / 64;  // one warpgroup; the 8 M-blocks of O^T

// Shared memory (base 1024-aligned; every block in the 128-byte swizzle of wgmma.cuh):
//   KV [2 stages][9 blocks of 8 KB], Q [9 blocks][N rows][128 B], P [N rows][64 pos], red [4 warps][N] F32,
//   two mbarriers.
template <int kN>
struct Layout {
  static constexpr uint32_t kOffQ = 2 * kTileB, kQBlock = uint32_t(kN) * 128;
  static constexpr uint32_t kOffP = kOffQ + kKB * kQBlock, kOffRed = kOffP + kQBlock;
  static constexpr uint32_t kOffBar = kOffRed + 4 * kN * 4;
  static constexpr size_t kSmem = size_t(kOffBar) + 16 + 1024;
  static_assert(kSmem <= 227 * 1024, "shared memory of one CTA");
};

__device__ __forceinline__ void st_shared_u16(uint32_t addr, uint16_t v) {
  asm volatile("st.shared.u16 [%0], %1;" ::"r"(addr), "h"(v) : "memory");
}

// Accumulator layout of m64nNk16 (wgmma.cuh): thread (warp w, lane) holds rows 16 w + lane / 4 + 8 q and
// columns 8 j + 2 (lane % 4) + c as element 4 j + 2 q + c. Rows are positions in S^T and latent columns in
// O^T; columns are heads in both.
template <int kN, bool kTma>
__global__ void __launch_bounds__(kThreads, 1)
    mla_decode_narrow_kernel(const MlaParams p, const __grid_constant__ CUtensorMap kv_map) {
  using L = Layout<kN>;
  constexpr int kJ = kN / 8;  // column octets of a thread
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  float* const sred = reinterpret_cast<float*>(smem_raw + (base - smem_addr(smem_raw)) + L::kOffRed);

  const int groups = p.H / kN;
  const int t = int(blockIdx.x) / groups, h0 = (int(blockIdx.x) % groups) * kN, split = int(blockIdx.y);
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32, cq = 2 * (lane % 4);

  pdl_trigger();
  pdl_wait();  // positions, block table, qf and the cache come from earlier kernels

  const int32_t* sel = p.indices ? p.indices + int64_t(t) * p.K : nullptr;
  const int2 range = mla_split_range(p, sel, t, split);
  const uint32_t bar0 = base + L::kOffBar;
  if (kTma) mla_init_stage_bars(bar0, tid);
  LatentTiles<kTma, kThreads> tiles(p, sel, t, range.x, range.y, tid);
  const int ntiles = tiles.ntiles, begin = range.x, end = range.y;
  auto issue = [&](int k) {
    tiles.issue(k, base + uint32_t(k % 2) * kTileB, bar0 + 8u * uint32_t(k % 2), &kv_map);
  };

  const bool one = p.splits == 1;
  if (ntiles == 0) return mla_write_empty_split(p, t, h0, split, kN, tid);

  // Query rows: N x 72 chunks.
  {
    const uint16_t* q = p.qf + (int64_t(t) * p.H + h0) * kW;
    for (int idx = tid; idx < kN * (kW / 8); idx += kThreads) {
      const int r = idx / (kW / 8), ch = idx % (kW / 8);
      cp_async16(base + L::kOffQ + uint32_t(ch / 8) * L::kQBlock + swz(r, ch % 8),
                 q + int64_t(r) * kW + ch * 8, true);
    }
    cp_async_commit();
  }
  issue(0);

  const float scale = p.scale * kLog2e;
  float m_run[kJ][2], l_run[kJ][2];
#pragma unroll
  for (int j = 0; j < kJ; ++j)
#pragma unroll
    for (int c = 0; c < 2; ++c) m_run[j][c] = -INFINITY, l_run[j][c] = 0.0f;
  float acc[kMB][kN / 2];
#pragma unroll
  for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) acc[mb][i] = 0.0f;
    fence_acc(acc[mb]);
  }

  for (int it = 0; it < ntiles; ++it) {
    const uint32_t kv = base + uint32_t(it % 2) * kTileB;
    cp_async_wait<0>();
    if (kTma) {
      mbar_wait(bar0 + 8u * uint32_t(it % 2), uint32_t(it / 2) & 1u);
      tiles.zero_tail(kv, it);
    }
    fence_proxy_async();
    __syncthreads();  // tile it (and Q) landed; tile it-1's wgmma retired, so its stage takes tile it+1
    issue(it + 1);
    const int j0 = begin + it * kPos;

    // 1. S^T = K Q^T.
    float s[kN / 2];
#pragma unroll
    for (int i = 0; i < kN / 2; ++i) s[i] = 0.0f;
    fence_acc(s);
    wgmma_fence();
    {
      const uint64_t dk = smem_desc(opaque(kv)), dq = smem_desc(opaque(base + L::kOffQ));
#pragma unroll
      for (int kb = 0; kb < kKB; ++kb)
#pragma unroll
        for (int kk = 0; kk < 4; ++kk)
          wgmma_m64nNk16<0, 0, kN>(s, dk + desc_step(kb * kBlock + kk * 32),
                                   dq + desc_step(kb * L::kQBlock + kk * 32), kb + kk > 0);
    }
    wgmma_commit();
    wgmma_wait<0>();
    fence_acc(s);

    // 2. Online softmax down each head column (log2 domain, masked past the split's end).
    float mx[kJ][2];
#pragma unroll
    for (int j = 0; j < kJ; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        mx[j][c] = -INFINITY;
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          float& v = s[4 * j + 2 * q + c];
          v = j0 + 16 * warp + lane / 4 + 8 * q < end ? v * scale : -INFINITY;
          mx[j][c] = fmaxf(mx[j][c], v);
        }
#pragma unroll
        for (int o = 4; o < 32; o *= 2) mx[j][c] = fmaxf(mx[j][c], __shfl_xor_sync(0xffffffffu, mx[j][c], o));
        if (lane < 4) sred[warp * kN + 8 * j + cq + c] = mx[j][c];
      }
    __syncthreads();
    float alpha[kJ][2];
#pragma unroll
    for (int j = 0; j < kJ; ++j)
#pragma unroll
      for (int c = 0; c < 2; ++c) {
        const int n = 8 * j + cq + c;
        const float m_new = fmaxf(fmaxf(m_run[j][c], fmaxf(sred[n], sred[kN + n])),
                                  fmaxf(sred[2 * kN + n], sred[3 * kN + n]));
        alpha[j][c] = m_new == -INFINITY ? 1.0f : ex2(m_run[j][c] - m_new);
        float sum = 0.0f;
#pragma unroll
        for (int q = 0; q < 2; ++q) {
          const uint16_t b =
              float_to_bf16_bits(m_new == -INFINITY ? 0.0f : ex2(s[4 * j + 2 * q + c] - m_new));
          sum += bf16_bits_to_float(b);
          const int pos = 16 * warp + lane / 4 + 8 * q;  // P[n][pos]: chunk pos / 8 of row n
          st_shared_u16(base + L::kOffP + swz(n, pos / 8) + uint32_t(2 * (pos % 8)), b);
        }
        l_run[j][c] = l_run[j][c] * alpha[j][c] + sum;
        m_run[j][c] = m_new;
      }
    fence_proxy_async();
    __syncthreads();  // P written; every warp has read the maxima (the next tile may overwrite them)

    // 3. O^T = alpha O^T + V^T P^T.
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) {
#pragma unroll
      for (int j = 0; j < kJ; ++j)
#pragma unroll
        for (int q = 0; q < 2; ++q)
#pragma unroll
          for (int c = 0; c < 2; ++c) acc[mb][4 * j + 2 * q + c] *= alpha[j][c];
      fence_acc(acc[mb]);
    }
    wgmma_fence();
#pragma unroll
    for (int ks = 0; ks < kPos / 16; ++ks)
#pragma unroll
      for (int mb = 0; mb < kMB; ++mb)
        wgmma_m64nNk16<0, 1, kN>(acc[mb],
                                 smem_desc(kv + uint32_t(mb) * kBlock + uint32_t(ks) * 2048, kBlock, 1024),
                                 smem_desc(base + L::kOffP) + desc_step(ks * 32));
    wgmma_commit();
    wgmma_wait<0>();
#pragma unroll
    for (int mb = 0; mb < kMB; ++mb) fence_acc(acc[mb]);
  }
  cp_async_wait<0>();

  // Column sums: the thread's positions, the warp's lanes of one lane % 4, then the four warps.
#pragma unroll
  for (int j = 0; j < kJ; ++j)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
#pragma unroll
      for (int o = 4; o < 32; o *= 2) l_run[j][c] += __shfl_xor_sync(0xffffffffu, l_run[j][c], o);
      if (lane < 4) sred[warp * kN + 8 * j + cq + c] = l_run[j][c];
    }
  __syncthreads();
#pragma unroll
  for (int j = 0; j < kJ; ++j)
#pragma unroll
    for (int c = 0; c < 2; ++c) {
      const int n = 8 * j + cq + c, hh = h0 + n;
      const float Lsum = (sred[n] + sred[kN + n]) + (sred[2 * kN + n] + sred[3 * kN + n]);
      if (warp == 0 && lane < 4) {
        if (one && p.lse) p.lse[int64_t(t) * p.H + hh] = mla_lse(m_run[j][c], Lsum);
        if (!one)
          *reinterpret_cast<float2*>(p.ml_part + ((int64_t(split) * p.T + t) * p.H + hh) * 2) =
              make_float2(m_run[j][c], Lsum);
      }
      const float inv = one ? 1.0f / Lsum : 1.0f;
      float* o = one ? p.o_lat + (int64_t(t) * p.H + hh) * kR
                     : p.o_part + ((int64_t(split) * p.T + t) * p.H + hh) * kR;
#pragma unroll
      for (int mb = 0; mb < kMB; ++mb)
#pragma unroll
        for (int q = 0; q < 2; ++q)
          o[64 * mb + 16 * warp + lane / 4 + 8 * q] = acc[mb][4 * j + 2 * q + c] * inv;
    }
}

template <int kN>
void launch_narrow(const MlaParams& p, cudaStream_t s) {
  const dim3 grid(unsigned(p.T) * unsigned(p.H / kN), unsigned(p.splits));
  if (mla_tma_applies(p))
    launch("mla_attention_narrow", mla_decode_narrow_kernel<kN, true>, grid, dim3(kThreads),
           Layout<kN>::kSmem, s, p, mla_latent_cache_map(p));
  else
    launch("mla_attention_narrow", mla_decode_narrow_kernel<kN, false>, grid, dim3(kThreads),
           Layout<kN>::kSmem, s, p, CUtensorMap{});
}

}  // namespace

int mla_narrow_heads(int64_t H) { return H % 32 == 0 ? 32 : 16; }

void configure_mla_decode_narrow_kernel() {
  for (auto* kernel : {mla_decode_narrow_kernel<16, false>, mla_decode_narrow_kernel<16, true>})
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Layout<16>::kSmem)),
          "mla_decode_narrow smem");
  for (auto* kernel : {mla_decode_narrow_kernel<32, false>, mla_decode_narrow_kernel<32, true>})
    check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(Layout<32>::kSmem)),
          "mla_decode_narrow smem");
}

void mla_attention_narrow(const MlaParams& p, cudaStream_t s) {
  if (p.H % 16 != 0 || p.r != kR || p.dr != kW - kR)
    check(cudaErrorInvalidValue, "mla_attention_narrow: needs H % 16 == 0, r 512, rope 64");
  if (mla_narrow_heads(p.H) == 32)
    launch_narrow<32>(p, s);
  else
    launch_narrow<16>(p, s);
}

}  // namespace moe::cuda
