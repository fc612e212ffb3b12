// The attention output's projection and the residual step after it in one launch, at one token (batch-1
// decode, Backend::matmul_add_rms_norm): y [D] = x . W^T by the single-token GEMV (gemv.cuh's CUDA-core pass
// for BF16, gemv_mma.cuh's block for FP8: the kernels the unfused matmul launches, so the same y), then the
// last block to finish forms h += y and out = rms_norm(h) * w with rms_norm.cuh's row (the same bits as
// add_rms_norm). One launch instead of two, and the norm starts without a launch gap. Blocks count themselves
// done on a device counter that the last one sets back to 0 (as moe_router.cu), so graph replays start from
// 0.
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/rms_norm.cuh"

namespace moe::cuda {

namespace {

struct ResidualNorm {
  float* h;  // [D], updated in place
  WeightRef w;
  float eps;
  float* out;  // [D]
  unsigned* done;
};

// After every thread of the block has written its rows of y: the last block of the grid does the residual
// step.
template <int V>
__device__ __forceinline__ void residual_norm_tail(const float* y, int64_t D, const ResidualNorm& r) {
  if (last_block_to_arrive(r.done, gridDim.x * gridDim.y))
    rms_norm_row<V, true>(nullptr, r.h, y, r.w, r.eps, D, 0, r.out);
}

// BF16 / F16 weights: the CUDA-core pass, one weight row per warp (as the unfused batch-1 GEMV of a matrix
// this size; the per-row arithmetic does not depend on the rows per warp).
template <DType WT, int V>
__global__ void __launch_bounds__(256) gemv_residual_norm_kernel(GemvParams p, ResidualNorm r) {
  gemv_detail::single_token_pass<WT>(p);
  residual_norm_tail<V>(p.out, p.N, r);
}

// FP8 weights: the tensor-core block.
template <int V>
__global__ void __launch_bounds__(256) gemv_mma_residual_norm_kernel(GemvParams p, ResidualNorm r) {
  gemv_detail::gemv_mma_block<DType::F8_E4M3, false>(p);
  residual_norm_tail<V>(p.out, p.N, r);
}

template <int V>
void launch_v(const GemvParams& p, const ResidualNorm& r, cudaStream_t s) {
  if (p.wdtype == DType::F8_E4M3) {
    const dim3 grid(unsigned((p.N + gemv_detail::kMmaRows - 1) / gemv_detail::kMmaRows));
    launch("gemv_residual_norm", gemv_mma_residual_norm_kernel<V>, grid, 256, 0, s, p, r);
    return;
  }
  GemvParams q = p;
  q.prefetch = true;
  const dim3 grid(unsigned((p.N + gemv_detail::kWarps - 1) / gemv_detail::kWarps));
  if (p.wdtype == DType::BF16)
    launch("gemv_residual_norm", gemv_residual_norm_kernel<DType::BF16, V>, grid, 256, 0, s, q, r);
  else
    launch("gemv_residual_norm", gemv_residual_norm_kernel<DType::F16, V>, grid, 256, 0, s, q, r);
}

}  // namespace

bool gemv_residual_norm(const GemvParams& p, float* h, const WeightRef& w, float eps, float* out,
                        unsigned* done, cudaStream_t s) {
  // Dense, one token, one matrix, rows that are the residual's width; FP8 on the tensor-core block only.
  if (p.T != 1 || p.grid_y != 1 || p.second.N != 0 || p.items || p.ids || p.swiglu || p.N == 0) return false;
  if (p.wdtype != DType::BF16 && p.wdtype != DType::F16 &&
      !(p.wdtype == DType::F8_E4M3 && gemv_detail::mma_gemv_ok<DType::F8_E4M3>(p, 1)))
    return false;
  const int V = rms_norm_vec_width(p.N, h, p.out, out);
  if (V == 0) return false;
  const ResidualNorm r{h, w, eps, out, done};
  switch (V) {
    case 1:
      launch_v<1>(p, r, s);
      break;
    case 2:
      launch_v<2>(p, r, s);
      break;
    case 4:
      launch_v<4>(p, r, s);
      break;
    default:
      launch_v<8>(p, r, s);
      break;
  }
  return true;
}

}  // namespace moe::cuda
