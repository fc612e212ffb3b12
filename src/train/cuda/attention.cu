// MLA attention (expanded form, causal) forward and backward with materialised scores, FP32: the twin of
// train/ops/attention.cpp. One block per (query row i, head h, sequence s) for the forward and the row pass of
// the backward; one block per (key row j, head, sequence) for the column pass (dk_nope, dv), one per (key row,
// sequence) for k_rope's gradient, which sums over the heads. No atomics: every output element is one thread's
// sum in a fixed order, so runs are bit-reproducible. Sequences up to 12k tokens (a row of scores in shared
// memory); v1 for seq <= 1024, flash-style tiling is the next step (docs/training.md).
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

constexpr int kThreads = 128;
// A row of scores in shared memory is allocated with this many spare floats: compute-sanitizer (H200, CUDA 13)
// reported 12-byte shared loads at row index i..i+2 in the forward's j <= i loop (wide loads the compiler made of
// the unrolled loop), past an allocation of exactly t floats at i = t - 1.
constexpr int64_t kRowPad = 4;

struct Dims {
  int64_t t, H, dn, dr, dv, dq, dkv;
  float scale;
};

Dims dims_of(const AttnShape& a) {
  return Dims{a.t, a.heads, a.dn, a.dr, a.dv, a.dn + a.dr, a.dn + a.dv, a.scale};
}

// Forward. sc: the row's scores, then its probabilities.
__global__ void forward_kernel(float* out, float* probs, const float* q, const float* kv, const float* kr, Dims d) {
  extern __shared__ float sc[];
  __shared__ float red[32];
  const int64_t i = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
  const float* qi = q + ((s * d.t + i) * d.H + h) * d.dq;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) {
    const float* kj = kv + ((s * d.t + j) * d.H + h) * d.dkv;
    const float* rj = kr + (s * d.t + j) * d.dr;
    float acc = 0;
    for (int64_t l = 0; l < d.dn; ++l) acc += qi[l] * kj[l];
    for (int64_t l = 0; l < d.dr; ++l) acc += qi[d.dn + l] * rj[l];
    sc[j] = acc * d.scale;
    mx = fmaxf(mx, sc[j]);
  }
  mx = block_reduce<true>(mx, red);
  float z = 0;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) z += (sc[j] = expf(sc[j] - mx));
  z = block_reduce<false>(z, red);
  float* p = probs + ((s * d.H + h) * d.t + i) * d.t;
  for (int64_t j = threadIdx.x; j < d.t; j += blockDim.x) {
    if (j <= i) sc[j] /= z;
    p[j] = j <= i ? sc[j] : 0.0f;
  }
  __syncthreads();
  float* oi = out + ((s * d.t + i) * d.H + h) * d.dv;
  for (int64_t l = threadIdx.x; l < d.dv; l += blockDim.x) {
    float acc = 0;
    for (int64_t j = 0; j <= i; ++j) acc += sc[j] * kv[((s * d.t + j) * d.H + h) * d.dkv + d.dn + l];
    oi[l] = acc;
  }
}

// Backward, row pass: dP_ij = dout_i . v_j, dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij') scale (kept in ds), and
// dq_i += sum_j dS_ij k_j (k = [k_nope ; k_rope]).
__global__ void backward_rows_kernel(float* dq, float* ds, const float* dout, const float* probs, const float* kv,
                                     const float* kr, Dims d) {
  extern __shared__ float g[];
  __shared__ float red[32];
  const int64_t i = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
  const float* doi = dout + ((s * d.t + i) * d.H + h) * d.dv;
  const float* p = probs + ((s * d.H + h) * d.t + i) * d.t;
  float pdp = 0;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) {
    const float* vj = kv + ((s * d.t + j) * d.H + h) * d.dkv + d.dn;
    float dp = 0;
    for (int64_t l = 0; l < d.dv; ++l) dp += doi[l] * vj[l];
    g[j] = dp;
    pdp += p[j] * dp;
  }
  pdp = block_reduce<false>(pdp, red);
  float* dsi = ds + ((s * d.H + h) * d.t + i) * d.t;
  for (int64_t j = threadIdx.x; j < d.t; j += blockDim.x) {
    if (j <= i) g[j] = p[j] * (g[j] - pdp) * d.scale;
    dsi[j] = j <= i ? g[j] : 0.0f;
  }
  __syncthreads();
  float* dqi = dq + ((s * d.t + i) * d.H + h) * d.dq;
  for (int64_t l = threadIdx.x; l < d.dq; l += blockDim.x) {
    float acc = 0;
    if (l < d.dn)
      for (int64_t j = 0; j <= i; ++j) acc += g[j] * kv[((s * d.t + j) * d.H + h) * d.dkv + l];
    else
      for (int64_t j = 0; j <= i; ++j) acc += g[j] * kr[(s * d.t + j) * d.dr + (l - d.dn)];
    dqi[l] += acc;
  }
}

