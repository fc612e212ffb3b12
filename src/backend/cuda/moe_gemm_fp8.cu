// Routed experts of FP8 checkpoints in W8A8 (--cuda-prefill fp8), prefill and decode batches: one grouped
// launch per projection on the Hopper tensor cores, wgmma with E4M3 operands in shared memory.
//
// Problem (as moe_gemm.cu, whose structure this follows). Sorted row i (moe_plan's expert order) of work item
// (e, begin, count <= 128) reads the E4M3 activation row a_rows[i] / a_div with its 1x128 F32 scales; expert
// e's weight is E4M3 [N, K] with 128x128 F32 block scales. Per CTA (128 rows x 128 weight rows):
//   acc[128, 128] = sum over K blocks kb of  (A[rows, kb] @ W[cols, kb]^T) * xs[row, kb] * ws[col / 128, kb]
// in F32 (DeepSeek's promotion: each 128-deep block is a fresh wgmma accumulation, "part", scaled and added to
// acc in F32 registers, so the tensor cores' limited FP8 accumulator width only ever spans one block).
// Epilogues:
//   swiglu: weight rows 0..63 of the tile are gate rows n0 .. n0+63 and rows 64..127 the same up rows (n0 a
//     multiple of 64, so both lie in one 128-row scale block): h = silu(g) * u, F32 or rounded to BF16 [rows, N],
//     sorted order (quantised afterwards per 1x128 tile for the down projection: a tile spans two CTAs).
//   plain: F32 rows written to y[y_rows[i]] (the down projection scattered back to assignment order) or y[i].
//
// A math warpgroup owns 64 tile rows and all 128 columns (wgmma m64n128k32: 64 F32 registers for acc and 64 for
// each of two part buffers per thread). K advances in blocks of 128 E4M3 = 128 bytes per row (the 128-byte
// swizzle atom, and exactly one scale block). Shared layout per stage: A [64 or 128 rows][128 B] then B [128][128 B],
// 16-byte chunk c of row r at chunk c ^ (r % 8), 1024-byte aligned. Rows past count, weight rows past N and
// columns past K are zero-filled (cp.async with source size 0). Every warpgroup issues its wgmma, also one whose
// rows are all past the item's count (zero rows, output discarded): a wgmma under a divergent condition makes
// ptxas serialise all of them (C7518).
//
// Promotion with lag 1 (promote_lag1): block g's wgmma are issued into one part buffer, wgmma.wait_group 1 retires
// block g - 1, and its promotion runs from the other buffer while block g's wgmma do. Block 0 comes before the
// loop and each trip takes a pair of blocks, so every wgmma's buffer is fixed at compile time (otherwise ptxas
// serialises them, C7514). The kernel before waited for each block's wgmma and then promoted it (the sandbox's header
// has its figures). Any variant adds the same products to acc in the same block order: bit-identical.
//
// Two kernels (bench/gpu/sandbox/moe_gemm_fp8.cu measures them and the variants production does not pick):
//   128-row CTAs (prefill; grouped_gemm_fp8_ws_kernel): warp-specialised, 384 threads. Warpgroup 0 is the
//     producer: its 128 threads issue all the ring's cp.async copies (8 A and 8 B rows of 16 bytes each a block)
//     and signal a stage full with cp.async.mbarrier.arrive (it completes when the copies land); warpgroups 1 and 2
//     are the math of tile rows 0-63 and 64-127, each waiting for a stage's full barrier and releasing it through
//     its empty barrier as soon as its wgmma of that block retired. No CTA-wide barrier in the main loop, the math
//     warps issue only wgmma, scales and the promotion's FMAs (the copies' address arithmetic had been the larger
//     share of the loop's instructions: 180 a block a warp, issue-bound), and setmaxnreg moves registers from the
//     producer to the math warpgroups.
//   64-row CTAs (decode batches; grouped_gemm_fp8_kernel with kWG = 1, two CTAs per SM, an item split over
//     grid.z = 2 CTAs of which the second exits when the item has <= 64 rows): every thread copies (4 A and 8 B
//     chunks a block) into a ring of kStages, kAhead = kStages - 2 blocks ahead (one more stage is held by the wgmma
//     in flight); per block: wait for its copies, fence.proxy.async, __syncthreads, issue block g + kAhead's
//     copies into the stage block g - 2 used (retired before the barrier), then the block's wgmma.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/tensor_core.cuh"
#include "backend/cuda/wgmma.cuh"

