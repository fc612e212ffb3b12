// Dropless routed experts on the device: the (token, slot) pairs sorted by expert (rows [nK]: the token of each
// sorted row, slots [nK]: which of its k it is, pos [n, K]: the sorted row of each pair) feed
//   gather:   xs[r] = x[rows[r]]                               (the experts' inputs, expert after expert)
//   combine:  out[i] = sum_j w[i, j] eout[pos[i, j]]           (one thread per output value, slots in order)
//   expert_dout: dy[r] = w[rows[r], slots[r]] dout[rows[r]], dweights[rows[r], slots[r]] = dout[rows[r]] . eout[r]
//   scatter:  dx[i] += sum_j dxs[pos[i, j]]
// The twins of ffn.cpp's gather/combine/expert_dout/scatter_dx loops. No atomics: every output has one writer.
// Where the width and the pointers allow, gather moves 16-byte chunks of BF16 rows (its input already rounded by
// its producer), and combine and scatter 4 columns a thread (float4): the same sums in the same order as the
// scalar kernels (bit-identical), at ~1.4 TB/s for the scalar gather on an H200 against the copy rate for these.
#include <cuda_bf16.h>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
// Stores of an FP32 value as it is (float) or rounded to BF16 (uint16_t), for the kernels with both forms.
__device__ __forceinline__ void put(float* p, float v) { *p = v; }
__device__ __forceinline__ void put(uint16_t* p, float v) { *p = __bfloat16_as_ushort(__float2bfloat16_rn(v)); }

template <class T>
__global__ void gather_kernel(T* xs, const float* x, const int32_t* rows, int64_t count, int64_t d) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count * d) return;
  put(xs + i, x[int64_t(rows[i / d]) * d + i % d]);
}

// xs [count, chunks] of 16-byte chunks (8 BF16 values) from x [*, chunks].
__global__ void gather_chunks_kernel(uint4* xs, const uint4* x, const int32_t* rows, int64_t count, int64_t chunks) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count * chunks) return;
  const int64_t r = i / chunks;
  xs[i] = x[int64_t(rows[r]) * chunks + (i - r * chunks)];
}

__global__ void gather_values_kernel(uint16_t* xs, const uint16_t* x, const int32_t* rows, int64_t count, int64_t d) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count * d) return;
  xs[i] = x[int64_t(rows[i / d]) * d + i % d];
}

__device__ __forceinline__ void fma4(float4& acc, float w, const float4& v) {
  acc.x += w * v.x, acc.y += w * v.y, acc.z += w * v.z, acc.w += w * v.w;
}
__device__ __forceinline__ void add4(float4& acc, const float4& v) {
  acc.x += v.x, acc.y += v.y, acc.z += v.z, acc.w += v.w;
}

// combine and scatter over float4 columns: d4 = d / 4.
__global__ void combine4_kernel(float4* out, const float4* eout, const int32_t* pos, const float* w, int64_t n,
                                int64_t k, int64_t d4) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n * d4) return;
  const int64_t tok = i / d4, c = i - tok * d4;
  float4 acc = make_float4(0, 0, 0, 0);
  for (int64_t j = 0; j < k; ++j) fma4(acc, w[tok * k + j], eout[int64_t(pos[tok * k + j]) * d4 + c]);
  out[i] = acc;
}

__global__ void scatter4_kernel(float4* dx, const float4* dxs, const int32_t* pos, int64_t n, int64_t k, int64_t d4) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n * d4) return;
  const int64_t tok = i / d4, c = i - tok * d4;
  float4 acc = make_float4(0, 0, 0, 0);
  for (int64_t j = 0; j < k; ++j) add4(acc, dxs[int64_t(pos[tok * k + j]) * d4 + c]);
  float4 v = dx[i];
  add4(v, acc);
  dx[i] = v;
}

bool aligned(const void* p, size_t bytes) { return reinterpret_cast<uintptr_t>(p) % bytes == 0; }

__global__ void combine_kernel(float* out, const float* eout, const int32_t* pos, const float* w, int64_t n,
                               int64_t k, int64_t d) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n * d) return;
  const int64_t tok = i / d, c = i % d;
  float acc = 0;
  for (int64_t j = 0; j < k; ++j) acc += w[tok * k + j] * eout[int64_t(pos[tok * k + j]) * d + c];
  out[i] = acc;
}

