#pragma once
// Helpers of the trainer's GPU tests: random data (never zeros), relative L2, device arrays.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <nlohmann/json.hpp>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <random>
#include <string>
#include <vector>

#include "io/model_config.h"
#include "train/cuda/cuda_compute.h"

namespace moe::train::test {

#define SKIP_WITHOUT_GPU()                                                    \
  do {                                                                        \
    if (!::moe::train::cuda::CudaCompute::available()) GTEST_SKIP() << "no CUDA device"; \
  } while (0)

// A config.json (bench/configs/*.json) as the trainer reads it.
inline ModelConfig load_config(const std::string& path) {
  std::ifstream in(path);
  return ModelConfig::from_json(nlohmann::json::parse(in), path);
}

// n token ids drawn uniformly from 1 .. vocab - 1 (never the padding id 0).
inline std::vector<int32_t> random_ids(int64_t vocab, int64_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::uniform_int_distribution<int32_t> id(1, int32_t(vocab) - 1);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (auto& x : ids) x = id(rng);
  return ids;
}

inline std::vector<float> randn(size_t n, uint64_t seed, double sd = 1.0) {
  std::mt19937_64 g(seed);
  std::normal_distribution<double> d(0.0, sd);
  std::vector<float> v(n);
  for (float& x : v) x = float(d(g));
  return v;
}

inline double rel_l2(const std::vector<float>& got, const std::vector<float>& want) {
  double num = 0, den = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    num += (double(got[i]) - double(want[i])) * (double(got[i]) - double(want[i]));
    den += double(want[i]) * double(want[i]);
  }
  return den == 0 ? std::sqrt(num) : std::sqrt(num / den);
}

// a - b elementwise (the increment an accumulating op added).
inline std::vector<float> minus(const std::vector<float>& a, const std::vector<float>& b) {
  std::vector<float> r(a.size());
  for (size_t i = 0; i < a.size(); ++i) r[i] = a[i] - b[i];
  return r;
}

// A device copy of a host vector, read back with host().
template <typename T>
class DeviceArray {
 public:
  explicit DeviceArray(const std::vector<T>& h) : n_(h.size()) {
    EXPECT_EQ(cudaMalloc(&p_, n_ * sizeof(T)), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(p_, h.data(), n_ * sizeof(T), cudaMemcpyHostToDevice), cudaSuccess);
  }
  ~DeviceArray() { cudaFree(p_); }
  DeviceArray(const DeviceArray&) = delete;
  DeviceArray& operator=(const DeviceArray&) = delete;
  T* get() { return p_; }
  std::vector<T> host() const {
    std::vector<T> h(n_);
    EXPECT_EQ(cudaDeviceSynchronize(), cudaSuccess);
    EXPECT_EQ(cudaMemcpy(h.data(), p_, n_ * sizeof(T), cudaMemcpyDeviceToHost), cudaSuccess);
    return h;
  }

 private:
  T* p_ = nullptr;
  size_t n_;
};

}  // namespace moe::train::test