// Backward, column pass per key j and head: dk_nope_j += sum_{i>=j} dS_ij q_nope_i, dv_j += sum_{i>=j} P_ij dout_i.
__global__ void backward_cols_kernel(float* dkv, const float* ds, const float* probs, const float* q,
                                     const float* dout, Dims d) {
  const int64_t j = blockIdx.x, h = blockIdx.y, s = blockIdx.z;
  const float* dsc = ds + (s * d.H + h) * d.t * d.t + j;  // column j: stride t
  const float* pc = probs + (s * d.H + h) * d.t * d.t + j;
  float* dkj = dkv + ((s * d.t + j) * d.H + h) * d.dkv;
  for (int64_t l = threadIdx.x; l < d.dkv; l += blockDim.x) {
    float acc = 0;
    if (l < d.dn)
      for (int64_t i = j; i < d.t; ++i) acc += dsc[i * d.t] * q[((s * d.t + i) * d.H + h) * d.dq + l];
    else
      for (int64_t i = j; i < d.t; ++i) acc += pc[i * d.t] * dout[((s * d.t + i) * d.H + h) * d.dv + (l - d.dn)];
    dkj[l] += acc;
  }
}

// k_rope is shared by the heads: dk_rope_j += sum_h sum_{i>=j} dS_hij q_rope_ih.
__global__ void backward_rope_kernel(float* dkr, const float* ds, const float* q, Dims d) {
  const int64_t j = blockIdx.x, s = blockIdx.y;
  for (int64_t l = threadIdx.x; l < d.dr; l += blockDim.x) {
    float acc = 0;
    for (int64_t h = 0; h < d.H; ++h) {
      const float* dsc = ds + (s * d.H + h) * d.t * d.t + j;
      for (int64_t i = j; i < d.t; ++i) acc += dsc[i * d.t] * q[((s * d.t + i) * d.H + h) * d.dq + d.dn + l];
    }
    dkr[(s * d.t + j) * d.dr + l] += acc;
  }
}

}  // namespace

void attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                       const AttnShape& a, cudaStream_t s) {
  if (a.b == 0 || a.t == 0) return;
  const dim3 grid(unsigned(a.t), unsigned(a.heads), unsigned(a.b));
  forward_kernel<<<grid, kThreads, size_t(a.t + kRowPad) * sizeof(float), s>>>(out, probs, q, kv, k_rope, dims_of(a));
}

void attention_backward(float* dq, float* dkv, float* dk_rope, float* ds, const float* dout, const float* probs,
                        const float* q, const float* kv, const float* k_rope, const AttnShape& a, cudaStream_t s) {
  if (a.b == 0 || a.t == 0) return;
  const Dims d = dims_of(a);
  const dim3 grid(unsigned(a.t), unsigned(a.heads), unsigned(a.b));
  backward_rows_kernel<<<grid, kThreads, size_t(a.t + kRowPad) * sizeof(float), s>>>(dq, ds, dout, probs, kv, k_rope, d);
  backward_cols_kernel<<<grid, kThreads, 0, s>>>(dkv, ds, probs, q, dout, d);
  backward_rope_kernel<<<dim3(unsigned(a.t), unsigned(a.b)), 64, 0, s>>>(dk_rope, ds, q, d);
}

}  // namespace moe::train::cuda
