#pragma once
// The step executor: runs a model's forward steps, and replays the ones that repeat from graphs the backend
// captured (CUDA graphs), so that a step costs one launch instead of ~20 per layer.
//
// A step's shape is (sequences, new tokens per sequence, logits for every token or the last, page-table
// width, cache). Steps whose every sequence brings the same number n of new tokens, with logits for all of
// them (or n = 1), have a shape that repeats from step to step: decode at any batch size, and speculative
// verification (n = draft + 1). For those the executor pads the page table to a power-of-two width, so that
// host-side choices made from it (the attention's split count) repeat too, and keys a graph by the shape.
// A shape is run eagerly the first time it is seen (one-off shapes never pay for a capture), captured the
// second time, and replayed afterwards with the inputs rewritten in place (token ids, positions, slots, page
// tables). Every step of such a shape gets the padding, captured or not, so eager steps run exactly the
// kernels a replay does. If the backend cannot capture a step (an op needs the host mid-step), the shape is
// remembered as eager-only. Other steps (prefill chunks) run eagerly through DeepseekV3::forward.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <tuple>
#include <vector>

#include "model/deepseek_v3.h"

namespace moe {

struct StepExecutorOptions {
  bool graphs = true;     // capture and replay where the backend can (Backend::can_capture)
  size_t max_graphs = 32;  // shapes remembered (captured, seen once or refused); the least recently used goes first
};

class StepExecutor {
 public:
  struct Stats {
    int64_t captures = 0, replays = 0, eager = 0, refused = 0;  // refused: shapes the backend could not capture
  };

  explicit StepExecutor(DeepseekV3& model, StepExecutorOptions options = {});
  ~StepExecutor();

  // DeepseekV3::forward, with the same results; the returned tensors are the caller's (not the graph's).
  ForwardOutput forward(const std::vector<SequenceChunk>& chunks, LatentCache& cache);

  // Speculative decoding's fused greedy step (engine/scheduler.h, "Speculation"). The chunks are a uniform
  // step (is_uniform_step) of S sequences, each [last token, draft 1..N] with logits for every row (or one
  // token without a draft). In one step, captured and replayed like forward's:
  //  - the main model over the chunks; verified[j] = argmax of its row j (the main model's token after row
  //  j);
  //  - the MTP module over (verified[j], h[j]) at the same positions, writing the MTP cache layer; drafts[j]
  //  =
  //    argmax of its row j (its guess of the token after verified[j]);
  //  - with N > 1, the module chained N - 1 more times from each sequence's last kept row k
  //  (Backend::kept_rows:
  //    the leading drafts equal to the verified tokens), as the scheduler's host-decided draft_tokens chains
  //    it: at depth d (2 .. N) over (its previous draft, its previous output state) at position p + k + d - 1
  //    (Backend::chain_batch), chained[d - 2][s] = argmax of its row.
  // Argmaxes over ids < vocab_limit (<= 0: all), ties to the lower id. Only the ids come back to the host
  // (one copy). Rows past a rejected draft write the MTP cache past the last kept position, which the next
  // step overwrites (as the main model's rejected rows are).
  struct SpeculativeIds {
    std::vector<int32_t> verified, drafts;      // [T] each, in the chunks' row order
    std::vector<std::vector<int32_t>> chained;  // [N - 1][S]: the further drafts of each sequence
  };
  SpeculativeIds forward_speculative(const std::vector<SequenceChunk>& chunks, LatentCache& cache,
                                     int64_t vocab_limit);

  DeepseekV3& model() const { return model_; }
  const Stats& stats() const { return stats_; }
  size_t graphs() const { return graphs_.size(); }  // shapes remembered
  void clear() { graphs_.clear(); }  // drops every captured graph (and the device memory it holds)

 private:
  struct Graph;
  struct Outputs {  // a step's device outputs: forward's, or the fused speculative step's ids I32 [2T +
                    // (N-1)S]
    ForwardOutput fwd;
    Tensor ids;
  };
  // chains: batches of one token per sequence over the step's page table (the fused step's chained drafts),
  // whose positions the body computes on the device (Backend::chain_batch).
  using Body = std::function<Outputs(const DeviceBatch& batch, const TensorView& ids,
                                     const std::vector<DeviceBatch>& chains)>;
  // A uniform step through `body`: eagerly, or captured and replayed. `owned`: the outputs are the graph's
  // (overwritten by its next replay).
  Outputs run_uniform(const std::vector<SequenceChunk>& chunks, LatentCache& cache, int64_t kind,
                      int64_t chains, const Body& body, bool& owned);
  void evict(const Graph* keep);  // down to max_graphs shapes, least recently used first, never `keep`
  // seqs, tokens each, all logits, width, cache, kind (0: forward; else the fused speculative step's vocab
  // limit + 1), rows a rank of a data-parallel all-reduce exchange (ExpertParallel::step_rows; else 0)
  using Key = std::tuple<int64_t, int64_t, bool, int32_t, const void*, int64_t, int64_t>;

  DeepseekV3& model_;
  StepExecutorOptions options_;
  std::map<Key, std::shared_ptr<Graph>> graphs_;
  int64_t clock_ = 0;
  Stats stats_;
};

// The step's shape is one that repeats (see above): every chunk has the same number of new tokens, and asks for
// the logits of all of them or has one.
bool is_uniform_step(const std::vector<SequenceChunk>& chunks);

}  // namespace moe
