// issue 11's speed and memory pieces on the device (the mid-size MoE's plan):
//  - BF16 AdamW moments: the device kernel (FP32 arithmetic, moments stored as BF16) against the CPU's emulation
//    (double arithmetic, rounded to BF16 through FP32). The two differ only where FP32 and double land on
//    opposite sides of a BF16 rounding midpoint: FP32's error is ~2^-23 relative against BF16's 2^-8..2^-7
//    spacing, so a fraction ~2^-14 of the moments may differ, each by one BF16 ulp (bound: <= 1e-3 of them, never
//    more than one ulp); each such moment moves its update by <= 2^-7 relative, so the updates' relative L2 stays
//    below sqrt(1e-3) x 2^-7 ~ 2.5e-4 (bound 3e-4) on top of FP32 rounding.
//  - grouped expert GEMMs (grouped_gemm.h: our wgmma kernel) against one cublasGemmEx per problem and against a
//    double reference of the same BF16 operands on sampled entries, for the three products, small widths and
//    the real ones (D 2048, F 1408, 64 experts, loads 0, 1, tile edges, long), beta 0 over NaN and beta 1: the
//    grouped and per-problem results differ only in FP32 summation order (relative L2 <= 8 sqrt(K) 2^-24;
//    derivation at check_grouped); the kernel's and cuBLAS's times printed at the real widths.
//  - the whole step with grouped experts against the per-expert loop on train-small: the same BF16 operands, so
//    the losses within 1e-5 and each gradient within 2e-3 relative L2 (a 1e-6 FP32 difference flips the BF16
//    rounding of ~2^-14 of the downstream operands by 2^-8: sqrt(6e-5) x 4e-3 ~ 3e-5 a layer, a few layers).
//  - the memory plan (train/memory_plan.h) against what cudaMemGetInfo measures over a step.
#include <algorithm>
#include <array>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <limits>
#include <random>

#include <nlohmann/json.hpp>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "train/cuda/device_trainer.h"
#include "train/cuda/grouped_gemm.h"
#include "train/cuda/kernels.h"
#include "train/memory_plan.h"
#include "train/optimizer.h"
#include "train_cuda/util.h"

