// The wgmma MLA decode kernels (mla_decode_wgmma.cu, 64 heads per block; mla_decode_narrow.cu, 16 or 32)
// against the CPU backend's MLA and against the mma.sync kernel (mla_attention.cu, forced with
// CudaOptions::mla_decode = Mma) at DeepSeek-V3 widths (r 512, rope 64, nope 128, v 128), 128, 64, 48, 32 and
// 16 heads, contexts 1, 37, 512, 4096, batch 1 and 64, page size 64 (the engine's), pages shuffled across
// sequences, fresh random data (the seed is printed). Tolerances: both GPU kernels take the same BF16
// absorbed query (the absorb kernel) and round the softmax weights P to BF16 (2^-9 relative per product at
// most, ~1.1e-3 rms, accumulated in F32); the output is a weighted average over positions, so the relative L2
// error against the CPU's F32 stays ~1-3e-3 (the mma.sync kernel's measured 0.4-2.6e-3 in
// bench/gpu/NOTES-mla.md). The two kernels round P against different running maxima (32- vs 64-position
// tiles), independent errors of the same size: ~2e-3 between them. Bound 1e-2 for both comparisons. Batch 64
// at contexts 512 and 4096 is compared with the mma.sync kernel only (the CPU reference would take 9 and 73
// GFLOP); the CPU covers every other case, including the split path (batch 1 splits its context).
#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>
#include <numeric>

#include "backend/cuda/cuda_ops.h"
#include "cuda_test_util.h"
#include "model/deepseek_v3.h"

