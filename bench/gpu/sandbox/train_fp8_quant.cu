// Sandbox: the trainer's E4M3 quantiser (src/train/cuda/fp8_quant.cu, compiled here from the production
// source) against the staged-tile kernel it replaced (commit 165db7e's, kept here), at the shapes of
// train-mid's FP8 step.
//
// Why (bench/RESULTS.md, 2026-12-05, H100): in a kernel timeline of the FP8 step the old kernel moved about
// 1 TB/s against a copy rate of about 3 TB/s and took ~14 % of a 4-layer step's GPU time; Nsight Compute saw
// 20-23 cycles per issued instruction at 64-93 % occupancy, DRAM 17-53 % busy: bound by its instruction
// stream. Production changes three things and keeps the tiling (one 128x128 tile a block of 32 warps):
//   - q = E4M3(v * (1 / scale)), the inference engine's rule, for the IEEE division per code (about ten
//     instructions each, two per element with both layouts);
//   - the staged FP32 tile is stored in 16-byte chunks, swizzled, and the column pass reads 4x4 sub-blocks:
//   the
//     old 129-float pitch with scalar stores and loads was 4-way bank-conflicted both ways;
//   - a batch of matrices per launch (grid z): a layer's experts in one launch instead of one each (one
//   expert's
//     [1408, 2048] is 176 tiles, 1.3 waves of an H100).
// (A rewrite on 4x4 sub-blocks in registers with 8 warps and shuffle-free reductions, tried on 2026-12-05,
// ran at 0.6-0.8x of the old kernel: fewer warps hid less of the latency.)
//
// Checks: for every case, production's q, qs, qt and qts equal the old kernel's byte for byte when the old
// kernel also multiplies by the reciprocal (template kDivide = false; production is also checked bit for bit
// against a host reference by test_train_cuda's CudaTrainFp8.QuantiserMatchesHostBitForBit). Timing: against
// the old kernel as main ran it (kDivide = true), median of 20 cycles after 3 warm-ups, rotating input copies
// past the L2. Bytes counted: the FP32 input read once, plus each output layout's codes and scales. Ceiling:
// a device-to-device cudaMemcpy of the input, timed in the same process (read + write).
//
// Also a layer's experts' weights in both layouts (--experts 64 x gate, up [F, D]), one batched launch per
// matrix kind against 64 launches of the old kernel; and fp8_transpose (--fp8-expert-weights forward: the
// input-gradient layout made in the backward), 64 expert matrices [inner, hidden] into the right halves of
// [hidden, 2 inner], against the host's transpose, timed against b1b528f's kernel (kept here) and a
// cudaMemcpy of the same bytes.
//
// Sizes: --tokens 4096 (the rows of an activation: tokens in a micro-batch), --hidden 2048, --inner 1408.
#include "../../../src/train/cuda/fp8_quant.cu"
#include "../../../src/train/cuda/fp8_transpose.cu"
#include "common.cuh"

