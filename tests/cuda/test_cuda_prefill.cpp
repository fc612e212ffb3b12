// The prefill paths of the CUDA backend against the CPU backend (F32 everywhere) on fresh random data:
//   - MLA in the expanded form (cuda_backend_prefill.cpp, mla_prefill.cu) and, on the same inputs, the
//   absorbed
//     form, at 16 heads (Moonlight), 128 heads (DeepSeek-V3) and the fixture's small heads; several sequences
//     in one batch: a prompt from position 0, a chunk continuing a cached context (start_pos > 0) and a
//     decode token; lengths that are no multiple of the 64-key block or the 128-token tile; BF16 and FP8
//     kv_b.
//   - the routed experts' grouped GEMM (moe_gemm.cu): Moonlight widths, one expert chosen by every token (two
//     128-row tiles), others by few or none; BF16 and FP8 experts; both prefill precisions.
//   - the dense SwiGLU MLP's fused gate + up (moe_gemm.cu with one expert) and the down GEMM.
// Every output is poisoned (NaN) before the GPU writes it, so an unwritten element fails the check.
//
// Tolerances, from the BF16 roundings (2^-9 relative at most, ~2^-9/sqrt(3) = 1.1e-3 rms, independent):
//   attention: the GPU cache is BF16 (the CPU's F32), and the expanded form rounds q, k_nope = W_UK c,
//     v = W_UV c and the probabilities P to BF16 (the absorbed form: the absorbed query and P): 4-5 roundings
//     of ~1.1e-3 each, ~2.5e-3 rms on an output that averages over many positions; bound 1e-2.
//     Expanded against absorbed on the GPU (same cache): bound 1e-2.
//   GEMMs in bf16 mode: x (and h, and a dequantised FP8 weight) rounded once: ~1.1e-3 each, ~2e-3 together;
//     bound 1e-2. Split mode carries ~16 significant bits per input (2^-17): bound 1e-3, as test_cuda_moe.
//   fp8 mode (W8A8 on FP8 weights): see bound() below.
#include <cmath>
#include <cstdlib>
#include <limits>
#include <string>

#include "cuda_test_util.h"
#include "model/deepseek_v3.h"

namespace moe {
namespace {

using test::rel_l2;

RopeParams rope_params(int64_t dr) {
  RopeParams p;
  for (int64_t i = 0; i < dr / 2; ++i) p.inv_freq.push_back(std::pow(10000.0, -2.0 * double(i) / double(dr)));
  p.attn_factor = 1.0;
  return p;
}

// A device tensor filled with NaN.
Tensor poisoned(Backend& gpu, DType dt, Shape shape) {
  Tensor t = gpu.alloc(dt, shape);
  std::vector<float> nan(static_cast<size_t>(t.numel()), std::numeric_limits<float>::quiet_NaN());
  gpu.copy_from_host(nan.data(), t);
  return t;
}

// The MLP bounds (see the top): split 1e-3, bf16 1e-2; fp8 mode with FP8 weights (W8A8): x and h quantised to
// E4M3, relative noise of rms <= 2^-4 / sqrt(3) each on the products through gate / up and down, three such
// contributions (x via gate and via up, h) adding to at most sqrt(3) * 2^-4 / sqrt(3) = 2^-4 (~4 % measured);
// fp8 mode with BF16 weights is bf16 mode.
double bound(const std::string& mode, bool fp8_weights) {
  if (mode == "split") return 1e-3;
  if (mode == "fp8" && fp8_weights) return 0.0625;
  return 1e-2;
}

int64_t count_nan(const std::vector<float>& v) {
  int64_t n = 0;
  for (float x : v) n += std::isnan(x);
  return n;
}

class CudaPrefill : public test::GpuVsCpu {
 protected:
  // gpu_ takes the expanded-form MLA for every batch with a new token (no cost test); gpu_absorbed_ never does.
  void SetUp() override {
    test::GpuVsCpu::SetUp();
    if (IsSkipped()) return;
    CudaOptions expanded;
    expanded.mla_prefill_min_tokens = 1;
    expanded.mla_prefill_always = true;
    gpu_ = make_cuda_backend(0, expanded);
    CudaOptions absorbed;
    absorbed.mla_prefill_min_tokens = 0;
    gpu_absorbed_ = make_cuda_backend(0, absorbed);
  }
  std::unique_ptr<Backend> gpu_absorbed_;  // same device: it reads gpu_'s tensors once gpu_ has synchronised