namespace moe::cuda {

namespace {

constexpr int kBN = 128, kBK = 128;

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

// The scale products of one K block for this thread's two tile rows (q) and the gate / up halves of the tile.
struct BlockScales {
  float s00, s10, s01, s11;
};

template <bool kSwiglu>
__device__ __forceinline__ void promote(float (&acc)[64], const float (&part)[64], const BlockScales& s) {
#pragma unroll
  for (int j = 0; j < 16; ++j) {
    const bool hi = kSwiglu && j >= 8;
    const float f0 = hi ? s.s01 : s.s00, f1 = hi ? s.s11 : s.s10;
    acc[4 * j + 0] = fmaf(part[4 * j + 0], f0, acc[4 * j + 0]);
    acc[4 * j + 1] = fmaf(part[4 * j + 1], f0, acc[4 * j + 1]);
    acc[4 * j + 2] = fmaf(part[4 * j + 2], f1, acc[4 * j + 2]);
    acc[4 * j + 3] = fmaf(part[4 * j + 3], f1, acc[4 * j + 3]);
  }
}

// The lag-1 schedule over nkb >= 1 blocks (header): ready(g) makes block g's stage readable by wgmma,
// scales(g) reads its scales, issue(g, part) issues its wgmma as one commit group, retire(g) frees its stage
// once its wgmma completed.
template <bool kSwiglu, class Ready, class Scales, class Issue, class Retire>
__device__ __forceinline__ void promote_lag1(int nkb, float (&acc)[64], float (&p0)[64], float (&p1)[64], Ready ready,
                                             Scales scales, Issue issue, Retire retire) {
  ready(0);
  BlockScales prev = scales(0);
  issue(0, p0);
  int g = 1;
  for (; g + 1 < nkb; g += 2) {
    ready(g);
    const BlockScales s1 = scales(g);
    issue(g, p1);
    wgmma_wait<1>();
    retire(g - 1);
    fence_acc(p0);
    promote<kSwiglu>(acc, p0, prev);
    ready(g + 1);
    prev = scales(g + 1);
    issue(g + 1, p0);
    wgmma_wait<1>();
    retire(g);
    fence_acc(p1);
    promote<kSwiglu>(acc, p1, s1);
  }
  if (g < nkb) {
    ready(g);
    const BlockScales s1 = scales(g);
    issue(g, p1);
    wgmma_wait<1>();
    fence_acc(p0);
    promote<kSwiglu>(acc, p0, prev);
    wgmma_wait<0>();
    fence_acc(p1);
    promote<kSwiglu>(acc, p1, s1);
  } else {
    wgmma_wait<0>();
    fence_acc(p0);
    promote<kSwiglu>(acc, p0, prev);
  }
}

// The item of this CTA: expert, first sorted row, rows (<= 128).
struct Item {
  int32_t e, begin, count;
};
__device__ __forceinline__ Item item_of(const GroupedGemmFp8Params& p) {
  if (p.items)
    return {p.items[3 * blockIdx.y], p.items[3 * blockIdx.y + 1], min(p.items[3 * blockIdx.y + 2], kGroupedRows)};
  const int32_t begin = int32_t(blockIdx.y) * kGroupedRows;
  return {0, begin, min(kGroupedRows, p.M - begin)};
}

// Expert e's two weight matrices (1: SwiGLU's up, else the same) and their block scales: from the table, or given
// directly (no table: a dense layer).
struct ExpertPtrs {
  const uint8_t* w0;
  const uint8_t* w1;
  const float* s0;
  const float* s1;
};
template <bool kSwiglu>
__device__ __forceinline__ ExpertPtrs expert_ptrs(const GroupedGemmFp8Params& p, int32_t e) {
  if (!p.wtab)
    return {static_cast<const uint8_t*>(p.wdirect[0]), static_cast<const uint8_t*>(p.wdirect[kSwiglu ? 1 : 0]),
            static_cast<const float*>(p.wdirect[2]), static_cast<const float*>(p.wdirect[kSwiglu ? 3 : 2])};
  const void* const* wt = p.wtab + int64_t(e) * p.wstride;
  return {static_cast<const uint8_t*>(wt[p.wslot[0]]), static_cast<const uint8_t*>(wt[p.wslot[kSwiglu ? 1 : 0]]),
          static_cast<const float*>(wt[p.sslot[0]]), static_cast<const float*>(wt[p.sslot[kSwiglu ? 1 : 0]])};
}

// The activation row of sorted row `row` (< count) of the item.
__device__ __forceinline__ int64_t a_row(const GroupedGemmFp8Params& p, int32_t row) {
  return p.a_rows ? int64_t(p.a_rows[row] / p.a_div) : int64_t(row);
}

// Accumulator layout (per warp of a warpgroup, as for mma m16n8): acc[4j + 2q + c] is the warpgroup's row
// 16 warp + lane / 4 + 8 q, column 8 j + 2 (lane % 4) + c. mrow: the thread's first tile row (q = 0), relative
// to `begin`; rows at or past count are not written.
// kBf16H: h may be BF16 (h_bf16; the 128-row kernel only: the 64-row one has no registers to spare for it).
template <bool kSwiglu, bool kBf16H>
__device__ __forceinline__ void store_tile(const GroupedGemmFp8Params& p, const float (&acc)[64], int32_t begin,
                                           int32_t count, int mrow, int n0, int cq) {
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int m = mrow + 8 * q;
    if (m >= count) continue;
    if constexpr (kSwiglu) {
      const int64_t hrow = int64_t(begin + m) * p.ldh;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int col = n0 + 8 * j + cq;
        if (col >= p.N) continue;
        const float h0 = silu(acc[4 * j + 2 * q]) * acc[4 * (j + 8) + 2 * q];
        const float h1 = silu(acc[4 * j + 2 * q + 1]) * acc[4 * (j + 8) + 2 * q + 1];
        if (kBf16H && p.h_bf16)
          *reinterpret_cast<uint32_t*>(p.h_bf16 + hrow + col) =
              uint32_t(float_to_bf16_bits(h0)) | (uint32_t(float_to_bf16_bits(h1)) << 16);
        else
          *reinterpret_cast<float2*>(p.h + hrow + col) = make_float2(h0, h1);
      }
    } else {
      float* yrow = p.y + int64_t(p.y_rows ? p.y_rows[begin + m] : begin + m) * p.ldy;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int col = n0 + 8 * j + cq;
        if (col < p.N) *reinterpret_cast<float2*>(yrow + col) = make_float2(acc[4 * j + 2 * q], acc[4 * j + 2 * q + 1]);
      }
    }
  }
}

