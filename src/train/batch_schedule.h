#pragma once
// Sequences per optimiser step: DeepSeek-V3's batch-size ramp (the batch grows over the first tokens of the run,
// 3072 -> 15360 sequences over 469B tokens in the paper) and gradient accumulation (an optimiser step sums the
// gradients of several micro-batches of `micro` sequences; see accumulate_step in trainer.cpp).
#include <cstdint>

namespace moe::train {

struct BatchSchedule {
  int64_t batch = 4;        // sequences per step once the ramp is over
  int64_t micro = 4;        // sequences per forward/backward; batch and ramp_start are multiples of it
  int64_t ramp_start = 0;   // sequences per step at token 0 (0: no ramp)
  int64_t ramp_tokens = 0;  // the batch reaches `batch` after this many training tokens
  int64_t seq_len = 64;

  // Sequences of the step that starts after `consumed` training tokens: linear in the tokens from ramp_start to
  // batch, rounded down to a multiple of micro (never below ramp_start), then batch.
  int64_t at(int64_t consumed) const;
  // Tokens consumed by steps 1..step (the schedule replayed: it depends on nothing but these numbers).
  int64_t tokens_after(int64_t step) const;
  // Throws moe::Error naming the offending flag.
  void check() const;
};

}  // namespace moe::train
