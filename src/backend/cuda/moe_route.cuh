#pragma once
// DeepSeekMoE routing of one token by one warp (router logits F32):
//   V3 (sigmoid, noaux_tc): s = sigmoid(logits); b = s + correction bias (b only chooses); a group's score is
//       the sum of its two best b; keep topk_group groups; top-k of b among them.
//   V2 (softmax): s = softmax(logits); greedy top-k, or group_limited_greedy with a group's score = its max
//   s. w = s[chosen], normalised to sum 1 when norm_topk_prob, times routed_scaling_factor.
// Each top-k is k rounds of a warp-wide argmax (ties to the lower index, as on the CPU); the scores of the
// token's experts live in shared memory. Columns past top_k: the shared experts (RouteParams::shared_slots).
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/cuda_ops.h"

namespace moe::cuda {

// Warp-wide argmax of (v, i): larger v, ties to the smaller i.
__device__ __forceinline__ void warp_argmax(float& v, int& i) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    const float ov = __shfl_xor_sync(0xffffffffu, v, o);
    const int oi = __shfl_xor_sync(0xffffffffu, i, o);
    if (ov > v || (ov == v && oi < i)) {
      v = ov;
      i = oi;
    }
  }
}

// The calling warp routes the token whose logits are l [E] (read through L2: another block of the same kernel
// may have written them) into ids, weights [top_k + shared_slots]; sm: 2E floats of shared memory, the warp's
// own.
__device__ __forceinline__ void route_token(const float* l, const float* bias, const RouteParams& p,
                                            float* sm, int32_t* ids, float* weights) {
  const int lane = threadIdx.x % 32, E = p.num_experts;
  float* s = sm;
  float* choice = s + E;
  if (p.sigmoid) {
    for (int e = lane; e < E; e += 32) s[e] = 1.0f / (1.0f + expf(-__ldcg(l + e)));
  } else {
    float mx = -INFINITY;
    for (int e = lane; e < E; e += 32) mx = fmaxf(mx, __ldcg(l + e));
    mx = warp_max(mx);
    float sum = 0.0f;
    for (int e = lane; e < E; e += 32) sum += (s[e] = expf(__ldcg(l + e) - mx));
    sum = warp_sum(sum);
    for (int e = lane; e < E; e += 32) s[e] = s[e] / sum;
  }
  for (int e = lane; e < E; e += 32) choice[e] = s[e] + (bias ? bias[e] : 0.0f);
  __syncwarp();

  if (!p.greedy && p.n_group > 1) {
    const int per_group = E / p.n_group;
    float gscore = -INFINITY;
    if (lane < p.n_group) {
      float b1 = -INFINITY, b2 = -INFINITY;
      for (int i = 0; i < per_group; ++i) {
        const float v = choice[lane * per_group + i];
        if (v > b1) {
          b2 = b1;
          b1 = v;
        } else if (v > b2) {
          b2 = v;
        }
      }
      gscore = p.noaux ? b1 + b2 : b1;
    }
    // Keep the topk_group best groups: lanes of kept groups set keep = true.
    bool keep = false;
    float v = gscore;
    for (int r = 0; r < p.topk_group; ++r) {
      float bv = lane < p.n_group ? v : -INFINITY;
      int bi = lane < p.n_group ? lane : 1 << 30;
      warp_argmax(bv, bi);
      if (lane == bi) {
        keep = true;
        v = -INFINITY;
      }
    }
    for (int g = 0; g < p.n_group; ++g) {
      const bool kg = __shfl_sync(0xffffffffu, keep, g);
      if (!kg)
        for (int e = g * per_group + lane; e < (g + 1) * per_group; e += 32) choice[e] = -INFINITY;
    }
    __syncwarp();
  }

  // Top-k of choice; lane j < k keeps the j-th choice.
  int mine = 0;
  for (int j = 0; j < p.top_k; ++j) {
    float bv = -INFINITY;
    int bi = 1 << 30;
    for (int e = lane; e < E; e += 32)
      if (choice[e] > bv || (choice[e] == bv && e < bi)) {
        bv = choice[e];
        bi = e;
      }
    warp_argmax(bv, bi);
    if (bi >= E) bi = 0;  // only when fewer than k experts are left (cannot happen with valid params)
    if (lane == j) mine = bi;
    __syncwarp();
    if (lane == 0) choice[bi] = -INFINITY;
    __syncwarp();
  }
  const float w = lane < p.top_k ? s[mine] : 0.0f;
  // Sum in index order j = 0..k-1 as on the CPU.
  float sum = 0.0f;
  for (int j = 0; j < p.top_k; ++j) sum += __shfl_sync(0xffffffffu, w, j);
  if (lane < p.top_k) {
    float out = w;
    if (p.norm_topk_prob) out /= (sum + 1e-20f);
    ids[lane] = mine;
    weights[lane] = out * p.routed_scaling_factor;
  } else if (lane < p.top_k + p.shared_slots) {  // the shared experts as routed ones
    ids[lane] = E + (lane - p.top_k);
    weights[lane] = 1.0f;
  }
}

}  // namespace moe::cuda
