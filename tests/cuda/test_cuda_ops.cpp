// GPU ops against the CPU backend at DeepSeek-V3 widths, on fresh random inputs (seed printed).
// Tolerances (relative L2 error of the GPU output against the CPU's):
//  - GEMV path (<= 8 tokens): both sides multiply the same stored weights and accumulate in F32; the CUDA-core
//    kernel (BF16 weights at one token) takes F32 activations, only the order differs: error ~ sqrt(K) * 2^-24
//    ~ 1e-5 for K = 7168, bound 1e-4; the tensor-core kernel (FP8 weights, BF16 at 2-8 tokens) rounds them to
//    BF16: bound 5e-3 (test::gemv_bound).
//  - GEMM path (> 8 tokens): the activations are rounded to BF16 for the tensor cores (relative 2^-9 per
//    element, independent signs), so a dot product of K terms is off by ~2^-9 relative (rms): 2e-3;
//    bound 1e-2.
//  - rms_norm, add, embedding, gather, concat: F32 on both sides, bound 1e-5.
#include "cuda_test_util.h"

namespace moe {
namespace {

using test::rel_l2;

class CudaOps : public test::GpuVsCpu {
 protected:
  // GPU matmul vs CPU on x [T, K] and a random [N, K] weight.
  double matmul_error(int64_t T, int64_t N, int64_t K, bool fp8) {
    test::HostWeight hw = test::random_weight(rng_, N, K, fp8);
    Tensor x = test::random_host(rng_, DType::F32, {T, K});
    Tensor ref = Tensor::host(DType::F32, {T, N});
    cpu_->matmul(x, hw.weight, ref);
    Weight gw = gpu_->upload_weight(hw.weight);
    Tensor gx = test::to_device(*gpu_, x), gout = gpu_->alloc(DType::F32, {T, N});
    gpu_->matmul(gx, gw, gout);
    const std::vector<float> got = test::to_host_f32(*gpu_, gout);
    return rel_l2(got.data(), ref.as<float>(), T * N);
  }
  // matmul_pair (both projections in one launch) vs two CPU matmuls: the larger of the two errors.
  double matmul_pair_error(int64_t T, int64_t Na, int64_t Nb, int64_t K, bool fp8) {
    test::HostWeight ha = test::random_weight(rng_, Na, K, fp8), hb = test::random_weight(rng_, Nb, K, fp8);
    Tensor x = test::random_host(rng_, DType::F32, {T, K});
    Tensor ra = Tensor::host(DType::F32, {T, Na}), rb = Tensor::host(DType::F32, {T, Nb});
    cpu_->matmul(x, ha.weight, ra);
    cpu_->matmul(x, hb.weight, rb);
    Weight ga = gpu_->upload_weight(ha.weight), gb = gpu_->upload_weight(hb.weight);
    Tensor gx = test::to_device(*gpu_, x);
    Tensor oa = gpu_->alloc_uninitialized(DType::F32, {T, Na}),
           ob = gpu_->alloc_uninitialized(DType::F32, {T, Nb});
    gpu_->copy_from_host(std::vector<float>(size_t(T * Na), NAN).data(),
                         oa);  // poisoned: every element written
    gpu_->copy_from_host(std::vector<float>(size_t(T * Nb), NAN).data(), ob);
    gpu_->matmul_pair(gx, ga, oa, gb, ob);
    const std::vector<float> a = test::to_host_f32(*gpu_, oa), b = test::to_host_f32(*gpu_, ob);
    return std::max(rel_l2(a.data(), ra.as<float>(), T * Na), rel_l2(b.data(), rb.as<float>(), T * Nb));
  }
};

// Two projections of one input in one GEMV launch (MLA's q / q_a and kv_a): Moonlight and DeepSeek-V3 shapes.
TEST_F(CudaOps, MatmulPairOneLaunch) {
  for (bool fp8 : {false, true})
    for (int64_t T : {1, 2, 5, 8}) {
      EXPECT_LE(matmul_pair_error(T, 3072, 576, 2048, fp8), test::gemv_bound(fp8, T))
          << "q_proj + kv_a, T=" << T << " fp8=" << fp8;
      EXPECT_LE(matmul_pair_error(T, 1536, 576, 7168, fp8), test::gemv_bound(fp8, T))
          << "q_a + kv_a, T=" << T << " fp8=" << fp8;
    }
  EXPECT_LE(matmul_pair_error(1, 65, 7, 2048, false), 1e-4) << "row counts not multiples of a block";
  EXPECT_LE(matmul_pair_error(12, 256, 576, 2048, false), 1e-2) << "more tokens: two GEMMs";
}

TEST_F(CudaOps, MatmulGemvBf16AndFp8) {
  for (bool fp8 : {false, true})
    for (int64_t T : {1, 3, 8}) {
      EXPECT_LE(matmul_error(T, 1536, 7168, fp8), test::gemv_bound(fp8, T)) << "q_a_proj shape, T=" << T << " fp8=" << fp8;
      EXPECT_LE(matmul_error(T, 7168, 2048, fp8), test::gemv_bound(fp8, T)) << "expert down shape, T=" << T << " fp8=" << fp8;
    }
  EXPECT_LE(matmul_error(2, 576, 7168, false), test::gemv_bound(false, 2)) << "kv_a_proj (N not a multiple of 16 rows per block)";
  EXPECT_LE(matmul_error(3, 200, 100, false), 1e-4) << "K not a multiple of the tensor-core kernel's 32 columns";
  EXPECT_LE(matmul_error(3, 65, 2048, false), test::gemv_bound(false, 3)) << "N not a multiple of its 16 rows";
  EXPECT_LE(matmul_error(1, 200, 100, false), 1e-4) << "K not a multiple of the 16-byte chunk";
  // Batch-1 GEMVs too small to fill the GPU take one row per warp.
  for (bool fp8 : {false, true}) {
    EXPECT_LE(matmul_error(1, 576, 2048, fp8), test::gemv_bound(fp8, 1)) << "kv_a_proj at batch 1, fp8=" << fp8;
    EXPECT_LE(matmul_error(1, 2048, 2048, fp8), test::gemv_bound(fp8, 1)) << "o_proj at batch 1, fp8=" << fp8;
  }
  EXPECT_LE(matmul_error(1, 65, 2048, false), 1e-4) << "N not a multiple of the 8 rows per block";
  // Tall single-token BF16 GEMVs (>= 8192 rows) take the persistent stream kernel: the LM head at Moonlight's
  // and DeepSeek-V3's widths (K 2048: one group of 8 chunks per lane; 7168: 3.5 groups), an odd row count
  // (the last pair half past N), and K = 1000 (not a whole group: masked chunks). F32 x as the CUDA-core
  // kernel: bound 1e-4.
  EXPECT_LE(matmul_error(1, 129280, 2048, false), 1e-4) << "LM head, K 2048";
  EXPECT_LE(matmul_error(1, 16385, 7168, false), 1e-4) << "tall, K 7168, odd N";
  EXPECT_LE(matmul_error(1, 8193, 1000, false), 1e-4) << "tall, K 1000";
}

// The vectorised RMSNorm (row widths a multiple of 4, up to 8192) and its fallback, and the fused
// residual step add_rms_norm against the CPU's add then rms_norm.
TEST_F(CudaOps, RmsNormWidthsAndFusedResidual) {
  for (int64_t D : {512, 1536, 2048, 5120, 7168, 8192, 8196, 1002})
    for (int64_t T : {1, 3}) {
      Tensor h = test::random_host(rng_, DType::F32, {T, D}, 3.0f),
             y = test::random_host(rng_, DType::F32, {T, D});
      Tensor wv = test::random_host(rng_, DType::BF16, {D});
      Weight w;
      w.w = wv.view();
      Weight gw = gpu_->upload_weight(w);
      Tensor gh = test::to_device(*gpu_, h), gy = test::to_device(*gpu_, y);
      Tensor ref = Tensor::host(DType::F32, {T, D}), gout = gpu_->alloc_uninitialized(DType::F32, {T, D});
      cpu_->rms_norm(h, w, 1e-6f, ref);
      gpu_->rms_norm(gh, gw, 1e-6f, gout);
      EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, gout).data(), ref.as<float>(), T * D), 1e-5)
          << "rms_norm D=" << D;
      cpu_->add_rms_norm(h, y, w, 1e-6f, ref);
      gpu_->add_rms_norm(gh, gy, gw, 1e-6f, gout);
      EXPECT_EQ(test::to_host_f32(*gpu_, gh), std::vector<float>(h.as<float>(), h.as<float>() + T * D))
          << "add_rms_norm residual D=" << D;
      EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, gout).data(), ref.as<float>(), T * D), 1e-5)
          << "add_rms_norm D=" << D << " T=" << T;
    }
}

