#pragma once
// Cache tiles of the wgmma MLA decode kernels (mla_decode_wgmma.cu: 64 heads a CTA; mla_decode_narrow.cu: 16
// or 32): 64 cached positions of one split, each row W = 576 BF16 (512 latent + 64 rope), landing in shared
// memory as 9 blocks [64 rows][64 BF16] in the 128-byte swizzle of wgmma.cuh (8 KB each, 72 KB a tile).
//
// Two ways in:
//   kTma: warp 0 issues tensor-map copies (the TMA unit), one box of 64 columns by R = min(page_size, 64)
//   rows
//     (a page's run of the tile) each, completing on the stage's mbarrier with the bytes of the runs that
//     start before the end; rows past the end are then zeroed in shared memory (zero_tail): a page's rows
//     past its sequence's length may hold anything, and P = 0 times a NaN would still be NaN. Where
//     mla_tma_applies.
//   else: every thread cp.asyncs its share of each row (any page size, V3.2's gathered rows), rows past the
//   end
//     zero-filled, one commit group a tile.
// A tile's page entries are looked up one tile ahead (the lane or thread that copies a run or row holds
// them).
#include <cuda.h>

#include <cstdint>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/tensor_core.cuh"
#include "backend/cuda/wgmma.cuh"

namespace moe::cuda {

namespace mla_tiles {
constexpr int kR = 512, kW = 576, kKB = kW / 64, kPos = 64;
constexpr uint32_t kBlock = 64 * 128;                // one swizzled [64][64] BF16 block
constexpr uint32_t kTileB = uint32_t(kKB) * kBlock;  // 72 KB: a cache tile
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
}  // namespace mla_tiles

// The natural-log log-sum-exp from a log2-domain running max m and sum l (the kernels' softmax state).
__device__ __forceinline__ float mla_lse(float m, float l) { return (m + log2f(l)) * mla_tiles::kLn2; }

__device__ __forceinline__ void st_shared_zero16(uint32_t addr) {
  asm volatile("st.shared.v4.u32 [%0], {%1, %1, %1, %1};" ::"r"(addr), "r"(0u) : "memory");
}

// Positions [begin, end) of token t's split `split` (p.splits of them, each a whole number of tiles): 0 ..
// positions[t] or the valid prefix of V3.2's index row sel, the contract of mla_attention.cu.
__device__ __forceinline__ int2 mla_split_range(const MlaParams& p, const int32_t* sel, int t, int split) {
  const int len = sel ? valid_prefix(sel, p.K) : p.positions[t] + 1;
  int split_len = (len + p.splits - 1) / p.splits;
  split_len = (split_len + mla_tiles::kPos - 1) / mla_tiles::kPos * mla_tiles::kPos;
  const int begin = split * split_len;
  return make_int2(begin, min(len, begin + split_len));
}

// The two stages' mbarriers (tensor-map copies) at bar0 and bar0 + 8, initialised before any thread uses
// them.
__device__ __forceinline__ void mla_init_stage_bars(uint32_t bar0, int tid) {
  if (tid == 0) {
    mbar_init(bar0, 1);
    mbar_init(bar0 + 8, 1);
    asm volatile("fence.mbarrier_init.release.cluster;" ::: "memory");
  }
  __syncthreads();
}

// An empty split's outputs for heads h0 .. h0 + heads - 1 (threads tid < heads), the contract of
// mla_attention.cu: (m = -inf, l = 0) and no O; with one split, lse = -inf.
__device__ __forceinline__ void mla_write_empty_split(const MlaParams& p, int t, int h0, int split, int heads,
                                                      int tid) {
  if (tid >= heads) return;
  if (p.splits == 1 && p.lse) p.lse[int64_t(t) * p.H + h0 + tid] = -INFINITY;
  if (p.splits > 1)
    *reinterpret_cast<float2*>(p.ml_part + ((int64_t(split) * p.T + t) * p.H + h0 + tid) * 2) =
        make_float2(-INFINITY, 0.0f);
}

// The tiles of token t's split [begin, end) for a CTA of kThreads threads (a multiple of 64).
template <bool kTma, int kThreads>
struct LatentTiles {
  static constexpr int kPos = mla_tiles::kPos, kW = mla_tiles::kW, kKB = mla_tiles::kKB;
  static constexpr int kPerRow = kThreads / kPos;  // cp.async: threads a row
  static_assert(kThreads % kPos == 0 && (kW / 8) % kPerRow == 0, "cp.async shares of a row");
  const int32_t* sel;    // V3.2's index row, or null: positions begin .. end - 1
  const int32_t* pages;  // the sequence's block-table row
  const uint16_t* cache;
  int begin, end, ntiles, page_size, tid;
  int crow;  // kTma: first row of lane's run (lane * R); else the row this thread copies
  int next_page = 0, next_off = -1;

