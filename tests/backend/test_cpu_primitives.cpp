// The CPU backend's MoE and MLA primitives and their compositions (Backend::moe_experts, mla_attention):
//   - the compositions against the fused loops they replaced (copied here verbatim from the previous
//     cpu/moe_experts.cpp and cpu/mla_attention.cpp, on the same row helpers): the same operations in the same
//     order, so the results must be bit-identical;
//   - each primitive against an independent float64 computation, with error bounds derived from the F32
//     operations involved (gamma_n = n u / (1 - n u), u = 2^-24, for a sum of n products);
//   - mla_latent_attention's log-sum-exp against float64.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cpu/weight_rows.h"

namespace moe {
namespace {

constexpr double kU = 5.96e-8;  // 2^-24
double gamma(int64_t n) { return double(n) * kU / (1.0 - double(n) * kU); }

struct HostWeight {
  Tensor w;
  Weight weight;
  std::vector<double> dense;  // [N, K] the values the BF16 weight holds
};

HostWeight random_bf16(int64_t N, int64_t K, std::mt19937& rng) {
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  const float a = 1.0f / std::sqrt(float(K));
  HostWeight h;
  h.w = Tensor::host(DType::BF16, {N, K});
  h.dense.resize(size_t(N * K));
  for (int64_t i = 0; i < N * K; ++i) {
    const uint16_t b = float_to_bf16(a * u(rng));
    h.w.as<uint16_t>()[i] = b;
    h.dense[size_t(i)] = bf16_to_float(b);
  }
  h.weight.w = h.w.view();
  return h;
}

Tensor random_f32(Shape shape, std::mt19937& rng, float scale = 1.0f) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  Tensor t = Tensor::host(DType::F32, shape);
  for (int64_t i = 0; i < t.numel(); ++i) t.as<float>()[i] = scale * n(rng);
  return t;
}

bool same_bits(const TensorView& a, const TensorView& b) {
  return a.nbytes() == b.nbytes() && std::memcmp(a.data, b.data, a.nbytes()) == 0;
}

// ---- MoE ---------------------------------------------------------------------------------------------------

struct Experts {
  std::vector<HostWeight> keep;  // gate, up, down per expert
  ExpertWeights weights;
};

Experts random_experts(int64_t E, int64_t D, int64_t I, std::mt19937& rng) {
  Experts x;
  x.keep.reserve(size_t(3 * E));
  for (int64_t e = 0; e < E; ++e) {
    x.keep.push_back(random_bf16(I, D, rng));
    x.keep.push_back(random_bf16(I, D, rng));
    x.keep.push_back(random_bf16(D, I, rng));
  }
  for (int64_t e = 0; e < E; ++e)
    x.weights.experts.push_back({x.keep[size_t(3 * e)].weight, x.keep[size_t(3 * e + 1)].weight,
                                 x.keep[size_t(3 * e + 2)].weight});
  return x;
}

// The CPU's fused routed-experts loop before the primitives (cpu/moe_experts.cpp), verbatim.
void previous_fused_moe(Backend& cpu, const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                        const TensorView& expert_weights, const TensorView& plus, const TensorView& out) {
  const int64_t T = x.rows(), D = x.row_size(), K = expert_ids.row_size();
  const int64_t E = int64_t(experts.experts.size());
  std::vector<std::vector<int64_t>> assignments(static_cast<size_t>(E));
  for (int64_t i = 0; i < T * K; ++i) assignments[size_t(expert_ids.as<const int32_t>()[i])].push_back(i);
  if (plus.data)
    std::memmove(out.data, plus.data, out.nbytes());
  else
    std::memset(out.data, 0, out.nbytes());
  for (int64_t e = 0; e < E; ++e) {
    const auto& rows = assignments[size_t(e)];
    if (rows.empty()) continue;
    const int64_t n = int64_t(rows.size());
    Tensor xe = Tensor::host(DType::F32, {n, D}), ye = Tensor::host(DType::F32, {n, D});
    for (int64_t i = 0; i < n; ++i)
      std::memcpy(xe.as<float>() + i * D, x.as<const float>() + (rows[size_t(i)] / K) * D, size_t(D) * 4);
    cpu.swiglu_mlp(xe, experts.experts[size_t(e)], ye);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t flat = rows[size_t(i)];
      cpu::axpy_f32(expert_weights.as<const float>()[flat], ye.as<const float>() + i * D,
                    out.as<float>() + (flat / K) * D, D);
    }
  }
}

