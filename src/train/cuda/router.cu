// DeepSeek's MoE router on the device, the twin of train/ops/router.cpp: one thread per token (E <= 1024
// experts, K <= 16 chosen, n_group <= 64 groups). Forward: scores (sigmoid or softmax, stored in FP32 and chosen
// and weighed from the stored value, as the CPU op does), the choice values (score + correction bias under
// noaux_tc), group-limited selection, top-k by repeated selection (largest first, ties to the lower index: the
// CPU's stable sort), weights normalised over the chosen and scaled. The sequence-wise balance loss: f [b, E]
// by one block per sequence counting its (token, slot) choices in shared integer counters (integer adds: the same
// counts in any order), the per-token terms by one thread per token (summed in double by the caller).
// The per-token kernels run 32 threads a block: a micro-batch of 2,048 tokens then spreads over 64 SMs instead of
// 16 (each thread's work is a few hundred dependent steps over its token's E scores). Backward: one thread per token writes dlogits [n, E] from the weights' gradient and the balance
// loss's, through the sigmoid or the softmax. Every sum is in double, in the CPU's order.
// Sigmoid routers without groups (n_group 1: Moonlight, train-mid) run the forward one warp per token instead:
// lane l scores experts l, l + 32, ... (each score the same double expression), and each of the K picks is a warp
// argmax of (choice, expert) pairs, the larger choice first and the lower expert on a tie (the per-thread
// kernel's rule), so the results are the same bits; the per-thread kernel, a few thousand dependent steps a
// token, took 0.19 ms a layer at 4,096 tokens and 64 experts on an H200.
#include <climits>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

constexpr int kMaxK = 16, kMaxGroups = 64, kMaxExperts = 1024;

__device__ double choice_of(const float* s, const float* bias, const RouterArgs& c, int64_t e) {
  return double(s[e]) + (bias && c.noaux ? double(bias[e]) : 0.0);
}

__global__ void router_forward_kernel(float* scores, int32_t* chosen, float* weights, float* denom,
                                      const float* logits, const float* bias, int64_t n, RouterArgs c) {
  const int64_t t = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (t >= n) return;
  const int64_t E = c.experts, K = c.top_k;
  const float* l = logits + t * E;
  float* s = scores + t * E;
  if (c.sigmoid) {
    for (int64_t e = 0; e < E; ++e) s[e] = float(1.0 / (1.0 + exp(-double(l[e]))));
  } else {
    double mx = double(l[0]), z = 0;
    for (int64_t e = 1; e < E; ++e) mx = fmax(mx, double(l[e]));
    for (int64_t e = 0; e < E; ++e) z += exp(double(l[e]) - mx);
    for (int64_t e = 0; e < E; ++e) s[e] = float(exp(double(l[e]) - mx) / z);
  }
  // Group-limited: keep the topk_group groups of the best group scores (ties to the lower group).
  uint64_t keep = ~uint64_t(0);
  if (c.group_limited && c.n_group > 1) {
    const int64_t per = E / c.n_group;
    double gs[kMaxGroups];
    for (int64_t g = 0; g < c.n_group; ++g) {
      double b1 = -INFINITY, b2 = -INFINITY;
      for (int64_t e = g * per; e < (g + 1) * per; ++e) {
        const double v = choice_of(s, bias, c, e);
        if (v > b1) b2 = b1, b1 = v;
        else if (v > b2) b2 = v;
      }
      gs[g] = c.noaux ? b1 + (per > 1 ? b2 : 0.0) : b1;
    }
    keep = 0;
    for (int64_t j = 0; j < c.topk_group; ++j) {
      int64_t best = -1;
      for (int64_t g = 0; g < c.n_group; ++g)
        if (!(keep >> g & 1) && (best < 0 || gs[g] > gs[best])) best = g;
      keep |= uint64_t(1) << best;
    }
  }
  const int64_t per = E / c.n_group;
  int32_t pick[kMaxK];
  for (int64_t j = 0; j < K; ++j) {
    int64_t best = -1;
    double bv = 0;
    for (int64_t e = 0; e < E; ++e) {
      bool taken = false;
      for (int64_t q = 0; q < j; ++q) taken |= pick[q] == e;
      if (taken) continue;
      const double v = (keep >> (e / per) & 1) ? choice_of(s, bias, c, e) : -INFINITY;
      if (best < 0 || v > bv) best = e, bv = v;
    }
    pick[j] = int32_t(best);
  }
  double d = 1.0;
  if (c.norm_topk_prob) {
    d = 1e-20;
    for (int64_t j = 0; j < K; ++j) d += double(s[pick[j]]);
  }
  denom[t] = float(d);
  for (int64_t j = 0; j < K; ++j) {
    chosen[t * K + j] = pick[j];
    weights[t * K + j] = float(c.scaling * double(s[pick[j]]) / d);
  }
}