// ---- every thread copies (64-row CTAs in production) -----------------------------------------------------------
template <int kWG, int kStages>
constexpr size_t smem_bytes() {
  return size_t(kStages) * size_t(64 * kWG + kBN) * kBK + 1024;  // + alignment to 1024
}

template <bool kSwiglu, int kWG, int kStages>
__global__ void __launch_bounds__(128 * kWG, kWG == 1 ? 2 : 1) grouped_gemm_fp8_kernel(const GroupedGemmFp8Params p) {
  constexpr int kAhead = kStages - 2;  // K blocks of copies in flight (one more stage: the wgmma in flight)
  static_assert(kAhead >= 1, "one K block of copies in flight at least");
  constexpr int kBM = 64 * kWG, kRS = 16 * kWG;  // rows per CTA; row stride of one thread's copies
  constexpr int kABytes = kBM * kBK, kStageBytes = kABytes + kBN * kBK;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  Item it = item_of(p);
  it.begin += int32_t(blockIdx.z) * kBM;
  it.count = min(it.count - int32_t(blockIdx.z) * kBM, kBM);
  if (it.count <= 0) return;
  const int32_t begin = it.begin, count = it.count;

  const int tid = int(threadIdx.x), chunk = tid % 8, r0 = tid / 8;
  const int n0 = int(blockIdx.x) * (kSwiglu ? kBN / 2 : kBN);  // first output column of this CTA
  const int nkb = (p.K + kBK - 1) / kBK, nb = n0 / 128;
  // A rows this thread copies (tile rows r0 + kRS i), -1 past the item.
  int64_t arow[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) arow[i] = r0 + kRS * i < count ? a_row(p, begin + r0 + kRS * i) : -1;
  const ExpertPtrs ep = expert_ptrs<kSwiglu>(p, it.e);
  const uint8_t* w0 = ep.w0;
  const uint8_t* w1 = ep.w1;

  auto load = [&](int g, int stage) {
    const int col = g * kBK + chunk * 16;
    const bool kok = col < p.K;
    const uint32_t sa = base + uint32_t(stage) * kStageBytes, sb = sa + kABytes;
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = r0 + kRS * i;
      const bool ok = kok && arow[i] >= 0;
      cp_async16(sa + uint32_t(m * 128 + ((chunk ^ (m & 7)) << 4)), ok ? p.a + arow[i] * p.lda + col : p.a, ok);
    }
#pragma unroll
    for (int i = 0; i < kBN / kRS; ++i) {
      const int n = r0 + kRS * i;
      const uint8_t* wm = kSwiglu && n >= kBN / 2 ? w1 : w0;
      const int wrow = kSwiglu ? n0 + (n & (kBN / 2 - 1)) : n0 + n;
      const bool ok = kok && wrow < p.N;
      cp_async16(sb + uint32_t(n * 128 + ((chunk ^ (n & 7)) << 4)), ok ? wm + int64_t(wrow) * p.K + col : w0, ok);
    }
  };

  const int wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int mrow = wg * 64 + warp * 16 + lane / 4, cq = 2 * (lane % 4);
  const float* ws0 = ep.s0 + int64_t(nb) * nkb;
  const float* ws1 = ep.s1 + int64_t(nb) * nkb;
  int64_t srow[2];  // activation-scale rows of this thread's two tile rows (-1: none)