  __device__ LatentTiles(const MlaParams& p, const int32_t* sel_, int t, int begin_, int end_, int tid_)
      : sel(sel_),
        pages(p.block_table + int64_t(p.token_seq[t]) * p.max_pages),
        cache(p.cache),
        begin(begin_),
        end(end_),
        ntiles(end_ > begin_ ? (end_ - begin_ + kPos - 1) / kPos : 0),
        page_size(p.page_size),
        tid(tid_) {
    crow = kTma ? (tid % 32) * min(page_size, kPos) : tid / kPerRow;
    if (ntiles > 0 && (!kTma || (tid < 32 && crow < kPos))) lookup(begin + crow);
  }
  // Position j's page entry and offset in it (-1: past the end).
  __device__ void lookup(int j) {
    const int pj = j < end ? (sel ? sel[j] : j) : 0;
    next_off = j < end ? pj % page_size : -1;
    if (j < end) next_page = pages[pj / page_size];
  }
  // Tile k into the stage at shared address dst (tensor maps: completing on the mbarrier bar). The cp.async
  // path always commits one group, so cp_async_wait<0> before a tile's use covers it and what came before.
  __device__ void issue(int k, uint32_t dst, uint32_t bar, const CUtensorMap* map) {
    if (kTma) {
      if (k >= ntiles || tid >= 32) return;
      const int lane = tid, R = min(page_size, kPos), runs = kPos / R, j0 = begin + k * kPos;
      const int live = min(runs, (end - j0 + R - 1) / R);  // runs with a first position before the end
      if (lane == 0) mbar_expect_tx(bar, uint32_t(live * R * kW * 2));
      __syncwarp();
      const int row = next_page * page_size + max(next_off, 0);
      for (int i0 = 0; i0 < runs * kKB; i0 += 32) {
        const int i = i0 + lane, u = min(i / kKB, runs - 1), kb = i % kKB;
        const int urow = __shfl_sync(0xffffffffu, row, u);
        if (i < runs * kKB && u < live)
          tma_load_2d(dst + uint32_t(kb) * mla_tiles::kBlock + uint32_t(u * R) * 128u, map, kb * 64, urow,
                      bar);
      }
      if (k + 1 < ntiles && crow < kPos) lookup(begin + (k + 1) * kPos + crow);
      return;
    }
    if (k < ntiles) {
      const int row = next_off >= 0 ? next_page * page_size + next_off : -1;
      const uint16_t* src = cache + int64_t(max(row, 0)) * kW;
#pragma unroll
      for (int i = 0; i < kW / 8 / kPerRow; ++i) {
        const int ch = tid % kPerRow + kPerRow * i;
        cp_async16(dst + uint32_t(ch / 8) * mla_tiles::kBlock + swz(crow, ch % 8), src + ch * 8, row >= 0);
      }
      if (k + 1 < ntiles) lookup(begin + (k + 1) * kPos + crow);
    }
    cp_async_commit();
  }
  // kTma, once tile `it` (at kv) has landed: zero its rows past the end (all kThreads threads).
  __device__ void zero_tail(uint32_t kv, int it) const {
    const int valid = end - (begin + it * kPos);
    for (int idx = tid; valid < kPos && idx < (kPos - valid) * kKB * 8; idx += kThreads) {
      const int rr = valid + idx / (kKB * 8), ch = idx % (kKB * 8);
      st_shared_zero16(kv + uint32_t(ch / 8) * mla_tiles::kBlock + swz(rr, ch % 8));
    }
  }
};

// Dense attention over a cache of known rows whose page runs fill whole 8-row swizzle groups and tile 64-row
// tiles (page_size a multiple of 8 dividing 64, or a multiple of 64) takes tensor-map copies
// (mla_decode_wgmma.cu).
bool mla_tma_applies(const MlaParams& p);
// The cache as a 2-D tensor [cache_rows, 576] BF16 with boxes of min(page_size, 64) rows x 64 columns in the
// 128-byte swizzle.
CUtensorMap mla_latent_cache_map(const MlaParams& p);

}  // namespace moe::cuda
