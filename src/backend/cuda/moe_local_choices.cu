// Expert parallelism's all-reduce mode (Backend::moe_local_choices): each (token, choice) mapped to this
// rank's local slot of its expert, or to -1 with weight 0 where another rank holds the copy that takes the
// token. One thread per choice; the table is [E, L] I32 (copy t mod L of expert e).
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

__global__ void local_choices_kernel(const int32_t* ids, const float* w, const int32_t* slots, int64_t n,
                                     int32_t k, int32_t L, int32_t E, int32_t* local_ids, float* local_w) {
  pdl_trigger();
  pdl_wait();  // the ids and weights come from moe_route
  const int64_t a = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (a >= n) return;
  const int32_t e = ids[a];
  const int32_t slot = e >= 0 && e < E ? slots[int64_t(e) * L + (a / k) % L] : -1;
  local_ids[a] = slot;
  local_w[a] = slot >= 0 ? w[a] : 0.0f;
}

}  // namespace

void moe_local_choices(const int32_t* ids, const float* w, const int32_t* slots, int64_t n, int32_t k, int32_t L,
                       int32_t E, int32_t* local_ids, float* local_w, cudaStream_t s) {
  if (n == 0) return;
  constexpr int kThreads = 256;
  launch("moe_local_choices", local_choices_kernel, blocks_for(n, kThreads), kThreads, 0, s, ids, w, slots, n, k, L,
         E, local_ids, local_w);
}

}  // namespace moe::cuda