#pragma unroll
  for (int q = 0; q < 2; ++q) srow[q] = mrow + 8 * q < count ? a_row(p, begin + mrow + 8 * q) : -1;
  auto scales = [&](int g) {
    const float sx0 = srow[0] >= 0 ? p.as[int64_t(g) * p.ld_as + srow[0]] : 0.0f;
    const float sx1 = srow[1] >= 0 ? p.as[int64_t(g) * p.ld_as + srow[1]] : 0.0f;
    const float sw0 = ws0[g], sw1 = ws1[g];
    return BlockScales{sx0 * sw0, sx1 * sw0, sx0 * sw1, sx1 * sw1};
  };
  // Head of K block g: its copies landed and are visible to wgmma in every thread; block g + kAhead's issued.
  auto head = [&](int g) {
    cp_async_wait<kAhead - 1>();
    fence_proxy_async();
    __syncthreads();
    if (g + kAhead < nkb) load(g + kAhead, (g + kAhead) % kStages);
    cp_async_commit();
  };
  auto issue = [&](int g, float (&part)[64]) {
    const uint32_t sa = base + uint32_t(g % kStages) * kStageBytes + uint32_t(wg * 64 * 128),
                   sb = base + uint32_t(g % kStages) * kStageBytes + kABytes;
    fence_acc(part);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk)
      wgmma_m64n128k32_e4m3(part, smem_desc(sa + kk * 32), smem_desc(sb + kk * 32), kk);
    wgmma_commit();
  };

  float acc[64], p0[64], p1[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = p0[i] = p1[i] = 0.0f;
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < nkb) load(s, s);
    cp_async_commit();
  }
  promote_lag1<kSwiglu>(nkb, acc, p0, p1, head, scales, issue, [](int) {});
  cp_async_wait<0>();
  store_tile<kSwiglu, false>(p, acc, begin, count, mrow, n0, cq);
}

