// The grouped FP8 x FP8 expert GEMM (moe_gemm_fp8.cu) alone, on fresh random data (seeds printed): expert ids
// with chosen per-expert counts (0 and 1 rows, partial 128-row tiles, experts over several tiles) go through
// moe_plan on the device (work items, perm), activations through the GPU quantiser (fp8_quant.cu, checked in
// test_cuda_fp8.cpp), weights are random E4M3 with random 128x128 block scales behind a pointer table as
// prepare_experts builds it. Outputs are poisoned with NaN first.
//
// Reference: a float64 host product of the dequantised operands (xq * xs) . (wq * ws). Each E4M3 x E4M3 product
// is exact, so the GPU's error is its accumulation alone; the bound is test_cuda_fp8.cpp's for the cuBLASLt
// block-scaled GEMM: per element 2^-9 * sum_k |x_k w_k| (the tensor cores keep ~14 bits within one 128-deep block,
// then the scaled partial is added in F32), and rel L2 <= 1e-3 over the output. A wrong scale, row or column
// errs by O(1) of the output.
// SwiGLU epilogue: h = silu(g) * u from g and u each within their bound eg, eu: |dh| <= max|silu'| eg |u| +
// |silu(g)| eu + max|silu'| eg eu (max |silu'| < 1.1), plus F32 rounding of the epilogue (2^-20 |h|).
// Columns checked: every 5th and the last 64 of each output (all rows), which covers every 128-column block
// and the N tail, and keeps DeepSeek-V3's widths within seconds on the host.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <limits>
#include <memory>
#include <numeric>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_ops.h"
#include "core/dtype.h"

namespace moe {
namespace {

#define CK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

template <typename T>
struct DevBuf {
  T* p = nullptr;
  size_t n = 0;
  explicit DevBuf(size_t count) : n(count) { cudaMalloc(&p, std::max<size_t>(count, 1) * sizeof(T)); }
  ~DevBuf() { cudaFree(p); }
  DevBuf(const DevBuf&) = delete;
  DevBuf& operator=(const DevBuf&) = delete;
  void put(const std::vector<T>& h) { cudaMemcpy(p, h.data(), n * sizeof(T), cudaMemcpyHostToDevice); }
  std::vector<T> get() const {
    std::vector<T> h(n);
    cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost);
    return h;
  }
};

struct Case {
  const char* name;
  int32_t k;                    // experts per token
  std::vector<int32_t> counts;  // rows per expert (sum = T * k)
  int64_t N, K;
  bool swiglu;
  int32_t cta_rows = 128;  // the kernel's two CTA shapes (64: decode batches)
};

class CudaMoeFp8 : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA (Hopper) GPU present";
    const uint64_t seed = std::random_device{}() ^ (uint64_t(std::random_device{}()) << 32);
    std::printf("[ seed ] %llu\n", static_cast<unsigned long long>(seed));
    rng_.seed(seed);
    ASSERT_EQ(cudaStreamCreate(&s_), cudaSuccess);
    cuda::configure_grouped_gemm_fp8_kernels();
    for (int v = 0; v < 256; ++v) lut_[size_t(v)] = double(e4m3_to_float(uint8_t(v)));
  }
  void TearDown() override {
    if (s_) cudaStreamDestroy(s_);
  }
  // Rows of N(0, 1) values times a per-row magnitude 10^U(-3, 1).
  std::vector<float> random_rows(int64_t M, int64_t K) {
    std::vector<float> x(size_t(M * K));
    std::normal_distribution<float> n(0.0f, 1.0f);
    std::uniform_real_distribution<float> e(-3.0f, 1.0f);
    for (int64_t i = 0; i < M; ++i) {
      const float mag = std::pow(10.0f, e(rng_));
      for (int64_t k = 0; k < K; ++k) x[size_t(i * K + k)] = mag * n(rng_);
    }
    return x;
  }
  void run(const Case& c);

  std::mt19937_64 rng_;
  cudaStream_t s_ = nullptr;
  double lut_[256] = {};
};

