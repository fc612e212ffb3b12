// The device-resident step's new CUDA ops against their CPU twins at real widths: the router (ops.h
// router_forward, router_*_backward, balance_loss_*), the routed experts' gather / combine / expert_dout /
// scatter (ffn.cpp's loops, written out here in double), the strided add and the deterministic double sums.
// Random data seeded from the clock (printed), never zeros.
// Tolerances: the router's choice must be identical (FP32 scores stored and compared in double on both sides;
// a random tie at FP32 resolution among 64 scores is a ~1e-5 event); its weights and gradients are double
// sums rounded once to FP32 (<= 1e-6 relative, checked 1e-5). The MoE kernels sum K <= 8 FP32 products
// against double (<= 1e-6, checked 1e-5); the dot of expert_dout is a 1024-term FP32 block sum (~1e-6, 1e-5).
#include <algorithm>
#include <chrono>
#include <cstdio>

#include "core/dtype.h"
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

struct RouterCase {
  RouterConfig cpu;
  bool bias;
};

void check_router(const RouterCase& rc, const char* what) {
  const uint64_t seed = clock_seed(what);
  const int64_t b = 4, t = 256, n = b * t, E = rc.cpu.experts, K = rc.cpu.top_k;
  const auto logits = randn(size_t(n * E), seed, 2.0);
  const auto bias = randn(size_t(E), seed + 1, 0.05);
  const auto dweights = randn(size_t(n * K), seed + 2);
  const double alpha = 1e-2;
  Routing<float> r;
  router_forward(r, logits.data(), rc.bias ? bias.data() : nullptr, n, rc.cpu);
  const double loss_c = balance_loss_forward(r, b, t, rc.cpu, alpha);
  std::vector<float> dscores(size_t(n * E), 0.f), dlogits_c(size_t(n * E), 0.f);
  router_weights_backward(dscores.data(), dweights.data(), r, n, rc.cpu);
  balance_loss_backward(dscores.data(), r, b, t, rc.cpu, alpha, 1.0);
  router_scores_backward(dlogits_c.data(), dscores.data(), r, n, rc.cpu);

  cuda::RouterArgs a;
  a.experts = E, a.top_k = K, a.n_group = rc.cpu.n_group, a.topk_group = rc.cpu.topk_group;
  a.sigmoid = rc.cpu.scoring == ScoringFunc::Sigmoid;
  a.noaux = rc.cpu.method == TopkMethod::NoauxTc;
  a.group_limited = rc.cpu.method != TopkMethod::Greedy;
  a.norm_topk_prob = rc.cpu.norm_topk_prob;
  a.scaling = rc.cpu.scaling;
  ASSERT_TRUE(cuda::router_supported(a));
  DeviceArray<float> gl(logits), gb(bias), gdw(dweights), gs(std::vector<float>(size_t(n * E), 1.f)),
      gw(std::vector<float>(size_t(n * K), 1.f)), gd(std::vector<float>(size_t(n), 1.f)),
      gf(std::vector<float>(size_t(b * E), 1.f)), gt(std::vector<float>(size_t(n), 1.f)),
      gdl(std::vector<float>(size_t(n * E), 1.f));
  DeviceArray<int32_t> gc(std::vector<int32_t>(size_t(n * K), -1));
  DeviceArray<double> sum(std::vector<double>(1, 0.0)), scratch(std::vector<double>(size_t(cuda::sum_scratch_doubles()), 0.0));
  cuda::router_forward(gs.get(), gc.get(), gw.get(), gd.get(), gl.get(), rc.bias ? gb.get() : nullptr, n, a, nullptr);
  cuda::balance_fractions(gf.get(), gc.get(), b, t, a, nullptr);
  cuda::balance_terms(gt.get(), gs.get(), gf.get(), b, t, a, alpha, nullptr);
  cuda::sum_double(sum.get(), scratch.get(), gt.get(), n, false, nullptr);
  cuda::router_backward(gdl.get(), gdw.get(), gs.get(), gc.get(), gd.get(), gf.get(), b, t, a, alpha, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(gc.host(), r.chosen) << what;
  EXPECT_LT(rel_l2(gs.host(), r.scores), 1e-6) << what;
  EXPECT_LT(rel_l2(gw.host(), r.weights), 1e-5) << what;
  EXPECT_LT(rel_l2(gd.host(), r.denom), 1e-6) << what;
  const double loss_g = sum.host()[0];
  EXPECT_NEAR(loss_g, loss_c, 1e-5 * std::abs(loss_c)) << what;
  const double err = rel_l2(gdl.host(), dlogits_c);
  EXPECT_LT(err, 1e-5) << what;
  std::printf("%s: balance loss %.9g vs %.9g, dlogits rel L2 %.3g\n", what, loss_g, loss_c, err);
}

TEST(CudaTrainMoeOps, RouterSigmoidNoauxGroupLimited) {
  SKIP_WITHOUT_GPU();
  RouterConfig c;
  c.experts = 64, c.top_k = 6, c.n_group = 8, c.topk_group = 4, c.scaling = 2.5;
  check_router({c, true}, "router sigmoid noaux_tc 64e top-6 8 groups");
}

// Sigmoid without groups (train-mid's, Moonlight's): the warp-per-token kernel. 72 experts leave lanes with a
// third slot only partly filled; top-8 from greedy sigmoid scores without a bias.
TEST(CudaTrainMoeOps, RouterSigmoidNoauxOneGroup) {
  SKIP_WITHOUT_GPU();
  RouterConfig c;
  c.experts = 64, c.top_k = 6, c.n_group = 1, c.topk_group = 1, c.scaling = 2.446;
  check_router({c, true}, "router sigmoid noaux_tc 64e top-6 one group");
  RouterConfig g;
  g.experts = 72, g.top_k = 8, g.method = TopkMethod::Greedy, g.norm_topk_prob = false, g.scaling = 1.0;
  check_router({g, false}, "router sigmoid greedy 72e top-8");
}

TEST(CudaTrainMoeOps, RouterSoftmaxGreedyUnnormalised) {
  SKIP_WITHOUT_GPU();
  RouterConfig c;
  c.experts = 32, c.top_k = 4, c.scoring = ScoringFunc::Softmax, c.method = TopkMethod::Greedy;
  c.norm_topk_prob = false, c.scaling = 1.0;
  check_router({c, false}, "router softmax greedy 32e top-4");
}

TEST(CudaTrainMoeOps, RouterSoftmaxGroupLimitedGreedy) {
  SKIP_WITHOUT_GPU();
  RouterConfig c;
  c.experts = 16, c.top_k = 2, c.n_group = 4, c.topk_group = 2, c.scoring = ScoringFunc::Softmax;
  c.method = TopkMethod::GroupLimitedGreedy, c.scaling = 1.5;
  check_router({c, false}, "router softmax group-limited 16e top-2");
}

// gather, combine, expert_dout, scatter over a random routing (experts distinct per token), D = 1024.
TEST(CudaTrainMoeOps, DispatchCombineMatchDouble) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed("moe dispatch");
  const int64_t n = 512, K = 6, E = 64, D = 1024, nk = n * K;
  std::mt19937_64 rng(seed);
  std::vector<int32_t> chosen(static_cast<size_t>(nk));
  for (int64_t i = 0; i < n; ++i) {
    std::vector<int32_t> all(static_cast<size_t>(E));
    for (int32_t e = 0; e < E; ++e) all[size_t(e)] = e;
    std::shuffle(all.begin(), all.end(), rng);
    for (int64_t j = 0; j < K; ++j) chosen[size_t(i * K + j)] = all[size_t(j)];
  }
  // Counting sort by expert, tokens in order (as device_layer.cpp sorts).
  std::vector<int64_t> off(size_t(E + 1), 0);
  for (int32_t e : chosen) ++off[size_t(e + 1)];
  for (int64_t e = 0; e < E; ++e) off[size_t(e + 1)] += off[size_t(e)];
  std::vector<int32_t> rows(static_cast<size_t>(nk)), slots(static_cast<size_t>(nk)), pos(static_cast<size_t>(nk));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = off[size_t(chosen[size_t(i * K + j)])]++;
      rows[size_t(r)] = int32_t(i), slots[size_t(r)] = int32_t(j), pos[size_t(i * K + j)] = int32_t(r);
    }
  const auto x = randn(size_t(n * D), seed + 1), eout = randn(size_t(nk * D), seed + 2),
             w = randn(size_t(nk), seed + 3), dout = randn(size_t(n * D), seed + 4),
             dxs = randn(size_t(nk * D), seed + 5), dx0 = randn(size_t(n * D), seed + 6);
  std::vector<float> xs_c(size_t(nk * D)), out_c(size_t(n * D)), dy_c(size_t(nk * D)), dw_c(static_cast<size_t>(nk)), dx_c = dx0;
  for (int64_t r = 0; r < nk; ++r)
    for (int64_t k = 0; k < D; ++k) xs_c[size_t(r * D + k)] = x[size_t(rows[size_t(r)] * D + k)];
  for (int64_t i = 0; i < n; ++i)
    for (int64_t k = 0; k < D; ++k) {
      double o = 0, s = 0;
      for (int64_t j = 0; j < K; ++j) {
        const int64_t r = pos[size_t(i * K + j)];
        o += double(w[size_t(i * K + j)]) * double(eout[size_t(r * D + k)]);
        s += double(dxs[size_t(r * D + k)]);
      }
      out_c[size_t(i * D + k)] = float(o);
      dx_c[size_t(i * D + k)] = float(double(dx0[size_t(i * D + k)]) + s);
    }
  for (int64_t r = 0; r < nk; ++r) {
    const int64_t i = rows[size_t(r)], slot = i * K + slots[size_t(r)];
    double dot = 0;
    for (int64_t k = 0; k < D; ++k) {
      dy_c[size_t(r * D + k)] = float(double(w[size_t(slot)]) * double(dout[size_t(i * D + k)]));
      dot += double(dout[size_t(i * D + k)]) * double(eout[size_t(r * D + k)]);
    }
    dw_c[size_t(slot)] = float(dot);
  }
  DeviceArray<float> gx(x), ge(eout), gw(w), gdo(dout), gdxs(dxs), gdx(dx0);
  DeviceArray<float> gxs(std::vector<float>(size_t(nk * D), 1.f)), gout(std::vector<float>(size_t(n * D), 1.f)),
      gdy(std::vector<float>(size_t(nk * D), 1.f)), gdwt(std::vector<float>(size_t(nk), 1.f));
  DeviceArray<int32_t> grows(rows), gslots(slots), gpos(pos);
  cuda::moe_gather(gxs.get(), gx.get(), grows.get(), nk, D, nullptr);
  cuda::moe_combine(gout.get(), ge.get(), gpos.get(), gw.get(), n, K, D, nullptr);
  cuda::moe_expert_dout(gdy.get(), gdwt.get(), gdo.get(), ge.get(), grows.get(), gslots.get(), gw.get(), nk, K, D,
                        nullptr);
  cuda::moe_scatter_add(gdx.get(), gdxs.get(), gpos.get(), n, K, D, nullptr);
  ASSERT_EQ(cudaDeviceSynchronize(), cudaSuccess);
  EXPECT_EQ(gxs.host(), xs_c);  // a copy: exact
  EXPECT_LT(rel_l2(gout.host(), out_c), 1e-5);
  EXPECT_LT(rel_l2(gdy.host(), dy_c), 1e-6);
  EXPECT_LT(rel_l2(gdwt.host(), dw_c), 1e-5);
  EXPECT_LT(rel_l2(minus(gdx.host(), dx0), minus(dx_c, dx0)), 1e-5);

  // The gather from rows already in BF16 (16-byte chunks): the BF16 roundings of the FP32 gather, exactly.
  std::vector<uint16_t> xb(x.size()), want_b(xs_c.size());
  for (size_t i = 0; i < x.size(); ++i) xb[i] = float_to_bf16(x[i]);
  for (size_t i = 0; i < xs_c.size(); ++i) want_b[i] = float_to_bf16(xs_c[i]);
  DeviceArray<uint16_t> gxb(xb), gxsb(std::vector<uint16_t>(xs_c.size(), uint16_t(0x7FC0)));
  cuda::moe_gather_bf16_rows(gxsb.get(), gxb.get(), grows.get(), nk, D, nullptr);
  EXPECT_EQ(gxsb.host(), want_b);

  // combine and scatter took their float4 kernels above (D % 4 == 0, aligned); one float further on, the same
  // inputs take the scalar kernels, whose sums run in the same order: the same bits.
  std::vector<float> e1(eout.size() + 1, 0.f), dxs1(dxs.size() + 1, 0.f), dx1(dx0.size() + 1, 0.f);
  std::copy(eout.begin(), eout.end(), e1.begin() + 1);
  std::copy(dxs.begin(), dxs.end(), dxs1.begin() + 1);
  std::copy(dx0.begin(), dx0.end(), dx1.begin() + 1);
  DeviceArray<float> ge1(e1), gdxs1(dxs1), gdx1(dx1), gout1(std::vector<float>(out_c.size() + 1, 1.f));
  cuda::moe_combine(gout1.get() + 1, ge1.get() + 1, gpos.get(), gw.get(), n, K, D, nullptr);
  cuda::moe_scatter_add(gdx1.get() + 1, gdxs1.get() + 1, gpos.get(), n, K, D, nullptr);
  const std::vector<float> out1 = gout1.host(), dxr = gdx1.host(), out4 = gout.host(), dx4 = gdx.host();
  EXPECT_TRUE(std::equal(out4.begin(), out4.end(), out1.begin() + 1));
  EXPECT_TRUE(std::equal(dx4.begin(), dx4.end(), dxr.begin() + 1));
}

