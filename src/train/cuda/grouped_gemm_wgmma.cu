// The routed experts' grouped GEMMs of the trainer (grouped_gemm.h) on the Hopper tensor cores: one launch per
// call covers every problem, wgmma with BF16 operands from shared memory, F32 accumulators in registers, F32
// output out = acc + beta out, beta 0 or 1 (beta 0 never reads out). Modelled on the inference engine's moe_gemm.cu.
//
// The three kinds as one GEMM C [M, N] = sum over K of A[M, K] B[K, N], per problem p (widths k, m of the call):
//   nt: M = n_p, N = m, K = k.  A = x_p [n_p, k] (K-major: a row holds K);  B = W_p [m, k] (K-major);  C = y_p.
//   nn: M = n_p, N = k, K = m.  A = dy_p [n_p, m] (K-major);  B = W_p [m, k]: K rows of N contiguous (MN-major);
//       C = dx_p [n_p, k].
//   tn: M = m, N = k, K = n_p.  A = dy_p [n_p, m]: K rows of M contiguous (MN-major);  B = x_p [n_p, k]
//       (MN-major);  C = dW_p [m, k].
// MN-major operands go to wgmma with the transpose bits (A's for tn, B's for nn and tn): no transposed copies.
// Every operand row has the width k or m (lda = ldb = k except A of nn/tn, m), C's row the width N.
//
// Work: the host's table of items (problem, tile): GEMM-M rows 128 tile .. 128 tile + 127 of the problem; the grid
// is (N / kBN tiles, items), so consecutive CTAs share an item's A tile (L2) and walk N. Problems with n_p == 0
// have no items (out untouched).
//
// Tile 128 x kBN x kBK (kBK 64; tn's 32, below). CTA: 256 threads = 2 warpgroups; warpgroup w owns rows 64w .. 64w+63 and all kBN columns
// (one wgmma m64n{kBN}k16 per 16 of K: kBN / 2 F32 accumulators per thread). kBN: 256 for nt and nn (each CTA's A tile
// serves 256 columns: half the A copies per flop of 128-wide tiles; at F = 1408 the last tile is half empty, and
// it is still faster, launch_kind), 128 for tn. nt and nn: one CTA per SM (shared memory: 4 stages of 48 KB), as
// moe_gemm.cu; tn runs two (launch_kind).
//
// Shared memory per stage: A (kBK x 256 bytes) then B (kBN x kBK x 2 bytes), each a 1024-byte aligned run of 128-byte rows in
// the 128-byte swizzle (16-byte chunk c of row r at chunk c ^ (r % 8), wgmma.cuh):
//   K-major tile [rows][64 K] (A of nt/nn, B of nt): row r = tile row r, descriptor LBO 16 (unused), SBO 1024
//     (8-row groups), k16 step +32 bytes inside the row; warpgroup w's A starts at row 64 w (+8 KB).
//   MN-major tile (A of tn, B of nn/tn): blocks of 64 M/N values, block j = [kBK K rows][64] (kBK x 128 bytes),
//     row kr of block j holding the operand's values 64 j .. 64 j + 63 at K index kr; descriptor LBO kBK x 128
//     (the next 64-wide block, what an N = 128/256 wgmma walks into), SBO 1024 (8 K rows), k16 step +2048 bytes
//     (16 K rows). Warpgroup w's A is block w: its 64 M values are one block. The scheme and values
//     are those of mla_decode_wgmma.cu's V operand (B MN-major, run on H200s).
// Tails: A rows past M, B rows/columns past N and K past the problem's end are zero-filled (cp.async with
// source size 0), outputs masked at M and N; k and m are multiples of 8 (checked on the host), so a 16-byte
// chunk is wholly inside or outside. tn's K = n_p may be any positive count (one partial block when < 64).
//
// Pipeline (moe_gemm.cu's): a ring of kStages stages (4; tn 7) with kStages - 1 - kLag K blocks of copies in
// flight (kLag 1 in production: one wgmma group stays in flight). Per K block g: wait for block g's copies,
// fence.proxy.async (wgmma reads shared memory through the async proxy), __syncthreads; issue block
// g + kStages - 1 - kLag's copies into the stage block g - 1 - kLag used (each warpgroup retired that block's wgmma
// with wgmma.wait_group kLag after issuing block g - 1, and the barrier orders that before the copies); issue
// block g's kBK / 16 wgmma and keep kLag groups in flight.
// tn with beta 1 (the weight gradients' accumulation): the CTA first asks the L2 to fetch its output tile (bulk
// prefetch), so the epilogue's reduce-add finds it there (launch_kind has the measurements).
#include <algorithm>

