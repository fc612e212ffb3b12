// Sandbox: the trainer's E4M3 quantiser (src/train/cuda/fp8_quant.cu, compiled here from the production
// source) against a leaner candidate, at the shapes of train-mid's FP8 step.
//
// Why (bench/RESULTS.md, 2026-12-05, H100): in a kernel timeline of the FP8 step the production quantiser
// moved about 1 TB/s against a copy rate of about 3 TB/s. One expert's weight took 17 us in both layouts, and
// a layer's 192 launches took 3.3 ms a weight version. Nsight Compute: 20-23 cycles per issued instruction at
// 64-93 % occupancy, DRAM 17-53 % busy. The kernel is latency-bound in its instruction stream:
//   - a 128x128 tile is staged in shared memory as FP32;
//   - every row and every column gets a five-step shuffle reduction, even in the 128x128-block modes, which
//   need
//     one amax per tile;
//   - the column pass divides every element by its scale a second time, even where the block scale makes its
//     codes the row pass's codes.
//
// The candidate (v3) keeps the production arithmetic: the same scale, one IEEE division per code, the same
// codes, so its outputs must be bit-identical. It changes how the work is spread:
//   - thread (warp w, lane l) holds 4x4 sub-blocks in registers: rows 32 i + 4 w .. +3 (i < 4) at columns
//     4 l .. 4 l + 3, so all sixteen of its 16-byte loads are in flight together;
//   - row 1x128 scales: one warp reduction per row (a row lies in one warp);
//   - column 128x1 scales: each thread reduces its 16 rows in registers, and the 8 warps meet in 4 KB of
//     shared memory (no shuffles);
//   - block scales: one warp reduction and one 8-value shared-memory step per tile;
//   - the transposed layout under a block scale reuses the row codes (byte permutes of the 4x4 sub-block):
//     no second division.
//
// Checks: for every case, v3's q, qs, qt and qts equal production's byte for byte (production itself is
// checked bit for bit against a host reference by test_train_cuda's
// CudaTrainFp8.QuantiserMatchesHostBitForBit). Timing: median of 20 cycles after 3 warm-ups, rotating input
// copies past the L2. Bytes counted: the FP32 input read once, plus each output layout's codes and scales.
// Ceiling: a device-to-device cudaMemcpy of the input, timed in the same process (read + write).
//
// Sizes: --tokens 4096 (the rows of an activation: tokens in a micro-batch), --hidden 2048, --inner 1408.
#include <cfloat>

#include "../../../src/train/cuda/fp8_quant.cu"
#include "common.cuh"

