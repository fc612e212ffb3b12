// Split master weights (train/cuda/split_weights.cuh): FP32 masters kept as a BF16 hi (the GEMMs' operand) and an
// int16 lo, for every weight read only in BF16 (the routed experts under the grouped GEMMs, the dense projections
// and the head under BF16 GEMMs).
//  - the encoding on the device against a host reference written from the definition (BF16 nearest even, chosen
//    by comparing distances in double): hi is exactly that rounding, and join(split(w)) is w bit for bit except a
//    tie over an even truncation, which comes back one ulp nearer zero; over random values of many scales and the
//    edge cases (ties over even and odd truncations, carries into the exponent, zeros, subnormals, negatives);
//  - a DeviceTrainer whose weights are split (grouped BF16, BF16 head) against one whose are not (FP32 GEMMs: no
//    weight is read in BF16 only): bind + pull gives the host's weights back (but those ties), and three AdamW
//    steps from the same gradients give the same moments bit for bit (they never read W) and the same weights but
//    for the values a tie nudged (a handful, within a few ulps), with FP32 and BF16 moments.
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

// The BF16 (as its 16 bits) nearest to x, ties to even: the two BF16 values around x are its truncation t and
// the next one away from zero (t + 1 in sign-magnitude bits); distances compared in double (exact here).
uint16_t reference_hi(float x) {
  const uint16_t t = uint16_t(bits(x) >> 16);
  const double below = std::fabs(double(from_bits(uint32_t(t) << 16)));
  const double above = std::fabs(double(from_bits(uint32_t(t + 1) << 16)));
  const double ax = std::fabs(double(x));
  if (ax - below != above - ax) return ax - below < above - ax ? t : uint16_t(t + 1);
  return (t & 1u) == 0 ? t : uint16_t(t + 1);
}
// The stored master: x, or one ulp nearer zero for a tie over an even truncation.
uint32_t reference_back(float x) { return (bits(x) & 0x1FFFFu) == 0x8000u ? bits(x) - 1 : bits(x); }

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
  int64_t wrong_hi = 0, wrong_back = 0, even_ties = 0;
  for (size_t i = 0; i < w.size(); ++i) {
    if (h[i] != reference_hi(w[i])) ++wrong_hi;
    if (bits(b[i]) != reference_back(w[i])) ++wrong_back;
    if (reference_back(w[i]) != bits(w[i])) ++even_ties;
  }
  EXPECT_EQ(wrong_hi, 0);
  EXPECT_EQ(wrong_back, 0);
  EXPECT_GE(even_ties, 4);
  // Spot values: a tie over an even truncation rounds down and is kept as 0x3F807FFF; one over an odd truncation
  // rounds up and comes back exact; the carry of 0x3F7F8000 reaches 1.0.
  const std::vector<int16_t> l = lo.host();
  const size_t e = size_t(n) - 24;  // the first edge case, 0x3F808000, then its negative, then 0x3F818000
  EXPECT_EQ(h[e], 0x3F80u);
  EXPECT_EQ(l[e], int16_t(0x7FFF));
  EXPECT_EQ(bits(b[e]), 0x3F807FFFu);
  EXPECT_EQ(h[e + 1], 0xBF80u);
  EXPECT_EQ(h[e + 2], 0x3F82u);
  EXPECT_EQ(l[e + 2], int16_t(-0x8000));
  EXPECT_EQ(bits(b[e + 2]), 0x3F818000u);
  EXPECT_EQ(h[e + 8], 0x3F80u);  // 0x3F7F8000
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

// The parameters a BF16 trainer with grouped experts and a BF16 head stores split: every projection (the routed
// and shared experts', the dense MLP's, the attention's, the MTP's eh_proj) and the head; not the router
// (mlp.gate.weight, FP32 products), the embedding or the norms.
bool stored_split(const std::string& name) {
  auto ends = [&](const std::string& tail) {
    return name.size() >= tail.size() && name.compare(name.size() - tail.size(), tail.size(), tail) == 0;
  };
  return ends("_proj.weight") || ends("_proj_with_mqa.weight") || name == "lm_head.weight";
}

