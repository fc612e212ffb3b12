// The backend steps of expert parallelism's dispatch and combine (expert_parallel.cpp) alone, at real widths,
// against an independent host reference: the CPU backend always, the CUDA backend (and it against the CPU)
// when a GPU is present (skipped visibly otherwise). Fresh random data each run, the seed printed.
//
// Shapes: an owner rank with T tokens of width D, each with k distinct experts of E, the experts dealt to R =
// 8 ranks in contiguous blocks (the default placement):
//   dispatch: gather_rows(x, rows by destination): per destination its tokens ascending, each once;
//   combine:  the returned rows ret [T*k, D] (per destination, the assignments (t, j) it got, in order) are
//   put in
//             the owner's moe_dispatch order (gather_rows by the dispatch's perm) and moe_combine adds
//             plus[t] + sum_j w[t, j] * ret[row of (t, j)].
// Bounds. The gathers are copies: bit-equal. The combine: F32 activations, k products and k + 1 terms summed
// in F32 in a backend's own order (CUDA: slot order; CPU: ascending expert), so |out - exact| <= (k + 2) *
// 2^-24 *
// (|plus| + sum_j |w y|) per element (each rounding at most 2^-24 relative of a partial sum bounded by that
// sum), and two backends differ by at most twice that.
#include <gtest/gtest.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <cstring>
#include <random>

#include "backend/backend.h"

