// The CPU backend's DeepSeek Sparse Attention ops (V3.2) against float64 and against the dense MLA op:
//   - dsa_write_index_cache: LayerNorm with bias, then half-split rope on the first dr values only;
//   - dsa_rope_q: the same rope on each index head;
//   - dsa_index_scores: sum_h relu(scale q.k) w_h, -inf past each token's position, over paged caches;
//   - dsa_topk: highest scores, equal scores by lower position, every visible position while <= K, -1 padding;
//   - mla_sparse_latent_attention: with every position, the dense op bit for bit; with a subset, float64.
#include <gtest/gtest.h>

#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"

namespace moe {
namespace {

Tensor random_f32(Shape shape, std::mt19937& rng, float scale) {
  Tensor t = Tensor::host(DType::F32, shape);
  std::normal_distribution<float> d(0.0f, scale);
  for (int64_t i = 0; i < t.numel(); ++i) t.as<float>()[i] = d(rng);
  return t;
}
Weight f32_weight(const Tensor& t) { return Weight{t.view(), {}}; }
bool same_bits(const Tensor& a, const Tensor& b) {
  return a.view().nbytes() == b.view().nbytes() && std::memcmp(a.data(), b.data(), a.view().nbytes()) == 0;
}

// Two sequences over shuffled pages of 4: one decoding at position 22, one with 5 new tokens at 9 .. 13.
BatchPlan plan_of_two() {
  BatchPlan plan;
  plan.page_size = 4;
  plan.max_pages = 6;
  plan.block_table = {5, 0, 7, 2, 9, 1, 3, 8, 4, 6, -1, -1};
  plan.seq_lens = {23, 14};
  plan.positions = {22, 9, 10, 11, 12, 13};
  plan.token_seq = {0, 1, 1, 1, 1, 1};
  plan.slots = {1 * 4 + 2, 4 * 4 + 1, 4 * 4 + 2, 4 * 4 + 3, 6 * 4 + 0, 6 * 4 + 1};  // pages of the positions
  return plan;
}
const float* cache_row(const Tensor& cache, const BatchPlan& plan, int64_t t, int64_t j) {
  const int32_t page = plan.block_table[size_t(plan.token_seq[size_t(t)] * plan.max_pages + j / plan.page_size)];
  return cache.as<float>() + (int64_t(page) * plan.page_size + j % plan.page_size) * cache.dim(2);
}

RopeParams rope_of(int64_t dr) {
  RopeParams r;
  for (int64_t i = 0; i < dr / 2; ++i) r.inv_freq.push_back(std::pow(10000.0, -2.0 * double(i) / double(dr)));
  return r;
}
// Half-split rope in float64: pairs (v[i], v[i + dr/2]).
void rope_half(std::vector<double>& v, int64_t dr, int32_t pos, const RopeParams& rope) {
  for (int64_t i = 0; i < dr / 2; ++i) {
    const double a = pos * rope.inv_freq[size_t(i)], c = std::cos(a), s = std::sin(a);
    const double x1 = v[size_t(i)], x2 = v[size_t(i + dr / 2)];
    v[size_t(i)] = x1 * c - x2 * s;
    v[size_t(i + dr / 2)] = x2 * c + x1 * s;
  }
}

TEST(CpuDsa, IndexKeysAndQueriesLayerNormAndHalfSplitRope) {
  const int64_t Di = 24, dr = 8, Hi = 3;
  std::mt19937 rng(5);
  auto cpu = make_cpu_backend();
  const BatchPlan plan = plan_of_two();
  const int64_t T = plan.num_tokens();
  const DeviceBatch batch = cpu->upload_batch(plan);
  const RopeParams rope = rope_of(dr);
  Tensor k = random_f32({T, Di}, rng, 2.0f), w = random_f32({Di}, rng, 1.0f), b = random_f32({Di}, rng, 0.1f);
  for (int64_t i = 0; i < T * Di; i += Di) k.as<float>()[i] += 3.0f;  // a mean to remove
  Tensor cache = Tensor::host(DType::F32, {10, 4, Di});
  cpu->dsa_write_index_cache(k, f32_weight(w), f32_weight(b), 1e-6f, rope, batch, cache);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<double> x(k.as<float>() + t * Di, k.as<float>() + (t + 1) * Di);
    double mean = 0, var = 0;
    for (double v : x) mean += v / Di;
    for (double v : x) var += (v - mean) * (v - mean) / Di;
    for (int64_t i = 0; i < Di; ++i) x[size_t(i)] = (x[size_t(i)] - mean) / std::sqrt(var + 1e-6) * w.as<float>()[i] + b.as<float>()[i];
    rope_half(x, dr, plan.positions[size_t(t)], rope);
    const float* got = cache.as<float>() + int64_t(plan.slots[size_t(t)]) * Di;
    for (int64_t i = 0; i < Di; ++i) ASSERT_NEAR(got[i], x[size_t(i)], 1e-5) << t << "," << i;
  }
  Tensor q = random_f32({T, Hi, Di}, rng, 1.0f), q0 = Tensor::host(DType::F32, {T, Hi, Di});
  std::memcpy(q0.data(), q.data(), q.view().nbytes());
  cpu->dsa_rope_q(q, rope, batch);
  for (int64_t th = 0; th < T * Hi; ++th) {
    std::vector<double> x(q0.as<float>() + th * Di, q0.as<float>() + (th + 1) * Di);
    rope_half(x, dr, plan.positions[size_t(th / Hi)], rope);
    for (int64_t i = 0; i < Di; ++i) ASSERT_NEAR(q.as<float>()[th * Di + i], x[size_t(i)], 1e-5);
    for (int64_t i = dr; i < Di; ++i) ASSERT_EQ(q.as<float>()[th * Di + i], q0.as<float>()[th * Di + i]);  // unrotated
  }
}

TEST(CpuDsa, IndexScoresAgainstFloat64) {
  const int64_t Di = 16, Hi = 4, L = 24;
  std::mt19937 rng(7);
  auto cpu = make_cpu_backend();
  const BatchPlan plan = plan_of_two();
  const int64_t T = plan.num_tokens();
  const DeviceBatch batch = cpu->upload_batch(plan);
  Tensor cache = random_f32({10, 4, Di}, rng, 1.0f), q = random_f32({T, Hi, Di}, rng, 1.0f);
  Tensor w = random_f32({T, Hi}, rng, 1.0f), scores = Tensor::host(DType::F32, {T, L});
  const float scale = 0.25f, wscale = 0.5f;
  cpu->dsa_index_scores(q, w, cache, scale, wscale, batch, scores);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t pos = plan.positions[size_t(t)];
    for (int64_t j = 0; j < L; ++j) {
      const float got = scores.as<float>()[t * L + j];
      if (j > pos) {
        ASSERT_TRUE(std::isinf(got) && got < 0) << t << "," << j;
        continue;
      }
      double s = 0, mag = 0;
      for (int64_t h = 0; h < Hi; ++h) {
        double d = 0;
        for (int64_t i = 0; i < Di; ++i) d += double(q.as<float>()[(t * Hi + h) * Di + i]) * cache_row(cache, plan, t, j)[i];
        const double term = std::max(0.0, d * scale) * w.as<float>()[t * Hi + h] * wscale;
        s += term;
        mag += std::fabs(term) + std::fabs(d);
      }
      ASSERT_NEAR(got, s, 1e-6 * mag + 1e-30) << t << "," << j;
    }
  }
}