TEST_F(CudaOps, MatmulGemmBf16AndFp8) {
  for (bool fp8 : {false, true}) {
    EXPECT_LE(matmul_error(64, 1536, 7168, fp8), 1e-2) << "fp8=" << fp8;
    EXPECT_LE(matmul_error(300, 24576, 1536, fp8), 1e-2) << "q_b_proj shape, fp8=" << fp8;
  }
}

TEST_F(CudaOps, SwigluMlp) {
  for (bool fp8 : {false, true})
    for (int64_t T : {1, 5, 40}) {
      test::HostWeight g = test::random_weight(rng_, 2048, 7168, fp8),
                       u = test::random_weight(rng_, 2048, 7168, fp8),
                       d = test::random_weight(rng_, 7168, 2048, fp8);
      MlpWeights hm{g.weight, u.weight, d.weight};
      MlpWeights gm{gpu_->upload_weight(g.weight), gpu_->upload_weight(u.weight),
                    gpu_->upload_weight(d.weight)};
      Tensor x = test::random_host(rng_, DType::F32, {T, 7168}), ref = Tensor::host(DType::F32, {T, 7168});
      cpu_->swiglu_mlp(x, hm, ref);
      Tensor gx = test::to_device(*gpu_, x), gout = gpu_->alloc(DType::F32, {T, 7168});
      gpu_->swiglu_mlp(gx, gm, gout);
      const std::vector<float> got = test::to_host_f32(*gpu_, gout);
      EXPECT_LE(rel_l2(got.data(), ref.as<float>(), T * 7168), T <= 8 ? test::gemv_bound(fp8, T) : 1e-2)
          << "T=" << T << " fp8=" << fp8;
    }
}

