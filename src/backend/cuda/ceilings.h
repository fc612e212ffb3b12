#pragma once
// Device ceilings measured in the same run as a benchmark (moe bench --device cuda, bench/gpu): the copy
// bandwidth and the BF16 tensor-core GEMM rate, plus the device's memory in use.
#include <cstddef>
#include <string>

namespace moe::cuda {

// All on CUDA device `device`.
// Device-to-device copy of `bytes`, bytes read + written per second (median of 10 after a warm-up).
double measure_copy_bandwidth(int device, size_t bytes);
// cuBLAS BF16 GEMM n x n x n on random data, F32 accumulate: FLOP/s (median of 10 after warm-ups).
double measure_bf16_gemm_rate(int device, int n);
// Bytes of device memory in use (total - free), and the total.
size_t device_memory_used(int device);
size_t device_memory_total(int device);
std::string device_name(int device);

}  // namespace moe::cuda
