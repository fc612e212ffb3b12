// Routed experts of prefill (and the dense SwiGLU MLPs' gate + up): a grouped GEMM on the Hopper tensor
// cores, wgmma with BF16 operands in shared memory and F32 accumulators in registers.
//
// Problem. The T*k (token, expert) assignments are sorted by expert (moe_plan): sorted row i belongs to
// expert e for i in [off_e, off_e + count_e). A work item (e, begin, count <= 128) is one 128-row tile of
// that list. For each item and each column block, one CTA computes
//   acc[128, 256] = sum over segments s of A_s[rows] @ B_s(e)[cols]^T          (F32, K-long dot products)
// A_s rows are BF16 rows of length K, gathered: sorted row i reads row a_rows[i] / a_div (the token of the
// assignment) or row i itself. B_s(e) is a BF16 weight [N, K] row-major from a pointer table. Segments
// carry the split precision of CudaBackend::gemm: (x_hi, W), (x_lo, W) and, for dequantised FP8 weights,
// (x_hi, W_lo) accumulate into the same registers.
// Epilogues:
//   swiglu: the 256 columns are 128 gate rows and the same 128 up rows of the expert (columns n0..n0+127 of
//     the intermediate): h = silu(g) * u is written as BF16 [rows, N] in sorted order (and h_lo = the
//     rounding remainder, in split mode): the input of the down projection.
//   plain: F32 rows written to y[y_rows[i]] (the down projection scattered back to assignment order) or
//     y[i].
//
// CTA: 256 threads = 2 warpgroups; warpgroup w owns tile rows 64w .. 64w+63 and all 256 columns
// (wgmma m64n256k16: 128 F32 accumulators per thread). K advances in blocks of 64 (128 bytes per row, the
// 128-byte swizzle atom). Every thread also loads: per K block, 4 A chunks and 8 B chunks of 16 bytes with
// cp.async into a 4-stage ring (two blocks in flight while one computes and one drains). Shared layout per
// stage: A [128][64] then B [256][64] BF16, rows of 128 bytes, 16-byte chunk c of row r stored at chunk
// c ^ (r % 8) (the 128B swizzle that the wgmma descriptors name), each tile 1024-byte aligned.
// Rows past the item's count, weight rows past N and columns past K are zero-filled (cp.async with source
// size 0), so tails need no other masking.
//
// Pipeline per K block g: wait for block g's copies (cp.async.wait_group), fence.proxy.async (the tensor
// cores read shared memory through the async proxy) and __syncthreads; issue the copies of block g + 2 into
// the stage that block g - 2 used (every warpgroup has retired block g - 2's wgmma: each waited with
// wgmma.wait_group 1 after issuing block g - 1); issue block g's 4 wgmma (k = 16 each) and keep one group in
// flight.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/tensor_core.cuh"
#include "backend/cuda/wgmma.cuh"

namespace moe::cuda {

namespace {

constexpr int kBM = kGroupedRows, kBN = 256, kBK = 64, kStages = 4, kThreads = 256;
constexpr int kABytes = kBM * kBK * 2, kBBytes = kBN * kBK * 2, kStageBytes = kABytes + kBBytes;
constexpr size_t kSmemBytes = size_t(kStages) * kStageBytes + 1024;  // + alignment to 1024

__device__ __forceinline__ float silu(float g) { return g / (1.0f + expf(-g)); }

template <bool kSwiglu>
__global__ void __launch_bounds__(kThreads, 1) grouped_gemm_kernel(const GroupedGemmParams p) {
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  int32_t e = 0, begin = int32_t(blockIdx.y) * kBM, count = min(kBM, p.M - begin);
  if (p.items) {
    e = p.items[3 * blockIdx.y];
    begin = p.items[3 * blockIdx.y + 1];
    count = p.items[3 * blockIdx.y + 2];
  }
  if (count <= 0 || e < p.e_begin || e >= p.e_end) return;

  const int tid = int(threadIdx.x), chunk = tid % 8, r0 = tid / 8;
  const int n0 = int(blockIdx.x) * (kSwiglu ? kBN / 2 : kBN);  // first output column of this CTA
  // Source rows of the 4 A rows this thread copies (tile rows r0 + 32 i), -1 past the item.
  int64_t arow[4];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    const int m = r0 + 32 * i;
    arow[i] = m < count ? (p.a_rows ? int64_t(p.a_rows[begin + m] / p.a_div) : int64_t(begin + m)) : -1;
  }
  // Weights per segment: [s][0] for tile rows 0..127 (gate, or the whole tile), [s][1] for rows 128..255 (up).
  const uint16_t* w[3][2];
#pragma unroll
  for (int s = 0; s < 3; ++s)
#pragma unroll
    for (int j = 0; j < 2; ++j) {
      const int slot = p.bmat[s][j];
      w[s][j] = static_cast<const uint16_t*>(s < p.nseg ? (p.wtab ? p.wtab[int64_t(e - p.e_begin) * p.wstride + slot]
                                                               : p.wdirect[slot])
                                                      : nullptr);
    }
  const int nkb = (p.K + kBK - 1) / kBK, total = p.nseg * nkb;