// The embedding's backward over rows grouped by id (the device step's): each table row gets its rows' FP32 sum
// in row order, added once, against ops.h's row-by-row adds (a few terms per id: ~1e-7, checked 1e-5).
TEST(CudaTrainMoeOps, EmbeddingBackwardSortedMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed("embedding sorted");
  const int64_t V = 1000, d = 384, n = 4096;
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> pick(0, int32_t(V) - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = pick(rng);
  const auto dout = randn(size_t(n * d), seed + 1), dt0 = randn(size_t(V * d), seed + 2);
  auto dt_c = dt0;
  embedding_backward(dt_c.data(), ids.data(), n, dout.data(), d);
  std::vector<int32_t> order(static_cast<size_t>(n)), seg_id, seg_start;
  for (int64_t i = 0; i < n; ++i) order[size_t(i)] = int32_t(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids[size_t(a)] < ids[size_t(b)]; });
  for (size_t r = 0; r < order.size(); ++r)
    if (r == 0 || ids[size_t(order[r])] != ids[size_t(order[r - 1])])
      seg_id.push_back(ids[size_t(order[r])]), seg_start.push_back(int32_t(r));
  seg_start.push_back(int32_t(n));
  DeviceArray<float> gd(dout), gdt(dt0);
  DeviceArray<int32_t> gid(seg_id), gstart(seg_start), gorder(order);
  cuda::embedding_backward_sorted(gdt.get(), gid.get(), gstart.get(), int64_t(seg_id.size()), gorder.get(), gd.get(), d,
                                  nullptr);
  EXPECT_LT(rel_l2(minus(gdt.host(), dt0), minus(dt_c, dt0)), 1e-5);
}

