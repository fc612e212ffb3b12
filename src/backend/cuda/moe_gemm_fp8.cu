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
//     multiple of 64, so both lie in one 128-row scale block): h = silu(g) * u, F32 [rows, N], sorted order
//     (quantised afterwards per 1x128 tile for the down projection).
//   plain: F32 rows written to y[y_rows[i]] (the down projection scattered back to assignment order) or y[i].
//
// CTA: kWG warpgroups (cta_rows = 64 kWG rows of the item; with kWG = 1 an item is split over grid.z = 2 CTAs,
// two CTAs fit an SM, and the second of an item with <= 64 rows exits at once: decode); warpgroup w owns tile
// rows 64w .. 64w+63 and all 128 columns (wgmma m64n128k32: 64 F32 registers for acc and 64 for each part buffer
// per thread). A warpgroup whose rows are all past the item's count issues no wgmma. K advances in blocks of 128
// E4M3 = 128 bytes per row (the 128-byte swizzle atom, and exactly one scale block). Every thread loads, per K
// block, 4 A and 8 / kWG B chunks of 16 bytes with cp.async into a ring of kStages stages, kAhead = kStages - 1 -
// kLag blocks ahead. Shared layout per stage: A [64 kWG][128 B] then B [128][128 B], 16-byte chunk c of row r at
// chunk c ^ (r % 8), 1024-byte aligned.
// Rows past count, weight rows past N and columns past K are zero-filled (cp.async with source size 0).
//
// Pipeline per K block g: wait for block g's copies, fence.proxy.async, __syncthreads; issue the copies of
// block g + kAhead into the stage of block g - 1 - kLag (retired: every warpgroup waited for that block's wgmma
// before the barrier); 4 wgmma (k = 32 each, the first overwriting a part buffer), commit; then
//   kLag 0: wait for them and promote block g (the tensor cores idle during the promotion and the barrier);
//   kLag 1: two part buffers: wait until only block g's group is in flight and promote block g - 1 from the
//     other buffer while block g's wgmma run (the promotion's FMAs and the next barrier overlap the tensor cores).
// Both add the same products to acc in the same block order, so their outputs are bit-identical.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/tensor_core.cuh"
#include "backend/cuda/wgmma.cuh"

namespace moe::cuda {

namespace {

// kWG warpgroups per CTA (1 or 2): 64 kWG rows of a 128-row work item per CTA (grid.z picks the part).
constexpr int kBN = 128, kBK = 128;
template <int kWG, int kStages>
constexpr size_t smem_bytes() {
  return size_t(kStages) * size_t(64 * kWG + kBN) * kBK + 1024;  // + alignment to 1024
}

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

template <bool kSwiglu, int kWG, int kStages, int kLag>
__global__ void __launch_bounds__(128 * kWG, kWG == 1 ? 2 : 1) grouped_gemm_fp8_kernel(const GroupedGemmFp8Params p) {
  constexpr int kAhead = kStages - 1 - kLag;  // K blocks of copies in flight
  static_assert((kLag == 0 || kLag == 1) && kAhead >= 1, "one K block of copies in flight at least");
  constexpr int kBM = 64 * kWG, kRS = 16 * kWG;  // rows per CTA; row stride of one thread's copies
  constexpr int kABytes = kBM * kBK, kStageBytes = kABytes + kBN * kBK;
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  int32_t e = 0, begin = int32_t(blockIdx.y) * kGroupedRows, count = min(kGroupedRows, p.M - begin);
  if (p.items) {
    e = p.items[3 * blockIdx.y];
    begin = p.items[3 * blockIdx.y + 1];
    count = p.items[3 * blockIdx.y + 2];
  }
  begin += int32_t(blockIdx.z) * kBM;
  count = min(count - int32_t(blockIdx.z) * kBM, kBM);
  if (count <= 0) return;

  const int tid = int(threadIdx.x), chunk = tid % 8, r0 = tid / 8;
  const int n0 = int(blockIdx.x) * (kSwiglu ? kBN / 2 : kBN);  // first output column of this CTA
  const int nkb = (p.K + kBK - 1) / kBK, nb = n0 / 128;
  // A rows this thread copies (tile rows r0 + kRS i), -1 past the item.
  int64_t arow[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = r0 + kRS * i;
    arow[i] = m < count ? (p.a_rows ? int64_t(p.a_rows[begin + m] / p.a_div) : int64_t(begin + m)) : -1;
  }
  const void* const* wt = p.wtab + int64_t(e) * p.wstride;
  const uint8_t* w0 = static_cast<const uint8_t*>(wt[p.wslot[0]]);
  const uint8_t* w1 = kSwiglu ? static_cast<const uint8_t*>(wt[p.wslot[1]]) : w0;
  const float* ws0 = static_cast<const float*>(wt[p.sslot[0]]) + int64_t(nb) * nkb;
  const float* ws1 = kSwiglu ? static_cast<const float*>(wt[p.sslot[1]]) + int64_t(nb) * nkb : ws0;

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

  // Accumulator layout (per warp of the warpgroup, as for mma m16n8): acc[4j + 2q + c] is tile row
  // 64 wg + 16 warp + lane / 4 + 8 q, column 8 j + 2 (lane % 4) + c.
  const int wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int mrow = wg * 64 + warp * 16 + lane / 4, cq = 2 * (lane % 4);
  const bool active = wg * 64 < count;  // this warpgroup has rows
  int64_t srow[2];                       // activation-scale rows of this thread's two tile rows (-1: none)
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int m = mrow + 8 * q;
    srow[q] = m < count ? (p.a_rows ? int64_t(p.a_rows[begin + m] / p.a_div) : int64_t(begin + m)) : -1;
  }
  // Block g's scales (read when its wgmma are issued, used at its promotion).
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
  // Block g's 4 wgmma into part (the first overwriting it), one commit group.
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