namespace {

using moe::train::cuda::Fp8QuantArgs;

namespace staged {  // the kernel of commit 165db7e; kDivide = false: by the reciprocal, as production

using moe::train::cuda::warp_max;

// 32 warps a tile, 4 rows (and in the column pass 4 columns) each: a 128x128 tile is a few thousand dependent
// instructions a warp (shuffles, IEEE divisions), and 8 warps a block left an SM too few warps to hide their
// latency (a 1408 x 2048 weight in both layouts took ~20 us on an H100, a sixth of the copy rate).
constexpr int kTile = 128, kPitch = kTile + 1, kWarps = 32;
constexpr float kE4M3Max = 448.0f;

// At least FLT_MIN: amax / 448 of a tile of tiny values (amax < ~6e-43) rounds to 0, and v / 0 is a NaN code.
__device__ __forceinline__ float tile_scale(float amax) {
  return amax > 0.0f ? fmaxf(amax / kE4M3Max, FLT_MIN) : 1.0f;
}

// Four values to four E4M3 bytes (little-endian in the word), each divided by scale (correctly rounded) or
// times its reciprocal.
template <bool kDivide>
__device__ __forceinline__ uint32_t pack4(const float v[4], float scale) {
  uint32_t packed = 0;
  const float inv = 1.0f / scale;
#pragma unroll
  for (int j = 0; j < 4; ++j)
    packed |= uint32_t(__nv_cvt_float_to_fp8(kDivide ? __fdiv_rn(v[j], scale) : v[j] * inv, __NV_SATFINITE,
                                             __NV_E4M3))
              << (8 * j);
  return packed;
}

__device__ __forceinline__ float amax4(const float v[4]) {
  return fmaxf(fmaxf(fabsf(v[0]), fabsf(v[1])), fmaxf(fabsf(v[2]), fabsf(v[3])));
}

// Block (bx, by) covers rows by*128 .. +127 and columns bx*128 .. +127. Thread (warp w, lane l) loads rows
// w, w+32, w+64, w+96 at columns 4l .. 4l+3 first, its four 16-byte loads in flight together, then quantises
// the rows from its registers (row modes) and stages the tile in shared memory for the column pass (lane l:
// rows 4l .. 4l+3 of columns w, w+32, ...), which only the column modes need.
template <bool kDivide>
__global__ void __launch_bounds__(kWarps * 32, 2) staged_kernel(Fp8QuantArgs a) {
  extern __shared__ float tile[];  // [128][129]: the tile, for the column pass (column modes only)
  __shared__ float red[kWarps];
  constexpr int kRows = kTile / kWarps;  // rows a warp holds
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile;
  const int64_t c = c0 + lane * 4;
  const bool col_ok = c < a.cols;  // cols % 4 == 0: a lane's four columns are all in or all out
  float v[kRows][4];
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int64_t r = r0 + warp + i * kWarps;
    float4 f = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (r < a.rows && col_ok) f = __ldcs(reinterpret_cast<const float4*>(a.x + r * a.ldx + c));
    v[i][0] = f.x, v[i][1] = f.y, v[i][2] = f.z, v[i][3] = f.w;
  }
  float bmax = 0.0f;
#pragma unroll
  for (int i = 0; i < kRows; ++i) {
    const int rr = warp + i * kWarps;
    const int64_t r = r0 + rr;
    if (a.col_mode != 0)
#pragma unroll
      for (int j = 0; j < 4; ++j) tile[rr * kPitch + lane * 4 + j] = v[i][j];
    const float am = warp_max(amax4(v[i]));
    bmax = fmaxf(bmax, am);
    if (a.row_mode == 1 && r < a.rows_out) {
      const float sc = tile_scale(am);
      if (col_ok) *reinterpret_cast<uint32_t*>(a.q + r * a.cols + c) = pack4<kDivide>(v[i], sc);
      if (lane == 0 && r < a.qs_ld) a.qs[int64_t(blockIdx.x) * a.qs_ld + r] = sc;
    }
  }
  if (lane == 0) red[warp] = bmax;
  __syncthreads();
  float blk = red[0];
#pragma unroll
  for (int w = 1; w < kWarps; ++w) blk = fmaxf(blk, red[w]);
  const float bscale = tile_scale(blk);
  if (a.row_mode == 2) {
#pragma unroll
    for (int i = 0; i < kRows; ++i) {
      const int64_t r = r0 + warp + i * kWarps;
      if (r < a.rows_out && col_ok)
        *reinterpret_cast<uint32_t*>(a.q + r * a.cols + c) = pack4<kDivide>(v[i], bscale);
    }
    if (threadIdx.x == 0) a.qs[int64_t(blockIdx.y) * a.qs_ld + blockIdx.x] = bscale;
  }
  if (a.col_mode != 0) {
    const int64_t r = r0 + lane * 4,
                  qt_ld = a.qt_ld > 0
                              ? a.qt_ld
                              : a.rows_out;  // rows_out % 4 == 0: a lane's four rows are all in or all out
    for (int cc = warp; cc < kTile; cc += kWarps) {
      const int64_t col = c0 + cc;
      if (col >= a.cols) break;
      float t[4];
#pragma unroll
      for (int j = 0; j < 4; ++j) t[j] = tile[(lane * 4 + j) * kPitch + cc];
      const float am = warp_max(amax4(t));
      const float sc = a.col_mode == 1 ? tile_scale(am) : bscale;
      if (r < a.rows_out) *reinterpret_cast<uint32_t*>(a.qt + col * qt_ld + r) = pack4<kDivide>(t, sc);
      if (a.col_mode == 1 && lane == 0) a.qts[int64_t(blockIdx.y) * a.qts_ld + col] = sc;
    }
    if (a.col_mode == 2 && threadIdx.x == 0) a.qts[int64_t(blockIdx.x) * a.qts_ld + blockIdx.y] = bscale;
  }
}

// One matrix (a.batch is ignored: the old kernel had none).
template <bool kDivide>
void launch(const Fp8QuantArgs& a, cudaStream_t s) {
  const size_t smem = a.col_mode != 0 ? size_t(kTile) * kPitch * sizeof(float) : 0;
  cudaFuncSetAttribute(staged_kernel<kDivide>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                       int(size_t(kTile) * kPitch * sizeof(float)));
  const dim3 grid(unsigned((a.cols + kTile - 1) / kTile), unsigned((a.rows_out + kTile - 1) / kTile));
  staged_kernel<kDivide><<<grid, kWarps * 32, smem, s>>>(a);
}

}  // namespace staged

