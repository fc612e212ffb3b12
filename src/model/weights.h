#pragma once
// The model's weights as the checkpoint stores them (names of the published DeepSeek checkpoints), checked
// against config.json at load time and handed to the backend (the CPU uses the memory map in place).
#include <functional>
#include <optional>
#include <vector>

#include "backend/backend.h"
#include "core/progress.h"
#include "io/checkpoint.h"
#include "io/model_config.h"

namespace moe {

// DeepSeek-V3.2's lightning indexer (self_attn.indexer.*), Hi = index_n_heads heads of Di = index_head_dim.
struct IndexerWeights {
  Weight wq_b;                 // [Hi * Di, q_lora_rank]: queries from the query latent q_a_layernorm(q_a_proj(x))
  Weight wk;                   // [Di, D]: one key per token
  Weight k_norm, k_norm_bias;  // [Di]: LayerNorm (eps 1e-6) of the key
  Weight weights_proj;         // [Hi, D]: each head's weight per token
};

struct AttentionWeights {
  Weight q_a, q_a_norm, q_b;  // q_lora_rank > 0
  Weight q_proj;              // q_lora_rank == 0
  Weight kv_a, kv_a_norm, kv_b, o_proj;
  std::optional<IndexerWeights> indexer;  // config.indexer (V3.2)
};

struct DecoderLayerWeights {
  Weight input_norm, post_attention_norm;
  AttentionWeights attn;
  bool is_moe = false;
  MlpWeights dense;             // !is_moe
  Weight router;                // [E, D]
  Tensor correction_bias;       // F32 [E] on the backend, empty for V2
  ExpertWeights experts;        // E routed experts
  std::optional<MlpWeights> shared_experts;
};

// Multi-Token Prediction module, stored as layer num_hidden_layers.
struct MtpWeights {
  Weight enorm, hnorm, eh_proj, shared_head_norm;
  Weight head;  // shared_head.head if present, else the main lm_head
  DecoderLayerWeights layer;
};

// Which routed experts of a layer to load, in the order they are to be held (expert parallelism: a rank's slots,
// model/expert_placement.h). Empty function: all of them, 0 .. E-1.
using ExpertSelection = std::function<std::vector<int32_t>(int64_t layer)>;

struct ModelWeights {
  Weight embed, final_norm, lm_head;
  std::vector<DecoderLayerWeights> layers;
  std::optional<MtpWeights> mtp;

  // Loads and validates every tensor; `with_mtp` loads the MTP module when the checkpoint has one. `progress`
  // gets the bytes handed to the backend so far of those the load will hand it (all tensors but an MTP layer
  // that is not loaded), after each tensor.
  // `experts` picks each MoE layer's routed experts (all by default).
  static ModelWeights load(const TensorSource& ckpt, const ModelConfig& config, Backend& backend, bool with_mtp,
                           const ProgressFn& progress = {}, const ExpertSelection& experts = {});
};

// The routed experts `ids` of layer `layer` (model.layers.N.mlp.experts.ID.*), in that order, uploaded and
// prepared: what a rank holds, or a new placement's copies loaded between steps.
ExpertWeights load_experts(const TensorSource& ckpt, const ModelConfig& config, Backend& backend, int64_t layer,
                           const std::vector<int32_t>& ids);

// Parameter and byte counts for `moe info` and the bandwidth figures of `moe bench`.
struct ModelStats {
  int64_t total_params = 0;        // main model (embedding, layers, final norm, head)
  int64_t active_params = 0;       // per token: everything but the routed experts not chosen
  int64_t mtp_params = 0;
  int64_t weight_bytes = 0;        // main model, as stored
  int64_t active_weight_bytes = 0; // read per decoded token at batch 1 (embedding row excluded)
};
ModelStats compute_stats(const Checkpoint& ckpt, const ModelConfig& config);

}  // namespace moe
