#include "train/batch_schedule.h"

#include "core/error.h"

namespace moe::train {

int64_t BatchSchedule::at(int64_t consumed) const {
  if (ramp_start <= 0 || consumed >= ramp_tokens) return batch;
  // (batch - ramp_start) * consumed / ramp_tokens in exact integers (the product fits 128 bits).
  const auto grown = int64_t(__int128(batch - ramp_start) * consumed / ramp_tokens);
  return ramp_start + grown / micro * micro;
}

int64_t BatchSchedule::tokens_after(int64_t step) const {
  int64_t consumed = 0;
  for (int64_t s = 1; s <= step; ++s) consumed += at(consumed) * seq_len;
  return consumed;
}

void BatchSchedule::check() const {
  MOE_CHECK(batch >= 1, "train: --batch must be at least 1");
  MOE_CHECK(micro >= 1 && batch % micro == 0, "train: --batch {} must be a multiple of --micro-batch {}", batch, micro);
  if (ramp_start > 0) {
    MOE_CHECK(ramp_start <= batch && ramp_start % micro == 0,
              "train: --batch-ramp-start {} must be in [1, --batch {}] and a multiple of --micro-batch {}", ramp_start,
              batch, micro);
    MOE_CHECK(ramp_tokens > 0, "train: --batch-ramp-start needs --batch-ramp-tokens > 0");
  }
}

}  // namespace moe::train
