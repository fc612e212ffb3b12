#include "model/expert_placement.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <numeric>

#include "core/error.h"

namespace moe {

void LayerPlacement::index(int32_t num_experts) {
  replicas.assign(size_t(num_experts), {});
  for (size_t s = 0; s < slot_expert.size(); ++s) {
    const int32_t e = slot_expert[s];
    MOE_CHECK(e >= 0 && e < num_experts, "expert placement: slot {} holds expert {} (of {})", s, e, num_experts);
    replicas[size_t(e)].push_back(int32_t(s));
  }
  for (int32_t e = 0; e < num_experts; ++e)
    MOE_CHECK(!replicas[size_t(e)].empty(), "expert placement: expert {} has no slot", e);
}

std::vector<int32_t> ExpertPlacement::local_experts(size_t layer, int32_t rank) const {
  MOE_CHECK(layer < layers.size(), "expert placement: no layer {} (of {})", layer, layers.size());
  MOE_CHECK(rank >= 0 && rank < ranks, "expert placement: no rank {} (of {})", rank, ranks);
  const auto& s = layers[layer].slot_expert;
  if (s.empty()) return {};
  return {s.begin() + rank * slots_per_rank, s.begin() + (rank + 1) * slots_per_rank};
}

ExpertPlacement ExpertPlacement::initial(const std::vector<bool>& moe_layers, int32_t num_experts, int32_t ranks,
                                         int32_t redundant) {
  MOE_CHECK(ranks >= 1, "expert parallelism over {} ranks", ranks);
  MOE_CHECK(redundant >= 0, "{} redundant experts", redundant);
  MOE_CHECK((num_experts + redundant) % ranks == 0,
            "{} routed experts plus {} redundant copies cannot be dealt evenly to {} ranks (choose --redundant-experts "
            "so that the sum is a multiple of the rank count)",
            num_experts, redundant, ranks);
  ExpertPlacement p;
  p.ranks = ranks;
  p.num_experts = num_experts;
  p.slots_per_rank = (num_experts + redundant) / ranks;
  MOE_CHECK(p.slots_per_rank >= 1, "{} ranks for {} experts: some rank would hold none", ranks, num_experts);
  // Contiguous blocks: rank q holds experts E*q/R .. E*(q+1)/R - 1, then copies in its spare slots.
  LayerPlacement base;
  if (redundant == 0) {
    base.slot_expert.resize(size_t(num_experts));
    std::iota(base.slot_expert.begin(), base.slot_expert.end(), 0);
  } else {
    base = eplb_layer(std::vector<int64_t>(size_t(num_experts), 0), ranks, p.slots_per_rank);
  }
  base.index(num_experts);
  for (bool moe : moe_layers) p.layers.push_back(moe ? base : LayerPlacement{});
  return p;
}

ExpertPlacement ExpertPlacement::with_shared_expert(const std::vector<bool>& moe_layers, int32_t routed,
                                                    int32_t top_k, int32_t ranks, int32_t redundant) {
  MOE_CHECK(routed >= 1 && top_k >= 1 && top_k <= routed, "shared expert placement: top {} of {} routed experts",
            top_k, routed);
  ExpertPlacement p = initial(moe_layers, routed + 1, ranks, redundant);
  // Expected tokens per expert, scaled by `routed`: top_k for each routed expert, routed for the shared one.
  std::vector<int64_t> load(size_t(routed) + 1, top_k);
  load.back() = routed;
  LayerPlacement base = eplb_layer(load, ranks, p.slots_per_rank);
  for (auto& l : p.layers)
    if (!l.empty()) l = base;
  return p;
}

LayerPlacement eplb_layer(const std::vector<int64_t>& load, int32_t ranks, int32_t slots_per_rank) {
  const int32_t E = int32_t(load.size()), slots = ranks * slots_per_rank;
  MOE_CHECK(slots >= E, "EPLB: {} slots for {} experts", slots, E);
  // 1. Replicate.
  std::vector<int32_t> copies(size_t(E), 1);
  auto per_copy = [&](int32_t e) { return double(load[size_t(e)]) / copies[size_t(e)]; };
  for (int32_t spare = slots - E; spare > 0; --spare) {
    int32_t best = 0;
    for (int32_t e = 1; e < E; ++e) {
      const double a = per_copy(e), b = per_copy(best);
      if (a > b || (a == b && copies[size_t(e)] < copies[size_t(best)])) best = e;
    }
    ++copies[size_t(best)];
  }
  // 2. Pack, heaviest copies first.
  std::vector<std::pair<double, int32_t>> items;
  for (int32_t e = 0; e < E; ++e)
    for (int32_t c = 0; c < copies[size_t(e)]; ++c) items.push_back({per_copy(e), e});
  std::stable_sort(items.begin(), items.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::vector<double> rank_load(size_t(ranks), 0.0);
  std::vector<std::vector<int32_t>> held(static_cast<size_t>(ranks));
  for (const auto& [w, e] : items) {
    int32_t best = -1;
    bool best_dup = true;
    for (int32_t r = 0; r < ranks; ++r) {
      if (int32_t(held[size_t(r)].size()) >= slots_per_rank) continue;
      const bool dup = std::find(held[size_t(r)].begin(), held[size_t(r)].end(), e) != held[size_t(r)].end();
      if (best < 0 || (best_dup && !dup) || (dup == best_dup && rank_load[size_t(r)] < rank_load[size_t(best)]))
        best = r, best_dup = dup;
    }
    held[size_t(best)].push_back(e);
    rank_load[size_t(best)] += w;
  }
  LayerPlacement p;
  for (auto& h : held) {
    std::sort(h.begin(), h.end());
    p.slot_expert.insert(p.slot_expert.end(), h.begin(), h.end());
  }
  p.index(E);
  return p;
}

std::vector<double> rank_loads(const LayerPlacement& p, const std::vector<int64_t>& load, int32_t slots_per_rank) {
  MOE_CHECK(p.replicas.size() == load.size(), "rank_loads: a placement of {} experts for {} loads", p.replicas.size(),
            load.size());
  const size_t R = p.slot_expert.size() / size_t(slots_per_rank);
  std::vector<double> out(R, 0.0);
  for (size_t s = 0; s < p.slot_expert.size(); ++s) {
    const int32_t e = p.slot_expert[s];
    out[s / size_t(slots_per_rank)] += double(load[size_t(e)]) / double(p.replicas[size_t(e)].size());
  }
  return out;
}

double imbalance(const std::vector<double>& rank_load) {
  if (rank_load.empty()) return 1.0;
  const double mx = *std::max_element(rank_load.begin(), rank_load.end());
  const double mean = std::accumulate(rank_load.begin(), rank_load.end(), 0.0) / double(rank_load.size());
  return mean > 0 ? mx / mean : 1.0;
}

std::string ExpertPlacement::to_json() const {
  nlohmann::json j;
  j["ranks"] = ranks;
  j["slots_per_rank"] = slots_per_rank;
  j["num_experts"] = num_experts;
  j["layers"] = nlohmann::json::array();
  for (const auto& l : layers) j["layers"].push_back(l.slot_expert);
  return j.dump();
}

ExpertPlacement ExpertPlacement::from_json(const std::string& text) {
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(text);
  } catch (const std::exception& e) {
    fail("expert placement: not JSON ({})", e.what());
  }
  MOE_CHECK(j.is_object(), "expert placement: expected an object");
  ExpertPlacement p;
  for (const char* k : {"ranks", "slots_per_rank", "num_experts"})
    MOE_CHECK(j.contains(k) && j[k].is_number_integer() && j[k].get<int64_t>() >= 1 && j[k].get<int64_t>() <= 1 << 20,
              "expert placement: '{}' must be an integer from 1 to 2^20", k);
  p.ranks = j["ranks"].get<int32_t>();
  p.slots_per_rank = j["slots_per_rank"].get<int32_t>();
  p.num_experts = j["num_experts"].get<int32_t>();
  MOE_CHECK(int64_t(p.ranks) * p.slots_per_rank <= 1 << 24, "expert placement: {} ranks of {} slots is too many",
            p.ranks, p.slots_per_rank);
  MOE_CHECK(j.contains("layers") && j["layers"].is_array(), "expert placement: 'layers' must be an array");
  for (const auto& l : j["layers"]) {
    MOE_CHECK(l.is_array(), "expert placement: layer {} is not an array", p.layers.size());
    LayerPlacement lp;
    for (const auto& v : l) {
      MOE_CHECK(v.is_number_integer(), "expert placement: layer {} has a slot that is not an integer", p.layers.size());
      lp.slot_expert.push_back(int32_t(std::clamp<int64_t>(v.get<int64_t>(), -1, int64_t(INT32_MAX))));
    }
    if (!lp.empty()) {
      MOE_CHECK(int64_t(lp.slot_expert.size()) == int64_t(p.ranks) * p.slots_per_rank,
                "expert placement: layer {} has {} slots, expected {} ranks x {}", p.layers.size(),
                lp.slot_expert.size(), p.ranks, p.slots_per_rank);
      lp.index(p.num_experts);
    }
    p.layers.push_back(std::move(lp));
  }
  return p;
}

}  // namespace moe
