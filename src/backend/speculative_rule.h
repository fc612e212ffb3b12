#pragma once
// Speculative decoding's greedy acceptance rule, written once for the CPU backend
// (cpu/speculative_chain.cpp), the CUDA kernel (cuda/speculative_chain.cu) and the scheduler, which must
// agree on it bit for bit: the fused step chains the MTP module from the row this rule picks on the device,
// and the scheduler takes those chained drafts only when its own count is the same.
#include <cstdint>

#include "core/host_device.h"

namespace moe {

// A sequence's R verified rows: tokens[0] is its last token, tokens[1 .. R-1] its drafts; verified[j] is the
// main model's greedy token after row j. Draft j + 1 is kept while it equals verified[j] and every draft
// before it was kept. Returns the number of kept drafts k (0 .. R - 1); row k holds the last kept token.
MOE_HOST_DEVICE inline int32_t kept_drafts(const int32_t* tokens, const int32_t* verified, int32_t R) {
  int32_t k = 0;
  while (k + 1 < R && tokens[k + 1] == verified[k]) ++k;
  return k;
}

}  // namespace moe