namespace old_transpose {  // fp8_transpose.cu of commit b1b528f: 4-byte words, bytes gathered one by one

using moe::train::cuda::Fp8TransposeArgs;
constexpr int kBlock = 128, kBytePitch = kBlock + 4;

__global__ void __launch_bounds__(256) kernel(Fp8TransposeArgs a) {
  __shared__ uint32_t tile[kBlock * kBytePitch / 4];  // [128][132] bytes
  auto* bytes = reinterpret_cast<uint8_t*>(tile);
  const int64_t e = blockIdx.z, r0 = int64_t(blockIdx.y) * kBlock, c0 = int64_t(blockIdx.x) * kBlock;
  const uint8_t* in = a.in + e * a.in_stride;
  uint8_t* out = a.out + e * a.out_stride;
  const int lane = threadIdx.x % 32, row = threadIdx.x / 32;
#pragma unroll
  for (int i = 0; i < kBlock / 8; ++i) {
    const int rr = row + 8 * i;
    tile[(rr * kBytePitch) / 4 + lane] =
        *reinterpret_cast<const uint32_t*>(in + (r0 + rr) * a.cols + c0 + 4 * lane);
  }
  __syncthreads();
#pragma unroll
  for (int i = 0; i < kBlock / 8; ++i) {
    const int oc = row + 8 * i;
    const int r = 4 * lane;
    const uint32_t w =
        uint32_t(bytes[r * kBytePitch + oc]) | uint32_t(bytes[(r + 1) * kBytePitch + oc]) << 8 |
        uint32_t(bytes[(r + 2) * kBytePitch + oc]) << 16 | uint32_t(bytes[(r + 3) * kBytePitch + oc]) << 24;
    *reinterpret_cast<uint32_t*>(out + (c0 + oc) * a.out_ld + r0 + r) = w;
  }
  if (threadIdx.x == 0)
    a.out_scales[e * a.out_sstride + int64_t(blockIdx.x) * a.out_sld + blockIdx.y] =
        a.in_scales[e * a.in_sstride + int64_t(blockIdx.y) * a.in_sld + blockIdx.x];
}

void launch(const Fp8TransposeArgs& a, cudaStream_t s) {
  kernel<<<dim3(unsigned(a.cols / kBlock), unsigned(a.rows / kBlock), unsigned(a.batch)), 256, 0, s>>>(a);
}

}  // namespace old_transpose

// Production's kernel with kMinBlocks = 1 for both instances (~53 registers, no spills, half the warps an
// SM): the A/B of fp8_quant.cu's kMinBlocks choice.
void launch_one_block(const Fp8QuantArgs& a, cudaStream_t s) {
  namespace c = moe::train::cuda;
  const dim3 grid(unsigned((a.cols + 127) / 128), unsigned((a.rows_out + 127) / 128), unsigned(a.batch));
  constexpr int kBytes = 128 * 128 * 4;
  if (a.col_mode != 0) {
    cudaFuncSetAttribute(c::fp8_quantize_kernel<true, 1>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                         kBytes);
    c::fp8_quantize_kernel<true, 1><<<grid, 1024, kBytes, s>>>(a);
  } else {
    c::fp8_quantize_kernel<false, 1><<<grid, 1024, 0, s>>>(a);
  }
}

