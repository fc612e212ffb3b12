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
  // Combine: out[token] += w * expert output, in double per element, experts in ascending order.
  auto combine = [&](int64_t e, const float* eout) {
    const std::vector<int32_t>& rows = A.rows[size_t(e)];
    for (size_t r = 0; r < rows.size(); ++r) {
      const double w = double(A.routing.weights[size_t(rows[r] * K + A.slots[size_t(e)][r])]);
      float* o = out + rows[r] * D;
      for (int64_t k = 0; k < D; ++k) o[k] = float(double(o[k]) + w * double(eout[int64_t(r) * D + k]));
    }
  };
  auto gather = [&](int64_t e, std::vector<float>& xin) {
    const std::vector<int32_t>& rows = A.rows[size_t(e)];
    xin.resize(rows.size() * size_t(D));
    for (size_t r = 0; r < rows.size(); ++r) std::copy(x + rows[r] * D, x + (rows[r] + 1) * D, xin.begin() + int64_t(r) * D);
  };
  if (ctx.ep) {
    for (int64_t i = 0; i < n; ++i) {  // how many ranks this token's experts are on
      std::vector<int> ranks;
      for (int64_t j = 0; j < K; ++j) ranks.push_back(ctx.ep->owner(A.routing.chosen[size_t(i * K + j)]));
      std::sort(ranks.begin(), ranks.end());
      const int distinct = int(std::unique(ranks.begin(), ranks.end()) - ranks.begin());
      ctx.ep->stats.max_ranks_per_token = std::max(ctx.ep->stats.max_ranks_per_token, distinct);
    }
    RowsPerExpert local(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) gather(e, local[size_t(e)]);
    A.ep_counts = ep_all_counts(*ctx.ep, A.load);
    RowsPerExpert owned = ep_dispatch(*ctx.ep, A.ep_counts, local, D);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t m = int64_t(owned[size_t(e)].size()) / D;
      if (m == 0) continue;
      MlpActs& ea = A.experts[size_t(e)];
      ea.out.resize(size_t(m * D));
      mlp_forward(ea, P.experts[size_t(e)], owned[size_t(e)].data(), m, D, ea.out.data(), *ctx.compute);
      owned[size_t(e)] = ea.out;
    }
    A.ep_out = ep_combine(*ctx.ep, A.ep_counts, owned, D);
    for (int64_t e = 0; e < E; ++e) combine(e, A.ep_out[size_t(e)].data());
  } else {
    std::vector<float> xin;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t m = int64_t(A.rows[size_t(e)].size());
      if (m == 0) continue;
      gather(e, xin);
      MlpActs& ea = A.experts[size_t(e)];
      ea.out.resize(size_t(m * D));
      mlp_forward(ea, P.experts[size_t(e)], xin.data(), m, D, ea.out.data(), *ctx.compute);
      combine(e, ea.out.data());
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
  std::vector<float> dweights(size_t(n * K), 0.f), dxe;
  // dy = w * dout for each of e's rows; d(out)/d(w) = the expert's output, so dweights gets dout . output.
  auto expert_dout = [&](int64_t e, const float* eout, std::vector<float>& dy) {
    const std::vector<int32_t>& rows = A.rows[size_t(e)];
    dy.assign(rows.size() * size_t(D), 0.f);
    for (size_t r = 0; r < rows.size(); ++r) {
      const int64_t slot = rows[r] * K + A.slots[size_t(e)][r];
      const double w = double(A.routing.weights[size_t(slot)]);
      const float* g = dout + rows[r] * D;
      double dw = 0;
      for (int64_t k = 0; k < D; ++k) {
        dy[size_t(int64_t(r) * D + k)] = float(w * double(g[k]));
        dw += double(g[k]) * double(eout[int64_t(r) * D + k]);
      }
      dweights[size_t(slot)] = float(dw);
    }
  };
  auto scatter_dx = [&](int64_t e, const std::vector<float>& d) {
    const std::vector<int32_t>& rows = A.rows[size_t(e)];
    for (size_t r = 0; r < rows.size(); ++r)
      for (int64_t k = 0; k < D; ++k) dx[rows[r] * D + k] += d[size_t(int64_t(r) * D + k)];
  };
  if (ctx.ep) {
    RowsPerExpert dy_local(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) expert_dout(e, A.ep_out[size_t(e)].data(), dy_local[size_t(e)]);
    const RowsPerExpert dy_owned = ep_dispatch(*ctx.ep, A.ep_counts, dy_local, D);
    RowsPerExpert dx_owned(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) {
      const int64_t m = int64_t(dy_owned[size_t(e)].size()) / D;
      if (m == 0) continue;
      dx_owned[size_t(e)].assign(size_t(m * D), 0.f);
      mlp_backward(dx_owned[size_t(e)].data(), dy_owned[size_t(e)].data(), A.experts[size_t(e)], P.experts[size_t(e)],
                   m, D, *ctx.compute);
    }
    const RowsPerExpert dx_local = ep_combine(*ctx.ep, A.ep_counts, dx_owned, D);
    for (int64_t e = 0; e < E; ++e) scatter_dx(e, dx_local[size_t(e)]);
  } else {
    std::vector<float> dy;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t m = int64_t(A.rows[size_t(e)].size());
      if (m == 0) continue;
      expert_dout(e, A.experts[size_t(e)].out.data(), dy);
      dxe.assign(size_t(m * D), 0.f);
      mlp_backward(dxe.data(), dy.data(), A.experts[size_t(e)], P.experts[size_t(e)], m, D, *ctx.compute);
      scatter_dx(e, dxe);
    }
  }
  // Router: weights -> scores (+ the balance loss, whose gradient in the objective is 1) -> logits -> x, W_gate.
  std::vector<float> dscores(size_t(n * E), 0.f), dlogits(size_t(n * E), 0.f);
  router_weights_backward(dscores.data(), dweights.data(), A.routing, n, ctx.router);
  if (ctx.seq_aux_alpha > 0) balance_loss_backward(dscores.data(), A.routing, b, t, ctx.router, ctx.seq_aux_alpha, 1.0);
  router_scores_backward(dlogits.data(), dscores.data(), A.routing, n, ctx.router);
  ctx.compute->matmul_backward(dx, P.router->grad(), dlogits.data(), x, P.router->data(), n, D, E, true);
}

}  // namespace moe::train
