// --gemm fp8 (fp8_gemm.h, fp8_quant.cu): DeepSeek-V3's FP8 mixed precision against independent host
// references. Fresh random data each run, seeded from the clock (printed). Without a GPU every test skips
// visibly.
//
// Error budget (also in docs/training.md, "FP8 training"):
//  - Quantiser: exact. The host reference rounds v * (1 / scale) (both in FP32, as the device computes it) to
//  the
//    nearest of E4M3's 127 finite magnitudes by search (ties to the even code, saturating at 448), scale =
//    amax / 448 per tile in FP32 (1 for an all-zero tile), so every byte and every scale must be equal.
//  - A GEMM against the float64 product of its *dequantised* operands: only the accumulation differs.
//  Hopper's FP8
//    tensor cores keep ~14 bits of the running sum inside a 128-deep block (DeepSeek-V3 report,
//    section 3.3.2) before cuBLASLt promotes it, scaled, into FP32: each of the 4 k=32 steps of a block
//    rounds the running sum to ~2^-14 relative, so a block's sum carries <= 4 x 2^-14 = 2.4e-4 relative even
//    if the roundings all go one way, and the output (a random-sign sum of blocks) no more. Bound 2e-3 (8x
//    margin): 25x below the quantisation error below, which the test must tell apart.
//  - Against the unquantised float64 product: E4M3 keeps 3 mantissa bits, so rounding moves a (normal)
//  element by
//    at most half a step, |delta| <= 2^-4 relative. A product term x_i w_i then carries delta_x + delta_w,
//    rms
//    <= sqrt(2) 2^-4 for independent roundings. For random data of either sign the K terms' errors add like
//    random walks, sqrt(K) rms(term error), as the output does, sqrt(K) rms(term): the relative L2 error of
//    the output is that of one term, independent of K: <= sqrt(2) 2^-4 = 0.088 (E4M3's subnormals, below 2^-6
//    of the tile's scale, are rare enough in Gaussian tiles not to move it).
//  - A whole step, FP8 vs BF16 (random model, real widths multiples of 128): see fp8_step below.
#include <cuda_fp8.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <limits>
#include <map>
#include <nlohmann/json.hpp>
#include <thread>

#include "backend/cuda/cuda_ops.h"
#include "core/dtype.h"
#include "core/thread_pool.h"
#include "train/cuda/device_trainer.h"
#include "train/cuda/fp8_experts.h"
#include "train/cuda/fp8_gemm.h"
#include "train/cuda/kernels.h"
#include "train/optimizer.h"
#include "train_cuda/util.h"

