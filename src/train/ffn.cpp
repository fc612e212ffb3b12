// The feed-forward halves of a layer: the SwiGLU MLP, and DeepSeekMoE (router, dropless routed experts,
// shared experts) with the sequence-wise balance loss's gradient entering at the router scores.
#include <algorithm>

#include "train/layer.h"

namespace moe::train {

void mlp_forward(MlpActs& A, const MlpParams& P, const float* x, int64_t n, int64_t d, float* out, Compute& cmp) {
  const int64_t F = P.width;
  A.x.assign(x, x + n * d);
  A.gate.resize(size_t(n * F));
  A.up.resize(size_t(n * F));
  A.act.resize(size_t(n * F));
  cmp.matmul_forward(A.gate.data(), x, P.gate->data(), n, d, F, false);
  cmp.matmul_forward(A.up.data(), x, P.up->data(), n, d, F, false);
  swiglu_forward(A.act.data(), A.gate.data(), A.up.data(), n * F);
  cmp.matmul_forward(out, A.act.data(), P.down->data(), n, F, d, false);
}

void mlp_backward(float* dx, const float* dout, const MlpActs& A, const MlpParams& P, int64_t n, int64_t d,
                  Compute& cmp) {
  const int64_t F = P.width;
  std::vector<float> dact(size_t(n * F)), dgate(size_t(n * F)), dup(size_t(n * F));
  cmp.matmul_backward(dact.data(), P.down->grad(), dout, A.act.data(), P.down->data(), n, F, d, false);
  swiglu_backward(dgate.data(), dup.data(), dact.data(), A.gate.data(), A.up.data(), n * F);
  cmp.matmul_backward(dx, P.gate->grad(), dgate.data(), A.x.data(), P.gate->data(), n, d, F, false);
  cmp.matmul_backward(dx, P.up->grad(), dup.data(), A.x.data(), P.up->data(), n, d, F, false);
}

void moe_forward(MoeActs& A, const LayerParams& P, const LayerContext& ctx, const float* x, int64_t b, int64_t t,
                 float* out) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = b * t, D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  A.logits.resize(size_t(n * E));
  ctx.compute->matmul_forward(A.logits.data(), x, P.router->data(), n, D, E, true);
  router_forward(A.routing, A.logits.data(), P.bias ? P.bias->value.data() : nullptr, n, ctx.router);
  // Dispatch: each expert's tokens in token order.
  A.rows.assign(size_t(E), {});
  A.slots.assign(size_t(E), {});
  A.load.assign(size_t(E), 0);
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < K; ++j) {
      const int32_t e = A.routing.chosen[size_t(i * K + j)];
      A.rows[size_t(e)].push_back(int32_t(i));
      A.slots[size_t(e)].push_back(int32_t(j));
      ++A.load[size_t(e)];
    }
  std::fill(out, out + n * D, 0.f);
  A.experts.assign(size_t(E), {});
  std::vector<float> xin;
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<int32_t>& rows = A.rows[size_t(e)];
    const int64_t m = int64_t(rows.size());
    if (m == 0) continue;
    xin.resize(size_t(m * D));
    for (int64_t r = 0; r < m; ++r) std::copy(x + rows[size_t(r)] * D, x + (rows[size_t(r)] + 1) * D, xin.begin() + r * D);
    MlpActs& ea = A.experts[size_t(e)];
    ea.out.resize(size_t(m * D));
    mlp_forward(ea, P.experts[size_t(e)], xin.data(), m, D, ea.out.data(), *ctx.compute);
    // Combine: out[token] += w * expert output, in double per element to keep the sum order-independent-ish.
    for (int64_t r = 0; r < m; ++r) {
      const double w = double(A.routing.weights[size_t(rows[size_t(r)] * K + A.slots[size_t(e)][size_t(r)])]);
      float* o = out + rows[size_t(r)] * D;
      for (int64_t k = 0; k < D; ++k) o[k] = float(double(o[k]) + w * double(ea.out[size_t(r * D + k)]));
    }
  }
  if (P.shared.present()) {
    std::vector<float> s(size_t(n * D));
    mlp_forward(A.shared, P.shared, x, n, D, s.data(), *ctx.compute);
    for (int64_t i = 0; i < n * D; ++i) out[i] += s[size_t(i)];
  }
  A.seq_aux = ctx.seq_aux_alpha > 0 ? balance_loss_forward(A.routing, b, t, ctx.router, ctx.seq_aux_alpha) : 0.0;
}

void moe_backward(float* dx, const float* dout, const MoeActs& A, const LayerParams& P, const LayerContext& ctx,
                  const float* x, int64_t b, int64_t t) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = b * t, D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok;
  if (P.shared.present()) mlp_backward(dx, dout, A.shared, P.shared, n, D, *ctx.compute);
  std::vector<float> dweights(size_t(n * K), 0.f), dy, dxe;
  for (int64_t e = 0; e < E; ++e) {
    const std::vector<int32_t>& rows = A.rows[size_t(e)];
    const int64_t m = int64_t(rows.size());
    if (m == 0) continue;
    const MlpActs& ea = A.experts[size_t(e)];
    dy.assign(size_t(m * D), 0.f);
    for (int64_t r = 0; r < m; ++r) {
      const int64_t slot = rows[size_t(r)] * K + A.slots[size_t(e)][size_t(r)];
      const double w = double(A.routing.weights[size_t(slot)]);
      const float* g = dout + rows[size_t(r)] * D;
      double dw = 0;  // d(out)/d(w) = the expert's output
      for (int64_t k = 0; k < D; ++k) {
        dy[size_t(r * D + k)] = float(w * double(g[k]));
        dw += double(g[k]) * double(ea.out[size_t(r * D + k)]);
      }
      dweights[size_t(slot)] = float(dw);
    }
    dxe.assign(size_t(m * D), 0.f);
    mlp_backward(dxe.data(), dy.data(), ea, P.experts[size_t(e)], m, D, *ctx.compute);
    for (int64_t r = 0; r < m; ++r)
      for (int64_t k = 0; k < D; ++k) dx[rows[size_t(r)] * D + k] += dxe[size_t(r * D + k)];
  }
  // Router: weights -> scores (+ the balance loss, whose gradient in the objective is 1) -> logits -> x, W_gate.
  std::vector<float> dscores(size_t(n * E), 0.f), dlogits(size_t(n * E), 0.f);
  router_weights_backward(dscores.data(), dweights.data(), A.routing, n, ctx.router);
  if (ctx.seq_aux_alpha > 0) balance_loss_backward(dscores.data(), A.routing, b, t, ctx.router, ctx.seq_aux_alpha, 1.0);
  router_scores_backward(dlogits.data(), dscores.data(), A.routing, n, ctx.router);
  ctx.compute->matmul_backward(dx, P.router->grad(), dlogits.data(), x, P.router->data(), n, D, E, true);
}

}  // namespace moe::train
