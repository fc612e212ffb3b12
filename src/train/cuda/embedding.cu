// Token embedding gather and its scatter-add backward (the twin of train/ops/embedding.cpp). The backward is one
// thread per column walking the n rows in order, so a token seen twice adds its rows in the CPU's order without
// atomics.
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
__global__ void forward_kernel(float* out, const int32_t* ids, int64_t n, const float* table, int64_t d) {
  const int64_t idx = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (idx >= n * d) return;
  const int64_t i = idx / d, j = idx % d;
  out[idx] = table[int64_t(ids[i]) * d + j];
}

__global__ void backward_kernel(float* dtable, const int32_t* ids, int64_t n, const float* dout, int64_t d) {
  const int64_t j = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  for (int64_t i = 0; i < n; ++i) dtable[int64_t(ids[i]) * d + j] += dout[i * d + j];
}
// One block-column per distinct id: segment g holds the rows order[start[g] .. start[g+1]) (ascending), all of
// id seg_id[g]; the rows are summed in that order and added once to the table row.
__global__ void backward_sorted_kernel(float* dtable, const int32_t* seg_id, const int32_t* start,
                                       const int32_t* order, const float* dout, int64_t d) {
  const int64_t g = blockIdx.x, j = blockIdx.y * int64_t(blockDim.x) + threadIdx.x;
  if (j >= d) return;
  float acc = 0;
  for (int32_t r = start[g]; r < start[g + 1]; ++r) acc += dout[int64_t(order[r]) * d + j];
  dtable[int64_t(seg_id[g]) * d + j] += acc;
}
}  // namespace

void embedding_backward_sorted(float* dtable, const int32_t* seg_id, const int32_t* seg_start, int64_t segments,
                               const int32_t* order, const float* dout, int64_t d, cudaStream_t s) {
  if (segments == 0 || d == 0) return;
  const dim3 grid(unsigned(segments), blocks_for(d, 128));
  backward_sorted_kernel<<<grid, 128, 0, s>>>(dtable, seg_id, seg_start, order, dout, d);
}

void embedding_forward(float* out, const int32_t* ids, int64_t n, const float* table, int64_t d, cudaStream_t s) {
  if (n * d == 0) return;
  forward_kernel<<<blocks_for(n * d, 256), 256, 0, s>>>(out, ids, n, table, d);
}

void embedding_backward(float* dtable, const int32_t* ids, int64_t n, const float* dout, int64_t d, cudaStream_t s) {
  if (n * d == 0) return;
  backward_kernel<<<blocks_for(d, 256), 256, 0, s>>>(dtable, ids, n, dout, d);
}

}  // namespace moe::train::cuda
