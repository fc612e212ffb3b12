#pragma once
// `moe create-random`: a checkpoint of any DeepSeek-V3-architecture shape in the published hub layout, with
// random weights scaled so activations stay near unit size, in BF16 or in FP8 with 128x128 block scales.
#include <cstdint>
#include <string>

#include "core/progress.h"

namespace moe {

struct RandomCheckpointOptions {
  std::string config_path;  // a config.json
  std::string out_dir;
  bool fp8 = false;
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

}  // namespace moe
