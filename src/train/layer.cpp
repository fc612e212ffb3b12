// One decoder layer, forward and backward, as MODEL.md writes it:
//   h = x + o_proj(MLA(input_layernorm(x))),  out = h + FFN(post_attention_layernorm(h))
// MLA, expanded: q = q_b(q_a_norm(q_a(a))) [n, H, dn+dr], rope on q's last dr per head;
//   kv_a(a) = [c_in | k_rope_in], c = kv_a_norm(c_in) (eps 1e-6), k_rope = rope(k_rope_in) shared by the heads;
//   kv = kv_b(c) [n, H, dn+dv] (k_nope, v per head); attention per sequence, causal; o_proj.
#include <algorithm>

#include "train/layer.h"

namespace moe::train {

namespace {
constexpr double kLatentNormEps = 1e-6;  // q_a_layernorm and kv_a_layernorm, whatever the config says (MODEL.md)

}

void layer_forward(LayerActs& A, const LayerParams& P, const LayerContext& ctx, const float* x, int64_t b, int64_t t,
                   float* out) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = b * t, D = c.hidden_size, H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank, ql = c.q_lora_rank, dq = dn + dr;
  A.b = b, A.t = t, A.n = n;
  A.pos.resize(size_t(n));
  for (int64_t i = 0; i < n; ++i) A.pos[size_t(i)] = int32_t(i % t);
  A.x.assign(x, x + n * D);
  A.a.resize(size_t(n * D));
  A.a_rstd.resize(size_t(n));
  rmsnorm_forward(A.a.data(), A.a_rstd.data(), x, P.input_norm->data(), n, D, c.rms_norm_eps);

  const AttnParams& W = P.attn;
  A.q.resize(size_t(n * H * dq));
  if (ql > 0) {
    A.qa.resize(size_t(n * ql));
    A.qan.resize(size_t(n * ql));
    A.qa_rstd.resize(size_t(n));
    ctx.compute->matmul_forward(A.qa.data(), A.a.data(), W.q_a->data(), n, D, ql, false);
    rmsnorm_forward(A.qan.data(), A.qa_rstd.data(), A.qa.data(), W.q_a_norm->data(), n, ql, kLatentNormEps);
    ctx.compute->matmul_forward(A.q.data(), A.qan.data(), W.q_b->data(), n, ql, H * dq, false);
  } else {
    ctx.compute->matmul_forward(A.q.data(), A.a.data(), W.q_proj->data(), n, D, H * dq, false);
  }
  rope_forward(A.q.data(), n, H, dq, dn, A.pos.data(), ctx.rope);

  std::vector<float> kva(size_t(n * (r + dr)));
  ctx.compute->matmul_forward(kva.data(), A.a.data(), W.kv_a->data(), n, D, r + dr, false);
  A.c_in.resize(size_t(n * r));
  A.kr.resize(size_t(n * dr));
  for (int64_t i = 0; i < n; ++i) {
    std::copy(kva.begin() + i * (r + dr), kva.begin() + i * (r + dr) + r, A.c_in.begin() + i * r);
    std::copy(kva.begin() + i * (r + dr) + r, kva.begin() + (i + 1) * (r + dr), A.kr.begin() + i * dr);
  }
  A.c.resize(size_t(n * r));
  A.c_rstd.resize(size_t(n));
  rmsnorm_forward(A.c.data(), A.c_rstd.data(), A.c_in.data(), W.kv_a_norm->data(), n, r, kLatentNormEps);
  rope_forward(A.kr.data(), n, 1, dr, 0, A.pos.data(), ctx.rope);
  A.kv.resize(size_t(n * H * (dn + dv)));
  ctx.compute->matmul_forward(A.kv.data(), A.c.data(), W.kv_b->data(), n, r, H * (dn + dv), false);

  MlaDims md{t, H, dn, dr, dv, ctx.attn_scale};
  A.probs.assign(size_t(b * H * t * t), 0.f);
  A.att.resize(size_t(n * H * dv));
  ctx.compute->attention_forward(A.att.data(), A.probs.data(), A.q.data(), A.kv.data(), A.kr.data(), md, b);
  A.h.resize(size_t(n * D));
  ctx.compute->matmul_forward(A.h.data(), A.att.data(), W.o_proj->data(), n, H * dv, D, false);
  for (int64_t i = 0; i < n * D; ++i) A.h[size_t(i)] += x[i];

