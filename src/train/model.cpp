// The training forward (kept activations) and backward of the whole model with its MTP module.
//   main: x0 = embed(ids); x_{l+1} = layer_l(x_l); hn = norm(x_L); logits = head hn; CE on t < T-1 vs ids[t+1]
//   MTP:  m_j = eh_proj([enorm(embed(ids[j+1])) ; hnorm(hn_j)]), j < T-2; y = layer(m) at positions 0..T-3;
//         logits = head shared_head.norm(y); CE vs ids[j+2]. embed and head are shared: their gradients add.
#include "train/model.h"

#include <algorithm>

#include "core/error.h"
#include "train/compute.h"
#include "train/device_step.h"
#include "model/rope.h"

namespace moe::train {

LayerContext make_layer_context(const ModelConfig& c, double alpha, ThreadPool* pool, const ExpertParallel* ep,
                                Compute* compute) {
  LayerContext ctx;
  ctx.pool = pool;
  ctx.compute = compute;
  ctx.config = &c;
  ctx.rope = make_rope_params(c);
  ctx.attn_scale = attention_scale(c);
  ctx.router.experts = c.n_routed_experts;
  ctx.router.top_k = c.num_experts_per_tok;
  ctx.router.n_group = c.n_group;
  ctx.router.topk_group = c.topk_group;
  ctx.router.scoring = c.scoring_func;
  ctx.router.method = c.topk_method;
  ctx.router.norm_topk_prob = c.norm_topk_prob;
  ctx.router.scaling = c.routed_scaling_factor;
  ctx.seq_aux_alpha = alpha;
  ctx.ep = ep;
  return ctx;
}

// Rows of sequence-major [b, t, ...] data whose position is < keep, as [b, keep, ...]: the positions that have a
// target. offset shifts the first kept position (the MTP embeds t[j+1]).
std::vector<int32_t> shifted_ids(const std::vector<int32_t>& ids, int64_t b, int64_t t, int64_t keep, int64_t offset) {
  std::vector<int32_t> out(size_t(b * keep));
  for (int64_t s = 0; s < b; ++s)
    for (int64_t j = 0; j < keep; ++j) out[size_t(s * keep + j)] = ids[size_t(s * t + j + offset)];
  return out;
}

// The targets ids[s, j + offset] for j < keep, -1 (no loss) where the mask says the token carries none; the
// count of real targets is returned in *count.
std::vector<int32_t> masked_targets(const std::vector<int32_t>& ids, const std::vector<uint8_t>* mask, int64_t b,
                                    int64_t t, int64_t keep, int64_t offset, int64_t* count) {
  std::vector<int32_t> out = shifted_ids(ids, b, t, keep, offset);
  *count = int64_t(out.size());
  if (!mask) return out;
  const std::vector<uint8_t> m = [&] {
    std::vector<uint8_t> v(out.size());
    for (int64_t s = 0; s < b; ++s)
      for (int64_t j = 0; j < keep; ++j) v[size_t(s * keep + j)] = (*mask)[size_t(s * t + j + offset)];
    return v;
  }();
  for (size_t i = 0; i < out.size(); ++i)
    if (!m[i]) out[i] = -1, --*count;
  return out;
}

namespace {

struct Pass {
  TrainModel& M;
  const Objective& obj;
  CpuCompute cpu;
  Compute& cmp;  // the model's device, or the CPU ops on its pool
  ModelActs A;
  LayerContext main_ctx, mtp_ctx;
  LossParts parts;

  Pass(TrainModel& m, const Objective& o)
      : M(m),
        obj(o),
        cpu(m.pool),
        cmp(m.compute ? *m.compute : cpu),
        main_ctx(make_layer_context(m.config, o.seq_aux_alpha, m.pool, m.ep, &cmp)),
        mtp_ctx(make_layer_context(m.config, 0.0, m.pool, m.ep, &cmp)) {}

