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
};

void create_random_checkpoint(const RandomCheckpointOptions& options);

}  // namespace moe
