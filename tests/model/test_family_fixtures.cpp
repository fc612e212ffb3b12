// The family fixtures made with HF transformers 5.17 in float64 on the GPU machine (scripts/fixtures/
// gen_v31_fixture.py, gen_kimi_fixture.py; see tests/data/tiny-v31/reference.json and tiny-kimi-k2/): a tiny
// DeepSeek-V3.1 with ue8m0 FP8 weights and a Kimi-K2-shaped model (384 experts, one group, top-8) with INT4
// routed experts, whose references HF computed from the dequantised weights.
// Bound: logits within 1e-3 (max abs and relative L2; logits are of unit scale): the references are float64 of
// the exact dequantised weights, the engine F32 throughout (~1e-6 relative per op over a few layers; the
// stored references are rounded to F32, 6e-8 relative), so 1e-3 leaves room only for a real error. Greedy
// continuations identical.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>

#include "backend/backend.h"
#include "engine/generator.h"
#include "engine/page_allocator.h"
#include "io/safetensors.h"
#include "model/deepseek_v3.h"
#include "model/family.h"
#include "test_util.h"

namespace moe {
namespace {

constexpr double kMaxLogitError = 1e-3;

struct Fixture {
  const char* name;
  const char* model;
  const char* data;
  ModelFamily family;
};

class FamilyFixture : public ::testing::TestWithParam<Fixture> {};

TEST_P(FamilyFixture, LogitsAndGreedyMatchHf) {
  const Fixture& f = GetParam();
  auto backend = make_cpu_backend();
  DeepseekV3 model(f.model, *backend);
  EXPECT_EQ(model_family(model.config()), f.family);
  const SafetensorsFile ref(std::string(f.data) + "/reference.safetensors");
  const auto cases = test::load_reference_cases(std::string(f.data) + "/reference.json");
  ASSERT_EQ(cases.size(), 3u);
  for (size_t i = 0; i < cases.size(); ++i) {
    const auto& c = cases[i];
    const int64_t T = int64_t(c.input_ids.size()), page = 16;
    LatentCache cache(model.config(), *backend, pages_for(T, page), page, model.cache_layers());
    std::vector<int32_t> pages(size_t(cache.num_pages()));
    std::iota(pages.begin(), pages.end(), 0);
    const ForwardOutput out = model.forward({SequenceChunk{c.input_ids, 0, pages, true}}, cache);
    const SafetensorsEntry* e = ref.find("case" + std::to_string(i) + ".logits");
    ASSERT_NE(e, nullptr);
    const TensorView r = ref.view(*e);
    ASSERT_EQ(out.logits.shape(), r.shape);
    double max_abs = 0, num = 0, den = 0;
    for (int64_t k = 0; k < r.numel(); ++k) {
      const double d = double(out.logits.as<float>()[k]) - double(r.as<const float>()[k]);
      max_abs = std::max(max_abs, std::fabs(d));
      num += d * d;
      den += double(r.as<const float>()[k]) * r.as<const float>()[k];
    }
    std::printf("%s case%zu (%lld tokens): logits max abs error %.3g, relative L2 %.3g\n", f.name, i, (long long)T,
                max_abs, std::sqrt(num / den));
    EXPECT_LE(max_abs, kMaxLogitError) << f.name << " case " << i;
    EXPECT_LE(std::sqrt(num / den), kMaxLogitError) << f.name << " case " << i;

    Generator gen(model, T + int64_t(c.greedy_continuation.size()) + 1, 8);
    GenerateOptions opts;
    opts.max_new_tokens = int32_t(c.greedy_continuation.size());
    EXPECT_EQ(gen.generate(c.input_ids, opts), c.greedy_continuation) << f.name << " case " << i;
  }
}

INSTANTIATE_TEST_SUITE_P(Hf, FamilyFixture,
                         ::testing::Values(Fixture{"v31", "models/tiny-v31", "tests/data/tiny-v31", ModelFamily::V31},
                                           Fixture{"kimi", "models/tiny-kimi-k2", "tests/data/tiny-kimi-k2",
                                                   ModelFamily::KimiK2}),
                         [](const auto& info) { return std::string(info.param.name); });

}  // namespace
}  // namespace moe