  // Forward; leaves dlogits (the CE gradients, scaled for the objective) in A for the backward.
  void forward(const std::vector<int32_t>& ids, int64_t b, int64_t t, const std::vector<uint8_t>* mask) {
    const ModelConfig& c = M.config;
    const int64_t D = c.hidden_size, V = c.vocab_size, n = b * t;
    A.ids = ids, A.b = b, A.t = t;
    hook(&ParamHooks::before_forward, ParamHooks::kGlobals);
    A.xs.assign(size_t(c.num_hidden_layers + 1), std::vector<float>(size_t(n * D)));
    hook(&ParamHooks::before_forward, ParamHooks::kEmbed);
    embedding_forward(A.xs[0].data(), ids.data(), n, M.embed->data(), D);
    hook(&ParamHooks::after_forward, ParamHooks::kEmbed);
    A.layers.assign(size_t(c.num_hidden_layers), {});
    for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
      hook(&ParamHooks::before_forward, int(l));
      layer_forward(A.layers[size_t(l)], M.layers[size_t(l)], main_ctx, A.xs[size_t(l)].data(), b, t,
                    A.xs[size_t(l + 1)].data());
      hook(&ParamHooks::after_forward, int(l));
      if (M.layers[size_t(l)].is_moe) parts.seq_aux += A.layers[size_t(l)].moe.seq_aux;
    }
    A.hn.resize(size_t(n * D));
    A.hn_rstd.resize(size_t(n));
    rmsnorm_forward(A.hn.data(), A.hn_rstd.data(), A.xs.back().data(), M.final_norm->data(), n, D, c.rms_norm_eps);

    // Main CE over the b*(t-1) positions that have a next token.
    const int64_t t1 = t - 1, n1 = b * t1;
    std::vector<float> hsel(size_t(n1 * D));
    for (int64_t s = 0; s < b; ++s)
      std::copy(A.hn.begin() + s * t * D, A.hn.begin() + (s * t + t1) * D, hsel.begin() + s * t1 * D);
    A.dlogits.resize(size_t(n1 * V));
    hook(&ParamHooks::before_forward, ParamHooks::kHead);
    cmp.matmul_forward(A.dlogits.data(), hsel.data(), M.head->data(), n1, D, V, true);
    hook(&ParamHooks::after_forward, ParamHooks::kHead);
    int64_t c1 = 0;
    const std::vector<int32_t> targets = masked_targets(ids, mask, b, t, t1, 1, &c1);
    const double d1 = double(std::max<int64_t>(c1, 1));  // no target carries loss: the CE is 0, and so its gradient
    parts.main_ce = cmp.cross_entropy(A.dlogits.data(), targets.data(), n1, V, 1.0 / d1) / d1;