namespace {

using moe::train::cuda::Fp8QuantArgs;

namespace v3 {

constexpr int kTile = 128, kWarps = 8;

__device__ __forceinline__ float scale_of(float amax) {
  return amax > 0.0f ? fmaxf(amax / 448.0f, FLT_MIN) : 1.0f;
}
__device__ __forceinline__ uint32_t code(float v, float s) {
  return uint32_t(__nv_cvt_float_to_fp8(__fdiv_rn(v, s), __NV_SATFINITE, __NV_E4M3));
}
// Four values (byte j = value j) divided by s.
__device__ __forceinline__ uint32_t pack(float a, float b, float c, float d, float s) {
  return code(a, s) | code(b, s) << 8 | code(c, s) << 16 | code(d, s) << 24;
}
__device__ __forceinline__ float amax4(const float4& f) {
  return fmaxf(fmaxf(fabsf(f.x), fabsf(f.y)), fmaxf(fabsf(f.z), fabsf(f.w)));
}
__device__ __forceinline__ float wmax(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

__global__ void __launch_bounds__(kWarps * 32) quantize(Fp8QuantArgs a) {
  __shared__ float colmax[kWarps][kTile];  // column mode 1: each warp's column maxima
  __shared__ float red[kWarps];            // block modes: each warp's maximum
  const int w = threadIdx.x / 32, l = threadIdx.x % 32;
  const int64_t r0 = int64_t(blockIdx.y) * kTile, c0 = int64_t(blockIdx.x) * kTile, c = c0 + 4 * l;
  const bool col_ok = c < a.cols;  // cols % 4 == 0: a lane's four columns are all in or all out
  float4 v[4][4];                  // [i][j]: row r0 + 32 i + 4 w + j, columns c .. c + 3
#pragma unroll
  for (int i = 0; i < 4; ++i)
#pragma unroll
    for (int j = 0; j < 4; ++j) {
      const int64_t r = r0 + 32 * i + 4 * w + j;
      v[i][j] = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
      if (r < a.rows && col_ok) v[i][j] = __ldcs(reinterpret_cast<const float4*>(a.x + r * a.ldx + c));
    }
  const int64_t qt_ld = a.qt_ld > 0 ? a.qt_ld : a.rows_out;
  if (a.row_mode == 1) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const int64_t r = r0 + 32 * i + 4 * w + j;
        const float s = scale_of(wmax(amax4(v[i][j])));
        if (r >= a.rows_out) continue;
        if (col_ok)
          *reinterpret_cast<uint32_t*>(a.q + r * a.cols + c) =
              pack(v[i][j].x, v[i][j].y, v[i][j].z, v[i][j].w, s);
        if (l == 0 && r < a.qs_ld) a.qs[int64_t(blockIdx.x) * a.qs_ld + r] = s;
      }
  }
  if (a.row_mode == 2 || a.col_mode == 2) {
    float m = 0.0f;
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) m = fmaxf(m, amax4(v[i][j]));
    m = wmax(m);
    if (l == 0) red[w] = m;
    __syncthreads();
    float blk = red[0];
#pragma unroll
    for (int k = 1; k < kWarps; ++k) blk = fmaxf(blk, red[k]);
    const float s = scale_of(blk);
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      uint32_t rw[4];  // row j's four codes
#pragma unroll
      for (int j = 0; j < 4; ++j) rw[j] = pack(v[i][j].x, v[i][j].y, v[i][j].z, v[i][j].w, s);
      const int64_t r = r0 + 32 * i + 4 * w;  // rows_out % 16 == 0: the four rows are all in or all out
      if (r >= a.rows_out || !col_ok) continue;
      if (a.row_mode == 2)
#pragma unroll
        for (int j = 0; j < 4; ++j) *reinterpret_cast<uint32_t*>(a.q + (r + j) * a.cols + c) = rw[j];
      if (a.col_mode == 2) {  // column k of the sub-block: byte k of each row word, rows in byte order
        const uint32_t lo01 = __byte_perm(rw[0], rw[1], 0x5140), lo23 = __byte_perm(rw[2], rw[3], 0x5140);
        const uint32_t hi01 = __byte_perm(rw[0], rw[1], 0x7362), hi23 = __byte_perm(rw[2], rw[3], 0x7362);
        const uint32_t cw[4] = {__byte_perm(lo01, lo23, 0x5410), __byte_perm(lo01, lo23, 0x7632),
                                __byte_perm(hi01, hi23, 0x5410), __byte_perm(hi01, hi23, 0x7632)};
#pragma unroll
        for (int k = 0; k < 4; ++k) *reinterpret_cast<uint32_t*>(a.qt + (c + k) * qt_ld + r) = cw[k];
      }
    }
    if (threadIdx.x == 0) {
      if (a.row_mode == 2) a.qs[int64_t(blockIdx.y) * a.qs_ld + blockIdx.x] = s;
      if (a.col_mode == 2) a.qts[int64_t(blockIdx.x) * a.qts_ld + blockIdx.y] = s;
    }
  }
  if (a.col_mode == 1) {
    float m[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        m[0] = fmaxf(m[0], fabsf(v[i][j].x)), m[1] = fmaxf(m[1], fabsf(v[i][j].y));
        m[2] = fmaxf(m[2], fabsf(v[i][j].z)), m[3] = fmaxf(m[3], fabsf(v[i][j].w));
      }
#pragma unroll
    for (int k = 0; k < 4; ++k) colmax[w][4 * l + k] = m[k];
    __syncthreads();
    float s[4];
#pragma unroll
    for (int k = 0; k < 4; ++k) {
      float cm = colmax[0][4 * l + k];
#pragma unroll
      for (int ww = 1; ww < kWarps; ++ww) cm = fmaxf(cm, colmax[ww][4 * l + k]);
      s[k] = scale_of(cm);
      if (w == 0 && col_ok) a.qts[int64_t(blockIdx.y) * a.qts_ld + c + k] = s[k];
    }
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const int64_t r = r0 + 32 * i + 4 * w;
      if (r >= a.rows_out || !col_ok) continue;
      *reinterpret_cast<uint32_t*>(a.qt + c * qt_ld + r) =
          pack(v[i][0].x, v[i][1].x, v[i][2].x, v[i][3].x, s[0]);
      *reinterpret_cast<uint32_t*>(a.qt + (c + 1) * qt_ld + r) =
          pack(v[i][0].y, v[i][1].y, v[i][2].y, v[i][3].y, s[1]);
      *reinterpret_cast<uint32_t*>(a.qt + (c + 2) * qt_ld + r) =
          pack(v[i][0].z, v[i][1].z, v[i][2].z, v[i][3].z, s[2]);
      *reinterpret_cast<uint32_t*>(a.qt + (c + 3) * qt_ld + r) =
          pack(v[i][0].w, v[i][1].w, v[i][2].w, v[i][3].w, s[3]);
    }
  }
}