constexpr int kWarpSlots = kMaxExperts / 32;  // experts a lane holds at most

__global__ void router_forward_warp_kernel(float* scores, int32_t* chosen, float* weights, float* denom,
                                           const float* logits, const float* bias, int64_t n, RouterArgs c) {
  const int64_t t = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) / 32;
  const int lane = int(threadIdx.x % 32);
  if (t >= n) return;  // whole warps (blockDim is a multiple of 32)
  const int E = int(c.experts), K = int(c.top_k);
  const float* l = logits + t * E;
  float* s = scores + t * E;
  float sc[kWarpSlots];
  double ch[kWarpSlots];
  uint32_t taken = 0;  // bit i: expert lane + 32 i is picked (or does not exist)
#pragma unroll
  for (int i = 0; i < kWarpSlots; ++i) {
    const int e = lane + 32 * i;
    if (e < E) {
      sc[i] = float(1.0 / (1.0 + exp(-double(l[e]))));
      s[e] = sc[i];
      ch[i] = double(sc[i]) + (bias && c.noaux ? double(bias[e]) : 0.0);
    } else {
      sc[i] = 0.0f, ch[i] = -INFINITY, taken |= 1u << i;
    }
  }
  double d = c.norm_topk_prob ? 1e-20 : 1.0;
  int32_t pick[kMaxK];
  float pick_s[kMaxK];
  for (int j = 0; j < K; ++j) {
    double bv = -INFINITY;
    int be = INT_MAX;
    float bs = 0.0f;
#pragma unroll
    for (int i = 0; i < kWarpSlots; ++i)
      if (!(taken >> i & 1u) && (be == INT_MAX || ch[i] > bv)) bv = ch[i], be = lane + 32 * i, bs = sc[i];
    for (int o = 16; o > 0; o >>= 1) {
      const double ov = __shfl_xor_sync(0xffffffffu, bv, o);
      const int oe = __shfl_xor_sync(0xffffffffu, be, o);
      const float os = __shfl_xor_sync(0xffffffffu, bs, o);
      if (oe != INT_MAX && (be == INT_MAX || ov > bv || (ov == bv && oe < be))) bv = ov, be = oe, bs = os;
    }
    if (be % 32 == lane) taken |= 1u << (be / 32);
    pick[j] = be, pick_s[j] = bs;
    if (c.norm_topk_prob) d += double(bs);
  }
  if (lane == 0) {
    denom[t] = float(d);
    for (int j = 0; j < K; ++j) {
      chosen[t * K + j] = pick[j];
      weights[t * K + j] = float(c.scaling * double(pick_s[j]) / d);
    }
  }
}

// Block seq: f[seq, e] = count of e among the sequence's t K choices x E / (K t). Shared counters (E <= 1024).
__global__ void balance_fractions_kernel(float* f, const int32_t* chosen, int64_t t, RouterArgs c) {
  __shared__ int counts[kMaxExperts];
  const int64_t seq = blockIdx.x, E = c.experts;
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x) counts[e] = 0;
  __syncthreads();
  const int32_t* ch = chosen + seq * t * c.top_k;
  for (int64_t r = threadIdx.x; r < t * c.top_k; r += blockDim.x) {
    const int32_t e = ch[r];
    if (e >= 0 && e < E) atomicAdd(&counts[e], 1);
  }
  __syncthreads();
  for (int64_t e = threadIdx.x; e < E; e += blockDim.x)
    f[seq * E + e] = float(double(counts[e]) * double(E) / double(c.top_k * t));
}

__global__ void balance_terms_kernel(float* terms, const float* scores, const float* f, int64_t b, int64_t t,
                                     RouterArgs c, double alpha) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= b * t) return;
  const int64_t E = c.experts;
  const float* s = scores + i * E;
  const float* fs = f + (i / t) * E;
  double sum = 0, fp = 0;
  for (int64_t e = 0; e < E; ++e) sum += double(s[e]);
  for (int64_t e = 0; e < E; ++e) fp += double(fs[e]) * double(s[e]) / sum;
  terms[i] = float(alpha * fp / double(t * b));
}