    if (M.has_mtp) {
      const int64_t t2 = t - 2, n2 = b * t2;
      const std::vector<int32_t> next = shifted_ids(ids, b, t, t2, 1);
      A.e.resize(size_t(n2 * D));
      A.en.resize(size_t(n2 * D));
      A.e_rstd.resize(size_t(n2));
      hook(&ParamHooks::before_forward, ParamHooks::kEmbed);
      embedding_forward(A.e.data(), next.data(), n2, M.embed->data(), D);
      hook(&ParamHooks::after_forward, ParamHooks::kEmbed);
      rmsnorm_forward(A.en.data(), A.e_rstd.data(), A.e.data(), M.enorm->data(), n2, D, c.rms_norm_eps);
      std::vector<float> h2(size_t(n2 * D));
      for (int64_t s = 0; s < b; ++s)
        std::copy(A.hn.begin() + s * t * D, A.hn.begin() + (s * t + t2) * D, h2.begin() + s * t2 * D);
      A.hh.resize(size_t(n2 * D));
      A.hh_rstd.resize(size_t(n2));
      rmsnorm_forward(A.hh.data(), A.hh_rstd.data(), h2.data(), M.hnorm->data(), n2, D, c.rms_norm_eps);
      A.cat.resize(size_t(n2 * 2 * D));
      for (int64_t i = 0; i < n2; ++i) {
        std::copy(A.en.begin() + i * D, A.en.begin() + (i + 1) * D, A.cat.begin() + i * 2 * D);
        std::copy(A.hh.begin() + i * D, A.hh.begin() + (i + 1) * D, A.cat.begin() + i * 2 * D + D);
      }
      A.m.resize(size_t(n2 * D));
      cmp.matmul_forward(A.m.data(), A.cat.data(), M.eh_proj->data(), n2, 2 * D, D, false);
      A.y.resize(size_t(n2 * D));
      hook(&ParamHooks::before_forward, int(c.num_hidden_layers));
      layer_forward(A.mtp_layer, M.mtp_layer, mtp_ctx, A.m.data(), b, t2, A.y.data());
      hook(&ParamHooks::after_forward, int(c.num_hidden_layers));
      A.yn.resize(size_t(n2 * D));
      A.yn_rstd.resize(size_t(n2));
      rmsnorm_forward(A.yn.data(), A.yn_rstd.data(), A.y.data(), M.mtp_norm->data(), n2, D, c.rms_norm_eps);
      A.mtp_dlogits.resize(size_t(n2 * V));
      hook(&ParamHooks::before_forward, ParamHooks::kHead);
      cmp.matmul_forward(A.mtp_dlogits.data(), A.yn.data(), M.head->data(), n2, D, V, true);
      hook(&ParamHooks::after_forward, ParamHooks::kHead);
      int64_t c2 = 0;
      const std::vector<int32_t> t2ids = masked_targets(ids, mask, b, t, t2, 2, &c2);
      const double d2 = double(std::max<int64_t>(c2, 1));
      parts.mtp_ce = cmp.cross_entropy(A.mtp_dlogits.data(), t2ids.data(), n2, V, obj.mtp_lambda / d2) / d2;
    }
    parts.loss = parts.main_ce + obj.mtp_lambda * parts.mtp_ce + parts.seq_aux;
  }

