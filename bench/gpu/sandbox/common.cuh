#pragma once
// Shared scaffolding of the kernel sandboxes (bench/gpu/sandbox/*.cu, in the style of llm.c's dev/cuda):
// argument parsing, random inputs, BF16 conversion on the host, the relative L2 error, a rotating-buffer
// timer on cudaEvents, and copies of the few device helpers the copied kernels need (so that a sandbox keeps
// compiling when production's internal headers change; the production launchers come from cuda_ops.h).
#include <cuda_bf16.h>
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include "backend/cuda/cuda_ops.h"

namespace sbx {

#define SBX_CHECK(expr)                                                                              \
  do {                                                                                               \
    cudaError_t e_ = (expr);                                                                         \
    if (e_ != cudaSuccess) {                                                                         \
      std::fprintf(stderr, "%s:%d: %s: %s\n", __FILE__, __LINE__, #expr, cudaGetErrorString(e_));    \
      std::exit(2);                                                                                  \
    }                                                                                                \
  } while (0)

inline void check_cublas(cublasStatus_t st, const char* what) {
  if (st != CUBLAS_STATUS_SUCCESS) {
    std::fprintf(stderr, "cuBLAS error %d in %s\n", int(st), what);
    std::exit(2);
  }
}

// ---- command line: --name value (or --name=value) --------------------------------------------------------
struct Args {
  int argc;
  char** argv;
  bool has(const char* name) const {
    for (int i = 1; i < argc; ++i)
      if (std::strncmp(argv[i], "--", 2) == 0 && std::strcmp(argv[i] + 2, name) == 0) return true;
    return false;
  }
  const char* get(const char* name) const {
    const size_t n = std::strlen(name);
    for (int i = 1; i < argc; ++i) {
      const char* a = argv[i];
      if (std::strncmp(a, "--", 2) != 0 || std::strncmp(a + 2, name, n) != 0) continue;
      if (a[2 + n] == '=') return a + 3 + n;
      if (a[2 + n] == 0 && i + 1 < argc) return argv[i + 1];
    }
    return nullptr;
  }
  int64_t i64(const char* name, int64_t def) const {
    const char* v = get(name);
    return v ? std::atoll(v) : def;
  }
  // A comma list of integers ("1,64,4096").
  std::vector<int64_t> list(const char* name, std::vector<int64_t> def) const {
    const char* v = get(name);
    if (!v) return def;
    std::vector<int64_t> out;
    for (const char* p = v; *p;) {
      out.push_back(std::atoll(p));
      while (*p && *p != ',') ++p;
      if (*p == ',') ++p;
    }
    return out;
  }
};

// ---- host data ------------------------------------------------------------------------------------------
inline uint16_t f2bf(float f) {  // round to nearest even, as __float2bfloat16_rn (no NaNs here)
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u += 0x7FFFu + ((u >> 16) & 1u);
  return uint16_t(u >> 16);
}
inline float bf2f(uint16_t b) {
  const uint32_t u = uint32_t(b) << 16;
  float f;
  std::memcpy(&f, &u, 4);
  return f;
}
// The value of an E4M3 byte (FP8 weights' codes).
inline float e4m3_value(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  const float v = e == 0 ? std::ldexp(float(m) / 8.0f, -6) : std::ldexp(1.0f + float(m) / 8.0f, e - 7);
  return s ? -v : v;
}

// Uniform in [lo, hi), never exactly zero.
inline void fill_uniform(std::vector<float>& v, float lo, float hi, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::uniform_real_distribution<float> d(lo, hi);
  for (float& x : v) {
    do x = d(g);
    while (x == 0.0f);
  }
}
inline std::vector<uint16_t> to_bf16(const std::vector<float>& v) {
  std::vector<uint16_t> o(v.size());
  for (size_t i = 0; i < v.size(); ++i) o[i] = f2bf(v[i]);
  return o;
}

// Relative L2 error ||got - ref|| / ||ref|| over n elements.
inline double rel_l2(const float* got, const double* ref, size_t n) {
  double num = 0.0, den = 0.0;
  for (size_t i = 0; i < n; ++i) {
    const double d = double(got[i]) - ref[i];
    num += d * d;
    den += ref[i] * ref[i];
  }
  return den > 0.0 ? std::sqrt(num / den) : std::sqrt(num);
}

// ---- random data on the device (large weights), the same values wherever they are downloaded ------------------
__host__ __device__ inline uint64_t splitmix64(uint64_t z) {
  z += 0x9E3779B97F4A7C15ull;
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}
// Uniform in (-scale, scale), never zero: ((24 random bits) + 0.5) / 2^23 - 1.
__host__ __device__ inline float hash_uniform(uint64_t seed, uint64_t i, float scale) {
  const uint64_t h = splitmix64(seed * 0x100000001B3ull ^ i);
  return (float(double((h >> 40) + 0.5) / double(1 << 23)) - 1.0f) * scale;
}
__global__ void fill_bf16_kernel(uint16_t* p, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = __bfloat16_as_ushort(__float2bfloat16_rn(hash_uniform(seed, i, scale)));
}
__global__ void fill_f32_kernel(float* p, size_t n, uint64_t seed, float scale) {
  for (size_t i = blockIdx.x * size_t(blockDim.x) + threadIdx.x; i < n; i += size_t(gridDim.x) * blockDim.x)
    p[i] = hash_uniform(seed, i, scale);
}
inline void dfill_bf16(uint16_t* p, size_t n, uint64_t seed, float scale) {
  fill_bf16_kernel<<<1024, 256>>>(p, n, seed, scale);
  SBX_CHECK(cudaGetLastError());
}
inline void dfill_f32(float* p, size_t n, uint64_t seed, float scale) {
  fill_f32_kernel<<<1024, 256>>>(p, n, seed, scale);
  SBX_CHECK(cudaGetLastError());
}

// f(i) for i in [0, n) on all host cores (the float64 references of the GEMM sandboxes).
inline void parallel_for(int64_t n, const std::function<void(int64_t)>& f) {
  const int64_t nt = std::max<int64_t>(1, std::min<int64_t>(n, std::thread::hardware_concurrency()));
  std::vector<std::thread> th;
  for (int64_t t = 0; t < nt; ++t)
    th.emplace_back([&, t] {
      for (int64_t i = t; i < n; i += nt) f(i);
    });
  for (auto& x : th) x.join();
}

inline double silu(double g) { return g / (1.0 + std::exp(-g)); }

// ---- device memory --------------------------------------------------------------------------------------
template <typename T>
T* dalloc(size_t n) {
  void* p = nullptr;
  SBX_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return static_cast<T*>(p);
}
template <typename T>
T* dupload(const std::vector<T>& h) {
  T* p = dalloc<T>(h.size());
  SBX_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}
template <typename T>
std::vector<T> ddownload(const T* p, size_t n) {
  std::vector<T> h(n);
  SBX_CHECK(cudaDeviceSynchronize());
  SBX_CHECK(cudaMemcpy(h.data(), p, n * sizeof(T), cudaMemcpyDeviceToHost));
  return h;
}

// Copies of an input set needed so that a cycle over them moves at least `target` bytes (default 4x the
// H200's 50 MB L2): each launch then reads data that was evicted since its last use. At least 2, at most cap.
inline int rotation(size_t bytes_per_set, const Args& a, int cap = 16384) {
  const size_t target = size_t(a.i64("rotate-mb", 200)) << 20;
  const size_t n = (target + bytes_per_set - 1) / std::max<size_t>(bytes_per_set, 1);
  return int(std::clamp<size_t>(n, 2, size_t(cap)));
}

// Median time of one call in microseconds: `warmup` samples, then `reps` samples; each sample is one
// call per buffer copy (call(i) for i = 0 .. nbuf-1, i.e. a full cycle) between two events, divided by nbuf.
// graph: the cycle is captured once as a CUDA graph and each sample replays it (as production replays decode
// steps: no host launch cost between the kernels, PDL edges kept); the calls must not synchronise the host.
inline double time_us(int nbuf, const std::function<void(int)>& call, cudaStream_t s, int reps = 20,
                      int warmup = 3, bool graph = false) {
  cudaEvent_t e0, e1;
  SBX_CHECK(cudaEventCreate(&e0));
  SBX_CHECK(cudaEventCreate(&e1));
  cudaGraphExec_t exec = nullptr;
  if (graph) {
    cudaGraph_t g;
    SBX_CHECK(cudaStreamBeginCapture(s, cudaStreamCaptureModeThreadLocal));
    for (int i = 0; i < nbuf; ++i) call(i);
    SBX_CHECK(cudaStreamEndCapture(s, &g));
    SBX_CHECK(cudaGraphInstantiate(&exec, g, 0));
    SBX_CHECK(cudaGraphDestroy(g));
  }
  auto cycle = [&] {
    if (exec)
      SBX_CHECK(cudaGraphLaunch(exec, s));
    else
      for (int i = 0; i < nbuf; ++i) call(i);
  };
  for (int w = 0; w < warmup; ++w) cycle();
  SBX_CHECK(cudaStreamSynchronize(s));
  std::vector<double> t;
  for (int r = 0; r < reps; ++r) {
    SBX_CHECK(cudaEventRecord(e0, s));
    cycle();
    SBX_CHECK(cudaEventRecord(e1, s));
    SBX_CHECK(cudaEventSynchronize(e1));
    float ms = 0.0f;
    SBX_CHECK(cudaEventElapsedTime(&ms, e0, e1));
    t.push_back(1e3 * double(ms) / nbuf);
  }
  SBX_CHECK(cudaGetLastError());
  if (exec) SBX_CHECK(cudaGraphExecDestroy(exec));
  SBX_CHECK(cudaEventDestroy(e0));
  SBX_CHECK(cudaEventDestroy(e1));
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

// ---- device helpers, copied from src/backend/cuda/cuda_common.cuh ----------------------------------------
__device__ __forceinline__ float bf16_bits_to_float(uint32_t b) { return __uint_as_float(b << 16); }
__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
__device__ __forceinline__ float load_element(const void* p, moe::DType dt, int64_t i) {
  switch (dt) {
    case moe::DType::F32:
      return static_cast<const float*>(p)[i];
    case moe::DType::BF16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    default:
      return 0.0f;  // the sandboxes use F32 and BF16 only
  }
}
__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[8];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < int(blockDim.x / 32); ++i) total += partial[i];
  return total;
}
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}
inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// kernel<<<grid, block, smem, s>>>(args...), with the programmatic-dependent-launch attribute when pdl is set
// (production's launch(), which always sets PDL: the copied kernels run under the same launch as they did).
template <typename... Params, typename... Args>
void launch(bool pdl, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
            Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = pdl ? 1 : 0;
  SBX_CHECK(cudaLaunchKernelEx(&cfg, kernel, Params(std::forward<Args>(args))...));
}

inline void print_device() {
  int dev = 0;
  cudaDeviceProp p{};
  SBX_CHECK(cudaGetDevice(&dev));
  SBX_CHECK(cudaGetDeviceProperties(&p, dev));
  std::printf("device: %s, %d SMs, L2 %d MB\n", p.name, p.multiProcessorCount, p.l2CacheSize >> 20);
}

}  // namespace sbx