namespace moe {
namespace {

using test::rel_l2;

constexpr int64_t dn = 128, dr = 64, r = 512, dv = 128, W = r + dr, kPage = 64;

struct Case {
  int64_t heads, batch, ctx;
  bool cpu;  // also against the CPU backend
};

class CudaMlaWgmma : public test::GpuVsCpu {
 protected:
  std::unique_ptr<Backend> gpu_with(MlaDecodeKernel k) {
    CudaOptions o;
    o.mla_decode = k;
    return make_cuda_backend(0, o);
  }
  void check(const std::vector<Case>& cases);
};

// Fast random BF16 normals for large caches: a table of 64 Ki values indexed by a xorshift stream.
void fill_bf16_normal(std::mt19937_64& rng, uint16_t* v, int64_t n) {
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::vector<uint16_t> table(1 << 16);
  for (auto& x : table) x = float_to_bf16(nd(rng));
  uint64_t x = rng() | 1;
  for (int64_t i = 0; i < n; ++i) {
    x ^= x << 13;
    x ^= x >> 7;
    x ^= x << 17;
    v[i] = table[(x >> 20) & 0xffff];
  }
}

void CudaMlaWgmma::check(const std::vector<Case>& cases) {
  auto mma = gpu_with(MlaDecodeKernel::Mma), wg = gpu_with(MlaDecodeKernel::Wgmma);
  for (const Case& c : cases) {
    // B sequences of ctx cached positions each (the last one is the step's token), except at batch 3:
    // lengths ctx, ctx / 2 + 1, 1 (every split length, masking inside a tile, empty later splits).
    const int64_t B = c.batch;
    std::vector<int64_t> lens(static_cast<size_t>(B), c.ctx);
    if (B == 3) lens = {c.ctx, c.ctx / 2 + 1, 1};
    int64_t total = 0;
    for (int64_t l : lens) total += (l + kPage - 1) / kPage;
    std::vector<int32_t> ids(static_cast<size_t>(total));
    std::iota(ids.begin(), ids.end(), 0);
    std::shuffle(ids.begin(), ids.end(), rng_);
    std::vector<SequenceChunk> chunks;
    size_t next = 0;
    for (int64_t l : lens) {
      SequenceChunk s;
      for (int64_t p = 0; p < (l + kPage - 1) / kPage; ++p) s.pages.push_back(ids[next++]);
      s.start_pos = int32_t(l - 1);
      s.tokens = {0};
      chunks.push_back(s);
    }
    const BatchPlan plan = plan_batch(chunks, kPage);
    const int64_t T = plan.num_tokens(), H = c.heads;
    Tensor gc = Tensor::host(DType::BF16, {total, kPage, W});
    fill_bf16_normal(rng_, gc.as<uint16_t>(), gc.numel());
    Tensor q = test::random_host(rng_, DType::F32, {T, H, dn + dr});
    test::HostWeight kv_b = test::random_weight(rng_, H * (dn + dv), r, false);
    const float scale = 1.0f / std::sqrt(float(dn + dr));

    auto run_gpu = [&](Backend& g) {
      const DeviceBatch gb = g.upload_batch(plan);
      Tensor out = g.alloc(DType::F32, {T, H * dv});
      const std::vector<float> poison(size_t(T * H * dv), std::numeric_limits<float>::quiet_NaN());
      g.copy_from_host(poison.data(), out);  // every output element must be written
      g.mla_attention(test::to_device(g, q), g.upload_weight(kv_b.weight), test::to_device(g, gc), dn, dv, scale, gb, out);
      return test::to_host_f32(g, out);
    };
    const std::vector<float> got = run_gpu(*wg), old = run_gpu(*mma);
    const int64_t n = T * H * dv;
    const double e_mma = rel_l2(got.data(), old.data(), n);
    double e_cpu = -1.0;
    if (c.cpu) {
      Tensor cc = Tensor::host(DType::F32, {total, kPage, W});
      for (int64_t i = 0; i < gc.numel(); ++i) cc.as<float>()[i] = bf16_to_float(gc.as<uint16_t>()[i]);
      Tensor ref = Tensor::host(DType::F32, {T, H * dv});
      cpu_->mla_attention(q, kv_b.weight, cc, dn, dv, scale, cpu_->upload_batch(plan), ref);
      e_cpu = rel_l2(got.data(), ref.as<float>(), n);
      const double e_old = rel_l2(old.data(), ref.as<float>(), n);
      std::printf("  mma.sync kernel vs CPU: %.2e\n", e_old);
      EXPECT_LE(e_cpu, 1e-2) << H << " heads, batch " << B << ", context " << c.ctx;
    }
    std::printf("mla wgmma: %lld heads, batch %lld, context %lld: rel L2 vs CPU %.2e, vs mma.sync kernel %.2e\n",
                (long long)H, (long long)B, (long long)c.ctx, e_cpu, e_mma);
    EXPECT_LE(e_mma, 1e-2) << H << " heads, batch " << B << ", context " << c.ctx;
  }
}

// Small (also the compute-sanitizer case of scripts/gpu/mlaw.sh): one head tile per token with uneven
// lengths, and 128 heads at a context shorter than a tile; the same for the narrow kernel (16 and 32 heads a
// block).
TEST_F(CudaMlaWgmma, Small) {
  check({{64, 3, 700, true}, {128, 1, 37, true}, {16, 3, 700, true}, {32, 3, 700, true}, {48, 1, 37, true}});
}

TEST_F(CudaMlaWgmma, MatchesCpuAndMmaKernel) {
  check({{128, 1, 1, true}, {128, 1, 37, true}, {128, 1, 512, true}, {128, 1, 4096, true}, {128, 64, 1, true},
         {128, 64, 37, true}, {128, 64, 512, false}, {128, 64, 4096, false}});
}

// 16 heads (Moonlight, DeepSeek-V2-Lite) on the narrow kernel, and 32 (two 16-head groups in one block).
TEST_F(CudaMlaWgmma, NarrowMatchesCpuAndMmaKernel) {
  check({{16, 1, 1, true},
         {16, 1, 37, true},
         {16, 1, 512, true},
         {16, 1, 4096, true},
         {16, 64, 37, true},
         {16, 64, 512, true},
         {16, 64, 4096, false},
         {32, 1, 4096, true},
         {32, 64, 512, true}});
}

// The kernel's two ways of bringing cache tiles into shared memory: tensor-map copies (what the backend takes
// where the cache's rows are known and page runs fill 8-row swizzle groups: page sizes 8 .. 64 dividing 64,
// or multiples of 64) and cp.async (MlaParams::cache_rows 0). Same tiles, same sums: the outputs must match
// bit for bit, at page sizes 8, 16, 64 and 128, lengths that end inside a tile and inside a page (and a
// length of 1), the chosen and forced split counts. Every cache row past its sequence's end, and every unused
// page, holds NaN: the tensor-map path copies whole page runs and must zero the rows past the end (P = 0
// times NaN is NaN).
TEST_F(CudaMlaWgmma, TensorMapTilesEqualCpAsyncTiles) {
  auto g = gpu_with(MlaDecodeKernel::Wgmma);
  cudaDeviceProp prop{};
  ASSERT_EQ(cudaGetDeviceProperties(&prop, 0), cudaSuccess);
  const std::vector<int64_t> lens = {700, 129, 1, 64};
  for (int64_t H : {128, 16, 32})
    for (int32_t ps : {8, 16, 64, 128}) {
      std::vector<SequenceChunk> chunks;
      int64_t total = 0;
      for (int64_t l : lens) total += (l + ps - 1) / ps;
      total += 3;  // unused pages
      std::vector<int32_t> ids(static_cast<size_t>(total));
      std::iota(ids.begin(), ids.end(), 0);
      std::shuffle(ids.begin(), ids.end(), rng_);
      Tensor gc = Tensor::host(DType::BF16, {total, ps, W});
      uint16_t* c = gc.as<uint16_t>();
      std::fill(c, c + gc.numel(), uint16_t(0x7fc0));  // BF16 quiet NaN
      size_t next = 0;
      for (int64_t l : lens) {
        SequenceChunk s;
        for (int64_t p = 0; p < (l + ps - 1) / ps; ++p) {
          s.pages.push_back(ids[next++]);
          const int64_t rows = std::min<int64_t>(ps, l - p * ps);  // the page's rows before the end
          fill_bf16_normal(rng_, c + int64_t(s.pages.back()) * ps * W, rows * W);
        }
        s.start_pos = int32_t(l - 1);
        s.tokens = {0};
        chunks.push_back(s);
      }
      const BatchPlan plan = plan_batch(chunks, ps);
      const int64_t T = plan.num_tokens();
      const DeviceBatch gb = g->upload_batch(plan);
      Tensor cache = test::to_device(*g, gc);
      Tensor qf_host = Tensor::host(DType::BF16, {T, H, W});
      fill_bf16_normal(rng_, qf_host.as<uint16_t>(), qf_host.numel());
      Tensor qf = test::to_device(*g, qf_host);
      const int64_t capacity = int64_t(plan.max_pages) * ps;
      for (int32_t forced : {0, 3}) {
        const int32_t splits =
            cuda::mla_choose_splits(T, H, r, capacity, prop.multiProcessorCount, forced, true);
        Tensor o_part = g->alloc(DType::F32, {splits, T, H, r}), ml = g->alloc(DType::F32, {splits, T, H, 2});
        Tensor o_lat = g->alloc(DType::F32, {T, H, r});
        auto run = [&](bool tma) {
          cuda::MlaParams p;
          p.wgmma = true;
          p.qf = qf.as<const uint16_t>();
          p.cache = cache.as<const uint16_t>();
          p.cache_rows = tma ? total * ps : 0;
          p.block_table = gb.block_table.as<const int32_t>();
          p.token_seq = gb.token_seq.as<const int32_t>();
          p.positions = gb.positions.as<const int32_t>();
          p.max_pages = plan.max_pages;
          p.page_size = ps;
          p.T = int32_t(T);
          p.H = int32_t(H);
          p.r = int32_t(r);
          p.dr = int32_t(dr);
          p.scale = 0.07f;
          p.splits = splits;
          p.o_part = o_part.as<float>();
          p.ml_part = ml.as<float>();
          p.o_lat = o_lat.as<float>();
          g->synchronize();  // the uploads ran on the backend's stream; the kernels run on the default one
          cuda::mla_attention(p, nullptr);
          EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
          return test::to_host_f32(*g, o_lat);
        };
        const std::vector<float> a = run(true), b = run(false);
        const int64_t bad = std::count_if(a.begin(), a.end(), [](float v) { return !std::isfinite(v); });
        EXPECT_EQ(bad, 0) << H << " heads, page size " << ps << ", " << splits << " splits";
        const bool same = std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
        EXPECT_TRUE(same) << H << " heads, page size " << ps << ", " << splits << " splits";
        std::printf("mla wgmma copies: %lld heads, page size %d, %d splits: %lld non-finite, %s\n",
                    (long long)H, ps, splits, (long long)bad, same ? "the same bits" : "DIFFERENT");
      }
    }
}

}  // namespace
}  // namespace moe
