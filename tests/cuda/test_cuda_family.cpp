// The DeepSeek-V3 family's shapes on the GPU against the CPU backend (issue 17):
//   Kimi-K2 routing: 384 experts in one group, top-8, routed_scaling_factor 2.827 (the route kernel keeps a
//   token's 2 x 384 scores in shared memory; nothing is sized for 256). Same F32 formulas on both sides: the
//   chosen experts must match exactly and the weights within 1e-5 relative (as test_cuda_moe.cpp).
//   INT4 (W4A16) experts stay INT4 on the GPU (packed words and group scales as stored). Decode (up to ~32 rows
//   per expert): the W4A16 GEMV reads them in place, q * scale exact in F32 and F32 accumulation like the CPU's
//   INT4 dot: only the summation order differs (K <= 512 terms, ~sqrt(K) 2^-24 relative), bound 1e-5 relative
//   L2 through SwiGLU. Prefill (>= 32 rows per expert on average): the active experts dequantised to BF16 scratch
//   (q * scale rounded to BF16, 2^-9 relative per weight) and x rounded to BF16 for the tensor-core GEMMs: a dot
//   of K independent roundings is ~2^-9 / sqrt(3) relative on the result; over the two GEMMs, bound 1e-2.
//   The W4A16 kernel alone: test_cuda_w4a16.cpp.
#include "core/error.h"
#include "cuda_test_util.h"
#include "int4_test_util.h"

namespace moe {
namespace {

using test::rel_l2;

class CudaFamily : public test::GpuVsCpu {};

TEST_F(CudaFamily, KimiRouting384Experts) {
  const int64_t E = 384, K = 8;
  for (int64_t T : {1, 3, 8, 200}) {
    RoutingParams p;
    p.num_experts = int32_t(E);
    p.top_k = int32_t(K);
    p.n_group = 1;
    p.topk_group = 1;
    p.norm_topk_prob = true;
    p.routed_scaling_factor = 2.827f;
    Tensor logits = test::random_host(rng_, DType::F32, {T, E}, 2.0f),
           bias = test::random_host(rng_, DType::F32, {E}, 0.1f);
    Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
    cpu_->moe_route(logits, bias, p, ids, w);
    Tensor gids = gpu_->alloc(DType::I32, {T, K}), gw = gpu_->alloc(DType::F32, {T, K});
    gpu_->moe_route(test::to_device(*gpu_, logits), test::to_device(*gpu_, bias), p, gids, gw);
    std::vector<int32_t> got_ids(static_cast<size_t>(T * K));
    gpu_->copy_to_host(gids, got_ids.data());
    const std::vector<float> got_w = test::to_host_f32(*gpu_, gw);
    EXPECT_EQ(got_ids, std::vector<int32_t>(ids.as<int32_t>(), ids.as<int32_t>() + T * K)) << "T=" << T;
    EXPECT_LE(rel_l2(got_w.data(), w.as<float>(), T * K), 1e-5) << "T=" << T;
    // Experts past 255 are chosen too (a 256-wide table would never pick them).
    bool high = false;
    for (int32_t id : got_ids) high = high || id >= 256;
    if (T >= 8) {
      EXPECT_TRUE(high) << "T=" << T;
    }
  }
}

// One layer's experts share a scale dtype (a checkpoint's quantiser writes one); both are run, one layer each. A
// layer mixing them is refused by prepare_experts with an error that says so.
TEST_F(CudaFamily, Int4ExpertsMatchCpu) {
  const int64_t E = 24, D = 512, I = 256, K = 8, group = 32;
  for (const bool f32_scales : {false, true}) {
    std::vector<test::HostInt4> mats(size_t(E * 3));
    ExpertWeights host;
    for (int64_t e = 0; e < E; ++e) {
      test::random_int4(rng_, I, D, group, f32_scales, mats[size_t(e * 3)]);
      test::random_int4(rng_, I, D, group, f32_scales, mats[size_t(e * 3 + 1)]);
      test::random_int4(rng_, D, I, group, f32_scales, mats[size_t(e * 3 + 2)]);
      host.experts.push_back({mats[size_t(e * 3)].w, mats[size_t(e * 3 + 1)].w, mats[size_t(e * 3 + 2)].w});
    }
    cpu_->prepare_experts(host);
    ExpertWeights dev;
    for (const MlpWeights& m : host.experts)
      dev.experts.push_back({gpu_->upload_weight(m.gate), gpu_->upload_weight(m.up), gpu_->upload_weight(m.down)});
    gpu_->prepare_experts(dev);
    ASSERT_TRUE(dev.experts[0].gate.is_int4() && dev.experts[0].gate.w.dtype == DType::I32) << "INT4 on the GPU";
    EXPECT_EQ(dev.experts[0].gate.w.nbytes(), size_t(I * D / 2)) << "4 bits per weight on the device";
    for (int64_t T : {1, 4, 40, 200}) {  // T = 200: 1600 rows over 24 experts, the prefill (GEMM) path
      Tensor x = test::random_host(rng_, DType::F32, {T, D});
      auto [ids, w] = test::random_choices(rng_, T, E, K);
      Tensor ref = Tensor::host(DType::F32, {T, D}), gout = gpu_->alloc(DType::F32, {T, D});
      cpu_->moe_experts(x, host, ids, w, {}, ref);
      gpu_->moe_experts(test::to_device(*gpu_, x), dev, test::to_device(*gpu_, ids), test::to_device(*gpu_, w), {},
                        gout);
      const std::vector<float> got = test::to_host_f32(*gpu_, gout);
      const double err = rel_l2(got.data(), ref.as<float>(), T * D), bound = T * K >= 32 * E ? 1e-2 : 1e-5;
      std::printf("INT4 experts (%s scales), T = %lld: rel L2 %.3e (bound %.0e)\n", f32_scales ? "F32" : "BF16",
                  (long long)T, err, bound);
      EXPECT_LE(err, bound) << "T=" << T << " f32 scales " << f32_scales;
    }
  }
  // Mixed scale dtypes in one layer: refused, naming the rule.
  std::vector<test::HostInt4> a(3), b(3);
  for (int i = 0; i < 3; ++i) {
    test::random_int4(rng_, i < 2 ? I : D, i < 2 ? D : I, group, false, a[size_t(i)]);
    test::random_int4(rng_, i < 2 ? I : D, i < 2 ? D : I, group, true, b[size_t(i)]);
  }
  ExpertWeights mixed;
  for (auto* m : {&a, &b})
    mixed.experts.push_back({gpu_->upload_weight((*m)[0].w), gpu_->upload_weight((*m)[1].w),
                             gpu_->upload_weight((*m)[2].w)});
  try {
    gpu_->prepare_experts(mixed);
    ADD_FAILURE() << "mixed INT4 scale dtypes accepted";
  } catch (const Error& e) {
    EXPECT_NE(std::string(e.what()).find("scale dtype"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe
