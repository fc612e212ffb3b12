#pragma once
// One decoder layer (MLA + dense MLP or MoE) over a batch of b sequences of t tokens, forward with every
// activation the backward needs kept in LayerActs, and its backward.
//
// Keep/recompute policy: everything is kept (the activations of a layer are ~20 values per token and hidden
// unit plus the attention probabilities [b, H, t, t]); nothing is recomputed. This is the simplest correct
// policy and the one the fixture-sized models want; recomputing the attention probabilities and the MLP's
// gate/up from the kept layer input is the first memory saving for long sequences (see docs/training.md).
#include <vector>

#include "backend/backend.h"
#include "train/expert_parallel.h"
#include "train/compute.h"
#include "train/ops.h"
#include "train/params.h"

namespace moe::train {

struct MlpActs {
  std::vector<float> x;               // [n, D] input (a copy; the gathered rows for a routed expert)
  std::vector<float> gate, up, act;   // [n, F]
  std::vector<float> out;             // [n, D] (kept for the routed experts' weight gradients)
};

struct MoeActs {
  std::vector<float> logits;          // [n, E] router logits
  Routing<float> routing;
  std::vector<std::vector<int32_t>> rows, slots;  // per expert: the tokens routed to it and which of their k
  std::vector<MlpActs> experts;       // per expert, over its rows (dropless: every routed token is computed)
  MlpActs shared;
  std::vector<int64_t> load;          // [E] tokens routed to each expert in this batch
  double seq_aux = 0;                 // the layer's balance-loss term (alpha included)
  // Expert parallelism (LayerContext::ep): experts[e] is kept only on e's owner, over every rank's rows of e;
  // ep_out[e] holds the outputs for this rank's rows; ep_counts [N, E] the rows each rank has for each expert.
  std::vector<int64_t> ep_counts;
  RowsPerExpert ep_out;
};

struct LayerActs {
  int64_t b = 0, t = 0, n = 0;
  std::vector<int32_t> pos;               // [n] position of each token in its sequence
  std::vector<float> x;                   // [n, D] layer input
  std::vector<float> a, a_rstd;           // input_layernorm
  std::vector<float> qa, qa_rstd, qan;    // q_a_proj, q_a_layernorm (q_lora_rank > 0)
  std::vector<float> q;                   // [n, H, dn + dr], rope applied
  std::vector<float> c_in, c, c_rstd;     // kv_a's first r columns, kv_a_layernorm
  std::vector<float> kr;                  // [n, dr] kv_a's last dr columns, rope applied
  std::vector<float> kv;                  // [n, H, dn + dv] kv_b_proj(c)
  std::vector<float> probs;               // [b, H, t, t]
  std::vector<float> att;                 // [n, H * dv] attention output before o_proj
  std::vector<float> h;                   // [n, D] x + o_proj(att)
  std::vector<float> f, f_rstd;           // post_attention_layernorm(h)
  MlpActs dense;
  MoeActs moe;
};

struct LayerContext {
  const ModelConfig* config = nullptr;
  RopeParams rope;
  double attn_scale = 1.0;
  RouterConfig router;
  double seq_aux_alpha = 0;  // 0: the layer adds no balance loss (the MTP layer)
  ThreadPool* pool = nullptr;  // the trainer's threads for the GEMMs (null: this thread alone)
  const ExpertParallel* ep = nullptr;  // routed experts sharded over ranks (null: every expert here)
  Compute* compute = nullptr;  // the GEMMs and attention (compute.h): never null in a context the model built
};

// x [b*t, D] -> out [b*t, D]
void layer_forward(LayerActs& A, const LayerParams& P, const LayerContext& ctx, const float* x, int64_t b, int64_t t,
                   float* out);
// dx [b*t, D] += d(layer)/dx^T dout; parameter gradients accumulate into P's params.
void layer_backward(float* dx, const float* dout, LayerActs& A, const LayerParams& P, const LayerContext& ctx);

// The FFN halves (ffn.cpp). MLP(x) = down(silu(gate x) * up x), over n rows.
void mlp_forward(MlpActs& A, const MlpParams& P, const float* x, int64_t n, int64_t d, float* out, Compute& cmp);
void mlp_backward(float* dx, const float* dout, const MlpActs& A, const MlpParams& P, int64_t n, int64_t d,
                  Compute& cmp);
// MoE(x) = sum_j w_j Expert_{c_j}(x) + Shared(x); b sequences of t tokens (for the balance loss).
void moe_forward(MoeActs& A, const LayerParams& P, const LayerContext& ctx, const float* x, int64_t b, int64_t t,
                 float* out);
void moe_backward(float* dx, const float* dout, const MoeActs& A, const LayerParams& P, const LayerContext& ctx,
                  const float* x, int64_t b, int64_t t);

}  // namespace moe::train
