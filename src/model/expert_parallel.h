#pragma once
// Expert-parallel MoE (issue 12): the routed experts of each layer are dealt over the ranks of a communicator
// by an ExpertPlacement (rank r holds the experts of its slots, spare slots holding copies of hot experts),
// and a layer's routed part runs as
//   route (every rank) -> dispatch: each rank sends each of its tokens' hidden state once to every rank
//   holding one of the token's experts (all_to_all_v of rows, plus the local slot of each of its experts) ->
//   the grouped MLP of the received rows on the local experts -> combine: the unweighted expert outputs
//   travel back, one row per (token, expert), and the token's owner runs the backend's moe_combine over them
//   in the single-process order -> all-gather of the owners' outputs.
// Two modes. Replicated (the first version): every rank runs the same batch (attention and the router
// replicated; tokens dealt to owners in contiguous blocks, rank r owning T*r/R .. T*(r+1)/R - 1), with only
// the MoE sharded, ending with the all-gather; the shared expert is computed on the whole batch by every
// rank. Data-parallel attention (Mode::data_parallel, `--dp-attention`): each rank runs its own sequences, so
// x holds only its own tokens (T differs per rank, 0 included: moe_idle), it owns all of them and keeps their
// outputs (no all-gather). Each expert sees the same rows in the same order as in one process, so without
// redundant copies the logits are bit-identical to one process; a copy takes part of its expert's rows, which
// can change a matmul's code path for those rows (a rounding difference, far inside the 1e-5 bound).
//
// The plan (counts, slots) is built on the host, so this runs on host memory (CPU backend, MPI); a GPU
// version keeps the rows on the device for NCCL and exchanges the plan through the host (docs/distributed.md,
// "Expert-parallel inference").
//
// The all-reduce mode (set_all_reduce, `--ep-all-reduce`) exchanges no plan. Replicated: every rank already
// has every token and its choices, so each runs its local experts over the choices its copies take
// (Backend::moe_local_choices: the others' become id -1, weight 0), one rank a layer adds the shared experts'
// output (computes_shared), and an all-reduce sums the ranks' partial outputs. Data-parallel: each layer
// all-gathers the ranks' rows and choices, each padded to the step's largest count (set_step_rows; padding
// choices are id -1), runs the same local experts over all of them, and a reduce-scatter returns each rank
// the sums of its own rows, to which it adds its own tokens' shared-expert output. Nothing goes through the
// host, so a step under it is captured and replayed as a CUDA graph (NCCL inside). Its sums differ from one
// process in F32 summation order only.
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
  enum class Mode { replicated, data_parallel };
  ExpertParallel(dist::Communicator& comm, ExpertPlacement placement, Mode mode = Mode::replicated);

  Mode mode() const { return mode_; }
  bool data_parallel() const { return mode_ == Mode::data_parallel; }
  // Two-micro-batch overlap (`--tbo on`): each layer's tokens of this rank go through the MoE as two halves whose
  // phases interleave, so one half's rows travel (dispatch, combine: non-blocking exchanges) while the other's
  // experts or combine compute. Every rank must use the same setting.
  void set_two_micro_batch(bool on) { two_micro_batch_ = on; }
  // Collectives on `backend`'s stream (NCCL; CPU communicators ignore streams). moe and moe_idle do it first.
  void bind_stream(Backend& backend);
  bool two_micro_batch() const { return two_micro_batch_; }
  // The shared expert as a routed one in decode steps (`--ep-shared-routed`, DeepSeek-V3's serving trick): the
  // placement holds num_experts = routed + 1 experts, the last id being the layer's shared expert
  // (ExpertPlacement::with_shared_expert places copies of it on several ranks). In a decode step (one new token
  // per sequence) the model appends that id to every token's choices with weight 1 and drops its local shared
  // MLP, so the ranks that hold a copy split the shared expert's rows instead of every rank running it on the
  // whole batch; other steps compute it locally as before. Replicated mode only (data-parallel ranks can differ
  // in whether their part of a step is decode, and the exchange needs one k on every rank). Every rank must use
  // the same setting and placement.
  void set_shared_as_routed(bool on);
  // FP8 dispatch (`--ep-fp8-dispatch`, for FP8 experts): the rows travel to their experts as E4M3 with one F32
  // scale per 1x128 tile (model/fp8_rows.h: D + D/32 bytes a row instead of 4 D of F32 activations), and the
  // experts compute on the dequantised values, which differ from the originals by E4M3 rounding (<= 2^-4
  // relative, DeepSeek-V3's own dispatch precision). The combine's rows return in the activation dtype. Today
  // the rows are quantised and dequantised on the host and travel in host memory (staged by NCCL): correct,
  // not fast; a device kernel would keep them on the GPU. Every rank must use the same setting.
  void set_fp8_dispatch(bool on) { fp8_dispatch_ = on; }
  // The all-reduce mode (above), in either mode, without two-micro-batch overlap or FP8 dispatch (both are
  // about the all-to-all's rows). Every rank must use the same setting.
  void set_all_reduce(bool on);
  bool all_reduce() const { return all_reduce_; }
  // Data-parallel all-reduce mode: the most tokens any rank brings to the coming step (every rank sets the
  // same value before it: engine/dp_attention.h's dp_forward does). Each layer's exchange moves that many
  // rows a rank, so a step's shape (a captured graph's) depends on it.
  void set_step_rows(int64_t rows) { step_rows_ = rows; }
  int64_t step_rows() const { return step_rows_; }
  // Whether this rank computes layer `layer`'s shared experts for moe's `plus`: every rank, except in the
  // replicated all-reduce mode, where rank layer mod R does (the sum over the ranks adds it once) and the
  // others pass none, so the shared experts' weights are read once a layer in all, on a rank that turns with
  // the layer.
  bool computes_shared(int64_t layer) const {
    return !all_reduce_ || data_parallel() || layer % comm_.size() == comm_.rank();
  }
  bool fp8_dispatch() const { return fp8_dispatch_; }
  bool shared_as_routed() const { return shared_as_routed_; }

  dist::Communicator& comm() const { return comm_; }
  int rank() const { return comm_.rank(); }
  int ranks() const { return comm_.size(); }
  const ExpertPlacement& placement() const { return placement_; }
  // Replaces the placement (between steps; the model reloads its local experts: DeepseekV3::set_placement).
  void set_placement(ExpertPlacement p);

  // Bytes of hidden-state rows this rank sent in dispatch and combine since construction (the all-to-all volume;
  // FP8 dispatch: its rows' E4M3 bytes and scales).
  uint64_t bytes_sent() const { return bytes_sent_.load(); }

  // Timed passes (`moe bench --ep`): with set_timing(true) every MoE layer synchronises the backend where it starts
  // and ends, and around its local experts' compute, and adds the wall times up. moe_s - experts_s is then the
  // layer's exchange time (dispatch, combine and the replicated mode's gather, their host planning and waits) with
  // nothing overlapping it: slower steps, an honest split. Off by default; reset by set_timing.
  struct Timing {
    double moe_s = 0, experts_s = 0;
  };
  void set_timing(bool on) { timing_on_ = on, timing_ = {}; }
  const Timing& timing() const { return timing_; }

  // out [T, D] = plus + sum_j expert_weights[t, j] * Expert[expert_ids[t, j]](x[t]) for layer `layer`, the experts
  // spread over the ranks. `local` holds this rank's slots of that layer in slot order; expert ids are global.
  // Collective: every rank calls it for the same layers in the same order; replicated: with the same T, ids and
  // weights; data-parallel: each with its own tokens (T >= 1). expert_ids I32 [T, k], expert_weights F32 [T, k],
  // plus [T, D] or empty.
  void moe(Backend& backend, int64_t layer, const ExpertWeights& local, const TensorView& x,
           const TensorView& expert_ids, const TensorView& expert_weights, const TensorView& plus,
           const TensorView& out);
  // Data-parallel: this rank has no tokens in the step but takes part in the layer's collectives (zero counts)
  // and runs its experts over the rows the others send. D: the hidden size, K: experts per token.
  void moe_idle(Backend& backend, int64_t layer, const ExpertWeights& local, int64_t D, int64_t K);

 private:
  struct MicroBatch;
  // The phases of one micro-batch (expert_parallel.cpp): plan and start the dispatch; wait for it, run the local
  // experts, start the combine; wait for it, combine into dst (my tokens' rows of the micro-batch).
  void dispatch(Backend& backend, const LayerPlacement& P, int64_t D, int64_t K, const std::vector<int32_t>& ids,
                const TensorView& x, MicroBatch& mb);
  void dispatch_fp8(Backend& backend, int64_t D, int64_t n_send, MicroBatch& mb);
  void experts(Backend& backend, const ExpertWeights& local, int64_t D, int64_t K, MicroBatch& mb);
  void combine(Backend& backend, int64_t D, int64_t K, const TensorView& x, const TensorView& expert_ids,
               const TensorView& expert_weights, const TensorView& plus, const TensorView& dst, MicroBatch& mb);
  // The body of moe / moe_idle: ids (host) [T, k] of this rank's x; T == 0 leaves the views unread.
  void run(Backend& backend, int64_t layer, const ExpertWeights& local, int64_t T, int64_t D, int64_t K,
           const std::vector<int32_t>& ids, const TensorView& x, const TensorView& expert_ids,
           const TensorView& expert_weights, const TensorView& plus, const TensorView& out);
  // The all-reduce mode's layer (set_all_reduce); T == 0 (a data-parallel rank without tokens) leaves the
  // views unread.
  void run_all_reduce(Backend& backend, int64_t layer, const ExpertWeights& local, int64_t T, int64_t D,
                      int64_t K, const TensorView& x, const TensorView& expert_ids,
                      const TensorView& expert_weights, const TensorView& plus, const TensorView& out);
  // Its data-parallel part: the gathered rows through the local experts, the sums of my rows into `mine` [M,
  // D].
  void all_reduce_data_parallel(Backend& backend, const ExpertWeights& local, const Tensor& slots, int64_t T,
                                int64_t D, int64_t K, const TensorView& x, const TensorView& expert_ids,
                                const TensorView& expert_weights, const Tensor& mine);
  // At least `rows` rows of K ids -1 in `backend`'s memory (the padding of a data-parallel exchange). Grown
  // on a step that needs more (the first of its shape runs eagerly), older buffers kept for the graphs that
  // read them.
  TensorView padding_ids(Backend& backend, int64_t rows, int64_t K);
  // Layer `layer`'s slot table for Backend::moe_local_choices, I32 [E, L] in `backend`'s memory: entry (e, c)
  // is this rank's local slot of copy c mod copies(e) of expert e, or -1 (L: the copy counts' least common
  // multiple). Made on first use (an eager step) and kept until the placement changes.
  const Tensor& slot_table(Backend& backend, int64_t layer);

  dist::Communicator& comm_;
  ExpertPlacement placement_;
  Mode mode_;
  bool two_micro_batch_ = false;
  bool shared_as_routed_ = false;
  bool fp8_dispatch_ = false;
  bool all_reduce_ = false;
  std::vector<Tensor> slot_tables_;  // by layer (slot_table), empty where not made yet
  const Backend* tables_backend_ = nullptr;
  int64_t step_rows_ = 0;
  std::vector<Tensor> padding_;          // padding_ids' buffers, the last the largest
  std::atomic<uint64_t> bytes_sent_{0};  // read by /metrics on another thread
  bool timing_on_ = false;
  Timing timing_;
};

}  // namespace moe