namespace moe {
namespace {

constexpr int kRanks = 8;

struct Case {
  int64_t T, D, E, K;
};

struct Data {
  std::vector<float> x, ret, w, plus;  // x [T, D], ret [T*K, D], w [T, K], plus [T, D]
  std::vector<int32_t> ids;            // [T, K]
  std::vector<int32_t> send_rows;      // the tokens in destination order
  std::vector<int32_t> ret_row;        // per assignment t*K + j: its row of ret
};

uint64_t seed_now(const char* what) {
  const uint64_t s = uint64_t(std::chrono::steady_clock::now().time_since_epoch().count());
  std::printf("[ seed ] %s: %llu\n", what, (unsigned long long)s);
  return s;
}

Data make_data(const Case& c, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> n(0.0f, 1.0f);
  std::uniform_real_distribution<float> u(0.05f, 1.0f);
  Data d;
  d.x.resize(size_t(c.T * c.D));
  d.ret.resize(size_t(c.T * c.K * c.D));
  d.plus.resize(size_t(c.T * c.D));
  for (float& v : d.x) v = n(rng);
  for (float& v : d.ret) v = n(rng);
  for (float& v : d.plus) v = n(rng);
  std::vector<int32_t> all(size_t(c.E));
  for (int32_t e = 0; e < int32_t(c.E); ++e) all[size_t(e)] = e;
  for (int64_t t = 0; t < c.T; ++t) {
    std::shuffle(all.begin(), all.end(), rng);
    float sum = 0;
    std::vector<float> w(size_t(c.K));
    for (auto& v : w) sum += v = u(rng);
    for (int64_t j = 0; j < c.K; ++j) {
      d.ids.push_back(all[size_t(j)]);
      d.w.push_back(2.5f * w[size_t(j)] / sum);  // normalised, times a routed scaling factor
    }
  }
  // The plan of ExpertParallel::dispatch: per destination its tokens ascending (once each) and its
  // assignments.
  auto dest = [&](int32_t e) { return int32_t(int64_t(e) * kRanks / c.E); };
  std::vector<int64_t> n_assign(kRanks, 0);
  std::vector<int32_t> a_dest(size_t(c.T * c.K)), a_index(size_t(c.T * c.K));
  for (int32_t p = 0; p < kRanks; ++p)
    for (int64_t t = 0; t < c.T; ++t) {
      bool sent = false;
      for (int64_t j = 0; j < c.K; ++j) {
        const size_t a = size_t(t * c.K + j);
        if (dest(d.ids[a]) != p) continue;
        if (!sent) d.send_rows.push_back(int32_t(t)), sent = true;
        a_dest[a] = p;
        a_index[a] = int32_t(n_assign[size_t(p)]++);
      }
    }
  std::vector<int64_t> base(kRanks, 0);
  for (int p = 1; p < kRanks; ++p) base[size_t(p)] = base[size_t(p - 1)] + n_assign[size_t(p - 1)];
  d.ret_row.resize(size_t(c.T * c.K));
  for (size_t a = 0; a < d.ret_row.size(); ++a) d.ret_row[a] = int32_t(base[size_t(a_dest[a])] + a_index[a]);
  return d;
}

Tensor upload(Backend& b, DType dt, Shape shape, const void* host) {
  Tensor t = b.alloc_uninitialized(dt, shape);
  b.copy_from_host(host, t);
  return t;
}

std::vector<float> download(Backend& b, const TensorView& t) {
  std::vector<float> out(size_t(t.numel()));
  b.copy_to_host(t, out.data());
  return out;
}

struct Result {
  std::vector<float> gathered, combined;
};

// The two steps on backend `b` (F32 activations, as both backends have).
Result run_steps(Backend& b, const Case& c, const Data& d) {
  EXPECT_EQ(b.activation_dtype(), DType::F32) << b.name();
  const Tensor x = upload(b, DType::F32, {c.T, c.D}, d.x.data());
  Result r;
  const int64_t n_send = int64_t(d.send_rows.size());
  Tensor xs = b.alloc_uninitialized(DType::F32, {n_send, c.D});
  b.gather_rows(x, d.send_rows, xs);
  r.gathered = download(b, xs);

  const Tensor ids = upload(b, DType::I32, {c.T, c.K}, d.ids.data());
  const Tensor w = upload(b, DType::F32, {c.T, c.K}, d.w.data());
  const Tensor plus = upload(b, DType::F32, {c.T, c.D}, d.plus.data());
  const Tensor ret = upload(b, DType::F32, {c.T * c.K, c.D}, d.ret.data());
  const MoeDispatch md = b.moe_dispatch(x, ids, int32_t(c.E));
  std::vector<int32_t> perm(size_t(c.T * c.K));
  b.copy_to_host(md.perm, perm.data());
  std::vector<int32_t> pick(perm.size());
  for (size_t i = 0; i < perm.size(); ++i) pick[i] = d.ret_row[size_t(perm[i])];
  Tensor ys = b.alloc_uninitialized(DType::F32, {c.T * c.K, c.D});
  b.gather_rows(ret, pick, ys);
  Tensor out = b.alloc_uninitialized(DType::F32, {c.T, c.D});
  b.moe_combine(ys, md, w, plus, out);
  r.combined = download(b, out);
  return r;
}

// Checks `r` against the host reference; returns the combine's largest error in units of its bound.
double check(const Case& c, const Data& d, const Result& r, const std::string& tag) {
  EXPECT_EQ(r.gathered.size(), d.send_rows.size() * size_t(c.D)) << tag;
  size_t bad_rows = 0;
  for (size_t i = 0; i < d.send_rows.size(); ++i)
    bad_rows +=
        std::memcmp(r.gathered.data() + i * size_t(c.D), d.x.data() + size_t(d.send_rows[i]) * size_t(c.D),
                    size_t(c.D) * sizeof(float)) != 0;
  EXPECT_EQ(bad_rows, 0u) << tag << ": gathered rows differing from x's";
  double worst = 0;
  for (int64_t t = 0; t < c.T; ++t)
    for (int64_t i = 0; i < c.D; ++i) {
      double exact = d.plus[size_t(t * c.D + i)], mag = std::fabs(exact);
      for (int64_t j = 0; j < c.K; ++j) {
        const double term = double(d.w[size_t(t * c.K + j)]) *
                            double(d.ret[size_t(d.ret_row[size_t(t * c.K + j)]) * size_t(c.D) + size_t(i)]);
        exact += term;
        mag += std::fabs(term);
      }
      const double bound = double(c.K + 2) * std::ldexp(1.0, -24) * mag;
      worst = std::max(worst, std::fabs(double(r.combined[size_t(t * c.D + i)]) - exact) / bound);
    }
  EXPECT_LE(worst, 1.0) << tag << ": combine beyond (k + 2) * 2^-24 * sum |terms|";
  return worst;
}

const Case kCases[] = {{64, 2048, 64, 6}, {64, 7168, 256, 8}, {5, 7168, 256, 8}};

std::string name(const Case& c) {
  return "T" + std::to_string(c.T) + " D" + std::to_string(c.D) + " E" + std::to_string(c.E) + " k" +
         std::to_string(c.K);
}

TEST(EpExchange, CpuMatchesReference) {
  auto cpu = make_cpu_backend();
  for (const Case& c : kCases) {
    const Data d = make_data(c, seed_now(name(c).c_str()));
    const double worst = check(c, d, run_steps(*cpu, c, d), "cpu " + name(c));
    std::printf("cpu %s: combine error %.3f of its bound\n", name(c).c_str(), worst);
  }
}

TEST(EpExchange, CudaMatchesCpu) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA (Hopper) GPU present";
  auto cpu = make_cpu_backend();
  auto gpu = make_cuda_backend(0);
  for (const Case& c : kCases) {
    const Data d = make_data(c, seed_now(name(c).c_str()));
    const Result g = run_steps(*gpu, c, d), h = run_steps(*cpu, c, d);
    const double worst = check(c, d, g, "cuda " + name(c));
    EXPECT_EQ(g.gathered, h.gathered) << name(c);
    double diff = 0, bound_units = 0;
    for (size_t i = 0; i < g.combined.size(); ++i)
      diff = std::max(diff, std::fabs(double(g.combined[i]) - h.combined[i]));
    for (float v : h.combined) bound_units = std::max(bound_units, double(std::fabs(v)));
    std::printf("cuda %s: combine error %.3f of its bound; max |cuda - cpu| %.3e (max |out| %.3e)\n",
                name(c).c_str(), worst, diff, bound_units);
    RecordProperty(name(c) + ".cuda_combine_error_of_bound", std::to_string(worst));
  }
}

}  // namespace
}  // namespace moe