  A.f.resize(size_t(n * D));
  A.f_rstd.resize(size_t(n));
  rmsnorm_forward(A.f.data(), A.f_rstd.data(), A.h.data(), P.post_norm->data(), n, D, c.rms_norm_eps);
  if (P.is_moe)
    moe_forward(A.moe, P, ctx, A.f.data(), b, t, out);
  else
    mlp_forward(A.dense, P.dense, A.f.data(), n, D, out, *ctx.compute);
  for (int64_t i = 0; i < n * D; ++i) out[i] += A.h[size_t(i)];
}

void layer_backward(float* dx, const float* dout, LayerActs& A, const LayerParams& P, const LayerContext& ctx) {
  const ModelConfig& c = *ctx.config;
  const int64_t b = A.b, t = A.t, n = A.n, D = c.hidden_size, H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank, ql = c.q_lora_rank, dq = dn + dr;
  const AttnParams& W = P.attn;
  // FFN half: dh = dout + norm^T ffn^T dout
  std::vector<float> dh(dout, dout + n * D), df(size_t(n * D), 0.f);
  if (P.is_moe)
    moe_backward(df.data(), dout, A.moe, P, ctx, A.f.data(), b, t);
  else
    mlp_backward(df.data(), dout, A.dense, P.dense, n, D, *ctx.compute);
  rmsnorm_backward(dh.data(), P.post_norm->grad(), df.data(), A.h.data(), P.post_norm->data(), A.f_rstd.data(), n, D);

  // Attention half: dx = dh + input_norm^T (q path + kv path)
  std::vector<float> datt(size_t(n * H * dv), 0.f);
  ctx.compute->matmul_backward(datt.data(), W.o_proj->grad(), dh.data(), A.att.data(), W.o_proj->data(), n, H * dv, D, false);
  std::vector<float> dq_(size_t(n * H * dq), 0.f), dkv(size_t(n * H * (dn + dv)), 0.f), dkr(size_t(n * dr), 0.f);
  MlaDims md{t, H, dn, dr, dv, ctx.attn_scale};
  ctx.compute->attention_backward(dq_.data(), dkv.data(), dkr.data(), datt.data(), A.probs.data(), A.q.data(),
                                 A.kv.data(), A.kr.data(), md, b);
  std::vector<float> da(size_t(n * D), 0.f);
  // kv path
  std::vector<float> dc(size_t(n * r), 0.f), dc_in(size_t(n * r), 0.f);
  ctx.compute->matmul_backward(dc.data(), W.kv_b->grad(), dkv.data(), A.c.data(), W.kv_b->data(), n, r, H * (dn + dv), false);
  rmsnorm_backward(dc_in.data(), W.kv_a_norm->grad(), dc.data(), A.c_in.data(), W.kv_a_norm->data(), A.c_rstd.data(), n, r);
  rope_backward(dkr.data(), n, 1, dr, 0, A.pos.data(), ctx.rope);
  std::vector<float> dkva(size_t(n * (r + dr)));
  for (int64_t i = 0; i < n; ++i) {
    std::copy(dc_in.begin() + i * r, dc_in.begin() + (i + 1) * r, dkva.begin() + i * (r + dr));
    std::copy(dkr.begin() + i * dr, dkr.begin() + (i + 1) * dr, dkva.begin() + i * (r + dr) + r);
  }
  // The layer input a = input_norm(x) feeds kv_a and q; recompute-free: A.a is kept.
  ctx.compute->matmul_backward(da.data(), W.kv_a->grad(), dkva.data(), A.a.data(), W.kv_a->data(), n, D, r + dr, false);
  // q path
  rope_backward(dq_.data(), n, H, dq, dn, A.pos.data(), ctx.rope);
  if (ql > 0) {
    std::vector<float> dqan(size_t(n * ql), 0.f), dqa(size_t(n * ql), 0.f);
    ctx.compute->matmul_backward(dqan.data(), W.q_b->grad(), dq_.data(), A.qan.data(), W.q_b->data(), n, ql, H * dq, false);
    rmsnorm_backward(dqa.data(), W.q_a_norm->grad(), dqan.data(), A.qa.data(), W.q_a_norm->data(), A.qa_rstd.data(), n, ql);
    ctx.compute->matmul_backward(da.data(), W.q_a->grad(), dqa.data(), A.a.data(), W.q_a->data(), n, D, ql, false);
  } else {
    ctx.compute->matmul_backward(da.data(), W.q_proj->grad(), dq_.data(), A.a.data(), W.q_proj->data(), n, D, H * dq, false);
  }
  rmsnorm_backward(dx, P.input_norm->grad(), da.data(), A.x.data(), P.input_norm->data(), A.a_rstd.data(), n, D);
  for (int64_t i = 0; i < n * D; ++i) dx[i] += dh[size_t(i)];
}

}  // namespace moe::train