// ---- warp-specialised (128-row CTAs in production) -------------------------------------------------------------
template <int kStages>
constexpr size_t ws_smem_bytes() {  // stages, full + empty barriers, the A row offsets, alignment
  return size_t(kStages) * size_t(128 + kBN) * kBK + 16 * kStages + 128 * 8 + 1024;
}

template <bool kSwiglu, int kStages>
__global__ void __launch_bounds__(384, 1) grouped_gemm_fp8_ws_kernel(const GroupedGemmFp8Params p) {
  constexpr int kABytes = 128 * kBK, kStageBytes = kABytes + kBN * kBK;
  // Registers after setmaxnreg: the CTA keeps the launch's 168 x 384; producer x 128 + math x 256 must fit in it, or
  // the math warpgroups' increase waits forever. The split without spills (ptxas, CUDA 13.0):
  constexpr int kProducerRegs = kSwiglu ? 56 : 72, kMathRegs = kSwiglu ? 224 : 216;
  static_assert(kProducerRegs * 128 + kMathRegs * 256 <= 168 * 384, "setmaxnreg within the CTA's registers");
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  const uint32_t bars = base + uint32_t(kStages * kStageBytes);  // full[kStages], then empty[kStages]
  int64_t* arows = reinterpret_cast<int64_t*>(smem_raw + (base - smem_addr(smem_raw)) + kStages * kStageBytes + 16 * kStages);
  const Item it = item_of(p);
  if (it.count <= 0) return;
  const int32_t begin = it.begin, count = it.count;
  const int tid = int(threadIdx.x), wg = tid / 128;
  if (tid < 128) arows[tid] = tid < count ? a_row(p, begin + tid) * p.lda : -1;  // byte offsets of A's rows
  if (tid == 0)
    for (int s = 0; s < kStages; ++s) {
      mbar_init(bars + 8u * s, 128);               // full: one cp.async arrival per producer thread
      mbar_init(bars + 8u * (kStages + s), 256);  // empty: every math thread once its wgmma retired
    }
  __syncthreads();
  const int n0 = int(blockIdx.x) * (kSwiglu ? kBN / 2 : kBN);
  const int nkb = (p.K + kBK - 1) / kBK, nb = n0 / 128;

  if (wg == 0) {  // producer
    asm volatile("setmaxnreg.dec.sync.aligned.u32 %0;" ::"n"(kProducerRegs) : "memory");
    const ExpertPtrs ep = expert_ptrs<kSwiglu>(p, it.e);
    const uint8_t* w0 = ep.w0;
    const uint8_t* w1 = ep.w1;
    const int chunk = tid % 8, r0 = tid / 8;
    // This thread's 8 A source rows at K block 0 (chunk `chunk`; null past the item) and its 8 B rows as byte
    // offsets into their weight matrix (-1 past N; one expert's matrix is < 2^31 bytes); each block adds 128 g.
    const uint8_t* asrc[8];
    int32_t boff[8];
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int64_t off = arows[r0 + 16 * i];
      asrc[i] = off >= 0 ? p.a + off + chunk * 16 : nullptr;
      const int n = r0 + 16 * i;
      const int wrow = kSwiglu ? n0 + (n & (kBN / 2 - 1)) : n0 + n;
      boff[i] = wrow < p.N ? wrow * p.K + chunk * 16 : -1;
    }
    // Shared destination of row r0 + 16 i: (r0 + 16 i) * 128 + ((chunk ^ (r0 & 7)) << 4) (the same swizzle).
    const uint32_t dst0 = uint32_t(r0 * 128 + ((chunk ^ (r0 & 7)) << 4));
    for (int g = 0; g < nkb; ++g) {
      const int s = g % kStages;
      if (g >= kStages) mbar_wait(bars + 8u * (kStages + s), uint32_t((g / kStages - 1) & 1));
      const int col = g * kBK;
      const bool kok = col + chunk * 16 < p.K;
      const uint32_t sa = base + uint32_t(s) * kStageBytes + dst0;
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const bool ok = kok && asrc[i] != nullptr;
        cp_async16(sa + uint32_t(i * 16 * 128), ok ? asrc[i] + col : p.a, ok);
      }
#pragma unroll
      for (int i = 0; i < 8; ++i) {
        const uint8_t* wm = kSwiglu && r0 + 16 * i >= kBN / 2 ? w1 : w0;  // SwiGLU tile rows 64..127: up
        const bool ok = kok && boff[i] >= 0;
        cp_async16(sa + uint32_t(kABytes + i * 16 * 128), ok ? wm + boff[i] + col : w0, ok);
      }
      mbar_arrive_cp_async(bars + 8u * s);
    }
    cp_async_wait<0>();
    return;
  }

  asm volatile("setmaxnreg.inc.sync.aligned.u32 %0;" ::"n"(kMathRegs) : "memory");
  const int cw = wg - 1, warp = (tid % 128) / 32, lane = tid % 32;
  const int mrow = cw * 64 + warp * 16 + lane / 4, cq = 2 * (lane % 4);
  const ExpertPtrs ep = expert_ptrs<kSwiglu>(p, it.e);
  const float* ws0 = ep.s0 + int64_t(nb) * nkb;
  const float* ws1 = ep.s1 + int64_t(nb) * nkb;
  const float* as0 = mrow < count ? p.as + a_row(p, begin + mrow) : nullptr;  // this thread's two rows' scales
  const float* as1 = mrow + 8 < count ? p.as + a_row(p, begin + mrow + 8) : nullptr;
  auto scales = [&](int g) {
    const int64_t o = int64_t(g) * p.ld_as;
    const float sx0 = as0 ? as0[o] : 0.0f, sx1 = as1 ? as1[o] : 0.0f;
    const float sw0 = ws0[g], sw1 = ws1[g];
    return BlockScales{sx0 * sw0, sx1 * sw0, sx0 * sw1, sx1 * sw1};
  };
  // Descriptors of stage 0's A (this warpgroup's rows) and B; a stage or a k32 step adds its byte offset / 16 to the
  // start-address field (shared addresses stay below 2^18, so the 14-bit field never carries).
  const uint64_t da0 = smem_desc(base + uint32_t(cw * 64 * 128)), db0 = smem_desc(base + kABytes);
  // The copies landed (the full barrier's acquire), then the proxy fence for wgmma's async-proxy reads.
  auto ready = [&](int g) {
    mbar_wait(bars + 8u * (g % kStages), uint32_t((g / kStages) & 1));
    fence_proxy_async();
  };
  auto issue = [&](int g, float (&part)[64]) {
    const uint64_t so = uint64_t(uint32_t(g % kStages) * (kStageBytes / 16));
    fence_acc(part);
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 32; ++kk) wgmma_m64n128k32_e4m3(part, da0 + so + 2 * kk, db0 + so + 2 * kk, kk);
    wgmma_commit();
  };
  auto retire = [&](int g) { mbar_arrive(bars + 8u * (kStages + g % kStages)); };
  float acc[64], p0[64], p1[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = p0[i] = p1[i] = 0.0f;
  promote_lag1<kSwiglu>(nkb, acc, p0, p1, ready, scales, issue, retire);
  store_tile<kSwiglu, true>(p, acc, begin, count, mrow, n0, cq);
}

