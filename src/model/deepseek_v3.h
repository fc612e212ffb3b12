#pragma once
// The DeepSeek-V3 architecture (also V2/V2-Lite, Moonlight, Kimi-K2, and V3.2 with DeepSeek Sparse Attention):
// MLA attention over a latent cache (V3.2: restricted per query to the positions its lightning indexer picks),
// DeepSeekMoE feed-forward, and the Multi-Token-Prediction module. The forward pass reads like the paper in
// deepseek_v3.cpp; every op runs on the Backend.
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "io/checkpoint.h"
#include "io/model_config.h"
#include "model/expert_load.h"
#include "model/expert_parallel.h"
#include "model/latent_cache.h"
#include "model/weights.h"

namespace moe {

// New tokens of one sequence for a forward step. The cache already holds this sequence's positions
// 0 .. start_pos-1; `pages` (its page table) must cover start_pos + tokens.size() positions.
struct SequenceChunk {
  std::vector<int32_t> tokens;
  int32_t start_pos = 0;
  std::vector<int32_t> pages;
  bool all_logits = false;  // logits for every new token, or only the last
};

BatchPlan plan_batch(const std::vector<SequenceChunk>& chunks, int64_t page_size);

struct ForwardOutput {
  Tensor logits;                    // [rows, vocab] F32 on the backend: per chunk, all tokens or the last
  std::vector<int32_t> logit_rows;  // which of the T tokens each logits row belongs to
  Tensor hidden;                    // [T, D] after the final norm (the MTP module's input)
  // V3.2: per decoder layer, I32 [T, index_topk] on the backend: the cache positions each token attended
  // (Backend::dsa_topk's layout: ascending, -1 padded). Empty for models without sparse attention.
  std::vector<Tensor> index_topk;
};

class DeepseekV3 {
 public:
  struct Options {
    bool load_mtp = false;
    ProgressFn progress;  // loading from a directory: bytes of weights handed to the backend (ModelWeights::load)
    // Expert parallelism (model/expert_parallel.h), owned by the caller and outliving the model: the routed
    // experts run over its ranks, and a model loaded from a directory loads only this rank's slots (a model built
    // from weights must be given exactly those, in slot order). Every rank runs the same steps.
    ExpertParallel* ep = nullptr;
    // Counts each layer's routed tokens per expert (expert ids copied to the host every layer: the step cannot
    // be captured as a graph while counting).
    ExpertLoadCounter* load = nullptr;
  };
  // From a checkpoint directory (config.json and safetensors; the weights stay memory-mapped for the CPU).
  DeepseekV3(const std::string& model_dir, Backend& backend, Options options);
  DeepseekV3(const std::string& model_dir, Backend& backend) : DeepseekV3(model_dir, backend, Options{}) {}
  // From weights already in memory on `backend` (uploaded by it, prepare_experts done), e.g. from
  // ModelWeights::load or built by a trainer. Whatever memory they point into (a Checkpoint's memory map, the
  // caller's tensors) must outlive the model. The MTP module is used when weights.mtp is set
  // (options.load_mtp only applies to loading from a directory). There is no checkpoint().
  DeepseekV3(ModelConfig config, ModelWeights weights, Backend& backend, Options options);
  // From any source of checkpoint tensors (`--random-weights`: model/random_checkpoint.h's RandomTensors), loaded
  // like a directory (options.ep: only this rank's experts); the model keeps the source.
  DeepseekV3(std::shared_ptr<const TensorSource> source, ModelConfig config, Backend& backend, Options options);

  const ModelConfig& config() const { return config_; }
  Backend& backend() const { return backend_; }
  const ModelWeights& weights() const { return weights_; }
  // The checkpoint the model was loaded from; only for a model built from a directory (throws otherwise).
  bool has_checkpoint() const { return checkpoint_.has_value(); }
  const Checkpoint& checkpoint() const;
  bool has_mtp() const { return weights_.mtp.has_value(); }
  ExpertParallel* expert_parallel() const { return ep_; }
  ExpertLoadCounter* expert_load() const { return load_; }
  // Expert parallelism: moves to placement `p` between steps (every rank, collectively in effect): each layer's
  // local experts are loaded again for this rank's new slots from the checkpoint (the CPU maps them in place).
  void set_placement(const ExpertPlacement& p);
  // Layers a LatentCache for this model needs (the MTP module's layer included when loaded).
  int64_t cache_layers() const { return config_.num_hidden_layers + (has_mtp() ? 1 : 0); }