// One weight matrix of one expert, host copy: E4M3 [N, K] and scales [ceil(N/128), ceil(K/128)].
struct HostWeight {
  std::vector<uint8_t> q;
  std::vector<float> s;
};

void CudaMoeFp8::run(const Case& c) {
  const int32_t E = int32_t(c.counts.size());
  const int64_t TK = std::accumulate(c.counts.begin(), c.counts.end(), int64_t(0)), T = TK / c.k;
  ASSERT_EQ(T * c.k, TK) << c.name;
  const int64_t N = c.N, K = c.K, kb = (K + 127) / 128, nb = (N + 127) / 128;
  // Expert ids: counts[e] copies of e, shuffled over the T * k slots.
  std::vector<int32_t> ids;
  for (int32_t e = 0; e < E; ++e) ids.insert(ids.end(), size_t(c.counts[size_t(e)]), e);
  std::shuffle(ids.begin(), ids.end(), rng_);
  const int32_t tile = cuda::kGroupedRows;
  const int64_t max_items = std::min<int64_t>(E, TK) + (TK + tile - 1) / tile;
  DevBuf<int32_t> dids(ids.size()), dperm(static_cast<size_t>(TK)), ditems(size_t(3 * max_items)), dcounts(static_cast<size_t>(E));
  dids.put(ids);
  cuda::moe_plan(dids.p, TK, E, tile, int32_t(max_items), dperm.p, ditems.p, dcounts.p, s_);

  // Activations: swiglu reads token rows (a_rows = perm, a_div = k), plain reads sorted rows directly.
  const int64_t M = c.swiglu ? T : TK, ldm = (M + 3) / 4 * 4;
  const std::vector<float> x = random_rows(M, K);
  DevBuf<float> dx(x.size()), dxs(size_t(kb * ldm));
  DevBuf<uint8_t> dxq(x.size());
  dx.put(x);
  cuda::Fp8QuantParams qp;
  qp.x = dx.p;
  qp.ldx = K;
  qp.M = M;
  qp.K = K;
  qp.q = dxq.p;
  qp.ldq = K;
  qp.scales = dxs.p;
  cuda::quantize_fp8(qp, s_);

  // Weights: per expert two matrices (gate, up) for swiglu, one for plain; table slots as prepare_experts.
  const int nmat = c.swiglu ? 2 : 1;
  std::vector<HostWeight> hw(size_t(E * nmat));
  std::vector<std::unique_ptr<DevBuf<uint8_t>>> dq;
  std::vector<std::unique_ptr<DevBuf<float>>> dsc;
  std::vector<const void*> table(size_t(E) * 6, nullptr);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), us(0.5f, 2.0f);
  for (int32_t e = 0; e < E; ++e)
    for (int j = 0; j < nmat; ++j) {
      HostWeight& w = hw[size_t(e * nmat + j)];
      w.q.resize(size_t(N * K));
      w.s.resize(size_t(nb * kb));
      for (auto& v : w.q) v = float_to_e4m3(448.0f * 0.9f * u(rng_));
      for (auto& v : w.s) v = us(rng_) / (448.0f * std::sqrt(float(K)));
      dq.push_back(std::make_unique<DevBuf<uint8_t>>(w.q.size()));
      dq.back()->put(w.q);
      dsc.push_back(std::make_unique<DevBuf<float>>(w.s.size()));
      dsc.back()->put(w.s);
      table[size_t(e) * 6 + size_t(j)] = dq.back()->p;
      table[size_t(e) * 6 + 3 + size_t(j)] = dsc.back()->p;
    }
  DevBuf<const void*> dtable(table.size());
  dtable.put(table);

  const int64_t ldo = N;
  DevBuf<float> dout(size_t((c.swiglu ? TK : TK) * ldo));
  dout.put(std::vector<float>(dout.n, std::numeric_limits<float>::quiet_NaN()));
  cuda::GroupedGemmFp8Params p;
  p.items = ditems.p;
  p.K = int32_t(K);
  p.N = int32_t(N);
  p.a = dxq.p;
  p.lda = K;
  p.as = dxs.p;
  p.ld_as = ldm;
  p.wtab = dtable.p;
  p.swiglu = c.swiglu;
  if (c.swiglu) {
    p.a_rows = dperm.p;
    p.a_div = c.k;
    p.h = dout.p;
    p.ldh = ldo;
  } else {
    p.wslot[0] = p.wslot[1] = 0;
    p.sslot[0] = p.sslot[1] = 3;
    p.y = dout.p;
    p.y_rows = dperm.p;
    p.ldy = ldo;
  }
  p.cta_rows = c.cta_rows;
  ASSERT_NO_THROW(cuda::grouped_gemm_fp8(p, int32_t(max_items), s_)) << c.name;
  CK(cudaStreamSynchronize(s_));
  CK(cudaGetLastError());
  const std::vector<float> got = dout.get();
  const std::vector<int32_t> perm = dperm.get(), counts = dcounts.get();
  ASSERT_EQ(counts, c.counts) << c.name;
  const std::vector<uint8_t> xq = dxq.get();
  const std::vector<float> xs = dxs.get();

  // Sorted row i -> expert (from the counts) and its A row; the output row is i (swiglu) or perm[i] (plain).
  std::vector<int32_t> expert_of(static_cast<size_t>(TK));
  for (int64_t i = 0, e = 0, end = c.counts[0]; i < TK; ++i) {
    while (i >= end) end += c.counts[size_t(++e)];
    expert_of[size_t(i)] = int32_t(e);
  }
  // dot(row r of A, row n of weight w): exact per-block sums of E4M3 products, scaled in double.
  auto dot = [&](int64_t r, const HostWeight& w, int64_t n, double* abs_sum) {
    double acc = 0, as = 0;
    for (int64_t b = 0; b < kb; ++b) {
      double blk = 0, ablk = 0;
      const double sc = double(xs[size_t(b * ldm + r)]) * w.s[size_t((n / 128) * kb + b)];
      for (int64_t k = b * 128; k < std::min(K, b * 128 + 128); ++k) {
        const double v = lut_[xq[size_t(r * K + k)]] * lut_[w.q[size_t(n * K + k)]];
        blk += v;
        ablk += std::fabs(v);
      }
      acc += blk * sc;
      as += ablk * sc;
    }
    *abs_sum = as;
    return acc;
  };
  double e2 = 0, r2 = 0, worst = 0;
  int64_t bad = 0, nan = 0, checked = 0;
  for (int64_t i = 0; i < TK; ++i) {
    const int32_t e = expert_of[size_t(i)];
    const int64_t arow = c.swiglu ? perm[size_t(i)] / c.k : i, orow = c.swiglu ? i : perm[size_t(i)];
    for (int64_t n = 0; n < N; ++n) {
      if (n % 5 != 0 && n < N - 64) continue;
      double ref, bound;
      if (c.swiglu) {
        double ag, au;
        const double g = dot(arow, hw[size_t(e * 2)], n, &ag), uu = dot(arow, hw[size_t(e * 2 + 1)], n, &au);
        const double eg = std::ldexp(ag, -9), eu = std::ldexp(au, -9), sg = g / (1.0 + std::exp(-g));
        ref = sg * uu;
        bound = 1.1 * eg * std::fabs(uu) + std::fabs(sg) * eu + 1.1 * eg * eu + std::ldexp(std::fabs(ref), -20) + 1e-30;
      } else {
        double a;
        ref = dot(arow, hw[size_t(e)], n, &a);
        bound = std::ldexp(a, -9) + 1e-30;
      }
      const double g = got[size_t(orow * ldo + n)];
      ++checked;
      if (std::isnan(g)) {
        ++nan;
        continue;
      }
      const double err = std::fabs(g - ref);
      worst = std::max(worst, err / bound);
      bad += err > bound;
      e2 += err * err;
      r2 += ref * ref;
    }
  }
  std::printf("grouped FP8 GEMM %s (%s, %d-row CTAs, N %lld K %lld, %lld rows over %d experts): rel L2 vs "
              "dequantised operands %.2e, worst element %.3f of its bound, %lld elements checked\n",
              c.name, c.swiglu ? "swiglu" : "plain+scatter", c.cta_rows, (long long)N, (long long)K, (long long)TK, E,
              std::sqrt(e2 / r2), worst, (long long)checked);
  EXPECT_EQ(nan, 0) << c.name;
  EXPECT_EQ(bad, 0) << c.name;
  EXPECT_LE(std::sqrt(e2 / r2), 1e-3) << c.name;
}

