// The FP8 x FP8 prefill pieces alone (built only with CUDA): the activation quantiser (fp8_quant.cu) and the
// cuBLASLt block-scaled GEMM (gemm_fp8.h), on fresh random data (seeds printed), outputs poisoned first.
//
// Quantiser: every 1x128 tile's scale is amax / 448 exactly (1 for an all-zero tile), every value is the
// host's round-to-nearest-even E4M3 of x * (1 / scale) (core/dtype.h, an independent encoder), and so within
// 2^-4 |x| + 2^-10 scale of x (3 mantissa bits: half a step is 2^-4 relative in the normal range; the
// subnormal step is 2^-9 of the scale). Gathered rows and per-segment scale layouts are checked element by
// element.
//
// GEMM, against a float64 host product of the dequantised operands (xq * xs) . (wq * ws): each product of two
// E4M3 values is exact (4 x 4 significant bits), so the GPU's error is its accumulation alone. Bound per
// element: 2^-9 * sum_k |x_k w_k|. Hopper's FP8 tensor cores keep ~14 bits in their accumulator within a
// 128-deep block (DeepSeek-V3 report, section 3.3.2) before the scaled partial is promoted to F32: a few
// truncations of ~2^-13 of the block's sum of magnitudes, well under 2^-9; a wrong scale layout or transpose
// errs by O(1) of the output and fails both this and the rel L2 bound of 1e-3.
// Activation quantisation against the unquantised product x . (wq * ws): the error sum_k d_k x_k w_k has
// independent relative roundings |d_k| <= 2^-4 (rms <= 2^-4 / sqrt(3)): per element at most
// 2^-4 sum |x_k w_k| + 2^-10 sum scale_k |w_k| + the accumulation bound; over the whole output the L2 error
// at most 2^-4 / sqrt(3) * sqrt(sum_{t,n,k} (x_k w_k)^2) (checked) - about 2.5 % of the output's norm.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <cstdio>
#include <limits>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gemm_fp8.h"
#include "core/dtype.h"

namespace moe {
namespace {

#define CK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

uint64_t seed_for(const char* what) {
  const uint64_t s = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32);
  std::printf("[ seed ] %s: %llu\n", what, static_cast<unsigned long long>(s));
  return s;
}

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) { cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)); }
  ~DevBuf() { cudaFree(p); }
  void put(const std::vector<T>& h) { cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

class CudaFp8 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA (Hopper) GPU present";
    rng_.seed(seed_for(::testing::UnitTest::GetInstance()->current_test_info()->name()));
    ASSERT_EQ(cudaStreamCreate(&s_), cudaSuccess);
  }
  void TearDown() override {
    if (s_) cudaStreamDestroy(s_);
  }
  // Rows of N(0, 1) values times a per-row magnitude 10^U(-4, 2), so tiles span subnormal and large scales.
  std::vector<float> random_rows(int64_t M, int64_t K) {
    std::vector<float> x(size_t(M * K));
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::uniform_real_distribution<float> e(-4.0f, 2.0f);
    for (int64_t i = 0; i < M; ++i) {
      const float mag = std::pow(10.0f, e(rng_));
      for (int64_t k = 0; k < K; ++k) x[size_t(i * K + k)] = mag * n(rng_);
    }
    return x;
  }
  // Dense rows [M, K] (F32, or BF16 when xb is given) through the quantiser; q and the scales ([K/128, M4]) back,
  // both poisoned (NaN) before the kernel writes them.
  void quantise_rows(const std::vector<float>& x, const std::vector<uint16_t>* xb, int64_t M, int64_t K, bool pow2,
                     std::vector<uint8_t>& q, std::vector<float>& sc) {
    DevBuf<float> dx(xb ? 0 : x.size()), ds(size_t((M + 3) / 4 * 4 * ((K + 127) / 128)));
    DevBuf<uint16_t> dxb(xb ? xb->size() : 0);
    DevBuf<uint8_t> dq(size_t(M * K));
    if (xb)
      dxb.put(*xb);
    else
      dx.put(x);
    ds.put(std::vector<float>(ds.n, std::numeric_limits<float>::quiet_NaN()));
    dq.put(std::vector<uint8_t>(dq.n, 0x7f));  // E4M3 NaN
    cuda::Fp8QuantParams p;
    p.x = xb ? nullptr : dx.p;
    p.x_bf16 = xb ? dxb.p : nullptr;
    p.ldx = K;
    p.M = M;
    p.K = K;
    p.q = dq.p;
    p.ldq = K;
    p.scales = ds.p;
    p.pow2_scales = pow2;
    cuda::quantize_fp8(p, s_);
    ASSERT_EQ(cudaStreamSynchronize(s_), cudaSuccess);
    q = dq.get();
    sc = ds.get();
  }
  std::mt19937_64 rng_;
  cudaStream_t s_ = nullptr;
};