// Weights and moments after bind + pull and after `steps` AdamW steps, for one trainer: split (BF16 GEMMs, grouped
// experts, BF16 head) or not (FP32 GEMMs).
std::vector<std::vector<float>> adamw_run(bool split, bool bf16_moments, int steps, int64_t* split_values) {
  const std::string path = "bench/configs/train-small.json";
  const ModelConfig cfg = load_config(path);
  cuda::DeviceTrainer gpu(split ? cuda::GemmPrecision::Bf16 : cuda::GemmPrecision::Fp32);
  gpu.set_grouped_experts(split);
  gpu.set_head_fp32(!split);
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
  *split_values = gpu.split_master_values();
  return out;
}

void split_vs_fp32(bool bf16_moments) {
  const std::string path = "bench/configs/train-small.json";
  TrainModel host = TrainModel::init(load_config(path), path, 17, 0.02);
  int64_t split = 0, plain = -1;
  const auto s = adamw_run(true, bf16_moments, 3, &split), f = adamw_run(false, bf16_moments, 3, &plain);
  int64_t split_values = 0, expert_values = 0;
  for (const auto& p : host.params)
    if (stored_split(p->name)) {
      split_values += int64_t(p->w.size());
      if (p->name.find(".experts.") != std::string::npos) expert_values += int64_t(p->w.size());
    }
  EXPECT_GT(expert_values, 0);
  EXPECT_GT(split_values, expert_values);
  EXPECT_EQ(split, split_values);  // every projection and the head
  EXPECT_EQ(plain, 0);
  ASSERT_EQ(s.size(), f.size());
  const size_t P = host.params.size();
  ASSERT_EQ(s.size(), 4 * P);
  // bind + pull: the host's values, but the split ones' ties over even truncations (one ulp nearer zero).
  int64_t nudged = 0, values = 0;
  for (size_t i = 0; i < P; ++i) {
    const std::vector<float>& h = host.params[i]->w;
    const bool sp = stored_split(host.params[i]->name);
    for (size_t j = 0; j < h.size(); ++j) {
      EXPECT_EQ(bits(s[i][j]), sp ? reference_back(h[j]) : bits(h[j])) << host.params[i]->name << " [" << j << "]";
      EXPECT_EQ(bits(f[i][j]), bits(h[j])) << host.params[i]->name << " [" << j << "]";
      if (bits(s[i][j]) != bits(h[j])) ++nudged;
    }
    if (sp) values += int64_t(h.size());
  }
  EXPECT_GT(nudged, 0);  // ~4 M random values hold ~30 such ties
  // After AdamW: moments identical (they never read W); weights identical but for values a tie nudged (at bind or
  // at an update), and few (a tie is one value in 131,072: 4 chances over `values`). A nudge moves a value by one
  // FP32 ulp of its magnitude then (<= 2^-23 |w|), and the updates after it carry that absolute difference with at
  // most one rounding each; |w| along the way is at most max(|w0|, |w3|) + 3 lr (an Adam step moves a value by
  // about lr; the same gradient each step makes m/sqrt(v) exactly 1). So |d| <= 4 * 2^-23 * that magnitude; a
  // relative bound would not hold where an update brings a value near zero.
  int64_t differ = 0, moments = 0, far = 0;
  double worst = 0;
  for (size_t i = P; i < s.size(); ++i) {
    const bool weights = (i - P) % 3 == 0;
    for (size_t j = 0; j < s[i].size(); ++j) {
      if (bits(s[i][j]) == bits(f[i][j])) continue;
      if (!weights) {
        ++moments;
        continue;
      }
      ++differ;
      const double w0 = host.params[(i - P) / 3]->w[j];
      const double scale = std::max(std::fabs(w0), std::fabs(double(f[i][j]))) + 3 * 1e-3 * 1.01;
      const double ulps = std::fabs(double(s[i][j]) - double(f[i][j])) / (std::ldexp(1.0, -23) * scale);
      worst = std::max(worst, ulps);
      if (ulps > 4) ++far;
    }
  }
  std::printf("split masters: %lld of %lld split values nudged at bind, %lld weights differ after AdamW (worst "
              "%.3g ulps of the path's magnitude)\n",
              (long long)nudged, (long long)values, (long long)differ, worst);
  EXPECT_EQ(moments, 0);
  EXPECT_EQ(far, 0);
  EXPECT_LE(differ, 4 * values / 131072 + 8);
}

