// MLA ops on the GPU against the CPU backend at DeepSeek-V3 widths (128 heads, nope 128, rope 64, v 128,
// kv_lora 512), two sequences with interleaved pages, a decode token and a 40-token prefill chunk.
// Tolerances: the GPU cache is BF16 (the CPU's F32): rounding is 2^-9 relative at most, ~2^-9/sqrt(3) rms,
// so the cache compares within 4e-3. Attention adds two more BF16 roundings feeding the tensor cores (the
// absorbed query and the softmax weights P), each ~1e-3 rms relative and independent, and the output is an
// average over many positions (errors shrink, not grow): ~3e-3 expected, bound 2e-2.
#include <cmath>

#include "cuda_test_util.h"
#include "model/deepseek_v3.h"

namespace moe {
namespace {

using test::rel_l2;

constexpr int64_t H = 128, dn = 128, dr = 64, r = 512, dv = 128, W = r + dr, kPage = 64;

RopeParams rope_params() {
  RopeParams p;
  for (int64_t i = 0; i < dr / 2; ++i) p.inv_freq.push_back(std::pow(10000.0, -2.0 * double(i) / double(dr)));
  p.attn_factor = 1.0;
  return p;
}

class CudaMla : public test::GpuVsCpu {};

TEST_F(CudaMla, CacheWriteRopeAndAttention) {
  const RopeParams rope = rope_params();
  const int64_t len0 = 700, len1 = 1500, p0 = (len0 + kPage - 1) / kPage, p1 = (len1 + kPage - 1) / kPage, pages = p0 + p1;
  SequenceChunk s0, s1;
  for (int32_t p = 0; p < int32_t(pages); ++p) {  // interleaved while both need pages, in reverse order
    const bool to0 = int64_t(s1.pages.size()) >= p1 || (p % 2 && int64_t(s0.pages.size()) < p0);
    (to0 ? s0.pages : s1.pages).push_back(int32_t(pages) - 1 - p);
  }
  s0.tokens.assign(size_t(len0), 0);
  s1.tokens.assign(size_t(len1), 0);
  const BatchPlan fill = plan_batch({s0, s1}, kPage);
  const int64_t Tf = fill.num_tokens();

  // Fill both caches from the same random kv_a rows.
  Tensor kv_a = test::random_host(rng_, DType::F32, {Tf, W}), norm = test::random_host(rng_, DType::BF16, {r}, 0.5f);
  Weight nw;
  nw.w = norm.view();
  Tensor ccache = Tensor::host(DType::F32, {pages, kPage, W});
  Tensor gcache = gpu_->alloc(DType::BF16, {pages, kPage, W});
  {
    const DeviceBatch cb = cpu_->upload_batch(fill), gb = gpu_->upload_batch(fill);
    cpu_->mla_write_cache(kv_a, nw, 1e-6f, rope, cb, ccache);
    gpu_->mla_write_cache(test::to_device(*gpu_, kv_a), gpu_->upload_weight(nw), 1e-6f, rope, gb, gcache);
    EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, gcache).data(), ccache.as<float>(), ccache.numel()), 4e-3) << "cache";
  }

  // Step: 40 new tokens of sequence 0 (a prefill chunk) and 1 of sequence 1 (decode), over the full caches.
  SequenceChunk a = s0, b = s1;
  a.start_pos = int32_t(len0 - 40);
  a.tokens.assign(40, 0);
  b.start_pos = int32_t(len1 - 1);
  b.tokens.assign(1, 0);
  const BatchPlan step = plan_batch({a, b}, kPage);
  const int64_t T = step.num_tokens();
  const DeviceBatch cb = cpu_->upload_batch(step), gb = gpu_->upload_batch(step);
  Tensor q = test::random_host(rng_, DType::F32, {T, H, dn + dr});
  Tensor gq = test::to_device(*gpu_, q);
  cpu_->mla_rope_q(q, dn, rope, cb);
  gpu_->mla_rope_q(gq, dn, rope, gb);
  EXPECT_LE(rel_l2(test::to_host_f32(*gpu_, gq).data(), q.as<float>(), q.numel()), 1e-6) << "rope_q";

  for (bool fp8 : {false, true}) {
    test::HostWeight kv_b = test::random_weight(rng_, H * (dn + dv), r, fp8);
    const float scale = 1.0f / std::sqrt(float(dn + dr));
    Tensor ref = Tensor::host(DType::F32, {T, H * dv}), gout = gpu_->alloc(DType::F32, {T, H * dv});
    cpu_->mla_attention(q, kv_b.weight, ccache, dn, dv, scale, cb, ref);
    gpu_->mla_attention(gq, gpu_->upload_weight(kv_b.weight), gcache, dn, dv, scale, gb, gout);
    const std::vector<float> got = test::to_host_f32(*gpu_, gout);
    const double err = rel_l2(got.data(), ref.as<float>(), T * H * dv);
    std::printf("mla_attention rel L2 error (fp8 kv_b=%d): %.2e\n", int(fp8), err);
    EXPECT_LE(err, 2e-2) << "fp8=" << fp8;
  }
}

}  // namespace
}  // namespace moe
