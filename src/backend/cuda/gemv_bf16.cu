// GEMV instantiations for 16- and 32-bit weights (the algorithm is in gemv.cuh).
#include "backend/cuda/gemv.cuh"

namespace moe::cuda {

void gemv_bf16(const GemvParams& p, int tile, cudaStream_t s) {
  switch (p.wdtype) {
    case DType::BF16: gemv_detail::launch_gemv<DType::BF16>(p, tile, s); break;
    case DType::F16: gemv_detail::launch_gemv<DType::F16>(p, tile, s); break;
    case DType::F32: gemv_detail::launch_gemv<DType::F32>(p, tile, s); break;
    default: check(cudaErrorInvalidValue, "gemv: unsupported weight dtype");
  }
}

void gemv(const GemvParams& p, int tile, cudaStream_t s) {
  if (p.N == 0 || p.grid_y == 0) return;
  if (p.wdtype == DType::F8_E4M3) gemv_fp8(p, tile, s);
  else gemv_bf16(p, tile, s);
}

}  // namespace moe::cuda
