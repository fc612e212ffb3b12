// The CUDA backend's MoE and MLA primitives against the CPU backend's, step by step on the same inputs, and
// the GPU compositions (Backend::moe_experts / mla_attention called non-virtually) against the GPU's fused
// ops. Every GPU output is poisoned (NaN) first, so an element left unwritten fails.
//
// Tolerances:
//   moe_dispatch: exact (same offsets, the same assignments per expert; the GPU's order within an expert is
//     its atomics', so rows are matched through perm), rows copied exactly.
//   moe_grouped_mlp: as test_cuda_moe.cpp: the grouped GEMV as test::gemv_bound (1e-4 on the CUDA cores, 5e-3
//     where the tensor-core GEMV rounds x to BF16); the expert-GEMM path
//     (>= 32 rows per expert on average, and BF16 experts from CudaOptions::bf16_grouped_experts_min_tokens
//     tokens) rounds x, h and dequantised FP8 weights to BF16 (1e-2).
//   moe_combine on the same y rows: F32 sums of k + 1 terms in another order: 1e-6.
//   GPU composition vs fused moe_experts: the same kernels on the same rows: 1e-6 (bit-identical expected).
//   mla_absorb: qf is BF16 on the GPU (2^-9 relative at most, ~1.1e-3 rms): 4e-3.
//   mla_latent_attention on the same BF16 qf and cache values: the GPU rounds the softmax weights P to BF16
//     (~1.1e-3 rms relative, averaged over positions): o_lat 1e-2. lse: the GPU's sum l adds the rounded P
//     (each within 2^-9 relative, so l within 2^-9 relative: |d lse| <= 2^-9 ~ 2e-3) and its scores come
//     from BF16 operands with F32 accumulation (exact products): bound 3e-3 absolute against float64.
//   mla_project_v on the same o_lat: the GEMV: test::gemv_bound.
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>
#include <string>

#include "cuda_test_util.h"
#include "model/deepseek_v3.h"