namespace moe::train::test {
namespace {

using cuda::DeviceTrainer;
using cuda::GemmPrecision;

TEST(CudaTrainMfu, AdamWBf16MomentsMatchCpuEmulation) {
  SKIP_WITHOUT_GPU();
  TrainModel model;
  auto p = std::make_unique<Param>();
  p->name = "w";
  const size_t count = 1 << 20;
  p->w = randn(count, 81, 0.02), p->g = randn(count, 82, 1e-3), p->m = randn(count, 83, 1e-3);
  p->v = randn(count, 84, 1e-3);
  for (float& v : p->v) v = v * v;
  for (auto* x : {&p->m, &p->v})  // stored moments are BF16 values
    for (float& v : *x) v = bf16_to_float(float_to_bf16(v));
  p->decay = true;
  model.params.push_back(std::move(p));
  const Param& P = *model.params[0];
  const std::vector<float> w0 = P.w;
  std::vector<uint16_t> m16(count), v16(count);
  for (size_t i = 0; i < count; ++i) m16[i] = float_to_bf16(P.m[i]), v16[i] = float_to_bf16(P.v[i]);
  DeviceArray<float> gw(P.w), gg(P.g);
  DeviceArray<uint16_t> gm(m16), gv(v16);
  AdamW opt;
  opt.bf16_moments = true;
  const double lr = 3e-3;
  const int64_t step = 5;
  const StepStats st = adamw_step(model, opt, lr, 0.5, step);
  ASSERT_LT(st.clip_scale, 1.0);
  cuda::AdamWArgs a;
  a.clip = float(st.clip_scale), a.lr = float(lr), a.beta1 = float(opt.beta1), a.beta2 = float(opt.beta2);
  a.eps = float(opt.eps), a.decay = float(1.0 - lr * opt.weight_decay);
  a.bc1 = float(1.0 - std::pow(opt.beta1, double(step))), a.bc2 = float(1.0 - std::pow(opt.beta2, double(step)));
  cuda::adamw_update_bf16(gw.get(), gg.get(), gm.get(), gv.get(), int64_t(count), a, nullptr);
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  const std::vector<uint16_t> dm = gm.host(), dv = gv.host();
  size_t differ = 0;
  for (size_t i = 0; i < count; ++i)
    for (auto [dev, cpu] : {std::pair{dm[i], P.m[i]}, std::pair{dv[i], P.v[i]}}) {
      const uint16_t want = float_to_bf16(cpu);
      ASSERT_EQ(bf16_to_float(want), cpu) << "the CPU's moment " << i << " is not a BF16 value";
      if (dev == want) continue;
      ++differ;
      ASSERT_EQ(std::abs(int(dev) - int(want)), 1) << "moment " << i << ": more than one BF16 ulp apart";
    }
  const double e = rel_l2(minus(gw.host(), w0), minus(P.w, w0));
  std::printf("adamw bf16 moments: %zu of %zu moments one ulp apart, update relative L2 %.3g\n", differ, 2 * count, e);
  EXPECT_LE(double(differ), 1e-3 * double(2 * count));
  EXPECT_LT(e, 3e-4);
}

std::vector<uint16_t> bf16_of(const std::vector<float>& x) {
  std::vector<uint16_t> r(x.size());
  for (size_t i = 0; i < x.size(); ++i) r[i] = float_to_bf16(x[i]);
  return r;
}

// BF16 bits of uniform values in (-1, 1), never 0: splitmix64 of (seed, index), fast enough for the real widths'
// 184 M weights.
std::vector<uint16_t> bf16_uniform(size_t n, uint64_t seed) {
  std::vector<uint16_t> r(n);
  for (size_t i = 0; i < n; ++i) {
    uint64_t z = seed * 0x9E3779B97F4A7C15ull + (uint64_t(i) + 1) * 0xD1B54A32D192ED03ull;
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    z ^= z >> 31;
    const float u = float(int64_t(z >> 40) - (int64_t(1) << 23)) / float(1 << 23);  // [-1, 1), 2^-23 steps
    r[i] = float_to_bf16(u == 0.0f ? 0.5f : u);
  }
  return r;
}

// The grouped kernel (GroupedGemm::run, grouped) against one cublasGemmEx per problem (run_each) and, on sampled
// entries, against a double reference of the same BF16 operands, for one kind at widths (k, m) over problems of
// `rows` rows (the layout of device_experts.cpp: the problems' rows stacked; W_p [m, k] for nt/nn; tn's outputs
// [m, k] each). For each beta: 0 over an output pre-filled with NaN (the kernel must not read it) and 1 over a
// random start (accumulation, as the weight gradients). Outputs of empty problems (tn) must stay untouched.
//
// Tolerances (u = 2^-24, FP32's unit roundoff; K the summed length, the largest n_p for tn):
//  - grouped vs per-problem, relative L2 over the written entries: both add the same K products (BF16 x BF16 is
//    exact in FP32) in FP32, in different orders. One output's rounding error is a sum of one error per addition,
//    each <= u |partial sum| (2u with the tensor cores' truncation), partial sums of zero-mean data ~ sqrt(i) of a
//    product's size: the error is ~ u sqrt(K) relative to the result (the truncation bias adds ~ u K / 16 / sqrt(3)
//    over K / 16 MMA steps, 4.4e-6 at K 2048, inside the same bound). Bound: 8 sqrt(K) u (2.2e-5 at K 2048).
//  - sampled entries vs double: the worst-case FP32 summation bound, |got - ref| <= K 2u sum |a_i b_i|
//    + 2u (|acc| + |beta start|) (truncating adds, one more rounding for beta): a wrong operand element, row or
//    chunk moves an entry by ~ sqrt(K) products, far outside it.
struct GroupedCheck {
  double vs_each = 0, vs_double = 0;  // relative L2; the worst sampled |error| / bound
};

std::vector<GroupedCheck> check_grouped(cuda::CudaCompute& cc, cuda::GemmKind kind, int64_t k, int64_t m,
                                        const std::vector<int64_t>& rows, const std::vector<float>& betas,
                                        uint64_t seed) {
  void* table = nullptr;  // the tables' device buffer, grow-only as the trainer's
  size_t have = 0;
  cuda::GroupedGemm gemm(
      cc.blas(), cc.stream(),
      [&](size_t bytes) {
        if (bytes > have) {
          cudaFree(table);
          EXPECT_EQ(cudaMalloc(&table, bytes), cudaSuccess);
          have = bytes;
        }
        return table;
      },
      [](const std::string& l) { std::printf("%s\n", l.c_str()); });
  const bool tn = kind == cuda::GemmKind::Tn, nt = kind == cuda::GemmKind::Nt;
  const int64_t E = int64_t(rows.size());
  int64_t total = 0, max_rows = 0;
  std::vector<int64_t> off;
  for (int64_t r : rows) off.push_back(total), total += r, max_rows = std::max(max_rows, r);
  // nt: a = x [n, k], b = W [m, k], out [n, m]; nn: a = dy [n, m], b = W [m, k], out [n, k];
  // tn: a = dy [n, m], b = x [n, k], out [m, k] per problem.
  const int64_t a_w = nt ? k : m, out_w = nt ? m : k, K = nt ? k : tn ? max_rows : m;
  const std::vector<uint16_t> a16 = bf16_uniform(size_t(total * a_w), seed),
                              b16 = bf16_uniform(size_t(tn ? total * k : E * m * k), seed + 1);
  const size_t out_count = tn ? size_t(E * m * k) : size_t(total * out_w);
  DeviceArray<uint16_t> ga(a16), gb(b16);
  auto out_at = [&](int64_t e) { return tn ? size_t(e * m * k) : size_t(off[size_t(e)] * out_w); };
  auto out_rows = [&](int64_t e) { return tn ? m : rows[size_t(e)]; };
  std::vector<GroupedCheck> res;
  for (const float beta : betas) {
    std::vector<float> start(out_count);
    if (beta != 0.0f) {
      const std::vector<uint16_t> s16 = bf16_uniform(out_count, seed + 2);
      for (size_t i = 0; i < out_count; ++i) start[i] = 4.0f * bf16_to_float(s16[i]);
    } else {
      std::fill(start.begin(), start.end(), std::numeric_limits<float>::quiet_NaN());
    }
    DeviceArray<float> out_g(start), out_e(start);
    for (const bool grouped : {true, false}) {
      float* out = grouped ? out_g.get() : out_e.get();
      std::vector<cuda::GemmProblem> ps;
      for (int64_t e = 0; e < E; ++e) {
        cuda::GemmProblem p;
        p.n = rows[size_t(e)];
        p.a = ga.get() + off[size_t(e)] * a_w;
        p.b = tn ? gb.get() + off[size_t(e)] * k : gb.get() + e * m * k;
        p.out = out + out_at(e);
        ps.push_back(p);
      }
      if (grouped) {
        gemm.run(kind, ps, k, m, beta);
        if (cuda::grouped_gemm_wgmma_supported()) {
          EXPECT_TRUE(gemm.grouped()) << "the grouped kernel did not run";
        }
      } else {
        gemm.run_each(kind, ps, k, m, beta);
      }
    }
    EXPECT_EQ(cudaStreamSynchronize(cc.stream()), cudaSuccess);
    const std::vector<float> g = out_g.host(), ev = out_e.host();
    GroupedCheck c;
    double num = 0, den = 0;
    size_t bad = 0;
    for (int64_t e = 0; e < E; ++e) {
      const size_t b = out_at(e), n = size_t(out_rows(e) * out_w);
      if (rows[size_t(e)] == 0) {  // tn only: this output is untouched, bit for bit (NaN stays NaN)
        for (size_t i = b; i < b + n; ++i)
          if (std::memcmp(&g[i], &start[i], 4) != 0 || std::memcmp(&ev[i], &start[i], 4) != 0) ++bad;
        continue;
      }
      for (size_t i = b; i < b + n; ++i) {
        const double d = double(g[i]) - double(ev[i]);
        num += d * d, den += double(ev[i]) * double(ev[i]);
      }
    }
    EXPECT_EQ(bad, size_t(0)) << "outputs of empty problems were written";
    c.vs_each = den > 0 ? std::sqrt(num / den) : std::sqrt(num);  // NaN (a read NaN start, an unwritten entry) fails
    // Sampled entries: random ones and the corners of each problem's output (its first and last rows and columns,
    // the rows either side of a 128-row tile edge).
    std::mt19937_64 rng(seed + 3);
    std::vector<std::array<int64_t, 3>> picks;  // (problem, row, column)
    for (int64_t e = 0; e < E; ++e) {
      const int64_t R = out_rows(e);
      if (rows[size_t(e)] == 0) continue;
      for (int64_t i : {int64_t(0), R - 1, int64_t(127), int64_t(128)})
        for (int64_t j : {int64_t(0), out_w - 1, int64_t(std::uniform_int_distribution<int64_t>(0, out_w - 1)(rng))})
          if (i < R) picks.push_back({e, i, j});
      for (int s = 0; s < 4; ++s)
        picks.push_back({e, std::uniform_int_distribution<int64_t>(0, R - 1)(rng),
                         std::uniform_int_distribution<int64_t>(0, out_w - 1)(rng)});
    }
    const double u2 = std::ldexp(1.0, -23);
    for (const auto& [e, i, j] : picks) {
      const int64_t o = off[size_t(e)], n = rows[size_t(e)];
      auto A = [&](int64_t r, int64_t col) { return double(bf16_to_float(a16[size_t((o + r) * a_w + col)])); };
      double s = 0, sabs = 0;
      int64_t len = 0;
      if (nt) {
        len = k;
        for (int64_t x = 0; x < k; ++x) {
          const double p = A(i, x) * double(bf16_to_float(b16[size_t(e * m * k + j * k + x)]));
          s += p, sabs += std::abs(p);
        }
      } else if (!tn) {
        len = m;
        for (int64_t x = 0; x < m; ++x) {
          const double p = A(i, x) * double(bf16_to_float(b16[size_t(e * m * k + x * k + j)]));
          s += p, sabs += std::abs(p);
        }
      } else {
        len = n;
        for (int64_t r = 0; r < n; ++r) {
          const double p = A(r, i) * double(bf16_to_float(b16[size_t((o + r) * k + j)]));
          s += p, sabs += std::abs(p);
        }
      }
      const size_t at = out_at(e) + size_t(i * out_w + j);
      const double st = beta != 0.0f ? double(beta) * double(start[at]) : 0.0, want = s + st;
      const double bound = double(len) * u2 * sabs + u2 * (std::abs(s) + std::abs(st)) + 1e-30;
      for (const float got : {g[at], ev[at]}) {
        const double r = std::abs(double(got) - want) / bound;
        c.vs_double = std::max(c.vs_double, std::isnan(r) ? INFINITY : r);
      }
    }
    const double tol = 8.0 * std::sqrt(double(K)) * std::ldexp(1.0, -24);
    std::printf("grouped gemm kind %d k %lld m %lld beta %g: grouped vs per-problem relative L2 %.3g (bound %.3g), "
                "worst sampled error vs double %.3g of its bound (%zu samples)\n",
                int(kind), (long long)k, (long long)m, double(beta), c.vs_each, tol, c.vs_double, picks.size());
    EXPECT_LT(c.vs_each, tol) << "kind " << int(kind) << " beta " << beta;
    EXPECT_LE(c.vs_double, 1.0) << "kind " << int(kind) << " beta " << beta;
    res.push_back(c);
  }
  cudaFree(table);
  return res;
}

TEST(CudaTrainMfu, GroupedExpertGemmsMatchPerExpertAndDouble) {
  SKIP_WITHOUT_GPU();
  cuda::CudaCompute cc(GemmPrecision::Bf16);
  const int64_t k = 256, m = 96;  // D, F of a small expert
  const std::vector<int64_t> rows = {37, 0, 128, 5, 64, 1, 0, 90};  // loads, empty experts included
  for (cuda::GemmKind kind : {cuda::GemmKind::Nt, cuda::GemmKind::Nn, cuda::GemmKind::Tn}) {
    check_grouped(cc, kind, k, m, rows, {0.0f, 1.0f}, 91 + uint64_t(kind));
    check_grouped(cc, kind, m, k, rows, {0.0f, 1.0f}, 191 + uint64_t(kind));  // the widths swapped (down's)
  }
  // Widths not multiples of 8: the per-problem path, reported once.
  std::string note;
  cuda::GroupedGemm odd(cc.blas(), cc.stream(), [](size_t) -> void* { return nullptr; },
                        [&](const std::string& l) { note = l; });
  const std::vector<uint16_t> a16 = bf16_uniform(size_t(37 * 12), 7), w16 = bf16_uniform(size_t(20 * 12), 8);
  DeviceArray<uint16_t> ga(a16), gw(w16);
  DeviceArray<float> out(std::vector<float>(size_t(37 * 20)));
  odd.run(cuda::GemmKind::Nt, {{out.get(), ga.get(), gw.get(), 37}}, 12, 20, 0.0f);
  const std::vector<float> y = out.host();
  EXPECT_FALSE(odd.grouped());
  if (cuda::grouped_gemm_wgmma_supported()) {
    EXPECT_NE(note.find("multiples of 8"), std::string::npos) << note;
  }
  double s = 0;
  for (int64_t c = 0; c < 12; ++c)  // y[36][19]
    s += double(bf16_to_float(a16[size_t(36 * 12 + c)])) * bf16_to_float(w16[size_t(19 * 12 + c)]);
  EXPECT_NEAR(y[size_t(36 * 20 + 19)], s, 1e-5);
}

// The real widths (D = 2048, F = 1408, 64 experts, ~192 rows each): both width orders (gate/up and down), all
// three kinds, the loads the tile logic must get right (0, 1, tails either side of 64 and 128, long ones).
std::vector<int64_t> real_rows() {
  std::vector<int64_t> rows = {0, 1, 7, 63, 64, 65, 127, 128, 129, 300, 700};
  std::mt19937_64 rng(2048);
  while (rows.size() < 64) rows.push_back(std::uniform_int_distribution<int64_t>(0, 400)(rng));
  std::shuffle(rows.begin(), rows.end(), rng);
  return rows;
}

TEST(CudaTrainMfu, GroupedExpertGemmsMatchAtRealWidths) {
  SKIP_WITHOUT_GPU();
  cuda::CudaCompute cc(GemmPrecision::Bf16);
  const std::vector<int64_t> rows = real_rows();
  for (const auto& [k, m] : {std::pair<int64_t, int64_t>{2048, 1408}, std::pair<int64_t, int64_t>{1408, 2048}})
    for (cuda::GemmKind kind : {cuda::GemmKind::Nt, cuda::GemmKind::Nn, cuda::GemmKind::Tn})
      check_grouped(cc, kind, k, m, rows, {0.0f, 1.0f}, 301 + uint64_t(kind) + uint64_t(k));
}

// Speed of the grouped kernel against one cublasGemmEx per expert at the real widths, as the trainer calls them
// (nt and nn with beta 0, tn with beta 1): printed, not asserted (the lead's GPU runs report it).
TEST(CudaTrainMfu, GroupedExpertGemmsTiming) {
  SKIP_WITHOUT_GPU();
  cuda::CudaCompute cc(GemmPrecision::Bf16);
  void* table = nullptr;
  ASSERT_EQ(cudaMalloc(&table, 1 << 20), cudaSuccess);
  cuda::GroupedGemm gemm(cc.blas(), cc.stream(), [&](size_t bytes) { return bytes <= (1 << 20) ? table : nullptr; },
                         [](const std::string& l) { std::printf("%s\n", l.c_str()); });
  const std::vector<int64_t> rows = real_rows();
  const int64_t E = int64_t(rows.size()), D = 2048, F = 1408;
  int64_t total = 0;
  std::vector<int64_t> off;
  for (int64_t r : rows) off.push_back(total), total += r;
  DeviceArray<uint16_t> ga(bf16_uniform(size_t(total * D), 1)), gx(bf16_uniform(size_t(total * D), 2)),
      gw(bf16_uniform(size_t(E * D * F), 3));
  DeviceArray<float> out(std::vector<float>(size_t(E * D * F)));
  cudaEvent_t t0, t1;
  ASSERT_EQ(cudaEventCreate(&t0), cudaSuccess);
  ASSERT_EQ(cudaEventCreate(&t1), cudaSuccess);
  for (const auto& [k, m] : {std::pair<int64_t, int64_t>{D, F}, std::pair<int64_t, int64_t>{F, D}})
    for (cuda::GemmKind kind : {cuda::GemmKind::Nt, cuda::GemmKind::Nn, cuda::GemmKind::Tn}) {
      const bool tn = kind == cuda::GemmKind::Tn, nt = kind == cuda::GemmKind::Nt;
      const int64_t a_w = nt ? k : m, out_w = nt ? m : k;
      std::vector<cuda::GemmProblem> ps;
      for (int64_t e = 0; e < E; ++e) {
        const int64_t o = off[size_t(e)];
        ps.push_back({tn ? out.get() + e * m * k : out.get() + o * out_w, ga.get() + o * a_w,
                      tn ? gx.get() + o * k : gw.get() + e * m * k, rows[size_t(e)]});
      }
      const float beta = tn ? 1.0f : 0.0f;
      const double flops = 2.0 * double(total) * double(k) * double(m);
      double ms[2] = {0, 0};
      for (int path = 0; path < 2; ++path) {
        auto call = [&] { path == 0 ? gemm.run(kind, ps, k, m, beta) : gemm.run_each(kind, ps, k, m, beta); };
        call(), call();  // warm-up
        const int reps = 10;
        ASSERT_EQ(cudaEventRecord(t0, cc.stream()), cudaSuccess);
        for (int r = 0; r < reps; ++r) call();
        ASSERT_EQ(cudaEventRecord(t1, cc.stream()), cudaSuccess);
        ASSERT_EQ(cudaEventSynchronize(t1), cudaSuccess);
        float elapsed = 0;
        ASSERT_EQ(cudaEventElapsedTime(&elapsed, t0, t1), cudaSuccess);
        ms[path] = double(elapsed) / reps;
        if (path == 0) {
          EXPECT_EQ(gemm.grouped(), cuda::grouped_gemm_wgmma_supported());
        }
      }
      std::printf("grouped gemm timing kind %d k %lld m %lld (%lld rows): wgmma kernel %.3f ms (%.1f TFLOP/s), "
                  "per-expert cuBLAS %.3f ms (%.1f TFLOP/s), %.2fx\n",
                  int(kind), (long long)k, (long long)m, (long long)total, ms[0], flops / ms[0] * 1e-9, ms[1],
                  flops / ms[1] * 1e-9, ms[1] / ms[0]);
    }
  ASSERT_EQ(cudaGetLastError(), cudaSuccess);
  cudaEventDestroy(t0);
  cudaEventDestroy(t1);
  cudaFree(table);
}

TEST(CudaTrainMfu, GroupedExpertsStepMatchesPerExpertLoop) {
  SKIP_WITHOUT_GPU();
  const std::string path = "bench/configs/train-small.json";
  const ModelConfig cfg = load_config(path);
  const int64_t b = 4, t = 128;
  const std::vector<int32_t> ids = random_ids(cfg.vocab_size, b * t, 5);
  const Objective obj{0.3, 1e-3};
  auto run = [&](bool grouped, double* loss) {
    DeviceTrainer gpu(GemmPrecision::Bf16);
    gpu.set_grouped_experts(grouped);
    TrainModel m = TrainModel::init(cfg, path, 11, 0.02);
    m.device = &gpu;
    m.zero_grad();
    ExpertLoads loads;
    *loss = forward_backward(m, ids, b, t, obj, &loads).loss;
    gpu.pull(m);
    std::vector<std::pair<std::string, std::vector<float>>> g;
    for (const auto& p : m.params) g.emplace_back(p->name, p->g);
    return g;
  };
  double lg = 0, ll = 0;
  const auto g = run(true, &lg), l = run(false, &ll);
  ASSERT_EQ(g.size(), l.size());
  double worst = 0;
  size_t experts = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const double e = rel_l2(g[i].second, l[i].second);
    EXPECT_LT(e, 2e-3) << g[i].first;
    worst = std::max(worst, e);
    if (g[i].first.find(".experts.") != std::string::npos) ++experts;
  }
  EXPECT_GT(experts, size_t(0));
  std::printf("grouped vs per-expert step: loss %.9g vs %.9g, worst gradient relative L2 %.3g over %zu tensors\n", lg,
              ll, worst, g.size());
  EXPECT_LT(std::abs(lg - ll) / std::abs(ll), 1e-5);
}

// The routed experts' gradients are left unset by zero_grad and written by their first backward (device_impl.h):
// after a first step has filled every gradient, expert 0 of every MoE layer is shut out by its correction bias
// (-1e6: never in a top-k) and a second zero_grad + forward_backward must leave its gradients exactly zero (not the
// first step's), the other experts' equal to the per-expert loop's (which zeroes everything), and a zero_grad
// straight after a step must read back as zeros.
TEST(CudaTrainMfu, ExpertGradientsWrittenAfterZeroGrad) {
  SKIP_WITHOUT_GPU();
  const std::string path = "bench/configs/train-small.json";
  const ModelConfig cfg = load_config(path);
  const int64_t b = 2, t = 128;
  const Objective obj{0.3, 1e-3};
  auto run = [&](bool grouped, bool pull_after_zero) {
    DeviceTrainer gpu(GemmPrecision::Bf16);
    gpu.set_grouped_experts(grouped);
    TrainModel m = TrainModel::init(cfg, path, 11, 0.02);
    m.device = &gpu;
    m.zero_grad();
    ExpertLoads loads;
    forward_backward(m, random_ids(cfg.vocab_size, b * t, 3), b, t, obj, &loads);
    for (LayerParams* L : {&m.layers[1], &m.mtp_layer})
      if (L->is_moe && L->bias) L->bias->value[0] = -1e6f;
    m.zero_grad();
    if (pull_after_zero) {
      gpu.pull(m);
      double sum = 0;
      for (const auto& p : m.params)
        for (float x : p->g) sum += std::abs(x);
      EXPECT_EQ(sum, 0.0) << "zero_grad reads back as zeros";
    }
    forward_backward(m, random_ids(cfg.vocab_size, b * t, 4), b, t, obj, &loads);
    gpu.pull(m);
    std::vector<std::pair<std::string, std::vector<float>>> g;
    for (const auto& p : m.params) g.emplace_back(p->name, p->g);
    return g;
  };
  const auto g = run(true, false), l = run(false, false);
  run(true, true);
  size_t shut = 0;
  for (size_t i = 0; i < g.size(); ++i) {
    const std::string& name = g[i].first;
    if (name.find(".mlp.experts.0.") != std::string::npos &&
        (name.find("layers.1.") != std::string::npos || name.find("layers." + std::to_string(cfg.num_hidden_layers) + ".") != std::string::npos)) {
      for (float x : g[i].second) ASSERT_EQ(x, 0.0f) << name << ": an expert without rows has no gradient";
      ++shut;
    } else {
      EXPECT_LT(rel_l2(g[i].second, l[i].second), 2e-3) << name;
    }
  }
  EXPECT_GE(shut, size_t(3));
}

// attention: the DeviceTrainer's mode and the plan's (the GEMM attention in FP32, or flash).
void plan_vs_measured(cuda::AttnPrecision attention, PlanAttention plan_attention) {
  const std::string path = "bench/configs/train-default.json";
  const ModelConfig cfg = load_config(path);
  const int64_t b = 16, t = 512;
  DeviceTrainer gpu(GemmPrecision::Bf16);
  gpu.set_bf16_moments(true);
  gpu.set_attention(attention);
  TrainModel m = TrainModel::init(cfg, path, 3, 0.02);
  m.device = &gpu;
  const std::vector<int32_t> ids = random_ids(cfg.vocab_size, b * t, 9);
  AdamW opt;
  opt.bf16_moments = true;
  m.zero_grad();
  ExpertLoads loads;
  forward_backward(m, ids, b, t, Objective{0.3, 1e-3}, &loads);
  adamw_step(m, opt, 1e-3, 1.0, 1);
  const DeviceMemory mem = gpu.memory();
  const DeviceMemoryPlan plan = device_memory_plan(cfg, b, t, true, plan_attention);
  const double planned = plan.total() - plan.runtime, MiB = 1048576.0;
  std::printf("%s attention: memory plan %.0f MiB (arenas %.0f, activations %.0f, temporaries %.0f) vs measured peak %.0f MiB\n",
              plan_attention == PlanAttention::Flash ? "flash" : "fp32", planned / MiB, plan.arenas / MiB,
              plan.activations / MiB, plan.temporaries / MiB, mem.peak_used / MiB);
  EXPECT_GT(mem.peak_used, 0.0);
  EXPECT_LT(std::abs(mem.peak_used - planned), 0.15 * planned + plan.runtime);
}

TEST(CudaTrainMfu, MemoryPlanMatchesMeasured) {
  SKIP_WITHOUT_GPU();
  plan_vs_measured(cuda::AttnPrecision::Fp32, PlanAttention::Gemm);
}

// --attention flash: no [b, H, t, t] buffers (train-default at 16 x 512: 7 layers of 16 x 6 x 512 x 512
// probabilities and the ds temporary, ~0.75 GiB, less).
TEST(CudaTrainMfu, MemoryPlanMatchesMeasuredFlashAttention) {
  SKIP_WITHOUT_GPU();
  plan_vs_measured(cuda::AttnPrecision::Flash, PlanAttention::Flash);
}

}  // namespace
}  // namespace moe::train::test