void set_smem(const void* kernel, size_t bytes) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)), "grouped_gemm_fp8 smem");
}

// One launch of a kernel shape (the sandbox times the shapes production does not pick through these too).
// kSetSmem: set the kernel's shared-memory opt-in first (production's shapes have it from
// configure_grouped_gemm_fp8_kernels, once per device context).
template <bool kSwiglu, int kWG, int kStages, bool kSetSmem = false>
void launch(const GroupedGemmFp8Params& p, int32_t tiles, cudaStream_t s) {
  auto* kernel = grouped_gemm_fp8_kernel<kSwiglu, kWG, kStages>;
  constexpr size_t kSmem = smem_bytes<kWG, kStages>();
  if constexpr (kSetSmem) set_smem(reinterpret_cast<const void*>(kernel), kSmem);
  const int cols = kSwiglu ? kBN / 2 : kBN;
  const dim3 grid(unsigned((p.N + cols - 1) / cols), unsigned(tiles), unsigned(kGroupedRows / (64 * kWG)));
  kernel<<<grid, 128 * kWG, kSmem, s>>>(p);
}
template <bool kSwiglu, int kStages, bool kSetSmem = false>
void launch_ws(const GroupedGemmFp8Params& p, int32_t tiles, cudaStream_t s) {
  auto* kernel = grouped_gemm_fp8_ws_kernel<kSwiglu, kStages>;
  constexpr size_t kSmem = ws_smem_bytes<kStages>();
  if constexpr (kSetSmem) set_smem(reinterpret_cast<const void*>(kernel), kSmem);
  const int cols = kSwiglu ? kBN / 2 : kBN;
  kernel<<<dim3(unsigned((p.N + cols - 1) / cols), unsigned(tiles), 1), 384, kSmem, s>>>(p);
}