  float acc[64], p0[64];
#pragma unroll
  for (int i = 0; i < 64; ++i) acc[i] = p0[i] = 0.0f;
#pragma unroll
  for (int s = 0; s < kAhead; ++s) {
    if (s < nkb) load(s, s);
    cp_async_commit();
  }
  if constexpr (kLag == 0) {
    for (int g = 0; g < nkb; ++g) {
      head(g);
      if (!active) continue;
      const BlockScales s = scales(g);
      issue(g, p0);
      wgmma_wait<0>();
      fence_acc(p0);
      promote<kSwiglu>(acc, p0, s);
    }
  } else {
    float p1[64];
#pragma unroll
    for (int i = 0; i < 64; ++i) p1[i] = 0.0f;
    // Odd blocks go to p1, even ones to p0; after issuing block g, wait_group 1 retires block g - 1, which is
    // promoted while block g's wgmma run. Every warpgroup issues its wgmma, also one whose rows are all past the
    // item's count (zero-filled rows, output discarded): a wgmma under a divergent condition makes ptxas
    // serialise all of them (C7518), and so does a loop whose trip does not fix which buffer is in flight (C7514),
    // hence block 0 before the loop and one pair of blocks per trip.
    head(0);
    BlockScales prev = scales(0);
    issue(0, p0);
    int g = 1;
    for (; g + 1 < nkb; g += 2) {
      head(g);
      const BlockScales s1 = scales(g);
      issue(g, p1);
      wgmma_wait<1>();
      fence_acc(p0);
      promote<kSwiglu>(acc, p0, prev);
      head(g + 1);
      prev = scales(g + 1);
      issue(g + 1, p0);
      wgmma_wait<1>();
      fence_acc(p1);
      promote<kSwiglu>(acc, p1, s1);
    }
    if (g < nkb) {
      head(g);
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
  cp_async_wait<0>();
  if (!active) return;

  if constexpr (kSwiglu) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int m = mrow + 8 * q;
      if (m >= count) continue;
      float* hrow = p.h + int64_t(begin + m) * p.ldh;
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int col = n0 + 8 * j + cq;
        if (col >= p.N) continue;
        const float h0 = silu(acc[4 * j + 2 * q]) * acc[4 * (j + 8) + 2 * q];
        const float h1 = silu(acc[4 * j + 2 * q + 1]) * acc[4 * (j + 8) + 2 * q + 1];
        *reinterpret_cast<float2*>(hrow + col) = make_float2(h0, h1);
      }
    }
  } else {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int m = mrow + 8 * q;
      if (m >= count) continue;
      float* yrow = p.y + int64_t(p.y_rows ? p.y_rows[begin + m] : begin + m) * p.ldy;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int col = n0 + 8 * j + cq;
        if (col < p.N) *reinterpret_cast<float2*>(yrow + col) = make_float2(acc[4 * j + 2 * q], acc[4 * j + 2 * q + 1]);
      }
    }
  }
}

