#pragma once
// `moe create-random`: a checkpoint of any DeepSeek-V3-architecture shape in the published hub layout, with
// random weights scaled so activations stay near unit size, in BF16 or in FP8 with 128x128 block scales, as any
// member of the family (--family: V3.1's power-of-two FP8 scales, V3.2's indexer, Kimi-K2's INT4 experts).
#include <cstdint>
#include <string>

#include "core/progress.h"

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
};

void create_random_checkpoint(const RandomCheckpointOptions& options);

}  // namespace moe
