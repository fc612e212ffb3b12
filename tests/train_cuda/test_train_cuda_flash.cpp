// The flash attention (train/cuda/attention_flash.cu, --attention flash) against the CPU trainer's attention
// (CpuCompute: FP32 operands) at the three head shapes with kernels, b 2, t 256 and t 200 (not a multiple of the
// 64- and 128-row tiles): the output, lse against a double reference, the gradients added into non-zero buffers,
// causality (later keys and gradients cannot reach earlier rows, bit for bit), nothing written past the outputs,
// bit-reproducibility, the refusals; and a timing print at train-mid's shape against the bf16 GEMM attention.
// Random data seeded from the clock (printed), never zeros.
//
// Bounds (u = 2^-9, BF16's unit roundoff), as CudaTrainMoeOps.GemmAttentionMatchesCpu's bf16 mode: the flash
// kernels round the same operands once (Q, K, V, dO; P for P V and P^T dO; dS for dS K and dS^T Q), so that
// test's analysis holds: a score carries ~2u relative error, so do the probabilities; the output adds P's and V's
// roundings (~2.5u in the relative L2 of random errors): 4u; the backward chains dP (2u), dS (P's and dP's errors,
// then rounded: u) and the last product's operand (u): ~4u, times 2 for the partial cancellation in dP - D: 8u.
// Where the flash roundings differ (attention_flash.cu's header) they do not add a rounding of their own: the
// forward's P is rounded relative to the running maximum (still one rounding of u relative per value) and O is
// divided by the sum of the rounded values (which removes the GEMM mode's sum(bf16(P)) != 1 error of ~u/sqrt(keys));
// D = dO . O instead of sum_j P dP carries O's error (~2.5u of O, random over the dv terms): inside the factor 2.
// lse: a double reference from the same BF16-rounded operands, so only the FP32 arithmetic differs: the tensor
// cores sum 192 exact BF16 products in FP32 (|error| <~ 1e-6 of sum |q_k k_k|, which is ~120 for unit normal data,
// times scale 0.072: ~1e-5 on a scaled score at most), exp2f/log2f are within 2 ulp, lse's conversion to log2
// units one rounding each way (~1e-6 at |lse| ~ 10): lse within 1e-4 absolute (a margin of ~10).
#include <cublas_v2.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>

#include "train/bf16_emulated.h"
#include "train/compute.h"
#include "train/cuda/kernels.h"
#include "train/ops.h"
#include "train_cuda/util.h"

