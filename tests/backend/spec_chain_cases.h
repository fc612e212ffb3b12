#pragma once
// Speculative decoding's chained-draft ops (Backend::kept_rows, chain_batch, index_rows) on random cases
// against their definitions written out here: every backend runs the same cases (test_cpu_spec_chain.cpp,
// tests/cuda/test_cuda_spec.cpp). Sequences have different page counts (the table padded with -1), drafts
// kept anywhere from none to all, and advances that run past a sequence's last page (the clamp).
#include <gtest/gtest.h>

#include <algorithm>
#include <random>
#include <vector>

#include "backend/backend.h"

namespace moe::test {

inline std::vector<int32_t> download_i32(Backend& b, const TensorView& t) {
  std::vector<int32_t> v(size_t(t.numel()));
  b.copy_to_host(t, v.data());
  return v;
}

inline void check_chain_ops(Backend& b, uint32_t seed) {
  std::mt19937 rng(seed);
  auto uniform = [&](int lo, int hi) { return int(std::uniform_int_distribution<int>(lo, hi)(rng)); };
  int clamped = 0, cases = 0;
  for (int S : {1, 3, 7})
    for (int R : {2, 3, 4})
      for (int page : {4, 16}) {
        // The verification batch: sequence s has pages_s pages (ids scattered), rows at p_s .. p_s + R - 1.
        const int W = 8;
        BatchPlan from;
        from.max_pages = W;
        from.page_size = page;
        std::vector<int> pages(static_cast<size_t>(S)), start(static_cast<size_t>(S));
        for (int s = 0; s < S; ++s) {
          pages[size_t(s)] = uniform((R + page - 1) / page, W);
          for (int p = 0; p < W; ++p)
            from.block_table.push_back(p < pages[size_t(s)] ? 100 * s + 7 * p + 3 : -1);
          start[size_t(s)] = uniform(0, pages[size_t(s)] * page - R);
          for (int j = 0; j < R; ++j) {
            const int pos = start[size_t(s)] + j;
            from.positions.push_back(pos);
            from.token_seq.push_back(s);
            from.slots.push_back(from.block_table[size_t(s * W + pos / page)] * page + pos % page);
          }
          from.seq_lens.push_back(start[size_t(s)] + R);
        }
        // Tokens and verified ids: sequence s keeps its first k_s drafts.
        std::vector<int32_t> tokens, verified, kept;
        for (int s = 0; s < S; ++s) {
          const int k = uniform(0, R - 1);
          kept.push_back(k);
          std::vector<int32_t> t(static_cast<size_t>(R)), v(static_cast<size_t>(R));
          for (int j = 0; j < R; ++j) t[size_t(j)] = uniform(0, 50);
          for (int j = 0; j < R; ++j)
            v[size_t(j)] = j < k ? t[size_t(j + 1)] : j + 1 < R ? t[size_t(j + 1)] + 1 : uniform(0, 50);
          tokens.insert(tokens.end(), t.begin(), t.end());
          verified.insert(verified.end(), v.begin(), v.end());
        }
        Tensor dt = b.alloc(DType::I32, {S * R}), dv = b.alloc(DType::I32, {S * R}),
               rows = b.alloc(DType::I32, {S});
        b.copy_from_host(tokens.data(), dt);
        b.copy_from_host(verified.data(), dv);
        b.kept_rows(dt, dv, rows);
        const std::vector<int32_t> got_rows = download_i32(b, rows);
        for (int s = 0; s < S; ++s)
          ASSERT_EQ(got_rows[size_t(s)], s * R + kept[size_t(s)])
              << "S " << S << " R " << R << " sequence " << s;

        // The one-token batch at each advance, the last one past every sequence's pages.
        for (int advance : {1, 2, 5, W * page}) {
          BatchPlan to;
          to.max_pages = W;
          to.page_size = page;
          to.block_table = from.block_table;
          for (int s = 0; s < S; ++s) {  // placeholders, as the step executor's (the sequence's first row)
            to.positions.push_back(start[size_t(s)]);
            to.token_seq.push_back(s);
            to.slots.push_back(from.slots[size_t(s * R)]);
            to.seq_lens.push_back(start[size_t(s)] + 1);
          }
          const DeviceBatch df = b.upload_batch(from), dto = b.upload_batch(to);
          b.chain_batch(df, rows, advance, dto);
          const std::vector<int32_t> pos = download_i32(b, dto.positions), slot = download_i32(b, dto.slots),
                                     len = download_i32(b, dto.seq_lens);
          for (int s = 0; s < S; ++s) {
            const int want_raw = start[size_t(s)] + kept[size_t(s)] + advance;
            const int last = pages[size_t(s)] * page - 1;
            const int want = std::min(want_raw, last);
            clamped += want_raw > last;
            ++cases;
            ASSERT_EQ(pos[size_t(s)], want)
                << "S " << S << " R " << R << " page " << page << " advance " << advance;
            ASSERT_EQ(slot[size_t(s)], from.block_table[size_t(s * W + want / page)] * page + want % page);
            ASSERT_EQ(len[size_t(s)], want + 1);
          }
        }

        // index_rows: F32 rows of width 5 and an I32 vector, gathered at the kept rows.
        const int64_t T = int64_t(S) * R, C = 5;
        std::vector<float> x(size_t(T * C));
        for (auto& v : x) v = std::uniform_real_distribution<float>(-1.0f, 1.0f)(rng);
        Tensor dx = b.alloc(DType::F32, {T, C}), out = b.alloc(DType::F32, {S, C}),
               ids = b.alloc(DType::I32, {S});
        b.copy_from_host(x.data(), dx);
        b.index_rows(dx, rows, out);
        b.index_rows(dt, rows, ids);
        std::vector<float> got(size_t(S * C));
        b.copy_to_host(out, got.data());
        const std::vector<int32_t> got_ids = download_i32(b, ids);
        for (int s = 0; s < S; ++s) {
          const int r = s * R + kept[size_t(s)];
          for (int64_t c = 0; c < C; ++c) ASSERT_EQ(got[size_t(s * C + c)], x[size_t(r * C + c)]);
          ASSERT_EQ(got_ids[size_t(s)], tokens[size_t(r)]);
        }
      }
  EXPECT_GT(clamped, 0);
  EXPECT_GT(cases - clamped, 0);
}

}  // namespace moe::test
