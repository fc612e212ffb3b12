#pragma once
// Distributed training over the ranks of a Communicator (issue 12 item 4; docs/distributed.md):
//   data parallelism: the global batch of b sequences is split into N contiguous blocks of b/N, each rank runs
//     forward/backward on its block; the loss is the mean of the ranks' (equal shares: the single process's mean),
//     gradients are summed over ranks in rank order and divided by N, expert loads summed (so every rank moves
//     the correction biases alike);
//   ZeRO-1 (zero = 1): gradients all-reduced, AdamW moments and the update sharded: rank r owns one 1/N slice of
//     the flattened replicated parameters, updates it and all-gathers the parameters;
//   ZeRO-2 (zero = 2): as ZeRO-1 but the gradients are reduce-scattered, so each rank only receives its slice;
//   expert parallelism (ep): the routed experts are sharded over the ranks (train/expert_parallel.h); their
//     gradients, moments and updates live on the owner only; non-owners drop the tensors.
// The gradient norm for clipping is global: replicated tensors once plus every owner's experts.
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "train/expert_parallel.h"
#include "train/model.h"
#include "train/optimizer.h"

namespace moe::train {

struct ParallelOptions {
  bool ep = false;  // shard the routed experts over the ranks
  int zero = 0;     // 0: plain data parallelism; 1: sharded optimizer state; 2: and reduce-scattered gradients
};

class DistributedTraining {
 public:
  // Sets model.ep while alive (with ep); checks that experts divide over the ranks. The model must be the same on
  // every rank (loaded or initialised from the same seed).
  DistributedTraining(TrainModel& model, dist::Communicator& comm, ParallelOptions options);
  ~DistributedTraining();
  DistributedTraining(const DistributedTraining&) = delete;
  DistributedTraining& operator=(const DistributedTraining&) = delete;

  // This rank's contiguous block of sequences of a global [b, t] batch (b a multiple of the ranks).
  std::vector<int32_t> local_batch(const std::vector<int32_t>& ids, int64_t b, int64_t t) const;
  // zero_grad + local_pass + reduce: one step's gradient over a global [b, t] batch. Returns the global loss
  // parts; loads (if given) are summed over ranks.
  LossParts forward_backward(const std::vector<int32_t>& ids, int64_t b, int64_t t, const Objective& obj,
                             ExpertLoads* loads);
  // forward_backward (adding to the gradients) on this rank's block of a global [b, t] batch (and of its loss
  // mask): one micro-batch of an accumulated step. Returns this rank's parts; its loads are added to *loads.
  LossParts local_pass(const std::vector<int32_t>& ids, int64_t b, int64_t t, const Objective& obj,
                       ExpertLoads* loads, const std::vector<uint8_t>* mask = nullptr);
  // After the local passes of a step: the parts averaged over ranks, loads summed over ranks (in place), the
  // gradients reduced (as the class comment says).
  LossParts reduce(const LossParts& local, ExpertLoads* loads);
  int rank() const;
  // Global-norm clipping and AdamW on what this rank owns, then the all-gather of the updated parameters.
  StepStats step(const AdamW& opt, double lr, double clip_norm, int64_t step);
  // Every rank the whole model (experts broadcast from their owners) and, with ZeRO, the whole moments: for
  // writing checkpoints or comparing. Training may continue afterwards.
  void gather_model();

  // Whether every Param::g holds the whole reduced gradient after forward_backward (not with ZeRO-2 or ep).
  bool whole_gradients() const { return o_.zero < 2 && !o_.ep; }
  const ParallelOptions& options() const { return o_; }
  // Expert parallelism's traffic on this rank (zeros without --ep); reset_ep_stats() starts a new count.
  const EpStats& ep_stats() const { return ep_.stats; }
  void reset_ep_stats() { ep_.stats = {}; }

 private:
  bool expert_param(const Param* p) const;
  bool owned(const Param* p) const;
  void reduce_gradients();

  TrainModel& m_;
  dist::Communicator& c_;
  ParallelOptions o_;
  ExpertParallel ep_;
  std::vector<Param*> replicated_;      // every parameter that is not a routed expert's (all of them without ep)
  std::vector<size_t> offset_;          // replicated_[i] starts at offset_[i] in the flat layout
  size_t total_ = 0, chunk_ = 0;        // flat size, and the slice per rank (total_ rounded up / N)
  std::vector<float> g_shard_, m_shard_, v_shard_;  // ZeRO: this rank's slice of the gradient and moments
  std::vector<std::pair<Param*, int>> expert_owner_;  // ep: every expert tensor and its owner
  std::unordered_map<const Param*, int> owner_of_;      // the same, for lookups
};

}  // namespace moe::train