namespace moe::train::test {
namespace {

uint64_t clock_seed(const char* what) {
  const uint64_t s = uint64_t(std::chrono::system_clock::now().time_since_epoch().count());
  std::printf("%s: seed %llu\n", what, static_cast<unsigned long long>(s));
  return s;
}

constexpr size_t kTail = 64;       // sentinel values after every output buffer
constexpr float kSentinel = 7.0f;  // (never a value the kernels write there)

// v followed by kTail sentinels.
std::vector<float> padded(std::vector<float> v) {
  v.insert(v.end(), kTail, kSentinel);
  return v;
}
// The first `count` values, and whether the kTail after them are still the sentinel.
std::vector<float> head(const std::vector<float>& v, size_t count, bool* tail_ok) {
  *tail_ok = std::all_of(v.begin() + std::ptrdiff_t(count), v.end(), [](float x) { return x == kSentinel; });
  return {v.begin(), v.begin() + std::ptrdiff_t(count)};
}

// The device buffers of one flash call: inputs, outputs (padded), BF16 and FP32 scratch.
struct FlashBuffers {
  int64_t b, t, H, dn, dr, dv, n;
  DeviceArray<float> q, kv, kr, dout, out, lse, dq, dkv, dkr, delta, part;
  DeviceArray<uint16_t> hq, hkv, hkr, hdo;
  FlashBuffers(int64_t b_, int64_t t_, int64_t H_, int64_t dn_, int64_t dr_, int64_t dv_, const std::vector<float>& q_,
               const std::vector<float>& kv_, const std::vector<float>& kr_, const std::vector<float>& do_,
               const std::vector<float>& dq0, const std::vector<float>& dkv0, const std::vector<float>& dkr0)
      : b(b_), t(t_), H(H_), dn(dn_), dr(dr_), dv(dv_), n(b_ * t_), q(q_), kv(kv_), kr(kr_), dout(do_),
        out(padded(std::vector<float>(size_t(n * H * dv), 1.f))), lse(padded(std::vector<float>(size_t(b * H * t), 1.f))),
        dq(padded(dq0)), dkv(padded(dkv0)), dkr(padded(dkr0)), delta(std::vector<float>(size_t(b * H * t), 1.f)),
        part(std::vector<float>(size_t(H * n * dr), 1.f)), hq(std::vector<uint16_t>(size_t(n * H * (dn + dr)))),
        hkv(std::vector<uint16_t>(size_t(n * H * (dn + dv)))), hkr(std::vector<uint16_t>(size_t(n * dr))),
        hdo(std::vector<uint16_t>(size_t(n * H * dv))) {}
  cuda::AttnShape shape(float scale) const {
    return cuda::AttnShape{b, t, H, dn, dr, dv, scale, cuda::AttnPrecision::Flash};
  }
  cuda::AttnFlash scratch() { return {hq.get(), hkv.get(), hkr.get(), hdo.get(), delta.get(), part.get()}; }
  bool forward(float scale) {
    return cuda::attention_forward_flash(out.get(), lse.get(), q.get(), kv.get(), kr.get(), shape(scale), scratch(),
                                         nullptr);
  }
  bool backward(float scale) {
    return cuda::attention_backward_flash(dq.get(), dkv.get(), dkr.get(), dout.get(), out.get(), lse.get(), q.get(),
                                          kv.get(), kr.get(), shape(scale), scratch(), nullptr);
  }
};

// lse[s, h, i] = log sum_{j <= i} exp(scale S_ij) in double from BF16-rounded operands.
std::vector<double> lse_reference(const std::vector<float>& q, const std::vector<float>& kv, const std::vector<float>& kr,
                                  int64_t b, int64_t t, int64_t H, int64_t dn, int64_t dr, int64_t dv, double scale) {
  const int64_t dq = dn + dr, dkv = dn + dv, n = b * t;
  const std::vector<float> Q = rounded(q.data(), n * H * dq), KV = rounded(kv.data(), n * H * dkv),
                           KR = rounded(kr.data(), n * dr);
  std::vector<double> lse(static_cast<size_t>(b * H * t)), x(static_cast<size_t>(t));
  for (int64_t s = 0; s < b; ++s)
    for (int64_t h = 0; h < H; ++h)
      for (int64_t i = 0; i < t; ++i) {
        const float* qi = &Q[size_t(((s * t + i) * H + h) * dq)];
        double mx = -INFINITY;
        for (int64_t j = 0; j <= i; ++j) {
          const float* kj = &KV[size_t(((s * t + j) * H + h) * dkv)];
          const float* rj = &KR[size_t((s * t + j) * dr)];
          double acc = 0;
          for (int64_t c = 0; c < dn; ++c) acc += double(qi[c]) * double(kj[c]);
          for (int64_t c = 0; c < dr; ++c) acc += double(qi[dn + c]) * double(rj[c]);
          x[size_t(j)] = acc * scale;
          mx = std::max(mx, x[size_t(j)]);
        }
        double z = 0;
        for (int64_t j = 0; j <= i; ++j) z += std::exp(x[size_t(j)] - mx);
        lse[size_t((s * H + h) * t + i)] = mx + std::log(z);
      }
  return lse;
}

struct HeadShape {
  int64_t dn, dr, dv;
};

void check_flash(const HeadShape& hs, int64_t t) {
  char what[96];
  std::snprintf(what, sizeof what, "flash attention (%lld, %lld, %lld), t %lld", static_cast<long long>(hs.dn),
                static_cast<long long>(hs.dr), static_cast<long long>(hs.dv), static_cast<long long>(t));
  const uint64_t seed = clock_seed(what);
  MlaDims d;
  d.t = t, d.heads = 4, d.dn = hs.dn, d.dr = hs.dr, d.dv = hs.dv, d.scale = 1.0 / std::sqrt(double(hs.dn + hs.dr));
  const int64_t b = 2, n = b * t, H = d.heads, dq = hs.dn + hs.dr, dkv = hs.dn + hs.dv, P = b * H * t * t;
  const auto q = randn(size_t(n * H * dq), seed), kv = randn(size_t(n * H * dkv), seed + 1),
             kr = randn(size_t(n * hs.dr), seed + 2), dout = randn(size_t(n * H * hs.dv), seed + 3);
  const auto dq0 = randn(size_t(n * H * dq), seed + 4), dkv0 = randn(size_t(n * H * dkv), seed + 5),
             dkr0 = randn(size_t(n * hs.dr), seed + 6);
  CpuCompute cpu;
  std::vector<float> out_c(size_t(n * H * hs.dv)), p_c(static_cast<size_t>(P));
  cpu.attention_forward(out_c.data(), p_c.data(), q.data(), kv.data(), kr.data(), d, b);
  auto dq_c = dq0, dkv_c = dkv0, dkr_c = dkr0;
  cpu.attention_backward(dq_c.data(), dkv_c.data(), dkr_c.data(), dout.data(), p_c.data(), q.data(), kv.data(),
                         kr.data(), d, b);
  const float scale = float(d.scale);

  FlashBuffers g(b, t, H, hs.dn, hs.dr, hs.dv, q, kv, kr, dout, dq0, dkv0, dkr0);
  ASSERT_TRUE(g.forward(scale));
  ASSERT_TRUE(g.backward(scale));
  bool tails[5];
  const auto out_g = head(g.out.host(), out_c.size(), &tails[0]);
  const auto lse_g = head(g.lse.host(), size_t(b * H * t), &tails[1]);
  const auto dq_g = head(g.dq.host(), dq0.size(), &tails[2]);
  const auto dkv_g = head(g.dkv.host(), dkv0.size(), &tails[3]);
  const auto dkr_g = head(g.dkr.host(), dkr0.size(), &tails[4]);
  for (int i = 0; i < 5; ++i) EXPECT_TRUE(tails[i]) << what << ": written past output " << i;

  const double u = std::ldexp(1.0, -9);
  const double e[] = {rel_l2(out_g, out_c), rel_l2(minus(dq_g, dq0), minus(dq_c, dq0)),
                      rel_l2(minus(dkv_g, dkv0), minus(dkv_c, dkv0)), rel_l2(minus(dkr_g, dkr0), minus(dkr_c, dkr0))};
  const std::vector<double> lse_r = lse_reference(q, kv, kr, b, t, H, hs.dn, hs.dr, hs.dv, d.scale);
  double lse_err = 0;
  for (size_t i = 0; i < lse_r.size(); ++i) lse_err = std::max(lse_err, std::abs(double(lse_g[i]) - lse_r[i]));
  std::printf("%s: out %.3g dq %.3g dkv %.3g dk_rope %.3g (relative L2; bounds 4u = %.3g, 8u = %.3g), lse max abs "
              "%.3g\n", what, e[0], e[1], e[2], e[3], 4 * u, 8 * u, lse_err);
  for (int i = 0; i < 4; ++i) EXPECT_LT(e[i], (i == 0 ? 4 : 8) * u) << what << ": output " << i;
  EXPECT_LT(lse_err, 1e-4) << what;

  // Bit-reproducible: the same call again gives the same bits (no atomics, fixed orders).
  {
    FlashBuffers g2(b, t, H, hs.dn, hs.dr, hs.dv, q, kv, kr, dout, dq0, dkv0, dkr0);
    ASSERT_TRUE(g2.forward(scale));
    ASSERT_TRUE(g2.backward(scale));
    EXPECT_EQ(g2.out.host(), g.out.host()) << what;
    EXPECT_EQ(g2.lse.host(), g.lse.host()) << what;
    EXPECT_EQ(g2.dq.host(), g.dq.host()) << what;
    EXPECT_EQ(g2.dkv.host(), g.dkv.host()) << what;
    EXPECT_EQ(g2.dkr.host(), g.dkr.host()) << what;
  }

  // Causal: keys, values and output gradients of positions >= c changed (other random values) leave the output,
  // lse and dq of every row before c the same bits (masked scores contribute exact zeros).
  {
    const int64_t c = 100;
    auto kv2 = kv, kr2 = kr, dout2 = dout;
    const auto noise = randn(kv.size() + kr.size() + dout.size(), seed + 7);
    size_t z = 0;
    for (int64_t s = 0; s < b; ++s)
      for (int64_t i = c; i < t; ++i) {
        const int64_t row = s * t + i;
        for (int64_t k = 0; k < H * dkv; ++k) kv2[size_t(row * H * dkv + k)] = noise[z++];
        for (int64_t k = 0; k < hs.dr; ++k) kr2[size_t(row * hs.dr + k)] = noise[z++];
        for (int64_t k = 0; k < H * hs.dv; ++k) dout2[size_t(row * H * hs.dv + k)] = noise[z++];
      }
    FlashBuffers g2(b, t, H, hs.dn, hs.dr, hs.dv, q, kv2, kr2, dout2, dq0, dkv0, dkr0);
    ASSERT_TRUE(g2.forward(scale));
    ASSERT_TRUE(g2.backward(scale));
    const auto o1 = g.out.host(), o2 = g2.out.host(), l1 = g.lse.host(), l2 = g2.lse.host(), q1 = g.dq.host(),
               q2 = g2.dq.host();
    size_t diff = 0, later = 0;
    for (int64_t s = 0; s < b; ++s)
      for (int64_t i = 0; i < t; ++i) {
        const int64_t row = s * t + i;
        size_t changed = 0;
        for (int64_t k = 0; k < H * hs.dv; ++k) changed += o1[size_t(row * H * hs.dv + k)] != o2[size_t(row * H * hs.dv + k)];
        for (int64_t k = 0; k < H * dq; ++k) changed += q1[size_t(row * H * dq + k)] != q2[size_t(row * H * dq + k)];
        for (int64_t h = 0; h < H; ++h) changed += l1[size_t((s * H + h) * t + i)] != l2[size_t((s * H + h) * t + i)];
        (i < c ? diff : later) += changed;
      }
    EXPECT_EQ(diff, size_t(0)) << what << ": values before position " << c << " changed";
    EXPECT_GT(later, size_t(0)) << what;  // the change did reach the later rows
  }
}

TEST(CudaTrainFlash, ForwardBackwardMatchCpu) {
  SKIP_WITHOUT_GPU();
  for (const HeadShape hs : {HeadShape{128, 64, 128}, HeadShape{64, 32, 64}, HeadShape{32, 16, 32}})
    for (const int64_t t : {256, 200}) check_flash(hs, t);
}

// Shapes without kernels and missing scratch are refused (false) with nothing written; empty batches do nothing.
TEST(CudaTrainFlash, RefusalsAndEmptyCalls) {
  SKIP_WITHOUT_GPU();
  EXPECT_TRUE(cuda::attention_flash_supported(128, 64, 128));
  EXPECT_TRUE(cuda::attention_flash_supported(64, 32, 64));
  EXPECT_TRUE(cuda::attention_flash_supported(32, 16, 32));
  EXPECT_FALSE(cuda::attention_flash_supported(128, 64, 64));
  EXPECT_FALSE(cuda::attention_flash_supported(96, 32, 96));
  const int64_t b = 1, t = 64, H = 2, dn = 32, dr = 16, dv = 32, n = b * t;
  const auto q = randn(size_t(n * H * (dn + dr)), 1), kv = randn(size_t(n * H * (dn + dv)), 2),
             kr = randn(size_t(n * dr), 3), dout = randn(size_t(n * H * dv), 4), dq0 = randn(q.size(), 5),
             dkv0 = randn(kv.size(), 6), dkr0 = randn(kr.size(), 7);
  FlashBuffers g(b, t, H, dn, dr, dv, q, kv, kr, dout, dq0, dkv0, dkr0);
  const auto out0 = g.out.host(), lse0 = g.lse.host();
  cuda::AttnShape bad = g.shape(0.1f);
  bad.dv = 48;  // no kernel
  EXPECT_FALSE(cuda::attention_forward_flash(g.out.get(), g.lse.get(), g.q.get(), g.kv.get(), g.kr.get(), bad,
                                             g.scratch(), nullptr));
  cuda::AttnFlash missing = g.scratch();
  missing.delta = nullptr;
  EXPECT_FALSE(cuda::attention_backward_flash(g.dq.get(), g.dkv.get(), g.dkr.get(), g.dout.get(), g.out.get(),
                                              g.lse.get(), g.q.get(), g.kv.get(), g.kr.get(), g.shape(0.1f), missing,
                                              nullptr));
  cuda::AttnShape empty = g.shape(0.1f);
  empty.b = 0;
  EXPECT_TRUE(cuda::attention_forward_flash(g.out.get(), g.lse.get(), g.q.get(), g.kv.get(), g.kr.get(), empty,
                                            g.scratch(), nullptr));
  EXPECT_TRUE(cuda::attention_backward_flash(g.dq.get(), g.dkv.get(), g.dkr.get(), g.dout.get(), g.out.get(),
                                             g.lse.get(), g.q.get(), g.kv.get(), g.kr.get(), empty, g.scratch(),
                                             nullptr));
  EXPECT_EQ(g.out.host(), out0);
  EXPECT_EQ(g.lse.host(), lse0);
  EXPECT_EQ(g.dq.host(), padded(dq0));
  EXPECT_EQ(g.dkv.host(), padded(dkv0));
  EXPECT_EQ(g.dkr.host(), padded(dkr0));
  // The GEMM path refuses the Flash precision.
  cublasHandle_t blas = nullptr;
  ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  DeviceArray<float> probs(std::vector<float>(size_t(b * H * t * t), 1.f));
  EXPECT_FALSE(cuda::attention_forward_gemm(blas, g.out.get(), probs.get(), g.q.get(), g.kv.get(), g.kr.get(),
                                            g.shape(0.1f), nullptr));
  cublasDestroy(blas);
}

// Timing at train-mid's attention (b 1, t 2048, 16 heads of (128, 64, 128)): flash against the bf16 GEMM mode,
// forward and backward, mean of 5 after a warm-up. A print, not an assertion (the figure: 28 ms per
// micro-batch for the GEMM attention over train-mid's layers).
TEST(CudaTrainFlash, TimingAtTrainMidShape) {
  SKIP_WITHOUT_GPU();
  const int64_t b = 1, t = 2048, H = 16, dn = 128, dr = 64, dv = 128, n = b * t, dq = dn + dr, dkv = dn + dv;
  const float scale = float(1.0 / std::sqrt(192.0));
  const auto q = randn(size_t(n * H * dq), 11), kv = randn(size_t(n * H * dkv), 12), kr = randn(size_t(n * dr), 13),
             dout = randn(size_t(n * H * dv), 14);
  const std::vector<float> dq0(q.size(), 0.f), dkv0(kv.size(), 0.f), dkr0(kr.size(), 0.f);
  FlashBuffers g(b, t, H, dn, dr, dv, q, kv, kr, dout, dq0, dkv0, dkr0);
  cublasHandle_t blas = nullptr;
  ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  const int64_t P = b * H * t * t;
  DeviceArray<float> probs(std::vector<float>(size_t(P), 0.f)), ds(std::vector<float>(size_t(P), 0.f));
  DeviceArray<uint16_t> sq{std::vector<uint16_t>(static_cast<size_t>(P))};
  cuda::AttnBf16 bf{g.hq.get(), g.hkv.get(), g.hkr.get(), sq.get(), g.hdo.get()};
  const cuda::AttnShape gemm{b, t, H, dn, dr, dv, scale, cuda::AttnPrecision::Bf16};
  cudaEvent_t e0, e1;
  cudaEventCreate(&e0);
  cudaEventCreate(&e1);
  auto time_ms = [&](const auto& f) {
    EXPECT_TRUE(f());  // warm-up
    cudaEventRecord(e0);
    const int reps = 5;
    for (int i = 0; i < reps; ++i) EXPECT_TRUE(f());
    cudaEventRecord(e1);
    cudaEventSynchronize(e1);
    float ms = 0;
    cudaEventElapsedTime(&ms, e0, e1);
    EXPECT_EQ(cudaGetLastError(), cudaSuccess);
    return double(ms) / reps;
  };
  const double ff = time_ms([&] { return g.forward(scale); });
  const double fb = time_ms([&] { return g.backward(scale); });
  const double gf = time_ms([&] {
    return cuda::attention_forward_gemm(blas, g.out.get(), probs.get(), g.q.get(), g.kv.get(), g.kr.get(), gemm,
                                        nullptr, &bf);
  });
  const double gb = time_ms([&] {
    return cuda::attention_backward_gemm(blas, g.dq.get(), g.dkv.get(), g.dkr.get(), ds.get(), g.dout.get(),
                                         probs.get(), g.q.get(), g.kv.get(), g.kr.get(), gemm, nullptr, &bf);
  });
  // Causal FLOPs: t (t + 1) / 2 pairs a head; forward 2 (dq + dv) a pair; backward 2 (4 dq + 3 dv): the dkv
  // kernel's S, dP, dV, dK (2 dq + 2 dv) and the dq kernel's recomputed S, dP and its dQ (2 dq + dv).
  const double pairs = double(H) * double(t) * double(t + 1) / 2;
  const double fwd_flops = pairs * 2 * (dq + dv), bwd_flops = pairs * 2 * (4 * dq + 3 * dv);
  std::printf("attention at b 1, t 2048, 16 heads (128, 64, 128): flash forward %.3f ms (%.0f TFLOP/s causal), "
              "backward %.3f ms (%.0f TFLOP/s with its recomputation); bf16 GEMMs forward %.3f ms, backward %.3f ms\n",
              ff, fwd_flops / ff * 1e-9, fb, bwd_flops / fb * 1e-9, gf, gb);
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  cublasDestroy(blas);
}

}  // namespace
}  // namespace moe::train::test
