// DeepSeek's MoE router (MODEL.md "MoE routing"), its backward, and the sequence-wise balance loss.
// Forward per token: s = sigmoid(l) (V3) or softmax(l) (V2); choice = s + correction bias (noaux_tc) or s;
// group-limited: a group's score is the sum of its two best choice values (noaux_tc) or its max (V2), the
// topk_group best groups are kept, the others' experts masked out; top-k of choice. Weights come from the
// unbiased s: w_j = scaling * s[c_j] / D, D = sum_k s[c_k] + 1e-20 when norm_topk_prob, else D = 1.
// The choice is piecewise constant in the logits, so gradients flow only through the weights' values.
#include <algorithm>
#include <cmath>
#include <numeric>

#include "core/error.h"
#include "train/ops.h"

namespace moe::train {

namespace {
// Indices of the k largest values, largest first; ties go to the lower index (a stable, reproducible order).
std::vector<int32_t> top_k(const std::vector<double>& v, int64_t k) {
  std::vector<int32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::stable_sort(idx.begin(), idx.end(), [&](int32_t a, int32_t b) { return v[size_t(a)] > v[size_t(b)]; });
  idx.resize(size_t(k));
  return idx;
}
}  // namespace

template <typename T>
void router_forward(Routing<T>& r, const T* logits, const float* bias, int64_t n, const RouterConfig& c) {
  const int64_t E = c.experts, K = c.top_k;
  MOE_CHECK(E % c.n_group == 0 && K <= E, "router: {} experts in {} groups, top-{}", E, c.n_group, K);
  r.scores.assign(size_t(n * E), T(0));
  r.chosen.assign(size_t(n * K), 0);
  r.weights.assign(size_t(n * K), T(0));
  r.denom.assign(size_t(n), T(1));
  const int64_t per_group = E / c.n_group;
  std::vector<double> s(static_cast<size_t>(E)), choice(static_cast<size_t>(E)), group_score(static_cast<size_t>(c.n_group));
  for (int64_t t = 0; t < n; ++t) {
    const T* l = logits + t * E;
    if (c.scoring == ScoringFunc::Sigmoid) {
      for (int64_t e = 0; e < E; ++e) s[size_t(e)] = 1.0 / (1.0 + std::exp(-double(l[e])));
    } else {
      double mx = double(l[0]), z = 0;
      for (int64_t e = 1; e < E; ++e) mx = std::max(mx, double(l[e]));
      for (int64_t e = 0; e < E; ++e) z += (s[size_t(e)] = std::exp(double(l[e]) - mx));
      for (double& v : s) v /= z;
    }
    for (int64_t e = 0; e < E; ++e) {
      r.scores[size_t(t * E + e)] = T(s[size_t(e)]);
      s[size_t(e)] = double(r.scores[size_t(t * E + e)]);  // choose and weigh with the stored (rounded) score
      choice[size_t(e)] = s[size_t(e)] + (bias && c.method == TopkMethod::NoauxTc ? double(bias[e]) : 0.0);
    }
    if (c.method != TopkMethod::Greedy && c.n_group > 1) {
      for (int64_t g = 0; g < c.n_group; ++g) {
        std::vector<double> members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
        std::sort(members.begin(), members.end(), std::greater<>());
        group_score[size_t(g)] =
            c.method == TopkMethod::NoauxTc ? members[0] + (per_group > 1 ? members[1] : 0.0) : members[0];
      }
      std::vector<bool> keep(size_t(c.n_group), false);
      for (int32_t g : top_k(group_score, c.topk_group)) keep[size_t(g)] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[size_t(e / per_group)]) choice[size_t(e)] = -INFINITY;
    }
    const std::vector<int32_t> chosen = top_k(choice, K);
    double denom = 1.0;
    if (c.norm_topk_prob) {
      denom = 1e-20;
      for (int32_t e : chosen) denom += s[size_t(e)];
    }
    r.denom[size_t(t)] = T(denom);
    for (int64_t j = 0; j < K; ++j) {
      r.chosen[size_t(t * K + j)] = chosen[size_t(j)];
      r.weights[size_t(t * K + j)] = T(c.scaling * s[size_t(chosen[size_t(j)])] / denom);
    }
  }
}

