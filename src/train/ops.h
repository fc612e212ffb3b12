#pragma once
// The trainer's ops: explicit forward / backward pairs over host row-major arrays (llm.c style, no autograd).
// Every op is a template over the element type T (float for training, double for the finite-difference tests);
// sums are accumulated in double whatever T is. Conventions:
//   - shapes are given in the comments as [rows, cols]; arrays are contiguous row-major;
//   - a *_backward ADDS into its gradient outputs (dx += ..., dw += ...), so residual branches, the shared
//     embedding/head and the MTP module's contributions sum without extra buffers; callers zero them once;
//   - a null gradient output is skipped.
#include <cstdint>
#include <vector>

#include "backend/backend.h"   // RopeParams
#include "io/model_config.h"   // ScoringFunc, TopkMethod

namespace moe {
class ThreadPool;
}

namespace moe::train {

// ---- embedding.cpp: out[n, d] = table[ids[i], :]
template <typename T> void embedding_forward(T* out, const int32_t* ids, int64_t n, const T* table, int64_t d);
template <typename T> void embedding_backward(T* dtable, const int32_t* ids, int64_t n, const T* dout, int64_t d);

// ---- rmsnorm.cpp: y[n, d] = w * x * rstd, rstd[n] = 1 / sqrt(mean(x^2) + eps) (kept for the backward)
template <typename T> void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t d, double eps);
template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t n, int64_t d);

// ---- matmul.cpp: y[n, m] = x[n, k] W[m, k]^T (a Linear layer without bias, as every projection of the model)
// With a pool the output rows (y, dx) or weight rows (dw) are split over its threads; every element is still one
// sum in the same order, so the result is the same bits as without.
template <typename T>
void matmul_forward(T* y, const T* x, const T* w, int64_t n, int64_t k, int64_t m, ThreadPool* pool = nullptr);
// dx[n, k] += dy W; dw[m, k] += dy^T x
template <typename T>
void matmul_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t n, int64_t k, int64_t m,
                     ThreadPool* pool = nullptr);

// ---- rope.cpp: rotary embedding on interleaved pairs (v[2i], v[2i+1]) by angle pos * inv_freq[i], cos/sin
// times rope.attn_factor (YaRN's mscale ratio). x is [n, heads, head_dim]; columns [offset, offset + dr) of
// every head rotate, in place. The op is linear and orthogonal up to attn_factor: the backward rotates back.
template <typename T>
void rope_forward(T* x, int64_t n, int64_t heads, int64_t head_dim, int64_t offset, const int32_t* pos,
                  const RopeParams& rope);
template <typename T>
void rope_backward(T* dx, int64_t n, int64_t heads, int64_t head_dim, int64_t offset, const int32_t* pos,
                   const RopeParams& rope);

// ---- attention.cpp: MLA in the expanded form for one sequence of t tokens, causal.
// q [t, H, dn + dr] (rope already applied to its last dr columns), kv [t, H, dn + dv] (k_nope then v, per head:
// kv_b_proj's output), k_rope [t, dr] shared by the heads. out [t, H, dv]; probs [H, t, t] kept (zero above the
// diagonal). score[h, i, j] = (q_nope[i,h] . k_nope[j,h] + q_rope[i,h] . k_rope[j]) * scale, j <= i.
struct MlaDims {
  int64_t t = 0, heads = 0, dn = 0, dr = 0, dv = 0;
  double scale = 1.0;
};
template <typename T>
void mla_attention_forward(T* out, T* probs, const T* q, const T* kv, const T* k_rope, const MlaDims& d);
template <typename T>
void mla_attention_backward(T* dq, T* dkv, T* dk_rope, const T* dout, const T* probs, const T* q, const T* kv,
                            const T* k_rope, const MlaDims& d);

// ---- swiglu.cpp: out = silu(gate) * up, elementwise over count values
template <typename T> void swiglu_forward(T* out, const T* gate, const T* up, int64_t count);
template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t count);

// ---- router.cpp: DeepSeek's MoE router (MODEL.md "MoE routing"), for n tokens and E experts.
struct RouterConfig {
  int64_t experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  ScoringFunc scoring = ScoringFunc::Sigmoid;
  TopkMethod method = TopkMethod::NoauxTc;
  bool norm_topk_prob = true;
  double scaling = 1.0;  // routed_scaling_factor
};
template <typename T>
struct Routing {
  std::vector<T> scores;        // [n, E] sigmoid or softmax of the logits (unbiased)
  std::vector<int32_t> chosen;  // [n, K] expert ids, in the order top-k picked them
  std::vector<T> weights;       // [n, K] combine weights
  std::vector<T> denom;         // [n] sum of the chosen scores + 1e-20 (1 when not normalised)
};
// bias [E] (e_score_correction_bias, may be null) only chooses: it gets no gradient and does not enter weights.
template <typename T>
void router_forward(Routing<T>& r, const T* logits, const float* bias, int64_t n, const RouterConfig& c);
// dscores[n, E] += d(weights)/d(scores)^T dweights[n, K]   (through the normalisation and the scaling)
template <typename T>
void router_weights_backward(T* dscores, const T* dweights, const Routing<T>& r, int64_t n, const RouterConfig& c);
// dlogits[n, E] += d(scores)/d(logits)^T dscores
template <typename T>
void router_scores_backward(T* dlogits, const T* dscores, const Routing<T>& r, int64_t n, const RouterConfig& c);

// Sequence-wise balance loss of one MoE layer (MODEL.md): alpha * mean over the b sequences (t tokens each,
// rows b*t .. b*t+t-1) of sum_i f_i P_i, f_i = E / (K t) * count_i (no gradient), P_i = mean_t s_i / sum_j s_j.
template <typename T>
double balance_loss_forward(const Routing<T>& r, int64_t b, int64_t t, const RouterConfig& c, double alpha);
// dscores[n, E] += dL/ds * dloss (dloss: the gradient arriving at the layer's loss value, 1 in the objective)
template <typename T>
void balance_loss_backward(T* dscores, const Routing<T>& r, int64_t b, int64_t t, const RouterConfig& c,
                           double alpha, double dloss);

// ---- cross_entropy.cpp: softmax over the vocabulary fused with the cross-entropy (llm.c's fused classifier).
// logits [n, V] are overwritten with dlogits = dscale * (softmax - onehot(target)); returns sum_i -log p_i[target_i]
// (computed before the overwrite), so the [n, V] probabilities never need a buffer of their own. A negative
// target marks a row without one: it adds no loss and its gradient is zero.
template <typename T>
double cross_entropy_fused(T* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale);

}  // namespace moe::train
