#pragma once
// Routing comparisons of a GPU run against the CPU's (TraceBackend records), shared by the whole-model tests:
// every flipped (token, layer) with its margins, and whether the first layer with flips has only near-ties
// (test_cuda_model.cpp's header says why that is the rule).
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "model/deepseek_v3.h"
#include "trace_backend.h"

namespace moe::test {

inline constexpr double kRouteTie = 5e-3;  // routing margin (choice-score units, scores in (0, 1) + bias) of a near-tie
inline constexpr double kMaxPerturbation = 2e-2;  // the largest GPU perturbation of a token's choice scores accepted

inline RoutingParams routing_of(const ModelConfig& c) {
  RoutingParams p;
  p.num_experts = int32_t(c.n_routed_experts);
  p.top_k = int32_t(c.num_experts_per_tok);
  p.n_group = int32_t(c.n_group);
  p.topk_group = int32_t(c.topk_group);
  return p;
}

inline std::vector<int64_t> moe_layers(const DeepseekV3& m) {
  std::vector<int64_t> out;
  for (size_t l = 0; l < m.weights().layers.size(); ++l)
    if (m.weights().layers[l].is_moe) out.push_back(int64_t(l));
  return out;
}

// Compares the routing of a GPU run with the CPU's. Prints every flip with its margins (from the CPU logits)
// and the GPU's perturbation of the choice scores; returns false if the first layer with a flip has one that
// is not a near-tie. `flips` gets the number of flipped (token, layer) pairs.
inline bool routing_explained(const std::vector<Record>& gpu, const std::vector<Record>& cpu,
                              const DeepseekV3& cpu_model, const std::string& label, int* flips,
                              bool after_flip = false) {
  const RoutingParams p = routing_of(cpu_model.config());
  const std::vector<int64_t> layers = moe_layers(cpu_model);
  EXPECT_EQ(gpu.size(), cpu.size()) << label;
  bool first_layer_seen = after_flip, ok = true;
  *flips = 0;
  for (size_t i = 0; i < std::min(gpu.size(), cpu.size()); ++i) {
    const Record &g = gpu[i], &c = cpu[i];
    const int64_t L = layers[i % layers.size()];
    const TensorView bias = cpu_model.weights().layers[size_t(L)].correction_bias.view();
    const float* b = bias.data ? bias.as<const float>() : nullptr;
    const std::vector<int64_t> f = test::route_flips(g, c);
    for (int64_t t : f) {
      const test::RouteMargin m = test::route_margin(c.f.data() + t * c.E, b, p);
      double pert = 0.0;
      for (int64_t e = 0; e < c.E; ++e) {
        const double sg = 1.0 / (1.0 + std::exp(-double(g.f[size_t(t * c.E + e)]))),
                     sc = 1.0 / (1.0 + std::exp(-double(c.f[size_t(t * c.E + e)])));
        pert = std::max(pert, std::fabs(sg - sc));
      }
      const bool tie = (m.expert <= std::max(kRouteTie, pert) || m.group <= std::max(kRouteTie, 2.0 * pert)) &&
                       pert <= kMaxPerturbation;
      std::printf("  %s: routing call %zu (layer %lld) token %lld flips: CPU margins group %.2e expert %.2e, GPU score "
                  "perturbation up to %.2e%s\n",
                  label.c_str(), i, static_cast<long long>(L), static_cast<long long>(t), m.group, m.expert, pert,
                  first_layer_seen ? " (after an earlier flip)" : tie ? " -> near-tie" : " -> NOT a near-tie");
      if (!first_layer_seen && !tie) ok = false;
    }
    if (!f.empty()) first_layer_seen = true;
    *flips += int(f.size());
  }
  return ok;
}

}  // namespace moe::test
