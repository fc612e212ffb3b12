#pragma once
// Expert-parallel serving (issue 12): the scheduler stays on rank 0 and feeds every rank. Before each forward step
// rank 0 broadcasts the step's chunks (token ids, positions, page tables); every other rank runs the same step on
// its own latent cache, laid out like rank 0's (same pages), so that the all-to-alls inside the MoE layers
// (model/expert_parallel.h) meet, and drops the logits. With EPLB on, every `interval` steps rank 0 computes a new
// expert placement from the load counted since the last one and sends it with the step; every rank loads its new
// slots' experts before running it (between steps: no request is dropped or paused).
//
// Data-parallel attention (engine/dp_attention.h): the same step message goes to every rank, but each rank runs
// only the chunks in its part of the pages, on a cache of its part's size (DpStepRunner), and the logits rows
// return to rank 0. The expert load is then counted per rank: before an EPLB rebalance rank 0 sends a "sum loads"
// message and every rank adds its window into one (all_reduce_sum), from which rank 0 computes the placement.
//
// Message (bytes, broadcast after its int64 length): "MOEs" version 1, kind (1 step, 2 stop, 3 sum loads), then
// for a step: the
// chunk count and per chunk start_pos, all_logits, token count, tokens, page count, pages (int32 each), then the
// placement's JSON length (0: unchanged) and text.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/dp_attention.h"
#include "engine/metrics.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"

namespace moe {

struct StepMessage {
  bool stop = false;
  bool sum_loads = false;  // kind 3: no step; every rank sums its expert-load window into rank 0's
  std::vector<SequenceChunk> chunks;
  std::optional<ExpertPlacement> placement;
};
std::string encode_step(const StepMessage& m);
StepMessage decode_step(const std::string& bytes);  // throws moe::Error naming what is malformed

struct EplbOptions {
  int64_t interval_steps = 0;  // rebalance every this many steps (0: never)
};

// Rank 0's side: install on_step() as SchedulerOptions::on_step; stop() when the scheduler has stopped.
class EpLeader {
 public:
  EpLeader(DeepseekV3& model, EplbOptions eplb, EngineMetrics* metrics = nullptr);
  void on_step(const std::vector<SequenceChunk>& chunks);
  void stop();

 private:
  DeepseekV3& model_;
  EplbOptions eplb_;
  EngineMetrics* metrics_;
  int64_t steps_ = 0;
  bool stopped_ = false;
};

// Data-parallel attention: this rank's cache (its part of the pages: options.cache_partitions parts of
// options.cache_tokens) and executor; step() runs one step over every rank (dp_forward). Rank 0's is the
// scheduler's run_step.
class DpStepRunner {
 public:
  DpStepRunner(DeepseekV3& model, const SchedulerOptions& options);
  ForwardOutput step(const std::vector<SequenceChunk>& chunks);
  const DpLayout& layout() const { return layout_; }

 private:
  DpLayout layout_;
  LatentCache cache_;
  StepExecutor executor_;
};

// The expert-load windows of every rank summed (collective; data-parallel attention counts each rank's tokens).
std::vector<std::vector<int64_t>> summed_load_window(ExpertLoadCounter& load, dist::Communicator& comm);

// Any other rank: runs rank 0's steps until it sends stop. `options` must be rank 0's (the cache's size and pages,
// cache_partitions with data-parallel attention).
void run_ep_follower(DeepseekV3& model, const SchedulerOptions& options);

// EPLB over every MoE layer from the counts `window` [layers][E]: the new placement, and the mean over layers of
// max/mean load per rank before (under `current`) and after.
struct Rebalance {
  ExpertPlacement placement;
  double imbalance_before = 1, imbalance_after = 1;
};
Rebalance rebalance(const ExpertPlacement& current, const std::vector<std::vector<int64_t>>& window);

}  // namespace moe
