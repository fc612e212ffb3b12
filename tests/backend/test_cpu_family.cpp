// The DeepSeek-V3 family's weight formats and shapes on the CPU backend (issue 17), against plain double loops:
//   INT4 (W4A16, compressed-tensors pack-quantized) weights dequantised inside the matmul: the nibble order
//   and offset on a hand-made word, then random packed weights (groups 32/64/128, BF16 and F32 scales) on the
//   streaming (decode) and tiled (prefill) paths; bound as for the other dtypes: (K + 8) u sum|x w| (F32
//   summation, one more rounding per group scale).
//   Kimi-K2 routing: 384 experts in one group, top-8, routed_scaling_factor 2.827, against a double-precision
//   sigmoid + bias choice written here; weights within 1e-6 relative (F32 sigmoid, one division).
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "backend/backend.h"
#include "int4_test_util.h"

namespace moe {
namespace {

constexpr double kUnitRoundoff = 5.96e-8;  // 2^-24

TEST(CpuInt4, NibbleOrderAndOffset) {
  // Row 0: word 0x76543210 holds nibbles 0..7 from the low bits: q = -8..-1; word 0xfedcba98: q = 0..7.
  // Row 1: word 0x0000000f: q[0] = 7 and q[1..7] = -8; then 0x88888888: all zero.
  std::vector<uint32_t> words = {0x76543210u, 0xfedcba98u, 0x0000000fu, 0x88888888u};
  std::vector<float> scales = {0.5f, 0.25f};  // group 16 = one group per row
  Weight w;
  w.w.data = words.data();
  w.w.dtype = DType::I32;
  w.w.shape = Shape{2, 2};
  w.scale_inv.data = scales.data();
  w.scale_inv.dtype = DType::F32;
  w.scale_inv.shape = Shape{2, 1};
  w.group_size = 16;
  ASSERT_EQ(w.cols(), 16);
  auto backend = make_cpu_backend();
  // x = e_k picks column k: out[t, n] = W[n, t].
  Tensor x = Tensor::host(DType::F32, {16, 16}), y = Tensor::host(DType::F32, {16, 2});
  std::fill(x.as<float>(), x.as<float>() + 256, 0.0f);
  for (int k = 0; k < 16; ++k) x.as<float>()[k * 16 + k] = 1.0f;
  backend->matmul(x, w, y);  // 16 tokens: the tiled path (dequant_row)
  for (int k = 0; k < 16; ++k) {
    EXPECT_EQ(y.as<float>()[k * 2 + 0], float(k - 8) * 0.5f) << "k=" << k;
    EXPECT_EQ(y.as<float>()[k * 2 + 1], k == 0 ? 7 * 0.25f : (k < 8 ? -8 * 0.25f : 0.0f)) << "k=" << k;
  }
  Tensor y1 = Tensor::host(DType::F32, {1, 2});
  for (int k : {0, 5, 9, 15}) {  // one token: the streaming path (dot_row)
    backend->matmul(x.view().slice_rows(k, 1), w, y1);
    EXPECT_EQ(y1.as<float>()[0], y.as<float>()[k * 2]) << "k=" << k;
    EXPECT_EQ(y1.as<float>()[1], y.as<float>()[k * 2 + 1]) << "k=" << k;
  }
}

TEST(CpuInt4, MatmulAgainstDoubleLoop) {
  std::mt19937_64 rng(17);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto backend = make_cpu_backend();
  for (int64_t group : {32, 64, 128})
    for (bool f32_scales : {false, true})
      for (auto [N, K] : {std::pair<int64_t, int64_t>{37, 256}, {64, 7168 / 4}}) {
        test::HostInt4 h;
        test::random_int4(rng, N, K, group, f32_scales, h);
        for (int64_t T : {1, 3, 9}) {
          Tensor x = Tensor::host(DType::F32, {T, K}), y = Tensor::host(DType::F32, {T, N});
          for (int64_t i = 0; i < T * K; ++i) x.as<float>()[i] = normal(rng);
          backend->matmul(x, h.w, y);
          for (int64_t t = 0; t < T; ++t)
            for (int64_t n = 0; n < N; ++n) {
              double exact = 0, magnitude = 0;
              for (int64_t k = 0; k < K; ++k) {
                const double p = double(x.as<float>()[t * K + k]) * h.ref[size_t(n * K + k)];
                exact += p;
                magnitude += std::fabs(p);
              }
              ASSERT_NEAR(y.as<float>()[t * N + n], exact, (double(K) + 8.0) * kUnitRoundoff * magnitude)
                  << "group " << group << " f32 scales " << f32_scales << " N=" << N << " K=" << K << " T=" << T;
            }
        }
      }
}

TEST(CpuRouting, Kimi384ExpertsOneGroup) {
  const int32_t E = 384, K = 8;
  const int64_t T = 64;
  std::mt19937 rng(384);
  std::normal_distribution<float> normal(0.0f, 2.0f);
  std::uniform_real_distribution<float> small(-0.05f, 0.05f);
  Tensor logits = Tensor::host(DType::F32, {T, E}), bias = Tensor::host(DType::F32, {E});
  for (int64_t i = 0; i < T * E; ++i) logits.as<float>()[i] = normal(rng);
  for (int32_t e = 0; e < E; ++e) bias.as<float>()[e] = small(rng);
  RoutingParams p;
  p.num_experts = E;
  p.top_k = K;
  p.n_group = 1;
  p.topk_group = 1;
  p.norm_topk_prob = true;
  p.routed_scaling_factor = 2.827f;
  Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
  make_cpu_backend()->moe_route(logits, bias, p, ids, w);
  int high = 0;
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> s(E), choice(E);
    for (int32_t e = 0; e < E; ++e) {
      s[size_t(e)] = 1.0 / (1.0 + std::exp(-double(logits.as<float>()[t * E + e])));
      choice[size_t(e)] = s[size_t(e)] + double(bias.as<float>()[e]);
    }
    std::vector<int32_t> order(E);
    std::iota(order.begin(), order.end(), 0);
    std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return choice[size_t(a)] > choice[size_t(b)]; });
    double sum = 0;
    for (int j = 0; j < K; ++j) sum += s[size_t(order[size_t(j)])];
    for (int j = 0; j < K; ++j) {
      ASSERT_EQ(ids.as<int32_t>()[t * K + j], order[size_t(j)]) << "t=" << t << " j=" << j;
      const double want = s[size_t(order[size_t(j)])] / sum * 2.827;
      EXPECT_NEAR(w.as<float>()[t * K + j], want, 1e-6 * want) << "t=" << t << " j=" << j;
      high += order[size_t(j)] >= 256;
    }
  }
  EXPECT_GT(high, 0) << "no expert past 255 chosen in " << T << " tokens";
}

}  // namespace
}  // namespace moe