// Routing: k distinct experts per token, drawn so that some experts get no token (ids from the first E - 2).
void random_routing(int64_t T, int64_t K, int64_t E, std::mt19937& rng, Tensor& ids, Tensor& w) {
  ids = Tensor::host(DType::I32, {T, K});
  w = Tensor::host(DType::F32, {T, K});
  std::vector<int32_t> order(static_cast<size_t>(E - 2));
  for (int64_t t = 0; t < T; ++t) {
    for (size_t e = 0; e < order.size(); ++e) order[e] = int32_t(e);
    std::shuffle(order.begin(), order.end(), rng);
    for (int64_t j = 0; j < K; ++j) {
      ids.as<int32_t>()[t * K + j] = order[size_t(j)];
      w.as<float>()[t * K + j] = std::uniform_real_distribution<float>(0.1f, 1.5f)(rng);
    }
  }
}

// One expert's MLP on one row in float64, plus the magnitudes its F32 error bound needs:
// y = Wd h, h = silu(g) u, g = Wg x, u = Wu x. err_h[i] bounds |h_F32 - h| (F32 dot products of D terms,
// the silu's exp and two multiplications), then |y_F32 - y| <= gamma_I sum_i |Wd h| + sum_i |Wd| err_h.
struct ExactMlp {
  std::vector<double> y, bound;
};
ExactMlp exact_mlp(const Experts& ex, int64_t e, const float* x, int64_t D, int64_t I) {
  const auto& wg = ex.keep[size_t(3 * e)].dense;
  const auto& wu = ex.keep[size_t(3 * e + 1)].dense;
  const auto& wd = ex.keep[size_t(3 * e + 2)].dense;
  std::vector<double> h(static_cast<size_t>(I)), err_h(static_cast<size_t>(I));
  for (int64_t i = 0; i < I; ++i) {
    double g = 0, u = 0, mg = 0, mu = 0;
    for (int64_t k = 0; k < D; ++k) {
      g += wg[size_t(i * D + k)] * x[k];
      u += wu[size_t(i * D + k)] * x[k];
      mg += std::fabs(wg[size_t(i * D + k)] * x[k]);
      mu += std::fabs(wu[size_t(i * D + k)] * x[k]);
    }
    const double s = g / (1.0 + std::exp(-g));
    h[size_t(i)] = s * u;
    // |silu'| <= 1.1; the silu itself and the two products round a few times (8 u relative, generously).
    err_h[size_t(i)] = 1.1 * gamma(D) * mg * std::fabs(u) + (std::fabs(s) + 1.1 * gamma(D) * mg) * gamma(D) * mu +
                       8 * kU * std::fabs(s * u);
  }
  ExactMlp out;
  out.y.resize(size_t(D));
  out.bound.resize(size_t(D));
  for (int64_t d = 0; d < D; ++d) {
    double y = 0, m = 0, prop = 0;
    for (int64_t i = 0; i < I; ++i) {
      y += wd[size_t(d * I + i)] * h[size_t(i)];
      m += std::fabs(wd[size_t(d * I + i)] * h[size_t(i)]);
      prop += std::fabs(wd[size_t(d * I + i)]) * err_h[size_t(i)];
    }
    out.y[size_t(d)] = y;
    out.bound[size_t(d)] = gamma(I) * m + prop;
  }
  return out;
}