// Checks q and scales of source rows [o, o + m) (q rows po .., scales at sbase in the layout kb * m4 + i,
// m4 = m rounded up to a multiple of 4) against the host encoder.
// pow2: scales rounded up to a power of two (ue8m0 models).
void check_tiles(const std::vector<float>& src_rows, int64_t K, int64_t o, int64_t m, int64_t sbase, int64_t po,
                 const std::vector<uint8_t>& q, const std::vector<float>& sc, int64_t* bad, bool pow2 = false) {
  const int64_t kb_count = (K + 127) / 128, m4 = (m + 3) / 4 * 4;
  for (int64_t i = 0; i < m; ++i) {
    const float* x = src_rows.data() + (o + i) * K;
    for (int64_t kb = 0; kb < kb_count; ++kb) {
      float amax = 0.0f;
      for (int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k) amax = std::max(amax, std::fabs(x[k]));
      float want = amax > 0.0f ? std::max(amax / kE4M3Max, std::numeric_limits<float>::min()) : 1.0f;
      int e2 = 0;
      if (pow2 && std::frexp(want, &e2) != 0.5f) want = std::ldexp(1.0f, e2);
      const float got = sc[size_t(sbase + kb * m4 + i)];
      if (got != want) {
        if (++*bad < 5) std::printf("row %lld tile %lld: scale %.9g, want %.9g\n", (long long)(o + i), (long long)kb, got, want);
        continue;
      }
      const float inv = 1.0f / want;
      for (int64_t k = kb * 128; k < std::min(K, kb * 128 + 128); ++k) {
        const uint8_t g = q[size_t((po + i) * K + k)];
        const float deq = e4m3_to_float(g) * want;
        const bool within = std::fabs(double(deq) - x[k]) <= std::ldexp(std::fabs(double(x[k])), -4) +
                                                                  std::ldexp(double(want), -10);
        if (g != float_to_e4m3(x[k] * inv) || !within) {
          if (++*bad < 5)
            std::printf("row %lld col %lld: x %.9g got e4m3 0x%02x (%.9g), want 0x%02x\n", (long long)(o + i),
                        (long long)k, x[k], g, deq, float_to_e4m3(x[k] * inv));
        }
      }
    }
  }
}

TEST_F(CudaFp8, QuantiserMatchesHostEncoder) {
  for (int64_t K : {int64_t(384), int64_t(1408), int64_t(200)}) {
    const int64_t M = 77;
    std::vector<float> x = random_rows(M, K);
    for (int64_t k = 0; k < std::min<int64_t>(K, 128); ++k) x[size_t(5 * K + k)] = 0.0f;  // one all-zero tile
    std::vector<uint8_t> q;
    std::vector<float> sc;
    quantise_rows(x, nullptr, M, K, false, q, sc);
    int64_t bad = 0;
    check_tiles(x, K, 0, M, 0, 0, q, sc, &bad);
    EXPECT_EQ(bad, 0) << "K=" << K;
  }
}

