#pragma once
// Where the routed experts of each MoE layer live under expert parallelism, and EPLB (DeepSeek's expert-parallel
// load balancer): R ranks of S expert slots each, R * S >= E. The R * S - E spare slots hold redundant copies of
// the hottest experts; a token routed to an expert with n copies goes to copy (token index mod n), so a copy
// carries 1/n of its expert's load. Outputs do not depend on the placement (every copy has the same weights).
#include <cstdint>
#include <string>
#include <vector>

namespace moe {

// One layer: slot_expert[rank * S + i] is the global expert in slot i of `rank`.
struct LayerPlacement {
  std::vector<int32_t> slot_expert;           // [R * S]
  std::vector<std::vector<int32_t>> replicas;  // [E]: the slots holding expert e, ascending (derived)

  bool empty() const { return slot_expert.empty(); }
  // Rebuilds `replicas` from slot_expert; throws if an expert has no slot or a slot names no expert.
  void index(int32_t num_experts);
};

struct ExpertPlacement {
  int32_t ranks = 1, slots_per_rank = 0, num_experts = 0;
  std::vector<LayerPlacement> layers;  // one per layer index; empty for dense layers

  // The experts in `rank`'s slots of `layer`, in slot order (what that rank loads).
  std::vector<int32_t> local_experts(size_t layer, int32_t rank) const;
  // The default placement: experts dealt to ranks in contiguous blocks, spare slots given by eplb_layer to the
  // lowest expert ids (uniform load). `moe_layers[i]` says whether layer i has routed experts.
  static ExpertPlacement initial(const std::vector<bool>& moe_layers, int32_t num_experts, int32_t ranks,
                                 int32_t redundant);
  // The shared expert as a routed one (ExpertParallel::set_shared_as_routed): `routed` + 1 experts per MoE layer,
  // id `routed` being the shared expert, placed by eplb_layer from the expected decode load (every token picks
  // the shared expert and `top_k` of the routed ones: per token 1 against top_k / routed), so the spare slots go
  // to copies of the shared expert first and its copies sit on different ranks.
  static ExpertPlacement with_shared_expert(const std::vector<bool>& moe_layers, int32_t routed, int32_t top_k,
                                            int32_t ranks, int32_t redundant);
  // JSON for logs and the step broadcast: {"ranks":..,"slots_per_rank":..,"num_experts":..,"layers":[[..],..]}.
  std::string to_json() const;
  static ExpertPlacement from_json(const std::string& text);  // throws naming what is wrong
};

// EPLB for one layer from the observed tokens per expert `load` [E]:
//  1. replicate: each of the R * S - E spare slots goes to the expert with the highest load per copy so far
//     (ties: fewer copies, then the lower id);
//  2. pack: copies in decreasing load per copy (ties: lower expert) each go to the least loaded rank with a free
//     slot that does not hold that expert yet (ties: lower rank; a rank that holds it only when no other has
//     room), the greedy balanced packing. Slots within a rank are sorted by expert.
LayerPlacement eplb_layer(const std::vector<int64_t>& load, int32_t ranks, int32_t slots_per_rank);

// Each rank's load under `p` (an expert's tokens split evenly over its copies) and its max / mean (1 = perfect
// balance; 1 for zero load).
std::vector<double> rank_loads(const LayerPlacement& p, const std::vector<int64_t>& load, int32_t slots_per_rank);
double imbalance(const std::vector<double>& rank_load);

}  // namespace moe