// One case: an FP32 input [rows, cols] and the outputs its modes write (production's layouts, fp8_gemm.h).
struct Case {
  const char* name;
  int64_t rows, cols;
  int row_mode, col_mode;
};

struct Buffers {
  float* x = nullptr;
  uint8_t *q = nullptr, *qt = nullptr;
  float *qs = nullptr, *qts = nullptr;
};

Fp8QuantArgs args_for(const Case& k, const Buffers& b) {
  Fp8QuantArgs a;
  a.x = b.x, a.rows = k.rows, a.cols = k.cols, a.ldx = k.cols, a.rows_out = (k.rows + 15) / 16 * 16;
  const int64_t rb = (a.rows_out + 127) / 128, cb = (k.cols + 127) / 128;
  a.row_mode = k.row_mode, a.col_mode = k.col_mode;
  if (k.row_mode) a.q = b.q, a.qs = b.qs, a.qs_ld = k.row_mode == 1 ? (k.rows + 3) / 4 * 4 : cb;
  if (k.col_mode) a.qt = b.qt, a.qts = b.qts, a.qts_ld = k.col_mode == 1 ? k.cols : rb;
  return a;
}

size_t scale_count(const Case& k) {
  const int64_t rows_out = (k.rows + 15) / 16 * 16, rb = (rows_out + 127) / 128, cb = (k.cols + 127) / 128;
  return size_t(std::max<int64_t>(cb * ((k.rows + 3) / 4 * 4), rb * k.cols) + rb * cb);
}

Buffers make(const Case& k, uint64_t seed) {
  Buffers b;
  const size_t n = size_t(k.rows * k.cols), nq = size_t((k.rows + 15) / 16 * 16 * k.cols);
  b.x = sbx::dalloc<float>(n);
  sbx::dfill_f32(b.x, n, seed, 3.0f);
  b.q = sbx::dalloc<uint8_t>(nq), b.qt = sbx::dalloc<uint8_t>(nq);
  b.qs = sbx::dalloc<float>(scale_count(k)), b.qts = sbx::dalloc<float>(scale_count(k));
  SBX_CHECK(cudaMemset(b.q, 0, nq));
  SBX_CHECK(cudaMemset(b.qt, 0, nq));
  SBX_CHECK(cudaMemset(b.qs, 0, scale_count(k) * 4));
  SBX_CHECK(cudaMemset(b.qts, 0, scale_count(k) * 4));
  return b;
}

