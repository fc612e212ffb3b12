// Sandbox: pipeline shapes of the grouped FP8 x FP8 routed-expert GEMM (src/backend/cuda/moe_gemm_fp8.cu) at
// Moonlight's widths (hidden 2048, expert inner 1408, 64 experts, top 6), prefill and decode token counts.
//
// The kernel template is compiled here from the production source (#include of the .cu; its public launchers
// renamed below so they do not collide with the copy in moe_backend_cuda), so every variant is production's code
// with other template arguments: the warp-specialised 128-row kernel (production's prefill path) at other ring
// depths, and the kernel where every thread copies at 128 rows per CTA (two warpgroups, one CTA per SM: production's
// prefill path before the warp-specialised one) and 64 (one warpgroup, two CTAs per SM: production's decode path)
// at other ring depths. Both promote block g - 1 from a second part buffer while block g's wgmma run; the lag-0
// promotion before it (wait for each block's wgmma, then promote it: the tensor cores idle meanwhile) has left
// production, its figures stay below. The two launches of a layer (moe_experts_fp8's order):
//   swiglu  h [TK, I] = silu(x W_gate^T) * (x W_up^T), x the token's E4M3 row (a_rows = the assignment, a_div 6)
//   plain   y [perm[i], D] = hq [i, I] W_down^T (the scatter back to assignment order)
// on random E4M3 operands (every finite code, never NaN) with random positive 1x128 / 128x128 scales.
// Checks: every variant's output bit-identical to the production launcher's (the same blocks promoted in the
// same order with the same FMAs per element, whatever the pipeline), and production against a float64 product of
// the dequantised operands on 256 sampled rows x 16 columns: relative L2 <= 2e-3 (the tensor cores accumulate a
// 128-deep block's FP8 products with ~14 bits, 4 x 2^-14 relative per block: test_cuda_moe_fp8's bound; measured
// there 1.1e-4..1.7e-4). Timing: median of 20 after 3 warm-ups; FLOPs 2 TK N K (swiglu N = 2 I).
//
// Measured (H200, 2026-12-04; bench/RESULTS.md "grouped FP8 experts, round 2"), 128-row CTAs, T 4096:
//   lag 0, 4 stages (production before)                      swiglu 729 us (389 TFLOP/s)   down 361 us (393)
//   lag 1, 6 stages (production 04:45-05:00 UTC)                    678 us (418)                  317 us (447)
//   warp-specialised, first version (the producer read its A rows from shared memory and recomputed every
//     address per copy; the math warps built descriptors per block)  617 us (459)                 325 us (437)
//   warp-specialised, 6 stages (production since: the producer keeps 16 source pointers / offsets in
//     registers, descriptors and scale pointers precomputed)          461 us (615)                 246 us (576)
//   same, 4 / 7 stages                                              461 / 466 us                  265 / 249 us
// T 8192: 1365 / 668 us before, 850-860 / 445 us warp-specialised (659-667 / 637 TFLOP/s). 6 stages without the
// lag gain nothing over 4 (722 / 362 us). ncu of the lag-1 kernel (04:50 UTC): SM throughput 41 %, L2 30 %, DRAM
// 14 %, tensor pipe ~28 %; its SASS: 180 instructions a K block a warp (64 FFMA of the promotion, 8 LDGSTS, ~100 of
// address and predicate arithmetic for the copies): two warps a scheduler issue ~360 slots per ~512-cycle block.
// The lean warp-specialised math loop is 85 instructions a block (64 FFMA, 4 QGMMA).
// 64-row CTAs (decode: T 256 and 64), lag 1 at 4 stages (production): 144 -> 137 us and 75 -> 71 us at T 256,
// 118 -> 118 and 70 -> 66 us at T 64; the warp-specialised 128-row CTAs are slower there (151 / 80 us at T 256).
//
// Sizes: --tokens 4096,256,64 (routing uniform over the experts, seed 7).
#define grouped_gemm_fp8 sbx_grouped_gemm_fp8
#define grouped_gemm_fp8_shape_ok sbx_grouped_gemm_fp8_shape_ok
#define configure_grouped_gemm_fp8_kernels sbx_configure_grouped_gemm_fp8_kernels
#include "../../../src/backend/cuda/moe_gemm_fp8.cu"
#undef grouped_gemm_fp8
#undef grouped_gemm_fp8_shape_ok
#undef configure_grouped_gemm_fp8_kernels