template <class T>
__global__ void expert_dout_kernel(T* dy, float* dweights, const float* dout, const float* eout,
                                   const int32_t* rows, const int32_t* slots, const float* w, int64_t k, int64_t d) {
  __shared__ float red[32];
  const int64_t r = blockIdx.x;
  const int64_t tok = rows[r], slot = tok * k + slots[r];
  const float wt = w[slot];
  const float* g = dout + tok * d;
  float dot = 0;
  for (int64_t c = threadIdx.x; c < d; c += blockDim.x) {
    put(dy + r * d + c, wt * g[c]);
    dot += g[c] * eout[r * d + c];
  }
  dot = block_reduce<false>(dot, red);
  if (threadIdx.x == 0) dweights[slot] = dot;
}

__global__ void scatter_kernel(float* dx, const float* dxs, const int32_t* pos, int64_t n, int64_t k, int64_t d) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n * d) return;
  const int64_t tok = i / d, c = i % d;
  float acc = 0;
  for (int64_t j = 0; j < k; ++j) acc += dxs[int64_t(pos[tok * k + j]) * d + c];
  dx[i] += acc;
}
}  // namespace

void moe_gather(float* xs, const float* x, const int32_t* rows, int64_t count, int64_t d, cudaStream_t s) {
  if (count == 0) return;
  gather_kernel<<<blocks_for(count * d, 256), 256, 0, s>>>(xs, x, rows, count, d);
}

void moe_gather_bf16(uint16_t* xs, const float* x, const int32_t* rows, int64_t count, int64_t d, cudaStream_t s) {
  if (count == 0) return;
  gather_kernel<<<blocks_for(count * d, 256), 256, 0, s>>>(xs, x, rows, count, d);
}

void moe_gather_bf16_rows(uint16_t* xs, const uint16_t* x, const int32_t* rows, int64_t count, int64_t d,
                          cudaStream_t s) {
  if (count == 0) return;
  if (d % 8 == 0 && aligned(xs, 16) && aligned(x, 16)) {
    gather_chunks_kernel<<<blocks_for(count * (d / 8), 256), 256, 0, s>>>(
        reinterpret_cast<uint4*>(xs), reinterpret_cast<const uint4*>(x), rows, count, d / 8);
    return;
  }
  gather_values_kernel<<<blocks_for(count * d, 256), 256, 0, s>>>(xs, x, rows, count, d);  // one value a thread
}

void moe_combine(float* out, const float* eout, const int32_t* pos, const float* weights, int64_t n, int64_t k,
                 int64_t d, cudaStream_t s) {
  if (n == 0) return;
  if (d % 4 == 0 && aligned(out, 16) && aligned(eout, 16)) {
    combine4_kernel<<<blocks_for(n * (d / 4), 256), 256, 0, s>>>(reinterpret_cast<float4*>(out),
                                                                  reinterpret_cast<const float4*>(eout), pos, weights,
                                                                  n, k, d / 4);
    return;
  }
  combine_kernel<<<blocks_for(n * d, 256), 256, 0, s>>>(out, eout, pos, weights, n, k, d);
}

void moe_expert_dout(float* dy, float* dweights, const float* dout, const float* eout, const int32_t* rows,
                     const int32_t* slots, const float* weights, int64_t count, int64_t k, int64_t d, cudaStream_t s) {
  if (count == 0) return;
  expert_dout_kernel<<<unsigned(count), 128, 0, s>>>(dy, dweights, dout, eout, rows, slots, weights, k, d);
}

void moe_expert_dout_bf16(uint16_t* dy, float* dweights, const float* dout, const float* eout, const int32_t* rows,
                          const int32_t* slots, const float* weights, int64_t count, int64_t k, int64_t d,
                          cudaStream_t s) {
  if (count == 0) return;
  expert_dout_kernel<<<unsigned(count), 128, 0, s>>>(dy, dweights, dout, eout, rows, slots, weights, k, d);
}

void moe_scatter_add(float* dx, const float* dxs, const int32_t* pos, int64_t n, int64_t k, int64_t d,
                     cudaStream_t s) {
  if (n == 0) return;
  if (d % 4 == 0 && aligned(dx, 16) && aligned(dxs, 16)) {
    scatter4_kernel<<<blocks_for(n * (d / 4), 256), 256, 0, s>>>(reinterpret_cast<float4*>(dx),
                                                                  reinterpret_cast<const float4*>(dxs), pos, n, k,
                                                                  d / 4);
    return;
  }
  scatter_kernel<<<blocks_for(n * d, 256), 256, 0, s>>>(dx, dxs, pos, n, k, d);
}

}  // namespace moe::train::cuda
