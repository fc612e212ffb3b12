#pragma once
// Greedy decoding with the MTP module as its own draft model (DeepSeek-V3 report, sec. 5.4.3): each step the
// main model checks the last accepted token and the MTP module's draft of the token after it in one forward
// pass of two tokens. A correct draft yields two tokens for one pass of the main model; a wrong one costs
// nothing but the second row. The tokens produced are exactly the main model's greedy choices.
#include <cstdint>
#include <functional>
#include <vector>

#include "model/deepseek_v3.h"

namespace moe {

struct SpeculativeStats {
  int64_t main_passes = 0;  // forward passes of the main model after the prefill
  int64_t drafted = 0, accepted = 0;
  double acceptance() const { return drafted ? double(accepted) / double(drafted) : 0.0; }
};

// Replaces the MTP module's draft for the token at `position` (tests use it to force right and wrong drafts).
using DraftOverride = std::function<int32_t(int64_t position, int32_t mtp_draft)>;

// The model must have been loaded with its MTP module (DeepseekV3::Options::load_mtp).
std::vector<int32_t> generate_greedy_mtp(DeepseekV3& model, const std::vector<int32_t>& prompt, int32_t max_new_tokens,
                                         SpeculativeStats* stats = nullptr, int64_t page_size = 64,
                                         const DraftOverride& draft_override = {});

}  // namespace moe
