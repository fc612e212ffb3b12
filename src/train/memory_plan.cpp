// device_memory_plan (memory_plan.h): the DeviceTrainer's buffers, counted in values of 4 bytes (FP32, int32)
// or 2 (BF16). n = batch x seq_len rows; K routed experts a token; F the dense, Fs the shared, Fm an expert's
// width.
#include "train/memory_plan.h"

#include <algorithm>
#include <cmath>
#include <vector>

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

// The routed experts take the grouped FP8 products (train/cuda/fp8_experts.h) at widths of whole 128 blocks.
bool fp8_grouped(const Widths& w) { return std::fmod(w.D, 128.0) == 0 && std::fmod(w.Fm, 128.0) == 0; }

// Kept activations of one layer over b sequences of t (4-byte values).
double layer_kept(const Widths& w, bool moe, double b, double t, bool flash, bool fp8) {
  const double n = b * t;
  // Under BF16 GEMMs (the plan's mode) a, qan, c and the MLPs' act are kept only in BF16, att and f in both forms.
  double v = 3 * n * w.D + 3 * n;  // a (BF16), h, f (FP32 + BF16) and their rstds (+ c_rstd)
  if (w.ql > 0) v += 1.5 * n * w.ql + n;  // qa, qan (BF16), qa_rstd
  v += n * w.H * w.dq + n * (w.r + w.dr) + 1.5 * n * w.r + n * w.dr + n * w.H * (w.dn + w.dv);  // q, kva, c_in, c, kr, kv
  v += (flash ? b * w.H * t : b * w.H * t * t) + 1.5 * n * w.H * w.dv;  // lse or probs, att (FP32 + BF16)
  if (fp8) {  // a, qan and c in FP32 (the quantiser's input), att without its BF16 copy
    v += 0.5 * n * w.D + 0.5 * n * w.ql + 0.5 * n * w.r - 0.5 * n * w.H * w.dv;
    // the dense products' inputs as E4M3 x^T (1 byte a value), kept from the forward for the weight gradients
    // (Fp8Gemms::begin_pass): a, qan, c, att and the dense or shared MLP's input and act
    const double mlp = moe ? (w.Fs > 0 ? w.D + w.Fs : 0.0) : w.D + w.F;
    v += 0.25 * std::ceil(n / 128.0) * 128.0 * (w.D + w.ql + w.r + w.H * w.dv + mlp);
    // a dense layer's act in FP32, and its f without the BF16 rounding (only the MoE layers' gather reads it)
    if (!moe) return v + 3 * n * w.F - 0.5 * n * w.D;
    if (!fp8_grouped(w)) v -= 0.5 * n * w.D;
    if (w.Fs > 0) v += 0.5 * n * w.Fs;  // the shared experts' act in FP32
  }
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
Temps layer_temps(const Widths& w, bool moe, double b, double t, bool flash, bool fp8) {
  const double n = b * t;
  Temps r;
  r.attn = 3 * n * w.D + n * w.H * w.dv + n * w.H * w.dq + n * w.H * (w.dn + w.dv) + n * w.dr;  // dh df da datt dq dkv dkr
  r.attn += (flash ? b * w.H * t + w.H * n * w.dr : b * w.H * t * t);  // delta and the dk_rope partials, or ds
  r.attn += 2 * n * w.r + n * (w.r + w.dr);                           // dc, dc_in, dkva
  if (w.ql > 0) r.attn += 2 * n * w.ql;
  // dact (FP32), dgate, dup (BF16; FP32 under FP8) of the dense or shared MLP
  r.mlp = (fp8 ? 3 : 2) * n * (moe ? w.Fs : w.F);
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
double bf16_copies(const Widths& w, bool any_moe, double n, bool fp8) {
  const double mlp = std::max(w.F, w.Fs);
  // The products' inputs (k) and outputs (m); under FP8 only those the FP8 GEMM refuses come here (Fprop
  // needs k % 128 == 0, Dgrad m % 128 == 0: MLA's kv_a output r + dr = 576, say).
  const std::vector<double> ks = {w.D, mlp, w.H * w.dv, w.r, 2 * w.D, w.ql},
                            ms = {mlp, w.H * w.dq, w.H * (w.dn + w.dv), w.D, w.r + w.dr, w.ql};
  double x = 0, dy = 0;
  for (double k : ks)
    if (!fp8 || std::fmod(k, 128.0) != 0) x = std::max(x, n * k);
  for (double m : ms)
    if (!fp8 || std::fmod(m, 128.0) != 0) dy = std::max(dy, n * m);
  double v = x + dy + 2 * double(kSplitStageValues);
  if (any_moe) {
    const double nk = n * w.K;
    v += nk * w.D + 2 * nk * w.Fm;  // ex_dy, ex_dgate/dup (xs and act are kept in BF16: activations)
  }
  return v;
}

// One layout of a MoE layer's routed experts' E4M3 weights (bytes): 3 D Fm values an expert and a scale per
// 128x128 block (Fp8Experts).
double expert_fp8_layout(const Widths& w) {
  return w.E * (3 * w.D * w.Fm + 4 * 3 * std::ceil(w.D / 128.0) * std::ceil(w.Fm / 128.0));
}

// --gemm fp8's E4M3 weights (bytes): each projection's in both layouts, 2 bytes a value, and a scale per
// 128x128 block and layout (Fp8Gemms pads a grid's rows to 4 scales; Fp8Experts does not), for every layer
// and the MTP module; the routed experts' in both layouts in the first both_layers MoE layers (-1: all), in
// the forward one in the others. The embedding, the heads and the router stay out (V3's exceptions).
double fp8_weight_copies(const ModelConfig& c, const Widths& w, int64_t both_layers) {
  auto blocks = [](double v) { return std::ceil(v / 128.0); };
  auto ld4 = [&](double v) { return std::ceil(blocks(v) / 4.0) * 4.0; };
  auto dense = [&](double m, double k) { return 2 * m * k + 4 * (blocks(m) * ld4(k) + blocks(k) * ld4(m)); };
  auto mlp = [&](double f) { return 2 * dense(f, w.D) + dense(w.D, f); };
  int64_t moe_layers = 0;
  auto layer = [&](bool moe) {
    double v = w.ql > 0 ? dense(w.ql, w.D) + dense(w.H * w.dq, w.ql) : dense(w.H * w.dq, w.D);
    v += dense(w.r + w.dr, w.D) + dense(w.H * (w.dn + w.dv), w.r) + dense(w.D, w.H * w.dv);
    if (!moe) return v + mlp(w.F);
    if (w.Fs > 0) v += mlp(w.Fs);
    const bool both = both_layers < 0 || moe_layers++ < both_layers;
    return v + (both ? 2 : 1) * expert_fp8_layout(w);
  };
  double v = 0;
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) v += layer(c.is_moe_layer(l));
  if (c.num_nextn_predict_layers > 0) v += layer(c.is_moe_layer(c.num_hidden_layers)) + dense(w.D, 2 * w.D);
  return v;
}

// --gemm fp8's quantiser outputs (bytes), one buffer per operand role at the largest product's size: x and
// x^T, dy and dy^T (the weight gradient's token dimension padded to 128), their scales; and the routed
// experts' quantised operand (the widest: xs, dys [nK, D] or [dgate | dup] [nK, 2 Fm]) with its scales.
double fp8_scratch(const Widths& w, bool any_moe, double n) {
  const double n128 = std::ceil(n / 128.0) * 128.0;
  const double k = std::max({w.D, w.ql, w.r, w.H * w.dv, w.F, w.Fs, 2 * w.D}),
               m = std::max({w.ql, w.H * w.dq, w.r + w.dr, w.H * (w.dn + w.dv), w.D, w.F, w.Fs});
  double v = 2 * n128 * (k + m) + 4 * 2 * n128 * (std::ceil(k / 128.0) + std::ceil(m / 128.0));
  if (any_moe) {
    const double nk = n * w.K, a = std::max(w.D, 2 * w.Fm);
    v += nk * a + 4 * std::ceil(a / 128.0) * (std::ceil(nk / 4.0) * 4.0);
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
                                    PlanAttention attention, PlanGemm gemm, int64_t fp8_expert_both_layers) {
  const bool flash = attention == PlanAttention::Flash, fp8 = gemm != PlanGemm::Bf16;
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
    kept += layer_kept(w, moe, b, tt, flash, fp8);
    const Temps l = layer_temps(w, moe, b, tt, flash, fp8);
    most.attn = std::max(most.attn, l.attn), most.mlp = std::max(most.mlp, l.mlp), most.moe = std::max(most.moe, l.moe);
  };
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) add_layer(c.is_moe_layer(l), t);
  if (mtp) {
    kept += 2 * n2 + 10 * n2 * w.D + 3 * n2 + 2 * n2;  // ..., grad.yn
    if (fp8) kept += 0.25 * std::ceil(n2 / 128.0) * 128.0 * 2 * w.D;  // eh_proj's input as kept E4M3 x^T
    add_layer(c.is_moe_layer(c.num_hidden_layers), t2);
    temps += 8 * n2 * w.D;  // grad.y .. grad.h2, grad.cat
  }
  temps += most.attn + most.mlp + most.moe;
  p.activations = 4.0 * kept;
  p.temporaries =
      4.0 * temps + 2.0 * (bf16_copies(w, any_moe, n, fp8) + attention_bf16_copies(w, attention, b, t));
  if (fp8) {
    const int64_t both_layers = gemm == PlanGemm::Fp8 ? -1 : std::max<int64_t>(fp8_expert_both_layers, 0);
    p.weight_copies = fp8_weight_copies(c, w, both_layers);
    p.temporaries += fp8_scratch(w, any_moe, n);
    // the transposed layouts of two layers' experts, made in (or just before) their backward, where a MoE
    // layer keeps only the forward one
    int64_t moe_layers = 0;
    for (int64_t l = 0; l <= c.num_hidden_layers; ++l)
      moe_layers += (l < c.num_hidden_layers || mtp) && c.is_moe_layer(l);
    const int64_t shared = both_layers < 0 ? 0 : std::min<int64_t>(2, moe_layers - both_layers);
    if (shared > 0) p.temporaries += double(shared) * expert_fp8_layout(w);
  }
  p.runtime = kRuntime;
  return p;
}

}  // namespace moe::train
