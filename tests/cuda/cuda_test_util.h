#pragma once
// Helpers for the GPU tests: skip without a GPU, seeded random host tensors, host weights (BF16 or FP8 with
// block scales), copies between the backends, and the relative L2 error.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <memory>
#include <random>
#include <utility>
#include <vector>

#include "backend/backend.h"
#include "core/dtype.h"

namespace moe::test {

#define MOE_REQUIRE_GPU()                                                                 \
  do {                                                                                    \
    if (!::moe::cuda_backend_available()) GTEST_SKIP() << "no CUDA (Hopper) GPU present"; \
  } while (0)

inline uint64_t time_seed(const char* what) {
  const uint64_t s = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  std::printf("[ seed ] %s: %llu\n", what, static_cast<unsigned long long>(s));
  return s;
}

// The fixture of the op tests: a CPU and a GPU backend and a time-seeded RNG (the seed is printed); skips
// without a GPU.
class GpuVsCpu : public ::testing::Test {
 protected:
  void SetUp() override {
    MOE_REQUIRE_GPU();
    cpu_ = make_cpu_backend();
    gpu_ = make_cuda_backend(0);
    rng_.seed(time_seed(::testing::UnitTest::GetInstance()->current_test_info()->name()));
  }
  std::unique_ptr<Backend> cpu_, gpu_;
  std::mt19937_64 rng_;
};

struct HostWeight {
  Tensor w, scale;
  Weight weight;
};

// Random [N, K] weight with entries ~ U(-a, a), a = 1/sqrt(K) (outputs of size ~ |x|), stored as BF16,
// or as FP8 E4M3 with a random per-block scale (values quantised exactly as a checkpoint holds them).
inline HostWeight random_weight(std::mt19937_64& rng, int64_t N, int64_t K, bool fp8) {
  HostWeight h;
  const float a = 1.0f / std::sqrt(float(K));
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  if (!fp8) {
    h.w = Tensor::host(DType::BF16, {N, K});
    for (int64_t i = 0; i < N * K; ++i) h.w.as<uint16_t>()[i] = float_to_bf16(a * u(rng));
    h.weight.w = h.w.view();
    return h;
  }
  const int64_t nb = (N + 127) / 128, kb = (K + 127) / 128;
  h.w = Tensor::host(DType::F8_E4M3, {N, K});
  h.scale = Tensor::host(DType::F32, {nb, kb});
  std::uniform_real_distribution<float> us(0.5f, 2.0f);
  for (int64_t i = 0; i < nb * kb; ++i) h.scale.as<float>()[i] = a * us(rng) / 448.0f;
  for (int64_t i = 0; i < N * K; ++i) h.w.as<uint8_t>()[i] = float_to_e4m3(448.0f * u(rng) * 0.9f);
  h.weight.w = h.w.view();
  h.weight.scale_inv = h.scale.view();
  return h;
}

// E random routed experts (gate, up [I, D], down [D, I]) on the host; `keep` owns their memory.
struct HostExperts {
  ExpertWeights weights;
  std::vector<HostWeight> keep;
};
inline HostExperts random_experts(std::mt19937_64& rng, int64_t E, int64_t D, int64_t I, bool fp8) {
  HostExperts h;
  for (int64_t e = 0; e < E; ++e) {
    h.keep.push_back(random_weight(rng, I, D, fp8));
    h.keep.push_back(random_weight(rng, I, D, fp8));
    h.keep.push_back(random_weight(rng, D, I, fp8));
    const size_t b = h.keep.size() - 3;
    h.weights.experts.push_back({h.keep[b].weight, h.keep[b + 1].weight, h.keep[b + 2].weight});
  }
  return h;
}
// The same experts uploaded to a backend and prepared for its grouped kernels.
inline ExpertWeights upload_experts(Backend& b, const ExpertWeights& host) {
  ExpertWeights d;
  for (const auto& m : host.experts)
    d.experts.push_back({b.upload_weight(m.gate), b.upload_weight(m.up), b.upload_weight(m.down)});
  b.prepare_experts(d);
  return d;
}

inline Tensor random_host(std::mt19937_64& rng, DType dt, Shape shape, float scale = 1.0f) {
  Tensor t = Tensor::host(dt, shape);
  std::normal_distribution<float> n(0.0f, 1.0f);
  for (int64_t i = 0; i < t.numel(); ++i) {
    const float v = scale * n(rng);
    if (dt == DType::F32)
      t.as<float>()[i] = v;
    else if (dt == DType::BF16)
      t.as<uint16_t>()[i] = float_to_bf16(v);
  }
  return t;
}

// Random routing choices as moe_experts takes them: for each of T tokens, K distinct experts of E (ids [T, K])
// with weights ~ U(0.1, 1) (w [T, K]).
inline std::pair<Tensor, Tensor> random_choices(std::mt19937_64& rng, int64_t T, int64_t E, int64_t K) {
  Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
  std::vector<int32_t> perm(static_cast<size_t>(E));
  for (int64_t t = 0; t < T; ++t) {
    for (int64_t e = 0; e < E; ++e) perm[size_t(e)] = int32_t(e);
    std::shuffle(perm.begin(), perm.end(), rng);
    for (int64_t j = 0; j < K; ++j) {
      ids.as<int32_t>()[t * K + j] = perm[size_t(j)];
      w.as<float>()[t * K + j] = std::uniform_real_distribution<float>(0.1f, 1.0f)(rng);
    }
  }
  return {std::move(ids), std::move(w)};
}

inline Tensor to_device(Backend& b, const Tensor& host) {
  Tensor d = b.alloc(host.dtype(), host.shape());
  b.copy_from_host(host.data(), d);
  return d;
}

// Device tensor -> host F32 (BF16 converted).
inline std::vector<float> to_host_f32(Backend& b, const TensorView& d) {
  std::vector<float> out(static_cast<size_t>(d.numel()));
  if (d.dtype == DType::F32) {
    b.copy_to_host(d, out.data());
  } else {
    std::vector<uint16_t> raw(static_cast<size_t>(d.numel()));
    b.copy_to_host(d, raw.data());
    for (size_t i = 0; i < raw.size(); ++i) out[i] = bf16_to_float(raw[i]);
  }
  return out;
}

// Bound on a decode GEMV's relative L2 error against the CPU's F32 product (`tokens`: rows per pass over the
// weights, the tokens of a dense GEMV or the grouped GEMV's tile). The CUDA-core kernel (BF16 weights at one token,
// and every GEMV of more than 8) multiplies F32 x as the CPU does, only the summation order differs:
// ~sqrt(K) 2^-24, bound 1e-4. The tensor-core kernel (gemv_mma.cuh: FP8 weights at 1-8 tokens, BF16 at 2-8) rounds
// x to BF16, ~2^-9 / sqrt(3) = 1.1e-3 rms relative per value with independent signs, so ~1.1e-3 on a dot product:
// bound 5e-3.
inline double gemv_bound(bool fp8, int64_t tokens) { return tokens <= 8 && (fp8 || tokens >= 2) ? 5e-3 : 1e-4; }

// ||a - b|| / ||b||
inline double rel_l2(const float* a, const float* b, int64_t n) {
  double num = 0.0, den = 0.0;
  for (int64_t i = 0; i < n; ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / std::max(den, 1e-300));
}

}  // namespace moe::test