TEST(CpuMoePrimitives, CompositionEqualsPreviousFusedLoop) {
  std::mt19937 rng(5);
  auto cpu = make_cpu_backend();
  const int64_t E = 10, D = 96, I = 40, K = 3;
  const Experts ex = random_experts(E, D, I, rng);
  for (int64_t T : {1, 4, 5, 37}) {  // decode (streamed weight rows) and prefill (tiled) matmul paths
    for (bool with_plus : {false, true}) {
      Tensor x = random_f32({T, D}, rng), plus = random_f32({T, D}, rng), ids, w;
      random_routing(T, K, E, rng, ids, w);
      Tensor got = Tensor::host(DType::F32, {T, D}), want = Tensor::host(DType::F32, {T, D});
      const TensorView p = with_plus ? plus.view() : TensorView{};
      cpu->moe_experts(x, ex.weights, ids, w, p, got);
      previous_fused_moe(*cpu, x, ex.weights, ids, w, p, want);
      EXPECT_TRUE(same_bits(got, want)) << "T=" << T << " plus=" << with_plus;
      // out may alias plus.
      Tensor inplace = Tensor::host(DType::F32, {T, D});
      std::memcpy(inplace.data(), plus.data(), plus.view().nbytes());
      if (with_plus) {
        cpu->moe_experts(x, ex.weights, ids, w, inplace, inplace);
        EXPECT_TRUE(same_bits(inplace, want)) << "in place, T=" << T;
      }
    }
  }
}

TEST(CpuMoePrimitives, EachStepAgainstFloat64) {
  std::mt19937 rng(9);
  auto cpu = make_cpu_backend();
  const int64_t E = 8, D = 64, I = 48, K = 2, T = 23;
  const Experts ex = random_experts(E, D, I, rng);
  Tensor x = random_f32({T, D}, rng), plus = random_f32({T, D}, rng), ids, w;
  random_routing(T, K, E, rng, ids, w);

  // Dispatch: expert-contiguous, ascending assignment within an expert, rows copied exactly.
  const MoeDispatch d = cpu->moe_dispatch(x, ids, int32_t(E));
  const int64_t M = T * K;
  ASSERT_EQ(d.num_rows(), M);
  ASSERT_EQ(d.num_experts(), E);
  ASSERT_EQ(d.rows.shape(), (Shape{M, D}));
  const int32_t* perm = d.perm.as<const int32_t>();
  const int32_t* off = d.offsets.as<const int32_t>();
  EXPECT_EQ(off[0], 0);
  EXPECT_EQ(off[E], M);
  std::vector<int> seen(size_t(M), 0);
  for (int64_t e = 0; e < E; ++e) {
    int64_t count = 0;
    for (int64_t a = 0; a < M; ++a) count += ids.as<int32_t>()[a] == e;
    EXPECT_EQ(off[e + 1] - off[e], count) << "expert " << e;
    for (int64_t i = off[e]; i < off[e + 1]; ++i) {
      EXPECT_EQ(ids.as<int32_t>()[perm[i]], e);
      if (i > off[e]) {
        EXPECT_LT(perm[i - 1], perm[i]);
      }
      ++seen[size_t(perm[i])];
      EXPECT_EQ(std::memcmp(d.rows.as<float>() + i * D, x.as<float>() + (perm[i] / K) * D, size_t(D) * 4), 0);
    }
  }
  EXPECT_EQ(off[E - 1], off[E]);  // the last two experts have no rows
  for (int s : seen) EXPECT_EQ(s, 1);

  // Grouped MLP: every row against its expert's MLP in float64.
  Tensor y = Tensor::host(DType::F32, {M, D});
  cpu->moe_grouped_mlp(d, ex.weights, y);
  for (int64_t e = 0; e < E; ++e)
    for (int64_t i = off[e]; i < off[e + 1]; ++i) {
      const ExactMlp ref = exact_mlp(ex, e, d.rows.as<float>() + i * D, D, I);
      for (int64_t c = 0; c < D; ++c)
        ASSERT_NEAR(y.as<float>()[i * D + c], ref.y[size_t(c)], 2 * ref.bound[size_t(c)] + 1e-30)
            << "row " << i << " col " << c;
    }

  // Combine: the weighted un-permute of these y rows in float64. F32 adds k + 1 terms: gamma_{k+1} of the
  // magnitudes (each product w * y rounds once more: within gamma_{k+2}).
  Tensor out = Tensor::host(DType::F32, {T, D});
  cpu->moe_combine(y, d, w, plus, out);
  std::vector<int64_t> row_of(static_cast<size_t>(M));
  for (int64_t i = 0; i < M; ++i) row_of[size_t(perm[i])] = i;
  for (int64_t t = 0; t < T; ++t)
    for (int64_t c = 0; c < D; ++c) {
      double ref = plus.as<float>()[t * D + c], mag = std::fabs(ref);
      for (int64_t j = 0; j < K; ++j) {
        const double term = double(w.as<float>()[t * K + j]) * y.as<float>()[row_of[size_t(t * K + j)] * D + c];
        ref += term;
        mag += std::fabs(term);
      }
      ASSERT_NEAR(out.as<float>()[t * D + c], ref, gamma(K + 2) * mag + 1e-30) << "t " << t << " c " << c;
    }
  // Without plus.
  cpu->moe_combine(y, d, w, {}, out);
  for (int64_t c = 0; c < D; ++c) {
    double ref = 0, mag = 0;
    for (int64_t j = 0; j < K; ++j) {
      const double term = double(w.as<float>()[j]) * y.as<float>()[row_of[size_t(j)] * D + c];
      ref += term;
      mag += std::fabs(term);
    }
    ASSERT_NEAR(out.as<float>()[c], ref, gamma(K + 2) * mag + 1e-30);
  }
}