// One launch of a kernel shape (the sandbox bench/gpu/sandbox/moe_gemm_fp8.cu times the shapes production does not
// pick through this too). kSetSmem: set the kernel's shared-memory opt-in first (production's shapes have it from
// configure_grouped_gemm_fp8_kernels, once per device context).
template <bool kSwiglu, int kWG, int kStages, int kLag, bool kSetSmem = false>
void launch(const GroupedGemmFp8Params& p, int32_t tiles, cudaStream_t s) {
  auto* kernel = grouped_gemm_fp8_kernel<kSwiglu, kWG, kStages, kLag>;
  constexpr size_t kSmem = smem_bytes<kWG, kStages>();
  if constexpr (kSetSmem) check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmem)), "grouped_gemm_fp8 smem");
  const int cols = kSwiglu ? kBN / 2 : kBN;
  const dim3 grid(unsigned((p.N + cols - 1) / cols), unsigned(tiles), unsigned(kGroupedRows / (64 * kWG)));
  kernel<<<grid, 128 * kWG, kSmem, s>>>(p);
}

// Production's shapes, 128-row CTAs (two warpgroups, one CTA per SM) and 64-row CTAs (one warpgroup, two per SM).
// kLag, stages: see the measurements in bench/gpu/sandbox/moe_gemm_fp8.cu.
constexpr int kStages128 = 6, kLag128 = 1, kStages64 = 4, kLag64 = 1;
static_assert(smem_bytes<2, kStages128>() <= 227 * 1024, "shared memory of one 128-row CTA");
static_assert(2 * smem_bytes<1, kStages64>() <= 228 * 1024 - 2 * 1024, "shared memory of two 64-row CTAs");

template <bool kSwiglu, int kWG, int kStages, int kLag>
void configure_one() {
  check(cudaFuncSetAttribute(grouped_gemm_fp8_kernel<kSwiglu, kWG, kStages, kLag>,
                             cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem_bytes<kWG, kStages>())),
        "grouped_gemm_fp8 smem");
}

bool args_ok(const GroupedGemmFp8Params& p) {
  return grouped_gemm_fp8_shape_ok(p.N, p.K) && p.lda % 16 == 0 && p.wtab != nullptr &&
         (p.swiglu ? p.ldh % 2 == 0 : p.ldy % 2 == 0) && (p.cta_rows == 64 || p.cta_rows == 128);
}

}  // namespace

void configure_grouped_gemm_fp8_kernels() {
  configure_one<true, 1, kStages64, kLag64>();
  configure_one<true, 2, kStages128, kLag128>();
  configure_one<false, 1, kStages64, kLag64>();
  configure_one<false, 2, kStages128, kLag128>();
}

bool grouped_gemm_fp8_shape_ok(int64_t N, int64_t K) { return N > 0 && K > 0 && K % 16 == 0 && N % 8 == 0; }

void grouped_gemm_fp8(const GroupedGemmFp8Params& p, int32_t tiles, cudaStream_t s) {
  if (tiles <= 0 || p.N <= 0) return;
  if (!args_ok(p))
    check(cudaErrorInvalidValue,
          "grouped_gemm_fp8: K and lda must be multiples of 16, N of 8, a weight table set, cta_rows 64 or 128");
  if (p.cta_rows == 64) {
    if (p.swiglu)
      launch<true, 1, kStages64, kLag64>(p, tiles, s);
    else
      launch<false, 1, kStages64, kLag64>(p, tiles, s);
  } else {
    if (p.swiglu)
      launch<true, 2, kStages128, kLag128>(p, tiles, s);
    else
      launch<false, 2, kStages128, kLag128>(p, tiles, s);
  }
  check_launch("grouped_gemm_fp8");
}

}  // namespace moe::cuda