// attention_gemm.cu against the CPU's MLA attention (ops.h): FP32 GEMMs over at most t = 256 terms against double
// sums (~1e-6), checked 1e-5 as attention.cu's test does; the backward on what it adds to non-zero gradients.
TEST(CudaTrainMoeOps, GemmAttentionMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed("gemm attention");
  MlaDims d;
  d.t = 256, d.heads = 4, d.dn = 128, d.dr = 64, d.dv = 128, d.scale = 1.0 / std::sqrt(192.0);
  const int64_t b = 2, n = b * d.t, H = d.heads, P = b * H * d.t * d.t;
  const auto q = randn(size_t(n * H * 192), seed), kv = randn(size_t(n * H * 256), seed + 1),
             kr = randn(size_t(n * 64), seed + 2), dout = randn(size_t(n * H * 128), seed + 3);
  const auto dq0 = randn(size_t(n * H * 192), seed + 4), dkv0 = randn(size_t(n * H * 256), seed + 5),
             dkr0 = randn(size_t(n * 64), seed + 6);
  CpuCompute cpu;
  std::vector<float> out_c(size_t(n * H * 128)), p_c(static_cast<size_t>(P));
  cpu.attention_forward(out_c.data(), p_c.data(), q.data(), kv.data(), kr.data(), d, b);
  auto dq_c = dq0, dkv_c = dkv0, dkr_c = dkr0;
  cpu.attention_backward(dq_c.data(), dkv_c.data(), dkr_c.data(), dout.data(), p_c.data(), q.data(), kv.data(),
                         kr.data(), d, b);
  cublasHandle_t blas = nullptr;
  ASSERT_EQ(cublasCreate(&blas), CUBLAS_STATUS_SUCCESS);
  // Bf16 (--attention bf16): every product's operands rounded to BF16 (unit roundoff u = 2^-9). A score then
  // carries ~2u relative error (both operands), so do the probabilities (d p / p = ds - sum p ds, with the
  // scaled scores of order 1 here); the output adds the rounding of P and V: ~2.5u in the relative L2 of random
  // errors; the backward chains dP (2u), dS (P's and dP's errors, then rounded: u) and the last product's operand
  // (u): ~4u. Bounds: 4u forward, 8u backward (a factor 2 for the partial cancellation in dP - sum P dP).
  const double u = std::ldexp(1.0, -9);
  for (const cuda::AttnPrecision prec : {cuda::AttnPrecision::Fp32, cuda::AttnPrecision::Bf16}) {
    const bool half = prec == cuda::AttnPrecision::Bf16;
    DeviceArray<float> gq(q), gkv(kv), gkr(kr), gdo(dout), gdq(dq0), gdkv(dkv0), gdkr(dkr0);
    DeviceArray<float> gout(std::vector<float>(out_c.size(), 1.f)), gp(std::vector<float>(size_t(P), 1.f)),
        gds(std::vector<float>(size_t(P), 1.f));
    using Half = std::vector<uint16_t>;
    DeviceArray<uint16_t> sq{Half(size_t(n * H * 192))}, skv{Half(size_t(n * H * 256))}, skr{Half(size_t(n * 64))},
        ssq{Half(size_t(P))}, sdo{Half(size_t(n * H * 128))};
    const cuda::AttnBf16 bf{sq.get(), skv.get(), skr.get(), ssq.get(), sdo.get()};
    const cuda::AttnShape a{b, d.t, H, d.dn, d.dr, d.dv, float(d.scale), prec};
    EXPECT_TRUE(cuda::attention_forward_gemm(blas, gout.get(), gp.get(), gq.get(), gkv.get(), gkr.get(), a, nullptr,
                                             half ? &bf : nullptr));
    EXPECT_TRUE(cuda::attention_backward_gemm(blas, gdq.get(), gdkv.get(), gdkr.get(), gds.get(), gdo.get(), gp.get(),
                                              gq.get(), gkv.get(), gkr.get(), a, nullptr, half ? &bf : nullptr));
    const auto p_g = gp.host();
    const double e[] = {rel_l2(gout.host(), out_c), rel_l2(p_g, p_c),
                        rel_l2(minus(gdq.host(), dq0), minus(dq_c, dq0)),
                        rel_l2(minus(gdkv.host(), dkv0), minus(dkv_c, dkv0)),
                        rel_l2(minus(gdkr.host(), dkr0), minus(dkr_c, dkr0))};
    std::printf("gemm attention (%s): out %.3g probs %.3g dq %.3g dkv %.3g dk_rope %.3g\n", half ? "bf16" : "fp32",
                e[0], e[1], e[2], e[3], e[4]);
    for (int i = 0; i < 5; ++i) EXPECT_LT(e[i], half ? (i < 2 ? 4 : 8) * u : 1e-5) << i;
    for (int64_t i = 0; i < 4; ++i) EXPECT_EQ(p_g[size_t(i * d.t + i + 1)], 0.0f);  // causal
  }
  // Bf16 without its scratch: refused (false), nothing launched.
  DeviceArray<float> gq(q), gkv(kv), gkr(kr), gout{std::vector<float>(out_c.size())}, gp{std::vector<float>(size_t(P))};
  const cuda::AttnShape a{b, d.t, H, d.dn, d.dr, d.dv, float(d.scale), cuda::AttnPrecision::Bf16};
  EXPECT_FALSE(cuda::attention_forward_gemm(blas, gout.get(), gp.get(), gq.get(), gkv.get(), gkr.get(), a, nullptr));
  cublasDestroy(blas);
}