// ---- MLA ---------------------------------------------------------------------------------------------------

// The CPU's fused absorbed attention before the primitives (cpu/mla_attention.cpp), verbatim but serial.
void previous_fused_mla(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn, int64_t dv,
                        float scale, const BatchPlan& plan, const TensorView& out) {
  const int64_t T = q.rows(), H = q.shape[1], dh = q.shape[2], dr = dh - dn;
  const int64_t width = cache.shape[cache.shape.rank - 1], r = width - dr;
  const int64_t page_size = plan.page_size;
  int32_t max_len = 0;
  for (int32_t len : plan.seq_lens) max_len = std::max(max_len, len);
  const bool streaming = T <= 4;
  std::vector<float> w_uk(streaming ? 0 : size_t(dn * r)), w_uv(streaming ? 0 : size_t(dv * r));
  std::vector<float> q_lat(static_cast<size_t>(r)), o_lat(static_cast<size_t>(r));
  std::vector<float> scores(static_cast<size_t>(max_len));
  for (int64_t h = 0; h < H; ++h) {
    if (!streaming) {
      for (int64_t n = 0; n < dn; ++n) cpu::dequant_row(kv_b, h * (dn + dv) + n, 0, r, w_uk.data() + n * r);
      for (int64_t v = 0; v < dv; ++v) cpu::dequant_row(kv_b, h * (dn + dv) + dn + v, 0, r, w_uv.data() + v * r);
    }
    for (int64_t t = 0; t < T; ++t) {
      const float* qh = q.as<const float>() + (t * H + h) * dh;
      std::fill(q_lat.begin(), q_lat.end(), 0.0f);
      for (int64_t n = 0; n < dn; ++n) {
        if (streaming) cpu::axpy_row(qh[n], kv_b, h * (dn + dv) + n, q_lat.data());
        else cpu::axpy_f32(qh[n], w_uk.data() + n * r, q_lat.data(), r);
      }
      const int32_t seq = plan.token_seq[size_t(t)], pos = plan.positions[size_t(t)];
      const int32_t* pages = plan.block_table.data() + int64_t(seq) * plan.max_pages;
      float max_score = -INFINITY;
      for (int32_t j = 0; j <= pos; ++j) {
        const float* kj = cache.as<const float>() + (int64_t(pages[j / page_size]) * page_size + j % page_size) * width;
        const float s = (cpu::dot_f32(q_lat.data(), kj, r) + cpu::dot_f32(qh + dn, kj + r, dr)) * scale;
        scores[size_t(j)] = s;
        max_score = std::max(max_score, s);
      }
      double denom = 0.0;
      for (int32_t j = 0; j <= pos; ++j) {
        scores[size_t(j)] = std::exp(scores[size_t(j)] - max_score);
        denom += scores[size_t(j)];
      }
      std::fill(o_lat.begin(), o_lat.end(), 0.0f);
      for (int32_t j = 0; j <= pos; ++j) {
        const float* kj = cache.as<const float>() + (int64_t(pages[j / page_size]) * page_size + j % page_size) * width;
        cpu::axpy_f32(float(scores[size_t(j)] / denom), kj, o_lat.data(), r);
      }
      float* oh = out.as<float>() + (t * H + h) * dv;
      for (int64_t v = 0; v < dv; ++v)
        oh[v] = streaming ? cpu::dot_row(o_lat.data(), kv_b, h * (dn + dv) + dn + v)
                          : cpu::dot_f32(w_uv.data() + v * r, o_lat.data(), r);
    }
  }
}

