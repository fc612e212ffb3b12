// The W4A16 grouped GEMV (backend/cuda/moe_w4a16.cu), which reads INT4 expert weights in place, against the CPU
// backend's INT4 matmul (int4_rows.cpp) expert by expert: F32 accumulation on both sides, only the summation
// order differs: K = 2048 terms, ~sqrt(K) 2^-24 relative per output: bound 1e-5 relative L2 (test_cuda_ops.cpp
// allows the BF16/FP8 GEMVs 1e-4). Built only with CUDA (it calls the launcher directly).
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/moe_w4a16.h"
#include "int4_test_util.h"

namespace moe {
namespace {

#define CK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr

template <typename T>
T* upload(const std::vector<T>& h, std::vector<void*>& owned) {
  void* p = nullptr;
  if (cudaMalloc(&p, std::max<size_t>(h.size(), 1) * sizeof(T)) != cudaSuccess) return nullptr;
  cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice);
  owned.push_back(p);
  return static_cast<T*>(p);
}

TEST(CudaW4A16, GroupedGemvMatchesCpu) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA (Hopper) GPU present";
  const uint64_t seed = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  std::printf("[ seed ] %llu\n", static_cast<unsigned long long>(seed));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto cpu = make_cpu_backend();
  const int32_t E = 6, N = 384, K = 2048;
  for (int32_t group : {32, 128})
    for (bool f32_scales : {false, true}) {
      std::vector<test::HostInt4> mats(static_cast<size_t>(E));
      for (auto& m : mats) test::random_int4(rng, N, K, group, f32_scales, m);
      // Rows per expert: none, one (decode), and several passes of the kernel's 4-row tile.
      const std::vector<int32_t> counts = {0, 1, 3, 4, 9, 2};
      std::vector<int32_t> offsets(1, 0);
      for (int32_t c : counts) offsets.push_back(offsets.back() + c);
      const int64_t M = offsets.back();
      std::vector<float> x(size_t(M * K)), ref(size_t(M * N)), got(size_t(M * N));
      for (float& v : x) v = normal(rng);
      for (int32_t e = 0; e < E; ++e) {
        const int32_t c = counts[size_t(e)];
        if (!c) continue;
        TensorView xv{x.data() + int64_t(offsets[size_t(e)]) * K, DType::F32, Shape{c, K}, Device{}};
        TensorView yv{ref.data() + int64_t(offsets[size_t(e)]) * N, DType::F32, Shape{c, N}, Device{}};
        cpu->matmul(xv, mats[size_t(e)].w, yv);
      }
      std::vector<void*> owned;
      std::vector<const void*> words, scales;
      for (const auto& m : mats) {
        words.push_back(upload(m.words, owned));
        scales.push_back(f32_scales ? static_cast<const void*>(upload(m.f32, owned))
                                    : static_cast<const void*>(upload(m.bf16, owned)));
      }
      cuda::W4A16GemvParams p;
      p.x = upload(x, owned);
      p.ldx = K;
      p.offsets = upload(offsets, owned);
      p.words = upload(words, owned);
      p.scales = upload(scales, owned);
      p.f32_scales = f32_scales;
      p.E = E;
      p.N = N;
      p.K = K;
      p.group = group;
      p.y = upload(got, owned);
      p.ldy = N;
      cuda::moe_w4a16_gemv(p, nullptr);
      CK(cudaDeviceSynchronize());
      CK(cudaMemcpy(got.data(), p.y, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
      auto rel = [&](const std::vector<float>& g) {
        double num = 0, den = 0;
        for (size_t i = 0; i < g.size(); ++i) {
          num += (double(g[i]) - ref[i]) * (double(g[i]) - ref[i]);
          den += double(ref[i]) * ref[i];
        }
        EXPECT_GT(den, 0.0);
        return std::sqrt(num / den);
      };
      std::printf("[ w4a16 ] group %d %s scales: rel L2 %.3g\n", group, f32_scales ? "F32" : "BF16", rel(got));
      EXPECT_LE(rel(got), 1e-5) << "group " << group << " f32 scales " << f32_scales;

      // Work-item mode, as the backend calls it: rows in slot order (sorted row r is slot perm[r]), items of at
      // most 2 rows plus a padding item, the pointers in one table [w0, s0, w1, s1, ...] read with stride 2.
      std::vector<int32_t> perm(static_cast<size_t>(M)), items;
      std::iota(perm.begin(), perm.end(), 0);
      std::shuffle(perm.begin(), perm.end(), rng);
      std::vector<float> xs(x.size());
      for (int64_t r = 0; r < M; ++r)
        std::copy_n(x.begin() + r * K, K, xs.begin() + int64_t(perm[size_t(r)]) * K);
      for (int32_t e = 0; e < E; ++e)
        for (int32_t b = offsets[size_t(e)]; b < offsets[size_t(e) + 1]; b += 2)
          items.insert(items.end(), {e, b, std::min(2, offsets[size_t(e) + 1] - b)});
      items.insert(items.end(), {0, 0, 0});
      std::vector<const void*> table;
      for (int32_t e = 0; e < E; ++e) table.insert(table.end(), {words[size_t(e)], scales[size_t(e)]});
      const void* const* dtable = upload(table, owned);
      cuda::W4A16GemvParams q = p;
      q.x = upload(xs, owned);
      q.offsets = nullptr;
      q.words = dtable;
      q.scales = dtable + 1;
      q.table_stride = 2;
      q.items = upload(items, owned);
      q.n_items = int32_t(items.size() / 3);
      q.perm = upload(perm, owned);
      q.x_row_div = 1;
      std::vector<float> ys(got.size(), 0.0f), back(got.size());
      q.y = upload(ys, owned);
      cuda::moe_w4a16_gemv(q, nullptr);
      CK(cudaDeviceSynchronize());
      CK(cudaMemcpy(ys.data(), q.y, ys.size() * sizeof(float), cudaMemcpyDeviceToHost));
      for (int64_t r = 0; r < M; ++r)
        std::copy_n(ys.begin() + int64_t(perm[size_t(r)]) * N, N, back.begin() + r * N);
      EXPECT_LE(rel(back), 1e-5) << "work items, group " << group << " f32 scales " << f32_scales;
      for (void* o : owned) cudaFree(o);
    }
}

// Kimi-K2's decode shape: 8 experts chosen, one row each, gate-sized [2048, 7168] (moe_intermediate x hidden).
// Checked against the CPU as above, then timed (CUDA events over 50 launches): the bytes read per launch (INT4
// words plus BF16 scales) over the time, printed as GB/s for bench/RESULTS.md.
TEST(CudaW4A16, KimiDecodeShapeTimed) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA (Hopper) GPU present";
  std::mt19937_64 rng(2827);
  std::normal_distribution<float> normal(0.0f, 1.0f);
  auto cpu = make_cpu_backend();
  const int32_t E = 8, N = 2048, K = 7168, group = 32;
  std::vector<test::HostInt4> mats(static_cast<size_t>(E));
  for (auto& m : mats) test::random_int4(rng, N, K, group, false, m);
  std::vector<int32_t> offsets(size_t(E) + 1);
  for (int32_t e = 0; e <= E; ++e) offsets[size_t(e)] = e;
  std::vector<float> x(size_t(E) * K), ref(size_t(E) * N), got(size_t(E) * N);
  for (float& v : x) v = normal(rng);
  for (int32_t e = 0; e < E; ++e) {
    TensorView xv{x.data() + int64_t(e) * K, DType::F32, Shape{1, K}, Device{}};
    TensorView yv{ref.data() + int64_t(e) * N, DType::F32, Shape{1, N}, Device{}};
    cpu->matmul(xv, mats[size_t(e)].w, yv);
  }
  std::vector<void*> owned;
  std::vector<const void*> words, scales;
  for (const auto& m : mats) words.push_back(upload(m.words, owned)), scales.push_back(upload(m.bf16, owned));
  cuda::W4A16GemvParams p;
  p.x = upload(x, owned);
  p.ldx = K;
  p.offsets = upload(offsets, owned);
  p.words = upload(words, owned);
  p.scales = upload(scales, owned);
  p.E = E;
  p.N = N;
  p.K = K;
  p.group = group;
  p.y = upload(got, owned);
  p.ldy = N;
  cuda::moe_w4a16_gemv(p, nullptr);
  CK(cudaDeviceSynchronize());
  CK(cudaMemcpy(got.data(), p.y, got.size() * sizeof(float), cudaMemcpyDeviceToHost));
  double num = 0, den = 0;
  for (size_t i = 0; i < got.size(); ++i)
    num += (double(got[i]) - ref[i]) * (double(got[i]) - ref[i]), den += double(ref[i]) * ref[i];
  EXPECT_LE(std::sqrt(num / den), 1e-5);
  cudaEvent_t a, b;
  CK(cudaEventCreate(&a));
  CK(cudaEventCreate(&b));
  const int reps = 50;
  CK(cudaEventRecord(a, nullptr));
  for (int i = 0; i < reps; ++i) cuda::moe_w4a16_gemv(p, nullptr);
  CK(cudaEventRecord(b, nullptr));
  CK(cudaEventSynchronize(b));
  float ms = 0;
  CK(cudaEventElapsedTime(&ms, a, b));
  const double bytes = double(E) * N * (K / 2 + K / group * 2);
  std::printf("[ w4a16 timing ] %d experts x [%d, %d] INT4, 1 row each: %.2f us per launch, %.0f GB/s of weights\n",
              E, N, K, 1000.0 * ms / reps, bytes / (ms / reps * 1e-3) / 1e9);
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  for (void* q : owned) cudaFree(q);
}

}  // namespace
}  // namespace moe
