#pragma once
// The whole model's training forward and backward: main model + one MTP depth, and the objective
//   L = L_main + lambda L_mtp + L_bal   (MODEL.md "Training objective")
// over a batch of b packed sequences of t tokens (documents separated by EOS, plain causal attention).
#include <map>
#include <string>
#include <vector>

#include "train/layer.h"
#include "train/params.h"

namespace moe::train {

// The per-layer context of a training pass over `c`: rope, attention scale and router parameters from the config,
// the balance loss's weight, and the pass's threads, expert parallelism and compute (null: none / this thread).
LayerContext make_layer_context(const ModelConfig& c, double seq_aux_alpha, ThreadPool* pool = nullptr,
                                const ExpertParallel* ep = nullptr, Compute* compute = nullptr);
// Rows of sequence-major [b, t] ids whose position is < keep, as [b, keep], starting at position `offset`.
std::vector<int32_t> shifted_ids(const std::vector<int32_t>& ids, int64_t b, int64_t t, int64_t keep, int64_t offset);
// shifted_ids as targets: -1 (no loss) where `mask` (may be null) says the token carries none; *count: the real ones.
std::vector<int32_t> masked_targets(const std::vector<int32_t>& ids, const std::vector<uint8_t>* mask, int64_t b,
                                    int64_t t, int64_t keep, int64_t offset, int64_t* count);

struct Objective {
  double mtp_lambda = 0.3;
  double seq_aux_alpha = 1e-4;
};

struct LossParts {
  double loss = 0, main_ce = 0, mtp_ce = 0, seq_aux = 0;
};

// Activations of one forward pass, kept for the backward (see layer.h for the policy).
struct ModelActs {
  std::vector<int32_t> ids;                   // [b, t]
  int64_t b = 0, t = 0;
  std::vector<std::vector<float>> xs;         // num_hidden_layers + 1 residual streams [b*t, D]
  std::vector<LayerActs> layers;
  std::vector<float> hn, hn_rstd;             // final norm output [b*t, D]
  std::vector<float> dlogits;                 // [b*(t-1), V] (the fused CE leaves the gradient here)
  // MTP (j < t-2 per sequence): e = embed(ids[j+1]), m = eh_proj([enorm(e) ; hnorm(hn_j)]), y = layer(m)
  std::vector<float> e, en, e_rstd, hh, hh_rstd, cat, m, y, yn, yn_rstd, mtp_dlogits;
  LayerActs mtp_layer;
};

// Loads (tokens per expert in the batch) of every MoE layer, the MTP module's too, keyed by the gate's name.
using ExpertLoads = std::map<std::string, std::vector<int64_t>>;
// sum += part, gate by gate (the loads of micro-batches of one optimiser step add up: they are counts).
void add_loads(ExpertLoads& sum, const ExpertLoads& part);

// Forward and backward in one call: gradients are ADDED to every Param::g (zero them first; two calls
// accumulate, which is gradient accumulation). ids is [b, t], t >= 3 when the model has an MTP module.
// loss_mask (SFT; null: every token) is [b, t]: 1 where the token at that position is a target that carries
// loss. Each CE is then the mean over the targets that carry loss (0, with no gradient, when there are none).
LossParts forward_backward(TrainModel& model, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                           const Objective& obj, ExpertLoads* loads = nullptr,
                           const std::vector<uint8_t>* loss_mask = nullptr);

// The forward alone (no gradients): the loss and its parts, for finite-difference checks and evaluation.
// loads (may be null): each MoE layer's tokens per expert, as forward_backward reports them; the CPU path only
// (a device's forward reports none: the trainer's validation then runs its forward_backward, see trainer.cpp).
LossParts forward_loss(TrainModel& model, const std::vector<int32_t>& ids, int64_t b, int64_t t, const Objective& obj,
                       const std::vector<uint8_t>* loss_mask = nullptr, ExpertLoads* loads = nullptr);

// The main model's logits [b*t, V] for every position (no loss, nothing kept): what a checkpoint's reader
// should reproduce.
std::vector<float> forward_logits(TrainModel& model, const std::vector<int32_t>& ids, int64_t b, int64_t t);

}  // namespace moe::train
