// Split master weights (train/cuda/split_weights.cuh): the routed experts' FP32 masters kept as a BF16 hi (the
// grouped GEMMs' operand) and an int16 lo.
//  - the encoding on the device against a host reference written from the definition (BF16 nearest, ties away
//    from zero, chosen by comparing distances in double), and join(split(w)) == w bit for bit, over random
//    values of many scales and the edge cases (ties with even and odd truncations, carries into the exponent,
//    zeros, subnormals, negatives);
//  - a DeviceTrainer whose experts are split (grouped BF16) against one whose are not (the per-expert loop):
//    bind + pull gives the host's weights back bit for bit, and three AdamW steps from the same gradients give
//    the same weights and moments bit for bit (the update is the same FP32 arithmetic on the same value), with
//    FP32 and BF16 moments.
#include <cstring>
#include <limits>

#include "train/cuda/device_trainer.h"
#include "train/cuda/kernels.h"
#include "train/optimizer.h"
#include "train/params.h"
#include "train_cuda/util.h"

namespace moe::train::test {
namespace {

uint32_t bits(float x) {
  uint32_t b;
  std::memcpy(&b, &x, 4);
  return b;
}
float from_bits(uint32_t b) {
  float x;
  std::memcpy(&x, &b, 4);
  return x;
}

// The BF16 (as its 16 bits) nearest to x, ties away from zero: the two BF16 values around x are its truncation t
// and the next one away from zero (t + 1 in sign-magnitude bits); distances compared in double (exact here).
uint16_t reference_hi(float x) {
  const uint16_t t = uint16_t(bits(x) >> 16);
  const double below = std::fabs(double(from_bits(uint32_t(t) << 16)));
  const double above = std::fabs(double(from_bits(uint32_t(t + 1) << 16)));
  const double ax = std::fabs(double(x));
  return (ax - below < above - ax) ? t : uint16_t(t + 1);
}

TEST(CudaTrainSplit, EncodingMatchesDefinitionAndRoundTrips) {
  SKIP_WITHOUT_GPU();
  std::vector<float> w;
  for (double sd : {1e-30, 1e-3, 0.02, 1.0, 1e3, 1e30}) {
    const std::vector<float> r = randn(20000, uint64_t(sd * 1e3) + 7, sd);
    w.insert(w.end(), r.begin(), r.end());
  }
  // Edge cases: exact ties over even and odd truncations, just below and above a tie, a carry into the exponent
  // (0x3F7F8000 rounds to 1.0), zeros, subnormals, the largest finite value that stays finite.
  for (uint32_t b : {0x3F808000u, 0x3F818000u, 0x3F807FFFu, 0x3F808001u, 0x3F7F8000u, 0x3F7FFFFFu, 0x00000000u,
                     0x00000001u, 0x00018000u, 0x007F8000u, 0x7F7F7FFFu, 0x3F800000u})
    for (uint32_t sign : {0u, 0x80000000u}) w.push_back(from_bits(b | sign));
  const int64_t n = int64_t(w.size());
  DeviceArray<float> dw(w), back{std::vector<float>(w.size())};
  DeviceArray<uint16_t> hi{std::vector<uint16_t>(w.size())};
  DeviceArray<int16_t> lo{std::vector<int16_t>(w.size())};
  cuda::split_weights(hi.get(), lo.get(), dw.get(), n, nullptr);
  cuda::join_weights(back.get(), hi.get(), lo.get(), n, nullptr);
  const std::vector<uint16_t> h = hi.host();
  const std::vector<float> b = back.host();
  int64_t wrong_hi = 0, wrong_back = 0, ties = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (h[i] != reference_hi(w[i])) ++wrong_hi;
    if (bits(b[i]) != bits(w[i])) ++wrong_back;
    if ((bits(w[i]) & 0xFFFFu) == 0x8000u) ++ties;
  }
  EXPECT_EQ(wrong_hi, 0);
  EXPECT_EQ(wrong_back, 0);
  EXPECT_GE(ties, 8);
  // Spot values: a tie over an even truncation goes away from zero (not to even), the carry reaches 1.0.
  const std::vector<int16_t> l = lo.host();
  const size_t e = size_t(n) - 24;  // the first edge case, 0x3F808000
  EXPECT_EQ(h[e], 0x3F81u);
  EXPECT_EQ(l[e], int16_t(-0x8000));
  EXPECT_EQ(h[e + 8], 0x3F80u);  // 0x3F7F8000
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// Weights and moments after bind + pull and after `steps` AdamW steps, for one trainer.
std::vector<std::vector<float>> adamw_run(bool grouped, bool bf16_moments, int steps, int64_t* split) {
  const std::string path = "bench/configs/train-small.json";
  const ModelConfig cfg = load_config(path);
  cuda::DeviceTrainer gpu(cuda::GemmPrecision::Bf16);
  gpu.set_grouped_experts(grouped);
  gpu.set_bf16_moments(bf16_moments);
  TrainModel m = TrainModel::init(cfg, path, 17, 0.02);
  m.device = &gpu;
  uint64_t seed = 100;
  for (auto& p : m.params) p->g = randn(p->w.size(), seed++, 1e-2);
  std::vector<std::vector<float>> out;
  gpu.push(m);
  gpu.pull(m);
  for (const auto& p : m.params) out.push_back(p->w);
  AdamW opt;
  opt.bf16_moments = bf16_moments;
  for (int s = 1; s <= steps; ++s) adamw_step(m, opt, 1e-3, 1.0, s);  // the same gradients each step
  gpu.pull(m);
  for (const auto& p : m.params) {
    out.push_back(p->w);
    out.push_back(p->m);
    out.push_back(p->v);
  }
  *split = gpu.split_master_values();
  return out;
}

void split_vs_fp32(bool bf16_moments) {
  const std::string path = "bench/configs/train-small.json";
  TrainModel host = TrainModel::init(load_config(path), path, 17, 0.02);
  int64_t split = 0, plain = -1;
  const auto s = adamw_run(true, bf16_moments, 3, &split), f = adamw_run(false, bf16_moments, 3, &plain);
  int64_t expert_values = 0;
  for (const auto& p : host.params)
    if (p->name.find(".experts.") != std::string::npos) expert_values += int64_t(p->w.size());
  EXPECT_EQ(split, expert_values);  // every routed expert's matrices
  EXPECT_EQ(plain, 0);
  ASSERT_EQ(s.size(), f.size());
  const size_t P = host.params.size();
  ASSERT_EQ(s.size(), 4 * P);
  int64_t differ = 0, experts = 0;
  for (size_t i = 0; i < P; ++i) {
    EXPECT_EQ(0, std::memcmp(s[i].data(), host.params[i]->w.data(), s[i].size() * 4)) << host.params[i]->name;
    if (host.params[i]->name.find(".experts.") != std::string::npos) ++experts;
  }
  for (size_t i = P; i < s.size(); ++i)
    if (std::memcmp(s[i].data(), f[i].data(), s[i].size() * 4) != 0) ++differ;
  EXPECT_GT(experts, 0);
  EXPECT_EQ(differ, 0) << "of " << s.size() - P << " tensors after AdamW";
}

TEST(CudaTrainSplit, SplitMastersMatchFp32MastersThroughAdamW) {
  SKIP_WITHOUT_GPU();
  split_vs_fp32(false);
}

TEST(CudaTrainSplit, SplitMastersMatchFp32MastersThroughAdamWBf16Moments) {
  SKIP_WITHOUT_GPU();
  split_vs_fp32(true);
}

TEST(CudaTrainSplit, GroupedChoiceComesBeforeTheFirstStep) {
  SKIP_WITHOUT_GPU();
  const std::string path = "bench/configs/train-small.json";
  cuda::DeviceTrainer gpu(cuda::GemmPrecision::Bf16);
  TrainModel m = TrainModel::init(load_config(path), path, 3, 0.02);
  m.device = &gpu;
  gpu.push(m);
  gpu.set_grouped_experts(true);  // unchanged: fine
  try {
    gpu.set_grouped_experts(false);
    FAIL() << "no error";
  } catch (const std::exception& e) {
    EXPECT_NE(std::string(e.what()).find("before the first step"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace moe::train::test
