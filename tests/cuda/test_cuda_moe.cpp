// MoE routing and routed experts on the GPU against the CPU backend at DeepSeek-V3 widths
// (256 experts top-8 in 8 groups choosing 4; hidden 7168, moe_intermediate 2048), random inputs.
// Routing: same F32 formulas on both sides; the chosen experts must match exactly (random logits make ties
// within F32 rounding improbable: the test prints any mismatch) and the weights within 1e-5 relative.
// Experts: the grouped-GEMV path (< 32 rows per expert, and BF16 experts below
// CudaOptions::bf16_grouped_experts_min_tokens tokens) as test::gemv_bound (1e-4 on the CUDA cores, 5e-3
// where the tensor-core GEMV rounds x to BF16); the expert-GEMM path (prefill, and BF16 experts from that
// many tokens) rounds x, the SwiGLU hidden state and dequantised FP8 weights to BF16 (the default
// MOE_CUDA_PREFILL=bf16): 2^-9 relative per input, ~2e-3 on a dot product of independent roundings: bound
// 1e-2 (with MOE_CUDA_PREFILL=split, the hi + lo halves give ~1e-5).
#include "backend/cuda/cuda_ops.h"
#include "cuda_test_util.h"

namespace moe {
namespace {

using test::rel_l2;

class CudaMoe : public test::GpuVsCpu {};

// V3-style routing (sigmoid, noaux_tc) of top k of E experts in n_group groups keeping topk_group, scale 2.5.
RoutingParams grouped_routing(int64_t E, int64_t K, int32_t n_group, int32_t topk_group) {
  RoutingParams p;
  p.num_experts = int32_t(E);
  p.top_k = int32_t(K);
  p.n_group = n_group;
  p.topk_group = topk_group;
  p.routed_scaling_factor = 2.5f;
  return p;
}

// A backend with the MoE decode fusions on or off (on by default).
std::unique_ptr<Backend> cuda_with_moe_fusion(bool on) {
  CudaOptions o;
  o.moe_decode_fusion = on;
  return make_cuda_backend(0, o);
}

TEST_F(CudaMoe, RoutingV3AndV2) {
  const int64_t E = 256;
  // A prefill-sized batch and decode-sized ones (a block of 4 tokens, partly filled).
  for (int64_t T : {200, 1, 5, 8})
    for (int variant = 0; variant < 3; ++variant) {
      RoutingParams p = grouped_routing(E, 8, 8, 4);
      if (variant == 1) {
        p.score = RoutingScore::Softmax;
        p.method = RoutingMethod::GroupLimitedGreedy;
        p.norm_topk_prob = false;
      } else if (variant == 2) {
        p.score = RoutingScore::Softmax;
        p.method = RoutingMethod::Greedy;
        p.n_group = 1;
        p.topk_group = 1;
      }
      Tensor logits = test::random_host(rng_, DType::F32, {T, E}, 2.0f),
             bias = test::random_host(rng_, DType::F32, {E}, 0.1f);
      Tensor ids = Tensor::host(DType::I32, {T, 8}), w = Tensor::host(DType::F32, {T, 8});
      cpu_->moe_route(logits, variant == 0 ? bias.view() : TensorView{}, p, ids, w);
      Tensor gl = test::to_device(*gpu_, logits), gb = test::to_device(*gpu_, bias);
      Tensor gids = gpu_->alloc(DType::I32, {T, 8}), gw = gpu_->alloc(DType::F32, {T, 8});
      gpu_->moe_route(gl, variant == 0 ? gb.view() : TensorView{}, p, gids, gw);
      std::vector<int32_t> got_ids(static_cast<size_t>(T * 8));
      gpu_->copy_to_host(gids, got_ids.data());
      const std::vector<float> got_w = test::to_host_f32(*gpu_, gw);
      EXPECT_EQ(got_ids, std::vector<int32_t>(ids.as<int32_t>(), ids.as<int32_t>() + T * 8))
          << "variant " << variant;
      EXPECT_LE(rel_l2(got_w.data(), w.as<float>(), T * 8), 1e-5) << "variant " << variant;
    }
}

TEST_F(CudaMoe, RoutedExpertsGemvAndGroupedGemm) {
  const int64_t E = 16, D = 7168, I = 2048, K = 8;  // 16 of V3's 256 experts keeps the host reference small
  for (bool fp8 : {false, true}) {
    const test::HostExperts hx = test::random_experts(rng_, E, D, I, fp8);
    const ExpertWeights& host = hx.weights;
    const ExpertWeights dev = test::upload_experts(*gpu_, host);
    for (int64_t T : {1, 6, 37, 64}) {  // 64 * 8 assignments = 32 per expert: the expert-GEMM path
      Tensor x = test::random_host(rng_, DType::F32, {T, D});
      auto [ids, w] = test::random_choices(rng_, T, E, K);
      Tensor ref = Tensor::host(DType::F32, {T, D}), gout = gpu_->alloc(DType::F32, {T, D});
      cpu_->moe_experts(x, host, ids, w, {}, ref);
      gpu_->moe_experts(test::to_device(*gpu_, x), dev, test::to_device(*gpu_, ids),
                        test::to_device(*gpu_, w), {}, gout);
      const std::vector<float> got = test::to_host_f32(*gpu_, gout);
      const bool gemm = T * K >= 32 * E || (!fp8 && T >= CudaOptions{}.bf16_grouped_experts_min_tokens);
      // The grouped GEMV passes over an expert's weights with at most 8 of its rows (its tile), whatever T.
      const double bound = gemm ? 1e-2 : test::gemv_bound(fp8, std::min<int64_t>(T, 8));
      EXPECT_LE(rel_l2(got.data(), ref.as<float>(), T * D), bound) << "T=" << T << " fp8=" << fp8;
    }
  }
}

// Decode-sized batches as the model runs them: moe_route on the GPU, then moe_experts on its ids (with the
// shared experts' output added through `plus`), and again with the ids rewritten in between (copy_from_host).
TEST_F(CudaMoe, RouteThenExpertsOnTheRoutedIds) {
  const int64_t E = 16, D = 1024, I = 512, K = 6;
  RoutingParams p = grouped_routing(E, K, 4, 2);
  const test::HostExperts hx = test::random_experts(rng_, E, D, I, false);
  const ExpertWeights& host = hx.weights;
  const ExpertWeights dev = test::upload_experts(*gpu_, host);
  for (int64_t T : {1, 3, 8})
    for (bool rewrite : {false, true}) {
      Tensor logits = test::random_host(rng_, DType::F32, {T, E}, 2.0f),
             bias = test::random_host(rng_, DType::F32, {E}, 0.1f);
      Tensor x = test::random_host(rng_, DType::F32, {T, D}),
             plus = test::random_host(rng_, DType::F32, {T, D});
      Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
      cpu_->moe_route(logits, bias, p, ids, w);
      Tensor gids = gpu_->alloc(DType::I32, {T, K}), gw = gpu_->alloc(DType::F32, {T, K});
      gpu_->moe_route(test::to_device(*gpu_, logits), test::to_device(*gpu_, bias), p, gids, gw);
      if (rewrite) {  // other experts than routed: each token's choices shifted by one expert
        for (int64_t i = 0; i < T * K; ++i) ids.as<int32_t>()[i] = (ids.as<int32_t>()[i] + 1) % int32_t(E);
        gpu_->copy_from_host(ids.as<int32_t>(), gids);
      } else {
        std::vector<int32_t> got(static_cast<size_t>(T * K));
        gpu_->copy_to_host(gids, got.data());
        ASSERT_EQ(got, std::vector<int32_t>(ids.as<int32_t>(), ids.as<int32_t>() + T * K)) << "T=" << T;
      }
      Tensor ref = Tensor::host(DType::F32, {T, D}), gout = gpu_->alloc(DType::F32, {T, D});
      cpu_->moe_experts(x, host, ids, w, plus, ref);
      gpu_->moe_experts(test::to_device(*gpu_, x), dev, gids, gw, test::to_device(*gpu_, plus), gout);
      const std::vector<float> got = test::to_host_f32(*gpu_, gout);
      // BF16 experts from bf16_grouped_experts_min_tokens tokens: the grouped GEMM's BF16 inputs (see the
      // top).
      const double bound =
          T >= CudaOptions{}.bf16_grouped_experts_min_tokens ? 1e-2 : test::gemv_bound(false, T);
      EXPECT_LE(rel_l2(got.data(), ref.as<float>(), T * D), bound) << "T=" << T << " rewrite=" << rewrite;
    }
}

// The shared experts as routed ones (CudaOptions::moe_decode_fusion: the model asks for them at one token;
// moe_experts takes them on its GEMV path at any token count, checked at 1-7): moe_route appends S columns
// (ids E .., weight 1) and moe_experts runs the S inner-wide slices of the shared MLP among the routed
// experts (at tile 1 straight over the ids, no plan), against the shared MLP run apart (swiglu_mlp, added
// through `plus`) and the routed experts over moe_plan's work items. E = 16, K = 6 keeps the grouped GEMV's
// tile equal to the dense GEMV's at every T here, so both run the same kernels (CUDA cores or tensor cores
// alike) on the same weights and x: only F32 summation orders differ (the down product as S dots of I terms
// summed in the combine instead of one dot of S*I; the combine's order), about sqrt(S*I) * 2^-24 = 3e-6
// relative: bound 2e-5. Except FP8 once the fused side has kGemvWarpTilesFp8 assignments (T >= 2 here): its
// passes run on the per-warp tiles (one F32 chain over K a row) where the apart side's shared MLP (dense) and
// routed passes of fewer assignments run 8 warps' partial sums, so h differs by ~sqrt(D) 2^-24 = 1.3e-6
// relative; the down mma rounds h to BF16, and an element that close to a rounding boundary (probability
// ~1.3e-6 / 2^-9 = 7e-4) moves by one BF16 ulp (2^-8 relative): ~sqrt(7e-4) 2^-8 = 1e-4 of the output's rel
// L2 (2.5e-5 seen): bound 2e-4 there. Against the CPU: test::gemv_bound.
TEST_F(CudaMoe, SharedExpertsAsRoutedOnes) {
  auto fused = cuda_with_moe_fusion(true), plain = cuda_with_moe_fusion(false);
  const int64_t E = 16, D = 512, I = 256, K = 6;
  RoutingParams p = grouped_routing(E, K, 4, 2);
  for (bool fp8 : {false, true})
    for (int64_t S : {1, 2}) {
      const test::HostExperts hx = test::random_experts(rng_, E, D, I, fp8);
      const test::HostWeight hg = test::random_weight(rng_, S * I, D, fp8),
                             hu = test::random_weight(rng_, S * I, D, fp8),
                             hd = test::random_weight(rng_, D, S * I, fp8);
      const MlpWeights host_shared{hg.weight, hu.weight, hd.weight};
      auto upload_mlp = [](Backend& b, const MlpWeights& m) {
        return MlpWeights{b.upload_weight(m.gate), b.upload_weight(m.up), b.upload_weight(m.down)};
      };
      ExpertWeights apart = test::upload_experts(*plain, hx.weights),
                    joined = test::upload_experts(*fused, hx.weights);
      const MlpWeights shared_apart = upload_mlp(*plain, host_shared),
                       shared_joined = upload_mlp(*fused, host_shared);
      plain->prepare_shared_experts(apart, shared_apart);
      fused->prepare_shared_experts(joined, shared_joined);
      ASSERT_EQ(plain->shared_expert_slots(apart, 1), 0) << "fusion off";
      ASSERT_EQ(fused->shared_expert_slots(joined, 1), S);
      ASSERT_EQ(fused->shared_expert_slots(joined, 2), 0) << "one token only (see shared_expert_slots)";
      for (int64_t T : {1, 2, 4, 7}) {
        Tensor logits = test::random_host(rng_, DType::F32, {T, E}, 2.0f),
               bias = test::random_host(rng_, DType::F32, {E}, 0.1f),
               x = test::random_host(rng_, DType::F32, {T, D});
        // The CPU: routing, the shared MLP apart, the routed experts with it as `plus`.
        Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
        Tensor sh = Tensor::host(DType::F32, {T, D}), ref = Tensor::host(DType::F32, {T, D});
        cpu_->moe_route(logits, bias, p, ids, w);
        cpu_->swiglu_mlp(x, host_shared, sh);
        cpu_->moe_experts(x, hx.weights, ids, w, sh, ref);
        // The GPU, shared MLP apart.
        Tensor gids = plain->alloc(DType::I32, {T, K}), gw = plain->alloc(DType::F32, {T, K});
        Tensor gx = test::to_device(*plain, x), gsh = plain->alloc(DType::F32, {T, D}),
               gout = plain->alloc(DType::F32, {T, D});
        plain->moe_route(test::to_device(*plain, logits), test::to_device(*plain, bias), p, gids, gw);
        plain->swiglu_mlp(gx, shared_apart, gsh);
        plain->moe_experts(gx, apart, gids, gw, gsh, gout);
        // The GPU, shared experts as routed ones.
        Tensor fids = fused->alloc(DType::I32, {T, K + S}), fw = fused->alloc(DType::F32, {T, K + S});
        Tensor fx = test::to_device(*fused, x), fout = fused->alloc(DType::F32, {T, D});
        fused->moe_route(test::to_device(*fused, logits), test::to_device(*fused, bias), p, fids, fw);
        fused->moe_experts(fx, joined, fids, fw, {}, fout);

        std::vector<int32_t> a(static_cast<size_t>(T * K)), j(static_cast<size_t>(T * (K + S)));
        plain->copy_to_host(gids, a.data());
        fused->copy_to_host(fids, j.data());
        const std::vector<float> wa = test::to_host_f32(*plain, gw), wj = test::to_host_f32(*fused, fw);
        for (int64_t t = 0; t < T; ++t) {
          for (int64_t c = 0; c < K; ++c) {
            EXPECT_EQ(j[size_t(t * (K + S) + c)], a[size_t(t * K + c)])
                << "T=" << T << " t=" << t << " slot " << c;
            EXPECT_EQ(wj[size_t(t * (K + S) + c)], wa[size_t(t * K + c)])
                << "T=" << T << " t=" << t << " slot " << c;
          }
          for (int64_t c = 0; c < S; ++c) {
            EXPECT_EQ(j[size_t(t * (K + S) + K + c)], int32_t(E + c)) << "T=" << T << " t=" << t;
            EXPECT_EQ(wj[size_t(t * (K + S) + K + c)], 1.0f) << "T=" << T << " t=" << t;
          }
        }
        const std::vector<float> got_apart = test::to_host_f32(*plain, gout),
                                 got = test::to_host_f32(*fused, fout);
        const std::string what =
            "T=" + std::to_string(T) + " S=" + std::to_string(S) + " fp8=" + std::to_string(fp8);
        const bool orders_differ = fp8 && T * (K + S) >= cuda::kGemvWarpTilesFp8;
        EXPECT_LE(rel_l2(got.data(), got_apart.data(), T * D), orders_differ ? 2e-4 : 2e-5) << what;
        EXPECT_LE(rel_l2(got.data(), ref.as<float>(), T * D), test::gemv_bound(fp8, T)) << what;
        EXPECT_LE(rel_l2(got_apart.data(), ref.as<float>(), T * D), test::gemv_bound(fp8, T)) << what;
      }
    }
}

// The routed experts' down GEMV over the ids with the weighted combine in the same launch (moe_experts at
// tile 1 under CudaOptions::moe_decode_fusion, cuda::gemv_combine) against the plan, the GEMV and moe_combine
// apart: the same kernels' arithmetic and moe_combine's order of fmaf, so the same bits. Moonlight's widths
// (64 experts, hidden 2048, inner 1408) at top-8 (6 routed and 2 shared experts there), 1, 3 and 4 tokens
// (tile 1 up to 4): 8, 24 and 32 assignments (FP8: gemv_mma_block at 8, the per-warp tiles from cuda_ops.h's
// kGemvWarpTilesFp8), with and without `plus`, BF16 and FP8, three calls a shape (the column counters back at
// 0 after each).
TEST_F(CudaMoe, DownAndCombineInOneLaunch) {
  auto fused = cuda_with_moe_fusion(true), plain = cuda_with_moe_fusion(false);
  const int64_t E = 64, D = 2048, I = 1408, K = 8;
  static_assert(cuda::kGemvWarpTilesFp8 > 8 && cuda::kGemvWarpTilesFp8 <= 24);
  for (bool fp8 : {false, true}) {
    const test::HostExperts hx = test::random_experts(rng_, E, D, I, fp8);
    const ExpertWeights ef = test::upload_experts(*fused, hx.weights),
                        ep = test::upload_experts(*plain, hx.weights);
    for (int64_t T : {1, 3, 4})
      for (bool with_plus : {false, true})
        for (int call = 0; call < 3; ++call) {
          SCOPED_TRACE(::testing::Message()
                       << "fp8=" << fp8 << " T=" << T << " plus=" << with_plus << " call " << call);
          Tensor x = test::random_host(rng_, DType::F32, {T, D}),
                 plus = test::random_host(rng_, DType::F32, {T, D});
          auto [ids, w] = test::random_choices(rng_, T, E, K);
          Tensor fo = fused->alloc(DType::F32, {T, D}), po = plain->alloc(DType::F32, {T, D});
          fused->moe_experts(test::to_device(*fused, x), ef, test::to_device(*fused, ids),
                             test::to_device(*fused, w), with_plus ? test::to_device(*fused, plus) : Tensor{},
                             fo);
          plain->moe_experts(test::to_device(*plain, x), ep, test::to_device(*plain, ids),
                             test::to_device(*plain, w), with_plus ? test::to_device(*plain, plus) : Tensor{},
                             po);
          const std::vector<float> a = test::to_host_f32(*fused, fo), b = test::to_host_f32(*plain, po);
          EXPECT_EQ(a, b) << "rel L2 " << rel_l2(a.data(), b.data(), T * D);
          if (call == 0 && !with_plus) {
            Tensor ref = Tensor::host(DType::F32, {T, D});
            cpu_->moe_experts(x, hx.weights, ids, w, {}, ref);
            EXPECT_LE(rel_l2(a.data(), ref.as<float>(), T * D), test::gemv_bound(fp8, 1)) << "vs CPU";
          }
        }
  }
}

// The router and the routing in one launch (moe_router at one token under CudaOptions::moe_decode_fusion)
// against matmul + moe_route: the same single-token GEMV pass and the same routing code, so the logits, ids
// and weights are bit-identical; at DeepSeek-V3's routing (256 experts, groups) and V2's (softmax), BF16 and
// F32 routers, with and without a shared-expert column, several calls in a row (the kernel's block counter
// must come back to 0).
TEST_F(CudaMoe, RouterAndRoutingInOneLaunch) {
  auto fused = cuda_with_moe_fusion(true), plain = cuda_with_moe_fusion(false);
  const int64_t E = 256, D = 1024, K = 8;
  for (DType wdt : {DType::BF16, DType::F32})
    for (int variant = 0; variant < 2; ++variant)
      for (int64_t S : {0, 1}) {
        RoutingParams p = grouped_routing(E, K, 8, 4);
        if (variant == 1) {
          p.score = RoutingScore::Softmax;
          p.method = RoutingMethod::GroupLimitedGreedy;
          p.norm_topk_prob = false;
        }
        Tensor hw = test::random_host(rng_, wdt, {E, D}, 1.0f / 32.0f);
        Weight host_router;
        host_router.w = hw.view();
        const Weight ra = plain->upload_weight(host_router), rf = fused->upload_weight(host_router);
        for (int call = 0; call < 3; ++call) {
          Tensor x = test::random_host(rng_, DType::F32, {1, D}),
                 bias = test::random_host(rng_, DType::F32, {E}, 0.1f);
          Tensor la = plain->alloc(DType::F32, {1, E}), ia = plain->alloc(DType::I32, {1, K + S}),
                 wa = plain->alloc(DType::F32, {1, K + S});
          Tensor lf = fused->alloc(DType::F32, {1, E}), i_f = fused->alloc(DType::I32, {1, K + S}),
                 wf = fused->alloc(DType::F32, {1, K + S});
          Tensor ba = variant == 0 ? test::to_device(*plain, bias) : Tensor{},
                 bf = variant == 0 ? test::to_device(*fused, bias) : Tensor{};
          plain->moe_router(test::to_device(*plain, x), ra, ba.view(), p, la, ia, wa);
          fused->moe_router(test::to_device(*fused, x), rf, bf.view(), p, lf, i_f, wf);
          const std::string what = std::string(dtype_name(wdt)) + " variant " + std::to_string(variant) +
                                   " S " + std::to_string(S) + " call " + std::to_string(call);
          EXPECT_EQ(test::to_host_f32(*fused, lf), test::to_host_f32(*plain, la)) << what;
          std::vector<int32_t> ida(static_cast<size_t>(K + S)), idf(static_cast<size_t>(K + S));
          plain->copy_to_host(ia, ida.data());
          fused->copy_to_host(i_f, idf.data());
          EXPECT_EQ(idf, ida) << what;
          EXPECT_EQ(test::to_host_f32(*fused, wf), test::to_host_f32(*plain, wa)) << what;
        }
      }
}

}  // namespace
}  // namespace moe