  auto load = [&](int g, int stage) {
    const int seg = g / nkb, col = (g - seg * nkb) * kBK + chunk * 8;
    const bool kok = col < p.K;
    const uint32_t sa = base + uint32_t(stage) * kStageBytes, sb = sa + kABytes;
    const uint16_t* a = seg == 0 ? p.a[0] : seg == 1 ? p.a[1] : p.a[2];
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int m = r0 + 32 * i;
      const bool ok = kok && arow[i] >= 0;
      cp_async16(sa + uint32_t(m * 128 + ((chunk ^ (m & 7)) << 4)), ok ? a + arow[i] * p.lda + col : a, ok);
    }
    const uint16_t* w0 = seg == 0 ? w[0][0] : seg == 1 ? w[1][0] : w[2][0];
    const uint16_t* w1 = kSwiglu ? (seg == 0 ? w[0][1] : seg == 1 ? w[1][1] : w[2][1]) : w0;
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      const int n = r0 + 32 * i;
      const uint16_t* wm = kSwiglu && i >= 4 ? w1 : w0;
      const int wrow = kSwiglu ? n0 + (n & (kBN / 2 - 1)) : n0 + n;
      const bool ok = kok && wrow < p.N;
      cp_async16(sb + uint32_t(n * 128 + ((chunk ^ (n & 7)) << 4)), ok ? wm + int64_t(wrow) * p.K + col : w0, ok);
    }
  };

  float acc[128];
#pragma unroll
  for (int i = 0; i < 128; ++i) acc[i] = 0.0f;
  fence_acc(acc);
#pragma unroll
  for (int s = 0; s < kStages - 2; ++s) {
    if (s < total) load(s, s);
    cp_async_commit();
  }
  const int wg = tid / 128;
  for (int g = 0; g < total; ++g) {
    cp_async_wait<kStages - 3>();
    fence_proxy_async();
    __syncthreads();
    if (g + kStages - 2 < total) load(g + kStages - 2, (g + kStages - 2) % kStages);
    cp_async_commit();
    const uint32_t sa = base + uint32_t(g % kStages) * kStageBytes + uint32_t(wg * 64 * 128),
                   sb = base + uint32_t(g % kStages) * kStageBytes + kABytes;
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < kBK / 16; ++kk) wgmma_m64n256k16(acc, smem_desc(sa + kk * 32), smem_desc(sb + kk * 32));
    wgmma_commit();
    wgmma_wait<1>();
    fence_acc(acc);
  }
  wgmma_wait<0>();
  fence_acc(acc);

  // Accumulator layout (per warp of the warpgroup, as for mma m16n8): acc[4j + 2q + c] is tile row
  // 64 wg + 16 warp + lane / 4 + 8 q, column 8 j + 2 (lane % 4) + c.
  const int warp = (tid % 128) / 32, lane = tid % 32;
  const int mrow = wg * 64 + warp * 16 + lane / 4, cq = 2 * (lane % 4);
  if constexpr (kSwiglu) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int m = mrow + 8 * q;
      if (m >= count) continue;
      uint16_t* hrow = p.h + int64_t(begin + m) * p.ldh;
      uint16_t* lrow = p.h_lo ? p.h_lo + int64_t(begin + m) * p.ldh : nullptr;
#pragma unroll
      for (int j = 0; j < 16; ++j) {
        const int col = n0 + 8 * j + cq;
        if (col >= p.N) continue;
        const float h0 = silu(acc[4 * j + 2 * q]) * acc[4 * (j + 16) + 2 * q];
        const float h1 = silu(acc[4 * j + 2 * q + 1]) * acc[4 * (j + 16) + 2 * q + 1];
        const uint16_t b0 = float_to_bf16_bits(h0), b1 = float_to_bf16_bits(h1);
        *reinterpret_cast<uint32_t*>(hrow + col) = uint32_t(b0) | (uint32_t(b1) << 16);
        if (lrow) {
          const uint16_t l0 = float_to_bf16_bits(h0 - bf16_bits_to_float(b0)),
                         l1 = float_to_bf16_bits(h1 - bf16_bits_to_float(b1));
          *reinterpret_cast<uint32_t*>(lrow + col) = uint32_t(l0) | (uint32_t(l1) << 16);
        }
      }
    }
  } else {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int m = mrow + 8 * q;
      if (m >= count) continue;
      float* yrow = p.y + int64_t(p.y_rows ? p.y_rows[begin + m] : begin + m) * p.ldy;
#pragma unroll
      for (int j = 0; j < 32; ++j) {
        const int col = n0 + 8 * j + cq;
        if (col < p.N) *reinterpret_cast<float2*>(yrow + col) = make_float2(acc[4 * j + 2 * q], acc[4 * j + 2 * q + 1]);
      }
    }
  }
}

}  // namespace

void configure_grouped_gemm_kernels() {
  check(cudaFuncSetAttribute(grouped_gemm_kernel<true>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)),
        "grouped_gemm smem");
  check(cudaFuncSetAttribute(grouped_gemm_kernel<false>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(kSmemBytes)),
        "grouped_gemm smem");
}

void grouped_gemm(const GroupedGemmParams& p, int32_t tiles, cudaStream_t s) {
  if (tiles <= 0 || p.N <= 0) return;
  if (p.K % 8 != 0 || p.N % 8 != 0 || p.lda % 8 != 0 || (p.swiglu && p.ldh % 2 != 0) || p.nseg < 1 || p.nseg > 3)
    check(cudaErrorInvalidValue, "grouped_gemm: K, N and lda must be multiples of 8, 1 to 3 segments");
  const int cols = p.swiglu ? kBN / 2 : kBN;
  const dim3 grid(unsigned((p.N + cols - 1) / cols), unsigned(tiles));
  if (p.swiglu)
    grouped_gemm_kernel<true><<<grid, kThreads, kSmemBytes, s>>>(p);
  else
    grouped_gemm_kernel<false><<<grid, kThreads, kSmemBytes, s>>>(p);
  check_launch("grouped_gemm");
}

}  // namespace moe::cuda
