// device_memory_plan (memory_plan.h): the DeviceTrainer's buffers, counted in values of 4 bytes (FP32, int32)
// or 2 (BF16). n = batch x seq_len rows; K routed experts a token; F the dense, Fs the shared, Fm an expert's
// width.
#include "train/memory_plan.h"

#include <algorithm>

#include "train/params.h"

namespace moe::train {

namespace {
constexpr double kRuntime = 512.0 * 1048576.0;  // device_trainer.cpp's kHeadroom

struct Widths {
  double D, H, dq, dn, dr, dv, r, ql, V, E, K, F, Fm, Fs;
};

Widths widths(const ModelConfig& c) {
  return {double(c.hidden_size),        double(c.num_attention_heads),
          double(c.qk_head_dim()),      double(c.qk_nope_head_dim),
          double(c.qk_rope_head_dim),   double(c.v_head_dim),
          double(c.kv_lora_rank),       double(c.q_lora_rank),
          double(c.vocab_size),         double(c.n_routed_experts),
          double(c.num_experts_per_tok), double(c.intermediate_size),
          double(c.moe_intermediate_size), double(c.moe_intermediate_size * c.n_shared_experts)};
}

// Kept activations of one layer over b sequences of t (4-byte values).
double layer_kept(const Widths& w, bool moe, double b, double t, bool flash) {
  const double n = b * t;
  // Under BF16 GEMMs (the plan's mode) a, qan, c and the MLPs' act are kept only in BF16, att and f in both forms.
  double v = 3 * n * w.D + 3 * n;  // a (BF16), h, f (FP32 + BF16) and their rstds (+ c_rstd)
  if (w.ql > 0) v += 1.5 * n * w.ql + n;  // qa, qan (BF16), qa_rstd
  v += n * w.H * w.dq + n * (w.r + w.dr) + 1.5 * n * w.r + n * w.dr + n * w.H * (w.dn + w.dv);  // q, kva, c_in, c, kr, kv
  v += (flash ? b * w.H * t : b * w.H * t * t) + 1.5 * n * w.H * w.dv;  // lse or probs, att (FP32 + BF16)
  if (!moe) return v + 2.5 * n * w.F;  // gate, up, act (BF16)
  const double nk = n * w.K;
  v += 2 * n * w.E + 2 * nk + n + w.E + 3 * nk;  // logits, scores, chosen, weights, denom, bias, rows/slots/pos
  // eout, gate, up (FP32) and xs, act in BF16 (half a 4-byte value each: grouped experts keep those as BF16 only)
  v += 1.5 * nk * w.D + 2.5 * nk * w.Fm + b * w.E;  // + frac
  if (w.Fs > 0) v += 2.5 * n * w.Fs + n * w.D;   // the shared experts (act in BF16) and their output
  return v;
}

// The backward's named temporaries of one layer (4-byte values), in three groups of buffers: each named buffer is
// allocated once at the largest size any layer asks of it, so the plan takes each group's largest.
struct Temps {
  double attn = 0, mlp = 0, moe = 0;
};
Temps layer_temps(const Widths& w, bool moe, double b, double t, bool flash) {
  const double n = b * t;
  Temps r;
  r.attn = 3 * n * w.D + n * w.H * w.dv + n * w.H * w.dq + n * w.H * (w.dn + w.dv) + n * w.dr;  // dh df da datt dq dkv dkr
  r.attn += (flash ? b * w.H * t + w.H * n * w.dr : b * w.H * t * t);  // delta and the dk_rope partials, or ds
  r.attn += 2 * n * w.r + n * (w.r + w.dr);                           // dc, dc_in, dkva
  if (w.ql > 0) r.attn += 2 * n * w.ql;
  r.mlp = 2 * n * (moe ? w.Fs : w.F);  // dact (FP32), dgate, dup (BF16) of the dense or shared MLP
  if (moe) {
    const double nk = n * w.K;
    // moe_dxs, dweights, dact (FP32), dlogits, aux; dy, xs, act, dgate and dup exist only in BF16 (grouped)
    r.moe = nk * w.D + nk + nk * w.Fm + n * w.E + n;
  }
  return r;
}

// BF16 operand copies (2-byte values): the largest x and dy of the mm/mm_bwd GEMMs (the heads and the router
// run in FP32: no copy; the weights of BF16 products are the split masters' BF16 halves: no copy either) and the
// grouped experts' buffers (the plan assumes grouped BF16 experts), and the staging buffer bind and pull move split
// masters through (FP32: 2 units a value).
double bf16_copies(const Widths& w, bool any_moe, double n) {
  const double mlp = std::max(w.F, w.Fs);
  const double x = n * std::max({w.D, mlp, w.H * w.dv, w.r, 2 * w.D, w.ql});
  const double dy = n * std::max({mlp, w.H * w.dq, w.H * (w.dn + w.dv), w.D, w.r + w.dr, w.ql});
  double v = x + dy + 2 * double(kSplitStageValues);
  if (any_moe) {
    const double nk = n * w.K;
    v += nk * w.D + 2 * nk * w.Fm;  // ex_dy, ex_dgate/dup (xs and act are kept in BF16: activations)
  }
  return v;
}

// The attention's BF16 operand copies (2-byte values; one set shared by the layers, the largest layer's): q, kv,
// k_rope and dout, and for the bf16 GEMMs the [b, H, t, t] P / dS.
double attention_bf16_copies(const Widths& w, PlanAttention a, double b, double t) {
  if (a == PlanAttention::Gemm) return 0;
  const double n = b * t;
  const double v = n * w.H * w.dq + n * w.H * (w.dn + w.dv) + n * w.dr + n * w.H * w.dv;
  return a == PlanAttention::GemmBf16 ? v + b * w.H * t * t : v;
}
}  // namespace

DeviceMemoryPlan device_memory_plan(const ModelConfig& c, int64_t batch, int64_t seq_len, bool bf16_moments,
                                    PlanAttention attention) {
  const bool flash = attention == PlanAttention::Flash;
  const Widths w = widths(c);
  const double b = double(batch), t = double(seq_len), n = b * t, n1 = b * (t - 1);
  const bool mtp = c.num_nextn_predict_layers > 0;
  const double t2 = t - 2, n2 = b * t2;
  DeviceMemoryPlan p;
  p.arenas = double(parameter_count(c)) * (8.0 + (bf16_moments ? 4.0 : 8.0));
  double kept = 2 * n + double(c.num_hidden_layers + 1) * n * w.D + n * w.D + n;  // ids, positions, x0..xL, hn
  kept += 2 * n1 * w.D + 2 * n1;  // hsel, grad.sel (the head's backward runs in the forward), targets, loss
  double temps = 3 * n * w.D + 6 * n;  // grad.hn, grad.x0/x1, the embedding's sort
  temps += std::max(n1, mtp ? n2 : 0.0) * w.V;  // the logits of one head at a time (its loss gradient in place)
  Temps most;
  bool any_moe = false;
  auto add_layer = [&](bool moe, double tt) {
    any_moe = any_moe || moe;
    kept += layer_kept(w, moe, b, tt, flash);
    const Temps l = layer_temps(w, moe, b, tt, flash);
    most.attn = std::max(most.attn, l.attn), most.mlp = std::max(most.mlp, l.mlp), most.moe = std::max(most.moe, l.moe);
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) add_layer(c.is_moe_layer(l), t);
  if (mtp) {
    kept += 2 * n2 + 10 * n2 * w.D + 3 * n2 + 2 * n2;  // ..., grad.yn
    add_layer(c.is_moe_layer(c.num_hidden_layers), t2);
    temps += 8 * n2 * w.D;  // grad.y .. grad.h2, grad.cat
  }
  temps += most.attn + most.mlp + most.moe;
  p.activations = 4.0 * kept;
  p.temporaries = 4.0 * temps + 2.0 * (bf16_copies(w, any_moe, n) + attention_bf16_copies(w, attention, b, t));
  p.runtime = kRuntime;
  return p;
}

}  // namespace moe::train
