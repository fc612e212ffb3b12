// DeepSeekMoE routing, one token at a time (router in FP32):
//   V3 (sigmoid, noaux_tc): s = sigmoid(logits); b = s + correction bias (b only chooses, weights from s);
//       a group's score is the sum of its two best b; keep topk_group groups; top-k of b among them.
//   V2 (softmax): s = softmax(logits); greedy top-k, or group_limited_greedy with a group's score = its max s.
//   w = s[chosen]; normalised to sum 1 when norm_topk_prob; times routed_scaling_factor.
// Ties go to the lower expert index. Output columns past top_k name the shared experts (backend.h).
#include <algorithm>
#include <cmath>
#include <numeric>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace moe::cpu {

namespace {

// Indices of the k largest values (descending; ties to the lower index).
std::vector<int32_t> top_k_indices(const std::vector<float>& v, int32_t k) {
  std::vector<int32_t> idx(v.size());
  std::iota(idx.begin(), idx.end(), 0);
  std::partial_sort(idx.begin(), idx.begin() + k, idx.end(), [&](int32_t a, int32_t b) {
    return v[size_t(a)] > v[size_t(b)] || (v[size_t(a)] == v[size_t(b)] && a < b);
  });
  idx.resize(size_t(k));
  return idx;
}

}  // namespace

void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& p,
               const TensorView& expert_ids, const TensorView& expert_weights) {
  const int64_t T = logits.rows(), E = logits.row_size();
  MOE_CHECK(E == p.num_experts, "moe_route: {} router logits for {} experts", E, p.num_experts);
  // Columns past top_k: the shared experts as routed ones (ids E.., weight 1; backend.h).
  const int64_t cols = expert_ids.row_size(), shared = cols - p.top_k;
  MOE_CHECK(shared >= 0 && expert_ids.numel() == T * cols && expert_weights.numel() == T * cols,
            "moe_route: outputs of {} and {} for {} tokens, top {}", expert_ids.shape.str(),
            expert_weights.shape.str(), T, p.top_k);
  const int32_t per_group = p.num_experts / p.n_group;
  std::vector<float> s(static_cast<size_t>(E)), choice(static_cast<size_t>(E)), group_score(static_cast<size_t>(p.n_group));
  for (int64_t t = 0; t < T; ++t) {
    const float* l = logits.as<const float>() + t * E;
    if (p.score == RoutingScore::Sigmoid) {
      for (int64_t e = 0; e < E; ++e) s[size_t(e)] = 1.0f / (1.0f + std::exp(-l[e]));
    } else {
      const float mx = *std::max_element(l, l + E);
      double sum = 0.0;
      for (int64_t e = 0; e < E; ++e) sum += (s[size_t(e)] = std::exp(l[e] - mx));
      for (int64_t e = 0; e < E; ++e) s[size_t(e)] = float(s[size_t(e)] / sum);
    }
    for (int64_t e = 0; e < E; ++e) choice[size_t(e)] = s[size_t(e)] + (bias.data ? bias.as<const float>()[e] : 0.0f);

    if (p.method != RoutingMethod::Greedy && p.n_group > 1) {
      for (int32_t g = 0; g < p.n_group; ++g) {
        std::vector<float> members(choice.begin() + g * per_group, choice.begin() + (g + 1) * per_group);
        std::sort(members.begin(), members.end(), std::greater<float>());
        group_score[size_t(g)] = p.method == RoutingMethod::NoauxTc ? members[0] + members[1] : members[0];
      }
      const std::vector<int32_t> kept = top_k_indices(group_score, p.topk_group);
      std::vector<bool> keep(size_t(p.n_group), false);
      for (int32_t g : kept) keep[size_t(g)] = true;
      for (int64_t e = 0; e < E; ++e)
        if (!keep[size_t(e / per_group)]) choice[size_t(e)] = -INFINITY;
    }
    const std::vector<int32_t> chosen = top_k_indices(choice, p.top_k);
    float sum = 0.0f;
    for (int32_t e : chosen) sum += s[size_t(e)];
    for (int32_t j = 0; j < p.top_k; ++j) {
      float w = s[size_t(chosen[size_t(j)])];
      if (p.norm_topk_prob) w /= (sum + 1e-20f);
      expert_ids.as<int32_t>()[t * cols + j] = chosen[size_t(j)];
      expert_weights.as<float>()[t * cols + j] = w * p.routed_scaling_factor;
    }
    for (int64_t j = 0; j < shared; ++j) {
      expert_ids.as<int32_t>()[t * cols + p.top_k + j] = int32_t(E + j);
      expert_weights.as<float>()[t * cols + p.top_k + j] = 1.0f;
    }
  }
}

}  // namespace moe::cpu
