#pragma once
// config.json of DeepseekV3ForCausalLM / DeepseekV32ForCausalLM / DeepseekV2ForCausalLM checkpoints, with the
// defaults HF applies.
#include <cstdint>
#include <optional>
#include <string>

#include <nlohmann/json_fwd.hpp>

namespace moe {

enum class ScoringFunc { Sigmoid, Softmax };
enum class TopkMethod { NoauxTc, Greedy, GroupLimitedGreedy };

struct YarnConfig {
  double factor = 1.0;
  int64_t original_max_position_embeddings = 4096;
  double beta_fast = 32.0, beta_slow = 1.0;
  double mscale = 1.0, mscale_all_dim = 0.0;
};

// DeepSeek-V3.2's lightning indexer (DeepSeek Sparse Attention): per layer, index_n_heads query heads of
// index_head_dim from the query latent, one key of index_head_dim per token, and each query attends only to the
// index_topk cached positions it scores highest (all of them while no more are visible).
struct IndexerConfig {
  int64_t n_heads = 0, head_dim = 0, topk = 0;
};

// compressed-tensors `pack-quantized` weight-only integer quantisation (Kimi-K2-Thinking's INT4 experts):
// symmetric, one scale per group of `group_size` input columns. Which linears are quantised is read from the
// checkpoint (`*.weight_packed` present) rather than from the `ignore` patterns, which only say the same thing.
struct PackedIntConfig {
  int64_t num_bits = 4, group_size = 32;
};

struct ModelConfig {
  std::string architecture;  // "DeepseekV3ForCausalLM", "DeepseekV32ForCausalLM" or "DeepseekV2ForCausalLM"
  std::string model_type;    // as config.json says ("deepseek_v3", "kimi_k2", ...; may be empty)
  int64_t vocab_size = 0, hidden_size = 0, intermediate_size = 0, moe_intermediate_size = 0;
  int64_t num_hidden_layers = 0, num_attention_heads = 0;
  int64_t q_lora_rank = 0;  // 0: no q compression (q_proj)
  int64_t kv_lora_rank = 0, qk_nope_head_dim = 0, qk_rope_head_dim = 0, v_head_dim = 0;
  int64_t n_routed_experts = 0, n_shared_experts = 0, num_experts_per_tok = 0;
  int64_t n_group = 1, topk_group = 1, first_k_dense_replace = 0, moe_layer_freq = 1;
  bool norm_topk_prob = false;
  double routed_scaling_factor = 1.0;
  ScoringFunc scoring_func = ScoringFunc::Sigmoid;
  TopkMethod topk_method = TopkMethod::NoauxTc;
  double rms_norm_eps = 1e-6, rope_theta = 10000.0;
  int64_t max_position_embeddings = 4096;
  std::optional<YarnConfig> yarn;
  int64_t num_nextn_predict_layers = 0;
  bool tie_word_embeddings = false;
  std::optional<int64_t> bos_token_id, eos_token_id;
  // FP8 block quantisation (quantization_config.weight_block_size); 0 when the checkpoint is not FP8.
  int64_t fp8_block_rows = 0, fp8_block_cols = 0;
  // quantization_config.scale_fmt "ue8m0" (DeepSeek-V3.1): every FP8 weight scale is a power of two, and FP8
  // activation scales are rounded up to one.
  bool ue8m0_scales = false;
  std::optional<PackedIntConfig> packed_int;  // quant_method compressed-tensors, format pack-quantized
  std::optional<IndexerConfig> indexer;  // DeepseekV32ForCausalLM only

  bool sparse_attention() const { return indexer.has_value(); }

  int64_t qk_head_dim() const { return qk_nope_head_dim + qk_rope_head_dim; }
  bool is_moe_layer(int64_t layer) const {
    return n_routed_experts > 0 && layer >= first_k_dense_replace && layer % moe_layer_freq == 0;
  }
  // Latent cache values per token per layer: the compressed latent plus the shared rope key.
  int64_t cache_width() const { return kv_lora_rank + qk_rope_head_dim; }

  // quantization_config of config.json (quantization_config.cpp): FP8 blocks and scale format, or
  // compressed-tensors pack-quantized integers.
  void parse_quantization(const nlohmann::json& q, const std::string& source);

  static ModelConfig from_json(const nlohmann::json& j, const std::string& source);
  static ModelConfig load(const std::string& model_dir);  // dir/config.json
};

}  // namespace moe
