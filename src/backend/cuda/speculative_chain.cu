// Speculative decoding's chained drafts (Backend::kept_rows, Backend::chain_batch): the row of each
// sequence's last kept token, and the one-token batch at the next draft's position, computed on the device so
// that the fused speculative step chains the MTP module without the host. One thread per sequence (S is a
// decode batch).
#include "backend/cuda/cuda_common.cuh"
#include "backend/speculative_rule.h"

namespace moe::cuda {

namespace {

__global__ void kept_rows_kernel(const int32_t* tokens, const int32_t* verified, int64_t S, int32_t R,
                                 int32_t* rows) {
  pdl_trigger();
  pdl_wait();  // verified comes from argmax_rows
  const int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= S) return;
  rows[s] = int32_t(s * R + kept_drafts(tokens + s * R, verified + s * R, R));
}

__global__ void chain_batch_kernel(const int32_t* positions, const int32_t* block_table, const int32_t* rows,
                                   int64_t S, int32_t W, int32_t page, int32_t advance,
                                   int32_t* out_positions, int32_t* out_slots, int32_t* out_lens) {
  pdl_trigger();
  pdl_wait();  // rows come from kept_rows
  const int64_t s = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (s >= S) return;
  const int32_t* table = block_table + s * W;
  int32_t pages = 0;  // the sequence's pages: the table's leading entries >= 0 (a sequence has at least one)
  while (pages < W && table[pages] >= 0) ++pages;
  const int64_t pos = min(int64_t(positions[rows[s]]) + advance, int64_t(max(pages, 1)) * page - 1);
  out_positions[s] = int32_t(pos);
  out_slots[s] = table[pos / page] * page + int32_t(pos % page);
  out_lens[s] = int32_t(pos + 1);
}

}  // namespace

void kept_rows(const int32_t* tokens, const int32_t* verified, int64_t S, int32_t R, int32_t* rows,
               cudaStream_t s) {
  if (S == 0) return;
  constexpr int kThreads = 128;
  launch("kept_rows", kept_rows_kernel, blocks_for(S, kThreads), kThreads, 0, s, tokens, verified, S, R,
         rows);
}

void chain_batch(const int32_t* positions, const int32_t* block_table, const int32_t* rows, int64_t S,
                 int32_t W, int32_t page, int32_t advance, int32_t* out_positions, int32_t* out_slots,
                 int32_t* out_lens, cudaStream_t s) {
  if (S == 0) return;
  constexpr int kThreads = 128;
  launch("chain_batch", chain_batch_kernel, blocks_for(S, kThreads), kThreads, 0, s, positions, block_table,
         rows, S, W, page, advance, out_positions, out_slots, out_lens);
}

}  // namespace moe::cuda