  void backward() {
    const ModelConfig& c = M.config;
    const int64_t b = A.b, t = A.t, D = c.hidden_size, V = c.vocab_size, n = b * t;
    std::vector<float> dhn(size_t(n * D), 0.f);
    if (M.has_mtp) {
      const int64_t t2 = t - 2, n2 = b * t2;
      std::vector<float> dyn(size_t(n2 * D), 0.f), dy(size_t(n2 * D), 0.f), dm(size_t(n2 * D), 0.f),
          dcat(size_t(n2 * 2 * D), 0.f);
      hook(&ParamHooks::before_backward, ParamHooks::kHead);
      cmp.matmul_backward(dyn.data(), M.head->grad(), A.mtp_dlogits.data(), A.yn.data(), M.head->data(), n2, D, V, true);
      hook(&ParamHooks::after_backward, ParamHooks::kHead);
      rmsnorm_backward(dy.data(), M.mtp_norm->grad(), dyn.data(), A.y.data(), M.mtp_norm->data(), A.yn_rstd.data(), n2, D);
      hook(&ParamHooks::before_backward, int(c.num_hidden_layers));
      layer_backward(dm.data(), dy.data(), A.mtp_layer, M.mtp_layer, mtp_ctx);
      hook(&ParamHooks::after_backward, int(c.num_hidden_layers));
      cmp.matmul_backward(dcat.data(), M.eh_proj->grad(), dm.data(), A.cat.data(), M.eh_proj->data(), n2, 2 * D, D, false);
      std::vector<float> den(size_t(n2 * D)), dhh(size_t(n2 * D)), de(size_t(n2 * D), 0.f), dh2(size_t(n2 * D), 0.f);
      for (int64_t i = 0; i < n2; ++i) {
        std::copy(dcat.begin() + i * 2 * D, dcat.begin() + i * 2 * D + D, den.begin() + i * D);
        std::copy(dcat.begin() + i * 2 * D + D, dcat.begin() + (i + 1) * 2 * D, dhh.begin() + i * D);
      }
      rmsnorm_backward(de.data(), M.enorm->grad(), den.data(), A.e.data(), M.enorm->data(), A.e_rstd.data(), n2, D);
      const std::vector<int32_t> next = shifted_ids(A.ids, b, t, t2, 1);
      hook(&ParamHooks::before_backward, ParamHooks::kEmbed);
      embedding_backward(M.embed->grad(), next.data(), n2, de.data(), D);
      hook(&ParamHooks::after_backward, ParamHooks::kEmbed);
      std::vector<float> h2(size_t(n2 * D));
      for (int64_t s = 0; s < b; ++s)
        std::copy(A.hn.begin() + s * t * D, A.hn.begin() + (s * t + t2) * D, h2.begin() + s * t2 * D);
      rmsnorm_backward(dh2.data(), M.hnorm->grad(), dhh.data(), h2.data(), M.hnorm->data(), A.hh_rstd.data(), n2, D);
      for (int64_t s = 0; s < b; ++s)
        for (int64_t k = 0; k < t2 * D; ++k) dhn[size_t(s * t * D + k)] += dh2[size_t(s * t2 * D + k)];
    }
    // main head
    const int64_t t1 = t - 1, n1 = b * t1;
    std::vector<float> hsel(size_t(n1 * D)), dsel(size_t(n1 * D), 0.f);
    for (int64_t s = 0; s < b; ++s)
      std::copy(A.hn.begin() + s * t * D, A.hn.begin() + (s * t + t1) * D, hsel.begin() + s * t1 * D);
    hook(&ParamHooks::before_backward, ParamHooks::kHead);
    cmp.matmul_backward(dsel.data(), M.head->grad(), A.dlogits.data(), hsel.data(), M.head->data(), n1, D, V, true);
    hook(&ParamHooks::after_backward, ParamHooks::kHead);
    for (int64_t s = 0; s < b; ++s)
      for (int64_t k = 0; k < t1 * D; ++k) dhn[size_t(s * t * D + k)] += dsel[size_t(s * t1 * D + k)];
    std::vector<float> dx(size_t(n * D), 0.f), dprev(size_t(n * D));
    rmsnorm_backward(dx.data(), M.final_norm->grad(), dhn.data(), A.xs.back().data(), M.final_norm->data(),
                     A.hn_rstd.data(), n, D);
    for (int64_t l = c.num_hidden_layers - 1; l >= 0; --l) {
      std::fill(dprev.begin(), dprev.end(), 0.f);
      hook(&ParamHooks::before_backward, int(l));
      layer_backward(dprev.data(), dx.data(), A.layers[size_t(l)], M.layers[size_t(l)], main_ctx);
      hook(&ParamHooks::after_backward, int(l));
      std::swap(dx, dprev);
    }
    hook(&ParamHooks::before_backward, ParamHooks::kEmbed);
    embedding_backward(M.embed->grad(), A.ids.data(), n, dx.data(), D);
    hook(&ParamHooks::after_backward, ParamHooks::kEmbed);
    hook(&ParamHooks::after_backward, ParamHooks::kGlobals);
  }

  void hook(void (ParamHooks::*f)(int), int layer) const {
    if (M.hooks) (M.hooks->*f)(layer);
  }

  void collect_loads(ExpertLoads* loads) const {
    if (!loads) return;
    for (size_t l = 0; l < A.layers.size(); ++l)
      if (M.layers[l].is_moe) (*loads)[M.layers[l].gate_name] = A.layers[l].moe.load;
    if (M.has_mtp && M.mtp_layer.is_moe) (*loads)[M.mtp_layer.gate_name] = A.mtp_layer.moe.load;
  }
};

void check_batch(const TrainModel& m, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                 const std::vector<uint8_t>* mask) {
  MOE_CHECK(!mask || mask->size() == ids.size(), "train: a loss mask of {} values for {} ids", mask ? mask->size() : 0,
            ids.size());
  MOE_CHECK(b > 0 && int64_t(ids.size()) == b * t, "train: a batch of {} ids is not {} x {}", ids.size(), b, t);
  MOE_CHECK(t >= (m.has_mtp ? 3 : 2), "train: sequences of {} tokens are too short to have targets", t);
  for (int32_t id : ids)
    MOE_CHECK(id >= 0 && id < m.config.vocab_size, "train: token id {} is outside the vocabulary ({})", id,
              m.config.vocab_size);
}

}  // namespace

