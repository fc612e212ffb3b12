// The router's GEMV and the routing of one token in one launch (batch-1 decode,
// CudaOptions::moe_decode_fusion): logits [E] = x . W_router[e] by the single-token GEMV's pass (gemv.cuh:
// one router row per warp, the same arithmetic as the unfused matmul, so the same logits), then the last
// block to finish routes the token (moe_route.cuh: the same routing as moe_route) from all blocks' logits.
// Blocks count themselves done on a device counter that the last one sets back to 0, so the next launch (or
// graph replay) starts from 0.
#include "backend/cuda/gemv.cuh"
#include "backend/cuda/moe_route.cuh"

namespace moe::cuda {

namespace {

template <DType WT>
__global__ void __launch_bounds__(256) router_route_kernel(GemvParams p, const float* bias, RouteParams rp,
                                                           int32_t* ids, float* weights, unsigned* done) {
  extern __shared__ float sm[];  // 2E floats: the last block's routing
  gemv_detail::single_token_pass<WT>(p);  // one router row per warp
  if (!last_block_to_arrive(done, gridDim.x)) return;
  if (threadIdx.x / 32 == 0) route_token(p.out, bias, rp, sm, ids, weights);
}

}  // namespace

bool router_route_ok(DType wdtype, int32_t num_experts, int32_t cols) {
  return (wdtype == DType::BF16 || wdtype == DType::F16 || wdtype == DType::F32) && num_experts > 0 &&
         num_experts <= 4096 && cols <= 32;
}

void router_route(const GemvParams& p, const float* bias, const RouteParams& rp, int32_t* ids, float* weights,
                  unsigned* done, cudaStream_t s) {
  if (!router_route_ok(p.wdtype, rp.num_experts, rp.top_k + rp.shared_slots) || p.N != rp.num_experts ||
      p.T != 1 || rp.n_group > 32)
    check(cudaErrorInvalidValue, "router_route: a router this kernel does not take");
  GemvParams q = p;
  q.prefetch = true;
  const dim3 grid(unsigned((p.N + gemv_detail::kWarps - 1) / gemv_detail::kWarps));
  const size_t smem = 2 * size_t(rp.num_experts) * sizeof(float);
  switch (p.wdtype) {
    case DType::BF16:
      launch("router_route", router_route_kernel<DType::BF16>, grid, 256, smem, s, q, bias, rp, ids, weights,
             done);
      break;
    case DType::F16:
      launch("router_route", router_route_kernel<DType::F16>, grid, 256, smem, s, q, bias, rp, ids, weights,
             done);
      break;
    default:
      launch("router_route", router_route_kernel<DType::F32>, grid, 256, smem, s, q, bias, rp, ids, weights,
             done);
  }
}

}  // namespace moe::cuda