namespace moe {
namespace {

using test::rel_l2;

class CudaPrimitives : public test::GpuVsCpu {
 protected:
  Tensor poisoned(DType dt, Shape shape) {
    Tensor t = gpu_->alloc(dt, shape);
    const std::vector<float> nan(size_t(t.numel()), std::numeric_limits<float>::quiet_NaN());
    if (dt == DType::F32) gpu_->copy_from_host(nan.data(), t);
    return t;
  }
  std::vector<int32_t> ints(const TensorView& d) {
    std::vector<int32_t> v(static_cast<size_t>(d.numel()));
    gpu_->copy_to_host(d, v.data());
    return v;
  }
};

TEST_F(CudaPrimitives, MoeDispatchGroupedMlpCombine) {
  const int64_t E = 16, D = 2048, I = 512, K = 8;
  for (bool fp8 : {false, true}) {
    const test::HostExperts hx = test::random_experts(rng_, E, D, I, fp8);
    const ExpertWeights& host = hx.weights;
    const ExpertWeights dev = test::upload_experts(*gpu_, host);
    for (int64_t T : {1, 6, 37, 64, 150}) {  // 64 and 150 tokens: >= 32 rows per expert, the expert-GEMM path
      const int64_t M = T * K;
      Tensor x = test::random_host(rng_, DType::F32, {T, D}), plus = test::random_host(rng_, DType::F32, {T, D});
      Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
      std::vector<int32_t> order(static_cast<size_t>(E));
      for (int64_t t = 0; t < T; ++t) {
        std::iota(order.begin(), order.end(), 0);
        std::shuffle(order.begin(), order.end(), rng_);
        for (int64_t j = 0; j < K; ++j) {
          ids.as<int32_t>()[t * K + j] = order[size_t(j)];
          w.as<float>()[t * K + j] = std::uniform_real_distribution<float>(0.1f, 1.0f)(rng_);
        }
      }
      const Tensor gx = test::to_device(*gpu_, x), gids = test::to_device(*gpu_, ids), gw = test::to_device(*gpu_, w),
                   gplus = test::to_device(*gpu_, plus);
      const std::string what = "T=" + std::to_string(T) + " fp8=" + std::to_string(fp8);

      // Dispatch.
      const MoeDispatch cd = cpu_->moe_dispatch(x, ids, int32_t(E));
      const MoeDispatch gd = gpu_->moe_dispatch(gx, gids, int32_t(E));
      ASSERT_EQ(gd.num_rows(), M);
      ASSERT_EQ(gd.num_experts(), E);
      const std::vector<int32_t> goff = ints(gd.offsets), gperm = ints(gd.perm);
      const int32_t* coff = cd.offsets.as<const int32_t>();
      const int32_t* cperm = cd.perm.as<const int32_t>();
      ASSERT_EQ(goff, std::vector<int32_t>(coff, coff + E + 1)) << what;
      for (int64_t e = 0; e < E; ++e) {
        std::vector<int32_t> a(gperm.begin() + goff[size_t(e)], gperm.begin() + goff[size_t(e) + 1]);
        std::sort(a.begin(), a.end());
        ASSERT_EQ(a, std::vector<int32_t>(cperm + coff[e], cperm + coff[e + 1])) << what << " expert " << e;
      }
      const std::vector<float> grows = test::to_host_f32(*gpu_, gd.rows);
      for (int64_t i = 0; i < M; ++i)
        ASSERT_EQ(std::memcmp(grows.data() + i * D, x.as<float>() + (gperm[size_t(i)] / K) * D, size_t(D) * 4), 0)
            << what << " row " << i;
      // CPU row of each GPU row (the same assignment).
      std::vector<int64_t> crow_of_assignment(static_cast<size_t>(M)), crow(static_cast<size_t>(M));
      for (int64_t i = 0; i < M; ++i) crow_of_assignment[size_t(cperm[i])] = i;
      for (int64_t i = 0; i < M; ++i) crow[size_t(i)] = crow_of_assignment[size_t(gperm[size_t(i)])];

      // Grouped MLP.
      Tensor cy = Tensor::host(DType::F32, {M, D}), gy = poisoned(DType::F32, {M, D});
      cpu_->moe_grouped_mlp(cd, host, cy);
      gpu_->moe_grouped_mlp(gd, dev, gy);
      std::vector<float> cy_gpu_order(size_t(M * D));
      for (int64_t i = 0; i < M; ++i)
        std::copy_n(cy.as<float>() + crow[size_t(i)] * D, D, cy_gpu_order.data() + i * D);
      const std::vector<float> gy_host = test::to_host_f32(*gpu_, gy);
      const double err_y = rel_l2(gy_host.data(), cy_gpu_order.data(), M * D);
      std::printf("moe_grouped_mlp %s: rel L2 %.2e\n", what.c_str(), err_y);
      const bool gemm =
          (M >= 32 * E && T > 8) || (!fp8 && T >= CudaOptions{}.bf16_grouped_experts_min_tokens);
      // The grouped GEMV passes over an expert's weights with at most 8 of its rows (its tile), whatever T.
      EXPECT_LE(err_y, gemm ? 1e-2 : test::gemv_bound(fp8, std::min<int64_t>(T, 8))) << what;

      // Combine, on the same (CPU) y rows, with and without plus.
      const Tensor gy_same = gpu_->alloc(DType::F32, {M, D});
      gpu_->copy_from_host(cy_gpu_order.data(), gy_same);
      for (bool with_plus : {true, false}) {
        Tensor cout = Tensor::host(DType::F32, {T, D}), gout = poisoned(DType::F32, {T, D});
        cpu_->moe_combine(cy, cd, w, with_plus ? plus.view() : TensorView{}, cout);
        gpu_->moe_combine(gy_same, gd, gw, with_plus ? gplus.view() : TensorView{}, gout);
        const std::vector<float> got = test::to_host_f32(*gpu_, gout);
        EXPECT_LE(rel_l2(got.data(), cout.as<float>(), T * D), 1e-6) << what << " plus=" << with_plus;
      }

      // The GPU's composition against its fused op.
      Tensor fused = poisoned(DType::F32, {T, D}), composed = poisoned(DType::F32, {T, D});
      gpu_->moe_experts(gx, dev, gids, gw, gplus, fused);
      gpu_->Backend::moe_experts(gx, dev, gids, gw, gplus, composed);
      const std::vector<float> f = test::to_host_f32(*gpu_, fused), c = test::to_host_f32(*gpu_, composed);
      const double err_c = rel_l2(c.data(), f.data(), T * D);
      std::printf("moe_experts composition vs fused %s: rel L2 %.2e%s\n", what.c_str(), err_c,
                  std::memcmp(c.data(), f.data(), c.size() * 4) == 0 ? " (bit-identical)" : "");
      EXPECT_LE(err_c, 1e-6) << what;
    }
  }
}

// Pages shuffled across sequences; each sequence has `len` cached positions, the last `tokens` of them new.
struct Seq {
  int64_t len, tokens, pages;
};

void mla_case(Backend& cpu, Backend& gpu, std::mt19937_64& rng, int64_t H, const std::vector<Seq>& seqs, bool fp8,
              const std::string& what) {
  const int64_t r = 512, dr = 64, dn = 128, dv = 128, W = r + dr, page = 64;
  int64_t total = 0;
  for (const auto& s : seqs) total += s.pages;
  std::vector<int32_t> ids(static_cast<size_t>(total));
  std::iota(ids.begin(), ids.end(), 0);
  std::shuffle(ids.begin(), ids.end(), rng);
  std::vector<SequenceChunk> chunks;
  size_t next = 0;
  for (const auto& s : seqs) {
    SequenceChunk c;
    for (int64_t p = 0; p < s.pages; ++p) c.pages.push_back(ids[next++]);
    c.start_pos = int32_t(s.len - s.tokens);
    c.tokens.assign(size_t(s.tokens), 0);
    chunks.push_back(c);
  }
  const BatchPlan plan = plan_batch(chunks, page);
  const int64_t T = plan.num_tokens();
  Tensor gc_host = test::random_host(rng, DType::BF16, {total, page, W});
  Tensor cc = Tensor::host(DType::F32, {total, page, W});
  for (int64_t i = 0; i < gc_host.numel(); ++i) cc.as<float>()[i] = bf16_to_float(gc_host.as<uint16_t>()[i]);
  const Tensor gc = test::to_device(gpu, gc_host);
  Tensor q = test::random_host(rng, DType::F32, {T, H, dn + dr});
  const Tensor gq = test::to_device(gpu, q);
  test::HostWeight kv_b = test::random_weight(rng, H * (dn + dv), r, fp8);
  const Weight gkv_b = gpu.upload_weight(kv_b.weight);
  const float scale = 1.0f / std::sqrt(float(dn + dr));
  const DeviceBatch cb = cpu.upload_batch(plan), gb = gpu.upload_batch(plan);
  const std::vector<float> nan_thr(size_t(T * H * r), std::numeric_limits<float>::quiet_NaN());

  // Absorb.
  Tensor cqf = Tensor::host(DType::F32, {T, H, W}), gqf = gpu.alloc(DType::BF16, {T, H, W});
  cpu.mla_absorb(q, kv_b.weight, dn, dv, cqf);
  gpu.mla_absorb(gq, gkv_b, dn, dv, gqf);
  const std::vector<float> gqf_host = test::to_host_f32(gpu, gqf);
  EXPECT_LE(rel_l2(gqf_host.data(), cqf.as<float>(), T * H * W), 4e-3) << what << " absorb";

  // Latent attention on the same qf values (the GPU's BF16 qf, widened for the CPU).
  Tensor cqf_same = Tensor::host(DType::F32, {T, H, W});
  std::copy(gqf_host.begin(), gqf_host.end(), cqf_same.as<float>());
  Tensor co = Tensor::host(DType::F32, {T, H, r}), clse = Tensor::host(DType::F32, {T, H});
  Tensor go = gpu.alloc(DType::F32, {T, H, r}), glse = gpu.alloc(DType::F32, {T, H});
  gpu.copy_from_host(nan_thr.data(), go);
  gpu.copy_from_host(nan_thr.data(), glse);
  cpu.mla_latent_attention(cqf_same, cc, scale, cb, co, clse);
  gpu.mla_latent_attention(gqf, gc, scale, gb, go, glse);
  const std::vector<float> go_host = test::to_host_f32(gpu, go), glse_host = test::to_host_f32(gpu, glse);
  const double err_o = rel_l2(go_host.data(), co.as<float>(), T * H * r);
  double err_lse = 0, err_lse_cpu = 0;
  for (int64_t t = 0; t < T; ++t) {
    const int64_t seq = plan.token_seq[size_t(t)], pos = plan.positions[size_t(t)];
    for (int64_t h = 0; h < H; ++h) {
      const float* qh = cqf_same.as<float>() + (t * H + h) * W;
      std::vector<double> s(static_cast<size_t>(pos + 1));
      double mx = -1e300;
      for (int64_t j = 0; j <= pos; ++j) {
        const int32_t p = plan.block_table[size_t(seq * plan.max_pages + j / page)];
        const float* c = cc.as<float>() + (int64_t(p) * page + j % page) * W;
        double dot = 0;
        for (int64_t i = 0; i < W; ++i) dot += double(qh[i]) * c[i];
        s[size_t(j)] = double(scale) * dot;
        mx = std::max(mx, s[size_t(j)]);
      }
      double z = 0;
      for (double v : s) z += std::exp(v - mx);
      const double ref = mx + std::log(z);
      err_lse = std::max(err_lse, std::fabs(double(glse_host[size_t(t * H + h)]) - ref));  // NaN fails below
      if (!std::isfinite(glse_host[size_t(t * H + h)])) err_lse = INFINITY;
      err_lse_cpu = std::max(err_lse_cpu, std::fabs(double(clse.as<float>()[t * H + h]) - ref));
    }
  }
  std::printf("%s: o_lat rel L2 %.2e, lse max |err| %.2e (CPU %.2e)\n", what.c_str(), err_o, err_lse, err_lse_cpu);
  EXPECT_LE(err_o, 1e-2) << what;
  EXPECT_LE(err_lse, 3e-3) << what;
  EXPECT_LE(err_lse_cpu, 1e-4) << what;

  // Project on the same o_lat (the CPU's).
  Tensor cout = Tensor::host(DType::F32, {T, H * dv}), gout = gpu.alloc(DType::F32, {T, H * dv});
  gpu.copy_from_host(nan_thr.data(), gout);
  cpu.mla_project_v(co, kv_b.weight, dn, dv, cout);
  gpu.mla_project_v(test::to_device(gpu, co), gkv_b, dn, dv, gout);
  // Above the GEMV's 8 tokens a BF16 kv_b goes to a strided batched cuBLAS GEMM over the heads, which rounds
  // o_lat to BF16 first: the tensor-core GEMV's bound (test::gemv_bound's comment: ~1.1e-3 rms, bound 5e-3).
  const double pv_bound = !fp8 && T > 8 ? 5e-3 : test::gemv_bound(fp8, T);
  const double err_pv = rel_l2(test::to_host_f32(gpu, gout).data(), cout.as<float>(), T * H * dv);
  std::printf("%s: project_v rel L2 %.2e (bound %.0e)\n", what.c_str(), err_pv, pv_bound);
  EXPECT_LE(err_pv, pv_bound) << what << " project_v";

  // The GPU's composition against its fused op (the same kernels unless the fused op takes the expanded
  // prefill form) and against the CPU's composition.
  Tensor fused = gpu.alloc(DType::F32, {T, H * dv}), composed = gpu.alloc(DType::F32, {T, H * dv});
  gpu.copy_from_host(nan_thr.data(), fused);
  gpu.copy_from_host(nan_thr.data(), composed);
  gpu.mla_attention(gq, gkv_b, gc, dn, dv, scale, gb, fused);
  gpu.Backend::mla_attention(gq, gkv_b, gc, dn, dv, scale, gb, composed);
  const std::vector<float> f = test::to_host_f32(gpu, fused), c = test::to_host_f32(gpu, composed);
  Tensor cref = Tensor::host(DType::F32, {T, H * dv});
  cpu.mla_attention(q, kv_b.weight, cc, dn, dv, scale, cb, cref);
  const double err_fc = rel_l2(c.data(), f.data(), T * H * dv);
  std::printf("%s: mla_attention composition vs fused rel L2 %.2e%s\n", what.c_str(), err_fc,
              std::memcmp(c.data(), f.data(), c.size() * 4) == 0 ? " (bit-identical)" : "");
  EXPECT_LE(err_fc, T >= 64 ? 1e-2 : 1e-6) << what;
  EXPECT_LE(rel_l2(c.data(), cref.as<float>(), T * H * dv), 2e-2) << what;
}

// Decode (2 tokens at 16 heads over a 4096-position capacity: mla_choose_splits cuts each sequence into
// several splits and the combine kernel writes o_lat and lse) and a prefill chunk (200 tokens at 32 heads over
// a 320-position capacity: 200 blocks already fill the GPU, one split, the attention kernel normalises and
// writes lse itself).
TEST_F(CudaPrimitives, MlaAbsorbLatentAttentionProjectV) {
  for (bool fp8 : {false, true}) {
    mla_case(*cpu_, *gpu_, rng_, 16, {{900, 1, 64}, {3000, 1, 64}}, fp8, "decode fp8=" + std::to_string(fp8));
    mla_case(*cpu_, *gpu_, rng_, 32, {{300, 200, 5}}, fp8, "prefill fp8=" + std::to_string(fp8));
  }
}

}  // namespace
}  // namespace moe