TEST(CpuDsa, TopkHighestScoresTiesByLowerPositionDenseWhileFew) {
  auto cpu = make_cpu_backend();
  BatchPlan plan;
  plan.page_size = 8;
  plan.max_pages = 1;
  plan.block_table = {0};
  plan.seq_lens = {8};
  plan.positions = {2, 3, 7};
  plan.token_seq = {0, 0, 0};
  const DeviceBatch batch = cpu->upload_batch(plan);
  const float inf = INFINITY;
  const std::vector<float> s = {5, 1, 9, -inf, -inf, -inf, -inf, -inf,   // 3 visible <= K: all of them
                                0, 2, 7, 3, -inf, -inf, -inf, -inf,      // 4 visible <= K: all of them
                                1, 4, 0, 4, 8, 4, 2, 6};                 // 8 visible: 8, 6, then the first two 4s
  Tensor scores = Tensor::host(DType::F32, {3, 8}), idx = Tensor::host(DType::I32, {3, 4});
  std::memcpy(scores.data(), s.data(), s.size() * 4);
  cpu->dsa_topk(scores, batch, idx);
  const std::vector<int32_t> got(idx.as<int32_t>(), idx.as<int32_t>() + 12);
  EXPECT_EQ(got, (std::vector<int32_t>{0, 1, 2, -1, 0, 1, 2, 3, 1, 3, 4, 7}));
}

