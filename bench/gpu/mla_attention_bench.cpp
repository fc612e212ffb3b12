// MLA decode attention alone: batch B sequences of `context` cached tokens (page size 64), one new token
// each, H heads at DeepSeek-V3 widths (r 512, rope 64, nope 128, v 128), random BF16 cache and weights.
// Reports, against a device-to-device copy measured in the same run:
//   kernels: the attention kernels alone (cuda::mla_attention: attention + split combine), CUDA events around
//            each call, median; and the absorption kernel alone;
//   backend op: CudaBackend::mla_attention (absorb + attention + combine + W_UV, the backend's choice of
//            kernels and GEMMs): 16 calls captured as one CUDA graph by the backend and replayed (as decode
//            steps run), per call; host clock around call + synchronize (median; includes the host enqueue
//            and launch latency); 16 calls back to back, per call.
// Every call reads a different copy of the cache (as many copies as make 2x the L2 size), so small batches
// are not timed out of L2. Cache rate = latent-cache bytes (B * (context + 1) * 576 * 2) over the time;
// FLOPs = 2 * (576 + 512) * H per cached position (scores and P V).
// Where a wgmma kernel applies (heads a multiple of 16), the attention kernels are timed both ways in the
// same run (mma.sync: mla_attention.cu, wgmma: mla_decode_wgmma.cu at multiples of 64 heads, else
// mla_decode_narrow.cu; each with its own split count), the wgmma kernel with both of its ways of filling
// shared memory (tensor-map copies, cp.async: same bits, checked); the backend op uses the
// backend's choice (cuda::mla_wgmma_preferred), or `kernel` forces one. Usage: bench_mla_attention [batch=64]
// [context=4096] [heads=16] [reps=20] [splits=0] [kernel=auto|mma|wgmma, default CudaOptions']
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/ceilings.h"
#include "backend/cuda/cuda_ops.h"
#include "model/deepseek_v3.h"

using namespace moe;

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

}  // namespace