// Two sequences over shuffled pages: one decoding after 40 cached tokens, one with `chunk` new tokens after 20.
BatchPlan two_sequence_plan(int64_t chunk, int32_t page) {
  BatchPlan plan;
  plan.page_size = page;
  plan.max_pages = 5;
  plan.block_table = {3, 0, 5, -1, -1, 1, 2, 4, 6, -1};
  plan.seq_lens = {41, int32_t(20 + chunk)};
  plan.positions = {40};
  plan.token_seq = {0};
  for (int64_t i = 0; i < chunk; ++i) {
    plan.positions.push_back(int32_t(20 + i));
    plan.token_seq.push_back(1);
  }
  return plan;
}

TEST(CpuMlaPrimitives, CompositionEqualsPreviousFusedAttention) {
  const int64_t H = 8, dn = 32, dr = 16, dv = 24, r = 64, page = 16;
  std::mt19937 rng(3);
  auto cpu = make_cpu_backend();
  const HostWeight kv_b = random_bf16(H * (dn + dv), r, rng);
  for (int64_t chunk : {1, 3, 9}) {  // T = 2 and 4 stream kv_b's rows, T = 10 dequantises them per head
    const BatchPlan plan = two_sequence_plan(chunk, int32_t(page));
    const int64_t T = plan.num_tokens();
    Tensor cache = random_f32({7, page, r + dr}, rng, 0.5f), q = random_f32({T, H, dn + dr}, rng, 0.3f);
    Tensor got = Tensor::host(DType::F32, {T, H * dv}), want = Tensor::host(DType::F32, {T, H * dv});
    const DeviceBatch batch = cpu->upload_batch(plan);
    cpu->mla_attention(q, kv_b.weight, cache, dn, dv, 0.11f, batch, got);
    previous_fused_mla(q, kv_b.weight, cache, dn, dv, 0.11f, plan, want);
    EXPECT_TRUE(same_bits(got, want)) << "T=" << T;
  }
}