// Moonlight-16B-A3B's expert widths (hidden 2048, inner 1408): gate + up with SwiGLU and the down projection.
TEST_F(CudaMoeFp8, MoonlightWidthsMatchFloat64) {
  const std::vector<int32_t> counts = {0, 1, 129, 7, 64, 47, 0, 140};  // 388 = 97 tokens x 4
  for (const int32_t rows : {128, 64}) {
    run({"moonlight gate+up", 4, counts, 1408, 2048, true, rows});
    run({"moonlight down", 4, counts, 2048, 1408, false, rows});
  }
}

// DeepSeek-V3's expert widths (hidden 7168, inner 2048).
TEST_F(CudaMoeFp8, DeepSeekV3WidthsMatchFloat64) {
  const std::vector<int32_t> counts = {1, 0, 70, 131, 4};  // 206 = 103 tokens x 2
  run({"dsv3 gate+up", 2, counts, 2048, 7168, true});
  run({"dsv3 down", 2, counts, 7168, 2048, false});
}

// Uneven tails: N not a multiple of the 64/128-column tile, K not a multiple of 128 (a partial scale block).
TEST_F(CudaMoeFp8, UnevenTailsMatchFloat64) {
  const std::vector<int32_t> counts = {5, 0, 257, 1};  // 263 rows: 263 tokens x 1
  for (const int32_t rows : {128, 64}) {
    run({"tails gate+up", 1, counts, 200, 272, true, rows});
    run({"tails down", 1, counts, 200, 272, false, rows});
  }
  const std::vector<int32_t> decode = {1, 0, 2, 0, 0, 1, 3, 1, 0, 4, 1, 2, 1, 0, 2, 3,
                                       0, 1, 2, 1, 0, 0, 2, 1, 3, 5, 0, 4, 2, 1, 2, 3};  // batch 8, top-6
  run({"decode batch 8 gate+up", 6, decode, 1408, 2048, true, 64});
  run({"decode batch 8 down", 6, decode, 2048, 1408, false, 64});
}

// Shapes the kernel does not take are refused with an error, not run.
TEST_F(CudaMoeFp8, RejectsUnsupportedShapes) {
  EXPECT_FALSE(cuda::grouped_gemm_fp8_shape_ok(256, 200));  // K not a multiple of 16
  EXPECT_FALSE(cuda::grouped_gemm_fp8_shape_ok(100, 256));  // N not a multiple of 8
  EXPECT_FALSE(cuda::grouped_gemm_fp8_shape_ok(131072, 16384));  // one expert's matrix of 2 GiB
  EXPECT_TRUE(cuda::grouped_gemm_fp8_shape_ok(1408, 2048));
  cuda::GroupedGemmFp8Params p;
  p.N = 256;
  p.K = 200;
  p.lda = 200;
  try {
    cuda::grouped_gemm_fp8(p, 1, s_);
    ADD_FAILURE() << "no error for K = 200";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("grouped_gemm_fp8"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
