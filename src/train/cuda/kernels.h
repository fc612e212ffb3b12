#pragma once
// Launchers of the trainer's CUDA kernels: plain functions of device pointers and a stream, one .cu per op, each
// the twin of the CPU op in train/ops.h (same shapes, same conventions: backward launchers ADD into their
// gradients). FP32 in and out, FP32 accumulation. Included by .cu files (C++17) and by cuda_compute.cpp.
#include <cuda_runtime.h>

#include <cstdint>

namespace moe::train::cuda {

// convert.cu: out[i] = bf16(in[i]) (round to nearest even), count values.
void to_bf16(uint16_t* out, const float* in, int64_t count, cudaStream_t s);
// convert.cu: out[i] = bf16 of a hash of (seed, i) mapped to [-1, 1) (never all zeros): operands for rate
// measurements that must not read uninitialised or zero memory.
void fill_bf16_uniform(uint16_t* out, int64_t count, uint32_t seed, cudaStream_t s);

// attention.cu: MLA, expanded form, causal, b sequences of t tokens one after another (ops.h MlaDims):
// q [b*t, H, dn+dr], kv [b*t, H, dn+dv], k_rope [b*t, dr]; out [b*t, H, dv], probs [b, H, t, t] (0 above the
// diagonal). The backward needs a scratch ds of b*H*t*t floats (the score gradients).
struct AttnShape {
  int64_t b = 0, t = 0, heads = 0, dn = 0, dr = 0, dv = 0;
  float scale = 1.0f;
};
void attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                       const AttnShape& a, cudaStream_t s);
void attention_backward(float* dq, float* dkv, float* dk_rope, float* ds, const float* dout, const float* probs,
                        const float* q, const float* kv, const float* k_rope, const AttnShape& a, cudaStream_t s);

// cross_entropy.cu: per row of logits [n, V]: loss[i] = -log softmax(logits_i)[target_i] (0 for a negative
// target), and logits_i overwritten with dscale * (softmax - onehot) (zeros for a negative target).
void cross_entropy(float* logits, float* loss, const int32_t* targets, int64_t n, int64_t vocab, float dscale,
                   cudaStream_t s);

// rmsnorm.cu: y [n, d] = w * x * rstd; backward adds dx (may be null) and dw (may be null; its row sums are
// taken in row order by one thread per column, deterministic).
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t d, float eps,
                     cudaStream_t s);
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t n, int64_t d, cudaStream_t s);

// swiglu.cu: out = silu(gate) * up; backward adds into dgate, dup (either may be null).
void swiglu_forward(float* out, const float* gate, const float* up, int64_t count, cudaStream_t s);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t count,
                     cudaStream_t s);

// rope.cu: rotate interleaved pairs of columns [offset, offset + 2 * half) of every head of x [n, heads,
// head_dim] in place by pos[i] * inv_freq[p], cos/sin times attn_factor; sign -1 is the backward. inv_freq is
// double, as RopeParams keeps it: an FP32 frequency times a position of 4096 is off by ~2e-4 rad.
void rope_rotate(float* x, int64_t n, int64_t heads, int64_t head_dim, int64_t offset, const int32_t* pos,
                 const double* inv_freq, int64_t half, float attn_factor, float sign, cudaStream_t s);

// embedding.cu: out[i] = table[ids[i]]; backward dtable[ids[i]] += dout[i], one thread per column walking the
// rows in order (deterministic, no atomics).
void embedding_forward(float* out, const int32_t* ids, int64_t n, const float* table, int64_t d, cudaStream_t s);
void embedding_backward(float* dtable, const int32_t* ids, int64_t n, const float* dout, int64_t d, cudaStream_t s);

// adamw.cu: one AdamW update of count values, optimizer.cpp's formula: g' = clip g; m = b1 m + (1-b1) g';
// v = b2 v + (1-b2) g'^2; w = w decay - lr (m / bc1) / (sqrt(v / bc2) + eps), decay = 1 - lr wd (1: no decay),
// bc1 = 1 - b1^step, bc2 = 1 - b2^step.
struct AdamWArgs {
  float clip = 1, lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, decay = 1, bc1 = 1, bc2 = 1;
};
void adamw_update(float* w, const float* g, float* m, float* v, int64_t count, const AdamWArgs& a, cudaStream_t s);

}  // namespace moe::train::cuda