TEST(CudaTrainSplit, SplitMastersMatchFp32MastersThroughAdamW) {
  SKIP_WITHOUT_GPU();
  split_vs_fp32(false);
}

TEST(CudaTrainSplit, SplitMastersMatchFp32MastersThroughAdamWBf16Moments) {
  SKIP_WITHOUT_GPU();
  split_vs_fp32(true);
}

// AdamW's launcher (adamw.cu) runs a scalar head up to the first 16-byte boundary, a body of 4 values a thread
// and a scalar tail: a run starting one value past the arrays' alignment must give, value for value, what a run
// over the same values starting on the boundary gives (the same FP32 formula in both kernels).
TEST(CudaTrainSplit, AdamWHeadBodyAndTailAgree) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 1001;
  const std::vector<float> w = randn(n + 8, 31, 0.02), g = randn(n + 8, 32, 1e-3), m = randn(n + 8, 33, 1e-4);
  std::vector<float> v = randn(n + 8, 34, 1e-4);
  for (float& x : v) x = x * x;
  cuda::AdamWArgs a;
  a.lr = 1e-3f, a.decay = 1.0f - 1e-3f * 0.1f, a.bc1 = 0.1f, a.bc2 = 0.05f, a.clip = 0.7f;
  auto run = [&](int64_t at) {  // the n values placed at offset `at` of the device arrays
    std::vector<float> hw(n + 8), hg(n + 8), hm(n + 8), hv(n + 8);
    for (int64_t i = 0; i < n; ++i) hw[at + i] = w[i], hg[at + i] = g[i], hm[at + i] = m[i], hv[at + i] = v[i];
    DeviceArray<float> dw(hw), dg(hg), dm(hm), dv(hv);
    cuda::adamw_update(dw.get() + at, dg.get() + at, dm.get() + at, dv.get() + at, n, a, nullptr);
    const std::vector<float> rw = dw.host(), rm = dm.host(), rv = dv.host();
    std::vector<float> out;
    for (int64_t i = 0; i < n; ++i) out.insert(out.end(), {rw[at + i], rm[at + i], rv[at + i]});
    return out;
  };
  const std::vector<float> aligned = run(0), shifted = run(1);
  ASSERT_EQ(aligned.size(), shifted.size());
  EXPECT_EQ(0, std::memcmp(aligned.data(), shifted.data(), aligned.size() * 4));
  int64_t moved = 0;
  for (int64_t i = 0; i < n; ++i) moved += aligned[size_t(3 * i)] != w[size_t(i)];
  EXPECT_EQ(moved, n);  // the update moved every weight
  EXPECT_EQ(cudaGetLastError(), cudaSuccess);
}

TEST(CudaTrainSplit, GroupedAndHeadChoicesComeBeforeTheFirstStep) {
  SKIP_WITHOUT_GPU();
  const std::string path = "bench/configs/train-small.json";
  cuda::DeviceTrainer gpu(cuda::GemmPrecision::Bf16);
  TrainModel m = TrainModel::init(load_config(path), path, 3, 0.02);
  m.device = &gpu;
  gpu.push(m);
  gpu.set_grouped_experts(true);  // unchanged: fine
  gpu.set_head_fp32(true);
  for (int which = 0; which < 2; ++which) {
    try {
      if (which == 0)
        gpu.set_grouped_experts(false);
      else
        gpu.set_head_fp32(false);
      FAIL() << "no error";
    } catch (const std::exception& e) {
      EXPECT_NE(std::string(e.what()).find("before the first step"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace moe::train::test
