// CPU ops against plain double-precision loops: the matmul over every weight dtype (both the streaming
// decode path and the tiled prefill path, with partial FP8 blocks), and MLA's absorbed attention against the
// expanded form it replaces (keys and values rebuilt per head from the latent), at DeepSeek-V3 head widths.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "backend/backend.h"

namespace moe {
namespace {

constexpr double kUnitRoundoff = 5.96e-8;  // 2^-24, F32

struct HostWeight {
  Tensor w, scale;
  Weight weight;
  std::vector<double> dense;  // the exact values the weight represents
};

// A random [N, K] weight of the given dtype; FP8 gets one scale per 128x128 block.
HostWeight random_weight(DType dtype, int64_t N, int64_t K, std::mt19937& rng) {
  std::normal_distribution<float> normal(0.0f, 1.0f);
  HostWeight h;
  h.w = Tensor::host(dtype, {N, K});
  h.dense.resize(size_t(N * K));
  h.weight.w = h.w.view();
  if (dtype == DType::F8_E4M3) {
    const int64_t bn = (N + 127) / 128, bk = (K + 127) / 128;
    h.scale = Tensor::host(DType::F32, {bn, bk});
    for (int64_t i = 0; i < bn * bk; ++i) h.scale.as<float>()[i] = 0.01f * float(1 + i % 5);
    h.weight.scale_inv = h.scale.view();
  }
  for (int64_t n = 0; n < N; ++n)
    for (int64_t k = 0; k < K; ++k) {
      const int64_t i = n * K + k;
      const float v = normal(rng);
      switch (dtype) {
        case DType::F32: h.w.as<float>()[i] = v, h.dense[size_t(i)] = v; break;
        case DType::BF16: h.w.as<uint16_t>()[i] = float_to_bf16(v), h.dense[size_t(i)] = bf16_to_float(float_to_bf16(v)); break;
        case DType::F16: h.w.as<uint16_t>()[i] = float_to_f16(v), h.dense[size_t(i)] = f16_to_float(float_to_f16(v)); break;
        default: {
          const uint8_t q = float_to_e4m3(v * 50.0f);
          h.w.as<uint8_t>()[i] = q;
          h.dense[size_t(i)] = double(e4m3_to_float(q)) * h.scale.as<float>()[(n / 128) * ((K + 127) / 128) + k / 128];
        }
      }
    }
  return h;
}

TEST(CpuMatmul, EveryDtypeAndPathAgainstDoubleLoop) {
  std::mt19937 rng(7);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto backend = make_cpu_backend();
  for (DType dtype : {DType::F32, DType::BF16, DType::F16, DType::F8_E4M3}) {
    for (auto [N, K] : {std::pair<int64_t, int64_t>{37, 300}, {256, 7168 / 8}, {131, 129}}) {
      HostWeight w = random_weight(dtype, N, K, rng);
      for (int64_t T : {1, 3, 9}) {  // 1 and 3 stream the weight rows; 9 takes the tiled path
        Tensor x = Tensor::host(DType::F32, {T, K}), y = Tensor::host(DType::F32, {T, N});
        for (int64_t i = 0; i < T * K; ++i) x.as<float>()[i] = normal(rng);
        backend->matmul(x, w.weight, y);
        for (int64_t t = 0; t < T; ++t)
          for (int64_t n = 0; n < N; ++n) {
            double exact = 0, magnitude = 0;
            for (int64_t k = 0; k < K; ++k) {
              exact += double(x.as<float>()[t * K + k]) * w.dense[size_t(n * K + k)];
              magnitude += std::fabs(double(x.as<float>()[t * K + k]) * w.dense[size_t(n * K + k)]);
            }
            // Summation error bound for K terms in F32: K * u * sum|x w| (FP8: plus one rounding per block).
            const double bound = (double(K) + 8.0) * kUnitRoundoff * magnitude;
            ASSERT_NEAR(y.as<float>()[t * N + n], exact, bound)
                << dtype_name(dtype) << " N=" << N << " K=" << K << " T=" << T << " n=" << n;
          }
      }
    }
  }
}

// MLA absorbed attention == expanded attention: k_nope[h,j] = W_UK[h] c_j, v[h,j] = W_UV[h] c_j,
// score = (q_nope . k_nope + q_rope . k_rope) * scale, out = softmax(score) v.
TEST(CpuMla, AbsorbedAttentionEqualsExpandedAttention) {
  const int64_t H = 16, dn = 128, dr = 64, dv = 128, r = 512, page = 16;
  std::mt19937 rng(11);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto backend = make_cpu_backend();
  HostWeight kv_b = random_weight(DType::BF16, H * (dn + dv), r, rng);
  // Two sequences: one with 40 cached tokens decoding 1, one prefilling 5 new tokens after 20 cached.
  BatchPlan plan;
  plan.page_size = int32_t(page);
  plan.max_pages = 4;
  plan.block_table = {3, 0, 5, -1, 1, 2, -1, -1};
  plan.seq_lens = {41, 25};
  plan.positions = {40, 20, 21, 22, 23, 24};
  plan.token_seq = {0, 1, 1, 1, 1, 1};
  const int64_t T = int64_t(plan.positions.size());
  Tensor cache = Tensor::host(DType::F32, {6, page, r + dr});
  for (int64_t i = 0; i < cache.numel(); ++i) cache.as<float>()[i] = 0.3f * normal(rng);
  Tensor q = Tensor::host(DType::F32, {T, H, dn + dr}), out = Tensor::host(DType::F32, {T, H * dv});
  for (int64_t i = 0; i < q.numel(); ++i) q.as<float>()[i] = 0.1f * normal(rng);
  const float scale = 0.07f;
  const DeviceBatch batch = backend->upload_batch(plan);
  backend->mla_attention(q, kv_b.weight, cache, dn, dv, scale, batch, out);

  auto cache_row = [&](int64_t seq, int64_t j) {
    const int32_t p = plan.block_table[size_t(seq * plan.max_pages + j / page)];
    return cache.as<float>() + (int64_t(p) * page + j % page) * (r + dr);
  };
  double max_err = 0, max_val = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t seq = plan.token_seq[size_t(t)], pos = plan.positions[size_t(t)];
    for (int64_t h = 0; h < H; ++h) {
      const float* qh = q.as<float>() + (t * H + h) * (dn + dr);
      std::vector<double> score(size_t(pos + 1));
      double mx = -1e300;
      for (int64_t j = 0; j <= pos; ++j) {
        const float* c = cache_row(seq, j);
        double s = 0;
        for (int64_t n = 0; n < dn; ++n) {
          double k = 0;
          for (int64_t i = 0; i < r; ++i) k += kv_b.dense[size_t((h * (dn + dv) + n) * r + i)] * c[i];
          s += qh[n] * k;
        }
        for (int64_t i = 0; i < dr; ++i) s += double(qh[dn + i]) * c[r + i];
        score[size_t(j)] = s * scale;
        mx = std::max(mx, score[size_t(j)]);
      }
      double z = 0;
      for (auto& s : score) z += (s = std::exp(s - mx));
      for (int64_t v = 0; v < dv; ++v) {
        double o = 0;
        for (int64_t j = 0; j <= pos; ++j) {
          const float* c = cache_row(seq, j);
          double val = 0;
          for (int64_t i = 0; i < r; ++i) val += kv_b.dense[size_t((h * (dn + dv) + dn + v) * r + i)] * c[i];
          o += score[size_t(j)] / z * val;
        }
        max_err = std::max(max_err, std::fabs(o - out.as<float>()[(t * H + h) * dv + v]));
        max_val = std::max(max_val, std::fabs(o));
      }
    }
  }
  // F32 sums over r = 512 latent terms, twice (absorb, then un-absorb): ~2 * 512 * u relative, x a few.
  EXPECT_LT(max_err, 1e-4 * max_val) << "max |err| " << max_err << " of max |out| " << max_val;
}

}  // namespace
}  // namespace moe