#include "common.cuh"

namespace {

using moe::cuda::GroupedGemmFp8Params;

struct Variant {
  const char* name;
  void (*fn)(const GroupedGemmFp8Params&, int32_t, cudaStream_t);
};

template <bool kSwiglu>
std::vector<Variant> variants() {
  using namespace moe::cuda;
  return {
      {"production", &sbx_grouped_gemm_fp8},
      {"128r 4st", &launch<kSwiglu, 2, 4, true>},
      {"128r 6st", &launch<kSwiglu, 2, 6, true>},
      {"128r 7st", &launch<kSwiglu, 2, 7, true>},
      {"64r 4st", &launch<kSwiglu, 1, 4, true>},
      {"ws 128r 4st", &launch_ws<kSwiglu, 4, true>},
      {"ws 128r 7st", &launch_ws<kSwiglu, 7, true>},
  };
}

// Random E4M3 codes: every finite value (0x7F / 0xFF are NaN), a few zeros among them as in real data.
std::vector<uint8_t> random_e4m3(size_t n, uint64_t seed) {
  std::mt19937_64 g(seed);
  std::vector<uint8_t> v(n);
  for (auto& b : v) {
    do b = uint8_t(g());
    while ((b & 0x7F) == 0x7F);
  }
  return v;
}
double e4m3(uint8_t b) {
  const int s = b >> 7, e = (b >> 3) & 15, m = b & 7;
  const double v = e == 0 ? std::ldexp(m / 8.0, -6) : std::ldexp(1.0 + m / 8.0, e - 7);
  return s ? -v : v;
}
std::vector<float> random_scales(size_t n, uint64_t seed) {
  std::vector<float> v(n);
  sbx::fill_uniform(v, 1.0f / 4096, 1.0f / 1024, seed);  // amax / 448 for activations of ~0.5-2
  return v;
}

int run(int64_t T) {
  constexpr int64_t E = 64, K = 6, D = 2048, I = 1408;
  const int64_t TK = T * K, kbD = (D + 127) / 128, kbI = (I + 127) / 128;
  const int64_t ldT = (T + 3) / 4 * 4, ldTK = (TK + 3) / 4 * 4;
  // Routing: K distinct experts per token; sorted rows by expert (perm[i] = assignment t K + j); items of <= 128.
  std::mt19937_64 rng(7);
  std::vector<std::vector<int32_t>> by_e(E);
  for (int64_t t = 0; t < T; ++t) {
    std::vector<int> ex(E);
    for (int e = 0; e < E; ++e) ex[size_t(e)] = e;
    for (int64_t j = 0; j < K; ++j) {
      std::swap(ex[size_t(j)], ex[size_t(j + int64_t(rng() % uint64_t(E - j)))]);
      by_e[size_t(ex[size_t(j)])].push_back(int32_t(t * K + j));
    }
  }
  std::vector<int32_t> perm, items;
  for (int64_t e = 0; e < E; ++e) {
    const int32_t begin = int32_t(perm.size()), n = int32_t(by_e[size_t(e)].size());
    perm.insert(perm.end(), by_e[size_t(e)].begin(), by_e[size_t(e)].end());
    for (int32_t b = 0; b < n; b += moe::cuda::kGroupedRows)
      items.insert(items.end(), {int32_t(e), begin + b, std::min(moe::cuda::kGroupedRows, n - b)});
  }
  const int32_t n_items = int32_t(items.size() / 3);
  // Operands: x [T, D] + scales [kbD, ldT]; h [TK, I] + [kbI, ldTK]; weights gate, up [I, D], down [D, I] with
  // [ceil(N/128), ceil(K/128)] scales per expert; the table as production lays it out (6 slots per expert).
  const auto hx = random_e4m3(size_t(T * D), 1), hh = random_e4m3(size_t(TK * I), 2);
  const auto hxs = random_scales(size_t(kbD * ldT), 3), hhs = random_scales(size_t(kbI * ldTK), 4);
  std::vector<std::vector<uint8_t>> hw(3);
  std::vector<std::vector<float>> hws(3);
  const int64_t wn[3] = {I, I, D}, wk[3] = {D, D, I};
  for (int j = 0; j < 3; ++j) {
    hw[size_t(j)] = random_e4m3(size_t(E * wn[j] * wk[j]), 10 + uint64_t(j));
    hws[size_t(j)] = random_scales(size_t(E * ((wn[j] + 127) / 128) * ((wk[j] + 127) / 128)), 20 + uint64_t(j));
  }
  uint8_t* x = sbx::dupload(hx);
  uint8_t* h8 = sbx::dupload(hh);
  float* xs = sbx::dupload(hxs);
  float* hs = sbx::dupload(hhs);
  uint8_t* w[3];
  float* ws[3];
  std::vector<const void*> table(size_t(E * 6));
  for (int j = 0; j < 3; ++j) {
    w[j] = sbx::dupload(hw[size_t(j)]);
    ws[j] = sbx::dupload(hws[size_t(j)]);
    const int64_t wsz = wn[j] * wk[j], ssz = ((wn[j] + 127) / 128) * ((wk[j] + 127) / 128);
    for (int64_t e = 0; e < E; ++e) {
      table[size_t(e * 6 + j)] = w[j] + e * wsz;
      table[size_t(e * 6 + 3 + j)] = ws[j] + e * ssz;
    }
  }
  const void** dtable = sbx::dupload(table);
  int32_t* dperm = sbx::dupload(perm);
  int32_t* ditems = sbx::dupload(items);
  float* hout = sbx::dalloc<float>(size_t(TK * I));
  float* yout = sbx::dalloc<float>(size_t(TK * D));
  float* ref = sbx::dalloc<float>(size_t(TK * D));

  int failed = 0;
  for (const bool swiglu : {true, false}) {
    GroupedGemmFp8Params p;
    p.items = ditems;
    p.wtab = dtable;
    p.cta_rows = TK <= 64 * E ? 64 : 128;  // as moe_expert_gemms_fp8 picks
    if (swiglu) {
      p.K = int32_t(D), p.N = int32_t(I), p.a = x, p.lda = D, p.as = xs, p.ld_as = ldT, p.a_rows = dperm;
      p.a_div = int32_t(K), p.wslot[0] = 0, p.wslot[1] = 1, p.sslot[0] = 3, p.sslot[1] = 4, p.swiglu = true;
      p.h = hout, p.ldh = I;
    } else {
      p.K = int32_t(I), p.N = int32_t(D), p.a = h8, p.lda = I, p.as = hs, p.ld_as = ldTK;
      p.wslot[0] = p.wslot[1] = 2, p.sslot[0] = p.sslot[1] = 5, p.y = yout, p.y_rows = dperm, p.ldy = D;
    }
    float* out = swiglu ? hout : yout;
    const int64_t N = swiglu ? I : D, out_w = N;
    const size_t out_n = size_t(TK * out_w);
    const double flops = 2.0 * double(TK) * double(swiglu ? 2 * I : D) * double(p.K);
    const std::vector<Variant> vs = swiglu ? variants<true>() : variants<false>();
    for (size_t vi = 0; vi < vs.size(); ++vi) {
      SBX_CHECK(cudaMemset(out, 0xFF, out_n * 4));  // NaN: every output must be written
      vs[vi].fn(p, n_items, nullptr);
      SBX_CHECK(cudaGetLastError());
      SBX_CHECK(cudaDeviceSynchronize());
      if (vi == 0) {
        SBX_CHECK(cudaMemcpy(ref, out, out_n * 4, cudaMemcpyDeviceToDevice));
        const std::vector<float> ho = sbx::ddownload(out, out_n);
        // float64 reference on sampled (sorted row i, column n): the assignment a = perm[i], its token a / K.
        std::mt19937_64 g(5);
        std::vector<float> got;
        std::vector<double> want;
        size_t nonfinite = 0;
        for (float v : ho) nonfinite += !std::isfinite(v);
        for (int s = 0; s < 256; ++s) {
          const int64_t i = int64_t(g() % uint64_t(TK));
          int64_t e = 0;  // the expert of sorted row i: the item containing it
          for (int32_t it = 0; it < n_items; ++it)
            if (i >= items[size_t(3 * it + 1)] && i < items[size_t(3 * it + 1)] + items[size_t(3 * it + 2)]) e = items[size_t(3 * it)];
          const int64_t a = perm[size_t(i)], tok = a / K;
          for (int c = 0; c < 16; ++c) {
            const int64_t n = int64_t(g() % uint64_t(N));
            auto dot = [&](int j, int64_t row) {  // sum_k A[row, k] as W_j[e][row n, k] ws
              const int64_t Kw = wk[j], kb = (Kw + 127) / 128;
              const uint8_t* wr = hw[size_t(j)].data() + size_t((e * wn[j] + row) * Kw);
              const float* sr = hws[size_t(j)].data() + size_t(e * ((wn[j] + 127) / 128) * kb + (row / 128) * kb);
              double acc = 0;
              for (int64_t k = 0; k < Kw; ++k) {
                const double av = swiglu ? e4m3(hx[size_t(tok * D + k)]) * hxs[size_t((k / 128) * ldT + tok)]
                                         : e4m3(hh[size_t(i * I + k)]) * hhs[size_t((k / 128) * ldTK + i)];
                acc += av * e4m3(wr[k]) * sr[k / 128];
              }
              return acc;
            };
            if (swiglu) {
              const double gt = dot(0, n), up = dot(1, n);
              want.push_back(sbx::silu(gt) * up);
              got.push_back(ho[size_t(i * I + n)]);
            } else {
              want.push_back(dot(2, n));
              got.push_back(ho[size_t(a * D + n)]);
            }
          }
        }
        const double err = sbx::rel_l2(got.data(), want.data(), got.size());
        const bool bad = err > 2e-3 || nonfinite != 0;
        std::printf("  T %5lld %-6s production vs float64 on %zu outputs: rel L2 %.2e, %zu non-finite of %zu%s\n",
                    (long long)T, swiglu ? "swiglu" : "down", got.size(), err, nonfinite, out_n, bad ? "  FAILED" : "");
        failed += bad;
      } else {
        const std::vector<float> h0 = sbx::ddownload(ref, out_n), h1 = sbx::ddownload(out, out_n);
        size_t diff = 0;
        for (size_t k = 0; k < out_n; ++k) diff += std::memcmp(&h0[k], &h1[k], 4) != 0;
        if (diff) {
          std::printf("  %-24s differs from production in %zu of %zu outputs  FAILED\n", vs[vi].name, diff, out_n);
          ++failed;
          continue;
        }
      }
      const double us = sbx::time_us(1, [&](int) { vs[vi].fn(p, n_items, nullptr); }, nullptr);
      std::printf("  T %5lld %-6s rows/expert %6.1f  %-24s %8.1f us  %6.1f TFLOP/s\n", (long long)T,
                  swiglu ? "swiglu" : "down", double(TK) / E, vs[vi].name, us, flops / us * 1e-6);
    }
  }
  for (int j = 0; j < 3; ++j) cudaFree(w[j]), cudaFree(ws[j]);
  cudaFree(x), cudaFree(h8), cudaFree(xs), cudaFree(hs), cudaFree(dtable), cudaFree(dperm), cudaFree(ditems);
  cudaFree(hout), cudaFree(yout), cudaFree(ref);
  return failed;
}

}  // namespace

int main(int argc, char** argv) {
  const sbx::Args args{argc, argv};
  moe::cuda::sbx_configure_grouped_gemm_fp8_kernels();
  int failed = 0;
  for (int64_t t : args.list("tokens", {4096, 256, 64})) failed += run(t);
  std::printf("%s\n", failed ? "FAILED" : "all variants match");
  return failed ? 1 : 0;
}
