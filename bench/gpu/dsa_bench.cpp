// DeepSeek-V3.2's sparse decode attention against dense MLA on the GPU, at DeepSeek-V3.2's widths (128 heads,
// r 512, rope 64; indexer 64 heads of 128, top 2048): batch B sequences of `context` cached tokens (page 64), one
// new token each, random BF16 latent and index caches. Times, per decode step of one layer (backend ops on the
// backend's stream, host clock around the ops and a synchronize, median of `reps`):
//   dense:  mla_latent_attention over every cached position (the tensor-core split-KV kernel);
//   sparse: dsa_index_scores + dsa_topk + mla_sparse_latent_attention over the 2048 chosen positions, and each
//           of the three alone.
// The absorption and W_UV are the same on both sides and left out. Reported with the latent-cache bytes the dense
// kernel must read (B * context * 576 * 2) and the device-to-device copy rate measured in the same run.
// Usage: bench_dsa [batch=1] [context=32768] [reps=20]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/ceilings.h"
#include "model/deepseek_v3.h"

using namespace moe;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

Tensor random_bf16(Backend& b, Shape shape, std::mt19937& rng) {
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<uint16_t> table(1 << 16);
  for (auto& v : table) v = float_to_bf16(n(rng));
  Tensor h = Tensor::host(DType::BF16, shape);
  uint32_t x = rng() | 1u;
  for (int64_t i = 0; i < h.numel(); ++i) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    h.as<uint16_t>()[i] = table[x & 0xffff];
  }
  Tensor d = b.alloc(DType::BF16, shape);
  b.copy_from_host(h.data(), d);
  return d;
}

Tensor random_f32(Backend& b, Shape shape, std::mt19937& rng, float lo, float hi) {
  std::uniform_real_distribution<float> u(lo, hi);
  Tensor h = Tensor::host(DType::F32, shape);
  for (int64_t i = 0; i < h.numel(); ++i) h.as<float>()[i] = u(rng);
  Tensor d = b.alloc(DType::F32, shape);
  b.copy_from_host(h.data(), d);
  return d;
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t B = argc > 1 ? std::atoll(argv[1]) : 1, ctx = argc > 2 ? std::atoll(argv[2]) : 32768;
  const int reps = argc > 3 ? std::atoi(argv[3]) : 20;
  const int64_t H = 128, r = 512, dr = 64, W = r + dr, Hi = 64, Di = 128, K = 2048, page = 64;
  if (!cuda_backend_available()) {
    fmt::print("no CUDA device\n");
    return 1;
  }
  auto gpu = make_cuda_backend(0);
  const double bw = cuda::measure_copy_bandwidth(0, size_t(2) << 30);
  std::mt19937 rng(1);

  const int64_t pps = (ctx + page) / page;  // pages per sequence: context + the new token
  std::vector<SequenceChunk> chunks(static_cast<size_t>(B));
  for (int64_t s = 0; s < B; ++s) {
    chunks[size_t(s)].tokens = {0};
    chunks[size_t(s)].start_pos = int32_t(ctx);
    for (int64_t p = 0; p < pps; ++p) chunks[size_t(s)].pages.push_back(int32_t(s * pps + p));
  }
  const BatchPlan plan = plan_batch(chunks, page);
  const DeviceBatch batch = gpu->upload_batch(plan);
  const int64_t L = int64_t(plan.max_pages) * plan.page_size;

  Tensor cache = random_bf16(*gpu, {B * pps, page, W}, rng);
  Tensor icache = random_bf16(*gpu, {B * pps, page, Di}, rng);
  Tensor qf = random_bf16(*gpu, {B, H, W}, rng);
  Tensor iq = random_f32(*gpu, {B, Hi, Di}, rng, -1.0f, 1.0f);
  Tensor iw = random_f32(*gpu, {B, Hi}, rng, 0.0f, 1.0f);
  Tensor scores = gpu->alloc(DType::F32, {B, L}), chosen = gpu->alloc(DType::I32, {B, K});
  Tensor o_lat = gpu->alloc(DType::F32, {B, H, r});
  const float scale = 1.0f / std::sqrt(192.0f);

  auto time_ms = [&](auto&& f) {
    f();
    gpu->synchronize();
    std::vector<double> ms;
    for (int i = 0; i < reps; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      f();
      gpu->synchronize();
      ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
    }
    return median(ms);
  };
  const double dense = time_ms([&] { gpu->mla_latent_attention(qf, cache, scale, batch, o_lat, {}); });
  const double sc = time_ms([&] { gpu->dsa_index_scores(iq, iw, icache, 0.088f, 0.125f, batch, scores); });
  const double tk = time_ms([&] { gpu->dsa_topk(scores, batch, chosen); });
  const double sa = time_ms([&] { gpu->mla_sparse_latent_attention(qf, cache, scale, batch, chosen, o_lat, {}); });
  const double sparse = time_ms([&] {
    gpu->dsa_index_scores(iq, iw, icache, 0.088f, 0.125f, batch, scores);
    gpu->dsa_topk(scores, batch, chosen);
    gpu->mla_sparse_latent_attention(qf, cache, scale, batch, chosen, o_lat, {});
  });
  const double bytes = double(B) * double(ctx) * double(W) * 2.0;
  fmt::print("device copy bandwidth {:.0f} GB/s\n", bw / 1e9);
  fmt::print("batch {} context {}: dense MLA {:.3f} ms ({:.0f} GB/s of latent, {:.0f} % of copy) | sparse {:.3f} ms "
             "(scores {:.3f}, top-k {:.3f}, attention over {} {:.3f}) | sparse/dense {:.2f}x\n",
             B, ctx, dense, bytes / dense / 1e6, 100.0 * bytes / dense / 1e6 / (bw / 1e9), sparse, sc, tk, K, sa,
             sparse / dense);
  return 0;
}