TEST(CudaTrainMoeOps, StridedAddScaleAndSums) {
  SKIP_WITHOUT_GPU();
  const uint64_t seed = clock_seed("elementwise");
  const int64_t rows = 37, width = 1000, dp = 1300, sp = 1100, big = 3000001;
  const auto dst0 = randn(size_t(rows * dp), seed), src = randn(size_t(rows * sp), seed + 1), v = randn(size_t(big), seed + 2);
  std::vector<float> want = dst0;
  for (int64_t y = 0; y < rows; ++y)
    for (int64_t x = 0; x < width; ++x) want[size_t(y * dp + x)] += src[size_t(y * sp + x)];
  DeviceArray<float> gd(dst0), gsrc(src), gv(v);
  cuda::add_strided(gd.get(), dp, gsrc.get(), sp, width, rows, nullptr);
  EXPECT_EQ(gd.host(), want);  // one FP32 add per element on both sides: exact
  DeviceArray<double> out(std::vector<double>(2, 0.0)), scratch(std::vector<double>(size_t(cuda::sum_scratch_doubles()), 0.0));
  cuda::sum_double(out.get(), scratch.get(), gv.get(), big, false, nullptr);
  cuda::sum_double(out.get() + 1, scratch.get(), gv.get(), big, true, nullptr);
  double s = 0, ss = 0;
  for (float x : v) s += double(x), ss += double(x) * double(x);
  const auto got = out.host();
  EXPECT_NEAR(got[0], s, 1e-9 * ss);  // double sums in two orders: ~1e-16 relative to the sum of |terms|
  EXPECT_NEAR(got[1], ss, 1e-12 * ss);
  // The float4 body with its scalar head (from a pointer off a 16-byte boundary) and tail, and counts below one
  // float4, sum every value once.
  for (int64_t off : {0, 1, 2, 3})
    for (int64_t count : {int64_t(0), int64_t(1), int64_t(3), int64_t(5), int64_t(8), int64_t(2049), big - 4}) {
      cuda::sum_double(out.get(), scratch.get(), gv.get() + off, count, true, nullptr);
      double want_ss = 0;
      for (int64_t i = off; i < off + count; ++i) want_ss += double(v[size_t(i)]) * double(v[size_t(i)]);
      EXPECT_NEAR(out.host()[0], want_ss, 1e-12 * want_ss) << "offset " << off << " count " << count;
    }
  cuda::scale(gv.get(), 0.5f, big, nullptr);
  const auto half = gv.host();
  for (size_t i = 0; i < v.size(); i += 9973) EXPECT_EQ(half[i], v[i] * 0.5f);
}

}  // namespace
}  // namespace moe::train::test