#include "backend/cuda/tensor_core.cuh"
#include "backend/cuda/wgmma.cuh"
#include "train/cuda/grouped_gemm.h"

namespace moe::train::cuda {

namespace {

namespace hw = ::moe::cuda;

// kBK: the K block of a stage, 64 (K-major tiles hold 64 K values in a 128-byte row) or, for tn (both operands
// MN-major: a K block is kBK rows of 128 bytes), 32: half the bytes a stage, twice the stages in the same memory.
constexpr int kBM = kGroupedTileM, kThreads = 256;
constexpr uint32_t kKMajorRows = 64 * 128;  // 64 rows of a K-major tile: a warpgroup's A
static_assert(kBM == 128 && kThreads == 256, "two warpgroups of 64 rows");

// One swizzled MN-major block [kBK K rows][64 BF16].
template <int kBK>
__host__ __device__ constexpr uint32_t mn_block() {
  return uint32_t(kBK) * 128;
}
template <int kBK>
__host__ __device__ constexpr uint32_t a_bytes() {
  return uint32_t(kBM) * kBK * 2;
}
template <int kBN, int kBK = 64>
__host__ __device__ constexpr uint32_t stage_bytes() {
  return a_bytes<kBK>() + uint32_t(kBN) * kBK * 2;
}
template <int kBN, int kStages, int kBK = 64>
__host__ __device__ constexpr size_t smem_bytes() {
  return size_t(kStages) * stage_bytes<kBN, kBK>() + 1024;  // + alignment of the base to 1024
}
static_assert(smem_bytes<256, 4>() <= 227 * 1024, "shared memory of one CTA");
static_assert(2 * smem_bytes<128, 6, 32>() <= 227 * 1024, "shared memory of two CTAs (tn)");

struct Params {
  const GroupedProblemDesc* problems;
  const GroupedItem* items;  // this launch's first item
  int32_t k, m;
  float beta;
};

using hw::swz;  // byte offset of 16-byte chunk c of row r in a swizzled run of 128-byte rows

template <int kBN, int kTransB, int kTransA, int kAcc>
__device__ __forceinline__ void mma(float (&acc)[kAcc], uint64_t a, uint64_t b) {
  if constexpr (kBN == 256)
    hw::wgmma_m64n256k16<kTransB, kTransA>(acc, a, b);
  else
    hw::wgmma_m64n128k16<kTransB, kTransA>(acc, a, b);
}

// Copies of one operand tile of R rows/values along M or N, per K block; every thread issues R / 32 chunks and the
// 256 threads cover the tile's R x 8 chunks once. `src` is the operand's row-major array with row width ld.
//   K-major (rows = M/N, K contiguous): thread copies chunk tid % 8 of tile rows tid / 8 + 32 i;
//     the row is valid below `ext` (M or N), the chunk below K.
//   MN-major (rows = K, M/N contiguous): R / 8 chunks per K row; thread copies chunk c = tid % (R / 8) (block
//     c / 8, chunk c % 8 in it) of K rows tid / (R / 8) + (256 / (R / 8)) i; the chunk is valid below `ext`,
//     the row below K.
template <int R, bool kMN, int kBK>
struct TileCopy {
  static_assert(kMN || kBK == 64, "K-major tiles: 64 K values a row");
  static constexpr int kPer = kMN ? kBK * (R / 8) / kThreads : R / 32;  // chunks per thread per K block
  static constexpr int kTpr = kMN ? R / 8 : 8;        // threads per smem row
  static constexpr int kRowStep = kThreads / kTpr;    // rows between a thread's chunks
  const uint16_t* src;  // the thread's first chunk at K block 0 (or the array itself when nothing is valid)
  uint32_t dst[kPer];   // byte offsets inside the tile
  int64_t ld;
  int row0;       // MN: the thread's first K row; K-major: its chunk's first K column
  uint32_t okmask;  // K-major: rows below ext; MN-major: all-or-none, the chunk below ext

