// MTP self-speculative greedy decoding must produce exactly HF's greedy continuation (the reference in
// tests/data/tiny-dsv3 comes from plain greedy decoding in HF transformers), whatever the drafts were.
#include <gtest/gtest.h>

#include "backend/backend.h"
#include "core/error.h"
#include "engine/speculative.h"
#include "test_util.h"

namespace moe {
namespace {

TEST(Speculative, GreedyWithMtpDraftsEqualsHfGreedy) {
  auto backend = make_cpu_backend();
  DeepseekV3 model(test::kTinyModel, *backend, {.load_mtp = true});
  SpeculativeStats total;
  for (const auto& c : test::load_reference_cases()) {
    SpeculativeStats st;
    const auto out = generate_greedy_mtp(model, c.input_ids, int32_t(c.greedy_continuation.size()), &st, 4);
    EXPECT_EQ(out, c.greedy_continuation);
    EXPECT_EQ(st.drafted, st.main_passes);
    // Every pass yields one token, plus one per accepted draft (the last pass may be cut by max_new_tokens).
    EXPECT_GE(1 + st.main_passes + st.accepted, int64_t(out.size()));
    total.drafted += st.drafted, total.accepted += st.accepted;
  }
  RecordProperty("acceptance", std::to_string(total.acceptance()));
  std::printf("MTP draft acceptance on the tiny random model: %lld of %lld\n", (long long)total.accepted,
              (long long)total.drafted);
}

// The random model's own drafts are never right, so force drafts: always right (two tokens per pass),
// alternately right and wrong, and always wrong. The output must not change, and the pass count must follow.
TEST(Speculative, ForcedDraftsKeepTheGreedyOutput) {
  auto backend = make_cpu_backend();
  DeepseekV3 model(test::kTinyModel, *backend, {.load_mtp = true});
  for (const auto& c : test::load_reference_cases()) {
    const int64_t T = int64_t(c.input_ids.size()), N = int64_t(c.greedy_continuation.size());
    auto right = [&](int64_t position) { return c.greedy_continuation[size_t(position - T)]; };
    for (int mode = 0; mode < 3; ++mode) {
      SpeculativeStats st;
      const auto out = generate_greedy_mtp(model, c.input_ids, int32_t(N), &st, 4, [&](int64_t position, int32_t mtp) {
        if (position - T >= N) return mtp;
        const bool give_right = mode == 0 || (mode == 1 && position % 2 == 0);
        return give_right ? right(position) : (right(position) + 1) % 2048;
      });
      EXPECT_EQ(out, c.greedy_continuation) << "mode " << mode;
      if (mode == 0) {
        EXPECT_EQ(st.accepted, st.drafted);
        EXPECT_LE(st.main_passes, (N - 1 + 1) / 2);  // the prefill gives one token, each pass two
      }
      if (mode == 2) {
        EXPECT_EQ(st.accepted, 0);
        EXPECT_EQ(st.main_passes, N - 1);
      }
    }
  }
}

TEST(Speculative, NeedsTheMtpModule) {
  auto backend = make_cpu_backend();
  DeepseekV3 model(test::kTinyModel, *backend);
  EXPECT_THROW(generate_greedy_mtp(model, {1, 2, 3}, 4), Error);
}

}  // namespace
}  // namespace moe
