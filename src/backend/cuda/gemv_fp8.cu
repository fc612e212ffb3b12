// GEMV instantiations for FP8 E4M3 weights with 128x128 block scales (the algorithm is in gemv.cuh).
#include "backend/cuda/gemv.cuh"

namespace moe::cuda {

void gemv_fp8(const GemvParams& p, int tile, cudaStream_t s) { gemv_detail::launch_gemv<DType::F8_E4M3>(p, tile, s); }

}  // namespace moe::cuda
