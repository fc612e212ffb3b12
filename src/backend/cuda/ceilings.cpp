#include "backend/cuda/ceilings.h"

#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace moe::cuda {

namespace {

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

template <typename F>
std::vector<double> time_ms(F&& f, int warmup, int reps) {
  cudaEvent_t a, b;
  MOE_CUDA_CHECK(cudaEventCreate(&a));
  MOE_CUDA_CHECK(cudaEventCreate(&b));
  for (int i = 0; i < warmup; ++i) f();
  std::vector<double> out;
  for (int i = 0; i < reps; ++i) {
    MOE_CUDA_CHECK(cudaEventRecord(a));
    f();
    MOE_CUDA_CHECK(cudaEventRecord(b));
    MOE_CUDA_CHECK(cudaEventSynchronize(b));
    float ms = 0.0f;
    MOE_CUDA_CHECK(cudaEventElapsedTime(&ms, a, b));
    out.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  return out;
}

}  // namespace

double measure_copy_bandwidth(int device, size_t bytes) {
  const DeviceGuard guard(device);
  void *src = nullptr, *dst = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&src, bytes));
  MOE_CUDA_CHECK(cudaMalloc(&dst, bytes));
  MOE_CUDA_CHECK(cudaMemset(src, 0x5a, bytes));  // contents do not change a copy's speed
  const double ms = median(time_ms([&] { MOE_CUDA_CHECK(cudaMemcpyAsync(dst, src, bytes, cudaMemcpyDeviceToDevice)); }, 2, 10));
  cudaFree(src);
  cudaFree(dst);
  return 2.0 * double(bytes) / (ms * 1e-3);
}

double measure_bf16_gemm_rate(int device, int n) {
  const DeviceGuard guard(device);
  const size_t elems = size_t(n) * size_t(n);
  void *a = nullptr, *b = nullptr, *c = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&a, elems * 2));
  MOE_CUDA_CHECK(cudaMalloc(&b, elems * 2));
  MOE_CUDA_CHECK(cudaMalloc(&c, elems * 4));
  std::vector<float> host(elems);
  uint32_t s = 12345;
  for (auto& v : host) {
    s = s * 1664525u + 1013904223u;
    v = float(s >> 8) / float(1 << 24) - 0.5f;
  }
  float* f = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&f, elems * 4));
  MOE_CUDA_CHECK(cudaMemcpy(f, host.data(), elems * 4, cudaMemcpyHostToDevice));
  f32_to_bf16(f, static_cast<uint16_t*>(a), int64_t(elems), nullptr);
  f32_to_bf16(f, static_cast<uint16_t*>(b), int64_t(elems), nullptr);
  MOE_CUDA_CHECK(cudaDeviceSynchronize());
  cudaFree(f);
  cublasHandle_t h;
  if (cublasCreate(&h) != CUBLAS_STATUS_SUCCESS) fail("cublasCreate failed");
  const float alpha = 1.0f, beta = 0.0f;
  const double ms = median(time_ms(
      [&] {
        cublasGemmEx(h, CUBLAS_OP_T, CUBLAS_OP_N, n, n, n, &alpha, a, CUDA_R_16BF, n, b, CUDA_R_16BF, n, &beta, c,
                     CUDA_R_32F, n, CUBLAS_COMPUTE_32F, CUBLAS_GEMM_DEFAULT);
      },
      3, 10));
  cublasDestroy(h);
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  return 2.0 * double(n) * n * n / (ms * 1e-3);
}

size_t device_memory_used(int device) {
  const DeviceGuard guard(device);
  size_t free_b = 0, total = 0;
  MOE_CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  return total - free_b;
}

size_t device_memory_total(int device) {
  const DeviceGuard guard(device);
  size_t free_b = 0, total = 0;
  MOE_CUDA_CHECK(cudaMemGetInfo(&free_b, &total));
  return total;
}

std::string device_name(int device) {
  cudaDeviceProp p{};
  MOE_CUDA_CHECK(cudaGetDeviceProperties(&p, device));
  return p.name;
}

}  // namespace moe::cuda