  __device__ __forceinline__ TileCopy(const uint16_t* base, int64_t ld_, int mn0, int ext, int tid) : ld(ld_) {
    const int c = tid % kTpr, r = tid / kTpr;
    okmask = 0;
    if constexpr (kMN) {
      row0 = r;
      const bool ok = mn0 + 8 * c < ext;
      src = ok ? base + int64_t(r) * ld + mn0 + 8 * c : base;
      if (ok) okmask = (1u << kPer) - 1;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int kr = r + kRowStep * i;
        dst[i] = uint32_t(c / 8) * mn_block<kBK>() + swz(kr, c % 8);
      }
    } else {
      row0 = 8 * c;
      src = base + int64_t(mn0 + r) * ld + 8 * c;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int row = r + kRowStep * i;
        if (mn0 + row < ext) okmask |= 1u << i;
        dst[i] = swz(row, c);
      }
      if (okmask == 0) src = base;
    }
  }

  // K block kb (K values 64 kb .. 64 kb + 63) into the tile at shared address tile.
  __device__ __forceinline__ void load(uint32_t tile, int kb, int K, const uint16_t* base) const {
    if constexpr (kMN) {
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const int krow = kBK * kb + row0 + kRowStep * i;
        const bool ok = (okmask & 1u) && krow < K;
        hw::cp_async16(tile + dst[i], ok ? src + (int64_t(kBK) * kb + kRowStep * i) * ld : base, ok);
      }
    } else {
      const bool kok = kBK * kb + row0 < K;
#pragma unroll
      for (int i = 0; i < kPer; ++i) {
        const bool ok = kok && (okmask >> i & 1u);
        hw::cp_async16(tile + dst[i], ok ? src + int64_t(kRowStep * i) * ld + kBK * kb : base, ok);
      }
    }
  }
};