TEST_F(CudaOps, RmsNormAddConcatGatherEmbedding) {
  const int64_t T = 7, D = 7168;
  Tensor x = test::random_host(rng_, DType::F32, {T, D}, 3.0f),
         y = test::random_host(rng_, DType::F32, {T, D});
  Tensor wv = test::random_host(rng_, DType::BF16, {D});
  Weight w;
  w.w = wv.view();
  Weight gw = gpu_->upload_weight(w);
  Tensor gx = test::to_device(*gpu_, x), gy = test::to_device(*gpu_, y);

  Tensor ref = Tensor::host(DType::F32, {T, D}), gout = gpu_->alloc(DType::F32, {T, D});
  cpu_->rms_norm(x, w, 1e-6f, ref);
  gpu_->rms_norm(gx, gw, 1e-6f, gout);
  EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, gout).data(), ref.as<float>(), T * D), 1e-5) << "rms_norm";

  cpu_->add(x, y, ref);
  gpu_->add(gx, gy, gout);
  EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, gout).data(), ref.as<float>(), T * D), 1e-6) << "add";

  Tensor cref = Tensor::host(DType::F32, {T, 2 * D}), gcat = gpu_->alloc(DType::F32, {T, 2 * D});
  cpu_->concat_cols(x, y, cref);
  gpu_->concat_cols(gx, gy, gcat);
  EXPECT_EQ(test::to_host_f32(*gpu_, gcat),
            std::vector<float>(cref.as<float>(), cref.as<float>() + 2 * T * D));

  const std::vector<int32_t> rows{6, 0, 3};
  Tensor gref = Tensor::host(DType::F32, {3, D}), gg = gpu_->alloc(DType::F32, {3, D});
  cpu_->gather_rows(x, rows, gref);
  gpu_->gather_rows(gx, rows, gg);
  EXPECT_EQ(test::to_host_f32(*gpu_, gg), std::vector<float>(gref.as<float>(), gref.as<float>() + 3 * D));

  test::HostWeight table = test::random_weight(rng_, 1000, D, false);
  Weight gtable = gpu_->upload_weight(table.weight);
  const std::vector<int32_t> ids{5, 999, 0, 5};
  Tensor hid = Tensor::host(DType::I32, {4});
  std::copy(ids.begin(), ids.end(), hid.as<int32_t>());
  Tensor eref = Tensor::host(DType::F32, {4, D}), ge = gpu_->alloc(DType::F32, {4, D});
  cpu_->embedding(table.weight, hid, eref);
  gpu_->embedding(gtable, test::to_device(*gpu_, hid), ge);
  EXPECT_EQ(test::to_host_f32(*gpu_, ge), std::vector<float>(eref.as<float>(), eref.as<float>() + 4 * D));
}

}  // namespace
}  // namespace moe