// dL/ds[c_i] = scaling (dw_i / D - [norm] sum_j dw_j s[c_j] / D^2)
template <typename T>
void router_weights_backward(T* dscores, const T* dweights, const Routing<T>& r, int64_t n, const RouterConfig& c) {
  const int64_t E = c.experts, K = c.top_k;
  for (int64_t t = 0; t < n; ++t) {
    const double D = double(r.denom[size_t(t)]);
    double dot = 0;
    for (int64_t j = 0; j < K; ++j)
      dot += double(dweights[t * K + j]) * double(r.scores[size_t(t * E + r.chosen[size_t(t * K + j)])]);
    for (int64_t j = 0; j < K; ++j) {
      double g = double(dweights[t * K + j]) / D;
      if (c.norm_topk_prob) g -= dot / (D * D);
      dscores[t * E + r.chosen[size_t(t * K + j)]] += T(c.scaling * g);
    }
  }
}

// sigmoid: dl = ds s (1 - s);  softmax: dl_e = s_e (ds_e - sum_e' s_e' ds_e')
template <typename T>
void router_scores_backward(T* dlogits, const T* dscores, const Routing<T>& r, int64_t n, const RouterConfig& c) {
  const int64_t E = c.experts;
  for (int64_t t = 0; t < n; ++t) {
    const T* s = r.scores.data() + t * E;
    const T* ds = dscores + t * E;
    if (c.scoring == ScoringFunc::Sigmoid) {
      for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] += T(double(ds[e]) * double(s[e]) * (1.0 - double(s[e])));
    } else {
      double dot = 0;
      for (int64_t e = 0; e < E; ++e) dot += double(s[e]) * double(ds[e]);
      for (int64_t e = 0; e < E; ++e) dlogits[t * E + e] += T(double(s[e]) * (double(ds[e]) - dot));
    }
  }
}

namespace {
// f_i of sequence `seq`: E / (K t) times the number of its tokens routed to expert i.
template <typename T>
std::vector<double> balance_fractions(const Routing<T>& r, int64_t seq, int64_t t, const RouterConfig& c) {
  std::vector<double> f(size_t(c.experts), 0.0);
  for (int64_t i = seq * t; i < (seq + 1) * t; ++i)
    for (int64_t j = 0; j < c.top_k; ++j) f[size_t(r.chosen[size_t(i * c.top_k + j)])] += 1.0;
  for (double& v : f) v *= double(c.experts) / double(c.top_k * t);
  return f;
}
}  // namespace

template <typename T>
double balance_loss_forward(const Routing<T>& r, int64_t b, int64_t t, const RouterConfig& c, double alpha) {
  const int64_t E = c.experts;
  double loss = 0;
  for (int64_t seq = 0; seq < b; ++seq) {
    const std::vector<double> f = balance_fractions(r, seq, t, c);
    for (int64_t i = seq * t; i < (seq + 1) * t; ++i) {
      const T* s = r.scores.data() + i * E;
      double sum = 0, fp = 0;
      for (int64_t e = 0; e < E; ++e) sum += double(s[e]);
      for (int64_t e = 0; e < E; ++e) fp += f[size_t(e)] * double(s[e]) / sum;
      loss += alpha * fp / double(t * b);
    }
  }
  return loss;
}

// With q_e = s_e / n (n = sum_e s_e) and g_e = dL/dq_e = dloss alpha f_e / (t b):
//   dL/ds_k = (g_k - sum_e g_e q_e) / n
template <typename T>
void balance_loss_backward(T* dscores, const Routing<T>& r, int64_t b, int64_t t, const RouterConfig& c,
                           double alpha, double dloss) {
  const int64_t E = c.experts;
  for (int64_t seq = 0; seq < b; ++seq) {
    const std::vector<double> f = balance_fractions(r, seq, t, c);
    for (int64_t i = seq * t; i < (seq + 1) * t; ++i) {
      const T* s = r.scores.data() + i * E;
      double n = 0, gq = 0;
      for (int64_t e = 0; e < E; ++e) n += double(s[e]);
      const double k = dloss * alpha / double(t * b);
      for (int64_t e = 0; e < E; ++e) gq += k * f[size_t(e)] * double(s[e]) / n;
      for (int64_t e = 0; e < E; ++e) dscores[i * E + e] += T((k * f[size_t(e)] - gq) / n);
    }
  }
}

#define INSTANTIATE(T)                                                                                        \
  template void router_forward<T>(Routing<T>&, const T*, const float*, int64_t, const RouterConfig&);       \
  template void router_weights_backward<T>(T*, const T*, const Routing<T>&, int64_t, const RouterConfig&);  \
  template void router_scores_backward<T>(T*, const T*, const Routing<T>&, int64_t, const RouterConfig&);   \
  template double balance_loss_forward<T>(const Routing<T>&, int64_t, int64_t, const RouterConfig&, double); \
  template void balance_loss_backward<T>(T*, const Routing<T>&, int64_t, int64_t, const RouterConfig&, double, double);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
