#pragma once
// Expert-parallel serving (issue 12): the scheduler stays on rank 0 and feeds every rank. Before each forward step
// rank 0 broadcasts the step's chunks (token ids, positions, page tables); every other rank runs the same step on
// its own latent cache, laid out like rank 0's (same pages), so that the all-to-alls inside the MoE layers
// (model/expert_parallel.h) meet, and drops the logits. With EPLB on, every `interval` steps rank 0 computes a new
// expert placement from the load counted since the last one and sends it with the step; every rank loads its new
// slots' experts before running it (between steps: no request is dropped or paused).
//
// Message (bytes, broadcast after its int64 length): "MOEs" version 1, kind (1 step, 2 stop), then for a step: the
// chunk count and per chunk start_pos, all_logits, token count, tokens, page count, pages (int32 each), then the
// placement's JSON length (0: unchanged) and text.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "engine/metrics.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"

namespace moe {

struct StepMessage {
  bool stop = false;
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

// Any other rank: runs rank 0's steps until it sends stop. `options` must be rank 0's (the cache's size and pages).
void run_ep_follower(DeepseekV3& model, const SchedulerOptions& options);

// EPLB over every MoE layer from the counts `window` [layers][E]: the new placement, and the mean over layers of
// max/mean load per rank before (under `current`) and after.
struct Rebalance {
  ExpertPlacement placement;
  double imbalance_before = 1, imbalance_after = 1;
};
Rebalance rebalance(const ExpertPlacement& current, const std::vector<std::vector<int64_t>>& window);

}  // namespace moe