// BF16 rows in (x_bf16: the SwiGLU output of the grouped FP8 experts): the tiles of the same values as F32, so
// the host encoder on the BF16 values widened is the reference, code for code; K = 200 takes the scalar tail.
TEST_F(CudaFp8, QuantiserReadsBf16Rows) {
  for (int64_t K : {int64_t(1408), int64_t(200)}) {
    const int64_t M = 45;
    std::vector<float> x = random_rows(M, K);
    std::vector<uint16_t> xb(x.size());
    for (size_t i = 0; i < x.size(); ++i) {  // round to nearest even, then the widened value is the reference
      uint32_t u;
      std::memcpy(&u, &x[i], 4);
      u += 0x7fffu + ((u >> 16) & 1u);
      xb[i] = uint16_t(u >> 16);
      u = uint32_t(xb[i]) << 16;
      std::memcpy(&x[i], &u, 4);
    }
    std::vector<uint8_t> q;
    std::vector<float> sc;
    quantise_rows(x, &xb, M, K, false, q, sc);
    int64_t bad = 0;
    check_tiles(x, K, 0, M, 0, 0, q, sc, &bad);
    EXPECT_EQ(bad, 0) << "K=" << K;
  }
}

// ue8m0 models (DeepSeek-V3.1): the same tiles with scales rounded up to powers of two.
TEST_F(CudaFp8, QuantiserPowerOfTwoScales) {
  const int64_t M = 53, K = 640;
  const std::vector<float> x = random_rows(M, K);
  std::vector<uint8_t> q;
  std::vector<float> sc;
  quantise_rows(x, nullptr, M, K, true, q, sc);
  int64_t bad = 0;
  check_tiles(x, K, 0, M, 0, 0, q, sc, &bad, true);
  EXPECT_EQ(bad, 0);
  for (int64_t i = 0; i < M * (K / 128); ++i) {
    int e2 = 0;
    ASSERT_EQ(std::frexp(sc[size_t((i % (K / 128)) * ((M + 3) / 4 * 4) + i / (K / 128))], &e2), 0.5f) << i;
  }
}

// Rows gathered through a permutation (row i reads x[rows[i] / div]) into 5 segments (one empty), each placed
// at a padded row offset (multiples of 4 rows) with its own scale block: the routed experts' layout.
TEST_F(CudaFp8, QuantiserGathersIntoSegments) {
  const int64_t T = 60, div = 3, M = T * div, K = 256, kb = K / 128;
  const std::vector<float> x = random_rows(T, K);
  std::vector<int32_t> rows(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) rows[size_t(i)] = int32_t(i);
  std::shuffle(rows.begin(), rows.end(), rng_);
  const std::vector<int32_t> counts = {37, 0, 101, 1, int32_t(M - 139)};
  std::vector<int32_t> offs = {0}, poffs = {0}, sbase;
  for (int32_t c : counts) {
    sbase.push_back(int32_t(poffs.back() * kb));
    offs.push_back(offs.back() + c);
    poffs.push_back(poffs.back() + (c + 3) / 4 * 4);
  }
  const int64_t total = poffs.back() * kb;
  std::vector<int32_t> meta = offs;
  meta.insert(meta.end(), sbase.begin(), sbase.end());
  meta.insert(meta.end(), poffs.begin(), poffs.end());
  DevBuf<float> dx(x.size()), ds{static_cast<size_t>(total)};
  DevBuf<uint8_t> dq(size_t(poffs.back() * K));
  DevBuf<int32_t> dr(rows.size()), dm(meta.size());
  dx.put(x);
  dr.put(rows);
  dm.put(meta);
  ds.put(std::vector<float>(ds.n, std::numeric_limits<float>::quiet_NaN()));
  dq.put(std::vector<uint8_t>(dq.n, 0x7f));
  cuda::Fp8QuantParams p;
  p.x = dx.p;
  p.ldx = K;
  p.rows = dr.p;
  p.row_div = int32_t(div);
  p.M = M;
  p.K = K;
  p.q = dq.p;
  p.ldq = K;
  p.scales = ds.p;
  p.seg_offs = dm.p;
  p.seg_sbase = dm.p + offs.size();
  p.seg_poffs = dm.p + offs.size() + sbase.size();
  p.nseg = int32_t(counts.size());
  cuda::quantize_fp8(p, s_);
  CK(cudaStreamSynchronize(s_));
  std::vector<float> gathered(size_t(M * K));
  for (int64_t i = 0; i < M; ++i)
    std::copy_n(x.data() + rows[size_t(i)] / div * K, K, gathered.data() + i * K);
  const std::vector<uint8_t> q = dq.get();
  const std::vector<float> sc = ds.get();
  int64_t bad = 0;
  for (size_t s = 0; s < counts.size(); ++s)
    check_tiles(gathered, K, offs[s], counts[s], sbase[s], poffs[s], q, sc, &bad);
  EXPECT_EQ(bad, 0);
}