TEST(CpuDsa, SparseAttentionOverEveryPositionIsTheDenseOpOverASubsetFloat64) {
  const int64_t H = 3, r = 32, dr = 8, W = r + dr;
  std::mt19937 rng(9);
  auto cpu = make_cpu_backend();
  const BatchPlan plan = plan_of_two();
  const int64_t T = plan.num_tokens(), K = 30;
  const DeviceBatch batch = cpu->upload_batch(plan);
  Tensor cache = random_f32({10, 4, W}, rng, 0.5f), qf = random_f32({T, H, W}, rng, 0.5f);
  // Every visible position: the dense op's result, bit for bit.
  Tensor all = Tensor::host(DType::I32, {T, K});
  for (int64_t t = 0; t < T; ++t)
    for (int64_t i = 0; i < K; ++i) all.as<int32_t>()[t * K + i] = i <= plan.positions[size_t(t)] ? int32_t(i) : -1;
  Tensor o_dense = Tensor::host(DType::F32, {T, H, r}), lse_dense = Tensor::host(DType::F32, {T, H});
  Tensor o = Tensor::host(DType::F32, {T, H, r}), lse = Tensor::host(DType::F32, {T, H});
  cpu->mla_latent_attention(qf, cache, 0.2f, batch, o_dense, lse_dense);
  cpu->mla_sparse_latent_attention(qf, cache, 0.2f, batch, all, o, lse);
  EXPECT_TRUE(same_bits(o, o_dense));
  EXPECT_TRUE(same_bits(lse, lse_dense));
  // Every third position (and the token's own): float64 softmax over those only.
  const int64_t K2 = 10;
  Tensor some = Tensor::host(DType::I32, {T, K2});
  for (int64_t t = 0; t < T; ++t) {
    int64_t n = 0;
    for (int32_t j = 0; j <= plan.positions[size_t(t)]; ++j)
      if (j % 3 == 0 || j == plan.positions[size_t(t)]) some.as<int32_t>()[t * K2 + n++] = j;
    ASSERT_LE(n, K2);
    for (; n < K2; ++n) some.as<int32_t>()[t * K2 + n] = -1;
  }
  cpu->mla_sparse_latent_attention(qf, cache, 0.2f, batch, some, o, lse);
  for (int64_t t = 0; t < T; ++t)
    for (int64_t h = 0; h < H; ++h) {
      std::vector<int32_t> js;
      for (int64_t i = 0; i < K2 && some.as<int32_t>()[t * K2 + i] >= 0; ++i) js.push_back(some.as<int32_t>()[t * K2 + i]);
      std::vector<double> s;
      double mx = -1e300;
      for (int32_t j : js) {
        double d = 0;
        for (int64_t i = 0; i < W; ++i) d += double(qf.as<float>()[(t * H + h) * W + i]) * cache_row(cache, plan, t, j)[i];
        s.push_back(0.2 * d);
        mx = std::max(mx, s.back());
      }
      double z = 0;
      for (double v : s) z += std::exp(v - mx);
      EXPECT_NEAR(lse.as<float>()[t * H + h], mx + std::log(z), 1e-5);
      for (int64_t i = 0; i < r; ++i) {
        double ref = 0;
        for (size_t n = 0; n < js.size(); ++n) ref += std::exp(s[n] - mx) / z * cache_row(cache, plan, t, js[n])[i];
        ASSERT_NEAR(o.as<float>()[(t * H + h) * r + i], ref, 1e-5) << t << "," << h << "," << i;
      }
    }
  // Positions ahead of the token, or out of order, are refused.
  some.as<int32_t>()[0] = 23;
  EXPECT_THROW(cpu->mla_sparse_latent_attention(qf, cache, 0.2f, batch, some, o, lse), Error);
}

}  // namespace
}  // namespace moe