LossParts forward_backward(TrainModel& model, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                           const Objective& obj, ExpertLoads* loads, const std::vector<uint8_t>* loss_mask) {
  check_batch(model, ids, b, t, loss_mask);
  if (model.device) return model.device->forward_backward(model, ids, b, t, obj, loads, loss_mask);
  Pass p(model, obj);
  p.forward(ids, b, t, loss_mask);
  p.backward();
  p.collect_loads(loads);
  return p.parts;
}

LossParts forward_loss(TrainModel& model, const std::vector<int32_t>& ids, int64_t b, int64_t t, const Objective& obj,
                       const std::vector<uint8_t>* loss_mask, ExpertLoads* loads) {
  check_batch(model, ids, b, t, loss_mask);
  MOE_CHECK(!(loads && model.device), "train: forward_loss reports no expert loads from a device's forward");
  if (model.device) return model.device->forward_loss(model, ids, b, t, obj, loss_mask);
  Pass p(model, obj);
  p.forward(ids, b, t, loss_mask);
  p.hook(&ParamHooks::after_forward, ParamHooks::kGlobals);
  p.collect_loads(loads);
  return p.parts;
}

}  // namespace moe::train

namespace moe::train {

std::vector<float> forward_logits(TrainModel& model, const std::vector<int32_t>& ids, int64_t b, int64_t t) {
  MOE_CHECK(b > 0 && int64_t(ids.size()) == b * t, "train: a batch of {} ids is not {} x {}", ids.size(), b, t);
  const ModelConfig& c = model.config;
  const int64_t D = c.hidden_size, V = c.vocab_size, n = b * t;
  if (model.device) model.device->pull(model);  // the host copies are the device's after a step
  CpuCompute cpu(model.pool);
  Compute& cmp = model.compute ? *model.compute : cpu;
  const LayerContext ctx = make_layer_context(c, 0.0, model.pool, model.ep, &cmp);
  const auto hook = [&](void (ParamHooks::*f)(int), int layer) {
    if (model.hooks) (model.hooks->*f)(layer);
  };
  hook(&ParamHooks::before_forward, ParamHooks::kGlobals);
  std::vector<float> x(size_t(n * D)), y(size_t(n * D));
  hook(&ParamHooks::before_forward, ParamHooks::kEmbed);
  embedding_forward(x.data(), ids.data(), n, model.embed->data(), D);
  hook(&ParamHooks::after_forward, ParamHooks::kEmbed);
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) {
    LayerActs acts;
    std::fill(y.begin(), y.end(), 0.f);
    hook(&ParamHooks::before_forward, int(l));
    layer_forward(acts, model.layers[size_t(l)], ctx, x.data(), b, t, y.data());
    hook(&ParamHooks::after_forward, int(l));
    std::swap(x, y);
  }
  std::vector<float> rstd(static_cast<size_t>(n));
  rmsnorm_forward(y.data(), rstd.data(), x.data(), model.final_norm->data(), n, D, c.rms_norm_eps);
  std::vector<float> logits(size_t(n * V));
  hook(&ParamHooks::before_forward, ParamHooks::kHead);
  cmp.matmul_forward(logits.data(), y.data(), model.head->data(), n, D, V, true);
  hook(&ParamHooks::after_forward, ParamHooks::kHead);
  hook(&ParamHooks::after_forward, ParamHooks::kGlobals);
  return logits;
}

void add_loads(ExpertLoads& sum, const ExpertLoads& part) {
  for (const auto& [gate, load] : part) {
    auto& s = sum[gate];
    s.resize(load.size(), 0);
    for (size_t e = 0; e < load.size(); ++e) s[e] += load[e];
  }
}

}  // namespace moe::train