__global__ void router_backward_kernel(float* dlogits, const float* dweights, const float* scores,
                                       const int32_t* chosen, const float* denom, const float* f, int64_t n, int64_t t,
                                       RouterArgs c, double alpha_over_tb) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= n) return;
  const int64_t E = c.experts, K = c.top_k;
  const float* s = scores + i * E;
  const int32_t* ch = chosen + i * K;
  const float* dw = dweights + i * K;
  const double D = double(denom[i]);
  double dot = 0;
  for (int64_t j = 0; j < K; ++j) dot += double(dw[j]) * double(s[ch[j]]);
  double nsum = 0, gq = 0;
  const float* fs = f ? f + (i / t) * E : nullptr;
  if (fs) {
    for (int64_t e = 0; e < E; ++e) nsum += double(s[e]);
    for (int64_t e = 0; e < E; ++e) gq += alpha_over_tb * double(fs[e]) * double(s[e]) / nsum;
  }
  // ds_e: the weights' term (for a chosen e) plus the balance loss's, rounded to FP32 as the CPU's dscores are.
  auto ds = [&](int64_t e) {
    float v = 0.0f;
    for (int64_t j = 0; j < K; ++j)
      if (ch[j] == e) {
        double g = double(dw[j]) / D;
        if (c.norm_topk_prob) g -= dot / (D * D);
        v += float(c.scaling * g);
      }
    if (fs) v += float((alpha_over_tb * double(fs[e]) - gq) / nsum);
    return v;
  };
  float* dl = dlogits + i * E;
  if (c.sigmoid) {
    for (int64_t e = 0; e < E; ++e) dl[e] = float(double(ds(e)) * double(s[e]) * (1.0 - double(s[e])));
  } else {
    double sd = 0;
    for (int64_t e = 0; e < E; ++e) sd += double(s[e]) * double(ds(e));
    for (int64_t e = 0; e < E; ++e) dl[e] = float(double(s[e]) * (double(ds(e)) - sd));
  }
}

}  // namespace

bool router_supported(const RouterArgs& c) {
  return c.top_k <= kMaxK && c.n_group <= kMaxGroups && c.n_group >= 1 && c.experts % c.n_group == 0 &&
         c.topk_group <= c.n_group && c.experts <= kMaxExperts;
}

void router_forward(float* scores, int32_t* chosen, float* weights, float* denom, const float* logits,
                    const float* bias, int64_t n, const RouterArgs& c, cudaStream_t s) {
  if (n == 0) return;
  if (c.sigmoid && (!c.group_limited || c.n_group == 1)) {
    router_forward_warp_kernel<<<blocks_for(n * 32, 256), 256, 0, s>>>(scores, chosen, weights, denom, logits, bias,
                                                                         n, c);
    return;
  }
  router_forward_kernel<<<blocks_for(n, 32), 32, 0, s>>>(scores, chosen, weights, denom, logits, bias, n, c);
}

void balance_fractions(float* f, const int32_t* chosen, int64_t b, int64_t t, const RouterArgs& c, cudaStream_t s) {
  if (b == 0) return;
  balance_fractions_kernel<<<unsigned(b), 1024, 0, s>>>(f, chosen, t, c);
}

void balance_terms(float* terms, const float* scores, const float* f, int64_t b, int64_t t, const RouterArgs& c,
                   double alpha, cudaStream_t s) {
  if (b * t == 0) return;
  balance_terms_kernel<<<blocks_for(b * t, 32), 32, 0, s>>>(terms, scores, f, b, t, c, alpha);
}

void router_backward(float* dlogits, const float* dweights, const float* scores, const int32_t* chosen,
                     const float* denom, const float* f, int64_t b, int64_t t, const RouterArgs& c, double alpha,
                     cudaStream_t s) {
  const int64_t n = b * t;
  if (n == 0) return;
  router_backward_kernel<<<blocks_for(n, 32), 32, 0, s>>>(dlogits, dweights, scores, chosen, denom, f, n, t, c,
                                                          alpha / double(t * b));
}

}  // namespace moe::train::cuda