int main(int argc, char** argv) {
  const int64_t B = argc > 1 ? std::atoll(argv[1]) : 64, ctx = argc > 2 ? std::atoll(argv[2]) : 4096;
  const int64_t H = argc > 3 ? std::atoll(argv[3]) : 16;
  const int reps = argc > 4 ? std::atoi(argv[4]) : 20;
  const int32_t forced_splits = argc > 5 ? std::atoi(argv[5]) : 0;  // 0: the backend's choice
  const int64_t dn = 128, dr = 64, r = 512, dv = 128, W = r + dr, page = 64;
  if (!cuda_backend_available()) {
    fmt::print("no CUDA device\n");
    return 1;
  }
  CudaOptions options;
  options.mla_splits = forced_splits;
  if (argc > 6) options.mla_decode = parse_mla_decode_kernel(argv[6]);
  const bool has_wgmma = cuda::mla_wgmma_applies(H, r, dr);
  const bool use_wgmma = has_wgmma && options.mla_decode != MlaDecodeKernel::Mma &&
                         (options.mla_decode == MlaDecodeKernel::Wgmma ||
                          cuda::mla_wgmma_preferred(B, H, (ctx + page) / page * page));
  auto gpu = make_cuda_backend(0, options);
  const double bw = cuda::measure_copy_bandwidth(0, size_t(2) << 30);
  cudaDeviceProp prop{};
  MOE_CUDA_CHECK(cudaGetDeviceProperties(&prop, 0));

  // Cache copies: pages of copy c, sequence s: (c * B + s) * pps ... + pps - 1.
  const int64_t pps = (ctx + page) / page, copy_pages = B * pps;
  const int64_t copy_bytes = copy_pages * page * W * 2;
  const int64_t copies = std::clamp<int64_t>((2 * int64_t(prop.l2CacheSize) + copy_bytes - 1) / copy_bytes, 1, 256);
  std::vector<BatchPlan> plans;
  std::vector<DeviceBatch> batches;
  for (int64_t c = 0; c < copies; ++c) {
    std::vector<SequenceChunk> chunks(static_cast<size_t>(B));
    for (int64_t s = 0; s < B; ++s) {
      chunks[size_t(s)].tokens = {0};
      chunks[size_t(s)].start_pos = int32_t(ctx);
      for (int64_t p = 0; p < pps; ++p) chunks[size_t(s)].pages.push_back(int32_t((c * B + s) * pps + p));
    }
    plans.push_back(plan_batch(chunks, page));
  }
  for (const auto& pl : plans) batches.push_back(gpu->upload_batch(pl));

  // Random BF16 normals (a table of 64 Ki values indexed by a xorshift stream: fast for 300 MB).
  std::mt19937 rng(1);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::vector<uint16_t> table(1 << 16);
  for (auto& v : table) v = float_to_bf16(n(rng));
  std::vector<uint16_t> host(size_t(copy_pages * page * W));
  uint32_t x = 2463534242u;
  for (auto& v : host) {
    x ^= x << 13;
    x ^= x >> 17;
    x ^= x << 5;
    v = table[x & 0xffff];
  }
  Tensor cache = gpu->alloc(DType::BF16, {copies * copy_pages, page, W});
  for (int64_t c = 0; c < copies; ++c) {
    TensorView part = cache.view();
    part.shape = Shape{copy_pages, page, W};
    part.data = static_cast<char*>(part.data) + c * copy_bytes;
    gpu->copy_from_host(host.data(), part);
  }
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
  const float scale = 1.0f / std::sqrt(192.0f);

  // Direct kernel calls on our own stream, with buffers sized as the backend sizes them.
  const int32_t splits_mma = cuda::mla_choose_splits(B, H, r, pps * page, prop.multiProcessorCount, forced_splits);
  const int32_t splits_wg =
      has_wgmma ? cuda::mla_choose_splits(B, H, r, pps * page, prop.multiProcessorCount, forced_splits, true) : 0;
  const int32_t splits = std::max(splits_mma, splits_wg);  // scratch for either
  const int32_t splits_used = use_wgmma ? splits_wg : splits_mma;
  Tensor qf = gpu->alloc(DType::BF16, {B, H, W}), o_lat = gpu->alloc(DType::F32, {B, H, r});
  Tensor o_part = gpu->alloc(DType::F32, {splits, B, H, r}), ml = gpu->alloc(DType::F32, {splits, B, H, 2});
  cuda::WeightRef kref;
  kref.data = gw.w.data;
  kref.dtype = DType::BF16;
  kref.rows = H * (dn + dv);
  kref.cols = r;
  // tma: the wgmma kernel's cache tiles by tensor-map copies (the cache's row count known), else by cp.async.
  auto params = [&](int64_t c, bool wgmma, bool tma = true) {
    cuda::MlaParams p;
    p.wgmma = wgmma;
    p.qf = qf.as<const uint16_t>();
    p.cache = cache.as<const uint16_t>();
    p.cache_rows = tma ? cache.numel() / W : 0;
    p.block_table = batches[size_t(c)].block_table.as<const int32_t>();
    p.token_seq = batches[size_t(c)].token_seq.as<const int32_t>();
    p.positions = batches[size_t(c)].positions.as<const int32_t>();
    p.max_pages = plans[size_t(c)].max_pages;
    p.page_size = int32_t(page);
    p.T = int32_t(B);
    p.H = int32_t(H);
    p.r = int32_t(r);
    p.dr = int32_t(dr);
    p.scale = scale;
    p.splits = wgmma ? splits_wg : splits_mma;
    p.o_part = o_part.as<float>();
    p.ml_part = ml.as<float>();
    p.o_lat = o_lat.as<float>();
    return p;
  };

  gpu->synchronize();
  cudaStream_t st;
  MOE_CUDA_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  cudaEvent_t e0, e1;
  MOE_CUDA_CHECK(cudaEventCreate(&e0));
  MOE_CUDA_CHECK(cudaEventCreate(&e1));
  auto event_ms = [&](auto&& f, int n) {
    std::vector<double> ms;
    for (int i = 0; i < n; ++i) {
      MOE_CUDA_CHECK(cudaEventRecord(e0, st));
      f(i);
      MOE_CUDA_CHECK(cudaEventRecord(e1, st));
      MOE_CUDA_CHECK(cudaEventSynchronize(e1));
      float v = 0.0f;
      MOE_CUDA_CHECK(cudaEventElapsedTime(&v, e0, e1));
      ms.push_back(v);
    }
    return median(ms);
  };
  const int kreps = std::max(reps, 100);
  cuda::mla_absorb_q(gq.as<const float>(), kref, B, H, dn, dv, dr, qf.as<uint16_t>(), st);
  auto time_attention = [&](bool wgmma, bool tma = true) {
    for (int i = 0; i < 3; ++i) cuda::mla_attention(params(i % copies, wgmma, tma), st);
    return event_ms([&](int i) { cuda::mla_attention(params(i % copies, wgmma, tma), st); }, kreps);
  };
  const double ms_attn_mma = time_attention(false), ms_attn_wg = has_wgmma ? time_attention(true) : 0.0;
  const double ms_attn_wg_cp = has_wgmma ? time_attention(true, false) : 0.0;
  // The wgmma kernel's two copy paths compute the same sums from the same tiles: their outputs match bit for
  // bit.
  bool same_bits = true;
  if (has_wgmma) {
    std::vector<float> a(size_t(o_lat.numel())), b(a.size());
    cuda::mla_attention(params(0, true, true), st);
    MOE_CUDA_CHECK(cudaMemcpyAsync(a.data(), o_lat.as<float>(), a.size() * 4, cudaMemcpyDeviceToHost, st));
    cuda::mla_attention(params(0, true, false), st);
    MOE_CUDA_CHECK(cudaMemcpyAsync(b.data(), o_lat.as<float>(), b.size() * 4, cudaMemcpyDeviceToHost, st));
    MOE_CUDA_CHECK(cudaStreamSynchronize(st));
    same_bits = std::memcmp(a.data(), b.data(), a.size() * 4) == 0;
  }
  const double ms_attn = use_wgmma ? ms_attn_wg : ms_attn_mma;
  const double ms_absorb = event_ms([&](int) { cuda::mla_absorb_q(gq.as<const float>(), kref, B, H, dn, dv, dr, qf.as<uint16_t>(), st); }, kreps);

  // Backend op: CudaBackend::mla_attention as a decode step runs it (absorb, attention, combine, W_UV: the
  // backend's choices of kernels and GEMMs), host clock around call + synchronize, 16 calls back to back, and
  // 16 calls captured as one CUDA graph by the backend (as the step executor captures decode steps) and
  // replayed.
  constexpr int kGraphCalls = 16;
  auto call = [&](int64_t c) { gpu->mla_attention(gq, gw, cache, dn, dv, scale, batches[size_t(c)], out); };
  for (int i = 0; i < 3; ++i) call(i % copies);
  gpu->synchronize();
  gpu->begin_capture();
  for (int i = 0; i < kGraphCalls; ++i) call(i % copies);
  const std::shared_ptr<CapturedWork> work = gpu->end_capture();
  gpu->replay(*work);
  gpu->synchronize();
  std::vector<double> ms;
  for (int i = 0; i < std::max(reps, 20); ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    gpu->replay(*work);
    gpu->synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() /
                 kGraphCalls);
  }
  const double ms_graph = median(ms);
  ms.clear();
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    call(i % copies);
    gpu->synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count());
  }
  const double ms_wall = median(ms);
  ms.clear();
  for (int i = 0; i < reps; ++i) {
    const auto t0 = std::chrono::steady_clock::now();
    for (int k = 0; k < kGraphCalls; ++k) call((i * kGraphCalls + k) % copies);
    gpu->synchronize();
    ms.push_back(std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count() / kGraphCalls);
  }
  const double ms_b2b = median(ms);

  const double bytes = double(B) * double(ctx + 1) * double(W) * 2.0;
  const double flops = 2.0 * double(W + r) * double(H) * double(B) * double(ctx + 1);
  auto line = [&](const char* what, double t) {
    fmt::print("  {:<44} {:8.4f} ms  {:6.0f} GB/s = {:5.1f}% of copy  {:6.1f} TFLOP/s\n", what, t, bytes / (t * 1e-3) / 1e9,
               100.0 * bytes / (t * 1e-3) / bw, flops / (t * 1e-3) / 1e12);
  };
  fmt::print("device: {}; copy bandwidth {:.0f} GB/s; splits {}\n", cuda::device_name(0), bw / 1e9,
             forced_splits > 0 ? "forced" : "chosen");
  fmt::print("mla decode: batch {} context {} heads {}: {} splits ({} mma.sync, {} wgmma), {} cache copies, latent cache "
             "{:.1f} MB, {:.2f} GFLOP per call; ops on the {} kernel\n",
             B, ctx, H, splits_used, splits_mma, splits_wg, copies, bytes / 1e6, flops / 1e9, use_wgmma ? "wgmma" : "mma.sync");
  line("kernels: attention + combine, mma.sync (events)", ms_attn_mma);
  if (has_wgmma) {
    line("kernels: attention + combine, wgmma (events)", ms_attn_wg);
    line("kernels: the same, tiles by cp.async (events)", ms_attn_wg_cp);
    fmt::print("  wgmma kernel, tensor-map and cp.async tiles: {}\n",
               same_bits ? "the same bits" : "OUTPUTS DIFFER");
  }
  fmt::print("  {:<44} {:8.4f} ms\n", "kernels: absorb (events)", ms_absorb);
  line("backend op: 16 calls as one graph, per call", ms_graph);
  line("backend op: host clock, call + sync", ms_wall);
  line("backend op: 16 calls back to back", ms_b2b);
  if (has_wgmma)
    fmt::print(
        "RESULT_AB B={} ctx={} H={} mma_us={:.1f} mma_tflops={:.1f} mma_pct_copy={:.1f} wgmma_us={:.1f} "
        "wgmma_tflops={:.1f} wgmma_pct_copy={:.1f} speedup={:.2f} wgmma_cp_async_us={:.1f} same_bits={}\n",
        B, ctx, H, ms_attn_mma * 1e3, flops / (ms_attn_mma * 1e-3) / 1e12,
        100.0 * bytes / (ms_attn_mma * 1e-3) / bw, ms_attn_wg * 1e3, flops / (ms_attn_wg * 1e-3) / 1e12,
        100.0 * bytes / (ms_attn_wg * 1e-3) / bw, ms_attn_mma / ms_attn_wg, ms_attn_wg_cp * 1e3,
        same_bits ? 1 : 0);
  fmt::print(
      "RESULT B={} ctx={} H={} splits={} attn_us={:.1f} absorb_us={:.1f} op_graph_us={:.1f} "
      "op_wall_us={:.1f} "
      "op_b2b_us={:.1f} attn_pct_copy={:.1f} attn_tflops={:.1f}\n",
      B, ctx, H, splits_used, ms_attn * 1e3, ms_absorb * 1e3, ms_graph * 1e3, ms_wall * 1e3, ms_b2b * 1e3,
      100.0 * bytes / (ms_attn * 1e-3) / bw, flops / (ms_attn * 1e-3) / 1e12);
  cudaStreamDestroy(st);
  return 0;
}