namespace moe::train::test {
namespace {

using cuda::Fp8Gemms;
using cuda::Fp8QuantArgs;
using cuda::Fp8Wgrad;

uint64_t clock_seed(const char* what) {
  const uint64_t seed = uint64_t(std::chrono::system_clock::now().time_since_epoch().count());
  std::printf("%s: seed %llu\n", what, static_cast<unsigned long long>(seed));
  return seed;
}

// ---- the host reference of E4M3

double e4m3_value(uint8_t c) {
  const int e = (c >> 3) & 15, mnt = c & 7;
  const double v = e == 0 ? std::ldexp(double(mnt), -9) : std::ldexp(1.0 + mnt / 8.0, e - 7);
  return (c & 0x80) ? -v : v;
}

uint8_t e4m3_code(float v) {
  const double a = std::fabs(double(v));
  uint8_t best = 0x7e;  // 448, the largest finite (0x7f is NaN): saturation
  if (a < 448.0) {
    double bd = INFINITY;
    for (int c = 0; c <= 0x7e; ++c) {
      const double d = std::fabs(e4m3_value(uint8_t(c)) - a);
      if (d < bd || (d == bd && c % 2 == 0)) bd = d, best = uint8_t(c);
    }
  }
  return uint8_t(best | (std::signbit(v) ? 0x80 : 0));
}

// Quantised matrix: codes and the scale of every element (host), dequantised on demand.
struct HostQ {
  std::vector<uint8_t> q;
  std::vector<float> scale;  // per element (the tile's)
  double deq(size_t i) const { return e4m3_value(q[i]) * double(scale[i]); }
};

// x [rows, cols] quantised by tiles of th x tw (1x128, 128x1 or 128x128); out of range elements count as 0.
// v * (1 / scale), as both quantisers compute it (the trainer's fp8_quant.cu, the inference engine's
// backend/cuda/fp8_quant.cu): v / scale rounds differently for a value within an FP32 ulp of a code's
// rounding midpoint, and one such code in a row 20x the others' magnitude moved a product's relative L2 by
// ~1e-3.
HostQ host_quantize(const std::vector<float>& x, int64_t rows, int64_t cols, int64_t th, int64_t tw) {
  HostQ h;
  h.q.resize(size_t(rows * cols));
  h.scale.resize(size_t(rows * cols));
  for (int64_t r0 = 0; r0 < rows; r0 += th)
    for (int64_t c0 = 0; c0 < cols; c0 += tw) {
      float amax = 0;
      for (int64_t r = r0; r < std::min(rows, r0 + th); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + tw); ++c) amax = std::max(amax, std::fabs(x[size_t(r * cols + c)]));
      const float scale = amax > 0 ? std::max(amax / 448.0f, std::numeric_limits<float>::min()) : 1.0f;
      const float inv = 1.0f / scale;
      for (int64_t r = r0; r < std::min(rows, r0 + th); ++r)
        for (int64_t c = c0; c < std::min(cols, c0 + tw); ++c) {
          const size_t i = size_t(r * cols + c);
          h.q[i] = e4m3_code(x[i] * inv);
          h.scale[i] = scale;
        }
    }
  return h;
}

// Random rows whose magnitudes span ~e^+-3 (so that tiles get different scales), never zero.
std::vector<float> spread(int64_t rows, int64_t cols, uint64_t seed) {
  std::vector<float> x = randn(size_t(rows * cols), seed);
  std::mt19937_64 g(seed ^ 0x5eed);
  std::uniform_real_distribution<double> u(-3, 3);
  for (int64_t r = 0; r < rows; ++r) {
    const float f = float(std::exp(u(g)));
    for (int64_t c = 0; c < cols; ++c) x[size_t(r * cols + c)] *= f;
  }
  return x;
}

template <typename T>
std::vector<T> zeros_of(size_t n) { return std::vector<T>(n, T(0)); }

// The host reference itself: E4M3's known codes (ties to even, saturation, subnormals), and agreement with the
// CUDA headers' host-side conversion on random magnitudes over E4M3's whole range and on exact midpoints. Needs
// no GPU.
TEST(CudaTrainFp8, HostE4M3ReferenceKnownCodesAndCudaHostConversion) {
  const std::pair<float, uint8_t> known[] = {
      {0.0f, 0x00},   {1.0f, 0x38},       {1.0625f, 0x38} /* tie -> even */, {1.1875f, 0x3a} /* tie -> even */,
      {448.0f, 0x7e}, {464.0f, 0x7e},     {1e30f, 0x7e} /* saturate */,       {0x1p-9f, 0x01} /* min subnormal */,
      {0x1p-10f, 0x00} /* tie -> 0 */,     {0x1.8p-10f, 0x01},                 {0x1p-6f, 0x08} /* min normal */,
      {-1.0f, 0xb8}};
  for (const auto& [v, code] : known) EXPECT_EQ(int(e4m3_code(v)), int(code)) << v;
  const uint64_t seed = clock_seed("e4m3 host reference");
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<double> lg(-14, 10);
  int64_t bad = 0;
  for (int i = 0; i < 200000; ++i) {
    float v = float(std::exp2(lg(g))) * ((g() & 1) ? -1.0f : 1.0f);
    if (i % 4 == 0)  // the midpoint of two codes (exact in float): the rounding rule decides
      v = float((e4m3_value(uint8_t(g() % 127)) + e4m3_value(uint8_t(g() % 127))) / 2);
    bad += e4m3_code(v) != uint8_t(__nv_cvt_float_to_fp8(v, __NV_SATFINITE, __NV_E4M3));
  }
  EXPECT_EQ(bad, 0) << "values where the search reference and cuda_fp8.h's host conversion disagree";
}

// ---- the quantiser, bit for bit

// The argument checks of the quantiser and the transpose (host code: runs without a GPU). Pointers are never
// dereferenced: fake, suitably aligned addresses.
TEST(CudaTrainFp8, QuantiserAndTransposeRefuseBadArguments) {
  auto* x = reinterpret_cast<const float*>(uintptr_t(1) << 20);
  auto* q = reinterpret_cast<uint8_t*>(uintptr_t(2) << 20);
  auto* qs = reinterpret_cast<float*>(uintptr_t(3) << 20);
  Fp8QuantArgs ok;
  ok.x = x, ok.rows = 200, ok.cols = 256, ok.ldx = 256, ok.rows_out = 208;
  ok.row_mode = 1, ok.q = q, ok.qs = qs, ok.qs_ld = 200;
  ok.col_mode = 2, ok.qt = q + (1 << 20), ok.qts = qs + (1 << 16), ok.qts_ld = 2;
  ASSERT_TRUE(cuda::fp8_quantize_args_ok(ok));
  Fp8QuantArgs batched = ok;
  batched.batch = 3, batched.x_bstride = 200 * 256, batched.q_bstride = 208 * 256, batched.qs_bstride = 400;
  batched.qt_bstride = 208 * 256, batched.qts_bstride = 4;
  EXPECT_TRUE(cuda::fp8_quantize_args_ok(batched));
  const std::pair<const char*, std::function<void(Fp8QuantArgs&)>> bad[] = {
      {"cols not a multiple of 16", [](Fp8QuantArgs& a) { a.cols = 248, a.ldx = 248; }},
      {"rows_out not a multiple of 16", [](Fp8QuantArgs& a) { a.rows_out = 204; }},
      {"rows_out below rows", [](Fp8QuantArgs& a) { a.rows_out = 192; }},
      {"x not 16-byte aligned", [&](Fp8QuantArgs& a) { a.x = x + 1; }},
      {"ldx not a multiple of 4", [](Fp8QuantArgs& a) { a.ldx = 258; }},
      {"ldx of 2^24 (the kernel's 32-bit offsets)", [](Fp8QuantArgs& a) { a.ldx = int64_t(1) << 24; }},
      {"a row mode without its scales", [](Fp8QuantArgs& a) { a.qs = nullptr; }},
      {"a column mode without its output", [](Fp8QuantArgs& a) { a.qt = nullptr; }},
      {"row mode 3", [](Fp8QuantArgs& a) { a.row_mode = 3; }},
      {"qt_ld below rows_out", [](Fp8QuantArgs& a) { a.qt_ld = 200; }},
      {"batch 0", [](Fp8QuantArgs& a) { a.batch = 0; }},
      {"batch 65536 (grid z)",
       [](Fp8QuantArgs& a) {
         a.batch = 65536, a.x_bstride = 1 << 16, a.q_bstride = 1 << 16, a.qs_bstride = 1024,
         a.qt_bstride = 1 << 16, a.qts_bstride = 4;
       }},
      {"a batch whose inputs overlap",
       [](Fp8QuantArgs& a) {
         a.batch = 2, a.x_bstride = 256, a.q_bstride = 1 << 16, a.qs_bstride = 1024, a.qt_bstride = 1 << 16,
         a.qts_bstride = 4;
       }},
      {"a batch without output strides", [](Fp8QuantArgs& a) { a.batch = 2, a.x_bstride = 1 << 16; }},
      {"a batch stride that misaligns x",
       [](Fp8QuantArgs& a) {
         a.batch = 2, a.x_bstride = (1 << 16) + 2, a.q_bstride = 1 << 16, a.qs_bstride = 1024,
         a.qt_bstride = 1 << 16, a.qts_bstride = 4;
       }},
  };
  for (const auto& [what, change] : bad) {
    Fp8QuantArgs a = ok;
    change(a);
    EXPECT_FALSE(cuda::fp8_quantize_args_ok(a)) << what;
  }
  cuda::Fp8TransposeArgs t;
  t.in = q, t.in_scales = qs, t.rows = 256, t.cols = 384, t.in_stride = 256 * 384, t.in_sld = 3,
  t.in_sstride = 6;
  t.out = q + (1 << 20), t.out_scales = qs + (1 << 16), t.out_ld = 512, t.out_stride = 512 * 384,
  t.out_sld = 4;
  t.out_sstride = 12, t.batch = 2;
  ASSERT_TRUE(cuda::fp8_transpose_args_ok(t));
  const std::pair<const char*, std::function<void(cuda::Fp8TransposeArgs&)>> tbad[] = {
      {"rows not a multiple of 128", [](cuda::Fp8TransposeArgs& a) { a.rows = 192; }},
      {"out_ld below rows", [](cuda::Fp8TransposeArgs& a) { a.out_ld = 128; }},
      {"out_ld not a multiple of 16 (16-byte stores)", [](cuda::Fp8TransposeArgs& a) { a.out_ld = 264; }},
      {"out not 16-byte aligned", [](cuda::Fp8TransposeArgs& a) { a.out += 4; }},
      {"in_stride not a multiple of 16", [](cuda::Fp8TransposeArgs& a) { a.in_stride += 8; }},
      {"the output scale grid too narrow", [](cuda::Fp8TransposeArgs& a) { a.out_sld = 1; }},
      {"batch 0", [](cuda::Fp8TransposeArgs& a) { a.batch = 0; }},
  };
  for (const auto& [what, change] : tbad) {
    cuda::Fp8TransposeArgs a = t;
    change(a);
    EXPECT_FALSE(cuda::fp8_transpose_args_ok(a)) << what;
  }
}

TEST(CudaTrainFp8, QuantiserMatchesHostBitForBit) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed("fp8 quantiser");
  cudaStream_t s = nullptr;
  // Activations: 200 rows (a partial 128-row tile), 384 columns; rows_out 384: rows 256..383 are padding, an
  // all-zero 128-row tile (scale 1). 1x128 tiles in x's layout, 128x1 tiles in the transposed layout.
  {
    const int64_t n = 200, k = 384, n_out = 384, n4 = 200;
    std::vector<float> x = spread(n, k, seed);
    // Row 7's first 1x128 tile: zeros and one subnormal (amax / 448 rounds to 0: without the FLT_MIN floor, 0 / 0
    // gave a NaN code); row 8's: values near 1e-37 (a subnormal amax / 448).
    for (int64_t c = 0; c < 128; ++c) x[size_t(7 * k + c)] = c == 3 ? 1e-44f : 0.0f;
    for (int64_t c = 0; c < 128; ++c) x[size_t(8 * k + c)] *= 1e-37f;
    DeviceArray<float> dx(x);
    DeviceArray<uint8_t> q(zeros_of<uint8_t>(size_t(n_out * k))), qt(zeros_of<uint8_t>(size_t(k * n_out)));
    DeviceArray<float> qs(zeros_of<float>(size_t(k / 128 * n4))), qts(zeros_of<float>(size_t(n_out / 128 * k)));
    Fp8QuantArgs a;
    a.x = dx.get(), a.rows = n, a.cols = k, a.ldx = k, a.rows_out = n_out;
    a.row_mode = 1, a.q = q.get(), a.qs = qs.get(), a.qs_ld = n4;
    a.col_mode = 1, a.qt = qt.get(), a.qts = qts.get(), a.qts_ld = k;
    ASSERT_TRUE(cuda::fp8_quantize_args_ok(a));
    cuda::fp8_quantize(a, s);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    std::vector<float> xp(x);
    xp.resize(size_t(n_out * k), 0.0f);  // the padded rows
    const HostQ rows = host_quantize(xp, n_out, k, 1, 128), cols = host_quantize(xp, n_out, k, 128, 1);
    const auto gq = q.host(), gqt = qt.host();
    const auto gqs = qs.host(), gqts = qts.host();
    int64_t bad = 0;
    for (int64_t r = 0; r < n_out; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const size_t i = size_t(r * k + c);
        bad += gq[i] != rows.q[i];
        bad += gqt[size_t(c * n_out + r)] != cols.q[i];
        if (c % 128 == 0 && r < n4) bad += gqs[size_t(c / 128 * n4 + r)] != rows.scale[i];
        if (r % 128 == 0) bad += gqts[size_t(r / 128 * k + c)] != cols.scale[i];
      }
    EXPECT_EQ(bad, 0) << "1x128 / 128x1 tiles: mismatched bytes or scales";
    int64_t nan_codes = 0;
    for (size_t i = 0; i < gq.size(); ++i) nan_codes += (gq[i] & 0x7f) == 0x7f;
    for (size_t i = 0; i < gqt.size(); ++i) nan_codes += (gqt[i] & 0x7f) == 0x7f;
    EXPECT_EQ(nan_codes, 0) << "E4M3 NaN codes in the quantised operands";
    EXPECT_EQ(gqs[size_t(7)], std::numeric_limits<float>::min()) << "the subnormal tile's scale";
    EXPECT_EQ(gqts[size_t(2 * k)], 1.0f) << "an all-zero tile's scale";
  }
  // Weights: 272 x 208 (partial 128x128 blocks in both directions), 128x128 blocks, both layouts.
  {
    const int64_t m = 272, k = 208, ldk = 4, ldm = 4;  // ceil(208/128) = 2 and ceil(272/128) = 3, rounded up to 4
    const std::vector<float> w = spread(m, k, seed + 1);
    DeviceArray<float> dw(w);
    DeviceArray<uint8_t> q(zeros_of<uint8_t>(size_t(m * k))), qt(zeros_of<uint8_t>(size_t(k * m)));
    DeviceArray<float> qs(zeros_of<float>(size_t(3 * ldk))), qts(zeros_of<float>(size_t(2 * ldm)));
    Fp8QuantArgs a;
    a.x = dw.get(), a.rows = m, a.cols = k, a.ldx = k, a.rows_out = m;
    a.row_mode = 2, a.q = q.get(), a.qs = qs.get(), a.qs_ld = ldk;
    a.col_mode = 2, a.qt = qt.get(), a.qts = qts.get(), a.qts_ld = ldm;
    cuda::fp8_quantize(a, s);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const HostQ h = host_quantize(w, m, k, 128, 128);
    const auto gq = q.host(), gqt = qt.host();
    const auto gqs = qs.host(), gqts = qts.host();
    int64_t bad = 0;
    for (int64_t r = 0; r < m; ++r)
      for (int64_t c = 0; c < k; ++c) {
        const size_t i = size_t(r * k + c);
        bad += gq[i] != h.q[i];
        bad += gqt[size_t(c * m + r)] != h.q[i];
        if (r % 128 == 0 && c % 128 == 0) {
          bad += gqs[size_t(r / 128 * ldk + c / 128)] != h.scale[i];
          bad += gqts[size_t(c / 128 * ldm + r / 128)] != h.scale[i];
        }
      }
    EXPECT_EQ(bad, 0) << "128x128 blocks: mismatched bytes or scales";
  }
  // A batch of 3 matrices 144 x 256 (a partial row tile), 1x128 and 128x1 tiles, inputs 40000 floats apart
  // (a gap after each) and outputs at their own strides: each as the host quantises it alone.
  {
    const int64_t B = 3, m = 144, k = 256, xs = 40000, qsz = m * k, nq4 = 144, nrb = 2;
    std::vector<float> x(size_t(B * xs), 7.0f);  // the gaps: 7, which must not reach any tile's amax
    for (int64_t z = 0; z < B; ++z) {
      const std::vector<float> xz = spread(m, k, seed + 2 + uint64_t(z));
      std::copy(xz.begin(), xz.end(), x.begin() + z * xs);
    }
    DeviceArray<float> dx(x);
    DeviceArray<uint8_t> q(zeros_of<uint8_t>(size_t(B * qsz))), qt(zeros_of<uint8_t>(size_t(B * qsz)));
    DeviceArray<float> qs(zeros_of<float>(size_t(B * 2 * nq4))), qts(zeros_of<float>(size_t(B * nrb * k)));
    Fp8QuantArgs a;
    a.x = dx.get(), a.rows = m, a.cols = k, a.ldx = k, a.rows_out = m;
    a.row_mode = 1, a.q = q.get(), a.qs = qs.get(), a.qs_ld = nq4;
    a.col_mode = 1, a.qt = qt.get(), a.qts = qts.get(), a.qts_ld = k;
    a.batch = int(B), a.x_bstride = xs, a.q_bstride = qsz, a.qs_bstride = 2 * nq4, a.qt_bstride = qsz,
    a.qts_bstride = nrb * k;
    ASSERT_TRUE(cuda::fp8_quantize_args_ok(a));
    cuda::fp8_quantize(a, s);
    ASSERT_EQ(cudaGetLastError(), cudaSuccess);
    const auto gq = q.host(), gqt = qt.host();
    const auto gqs = qs.host(), gqts = qts.host();
    int64_t bad = 0;
    for (int64_t z = 0; z < B; ++z) {
      const std::vector<float> xz(x.begin() + z * xs, x.begin() + z * xs + m * k);
      const HostQ rows = host_quantize(xz, m, k, 1, 128), cols = host_quantize(xz, m, k, 128, 1);
      for (int64_t r = 0; r < m; ++r)
        for (int64_t c = 0; c < k; ++c) {
          const size_t i = size_t(r * k + c);
          bad += gq[size_t(z * qsz) + i] != rows.q[i];
          bad += gqt[size_t(z * qsz + c * m + r)] != cols.q[i];
          if (c % 128 == 0) bad += gqs[size_t(z * 2 * nq4 + c / 128 * nq4 + r)] != rows.scale[i];
          if (r % 128 == 0) bad += gqts[size_t(z * nrb * k + r / 128 * k + c)] != cols.scale[i];
        }
    }
    EXPECT_EQ(bad, 0) << "a batch of three: mismatched bytes or scales";
  }
}

