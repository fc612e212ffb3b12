// EPLB (model/expert_placement.h): placements are valid (every expert somewhere, every slot filled, a rank's
// slots distinct where possible), rebalancing a skewed load lowers the max / mean load per rank by a measured
// factor, and placements survive their JSON form (with clear errors for a bad one).
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "core/error.h"
#include "model/expert_placement.h"

namespace moe {
namespace {

// Tokens per expert falling off like a power law (a prompt mix that favours a few experts), shuffled so the hot
// experts are not the first ids; seeded.
std::vector<int64_t> skewed_load(int32_t E, double exponent, uint32_t seed) {
  std::vector<int64_t> load(static_cast<size_t>(E));
  for (int32_t e = 0; e < E; ++e) load[size_t(e)] = int64_t(100000.0 / std::pow(double(e + 1), exponent)) + 7;
  std::mt19937 rng(seed);
  std::shuffle(load.begin(), load.end(), rng);
  return load;
}

void expect_valid(const LayerPlacement& p, int32_t E, int32_t R, int32_t S) {
  ASSERT_EQ(int32_t(p.slot_expert.size()), R * S);
  ASSERT_EQ(int32_t(p.replicas.size()), E);
  for (int32_t e = 0; e < E; ++e) EXPECT_FALSE(p.replicas[size_t(e)].empty()) << "expert " << e;
  for (int32_t r = 0; r < R; ++r)
    for (int32_t i = 1; i < S; ++i) {  // sorted, and twice on one rank only an expert with more copies than ranks
      const int32_t a = p.slot_expert[size_t(r * S + i - 1)], b = p.slot_expert[size_t(r * S + i)];
      EXPECT_LE(a, b) << "rank " << r;
      if (a == b) {
        EXPECT_GT(int32_t(p.replicas[size_t(a)].size()), R) << "rank " << r << " holds " << a << " twice";
      }
    }
}

TEST(ExpertPlacement, InitialIsContiguousBlocks) {
  const ExpertPlacement p = ExpertPlacement::initial({false, true, true}, 16, 4, 0);
  EXPECT_EQ(p.slots_per_rank, 4);
  EXPECT_TRUE(p.layers[0].empty());
  EXPECT_EQ(p.local_experts(1, 2), (std::vector<int32_t>{8, 9, 10, 11}));
  const ExpertPlacement q = ExpertPlacement::initial({true}, 16, 4, 4);
  EXPECT_EQ(q.slots_per_rank, 5);
  expect_valid(q.layers[0], 16, 4, 5);
  EXPECT_THROW(ExpertPlacement::initial({true}, 16, 3, 0), Error);  // 16 slots do not split over 3 ranks
}

struct Shape {
  int32_t experts, ranks, redundant;
  double exponent;
  double max_after;  // what greedy packing must reach on this load (measured below, then bounded)
};

class Eplb : public ::testing::TestWithParam<Shape> {};

TEST_P(Eplb, SkewedLoadBalances) {
  const Shape s = GetParam();
  const int32_t S = (s.experts + s.redundant) / s.ranks;
  const std::vector<int64_t> load = skewed_load(s.experts, s.exponent, 12345);
  const ExpertPlacement initial = ExpertPlacement::initial({true}, s.experts, s.ranks, 0);
  // The contiguous placement without copies: only the first S0 slots per rank.
  const double before = imbalance(rank_loads(initial.layers[0], load, initial.slots_per_rank));
  const LayerPlacement after_p = eplb_layer(load, s.ranks, S);
  expect_valid(after_p, s.experts, s.ranks, S);
  const double after = imbalance(rank_loads(after_p, load, S));
  RecordProperty("imbalance_before", std::to_string(before));
  RecordProperty("imbalance_after", std::to_string(after));
  RecordProperty("factor", std::to_string(before / after));
  EXPECT_GT(before, 1.5) << "the load is not skewed enough to test anything";
  EXPECT_LE(after, s.max_after) << "before " << before;
  // Loads are conserved: the ranks' loads sum to the tokens.
  double total = 0, want = 0;
  for (double v : rank_loads(after_p, load, S)) total += v;
  for (int64_t v : load) want += double(v);
  EXPECT_NEAR(total, want, want * 1e-12);
}

// DeepSeek-V3's shape (256 experts, 8 ranks, 32 redundant: 36 slots each) and the tiny fixture's (16 over 4).
INSTANTIATE_TEST_SUITE_P(Shapes, Eplb,
                         ::testing::Values(Shape{256, 8, 32, 1.0, 1.05}, Shape{256, 32, 32, 1.2, 1.1},
                                           Shape{16, 4, 4, 1.0, 1.35}, Shape{64, 8, 8, 1.5, 1.2}));

TEST(Eplb, UniformLoadStaysBalancedAndTiesAreDeterministic) {
  const std::vector<int64_t> load(16, 10);
  const LayerPlacement a = eplb_layer(load, 4, 4), b = eplb_layer(load, 4, 4);
  EXPECT_EQ(a.slot_expert, b.slot_expert);
  EXPECT_DOUBLE_EQ(imbalance(rank_loads(a, load, 4)), 1.0);
}

TEST(Eplb, HotExpertGetsTheCopies) {
  std::vector<int64_t> load(8, 1);
  load[5] = 1000;
  const LayerPlacement p = eplb_layer(load, 4, 3);  // 4 spare slots
  EXPECT_EQ(p.replicas[5].size(), 5u);
  // Its copies are spread: one per rank before any rank gets a second.
  std::vector<int> per_rank(4, 0);
  for (int32_t s : p.replicas[5]) ++per_rank[size_t(s / 3)];
  for (int n : per_rank) EXPECT_GE(n, 1);
}

TEST(ExpertPlacement, JsonRoundTripAndErrors) {
  const ExpertPlacement p = ExpertPlacement::initial({false, true}, 16, 4, 4);
  const ExpertPlacement q = ExpertPlacement::from_json(p.to_json());
  EXPECT_EQ(q.to_json(), p.to_json());
  EXPECT_EQ(q.layers[1].replicas, p.layers[1].replicas);
  auto err = [](const std::string& text) {
    try {
      ExpertPlacement::from_json(text);
    } catch (const Error& e) {
      return std::string(e.what());
    }
    return std::string("no error");
  };
  EXPECT_NE(err("[1").find("not JSON"), std::string::npos);
  EXPECT_NE(err(R"({"ranks":0,"slots_per_rank":1,"num_experts":1,"layers":[]})").find("'ranks'"), std::string::npos);
  EXPECT_NE(err(R"({"ranks":2,"slots_per_rank":1,"num_experts":2,"layers":[[0]]})").find("has 1 slots"),
            std::string::npos);
  EXPECT_NE(err(R"({"ranks":2,"slots_per_rank":1,"num_experts":2,"layers":[[0,0]]})").find("expert 1 has no slot"),
            std::string::npos);
  EXPECT_NE(err(R"({"ranks":2,"slots_per_rank":1,"num_experts":2,"layers":[[0,7]]})").find("holds expert 7"),
            std::string::npos);
  EXPECT_NE(err(R"({"ranks":2,"slots_per_rank":1,"num_experts":2,"layers":[[0,"a"]]})").find("not an integer"),
            std::string::npos);
}

}  // namespace
}  // namespace moe