  // Runs the main model over the new tokens of every chunk, appending their latents to the cache: plans the
  // step on the host, uploads it, then run(). (engine/step_executor.h replays repeated steps from graphs.)
  ForwardOutput forward(const std::vector<SequenceChunk>& chunks, LatentCache& cache);
  // The device part of forward(), given the step's uploaded plan (Backend::upload_batch of plan_batch(chunks))
  // and token ids (upload_tokens(chunks)): embedding, decoder layers, final norm, LM head. It only enqueues
  // backend ops, choosing nothing from the inputs' values, so a backend can capture it and replay it with
  // rewritten inputs (update_batch, copy_from_host), as long as `chunks` keep their shape.
  ForwardOutput run(const std::vector<SequenceChunk>& chunks, const DeviceBatch& batch, const TensorView& ids,
                    LatentCache& cache);
  // The chunks' tokens in order, checked against the vocabulary; and the same uploaded (I32 [T]).
  std::vector<int32_t> token_ids(const std::vector<SequenceChunk>& chunks) const;
  Tensor upload_tokens(const std::vector<SequenceChunk>& chunks);

  // Expert parallelism with data-parallel attention (ExpertParallel::Mode::data_parallel): a rank that owns no
  // sequence in a step calls this instead of forward, so that it still takes part in every MoE layer's
  // all-to-alls (zero rows of its own) and runs its experts over the other ranks' rows.
  void forward_idle();

  // MTP: chunk tokens are t[j+1] at positions j, `hidden` the main model's final-norm states h[j] for the
  // same rows (in chunk order). Returns logits predicting t[j+2] (rows as in forward) using the MTP cache
  // layer.
  ForwardOutput forward_mtp(const std::vector<SequenceChunk>& chunks, const TensorView& hidden,
                            LatentCache& cache);
  // The device part of forward_mtp (as run() is forward's): the plan uploaded, ids I32 [T] the tokens t[j+1]
  // (on the device: the fused speculative step feeds the main model's argmax rows without a host round trip).
  ForwardOutput run_mtp(const std::vector<SequenceChunk>& chunks, const DeviceBatch& batch, const TensorView& ids,
                        const TensorView& hidden, LatentCache& cache);

 private:
  // Both return the sparse attention's chosen positions (empty without an indexer).
  Tensor decoder_layer(int64_t layer, const DecoderLayerWeights& w, const TensorView& h, const TensorView& pending,
                       const TensorView& y, const TensorView& cache, const TensorView& index_cache,
                       const DeviceBatch& batch);
  Tensor attention(const AttentionWeights& w, const TensorView& x, const TensorView& cache,
                   const TensorView& index_cache, const DeviceBatch& batch, const TensorView& out);
  // DSA's lightning indexer: the index keys of the new tokens into index_cache, and each token's positions.
  Tensor sparse_indices(const IndexerWeights& w, const TensorView& x, const TensorView& q_latent,
                        const TensorView& index_cache, const DeviceBatch& batch);
  void check_backend() const;
  // decode: every sequence of the step has one new token.
  void moe_ffn(int64_t layer, const DecoderLayerWeights& w, const TensorView& x, const TensorView& out, bool decode);
  void check_placement(const ExpertPlacement& p) const;
  ForwardOutput head(const std::vector<SequenceChunk>& chunks, const Tensor& hidden, const Tensor& pending,
                     const Weight& norm, const Weight& lm_head);

  ModelConfig config_;
  Backend& backend_;
  std::optional<Checkpoint> checkpoint_;  // empty when built from ModelWeights or another source
  std::shared_ptr<const TensorSource> source_;  // the other source, if any
  ModelWeights weights_;
  RopeParams rope_;
  float attn_scale_;
  RoutingParams routing_;
  ExpertParallel* ep_ = nullptr;
  ExpertLoadCounter* load_ = nullptr;
};

}  // namespace moe
