#pragma once
// Distributed training over the ranks of a Communicator (issue 12 item 4; docs/distributed.md):
//   data parallelism: the global batch of b sequences is split into N contiguous blocks of b/N, each rank runs
//     forward/backward on its block; the loss is the mean of the ranks' (equal shares: the single process's mean),
//     gradients are summed over ranks in rank order and divided by N, expert loads summed (so every rank moves
//     the correction biases alike);
//   ZeRO-1 (zero = 1): gradients all-reduced, AdamW moments and the update sharded: rank r owns one 1/N slice of
//     the flattened replicated parameters, updates it and all-gathers the parameters;
//   ZeRO-2 (zero = 2): as ZeRO-1 but the gradients are reduce-scattered, so each rank only receives its slice;
//   ZeRO-3 (zero = 3): the replicated parameters too are sharded between steps. They are flattened per group (one
//     group per layer, the MTP layer, the embedding, the head, and the small rest: norms, MTP projection) and
//     rank r keeps slice r of each group's values, gradients and moments. A group is all-gathered just before
//     each use in the forward and freed after, gathered again before its backward, and its gradient
//     reduce-scattered into the shard as soon as that backward is done (then freed); the small rest is held for
//     the whole pass. The update runs on the shards and needs no all-gather (the next pass gathers what it uses);
//   expert parallelism (ep): the routed experts are sharded over the ranks (train/expert_parallel.h); their
//     gradients, moments and updates live on the owner only; non-owners drop the tensors.
// The gradient norm for clipping is global: replicated tensors once plus every owner's experts.
#include <algorithm>
#include <cstdint>
#include <unordered_map>
#include <vector>

#include "train/expert_parallel.h"
#include "train/model.h"
#include "train/optimizer.h"

namespace moe::train {

struct ParallelOptions {
  bool ep = false;  // shard the routed experts over the ranks
  int zero = 0;     // 0: plain data parallelism; 1: sharded optimizer state; 2: and reduce-scattered gradients;
                    // 3: and parameters sharded between steps, gathered per layer
};

// Installs itself as the model's ParamHooks while alive (ZeRO-3's per-layer gathers; the memory count below).
class DistributedTraining : private ParamHooks {
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
  // Before a step's last local_pass: on a device with NCCL, that pass's backward starts reducing each layer's
  // gradients as soon as it is done (DeviceStep::reduce_during_next_backward); nothing otherwise.
  void before_last_pass();
  // After the local passes of a step: the parts averaged over ranks, loads summed over ranks (in place), the
  // gradients reduced (as the class comment says).
  LossParts reduce(const LossParts& local, ExpertLoads* loads);
  // Scales what the local passes already reduce-scattered into the gradient shards (ZeRO-3; nothing otherwise):
  // with scale_gradients(model) on the model's tensors, the 1/k of k accumulated micro-batches.
  void scale_sharded_gradients(double s);
  int rank() const;
  // Global-norm clipping and AdamW on what this rank owns, then the all-gather of the updated parameters.
  StepStats step(const AdamW& opt, double lr, double clip_norm, int64_t step);
  // Every rank the whole model (experts broadcast from their owners) and, with ZeRO, the whole moments: for
  // writing checkpoints or comparing. Training may continue afterwards (ZeRO-3 frees the copies again on the
  // next pass). With ZeRO-3 the model's replicated tensors are empty between steps until this is called.
  void gather_model();

  // Bytes of parameter state this rank holds now: values, gradients and moments of the model's tensors plus the
  // ZeRO shards (not the transient communication buffers of a collective). The peak is sampled at every layer
  // hook of the passes (where ZeRO-3 holds a gathered layer) and after each reduce and step.
  size_t param_bytes() const;
  size_t peak_param_bytes() const { return peak_bytes_; }
  void reset_peak_param_bytes() { peak_bytes_ = param_bytes(); }

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
  void scale_owned_expert_gradients();
  void note_bytes() { peak_bytes_ = std::max(peak_bytes_, param_bytes()); }

  // ParamHooks: ZeRO-3 gathers, frees and reduce-scatters here; every mode counts bytes.
  void before_forward(int layer) override;
  void after_forward(int layer) override;
  void before_backward(int layer) override;
  void after_backward(int layer) override;

  // ZeRO-3's flat layout of one group: params at offset[i] in [0, total); slice r is [r * chunk, (r+1) * chunk)
  // (the last one padded with zeros), kept at `at` in the shard vectors.
  struct Group {
    std::vector<Param*> params;
    std::vector<size_t> offset;
    size_t total = 0, chunk = 0, at = 0;
  };
  void build_groups();
  Group& group(int layer) { return groups_[size_t(layer + 3)]; }  // kHead (-3) is group 0
  void gather_group(const Group& G, const std::vector<float>& shard, std::vector<float> Param::*field);
  void reduce_scatter_group(const Group& G);

  TrainModel& m_;
  dist::Communicator& c_;
  ParallelOptions o_;
  ExpertParallel ep_;
  std::vector<Param*> replicated_;      // every parameter that is not a routed expert's (all of them without ep)
  std::vector<size_t> offset_;          // replicated_[i] starts at offset_[i] in the flat layout
  size_t total_ = 0, chunk_ = 0;        // flat size, and the slice per rank (total_ rounded up / N)
  std::vector<float> g_shard_, m_shard_, v_shard_;  // ZeRO: this rank's slice of the gradient and moments
  std::vector<Group> groups_;                       // ZeRO-3: head, embedding, the rest, one per layer (MTP's last)
  std::vector<float> w_shard_;                      // ZeRO-3: this rank's slice of the values (every group's)
  size_t peak_bytes_ = 0;
  std::vector<std::pair<Param*, int>> expert_owner_;  // ep: every expert tensor and its owner
  std::unordered_map<const Param*, int> owner_of_;      // the same, for lookups
};

}  // namespace moe::train
