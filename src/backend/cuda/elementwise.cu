// Small data-movement kernels: embedding lookup, residual add, row gather, SwiGLU's activation, dtype casts.
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

__global__ void embedding_kernel(WeightRef table, const int32_t* ids, int64_t T, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.y, D = table.cols;
  const int64_t id = ids[t];
  if (id < 0 || id >= table.rows) return;  // the model checks ids on the host
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x)
    out[t * D + d] = load_weight(table, id, d);
}

__global__ void add_kernel(const float* a, const float* b, float* out, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 4;
  if (i + 4 <= n) {
    const float4 x = *reinterpret_cast<const float4*>(a + i), y = *reinterpret_cast<const float4*>(b + i);
    *reinterpret_cast<float4*>(out + i) = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
  } else {
    for (int64_t j = i; j < n; ++j) out[j] = a[j] + b[j];
  }
}

__global__ void gather_rows_kernel(const float* x, const int32_t* rows, int64_t D, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t r = blockIdx.y;
  const float* src = x + int64_t(rows[r]) * D;
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D;
       d += int64_t(gridDim.x) * blockDim.x)
    out[r * D + d] = src[d];
}

__global__ void silu_mul_kernel(const float* g, const float* u, float* out, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = g[i] / (1.0f + __expf(-g[i])) * u[i];
}

// hi = bf16(v); lo = bf16(v - hi) when lo is wanted: hi + lo carries ~16 significant bits of v.
__device__ __forceinline__ void split_store(float v, uint16_t* hi, uint16_t* lo, int64_t i) {
  const uint16_t h = float_to_bf16_bits(v);
  hi[i] = h;
  if (lo) lo[i] = float_to_bf16_bits(v - bf16_bits_to_float(h));
}

__global__ void f32_to_bf16_kernel(const float* x, uint16_t* out, uint16_t* lo, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) split_store(x[i], out, lo, i);
}

__global__ void weight_to_bf16_kernel(WeightRef w, uint16_t* out, uint16_t* lo) {
  pdl_trigger();
  pdl_wait();
  const int64_t n = blockIdx.y;
  for (int64_t k = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; k < w.cols;
       k += int64_t(gridDim.x) * blockDim.x)
    split_store(load_weight(w, n, k), out, lo, n * w.cols + k);
}

unsigned col_blocks(int64_t D) { return unsigned(std::min<int64_t>((D + 255) / 256, 64)); }

}  // namespace

void embedding(const WeightRef& table, const int32_t* ids, int64_t T, float* out, cudaStream_t s) {
  if (T == 0) return;
  launch("embedding", embedding_kernel, dim3(col_blocks(table.cols), unsigned(T)), 256, 0, s, table, ids, T,
         out);
}

void add(const float* a, const float* b, float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  launch("add", add_kernel, blocks_for((n + 3) / 4, 256), 256, 0, s, a, b, out, n);
}

void gather_rows(const float* x, const int32_t* rows, int64_t R, int64_t D, float* out, cudaStream_t s) {
  if (R == 0) return;
  launch("gather_rows", gather_rows_kernel, dim3(col_blocks(D), unsigned(R)), 256, 0, s, x, rows, D, out);
}

void silu_mul(const float* g, const float* u, float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  launch("silu_mul", silu_mul_kernel, blocks_for(n, 256), 256, 0, s, g, u, out, n);
}

void f32_to_bf16(const float* x, uint16_t* out, int64_t n, cudaStream_t s, uint16_t* lo) {
  if (n == 0) return;
  launch("f32_to_bf16", f32_to_bf16_kernel, blocks_for(n, 256), 256, 0, s, x, out, lo, n);
}

void weight_to_bf16(const WeightRef& w, uint16_t* out, cudaStream_t s, uint16_t* lo) {
  if (w.rows == 0) return;
  launch("weight_to_bf16", weight_to_bf16_kernel, dim3(col_blocks(w.cols), unsigned(w.rows)), 256, 0, s, w,
         out, lo);
}

}  // namespace moe::cuda