TEST(CpuMlaPrimitives, EachStepAndLseAgainstFloat64) {
  const int64_t H = 4, dn = 32, dr = 16, dv = 24, r = 64, W = r + dr, page = 16;
  std::mt19937 rng(13);
  auto cpu = make_cpu_backend();
  const HostWeight kv_b = random_bf16(H * (dn + dv), r, rng);
  const BatchPlan plan = two_sequence_plan(6, int32_t(page));
  const int64_t T = plan.num_tokens();
  Tensor cache = random_f32({7, page, W}, rng, 0.5f), q = random_f32({T, H, dn + dr}, rng, 0.3f);
  const DeviceBatch batch = cpu->upload_batch(plan);

  // Absorb: qf[t, h, :r] = W_UK[h]^T q_nope (dn F32 terms), qf[t, h, r:] = q_rope exactly.
  Tensor qf = Tensor::host(DType::F32, {T, H, W});
  cpu->mla_absorb(q, kv_b.weight, dn, dv, qf);
  for (int64_t th = 0; th < T * H; ++th) {
    const float* qh = q.as<float>() + th * (dn + dr);
    const int64_t h = th % H;
    for (int64_t i = 0; i < r; ++i) {
      double s = 0, m = 0;
      for (int64_t n = 0; n < dn; ++n) {
        s += kv_b.dense[size_t((h * (dn + dv) + n) * r + i)] * qh[n];
        m += std::fabs(kv_b.dense[size_t((h * (dn + dv) + n) * r + i)] * qh[n]);
      }
      ASSERT_NEAR(qf.as<float>()[th * W + i], s, gamma(dn + 1) * m + 1e-30);
    }
    for (int64_t i = 0; i < dr; ++i) ASSERT_EQ(qf.as<float>()[th * W + r + i], qh[dn + i]);
  }

  // Latent attention and its log-sum-exp, from the same qf. A score s_j = scale (qf . c_j) over W products has
  // |ds_j| <= gamma_W scale sum |qf c_j| =: e (+ the scale's rounding); lse = log sum exp(s) moves by at most
  // max |ds_j| (it is 1-Lipschitz in the max norm), and o = sum_j p_j c_j with p_j = exp(s_j - lse) by at most
  // 2e relative per weight, plus the F32 accumulation over the positions and the rounding of each p_j.
  // Bounds are checked with the float64 values, not loosened by a safety factor.
  const float scale = 0.13f;
  Tensor o_lat = Tensor::host(DType::F32, {T, H, r}), lse = Tensor::host(DType::F32, {T, H});
  cpu->mla_latent_attention(qf, cache, scale, batch, o_lat, lse);
  for (int64_t t = 0; t < T; ++t) {
    const int32_t seq = plan.token_seq[size_t(t)], pos = plan.positions[size_t(t)];
    auto row = [&](int64_t j) {
      const int32_t p = plan.block_table[size_t(seq * plan.max_pages + j / page)];
      return cache.as<float>() + (int64_t(p) * page + j % page) * W;
    };
    for (int64_t h = 0; h < H; ++h) {
      const float* qh = qf.as<float>() + (t * H + h) * W;
      std::vector<double> s(size_t(pos + 1));
      double mx = -1e300, e = 0;
      for (int64_t j = 0; j <= pos; ++j) {
        double dot = 0, m = 0;
        for (int64_t i = 0; i < W; ++i) {
          dot += double(qh[i]) * row(j)[i];
          m += std::fabs(double(qh[i]) * row(j)[i]);
        }
        s[size_t(j)] = double(scale) * dot;
        mx = std::max(mx, s[size_t(j)]);
        e = std::max(e, (gamma(W + 1) * m + kU * std::fabs(dot)) * scale);
      }
      double z = 0, spread = 0;
      for (double v : s) {
        z += std::exp(v - mx);
        spread = std::max(spread, mx - v);
      }
      const double ref_lse = mx + std::log(z);
      // The F32 differences s_j - max and their exps round too: u (|s_j - max| + 2) relative per term.
      const double rounding = kU * (spread + 4);
      EXPECT_NEAR(lse.as<float>()[t * H + h], ref_lse, e + rounding + 2 * kU * std::fabs(ref_lse)) << t << "," << h;
      for (int64_t i = 0; i < r; ++i) {
        double o = 0, mag = 0;
        for (int64_t j = 0; j <= pos; ++j) {
          const double p = std::exp(s[size_t(j)] - ref_lse);
          o += p * row(j)[i];
          mag += p * std::fabs(row(j)[i]);
        }
        const double bound = (2 * e + 2 * rounding + gamma(pos + 4)) * mag;
        ASSERT_NEAR(o_lat.as<float>()[(t * H + h) * r + i], o, bound + 1e-30) << t << "," << h << "," << i;
      }
    }
  }
  // lse is optional.
  Tensor o2 = Tensor::host(DType::F32, {T, H, r});
  cpu->mla_latent_attention(qf, cache, scale, batch, o2, {});
  EXPECT_TRUE(same_bits(o2, o_lat));

  // Project: out[t, h] = W_UV[h] o_lat[t, h] (r F32 terms).
  Tensor out = Tensor::host(DType::F32, {T, H * dv});
  cpu->mla_project_v(o_lat, kv_b.weight, dn, dv, out);
  for (int64_t th = 0; th < T * H; ++th) {
    const int64_t h = th % H;
    for (int64_t v = 0; v < dv; ++v) {
      double s = 0, m = 0;
      for (int64_t i = 0; i < r; ++i) {
        const double p = kv_b.dense[size_t((h * (dn + dv) + dn + v) * r + i)] * o_lat.as<float>()[th * r + i];
        s += p;
        m += std::fabs(p);
      }
      ASSERT_NEAR(out.as<float>()[th * dv + v], s, gamma(r + 1) * m + 1e-30);
    }
  }
}

}  // namespace
}  // namespace moe
