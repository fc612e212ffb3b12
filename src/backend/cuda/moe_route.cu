// DeepSeekMoE routing of T tokens: one warp per token (moe_route.cuh's route_token, which says the maths),
// four tokens a block.
#include "backend/cuda/moe_route.cuh"

namespace moe::cuda {

namespace {

constexpr int kTokensPerBlock = 4;

__global__ void __launch_bounds__(32 * kTokensPerBlock)
    route_kernel(const float* logits, const float* bias, RouteParams p, int64_t T, int32_t* ids,
                 float* weights) {
  extern __shared__ float sm[];
  pdl_trigger();
  pdl_wait();
  const int warp = threadIdx.x / 32, E = p.num_experts, cols = p.top_k + p.shared_slots;
  const int64_t t = int64_t(blockIdx.x) * kTokensPerBlock + warp;
  if (t >= T) return;
  route_token(logits + t * E, bias, p, sm + warp * 2 * E, ids + t * cols, weights + t * cols);
}

}  // namespace

void moe_route(const float* logits, const float* bias, const RouteParams& p, int64_t T, int32_t* ids,
               float* weights, cudaStream_t s) {
  if (T == 0) return;
  if (p.top_k + p.shared_slots > 32) check(cudaErrorInvalidValue, "moe_route: top_k + shared slots > 32");
  if (p.n_group > 32) check(cudaErrorInvalidValue, "moe_route: n_group > 32");
  const size_t smem = size_t(kTokensPerBlock) * 2 * size_t(p.num_experts) * sizeof(float);
  launch("moe_route", route_kernel, unsigned((T + kTokensPerBlock - 1) / kTokensPerBlock),
         32 * kTokensPerBlock, smem, s, logits, bias, p, T, ids, weights);
}

}  // namespace moe::cuda
