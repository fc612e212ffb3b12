// Speculative decoding's chained drafts (backend.h, kept_rows and chain_batch): which row of each sequence
// holds its last kept token, and the one-token batch of the next draft's position.
#include <algorithm>

#include "backend/cpu/cpu_ops.h"
#include "backend/speculative_rule.h"
#include "core/error.h"

namespace moe::cpu {

void kept_rows(const TensorView& tokens, const TensorView& verified, const TensorView& rows) {
  const int64_t S = rows.numel(), R = tokens.numel() / S;
  const int32_t* t = tokens.as<const int32_t>();
  const int32_t* v = verified.as<const int32_t>();
  for (int64_t s = 0; s < S; ++s)
    rows.as<int32_t>()[s] = int32_t(s * R + kept_drafts(t + s * R, v + s * R, int32_t(R)));
}

void chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance, const DeviceBatch& to) {
  const int64_t S = rows.numel(), W = from.plan->max_pages, page = from.plan->page_size;
  const int32_t* pos_in = from.positions.as<const int32_t>();
  const int64_t T = from.positions.numel();
  for (int64_t s = 0; s < S; ++s) {
    const int32_t row = rows.as<const int32_t>()[s];
    MOE_CHECK(row >= 0 && row < T, "chain_batch: row {} of a batch of {} tokens", row, T);
    const int32_t* table = from.block_table.as<const int32_t>() + s * W;
    int64_t pages = 0;  // the sequence's pages: the table's leading entries >= 0
    while (pages < W && table[pages] >= 0) ++pages;
    MOE_CHECK(pages > 0, "chain_batch: sequence {} has no page", s);
    const int64_t pos = std::min<int64_t>(int64_t(pos_in[row]) + advance, pages * page - 1);
    to.positions.as<int32_t>()[s] = int32_t(pos);
    to.slots.as<int32_t>()[s] = int32_t(table[pos / page] * page + pos % page);
    to.seq_lens.as<int32_t>()[s] = int32_t(pos + 1);
  }
}

}  // namespace moe::cpu