void launch(const Fp8QuantArgs& a, cudaStream_t s) {
  const dim3 grid(unsigned((a.cols + kTile - 1) / kTile), unsigned((a.rows_out + kTile - 1) / kTile));
  quantize<<<grid, kWarps * 32, 0, s>>>(a);
}

}  // namespace v3

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
  std::printf("%-55s %10s %10s %8s %8s %8s\n", "case", "prod us", "v3 us", "prod GB/s", "v3 GB/s", "v3/copy");
  for (const Case& k : cases) {
    const Buffers p = make(k, 11), c = make(k, 11);
    const Fp8QuantArgs ap = args_for(k, p), ac = args_for(k, c);
    moe::train::cuda::fp8_quantize(ap, s);
    v3::launch(ac, s);
    SBX_CHECK(cudaStreamSynchronize(s));
    SBX_CHECK(cudaGetLastError());
    const size_t nq = size_t(ap.rows_out * k.cols), ns = scale_count(k);
    const int64_t bad = differing(p.q, c.q, nq) + differing(p.qt, c.qt, nq) + differing(p.qs, c.qs, ns) +
                        differing(p.qts, c.qts, ns);
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
    auto run = [&](bool cand) {
      return sbx::time_us(
          nbuf,
          [&](int i) {
            Fp8QuantArgs a = cand ? ac : ap;
            a.x = xs[size_t(i)];
            if (cand)
              v3::launch(a, s);
            else
              moe::train::cuda::fp8_quantize(a, s);
          },
          s);
    };
    const double tp = run(false), tc = run(true);
    const double tcopy = sbx::time_us(
        nbuf,
        [&](int i) { SBX_CHECK(cudaMemcpyAsync(dst, xs[size_t(i)], in_bytes, cudaMemcpyDeviceToDevice, s)); },
        s);
    const double layouts = (k.row_mode ? 1 : 0) + (k.col_mode ? 1 : 0);
    const double bytes = double(in_bytes) + layouts * double(nq) + 4.0 * double(ns);
    const double copy_gbs = 2.0 * double(in_bytes) / tcopy * 1e-3;
    std::printf("%-55s %10.2f %10.2f %8.0f %8.0f %7.1f%%%s\n", k.name, tp, tc, bytes / tp * 1e-3,
                bytes / tc * 1e-3, 100.0 * (bytes / tc * 1e-3) / copy_gbs, bad ? "  MISMATCH" : "");
    if (bad) std::printf("  %lld bytes or scales differ from production\n", static_cast<long long>(bad));
    for (float* b : xs) SBX_CHECK(cudaFree(b));
    SBX_CHECK(cudaFree(dst));
    for (const Buffers* b : {&p, &c}) {
      SBX_CHECK(cudaFree(b->x));
      SBX_CHECK(cudaFree(b->q));
      SBX_CHECK(cudaFree(b->qt));
      SBX_CHECK(cudaFree(b->qs));
      SBX_CHECK(cudaFree(b->qts));
    }
  }
  std::printf(
      "copy ceiling: cudaMemcpy device to device of each case's input, same process (read + write)\n");
  std::printf("%s\n", ok ? "all cases bit-identical to production" : "MISMATCH: see above");
  return ok ? 0 : 1;
}