// ---- the three products

double rel_l2_d(const std::vector<float>& got, const std::vector<double>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double(got[i]) - want[i]) * (double(got[i]) - want[i]);
    den += want[i] * want[i];
  }
  return std::sqrt(num / den);
}

// out [r, c] = sum_j a(r, j) b(c, j) in float64, a [rows, inner] and b [cols, inner] given as functions.
template <typename A, typename B>
std::vector<double> product(int64_t rows, int64_t cols, int64_t inner, A a, B b) {
  std::vector<double> am(static_cast<size_t>(rows * inner)), bm(static_cast<size_t>(cols * inner));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t j = 0; j < inner; ++j) am[size_t(r * inner + j)] = a(r, j);
  for (int64_t c = 0; c < cols; ++c)
    for (int64_t j = 0; j < inner; ++j) bm[size_t(c * inner + j)] = b(c, j);
  std::vector<double> out(static_cast<size_t>(rows * cols));
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < cols; ++c) {
      const double* ar = am.data() + r * inner;
      const double* br = bm.data() + c * inner;
      double s = 0;
      for (int64_t j = 0; j < inner; ++j) s += ar[j] * br[j];
      out[size_t(r * cols + c)] = s;
    }
  return out;
}

constexpr double kTight = 2e-3, kQuant = 0.088;  // the header's bounds

