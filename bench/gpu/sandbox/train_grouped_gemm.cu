// Sandbox: tile and pipeline shapes of the trainer's grouped expert GEMM (src/train/cuda/grouped_gemm_wgmma.cu) at
// train-mid's widths (hidden 2048, expert inner 1408, 64 experts) and the row counts of its micro-batches.
//
// The kernel template is compiled here from the production source (#include of the .cu: its launcher picks one
// shape per kind, the template takes any), so every variant runs the production code with other template
// arguments: tile width kBN (128 / 256), ring depth, CTAs per SM, K block. The products, per problem p (expert):
//   nt  y [n_p, m] = x [n_p, k] W^T            (forward; beta 0)
//   nn  dx [n_p, k] = dy [n_p, m] W            (input gradient; beta 0)
//   tn  dW [m, k] += dy^T x                    (weight gradient; beta 1)
// at (k, m) = (2048, 1408) (gate, up) and (1408, 2048) (down). Checks: every variant's output bit-identical to the
// production launcher's (the same k16 MMAs in the same K order per element, whatever the tile), and the
// production output against a float64 host product on 512 sampled elements (relative L2 <= 1e-5: BF16 operands
// are exact in F32 products, the only error is F32 summation over K <= 2048 terms, ~sqrt(K) 2^-24 relative).
// Timing: median of 20 after 3 warm-ups, FLOPs 2 sum(n_p) k m.
//
// Measured (bench/RESULTS.md, round 6; H200, 2026-12-03, 23,608 rows): 256-wide tiles took nt at N 1408 from 351 to
// 310 us and nn at N 1408 from 361 to 322 us against the 128-wide, 4-stage tiles production ran there; the weight
// gradient's production shape (128-wide, 6 stages of 32-row K blocks, 2 CTAs/SM, 598 us) beat every other tried.
//
// Round 7 (H200, 2026-12-03, 23,608 rows; tn at both shapes): the reduce-add of beta 1 was the cost (production
// 592 us, the same kernel with a plain store 391 us); a bulk L2 prefetch of the CTA's output tile at its start and
// 7 stages took it to 517 us. Slower: 6 stages with the prefetch 534, prefetching the tile of the CTA 1/2, 1 or 2
// waves later 570 / 648 / 669 (that mechanism then removed from production), 256-wide 1 CTA/SM 553-579, a persistent 128 x 256 kernel with its epilogue staged
// outside the ring (overlapping the next tile's main loop, but only 3 K blocks in flight) 661; nn with beta 1
// 336-344 us against 317-324 with beta 0 (the L2 prefetch made it slower there: 346 -> 354, so only tn has it).
//
// Sizes: --tokens 2048,4096 (tokens a micro-batch; rows = 6 tokens over 64 experts, each expert's count uniform in
// [0.4, 1.6] x the mean, seed 7).
#include "../../../src/train/cuda/grouped_gemm_wgmma.cu"

#include "common.cuh"