// kStages: the ring's depth; kMinBlocks: CTAs per SM the registers must allow (launch bounds), with shared memory
// sized to match; kLag: wgmma groups left in flight per K block (0 or 1); kPrefetch: the L2 prefetch of a beta-1
// output tile (off only in the sandbox's A/B).
template <GemmKind kKind, int kBN, int kStages, int kMinBlocks, int kBK, int kLag, bool kPrefetch>
__global__ void __launch_bounds__(kThreads, kMinBlocks) grouped_gemm_wgmma_kernel(const Params p) {
  constexpr int kAhead = kStages - 1 - kLag;  // K blocks of copies in flight
  static_assert(kAhead >= 1 && (kLag == 0 || kLag == 1), "one K block of copies in flight at least");
  static_assert(kBK == 64 || kKind == GemmKind::Tn, "K-major operands: 64 K values a tile row");
  // The epilogue's F32 tile [128][kBN + 8] reuses the stages.
  static_assert(kBM * (kBN + 8) * 4 <= kStages * stage_bytes<kBN, kBK>(), "the epilogue's tile fits in the stages");
  constexpr uint32_t kABytes = a_bytes<kBK>();
  constexpr bool kNt = kKind == GemmKind::Nt, kTn = kKind == GemmKind::Tn;
  constexpr int kTransA = kTn ? 1 : 0, kTransB = kNt ? 0 : 1;
  constexpr int kAcc = kBN / 2;
  constexpr uint32_t kStage = stage_bytes<kBN, kBK>();

  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (hw::smem_addr(smem_raw) + 1023u) & ~1023u;

  const GroupedItem item = p.items[blockIdx.y];
  const GroupedProblemDesc pr = p.problems[item.problem];
  const int n = int(pr.n);
  const int M = kTn ? p.m : n, N = kNt ? p.m : p.k, K = kNt ? p.k : kKind == GemmKind::Nn ? p.m : n;
  const int64_t lda = kNt ? p.k : p.m, ldb = p.k;
  const int m0 = item.tile * kBM, n0 = int(blockIdx.x) * kBN;
  if (m0 >= M || n0 >= N || K <= 0) return;  // never for the host's tables (n_p > 0, tiles inside M)

  const int tid = int(threadIdx.x), wg = tid / 128;
  // tn, beta 1: the epilogue's reduce-add reads this tile of `out`; one bulk prefetch per tile row (rows below M
  // only) fetches it into the L2 now, so that DRAM read overlaps the main loop instead of stalling the reduce.
  if (kPrefetch && kTn && p.beta != 0.0f && tid < kBM && m0 + tid < M)
    hw::bulk_prefetch_l2(pr.out + int64_t(m0 + tid) * N + n0, uint32_t(min(kBN, N - n0)) * 4u);
  const TileCopy<kBM, kTn, kBK> ca(pr.a, lda, m0, M, tid);
  const TileCopy<kBN, !kNt, kBK> cb(pr.b, ldb, n0, N, tid);
  const int total = (K + kBK - 1) / kBK;
  auto load = [&](int g) {
    const uint32_t st = base + uint32_t(g % kStages) * kStage;
    ca.load(st, g, K, pr.a);
    cb.load(st + kABytes, g, K, pr.b);
  };

  float acc[kAcc];
#pragma unroll
  for (int i = 0; i < kAcc; ++i) acc[i] = 0.0f;
  hw::fence_acc(acc);
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < total) load(s);
    hw::cp_async_commit();
  }
  for (int g = 0; g < total; ++g) {
    hw::cp_async_wait<kAhead - 1>();
    hw::fence_proxy_async();
    __syncthreads();
    if (g + kAhead < total) load(g + kAhead);
    hw::cp_async_commit();
    const uint32_t stage = base + uint32_t(g % kStages) * kStage;
    // this warpgroup's A (K-major: its 64 rows; MN-major: block wg, its 64 M values); all of B
    const uint32_t sa = stage + uint32_t(wg) * (kTransA ? mn_block<kBK>() : kKMajorRows), sb = stage + kABytes;
    hw::wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) {
      // K-major: +32 bytes per k16 inside the 128-byte rows; MN-major: +2048 bytes (16 K rows of 128 bytes).
      const uint64_t da = kTransA ? hw::smem_desc(sa + kk * 2048, mn_block<kBK>(), 1024) : hw::smem_desc(sa + kk * 32);
      const uint64_t db = kTransB ? hw::smem_desc(sb + kk * 2048, mn_block<kBK>(), 1024) : hw::smem_desc(sb + kk * 32);
      mma<kBN, kTransB, kTransA>(acc, da, db);
    }
    hw::wgmma_commit();
    hw::wgmma_wait<kLag>();
    hw::fence_acc(acc);
  }
  hw::wgmma_wait<0>();
  hw::fence_acc(acc);

  // Epilogue through shared memory and the bulk-copy unit: the accumulators go to a row-major F32 tile in the
  // (now idle) stages, then one thread per tile row hands its row to a bulk store (beta 0) or a bulk F32
  // reduce-add into `out` (beta 1: out + acc, the same sum as acc + 1 * out), and the warps are free once the
  // row is read out of shared memory. The per-element epilogue it replaces (float2 loads, fma, stores per thread)
  // waited on every load's latency: tn (K ~ 190, 64 KB of F32 gradients read and written per CTA) ran at
  // 42 TFLOP/s on an H200.
  // Accumulator layout (per warp of the warpgroup, as for mma m16n8; independent of the transpose bits):
  // acc[4j + 2q + c] is tile row 64 wg + 16 warp + lane / 4 + 8 q, column 8 j + 2 (lane % 4) + c.
  hw::cp_async_wait<0>();
  __syncthreads();  // both warpgroups' wgmma are done reading the stages
  constexpr int kLd = kBN + 8;  // row pitch in floats: a warp's float2 writes (8 rows x 4 columns) hit 64 banks
  float* tile = reinterpret_cast<float*>(smem_raw + (base - hw::smem_addr(smem_raw)));
  const int warp = (tid % 128) / 32, lane = tid % 32;
  const int trow = wg * 64 + warp * 16 + lane / 4, tcol = 2 * (lane % 4);
#pragma unroll
  for (int q = 0; q < 2; ++q)
#pragma unroll
    for (int j = 0; j < kBN / 8; ++j)
      *reinterpret_cast<float2*>(tile + (trow + 8 * q) * kLd + tcol + 8 * j) =
          make_float2(acc[4 * j + 2 * q], acc[4 * j + 2 * q + 1]);
  hw::fence_proxy_async();
  __syncthreads();
  if (tid < kBM && m0 + tid < M) {
    const uint32_t bytes = uint32_t(min(kBN, N - n0)) * 4u;  // N is a multiple of 8: a multiple of 32 bytes
    float* dst = pr.out + int64_t(m0 + tid) * N + n0;
    const uint32_t src = base + uint32_t(tid * kLd) * 4u;
    if (p.beta == 0.0f)
      hw::bulk_store(dst, src, bytes);
    else
      hw::bulk_reduce_add_f32(dst, src, bytes);
    hw::bulk_commit();
    hw::bulk_wait_read();
  }
}

template <GemmKind kKind, int kBN, int kStages = 4, int kMinBlocks = 1, int kBK = 64, int kLag = 1,
          bool kPrefetch = true>