// Production's shapes: 128-row CTAs warp-specialised with 6 stages, 64-row CTAs (two per SM) with 4 stages.
constexpr int kStagesWs = 6, kStages64 = 4;
static_assert(ws_smem_bytes<kStagesWs>() <= 227 * 1024, "shared memory of one 128-row CTA");
static_assert(2 * smem_bytes<1, kStages64>() <= 228 * 1024 - 2 * 1024, "shared memory of two 64-row CTAs");

bool args_ok(const GroupedGemmFp8Params& p) {
  return grouped_gemm_fp8_shape_ok(p.N, p.K) && p.lda % 16 == 0 &&
         (p.wtab != nullptr || (p.wdirect[0] && p.wdirect[2] && (!p.swiglu || (p.wdirect[1] && p.wdirect[3])))) &&
         (p.swiglu ? p.ldh % 2 == 0 && (p.h_bf16 ? p.h == nullptr && p.cta_rows == 128 : p.h != nullptr)
                   : p.ldy % 2 == 0) && (p.cta_rows == 64 || p.cta_rows == 128);
}

}  // namespace

void configure_grouped_gemm_fp8_kernels() {
  set_smem(reinterpret_cast<const void*>(grouped_gemm_fp8_kernel<true, 1, kStages64>), smem_bytes<1, kStages64>());
  set_smem(reinterpret_cast<const void*>(grouped_gemm_fp8_kernel<false, 1, kStages64>), smem_bytes<1, kStages64>());
  set_smem(reinterpret_cast<const void*>(grouped_gemm_fp8_ws_kernel<true, kStagesWs>), ws_smem_bytes<kStagesWs>());
  set_smem(reinterpret_cast<const void*>(grouped_gemm_fp8_ws_kernel<false, kStagesWs>), ws_smem_bytes<kStagesWs>());
}

// The warp-specialised kernel's producer keeps weight-row offsets as 32-bit: one expert's matrix below 2 GiB.
bool grouped_gemm_fp8_shape_ok(int64_t N, int64_t K) {
  return N > 0 && K > 0 && K % 16 == 0 && N % 8 == 0 && N * K < (int64_t(1) << 31);
}

void grouped_gemm_fp8(const GroupedGemmFp8Params& p, int32_t tiles, cudaStream_t s) {
  if (tiles <= 0 || p.N <= 0) return;
  if (!args_ok(p))
    check(cudaErrorInvalidValue,
          "grouped_gemm_fp8: K and lda must be multiples of 16, N of 8, N x K below 2^31, a weight table or the "
          "weights set, one h (BF16 h with 128-row CTAs only), "
          "cta_rows 64 or 128");
  if (p.cta_rows == 64) {
    if (p.swiglu)
      launch<true, 1, kStages64>(p, tiles, s);
    else
      launch<false, 1, kStages64>(p, tiles, s);
  } else {
    if (p.swiglu)
      launch_ws<true, kStagesWs>(p, tiles, s);
    else
      launch_ws<false, kStagesWs>(p, tiles, s);
  }
  check_launch("grouped_gemm_fp8");
}

}  // namespace moe::cuda
