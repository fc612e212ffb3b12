#pragma once
// Data-parallel attention under expert parallelism (issue 12, `--ep N --dp-attention`): each rank owns whole
// sequences, whose latent cache lives only on that rank, and runs embedding, attention, norms, router, shared
// expert and LM head for its own tokens; the MoE layers' dispatch/combine (model/expert_parallel.h,
// Mode::data_parallel) carry the tokens to their experts and back, and each rank keeps its own tokens' hidden
// states (no all-gather).
//
// Ownership is in the page numbers: the step's chunks carry global page ids, and rank r's sequences live in pages
// [r * pages_per_rank, (r + 1) * pages_per_rank) (its cache holds pages_per_rank pages, indexed from 0). One plan
// (the chunks) is thus the same on every rank, each picks its own chunks from it, and the scheduler on rank 0
// allocates every rank's pages from one pool cut into partitions (engine/page_allocator.h).
//
// Step (dp_forward, collective): every rank gets the whole step's chunks; it runs its own (page ids made local)
// through its StepExecutor, or DeepseekV3::forward_idle when it owns none (it still takes part in every MoE
// all-to-all, with zero rows); then the logits rows travel to rank 0 (one all_to_all_v, counts only towards rank
// 0), which assembles them in the step's chunk order: rank 0 samples, as with one process.
#include <cstdint>
#include <vector>

#include "engine/step_executor.h"
#include "model/deepseek_v3.h"

namespace moe {

struct DpLayout {
  int32_t ranks = 1;
  int64_t pages_per_rank = 0;
  // The rank whose partition holds the chunk's pages (all of them: checked), naming the chunk when it is wrong.
  int32_t owner(const SequenceChunk& c) const;
};

// The rank with the fewest tokens (or pages) in use, ties to the lower rank: where a new sequence goes.
int32_t least_loaded_rank(const std::vector<int64_t>& load);

// One step over every rank (see above). `cache` is this rank's (pages_per_rank pages). On rank 0 the result holds
// the whole step's logits [rows, vocab] (F32 on the backend, rows in chunk order as DeepseekV3::forward gives
// them) and logit_rows; `hidden` and index_topk are left empty (they are per rank). On the other ranks the
// result is empty.
ForwardOutput dp_forward(StepExecutor& executor, const DpLayout& layout, const std::vector<SequenceChunk>& chunks,
                         LatentCache& cache);

}  // namespace moe