namespace {

using moe::train::cuda::GemmKind;
using moe::train::cuda::GroupedItem;
using moe::train::cuda::GroupedProblemDesc;
using moe::train::cuda::GroupedWgmmaArgs;
using moe::train::cuda::kGroupedTileM;

struct Variant {
  const char* name;
  cudaError_t (*fn)(const GroupedWgmmaArgs&, cudaStream_t);
};

// Diagnostic: the production tn with a plain bulk store (beta 0) instead of the reduce-add (from zeros both give
// the same output): how much of the time the gradients' read costs.
cudaError_t production_beta0(const GroupedWgmmaArgs& a, cudaStream_t s) {
  GroupedWgmmaArgs b = a;
  b.beta = 0.0f;
  return moe::train::cuda::launch_kind<GemmKind::Tn>(b, s);
}

// nn with beta 1 (dxs += dup W_up): what the read of the output adds.
cudaError_t nn_beta1(const GroupedWgmmaArgs& a, cudaStream_t s) {
  GroupedWgmmaArgs b = a;
  b.beta = 1.0f;
  return moe::train::cuda::launch_kind<GemmKind::Nn>(b, s);
}

template <GemmKind kKind>
std::vector<Variant> variants() {
  using namespace moe::train::cuda;
  std::vector<Variant> v = {{"production", &launch_kind<kKind>}};
  if constexpr (kKind == GemmKind::Tn) {
    v.push_back({"6st own tile", &launch<kKind, 128, 6, 2, 32>});
    v.push_back({"6st no L2 prefetch", &launch<kKind, 128, 6, 2, 32, 1, false>});
    v.push_back({"256w 8st 1cta k32", &launch<kKind, 256, 8, 1, 32>});
    v.push_back({"beta0 production", &production_beta0});
  } else {
    if constexpr (kKind == GemmKind::Nn) {
      v.push_back({"beta1 production", &nn_beta1});
    }
    v.push_back({"128w 4st 1cta", &launch<kKind, 128, 4, 1, 64>});
    v.push_back({"128w 6st 1cta", &launch<kKind, 128, 6, 1, 64>});
    v.push_back({"128w 3st 2cta", &launch<kKind, 128, 3, 2, 64>});
    v.push_back({"256w 4st 1cta", &launch<kKind, 256, 4, 1, 64>});
  }
  return v;
}

std::vector<Variant> variants_of(GemmKind k) {
  switch (k) {
    case GemmKind::Nt:
      return variants<GemmKind::Nt>();
    case GemmKind::Nn:
      return variants<GemmKind::Nn>();
    case GemmKind::Tn:
      break;
  }
  return variants<GemmKind::Tn>();
}

// One (kind, k, m) at one micro-batch size: every variant checked, then timed. Returns the failed checks.
// (256-wide tiles at N = 1408 mask the last tile's columns past N: they run, with 9 % of their MMAs wasted.)
int run_shape(GemmKind kind, int64_t tokens, int64_t k, int64_t m, cudaStream_t s) {
  const int64_t E = 64, mean = tokens * 6 / E;
  std::mt19937_64 rng(7);
  std::uniform_int_distribution<int64_t> d(mean * 2 / 5, mean * 8 / 5);
  std::vector<int64_t> rows(static_cast<size_t>(E)), off(static_cast<size_t>(E));
  int64_t total = 0;
  for (int64_t e = 0; e < E; ++e) rows[size_t(e)] = (d(rng) + 7) / 8 * 8, off[size_t(e)] = total, total += rows[size_t(e)];
  const bool tn = kind == GemmKind::Tn, nt = kind == GemmKind::Nt;
  const int64_t a_w = nt ? k : m, out_w = nt ? m : k;  // row widths of a and of the output (nt/nn)
  uint16_t* a = sbx::dalloc<uint16_t>(size_t(total * a_w));
  uint16_t* b = sbx::dalloc<uint16_t>(size_t(tn ? total * k : E * m * k));
  const size_t out_n = size_t(tn ? E * m * k : total * out_w);
  float* out = sbx::dalloc<float>(out_n);
  float* ref = sbx::dalloc<float>(out_n);
  sbx::dfill_bf16(a, size_t(total * a_w), 11, 1.0f);
  sbx::dfill_bf16(b, size_t(tn ? total * k : E * m * k), 12, 1.0f);
  std::vector<GroupedProblemDesc> descs;
  std::vector<GroupedItem> items;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t o = off[size_t(e)];
    descs.push_back({tn ? out + e * m * k : out + o * out_w, a + o * a_w, tn ? b + o * k : b + e * m * k, rows[size_t(e)]});
    const int64_t M = tn ? m : rows[size_t(e)];
    for (int64_t t = 0; t * kGroupedTileM < M; ++t) items.push_back({int32_t(e), int32_t(t)});
  }
  auto* ddesc = sbx::dupload(descs);
  auto* ditems = sbx::dupload(items);
  GroupedWgmmaArgs args;
  args.kind = kind, args.problems = ddesc, args.items = ditems, args.count = int64_t(items.size());
  args.k = k, args.m = m, args.beta = tn ? 1.0f : 0.0f;
  const double flops = 2.0 * double(total) * double(k) * double(m);
  int failed = 0;
  const std::vector<Variant> vs = variants_of(kind);
  for (size_t vi = 0; vi < vs.size(); ++vi) {
    // Check: one call from zeros (tn adds into its output).
    SBX_CHECK(cudaMemsetAsync(out, 0, out_n * 4, s));
    SBX_CHECK(vs[vi].fn(args, s));
    SBX_CHECK(cudaStreamSynchronize(s));
    if (vi == 0) {
      SBX_CHECK(cudaMemcpy(ref, out, out_n * 4, cudaMemcpyDeviceToDevice));
      // float64 reference on sampled outputs
      const std::vector<uint16_t> ha = sbx::ddownload(a, size_t(total * a_w));
      const std::vector<uint16_t> hb = sbx::ddownload(b, size_t(tn ? total * k : E * m * k));
      const std::vector<float> ho = sbx::ddownload(out, out_n);
      std::mt19937_64 g(5);
      std::vector<float> got;
      std::vector<double> want;
      for (int i = 0; i < 512; ++i) {
        const int64_t e = std::uniform_int_distribution<int64_t>(0, E - 1)(g);
        const int64_t n_e = rows[size_t(e)], o = off[size_t(e)];
        double acc = 0;
        if (tn) {  // dW[r][c] = sum_i dy[i][r] x[i][c]
          const int64_t r = std::uniform_int_distribution<int64_t>(0, m - 1)(g), c = std::uniform_int_distribution<int64_t>(0, k - 1)(g);
          for (int64_t i = 0; i < n_e; ++i) acc += double(sbx::bf2f(ha[size_t((o + i) * m + r)])) * sbx::bf2f(hb[size_t((o + i) * k + c)]);
          got.push_back(ho[size_t(e * m * k + r * k + c)]);
        } else {
          if (n_e == 0) continue;
          const int64_t r = std::uniform_int_distribution<int64_t>(0, n_e - 1)(g);
          const int64_t c = std::uniform_int_distribution<int64_t>(0, out_w - 1)(g);
          const int64_t K = nt ? k : m;
          for (int64_t j = 0; j < K; ++j) {
            const double x = sbx::bf2f(ha[size_t((o + r) * a_w + j)]);
            // nt: W[c][j] (W [m, k]); nn: W[j][c] (W [m, k], j < m, c < k)
            const double w = nt ? sbx::bf2f(hb[size_t(e * m * k + c * k + j)]) : sbx::bf2f(hb[size_t(e * m * k + j * k + c)]);
            acc += x * w;
          }
          got.push_back(ho[size_t((o + r) * out_w + c)]);
        }
        want.push_back(acc);
      }
      const double err = sbx::rel_l2(got.data(), want.data(), got.size());
      std::printf("  kind %d k %lld m %lld rows %lld: production vs float64 on %zu outputs: rel L2 %.2e%s\n", int(kind),
                  (long long)k, (long long)m, (long long)total, got.size(), err, err <= 1e-5 ? "" : "  FAILED");
      if (err > 1e-5) ++failed;
    } else {
      const std::vector<float> h0 = sbx::ddownload(ref, out_n), h1 = sbx::ddownload(out, out_n);
      size_t diff = 0;
      for (size_t i = 0; i < out_n; ++i) diff += h0[i] != h1[i];
      if (diff) {
        std::printf("  %-20s differs from production in %zu of %zu outputs  FAILED\n", vs[vi].name, diff, out_n);
        ++failed;
        continue;
      }
    }
    const double us = sbx::time_us(1, [&](int) { SBX_CHECK(vs[vi].fn(args, s)); }, s);
    std::printf("  kind %d k %4lld m %4lld rows %6lld  %-20s %8.1f us  %6.1f TFLOP/s\n", int(kind), (long long)k,
                (long long)m, (long long)total, vs[vi].name, us, flops / us * 1e-6);
  }
  cudaFree(a), cudaFree(b), cudaFree(out), cudaFree(ref), cudaFree(ddesc), cudaFree(ditems);
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  const sbx::Args args{argc, argv};
  const std::vector<int64_t> tokens = args.list("tokens", {2048, 4096});
  cudaStream_t s;
  SBX_CHECK(cudaStreamCreate(&s));
  int failed = 0;
  for (int64_t t : tokens)
    for (const auto& [k, m] : {std::pair<int64_t, int64_t>{2048, 1408}, std::pair<int64_t, int64_t>{1408, 2048}})
      for (GemmKind kind : {GemmKind::Nt, GemmKind::Nn, GemmKind::Tn}) failed += run_shape(kind, t, k, m, s);
  std::printf("%s\n", failed ? "FAILED" : "all variants match");
  return failed ? 1 : 0;
}
