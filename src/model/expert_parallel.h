#pragma once
// Expert-parallel MoE (issue 12): the routed experts of each layer are dealt over the ranks of a communicator by
// an ExpertPlacement (rank r holds the experts of its slots, spare slots holding copies of hot experts), and a
// layer's routed part runs as
//   route (every rank) -> dispatch: each rank sends each of its tokens' hidden state once to every rank holding
//   one of the token's experts (all_to_all_v of rows, plus the local slot of each of its experts) -> the grouped
//   MLP of the received rows on the local experts -> combine: the unweighted expert outputs travel back, one row
//   per (token, expert), and the token's owner runs the backend's moe_combine over them in the single-process
//   order -> all-gather of the owners' outputs.
// This first version runs every rank on the same batch (attention and the router replicated; tokens dealt to
// owners in contiguous blocks, rank r owning T*r/R .. T*(r+1)/R - 1), with only the MoE sharded; the shared
// expert is computed on the whole batch by every rank, like attention. Each expert sees the same rows in the same
// order as in one process, so without redundant copies the logits are bit-identical to one process; a copy takes
// part of its expert's rows, which can change a matmul's code path for those rows (a rounding difference, far
// inside the 1e-5 bound).
//
// The plan (counts, slots) is built on the host, so this runs on host memory (CPU backend, MPI); a GPU version
// keeps the rows on the device for NCCL and exchanges the plan through the host (docs/distributed.md, "Expert-parallel inference").
#include <atomic>
#include <cstdint>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "dist/communicator.h"
#include "model/expert_placement.h"

namespace moe {

class ExpertLoadCounter;

class ExpertParallel {
 public:
  ExpertParallel(dist::Communicator& comm, ExpertPlacement placement);

  dist::Communicator& comm() const { return comm_; }
  int rank() const { return comm_.rank(); }
  int ranks() const { return comm_.size(); }
  const ExpertPlacement& placement() const { return placement_; }
  // Replaces the placement (between steps; the model reloads its local experts: DeepseekV3::set_placement).
  void set_placement(ExpertPlacement p);

  // Bytes of hidden-state rows this rank sent in dispatch and combine since construction (the all-to-all volume).
  uint64_t bytes_sent() const { return bytes_sent_.load(); }

  // out [T, D] = plus + sum_j expert_weights[t, j] * Expert[expert_ids[t, j]](x[t]) for layer `layer`, the experts
  // spread over the ranks. `local` holds this rank's slots of that layer in slot order; expert ids are global.
  // Collective: every rank calls it with the same T, ids and weights. expert_ids I32 [T, k], expert_weights F32
  // [T, k], plus [T, D] or empty.
  void moe(Backend& backend, int64_t layer, const ExpertWeights& local, const TensorView& x,
           const TensorView& expert_ids, const TensorView& expert_weights, const TensorView& plus,
           const TensorView& out);

 private:
  dist::Communicator& comm_;
  ExpertPlacement placement_;
  std::atomic<uint64_t> bytes_sent_{0};  // read by /metrics on another thread
};

}  // namespace moe
