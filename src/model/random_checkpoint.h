#pragma once
// `moe create-random`: a checkpoint of any DeepSeek-V3-architecture shape in the published hub layout, with
// random weights scaled so activations stay near unit size, in BF16 or in FP8 with 128x128 block scales, as any
// member of the family (--family: V3.1's power-of-two FP8 scales, V3.2's indexer, Kimi-K2's INT4 experts).
#include <cstdint>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#include "core/progress.h"
#include "io/checkpoint.h"
#include "io/model_config.h"

namespace moe {

// What --family does to the given config.json:
//   AsConfig: nothing.   V3: DeepseekV3ForCausalLM, model_type deepseek_v3.
//   V31: V3 in FP8 with scale_fmt ue8m0 (every block scale a power of two), as DeepSeek-V3.1 is published.
//   V32: DeepseekV32ForCausalLM with the indexer (index_n_heads 64, index_head_dim 128, index_topk 2048 unless
//        the config sets them), indexer weights included.
//   KimiK2: model_type kimi_k2; routed experts INT4 (compressed-tensors pack-quantized, group 32, symmetric) and
//        the rest BF16, as Kimi-K2-Thinking (with fp8: Kimi-K2-Instruct's FP8 everywhere instead).
enum class RandomFamily { AsConfig, V3, V31, V32, KimiK2 };
RandomFamily parse_random_family(const std::string& name);  // v3, v31, v32, kimi-k2; throws naming the text

struct RandomCheckpointOptions {
  std::string config_path;  // a config.json
  std::string out_dir;
  bool fp8 = false;
  RandomFamily family = RandomFamily::AsConfig;
  uint64_t seed = 1;
  int64_t shard_bytes = int64_t(4) << 30;  // start a new shard after this many bytes
  ProgressFn progress;                      // tensor data bytes written of all, after each tensor
  // A check model for MTP speculative decoding: every layer's output projections (o_proj, the MLPs' and experts'
  // down_proj, MTP layer included) scaled by kMtpCheckScale, so the residual stream stays the token's embedding
  // and the main model's next token is a function of the current token alone; the final, enorm and shared-head
  // norms are exactly 1 and eh_proj passes the embedding half through (identity plus small noise, the hidden
  // half scaled down), so the MTP module's draft of t[j+2] from t[j+1] is the main model's greedy token after
  // t[j+1]. Needs num_nextn_predict_layers >= 1.
  bool mtp_check = false;
};

inline constexpr float kMtpCheckScale = 1.0f / 1024.0f;

void create_random_checkpoint(const RandomCheckpointOptions& options);

// The config a random checkpoint of `config_path` (a config.json, or a directory holding one) has: its JSON with the
// FP8 quantization_config set (fp8) or removed, as create_random_checkpoint writes it.
ModelConfig random_checkpoint_config(const std::string& config_path, bool fp8);

// `--random-weights`: the tensors create_random_checkpoint would write for (config, fp8, seed), made in memory
// when first asked for, bit-identical to the files (same generator, same encoding). A rank that loads only its
// experts makes only those. Host memory, kept as long as the source (the CPU backend uses it in place).
class RandomTensors final : public TensorSource {
 public:
  RandomTensors(const ModelConfig& config, bool fp8, uint64_t seed, std::string label = "random weights");
  ~RandomTensors() override;
  const std::string& dir() const override { return label_; }
  bool has(const std::string& name) const override;
  TensorView get(const std::string& name, const Shape& expected_shape) const override;
  std::optional<TensorView> find(const std::string& name) const override;
  std::string file_of(const std::string& name) const override { return label_; }
  std::vector<std::string> names() const override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
  std::string label_;
};

}  // namespace moe
