// MLA ops on the GPU against the CPU backend at DeepSeek-V3 widths (128 heads, nope 128, rope 64, v 128,
// kv_lora 512): the cache write, query rope and attention on two sequences with interleaved pages (a decode
// token and a 40-token prefill chunk), then the attention alone over shapes that exercise its split logic
// and over widths only the general kernel handles.
// Tolerances: the GPU cache is BF16 (the CPU's F32): rounding is 2^-9 relative at most, ~2^-9/sqrt(3) rms,
// so the cache compares within 4e-3. Attention adds two more BF16 roundings feeding the tensor cores (the
// absorbed query and the softmax weights P), each ~1e-3 rms relative and independent, and the output is an
// average over many positions (errors shrink, not grow): ~3e-3 expected, bound 2e-2.
#include <algorithm>
#include <cmath>
#include <limits>
#include <numeric>

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


// The attention op alone on caches that hold the same BF16 values on both sides (the cache rounding is then
// not part of the comparison): every sequence has `len` cached positions of which the last `tokens` are the
// step's new tokens (causal: token t sees positions 0 .. its own), and `pages` pages (more than it needs:
// the GPU's split count follows the capacity max_pages * page_size, so the later splits see no positions).
// Pages are shuffled across sequences. Error sources left: the BF16 absorbed query and the BF16 softmax
// weights P feeding the tensor cores, each ~2^-9/sqrt(3) = 1.1e-3 rms relative and independent; the output
// averages over positions (errors shrink), so ~2e-3 is expected and 1e-2 is the bound.
struct SeqSpec {
  int64_t len, tokens, pages;
};

struct Widths {
  int64_t r = 512, dr = 64, dn = 128, dv = 128;  // DeepSeek-V3 / Moonlight
};

double attention_error(Backend& cpu, Backend& gpu, std::mt19937_64& rng, int64_t heads, int64_t page,
                       const std::vector<SeqSpec>& seqs, bool fp8, Widths wd) {
  const int64_t r = wd.r, dr = wd.dr, dn = wd.dn, dv = wd.dv, W = r + dr;
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
  Tensor gc = test::random_host(rng, DType::BF16, {total, page, W});
  Tensor cc = Tensor::host(DType::F32, {total, page, W});
  for (int64_t i = 0; i < gc.numel(); ++i) cc.as<float>()[i] = bf16_to_float(gc.as<uint16_t>()[i]);
  Tensor q = test::random_host(rng, DType::F32, {T, heads, dn + dr});
  test::HostWeight kv_b = test::random_weight(rng, heads * (dn + dv), r, fp8);
  const float scale = 1.0f / std::sqrt(float(dn + dr));
  const DeviceBatch cb = cpu.upload_batch(plan), gb = gpu.upload_batch(plan);
  Tensor ref = Tensor::host(DType::F32, {T, heads * dv});
  cpu.mla_attention(q, kv_b.weight, cc, dn, dv, scale, cb, ref);
  Tensor gout = gpu.alloc(DType::F32, {T, heads * dv});
  const std::vector<float> poison(size_t(T * heads * dv), std::numeric_limits<float>::quiet_NaN());
  gpu.copy_from_host(poison.data(), gout);  // every output element must be written
  gpu.mla_attention(test::to_device(gpu, q), gpu.upload_weight(kv_b.weight), test::to_device(gpu, gc), dn, dv, scale,
                    gb, gout);
  const std::vector<float> got = test::to_host_f32(gpu, gout);
  return rel_l2(got.data(), ref.as<float>(), T * heads * dv);
}

TEST_F(CudaMla, AttentionShapes) {
  struct Case {
    const char* name;
    int64_t heads, page;
    std::vector<SeqSpec> seqs;
    bool fp8;
    Widths widths = {};
  };
  const std::vector<Case> cases = {
      {"batch 1, context 4097 (many splits)", 16, 64, {{4097, 1, 65}}, false},
      {"batch 1, 100 positions in a 8192 capacity (empty splits)", 16, 64, {{100, 1, 128}}, false},
      {"mixed lengths, page 16", 16, 16,
       {{1, 1, 2}, {2, 1, 1}, {31, 1, 2}, {32, 1, 2}, {33, 1, 3}, {64, 1, 4}, {65, 1, 5}, {100, 1, 7}, {500, 1, 32},
        {1000, 1, 63}, {2049, 1, 129}, {3000, 1, 190}},
       false},
      {"several tokens per sequence (causal)", 16, 64, {{300, 77, 6}, {1, 1, 1}, {2000, 1, 40}, {129, 2, 3}}, true},
      {"batch 64, context 200..1000", 16, 64, {}, false},
      {"128 heads, mixed lengths and a prefill chunk", 128, 64, {{5, 1, 1}, {700, 1, 12}, {1500, 40, 30}, {33, 3, 1}}, false},
      {"128 heads, batch 1, context 3000, page 16", 128, 16, {{3000, 1, 200}}, true},
      {"fixture widths (r 128, rope 32), 4 heads", 4, 16, {{1, 1, 1}, {90, 1, 8}, {700, 5, 50}}, false, {128, 32, 64, 64}},
      {"r 256, rope 64, 40 heads", 40, 64, {{1000, 1, 16}, {77, 3, 2}}, false, {256, 64, 128, 128}},
      // Widths no tensor-core kernel is compiled for: the general kernel (mla_attention_generic.cu) and the
      // absorption's partial last column tile (r not a multiple of 64).
      {"general path: tiny V3.2 widths (r 80, rope 16), 5 heads", 5, 16, {{1, 1, 1}, {90, 1, 8}, {300, 7, 20}}, false,
       {80, 16, 32, 24}},
      {"general path: r 200, rope 24, 3 heads, FP8 kv_b", 3, 64, {{1000, 1, 16}, {77, 3, 2}}, true, {200, 24, 40, 56}},
  };
  for (Case c : cases) {
    if (c.seqs.empty())
      for (int64_t i = 0; i < 64; ++i) c.seqs.push_back({200 + 13 * i, 1, 16});
    const double err = attention_error(*cpu_, *gpu_, rng_, c.heads, c.page, c.seqs, c.fp8, c.widths);
    std::printf("mla_attention %s: rel L2 error %.2e\n", c.name, err);
    EXPECT_LE(err, 1e-2) << c.name;
  }
}

}  // namespace
}  // namespace moe