// x [T, K] F32 quantised on the GPU, an FP8 weight [N, K] with random 128x128 scales (padded on the GPU when
// ceil(K/128) is not a multiple of 4), out = x W^T on cuBLASLt (T a multiple of 4, its rule); see the bounds
// at the top.
TEST_F(CudaFp8, BlockScaledGemmMatchesFloat64) {
  struct Shape3 { int64_t T, N, K; };
  for (const Shape3 sh : {Shape3{200, 256, 512}, Shape3{36, 160, 1408}, Shape3{4, 2048, 256}, Shape3{300, 576, 2048},
                          Shape3{132, 1408, 2048}}) {
    const int64_t T = sh.T, N = sh.N, K = sh.K, kb = K / 128, nb = (N + 127) / 128, ld = cuda::fp8_scale_ld(K);
    const std::vector<float> x = random_rows(T, K);
    std::vector<uint8_t> w(size_t(N * K));
    std::vector<float> ws(size_t(nb * kb));
    std::uniform_real_distribution<float> u(-1.0f, 1.0f), us(0.5f, 2.0f);
    for (auto& v : w) v = float_to_e4m3(448.0f * 0.9f * u(rng_));
    for (auto& v : ws) v = us(rng_) / (448.0f * std::sqrt(float(K)));
    DevBuf<float> dx(x.size()), dxs(size_t(kb * T)), dws(ws.size()), dwp(size_t(nb * ld)), dout(size_t(T * N));
    DevBuf<uint8_t> dxq(x.size()), dw(w.size());
    dx.put(x);
    dw.put(w);
    dws.put(ws);
    dout.put(std::vector<float>(dout.n, std::numeric_limits<float>::quiet_NaN()));
    cuda::Fp8QuantParams p;
    p.x = dx.p;
    p.ldx = K;
    p.M = T;
    p.K = K;
    p.q = dxq.p;
    p.ldq = K;
    p.scales = dxs.p;
    cuda::quantize_fp8(p, s_);
    const float* wscale = dws.p;
    if (ld != kb) {
      cuda::pad_scales(dws.p, int32_t(nb), int32_t(kb), int32_t(ld), dwp.p, s_);
      wscale = dwp.p;
    }
    cuda::Fp8Gemm gemm(s_);
    cuda::Fp8GemmArgs a;
    a.x = dxq.p;
    a.xs = dxs.p;
    a.w = dw.p;
    a.ws = wscale;
    a.out = dout.p;
    a.T = T;
    a.N = N;
    a.K = K;
    a.ldo = N;
    ASSERT_NO_THROW(gemm.run(a)) << "T " << T << " N " << N << " K " << K;
    CK(cudaStreamSynchronize(s_));
    const std::vector<float> got = dout.get();
    const std::vector<uint8_t> xq = dxq.get();
    const std::vector<float> xs = dxs.get();
    // Dequantised operands in double.
    std::vector<double> xd(size_t(T * K)), wd(size_t(N * K));
    for (int64_t t = 0; t < T; ++t)
      for (int64_t k = 0; k < K; ++k)
        xd[size_t(t * K + k)] = double(e4m3_to_float(xq[size_t(t * K + k)])) * xs[size_t((k / 128) * T + t)];
    for (int64_t n = 0; n < N; ++n)
      for (int64_t k = 0; k < K; ++k)
        wd[size_t(n * K + k)] = double(e4m3_to_float(w[size_t(n * K + k)])) * ws[size_t((n / 128) * kb + k / 128)];
    double e2 = 0, r2 = 0, q2 = 0, t2 = 0, pred2 = 0, worst = 0, worst_q = 0;
    int64_t bad = 0, bad_q = 0, nan = 0;
    for (int64_t t = 0; t < T; ++t) {
      for (int64_t n = 0; n < N; ++n) {
        double ref = 0, abs_sum = 0, exact = 0, sq = 0, sub = 0;
        for (int64_t k = 0; k < K; ++k) {
          const double wv = wd[size_t(n * K + k)], xv = x[size_t(t * K + k)];
          ref += xd[size_t(t * K + k)] * wv;
          abs_sum += std::fabs(xv * wv);
          exact += xv * wv;
          sq += (xv * wv) * (xv * wv);
          sub += std::ldexp(double(xs[size_t((k / 128) * T + t)]), -10) * std::fabs(wv);
        }
        const double g = got[size_t(t * N + n)];
        if (std::isnan(g)) {
          ++nan;
          continue;
        }
        const double acc_bound = std::ldexp(abs_sum, -9) + 1e-30;
        const double err = std::fabs(g - ref);
        worst = std::max(worst, err / acc_bound);
        bad += err > acc_bound;
        e2 += err * err;
        r2 += ref * ref;
        // against the unquantised product
        const double qerr = std::fabs(g - exact), q_bound = std::ldexp(abs_sum, -4) + sub + acc_bound;
        worst_q = std::max(worst_q, qerr / q_bound);
        bad_q += qerr > q_bound;
        q2 += qerr * qerr;
        t2 += exact * exact;
        pred2 += sq * std::ldexp(1.0, -8) / 3.0;
      }
    }
    if (gemm.bf16_fallbacks() > 0) std::printf("FP8 GEMM: no F32-output algorithm, BF16 output widened\n");
    std::printf("FP8 GEMM T %lld N %lld K %lld: rel L2 vs dequantised operands %.2e (worst element %.3f of its "
                "bound); vs unquantised x %.2e (predicted rms bound %.2e, worst element %.3f of its bound)\n",
                (long long)T, (long long)N, (long long)K, std::sqrt(e2 / r2), worst, std::sqrt(q2 / t2),
                std::sqrt(pred2 / t2), worst_q);
    EXPECT_EQ(nan, 0);
    EXPECT_EQ(bad, 0);
    EXPECT_LE(std::sqrt(e2 / r2), 1e-3);
    EXPECT_EQ(bad_q, 0);
    EXPECT_LE(q2, pred2);
  }
}

// Shapes the path refuses are named in the error, not run.
TEST_F(CudaFp8, RejectsUnsupportedShapes) {
  EXPECT_FALSE(cuda::fp8_gemm_shape_ok(256, 192));  // K not a multiple of 128
  EXPECT_FALSE(cuda::fp8_gemm_shape_ok(100, 256));  // N not a multiple of 16
  cuda::Fp8Gemm gemm(s_);
  cuda::Fp8GemmArgs odd;
  odd.T = 6;
  odd.N = 256;
  odd.K = 256;
  odd.ldo = 256;
  try {
    gemm.run(odd);
    ADD_FAILURE() << "no error for T = 6";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("T 6"), std::string::npos) << e.what();
  }
  cuda::Fp8GemmArgs a;
  a.T = 8;
  a.N = 256;
  a.K = 192;
  a.ldo = 256;
  try {
    gemm.run(a);
    ADD_FAILURE() << "no error for K = 192";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("K 192"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
