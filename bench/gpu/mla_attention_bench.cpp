// MLA decode attention alone (backend op mla_attention: query absorption, split-KV attention over the paged
// BF16 latent cache, combine, W_UV): batch B sequences of `context` cached tokens, one new token each.
// Reports the latent-cache bytes read per call over the time, against a device-to-device copy measured in
// the same run. Usage: bench_mla_attention [batch=64] [context=4096] [heads=16] [reps=20]
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

int main(int argc, char** argv) {
  const int64_t B = argc > 1 ? std::atoll(argv[1]) : 64, ctx = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int64_t H = argc > 3 ? std::atoll(argv[3]) : 16;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 20;
  const int64_t dn = 128, dr = 64, r = 512, dv = 128, W = r + dr, page = 64;
  if (!cuda_backend_available()) {
    fmt::print("no CUDA device\n");
    return 1;
  }
  auto gpu = make_cuda_backend(0);
  const double bw = cuda::measure_copy_bandwidth(size_t(2) << 30);
  std::mt19937 rng(1);
  std::normal_distribution<float> n(0.0f, 1.0f);

  const int64_t pps = (ctx + page) / page;
  std::vector<SequenceChunk> chunks(static_cast<size_t>(B));
  for (int64_t s = 0; s < B; ++s) {
    chunks[size_t(s)].tokens = {0};
    chunks[size_t(s)].start_pos = int32_t(ctx);
    for (int64_t p = 0; p < pps; ++p) chunks[size_t(s)].pages.push_back(int32_t(s * pps + p));
  }
  const BatchPlan plan = plan_batch(chunks, page);
  const DeviceBatch batch = gpu->upload_batch(plan);

  std::vector<uint16_t> host(size_t(B * pps * page * W));
  for (auto& v : host) v = float_to_bf16(n(rng));
  Tensor cache = gpu->alloc(DType::BF16, {B * pps, page, W});
  gpu->copy_from_host(host.data(), cache);
  std::vector<float> q(size_t(B * H * (dn + dr)));
  for (auto& v : q) v = n(rng);
  Tensor gq = gpu->alloc(DType::F32, {B, H, dn + dr});
  gpu->copy_from_host(q.data(), gq);
  std::vector<uint16_t> kvb(size_t(H * (dn + dv) * r));
  for (auto& v : kvb) v = float_to_bf16(n(rng) / std::sqrt(float(r)));
  Tensor hkvb = Tensor::host(DType::BF16, {H * (dn + dv), r});
  std::copy(kvb.begin(), kvb.end(), hkvb.as<uint16_t>());
  Weight w;
  w.w = hkvb.view();
  const Weight gw = gpu->upload_weight(w);
  Tensor out = gpu->alloc(DType::F32, {B, H * dv});

  auto call = [&] { gpu->mla_attention(gq, gw, cache, dn, dv, 1.0f / std::sqrt(192.0f), batch, out); };
  for (int i = 0; i < 3; ++i) call();
  gpu->synchronize();
  std::vector<double> ms;
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    call();
    gpu->synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  std::sort(ms.begin(), ms.end());
  const double med = ms[ms.size() / 2];
  const double bytes = double(B) * double(ctx + 1) * double(W) * 2.0;
  fmt::print("device: {}\n", cuda::device_name());
  fmt::print("mla decode attention: batch {} context {} heads {}: {:.3f} ms (median of {}), latent cache {:.1f} MB read"
             " -> {:.0f} GB/s = {:.1f}% of the measured copy bandwidth {:.0f} GB/s\n",
             B, ctx, H, med, reps, bytes / 1e6, bytes / (med * 1e-3) / 1e9, 100.0 * bytes / (med * 1e-3) / bw, bw / 1e9);
  return 0;
}