void check_gemm(const char* what, const std::vector<float>& got, const std::vector<double>& deq,
                const std::vector<double>& exact) {
  const double e_deq = rel_l2_d(got, deq), e_exact = rel_l2_d(got, exact);
  std::printf("%s: rel L2 %.3g vs the dequantised operands' product (bound %.0e), %.3g vs the unquantised (bound %.3f)\n",
              what, e_deq, kTight, e_exact, kQuant);
  EXPECT_LT(e_deq, kTight) << what;
  EXPECT_LT(e_exact, kQuant) << what;
}

void gemms(Fp8Wgrad mode, const char* name) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed(name);
  // n = 301 tokens: padded to 304 for Fprop / Dgrad (through the scratch output), 384 for Wgrad.
  const int64_t n = 301, k = 384, m = 256;
  const std::vector<float> x = randn(size_t(n * k), seed), w = randn(size_t(m * k), seed + 1, 0.05),
                           dy = randn(size_t(n * m), seed + 2), g0 = randn(size_t(m * k), seed + 3, 10.0),
                           dx0 = randn(size_t(n * k), seed + 4);
  cuda::CudaCompute cc;  // the device
  Fp8Gemms f8(cc.stream(), mode);
  if (mode == Fp8Wgrad::TileTile && !Fp8Gemms(cc.stream(), Fp8Wgrad::Auto).wgrad_tile_tile(n, k, m))
    GTEST_SKIP() << "cuBLASLt offers no VEC128 x VEC128 FP8 kernel here: Wgrad runs with x^T per 128x128 block";
  DeviceArray<float> dxv(x), dwv(w), ddy(dy), y(zeros_of<float>(size_t(n * m))), dxo(dx0), dg(g0);
  f8.fprop(y.get(), dxv.get(), dwv.get(), n, k, m);
  f8.backward(dxo.get(), dg.get(), ddy.get(), dxv.get(), dwv.get(), n, k, m, true);
  cc.sync();
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const HostQ xq = host_quantize(x, n, k, 1, 128), wq = host_quantize(w, m, k, 128, 128),
              dyq = host_quantize(dy, n, m, 1, 128), dyt = host_quantize(dy, n, m, 128, 1),
              xt = host_quantize(x, n, k, 128, mode == Fp8Wgrad::TileBlock ? 128 : 1);
  // Fprop: y = x W^T
  check_gemm(std::string(std::string(name) + " Fprop").c_str(), y.host(),
             product(n, m, k, [&](int64_t r, int64_t j) { return xq.deq(size_t(r * k + j)); },
                     [&](int64_t c, int64_t j) { return wq.deq(size_t(c * k + j)); }),
             product(n, m, k, [&](int64_t r, int64_t j) { return double(x[size_t(r * k + j)]); },
                     [&](int64_t c, int64_t j) { return double(w[size_t(c * k + j)]); }));
  // Dgrad: dx += dy W (the increment)
  check_gemm(std::string(std::string(name) + " Dgrad").c_str(), minus(dxo.host(), dx0),
             product(n, k, m, [&](int64_t r, int64_t j) { return dyq.deq(size_t(r * m + j)); },
                     [&](int64_t c, int64_t j) { return wq.deq(size_t(j * k + c)); }),
             product(n, k, m, [&](int64_t r, int64_t j) { return double(dy[size_t(r * m + j)]); },
                     [&](int64_t c, int64_t j) { return double(w[size_t(j * k + c)]); }));
  // Wgrad: dW += dy^T x (the increment; g0's rms 10 is ~0.6x the product's 17, so the subtraction adds ~2^-24)
  check_gemm(std::string(std::string(name) + " Wgrad").c_str(), minus(dg.host(), g0),
             product(m, k, n, [&](int64_t r, int64_t j) { return dyt.deq(size_t(j * m + r)); },
                     [&](int64_t c, int64_t j) { return xt.deq(size_t(j * k + c)); }),
             product(m, k, n, [&](int64_t r, int64_t j) { return double(dy[size_t(j * m + r)]); },
                     [&](int64_t c, int64_t j) { return double(x[size_t(j * k + c)]); }));
  EXPECT_EQ(f8.counts().weight_quantisations, 1) << "W and W^T are quantised once per weight version";
  // same_x (a second product of one input): the held quantisations are taken again, the products bit for bit
  // those above; after another input was quantised, or a product of x ran elsewhere (forget_x), or for a
  // different shape, x is quantised again (a stale form would give the other input's product).
  const std::vector<float> y_first = y.host(), dg_first = dg.host();
  DeviceArray<float> dx2(zeros_of<float>(size_t(n * k))), dg2(g0);
  f8.fprop(y.get(), dxv.get(), dwv.get(), n, k, m, /*same_x=*/true);
  f8.backward(dx2.get(), dg2.get(), ddy.get(), dxv.get(), dwv.get(), n, k, m, false, /*same_x=*/true);
  cc.sync();
  EXPECT_EQ(f8.counts().x_reuses, 2);
  EXPECT_EQ(y.host(), y_first);
  EXPECT_EQ(dg2.host(), dg_first);
  std::vector<float> x2 = x;
  for (float& v : x2) v = -2.0f * v;  // the same buffer, new values: quantised again when same_x is not said
  ASSERT_EQ(cudaMemcpy(dxv.get(), x2.data(), x2.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  f8.fprop(y.get(), dxv.get(), dwv.get(), n, k, m);
  f8.forget_x();
  f8.fprop(y.get(), dxv.get(), dwv.get(), n, k, m, /*same_x=*/true);
  cc.sync();
  EXPECT_EQ(f8.counts().x_reuses, 2);
  const std::vector<float> y2 = y.host();
  for (size_t i = 0; i < y2.size(); ++i)
    ASSERT_EQ(y2[i], -2.0f * y_first[i]) << "x -> -2x scales every code's scale by 2 exactly (i " << i << ")";
  // A training pass (begin_pass(true)): Fprop quantises x in both tilings and keeps x^T, which the Wgrad of
  // the same x in the same pass reads instead of quantising x again: the same bytes, so the same dW bit for
  // bit (of x back at its first values). A later pass does not take it: its x may have changed.
  ASSERT_EQ(cudaMemcpy(dxv.get(), x.data(), x.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  Fp8Gemms kept(cc.stream(), mode);
  DeviceArray<float> dg3(g0), dgz(zeros_of<float>(g0.size())), dg4(zeros_of<float>(g0.size()));
  kept.begin_pass(true);
  kept.fprop(y.get(), dxv.get(), dwv.get(), n, k, m);
  kept.backward(nullptr, dg3.get(), ddy.get(), dxv.get(), dwv.get(), n, k, m, false);
  kept.backward(nullptr, dgz.get(), ddy.get(), dxv.get(), dwv.get(), n, k, m, false);
  cc.sync();
  EXPECT_EQ(kept.counts().kept_xt_reads, 2);
  EXPECT_EQ(y.host(), y_first) << "Fprop with x^T kept beside it";
  EXPECT_EQ(dg3.host(), dg_first) << "Wgrad on the kept x^T";
  ASSERT_EQ(cudaMemcpy(dxv.get(), x2.data(), x2.size() * 4, cudaMemcpyHostToDevice), cudaSuccess);
  kept.begin_pass(true);
  kept.backward(nullptr, dg4.get(), ddy.get(), dxv.get(), dwv.get(), n, k, m, false);
  cc.sync();
  EXPECT_EQ(kept.counts().kept_xt_reads, 2) << "a new pass quantises x^T again";
  const std::vector<float> got4 = dg4.host(), gotz = dgz.host();
  for (size_t i = 0; i < got4.size(); ++i) ASSERT_EQ(got4[i], -2.0f * gotz[i]) << "dW of -2x (i " << i << ")";
}

TEST(CudaTrainFp8, GemmsMatchHostWgradTileTile) { gemms(Fp8Wgrad::TileTile, "fp8 gemms (Wgrad 1x128 x 1x128)"); }
TEST(CudaTrainFp8, GemmsMatchHostWgradTileBlock) { gemms(Fp8Wgrad::TileBlock, "fp8 gemms (Wgrad 1x128 x 128x128)"); }

TEST(CudaTrainFp8, WgradScaleModeProbe) {
  SKIP_WITHOUT_GPU();
  cuda::CudaCompute cc;
  Fp8Gemms f8(cc.stream(), Fp8Wgrad::Auto);
  std::printf("cuBLASLt VEC128_32F x VEC128_32F (Wgrad, T 256 N 384 K 512): %s\n",
              f8.wgrad_tile_tile(512, 384, 256) ? "offered" : "not offered (x^T per 128x128 block)");
}

// ---- the routed experts' grouped FP8 products (fp8_experts.h)
//
// Three experts of real widths' kind (D 256, F 384: two and three K blocks, three N tiles) with 150, 0 and 37
// sorted rows (an expert of two work items, 128 + 22 rows; an empty one; a short one), BF16 activations as
// the grouped path keeps them, FP32 weights. Each product against the float64 product of its host-quantised
// operands (activations per 1x128 tile of the BF16 values, weights per 128x128 block; dxs's operand is dgate
// and dup side by side, each tiled on its own) and against the unquantised product: the bounds of the header
// above (the kernel promotes each 128-deep block into FP32 as cuBLASLt does). The activations' host codes are
// made as the device makes them and checked equal for act, so the products differ from their references only
// by the kernel's accumulation. The weights lie in one buffer, expert after expert, as the trainer's arena
// lays them out (one quantiser launch per matrix kind for all experts); the ForwardOnly run below takes them
// from separate buffers (one launch per expert) and must give the same bits.
TEST(CudaTrainFp8, GroupedExpertsMatchHost) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed("fp8 grouped experts");
  const int64_t D = 256, F = 384, E = 3;
  if (!cuda::Fp8Experts::applies(D, F)) GTEST_SKIP() << "the grouped FP8 kernel needs an sm_90 device";
  const std::vector<int64_t> offsets = {0, 150, 150, 187};
  const int64_t nk = offsets.back();
  auto bf16_rounded = [](std::vector<float> v) {
    for (float& x : v) x = bf16_to_float(float_to_bf16(x));
    return v;
  };
  auto bits = [](const std::vector<float>& v) {
    std::vector<uint16_t> b(v.size());
    for (size_t i = 0; i < v.size(); ++i) b[i] = float_to_bf16(v[i]);
    return b;
  };
  const std::vector<float> xs = bf16_rounded(spread(nk, D, seed)),
                           act = bf16_rounded(spread(nk, F, seed + 1)),
                           dys = bf16_rounded(spread(nk, D, seed + 2)),
                           dg = bf16_rounded(spread(nk, F, seed + 3)),
                           du = bf16_rounded(spread(nk, F, seed + 4));
  std::vector<std::vector<float>> wg, wu, wd;  // per expert: gate, up [F, D], down [D, F]
  for (int64_t e = 0; e < E; ++e) {
    wg.push_back(randn(size_t(F * D), seed + 10 + 3 * e, 0.05));
    wu.push_back(randn(size_t(F * D), seed + 11 + 3 * e, 0.05));
    wd.push_back(randn(size_t(D * F), seed + 12 + 3 * e, 0.05));
  }
  cuda::CudaCompute cc;
  cuda::Fp8Experts x8(cc.stream());
  std::vector<float> packed;  // gate, up, down of expert 0, then of expert 1, ...
  for (int64_t e = 0; e < E; ++e)
    for (const auto* w : {&wg[size_t(e)], &wu[size_t(e)], &wd[size_t(e)]})
      packed.insert(packed.end(), w->begin(), w->end());
  DeviceArray<float> d_packed(packed);
  std::vector<std::unique_ptr<DeviceArray<float>>> dw;  // the same weights, a buffer each
  cuda::Fp8Experts::Layer L, Lsep;
  L.key = &offsets, L.offsets = &offsets, L.D = D, L.F = F;
  Lsep = L, Lsep.key = &dw;
  for (int64_t i = 0; i < 3 * E; ++i) {
    L.w.push_back(d_packed.get() + i * F * D);
    dw.push_back(std::make_unique<DeviceArray<float>>(i % 3 == 0   ? wg[size_t(i / 3)]
                                                      : i % 3 == 1 ? wu[size_t(i / 3)]
                                                                   : wd[size_t(i / 3)]));
    Lsep.w.push_back(dw.back()->get());
  }
  DeviceArray<uint16_t> d_xs(bits(xs)), d_act(bits(act)), d_dys(bits(dys)), d_dg(bits(dg)), d_du(bits(du));
  DeviceArray<float> gate(zeros_of<float>(size_t(nk * F))), up(zeros_of<float>(size_t(nk * F))),
      eout(zeros_of<float>(size_t(nk * D))), dact(zeros_of<float>(size_t(nk * F))),
      dxs(zeros_of<float>(size_t(nk * D)));
  x8.forward_gate_up(L, d_xs.get(), gate.get(), up.get());
  x8.forward_down(L, d_act.get(), eout.get());
  x8.backward_dact(L, d_dys.get(), dact.get());
  x8.backward_dxs(L, d_dg.get(), d_du.get(), dxs.get());
  cc.sync();
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  EXPECT_EQ(x8.weight_quantisations(), 3 * E) << "each expert's three weights quantised once for the version";

  // Host operands: activations per 1x128 tile, weights per 128x128 block.
  const HostQ xq = host_quantize(xs, nk, D, 1, 128), aq = host_quantize(act, nk, F, 1, 128),
              yq = host_quantize(dys, nk, D, 1, 128), gq = host_quantize(dg, nk, F, 1, 128),
              uq = host_quantize(du, nk, F, 1, 128);
  std::vector<HostQ> wgq, wuq, wdq;
  for (int64_t e = 0; e < E; ++e) {
    wgq.push_back(host_quantize(wg[size_t(e)], F, D, 128, 128));
    wuq.push_back(host_quantize(wu[size_t(e)], F, D, 128, 128));
    wdq.push_back(host_quantize(wd[size_t(e)], D, F, 128, 128));
  }
  // out [nk, cols] row r (of expert e(r)) = sum_j a(r, j) b(e, c, j): float64, quantised or exact operands.
  auto expert_of = [&](int64_t r) {
    int64_t e = 0;
    while (offsets[size_t(e + 1)] <= r) ++e;
    return e;
  };
  auto grouped = [&](int64_t cols, int64_t inner, auto a, auto b) {
    std::vector<double> out(size_t(nk * cols));
    for (int64_t r = 0; r < nk; ++r) {
      const int64_t e = expert_of(r);
      for (int64_t c = 0; c < cols; ++c) {
        double s = 0;
        for (int64_t j = 0; j < inner; ++j) s += a(r, j) * b(e, c, j);
        out[size_t(r * cols + c)] = s;
      }
    }
    return out;
  };
  auto at = [](const std::vector<float>& v, int64_t ld) {
    return [&v, ld](int64_t r, int64_t j) { return double(v[size_t(r * ld + j)]); };
  };
  auto dq = [](const HostQ& q, int64_t ld) {
    return [&q, ld](int64_t r, int64_t j) { return q.deq(size_t(r * ld + j)); };
  };
  // A product [nk, cols] over `inner` of activation a and per-expert weights w, checked against the float64
  // products of the host-quantised operands (aq, wq) and of the unquantised ones; w_at(c, j): the index of
  // the weight value that multiplies a(r, j) for output column c.
  auto check_both = [&](const char* name, const std::vector<float>& got, int64_t cols, int64_t inner,
                        const HostQ& aq_, const std::vector<float>& a, const std::vector<HostQ>& wq,
                        const std::vector<std::vector<float>>& w, auto w_at) {
    check_gemm(
        name, got,
        grouped(cols, inner, dq(aq_, inner),
                [&](int64_t e, int64_t c, int64_t j) { return wq[size_t(e)].deq(size_t(w_at(c, j))); }),
        grouped(cols, inner, at(a, inner),
                [&](int64_t e, int64_t c, int64_t j) { return double(w[size_t(e)][size_t(w_at(c, j))]); }));
  };
  // Fprop: gate, up = xs W^T; eout = act W_down^T
  auto row_major_D = [&](int64_t c, int64_t j) { return c * D + j; };
  check_both("fp8 experts gate", gate.host(), F, D, xq, xs, wgq, wg, row_major_D);
  check_both("fp8 experts up", up.host(), F, D, xq, xs, wuq, wu, row_major_D);
  {  // the device's quantised act (the down product's operand) against the host's codes and scales: equal
    std::vector<uint8_t> q(size_t(nk * F));
    const int64_t nk4 = (nk + 3) / 4 * 4;
    std::vector<float> qs(size_t(F / 128 * nk4));
    DeviceArray<uint8_t> dq8(zeros_of<uint8_t>(q.size()));
    DeviceArray<float> dqs(zeros_of<float>(qs.size()));
    moe::cuda::Fp8QuantParams qp;
    qp.x_bf16 = d_act.get(), qp.ldx = F, qp.M = nk, qp.K = F, qp.q = dq8.get(), qp.ldq = F,
    qp.scales = dqs.get();
    moe::cuda::quantize_fp8(qp, cc.stream());
    cc.sync();
    q = dq8.host(), qs = dqs.host();
    int64_t code_diff = 0, scale_diff = 0;
    for (int64_t r = 0; r < nk; ++r)
      for (int64_t k = 0; k < F; ++k) {
        code_diff += q[size_t(r * F + k)] != aq.q[size_t(r * F + k)];
        if (k % 128 == 0) scale_diff += qs[size_t((k / 128) * nk4 + r)] != aq.scale[size_t(r * F + k)];
      }
    EXPECT_EQ(code_diff, 0) << "act codes that differ from the host's, of " << nk * F;
    EXPECT_EQ(scale_diff, 0) << "act tile scales that differ from the host's";
  }
  check_both("fp8 experts down", eout.host(), D, F, aq, act, wdq, wd,
             [&](int64_t c, int64_t j) { return c * F + j; });
  // Dgrad: dact = dys W_down (W_down [D, F]: element (j, c)); dxs = dgate W_gate + dup W_up (element (j, c)
  // of [F, D])
  check_both("fp8 experts dact", dact.host(), F, D, yq, dys, wdq, wd,
             [&](int64_t c, int64_t j) { return j * F + c; });
  auto cat_q = [&](int64_t r, int64_t j) {
    return j < F ? gq.deq(size_t(r * F + j)) : uq.deq(size_t(r * F + j - F));
  };
  auto cat_x = [&](int64_t r, int64_t j) {
    return double(j < F ? dg[size_t(r * F + j)] : du[size_t(r * F + j - F)]);
  };
  check_gemm(
      "fp8 experts dxs", dxs.host(),
      grouped(D, 2 * F, cat_q,
              [&](int64_t e, int64_t c, int64_t j) {
                return j < F ? wgq[size_t(e)].deq(size_t(j * D + c))
                             : wuq[size_t(e)].deq(size_t((j - F) * D + c));
              }),
      grouped(D, 2 * F, cat_x, [&](int64_t e, int64_t c, int64_t j) {
        return double(j < F ? wg[size_t(e)][size_t(j * D + c)] : wu[size_t(e)][size_t((j - F) * D + c)]);
      }));
  // --fp8-expert-weights forward: only the forward layout kept, the input-gradient layout transposed per
  // layer (fp8_transpose) from its codes: the same bytes, so every product equals Both's bit for bit. Twice,
  // with another layer's backward between (the shared buffer rebuilt for it, then for L again). The weights
  // from a buffer each: the quantiser's per-expert launches must give the batched launch's bytes.
  {
    cuda::Fp8Experts y8(cc.stream());
    y8.set_layouts(cuda::Fp8Experts::Layouts::ForwardOnly);
    cuda::Fp8Experts::Layer L2 = Lsep;
    const int other = 0;
    L2.key = &other;
    DeviceArray<float> gate1(zeros_of<float>(size_t(nk * F))), up1(zeros_of<float>(size_t(nk * F))),
        eout1(zeros_of<float>(size_t(nk * D))), dact1(zeros_of<float>(size_t(nk * F))),
        dxs1(zeros_of<float>(size_t(nk * D)));
    for (int round = 0; round < 2; ++round) {
      y8.forward_gate_up(Lsep, d_xs.get(), gate1.get(), up1.get());
      y8.forward_down(Lsep, d_act.get(), eout1.get());
      y8.backward_dact(Lsep, d_dys.get(), dact1.get());
      y8.backward_dxs(Lsep, d_dg.get(), d_du.get(), dxs1.get());
      cc.sync();
      ASSERT_EQ(cudaGetLastError(), cudaSuccess);
      EXPECT_EQ(gate1.host(), gate.host()) << "round " << round;
      EXPECT_EQ(up1.host(), up.host()) << "round " << round;
      EXPECT_EQ(eout1.host(), eout.host()) << "round " << round;
      EXPECT_EQ(dact1.host(), dact.host()) << "round " << round;
      EXPECT_EQ(dxs1.host(), dxs.host()) << "round " << round;
      y8.backward_dact(L2, d_dys.get(), dact1.get());  // the other layer's backward takes the shared buffer
    }
  }
  // --fp8-expert-weights 1: of three layers (the same weights under three keys), the first used keeps both
  // layouts and the others the forward one, their backward layouts made ahead on the side stream
  // (prefetch_backward, as the trainer asks: the next layer's at the start of a layer's backward) or, without
  // a prefetch, when asked; in two buffers, replaced in turn over three rounds. Every product equals Both's
  // bit for bit, and the side stream's transposes are waited for (a race would read a half-made buffer).
  {
    cuda::Fp8Experts y8(cc.stream());
    y8.set_both_layers(1);
    int keys[3] = {0, 0, 0};
    std::vector<cuda::Fp8Experts::Layer> Ls(3, Lsep);
    for (int i = 0; i < 3; ++i) Ls[size_t(i)].key = &keys[i];
    DeviceArray<float> dact1(zeros_of<float>(size_t(nk * F))), dxs1(zeros_of<float>(size_t(nk * D))),
        gate1(zeros_of<float>(size_t(nk * F))), up1(zeros_of<float>(size_t(nk * F)));
    for (int round = 0; round < 3; ++round) {
      for (const auto& Lx : Ls) y8.forward_gate_up(Lx, d_xs.get(), gate1.get(), up1.get());
      EXPECT_EQ(gate1.host(), gate.host()) << "round " << round;
      if (round != 1) y8.prefetch_backward(Ls[2]);  // round 1: made when its backward asks
      for (int i = 2; i >= 0; --i) {
        if (i > 0 && round != 1) y8.prefetch_backward(Ls[size_t(i - 1)]);
        y8.backward_dact(Ls[size_t(i)], d_dys.get(), dact1.get());
        y8.backward_dxs(Ls[size_t(i)], d_dg.get(), d_du.get(), dxs1.get());
        cc.sync();
        ASSERT_EQ(cudaGetLastError(), cudaSuccess);
        EXPECT_EQ(dact1.host(), dact.host()) << "round " << round << ", layer " << i;
        EXPECT_EQ(dxs1.host(), dxs.host()) << "round " << round << ", layer " << i;
        // Poison the outputs so the next layer's products must write them again.
        ASSERT_EQ(cudaMemset(dact1.get(), 0xff, size_t(nk * F) * 4), cudaSuccess);
        ASSERT_EQ(cudaMemset(dxs1.get(), 0xff, size_t(nk * D) * 4), cudaSuccess);
      }
      if (round == 0) y8.new_weights();  // round 1 quantises again: the buffers' layouts are stale
    }
    EXPECT_EQ(y8.weight_quantisations(), 2 * 3 * 3 * E);  // 3 layers, 2 weight versions, 3 matrices an expert
  }
  // A new weight version quantises again, once.
  x8.new_weights();
  x8.forward_down(L, d_act.get(), eout.get());
  cc.sync();
  EXPECT_EQ(x8.weight_quantisations(), 6 * E);
}

// count batches of n token ids drawn uniformly from 1 .. vocab - 1.
std::vector<std::vector<int32_t>> random_batches(int count, int64_t n, int64_t vocab, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(1, int32_t(vocab) - 1);
  std::vector<std::vector<int32_t>> batches(size_t(count), std::vector<int32_t>(static_cast<size_t>(n)));
  for (auto& ids : batches)
    for (auto& x : ids) x = id(rng);
  return batches;
}

// ---- a whole step, FP8 vs BF16
//
// A random model at real widths (hidden 256, MLP 768, experts 128, q_lora 128, kv_lora 128, heads 4 x (64 + 32),
// 2 layers + MTP; kv_a's 160 outputs keep its Dgrad in BF16), 4 x 128 fresh random tokens, the same weights and
// batch on both trainers. Bounds, first order:
//  - every FP8 product's output carries a relative error eps <= 0.088 (above); a gradient is reached through at
//    most G ~ 30 FP8 products in sequence here (5 per layer and direction, 3 layers, forward and backward), whose
//    errors are independent and add in quadrature: relative L2 <= eps sqrt(G) = 0.48 -> bound 0.5 (the BF16
//    step's own error, ~2^-9 per product, is negligible next to it).
//  - where the perturbed router inputs change a token's top-k (the router is FP32, its input carries the FP8
//    errors upstream), rows move between experts: an expert's gradient is a sum over its rows, and when a fraction
//    f of the rows of the two runs differ (|R_fp8 sym-diff R_bf16| / (|R_fp8| + |R_bf16|), measured here from both
//    runs' routings) the sums differ by ~sqrt(2 f) of their size (f m terms out, f m in, of m random ones): that
//    expert's tensors are bounded by sqrt(0.5^2 + 2 f), its layer's router by the same with f the fraction of
//    tokens whose chosen set differs. Other tensors keep 0.5: a changed top-k alters only the MoE branch of that
//    token's update, one term of its residual stream (seen: a routed expert at 0.52 with the others <= 0.46).
//  - the loss: delta L = (1/n) sum_i g_i . delta z_i over n tokens, g_i = softmax - onehot (|g_i| <= sqrt 2),
//    delta z_i random with |delta z_i| <= eps_z |z_i|, eps_z <= 0.48, isotropic in the V = 2048 logits:
//    std(delta L) <= sqrt(2) eps_z rms|z| / sqrt(V n). At this init (head std 0.02 on a normalised h of norm
//    sqrt(256)) rms|z| ~ 0.32 sqrt(V), so std(delta L) <= sqrt(2) 0.48 0.32 / sqrt(512) ~ 9.6e-3 on L ~ ln V = 7.6:
//    1.3e-3 relative; 4 sigma -> bound 5e-3 at step 1. Steps 2-5 (AdamW moves every weight by ~lr whatever its
//    gradient's size, so the two runs' weights drift apart) are reported with a sanity bound of 2e-2.
TEST(CudaTrainFp8, WholeStepFp8VsBf16) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed("fp8 step");
  const std::string path = "bench/configs/train-small.json";
  std::ifstream in(path);
  nlohmann::json j = nlohmann::json::parse(in);
  j["num_hidden_layers"] = 2;
  j["kv_lora_rank"] = 128;
  j["q_lora_rank"] = 128;
  j["qk_nope_head_dim"] = 64;
  j["qk_rope_head_dim"] = 32;
  j["v_head_dim"] = 64;
  const ModelConfig cfg = ModelConfig::from_json(j, path);
  const int64_t b = 4, t = 128;
  const std::vector<std::vector<int32_t>> batches = random_batches(5, b * t, cfg.vocab_size, seed);
  const Objective obj{0.3, 1e-3};
  const AdamW adamw;
  ThreadPool pool(1);
  struct Run {
    std::vector<double> losses;
    std::vector<std::pair<std::string, std::vector<float>>> grads;  // step 1
    std::map<std::string, std::vector<int32_t>> routing;               // step 1, per MoE layer's gate name
  };
  auto run = [&](cuda::GemmPrecision p) {
    cuda::DeviceTrainer gpu(p);
    TrainModel m = TrainModel::init(cfg, path, seed, 0.02);
    m.device = &gpu;
    m.pool = &pool;
    Run r;
    for (int64_t s = 1; s <= 5; ++s) {
      m.zero_grad();
      ExpertLoads loads;
      r.losses.push_back(forward_backward(m, batches[size_t(s - 1)], b, t, obj, &loads).loss);
      if (s == 1) {
        r.routing = gpu.last_routing(m);
        gpu.pull(m);
        for (const auto& prm : m.params) r.grads.emplace_back(prm->name, prm->g);
      }
      adamw_step(m, adamw, 1e-3, 1.0, s);
      update_correction_biases(m, loads, 1e-3);
    }
    return r;
  };
  const Run f8 = run(cuda::GemmPrecision::Fp8), bf = run(cuda::GemmPrecision::Bf16);
  ASSERT_EQ(f8.grads.size(), bf.grads.size());
  // Each tensor's bound: 0.5, widened by the routing's differences where they reach it (the header).
  std::map<std::string, double> bound;
  const int64_t K = cfg.num_experts_per_tok, E = cfg.n_routed_experts;
  ASSERT_EQ(f8.routing.size(), bf.routing.size());
  for (const auto& [gate, rb] : bf.routing) {
    const std::vector<int32_t>& rf = f8.routing.at(gate);
    ASSERT_EQ(rf.size(), rb.size()) << gate;
    const std::string layer = gate.substr(0, gate.size() - std::string("mlp.gate.weight").size());  // "model.layers.L."
    const int64_t n = int64_t(rb.size()) / K;
    int64_t tokens_changed = 0;
    std::vector<int64_t> in_f(size_t(E), 0), in_b(size_t(E), 0), only(size_t(E), 0);
    for (int64_t i = 0; i < n; ++i) {
      std::vector<int32_t> a(rf.begin() + i * K, rf.begin() + (i + 1) * K), c(rb.begin() + i * K, rb.begin() + (i + 1) * K);
      std::sort(a.begin(), a.end()), std::sort(c.begin(), c.end());
      tokens_changed += a != c;
      for (int32_t e : a) ++in_f[size_t(e)], only[size_t(e)] += !std::binary_search(c.begin(), c.end(), e);
      for (int32_t e : c) ++in_b[size_t(e)], only[size_t(e)] += !std::binary_search(a.begin(), a.end(), e);
    }
    const double f_tok = double(tokens_changed) / double(std::max<int64_t>(n, 1));
    bound[gate] = std::sqrt(0.25 + 2 * f_tok);
    double f_max = 0;
    for (int64_t e = 0; e < E; ++e) {
      const double f = double(only[size_t(e)]) / double(std::max<int64_t>(in_f[size_t(e)] + in_b[size_t(e)], 1));
      f_max = std::max(f_max, f);
      const std::string pre = layer + "mlp.experts." + std::to_string(e) + ".";
      for (const char* w : {"gate_proj.weight", "up_proj.weight", "down_proj.weight"}) bound[pre + w] = std::sqrt(0.25 + 2 * f);
    }
    std::printf("fp8 step: %s top-k changed for %.1f %% of tokens, an expert's rows differ by up to %.1f %%\n",
                gate.c_str(), 100 * f_tok, 100 * f_max);
  }
  double worst = 0;
  std::string worst_name;
  for (size_t i = 0; i < bf.grads.size(); ++i) {
    const double e = rel_l2(f8.grads[i].second, bf.grads[i].second);
    const auto it = bound.find(bf.grads[i].first);
    const double b = it == bound.end() ? 0.5 : it->second;
    std::printf("fp8 step: grad %-48s rel L2 %.3g (bound %.3g)\n", bf.grads[i].first.c_str(), e, b);
    EXPECT_LT(e, b) << bf.grads[i].first;
    if (e > worst) worst = e, worst_name = bf.grads[i].first;
  }
  std::printf("fp8 step: max step-1 gradient rel L2 %.3g (%s) over %zu tensors\n", worst, worst_name.c_str(),
              bf.grads.size());
  for (size_t s = 0; s < bf.losses.size(); ++s) {
    const double rel = std::abs(f8.losses[s] - bf.losses[s]) / std::abs(bf.losses[s]);
    std::printf("fp8 step: step %zu loss %.9g (fp8) %.9g (bf16) rel %.3g\n", s + 1, f8.losses[s], bf.losses[s], rel);
    EXPECT_LT(rel, s == 0 ? 5e-3 : 2e-2) << "step " << s + 1;
  }
}

// --fp8-expert-weights N and the side stream's transposes at the trainer's level: a train-small model (3 MoE
// layers
// + the MTP module's, hidden 256, expert width 128) stepped three times with every layer keeping both
// layouts, with none (every backward's layouts made ahead on the side stream), and with one (made when asked,
// no prefetch). The layouts hold the same bytes, so the losses and gradients must equal those of the first
// run as exactly as the step repeats itself: a second run of the first setting measures that (0 where the
// step is deterministic).
TEST(CudaTrainFp8, ExpertLayoutsPerLayerGiveTheSameSteps) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed("fp8 layouts");
  const std::string path = "bench/configs/train-small.json";
  std::ifstream in(path);
  const ModelConfig cfg = ModelConfig::from_json(nlohmann::json::parse(in), path);
  ASSERT_TRUE(cuda::Fp8Experts::applies(cfg.hidden_size, cfg.moe_intermediate_size));
  const int64_t b = 2, t = 128;
  const std::vector<std::vector<int32_t>> batches = random_batches(3, b * t, cfg.vocab_size, seed);
  const Objective obj{0.3, 1e-3};
  const AdamW adamw;
  ThreadPool pool(1);
  struct Run {
    std::vector<double> losses;
    std::vector<std::vector<float>> grads;  // step 3's
  };
  auto run = [&](int64_t both_layers, bool prefetch) {
    cuda::DeviceTrainer gpu(cuda::GemmPrecision::Fp8);
    gpu.set_fp8_expert_both_layers(both_layers);
    gpu.set_fp8_expert_prefetch(prefetch);
    TrainModel m = TrainModel::init(cfg, path, seed, 0.02);
    m.device = &gpu;
    m.pool = &pool;
    Run r;
    for (int64_t s = 1; s <= 3; ++s) {
      m.zero_grad();
      ExpertLoads loads;
      r.losses.push_back(forward_backward(m, batches[size_t(s - 1)], b, t, obj, &loads).loss);
      if (s == 3) {
        gpu.pull(m);
        for (const auto& prm : m.params) r.grads.push_back(prm->g);
      } else {
        adamw_step(m, adamw, 1e-3, 1.0, s);
        update_correction_biases(m, loads, 1e-3);
      }
    }
    return r;
  };
  auto worst = [](const Run& a, const Run& b) {
    double w = 0;
    for (size_t s = 0; s < a.losses.size(); ++s) w = std::max(w, std::abs(a.losses[s] - b.losses[s]));
    for (size_t i = 0; i < a.grads.size(); ++i) w = std::max(w, rel_l2(a.grads[i], b.grads[i]));
    return w;
  };
  const Run both = run(-1, true), again = run(-1, true), none = run(0, true), one = run(1, false);
  ASSERT_EQ(none.grads.size(), both.grads.size());
  const double floor = worst(both, again);
  std::printf(
      "fp8 layouts: run-to-run %.3g, forward-only + prefetch %.3g, one layer both, no prefetch %.3g\n", floor,
      worst(both, none), worst(both, one));
  EXPECT_LE(worst(both, none), floor);
  EXPECT_LE(worst(both, one), floor);
}

}  // namespace
}  // namespace moe::train::test