  // Sequences (context already cached, new tokens) in one batch; pages interleaved between sequences.
  struct Shape3 {
    int64_t H, dn, dr, dv, r;
  };
  void attention_case(const Shape3& s, const std::vector<std::pair<int32_t, int32_t>>& seqs, int64_t page) {
    const int64_t H = s.H, dn = s.dn, dr = s.dr, dv = s.dv, r = s.r, W = r + dr;
    const RopeParams rope = rope_params(dr);
    // Fill plan: every position of every sequence (cached context + the new tokens).
    std::vector<SequenceChunk> fill(seqs.size()), step(seqs.size());
    int32_t next_page = 0;
    std::vector<int64_t> need(seqs.size());
    int64_t total_pages = 0;
    for (size_t i = 0; i < seqs.size(); ++i) {
      need[i] = (seqs[i].first + seqs[i].second + page - 1) / page;
      total_pages += need[i];
    }
    for (int64_t p = 0; p < total_pages;
         ++p) {  // round-robin while a sequence still needs pages, reversed ids
      for (size_t k = 0; k < seqs.size(); ++k) {
        const size_t i = (size_t(p) + k) % seqs.size();
        if (int64_t(fill[i].pages.size()) < need[i]) {
          fill[i].pages.push_back(int32_t(total_pages - 1 - next_page++));
          break;
        }
      }
    }
    for (size_t i = 0; i < seqs.size(); ++i) {
      fill[i].tokens.assign(size_t(seqs[i].first + seqs[i].second), 0);
      step[i] = fill[i];
      step[i].start_pos = seqs[i].first;
      step[i].tokens.assign(size_t(seqs[i].second), 0);
    }
    const BatchPlan fp = plan_batch(fill, page), sp = plan_batch(step, page);
    Tensor kv_a = test::random_host(rng_, DType::F32, {fp.num_tokens(), W}),
           norm = test::random_host(rng_, DType::BF16, {r}, 0.5f);
    Weight nw;
    nw.w = norm.view();
    Tensor ccache = Tensor::host(DType::F32, {total_pages, page, W});
    Tensor gcache = gpu_->alloc(DType::BF16, {total_pages, page, W});
    {
      const DeviceBatch cb = cpu_->upload_batch(fp), gb = gpu_->upload_batch(fp);
      cpu_->mla_write_cache(kv_a, nw, 1e-6f, rope, cb, ccache);
      gpu_->mla_write_cache(test::to_device(*gpu_, kv_a), gpu_->upload_weight(nw), 1e-6f, rope, gb, gcache);
    }
    const int64_t T = sp.num_tokens();
    const DeviceBatch cb = cpu_->upload_batch(sp), gb = gpu_->upload_batch(sp);
    Tensor q = test::random_host(rng_, DType::F32, {T, H, dn + dr});
    Tensor gq = test::to_device(*gpu_, q);
    cpu_->mla_rope_q(q, dn, rope, cb);
    gpu_->mla_rope_q(gq, dn, rope, gb);
    for (bool fp8 : {false, true}) {
      test::HostWeight kv_b = test::random_weight(rng_, H * (dn + dv), r, fp8);
      const Weight gkv_b = gpu_->upload_weight(kv_b.weight);
      const float scale = 1.0f / std::sqrt(float(dn + dr));
      Tensor ref = Tensor::host(DType::F32, {T, H * dv});
      cpu_->mla_attention(q, kv_b.weight, ccache, dn, dv, scale, cb, ref);
      std::vector<float> got[2];
      for (int expanded : {1, 0}) {
        Backend& g = expanded ? *gpu_ : *gpu_absorbed_;
        gpu_->synchronize();
        Tensor out = poisoned(g, DType::F32, {T, H * dv});
        g.mla_attention(gq, gkv_b, gcache, dn, dv, scale, gb, out);
        got[expanded] = test::to_host_f32(g, out);
        EXPECT_EQ(count_nan(got[expanded]), 0) << "unwritten or NaN outputs, expanded=" << expanded;
        const double err = rel_l2(got[expanded].data(), ref.as<float>(), T * H * dv);
        std::printf("H=%lld T=%lld fp8 kv_b=%d %s: rel L2 vs CPU %.2e\n", static_cast<long long>(H),
                    static_cast<long long>(T), int(fp8), expanded ? "expanded" : "absorbed", err);
        EXPECT_LE(err, 1e-2) << "H=" << H << " fp8=" << fp8 << " expanded=" << expanded;
      }
      const double diff = rel_l2(got[1].data(), got[0].data(), T * H * dv);
      std::printf("H=%lld fp8 kv_b=%d: expanded vs absorbed %.2e\n", static_cast<long long>(H), int(fp8),
                  diff);
      EXPECT_LE(diff, 1e-2) << "H=" << H << " fp8=" << fp8;
    }
  }
};

// (cached positions, new tokens) per sequence.
TEST_F(CudaPrefill, ExpandedMlaMoonlightHeads) {
  attention_case({16, 128, 64, 128, 512}, {{0, 300}, {517, 130}, {1000, 1}, {0, 77}}, 64);
}

TEST_F(CudaPrefill, ExpandedMlaDeepSeekV3Heads) {
  attention_case({128, 128, 64, 128, 512}, {{0, 150}, {300, 70}, {400, 1}}, 64);
}

TEST_F(CudaPrefill, ExpandedMlaFixtureHeads) {
  attention_case({4, 64, 32, 64, 128}, {{0, 100}, {33, 40}, {7, 1}}, 16);
}

// Routed experts on the grouped-GEMM path: 32 experts of Moonlight's widths, top-6, 200 tokens (37.5 rows per
// expert on average: the GEMM path), expert 0 chosen by every token (200 rows: a full and a partial tile),
// experts 28..31 by none.
TEST_F(CudaPrefill, GroupedExpertsMatchCpu) {
  const int64_t E = 32, D = 2048, I = 1408, K = 6, T = 200;
  for (bool fp8 : {false, true}) {
    const test::HostExperts hx = test::random_experts(rng_, E, D, I, fp8);
    const ExpertWeights& host = hx.weights;
    Tensor x = test::random_host(rng_, DType::F32, {T, D}),
           plus = test::random_host(rng_, DType::F32, {T, D});
    Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
    std::vector<int32_t> perm;
    for (int32_t e = 1; e < 28; ++e) perm.push_back(e);
    for (int64_t t = 0; t < T; ++t) {
      std::shuffle(perm.begin(), perm.end(), rng_);
      for (int64_t j = 0; j < K; ++j) {
        ids.as<int32_t>()[t * K + j] = j == 0 ? 0 : perm[size_t(j)];
        w.as<float>()[t * K + j] = std::uniform_real_distribution<float>(0.1f, 1.0f)(rng_);
      }
    }
    Tensor ref = Tensor::host(DType::F32, {T, D});
    cpu_->moe_experts(x, host, ids, w, plus, ref);
    for (const char* mode : {"bf16", "split", "fp8"}) {
      CudaOptions o;
      o.prefill = parse_cuda_prefill(mode);
      auto gpu = make_cuda_backend(0, o);
      const ExpertWeights d2 = test::upload_experts(*gpu, host);
      Tensor gout = poisoned(*gpu, DType::F32, {T, D});
      gpu->moe_experts(test::to_device(*gpu, x), d2, test::to_device(*gpu, ids), test::to_device(*gpu, w),
                       test::to_device(*gpu, plus), gout);
      const std::vector<float> got = test::to_host_f32(*gpu, gout);
      EXPECT_EQ(count_nan(got), 0) << mode << " fp8=" << fp8;
      const double err = rel_l2(got.data(), ref.as<float>(), T * D);
      std::printf("grouped experts %s fp8=%d: rel L2 vs CPU %.2e\n", mode, int(fp8), err);
      EXPECT_LE(err, bound(mode, fp8)) << mode << " fp8=" << fp8;
    }
  }
}

// Dense SwiGLU MLP (shared-expert width) for token counts around the 128-row tile.
TEST_F(CudaPrefill, DenseSwigluMatchesCpu) {
  const int64_t D = 2048, I = 2816;
  for (bool fp8 : {false, true}) {
    test::HostWeight g = test::random_weight(rng_, I, D, fp8), u = test::random_weight(rng_, I, D, fp8),
                     d = test::random_weight(rng_, D, I, fp8);
    MlpWeights hm{g.weight, u.weight, d.weight};
    for (int64_t T : {9, 200}) {
      Tensor x = test::random_host(rng_, DType::F32, {T, D}), ref = Tensor::host(DType::F32, {T, D});
      cpu_->swiglu_mlp(x, hm, ref);
      for (const char* mode : {"bf16", "split", "fp8"}) {
        CudaOptions o;
        o.prefill = parse_cuda_prefill(mode);
        auto gpu = make_cuda_backend(0, o);
        MlpWeights gm{gpu->upload_weight(g.weight), gpu->upload_weight(u.weight),
                      gpu->upload_weight(d.weight)};
        Tensor gout = poisoned(*gpu, DType::F32, {T, D});
        gpu->swiglu_mlp(test::to_device(*gpu, x), gm, gout);
        const std::vector<float> got = test::to_host_f32(*gpu, gout);
        EXPECT_EQ(count_nan(got), 0) << mode << " T=" << T << " fp8=" << fp8;
        const double err = rel_l2(got.data(), ref.as<float>(), T * D);
        std::printf("swiglu %s T=%lld fp8=%d: rel L2 vs CPU %.2e\n", mode, static_cast<long long>(T),
                    int(fp8), err);
        EXPECT_LE(err, bound(mode, fp8)) << mode << " T=" << T << " fp8=" << fp8;
      }
    }
  }
}

}  // namespace
}  // namespace moe