template <typename T>
int64_t differing(const T* a, const T* b, size_t n) {
  const std::vector<T> ha = sbx::ddownload(a, n), hb = sbx::ddownload(b, n);
  int64_t d = 0;
  for (size_t i = 0; i < n; ++i) d += std::memcmp(&ha[i], &hb[i], sizeof(T)) != 0;
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  const sbx::Args args{argc, argv};
  const int64_t T = args.i64("tokens", 4096), D = args.i64("hidden", 2048), F = args.i64("inner", 1408);
  const Case cases[] = {
      {"expert gate/up weight [F, D], 128x128 both layouts", F, D, 2, 2},
      {"expert down weight [D, F], 128x128 both layouts", D, F, 2, 2},
      {"activation x [T, D], 1x128 (Fprop)", T, D, 1, 0},
      {"gradient dy [T, D], 1x128 + 128x1 (Dgrad + Wgrad)", T, D, 1, 1},
      {"activation x [T, D], 128x1 transposed (Wgrad)", T, D, 0, 1},
      {"activation x [T, F], 128x1 transposed (Wgrad)", T, F, 0, 1},
      {"ragged x [T - 37, D - 16], 1x128 + 128x1", T - 37, D - 16, 1, 1},
  };
  cudaStream_t s;
  SBX_CHECK(cudaStreamCreate(&s));
  bool ok = true;
  std::printf("%-55s %10s %10s %10s %9s %9s %8s\n", "case", "prod us", "1-block us", "old us", "prod GB/s",
              "old", "prod/copy");
  for (const Case& k : cases) {
    const Buffers p = make(k, 11), c = make(k, 11), o = make(k, 11);
    const Fp8QuantArgs ap = args_for(k, p), ac = args_for(k, c), ao = args_for(k, o);
    moe::train::cuda::fp8_quantize(ap, s);
    staged::launch<false>(ac, s);
    launch_one_block(ao, s);
    SBX_CHECK(cudaStreamSynchronize(s));
    SBX_CHECK(cudaGetLastError());
    const size_t nq = size_t(ap.rows_out * k.cols), ns = scale_count(k);
    const int64_t bad = differing(p.q, c.q, nq) + differing(p.qt, c.qt, nq) + differing(p.qs, c.qs, ns) +
                        differing(p.qts, c.qts, ns) + differing(p.q, o.q, nq) + differing(p.qt, o.qt, nq) +
                        differing(p.qs, o.qs, ns) + differing(p.qts, o.qts, ns);
    if (bad) ok = false;
    // Timing over rotating copies of the input (the outputs are shared: they are written, not read).
    const size_t in_bytes = size_t(k.rows * k.cols) * 4;
    const int nbuf = sbx::rotation(in_bytes, args, 64);
    std::vector<float*> xs(static_cast<size_t>(nbuf));
    for (int i = 0; i < nbuf; ++i) {
      xs[size_t(i)] = sbx::dalloc<float>(size_t(k.rows * k.cols));
      SBX_CHECK(cudaMemcpy(xs[size_t(i)], p.x, in_bytes, cudaMemcpyDeviceToDevice));
    }
    float* dst = sbx::dalloc<float>(size_t(k.rows * k.cols));
    auto run = [&](bool cand) {  // cand: the staged kernel
      return sbx::time_us(
          nbuf,
          [&](int i) {
            Fp8QuantArgs a = cand ? ac : ap;
            a.x = xs[size_t(i)];
            if (cand)
              staged::launch<true>(a, s);
            else
              moe::train::cuda::fp8_quantize(a, s);
          },
          s);
    };
    const double tp = run(false), tc = run(true);
    const double t1 = sbx::time_us(
        nbuf,
        [&](int i) {
          Fp8QuantArgs a = ao;
          a.x = xs[size_t(i)];
          launch_one_block(a, s);
        },
        s);
    const double tcopy = sbx::time_us(
        nbuf,
        [&](int i) { SBX_CHECK(cudaMemcpyAsync(dst, xs[size_t(i)], in_bytes, cudaMemcpyDeviceToDevice, s)); },
        s);
    const double layouts = (k.row_mode ? 1 : 0) + (k.col_mode ? 1 : 0);
    const double bytes = double(in_bytes) + layouts * double(nq) + 4.0 * double(ns);
    const double copy_gbs = 2.0 * double(in_bytes) / tcopy * 1e-3;
    std::printf("%-55s %10.2f %10.2f %10.2f %9.0f %9.0f %7.1f%%%s\n", k.name, tp, t1, tc, bytes / tp * 1e-3,
                bytes / tc * 1e-3, 100.0 * (bytes / tp * 1e-3) / copy_gbs, bad ? "  MISMATCH" : "");
    if (bad)
      std::printf(
          "  %lld bytes or scales differ between production and the old kernel (by the reciprocal) or the "
          "1-block instance\n",
          static_cast<long long>(bad));
    for (float* b : xs) SBX_CHECK(cudaFree(b));
    SBX_CHECK(cudaFree(dst));
    for (const Buffers* b : {&p, &c, &o}) {
      SBX_CHECK(cudaFree(b->x));
      SBX_CHECK(cudaFree(b->q));
      SBX_CHECK(cudaFree(b->qt));
      SBX_CHECK(cudaFree(b->qs));
      SBX_CHECK(cudaFree(b->qts));
    }
  }
  std::printf(
      "copy ceiling: cudaMemcpy device to device of each case's input, same process (read + write)\n");
  // A layer's experts' gate (or up) weights [F, D], 128x128 blocks in both layouts: production's one batched
  // launch against the old kernel's launch per expert (as main quantised them).
  {
    const int64_t E = args.i64("experts", 64), mat = F * D, cells = (F / 128) * (D / 128);
    float* x = sbx::dalloc<float>(size_t(E * mat));
    sbx::dfill_f32(x, size_t(E * mat), 21, 0.05f);
    Buffers out[2];
    for (Buffers& b : out) {
      b.q = sbx::dalloc<uint8_t>(size_t(E * mat)), b.qt = sbx::dalloc<uint8_t>(size_t(E * mat));
      b.qs = sbx::dalloc<float>(size_t(E * cells)), b.qts = sbx::dalloc<float>(size_t(E * cells));
    }
    auto one = [&](const Buffers& b, int64_t e) {
      Fp8QuantArgs a;
      a.x = x + e * mat, a.rows = F, a.cols = D, a.ldx = D, a.rows_out = F;
      a.row_mode = 2, a.q = b.q + e * mat, a.qs = b.qs + e * cells, a.qs_ld = D / 128;
      a.col_mode = 2, a.qt = b.qt + e * mat, a.qts = b.qts + e * cells, a.qts_ld = F / 128;
      return a;
    };
    Fp8QuantArgs batched = one(out[0], 0);
    batched.batch = int(E), batched.x_bstride = mat, batched.q_bstride = mat, batched.qs_bstride = cells;
    batched.qt_bstride = mat, batched.qts_bstride = cells;
    if (!moe::train::cuda::fp8_quantize_args_ok(batched)) {
      std::printf("fp8_quantize refuses the batched arguments\n");
      return 1;
    }
    moe::train::cuda::fp8_quantize(batched, s);
    for (int64_t e = 0; e < E; ++e) staged::launch<false>(one(out[1], e), s);
    SBX_CHECK(cudaStreamSynchronize(s));
    SBX_CHECK(cudaGetLastError());
    const int64_t bad = differing(out[0].q, out[1].q, size_t(E * mat)) +
                        differing(out[0].qt, out[1].qt, size_t(E * mat)) +
                        differing(out[0].qs, out[1].qs, size_t(E * cells)) +
                        differing(out[0].qts, out[1].qts, size_t(E * cells));
    const double tp = sbx::time_us(
        1, [&](int) { moe::train::cuda::fp8_quantize(batched, s); }, s);
    const double t1 = sbx::time_us(
        1, [&](int) { launch_one_block(batched, s); }, s);
    const double to = sbx::time_us(
        1,
        [&](int) {
          for (int64_t e = 0; e < E; ++e) staged::launch<true>(one(out[1], e), s);
        },
        s);
    float* dst = sbx::dalloc<float>(size_t(E * mat));
    const double tc = sbx::time_us(
        1, [&](int) { SBX_CHECK(cudaMemcpyAsync(dst, x, size_t(E * mat) * 4, cudaMemcpyDeviceToDevice, s)); },
        s);
    const double bytes = double(E * mat) * (4 + 2) + 8.0 * double(E * cells);
    std::printf(
        "%lld experts' [%lld, %lld] weights, both layouts: one launch %.1f us (%.0f GB/s; 1-block instance "
        "%.1f us), %lld launches of the old kernel %.1f us (%.0f GB/s); copy of the input %.0f GB/s%s\n",
        static_cast<long long>(E), static_cast<long long>(F), static_cast<long long>(D), tp,
        bytes / tp * 1e-3, t1, static_cast<long long>(E), to, bytes / to * 1e-3,
        2.0 * double(E * mat) * 4 / tc * 1e-3, bad ? "  MISMATCH" : "");
    if (bad) ok = false;
    SBX_CHECK(cudaFree(x));
    SBX_CHECK(cudaFree(dst));
    for (Buffers& b : out)
      for (void* p : {static_cast<void*>(b.q), static_cast<void*>(b.qt), static_cast<void*>(b.qs),
                      static_cast<void*>(b.qts)})
        SBX_CHECK(cudaFree(p));
  }
  // fp8_transpose (--fp8-expert-weights forward's backward layout): a layer's experts' [F, D] codes into the
  // right half of [D, 2F] matrices, their scale grids transposed; checked against the host's transpose.
  {
    const int64_t E = args.i64("experts", 64), mat = F * D, smat = (F / 128) * (D / 128);
    std::vector<uint8_t> hin(size_t(E * mat));
    std::vector<float> hs(size_t(E * smat));
    std::mt19937_64 g(5);
    for (auto& b : hin) b = uint8_t(g() & 0x7e);  // finite E4M3 codes of either sign below 448
    for (auto& v : hs) v = float(g() % 1000 + 1) * 1e-3f;
    uint8_t* din = sbx::dupload(hin);
    float* dsc = sbx::dupload(hs);
    uint8_t* dout = sbx::dalloc<uint8_t>(size_t(E * 2 * mat));
    float* dos = sbx::dalloc<float>(size_t(E * 2 * smat));
    SBX_CHECK(cudaMemset(dout, 0, size_t(E * 2 * mat)));
    moe::train::cuda::Fp8TransposeArgs t;
    t.in = din, t.in_scales = dsc, t.rows = F, t.cols = D, t.in_stride = mat, t.in_sld = D / 128;
    t.in_sstride = smat, t.out = dout + F, t.out_scales = dos + F / 128, t.out_ld = 2 * F,
    t.out_stride = 2 * mat;
    t.out_sld = 2 * F / 128, t.out_sstride = 2 * smat, t.batch = E;
    if (!moe::train::cuda::fp8_transpose_args_ok(t)) {
      std::printf("fp8_transpose refuses its arguments\n");
      return 1;
    }
    moe::train::cuda::fp8_transpose(t, s);
    const std::vector<uint8_t> hout = sbx::ddownload(dout, size_t(E * 2 * mat));
    const std::vector<float> hos = sbx::ddownload(dos, size_t(E * 2 * smat));
    int64_t bad = 0;
    for (int64_t e = 0; e < E; ++e)
      for (int64_t r = 0; r < F; ++r)
        for (int64_t c = 0; c < D; ++c)
          bad += hout[size_t(e * 2 * mat + c * 2 * F + F + r)] != hin[size_t(e * mat + r * D + c)];
    for (int64_t e = 0; e < E; ++e)
      for (int64_t rb = 0; rb < F / 128; ++rb)
        for (int64_t cb = 0; cb < D / 128; ++cb)
          bad += hos[size_t(e * 2 * smat + cb * (2 * F / 128) + F / 128 + rb)] !=
                 hs[size_t(e * smat + rb * (D / 128) + cb)];
    const double tt = sbx::time_us(
        1, [&](int) { moe::train::cuda::fp8_transpose(t, s); }, s);
    const double to = sbx::time_us(
        1, [&](int) { old_transpose::launch(t, s); }, s);
    uint8_t* dcopy = sbx::dalloc<uint8_t>(size_t(E * mat));
    const double tc = sbx::time_us(
        1, [&](int) { SBX_CHECK(cudaMemcpyAsync(dcopy, din, size_t(E * mat), cudaMemcpyDeviceToDevice, s)); },
        s);
    const double bytes = 2.0 * double(E * mat);
    std::printf(
        "fp8_transpose, %lld experts' [%lld, %lld] codes: %.1f us, %.0f GB/s (the old kernel %.1f us, %.0f "
        "GB/s; "
        "cudaMemcpy of the same bytes %.1f us, %.0f GB/s)%s\n",
        static_cast<long long>(E), static_cast<long long>(F), static_cast<long long>(D), tt,
        bytes / tt * 1e-3, to, bytes / to * 1e-3, tc, bytes / tc * 1e-3, bad ? "  MISMATCH" : "");
    if (bad) ok = false;
    for (void* p : {static_cast<void*>(din), static_cast<void*>(dsc), static_cast<void*>(dout),
                    static_cast<void*>(dos), static_cast<void*>(dcopy)})
      SBX_CHECK(cudaFree(p));
  }
  std::printf("%s\n", ok ? "all cases: production bit-identical to the old kernel by the reciprocal, "
                           "fp8_transpose to the host's"
                         : "MISMATCH: see above");
  return ok ? 0 : 1;
}