cudaError_t launch(const GroupedWgmmaArgs& a, cudaStream_t stream) {
  auto* kernel = grouped_gemm_wgmma_kernel<kKind, kBN, kStages, kMinBlocks, kBK, kLag, kPrefetch>;
  constexpr size_t kSmem = smem_bytes<kBN, kStages, kBK>();
  // The shared-memory opt-in belongs to the current device; set at every call (a host-side attribute write, no
  // process-wide record of which devices have it).
  cudaError_t e = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem));
  if (e != cudaSuccess) return e;
  const int64_t N = kKind == GemmKind::Nt ? a.m : a.k;
  const unsigned ntiles = unsigned((N + kBN - 1) / kBN);
  constexpr int64_t kMaxY = 65535;
  for (int64_t first = 0; first < a.count; first += kMaxY) {
    const Params p{a.problems, a.items + first, int32_t(a.k), int32_t(a.m), a.beta};
    const dim3 grid(ntiles, unsigned(std::min(kMaxY, a.count - first)));
    kernel<<<grid, kThreads, kSmem, stream>>>(p);
    e = cudaGetLastError();
    if (e != cudaSuccess) return e;
  }
  return cudaSuccess;
}

template <GemmKind kKind>
cudaError_t launch_kind(const GroupedWgmmaArgs& a, cudaStream_t stream) {
  // tn: K is an expert's token count (~190 at train-mid's 1 x 2048 micro-batches, ~380 at 2 x 2048), so a CTA is
  // mostly pipeline fill and an epilogue that reads and writes 64 KB of FP32 gradients; with one CTA per SM those
  // phases do not overlap (measured on an H200: 37 TFLOP/s, half the per-expert cuBLAS loop). 128-wide tiles fit
  // two CTAs per SM (<= 128 registers each), so one CTA's epilogue overlaps the other's copies and MMAs; 32-row K
  // blocks in 7 stages of 16 KB (113 KB a CTA: two fill the SM's 228 KB) keep 5 blocks of copies in flight per CTA,
  // where 3 stages of 64 rows kept 1 (the copies' latency bounded it: 194 TFLOP/s at 2 x 2048). With the output
  // tile's L2 prefetch (the kernel's head), measured on an H200 (the sandbox, 23,608 rows, 2026-12-03): 517 us
  // (263 TFLOP/s) against 592 us for 6 stages without it, 534 us for 6 stages with it, 386 us with a plain store
  // (beta 0: the floor the gradients' read leaves). Prefetching the tile of a CTA half a wave or more later (570 to
  // 670 us; removed) and 256-wide tiles with one CTA per SM (553 us) were slower.
  if constexpr (kKind == GemmKind::Tn) {
    return launch<kKind, 128, 7, 2, 32>(a, stream);
  } else {
    // 256-wide tiles at every N, also where 256 does not divide it: at N = 1408 (F) the last of 6 tiles is half
    // empty (9 % of the MMAs wasted), yet each CTA's A tile serves twice the columns. Measured on an H200
    // (bench/gpu/sandbox/train_grouped_gemm.cu, 64 experts, 23,608 rows): nt at N 1408 310 us against 351 us for
    // 128-wide tiles in 4 stages (329 in 6), nn at N 1408 322 us against 361; N 2048 as before (316, 322 us).
    return launch<kKind, 256>(a, stream);
  }
}

}  // namespace

bool grouped_gemm_wgmma_supported() {
  int dev = 0, major = 0, minor = 0;
  return cudaGetDevice(&dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, dev) == cudaSuccess &&
         cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, dev) == cudaSuccess && major == 9 &&
         minor == 0;
}

cudaError_t grouped_gemm_wgmma(const GroupedWgmmaArgs& a, cudaStream_t stream) {
  if (a.count <= 0) return cudaSuccess;
  if (a.k <= 0 || a.m <= 0 || a.k % 8 != 0 || a.m % 8 != 0 || a.k > INT32_MAX || a.m > INT32_MAX ||
      (a.beta != 0.0f && a.beta != 1.0f))
    return cudaErrorInvalidValue;
  switch (a.kind) {
    case GemmKind::Nt:
      return launch_kind<GemmKind::Nt>(a, stream);
    case GemmKind::Nn:
      return launch_kind<GemmKind::Nn>(a, stream);
    case GemmKind::Tn:
      break;
  }
  return launch_kind<GemmKind::Tn>(a, stream);
}

}  // namespace moe::train::cuda
