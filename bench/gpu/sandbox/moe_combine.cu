// Sandbox: the MoE combine (src/backend/cuda/moe_plan.cu, moe_combine).
//
//   out[t, d] = plus[t, d] + sum_j w[t, j] * y[t * k + j, d]      (plus: the shared experts' output)
// Compares, on T tokens, top-k, hidden D (F32):
//   scalar  the combine before the batch-1 decode rework (MOE_CUDA_LEGACY=combine; production keeps it as the
//           fallback for k > 8, D % 4 != 0 or unaligned rows): grid (min(ceil(D/256), 32), T) x 256 threads,
//           a strided loop over d, k dependent loads per element; copied below;
//   vec     production moe::cuda::moe_combine: one thread per float4 of a row, all k expert rows loaded
//           before the sum (same order of fmaf, so the same result bit for bit).
// All launches carry the programmatic-dependent-launch attribute, as production's launch() does by default.
// Check: against a float64 host reference on random non-zero inputs; relative L2 tolerance 1e-5 (F32 fmaf over
// <= 8 terms + one add: ~1e-7 expected); the two kernels must also agree exactly (max |diff| printed).
// Timing: cudaEvents, median of --reps cycles over enough input copies to move >= --rotate-mb (200) MB per cycle
// (nothing served from the 50 MB L2), the cycle replayed from a CUDA graph (--eager: stream launches).
// GB/s counts y (T*k*D*4) + w + plus (T*D*4) + out (T*D*4).
//
// Sizes (defaults): --tokens 1,64,4096; (k, D) pairs --topk 6,8 with --hidden 2048,7168 (Moonlight-16B top-6 at
// 2048; DeepSeek-V3 top-8 at 7168); --no-plus drops the shared-expert input.
// Run: build-cuda/bench/gpu/sandbox/sandbox_moe_combine [--tokens 1,64,4096] [--topk 6 --hidden 2048] [--reps 20]
//   [--eager]
//
// Results so far (bench/RESULTS.md at commit 9594e3e, runs C/D: H100, Moonlight BF16, batch-1 decode at context
// 512, whole model): new kernels 209.7-211.9 tok/s (C), 205.6-207.9 (D); MOE_CUDA_LEGACY=combine 208.4 (C) / 207.4
// (D): within the run-to-run spread (~+-3 %). ncu of a decode step (commit 4507228): MoE combine 0.10 ms of 5.53 ms.
#include "common.cuh"

using namespace sbx;

namespace {

// ---- legacy, copied from src/backend/cuda/moe_plan.cu (combine_kernel and its launch) ----------------------------
__global__ void combine_kernel(const float* y, const float* w, int32_t k, int64_t D, const float* plus, float* out) {
  pdl_trigger();
  pdl_wait();
  const int64_t t = blockIdx.y;
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x) {
    float acc = 0.0f;
    for (int j = 0; j < k; ++j) acc = fmaf(w[t * k + j], y[(t * k + j) * D + d], acc);
    out[t * D + d] = plus ? plus[t * D + d] + acc : acc;
  }
}
unsigned col_blocks(int64_t D) { return unsigned(std::min<int64_t>((D + 255) / 256, 32)); }
void legacy_combine(const float* y, const float* w, int64_t T, int32_t k, int64_t D, const float* plus, float* out,
                    cudaStream_t s) {
  launch(true, combine_kernel, dim3(col_blocks(D), unsigned(T)), 256, 0, s, y, w, k, D, plus, out);
}

}  // namespace

int main(int argc, char** argv) {
  const Args a{argc, argv};
  const auto Ts = a.list("tokens", {1, 64, 4096});
  const auto Ks = a.list("topk", {6, 8});
  const auto Ds = a.list("hidden", {2048, 7168});
  const bool with_plus = !a.has("no-plus");
  const int reps = int(a.i64("reps", 20));
  const bool graph = !a.has("eager");
  const double tol = 1e-5;
  if (Ks.size() != Ds.size()) {
    std::fprintf(stderr, "--topk and --hidden take lists of the same length (pairs)\n");
    return 2;
  }
  print_device();
  std::printf("timing: %s\n", graph ? "each cycle of calls replayed from a CUDA graph (--eager: stream launches)"
                                      : "stream launches");
  cudaStream_t s;
  SBX_CHECK(cudaStreamCreate(&s));  // blocking: ordered after the setup copies on the default stream
  std::printf("shared-expert input (plus): %s\n", with_plus ? "yes" : "no");
  std::printf("\n%6s %3s %6s  %-18s %10s %10s %5s %5s %10s %9s\n", "T", "k", "D", "variant", "rel_L2", "max|a-b|",
              "ok", "bufs", "us", "GB/s");
  bool all_ok = true;
  for (size_t c = 0; c < Ks.size(); ++c) {
    const int32_t k = int32_t(Ks[c]);
    const int64_t D = Ds[c];
    for (int64_t T : Ts) {
      const size_t ny = size_t(T * k * D), nw = size_t(T * k), no = size_t(T * D);
      const size_t set_bytes = (ny + nw + 2 * no) * 4;
      const int nbuf = rotation(set_bytes, a);
      std::vector<float> hy(ny), hw(nw), hp(no);
      fill_uniform(hy, -1.0f, 1.0f, 11 + uint64_t(T));
      fill_uniform(hw, 0.01f, 1.0f, 12 + uint64_t(T));
      fill_uniform(hp, -1.0f, 1.0f, 13 + uint64_t(T));
      float* y = dalloc<float>(ny * nbuf);
      float* w = dalloc<float>(nw * nbuf);
      float* plus = dalloc<float>(no * nbuf);
      float* out = dalloc<float>(no * nbuf);
      for (int b = 0; b < nbuf; ++b) {
        SBX_CHECK(cudaMemcpy(y + b * ny, hy.data(), ny * 4, cudaMemcpyHostToDevice));
        SBX_CHECK(cudaMemcpy(w + b * nw, hw.data(), nw * 4, cudaMemcpyHostToDevice));
        SBX_CHECK(cudaMemcpy(plus + b * no, hp.data(), no * 4, cudaMemcpyHostToDevice));
      }
      std::vector<double> ref(no);
      for (int64_t t = 0; t < T; ++t)
        for (int64_t d = 0; d < D; ++d) {
          double acc = with_plus ? double(hp[size_t(t * D + d)]) : 0.0;
          for (int j = 0; j < k; ++j) acc += double(hw[size_t(t * k + j)]) * hy[size_t((t * k + j) * D + d)];
          ref[size_t(t * D + d)] = acc;
        }
      auto P = [&](int b) { return with_plus ? plus + b * no : nullptr; };
      struct Variant {
        const char* name;
        std::function<void(int)> call;
      };
      const std::vector<Variant> vs = {
          {"scalar (legacy)", [&](int b) { legacy_combine(y + b * ny, w + b * nw, T, k, D, P(b), out + b * no, s); }},
          {"vec (production)",
           [&](int b) { moe::cuda::moe_combine(y + b * ny, w + b * nw, T, k, D, P(b), out + b * no, s); }},
      };
      std::vector<float> first;
      for (const Variant& v : vs) {
        SBX_CHECK(cudaMemset(out, 0, no * 4));
        v.call(0);
        SBX_CHECK(cudaStreamSynchronize(s));
        const std::vector<float> got = ddownload(out, no);
        const double err = rel_l2(got.data(), ref.data(), no);
        double maxdiff = 0.0;
        if (first.empty())
          first = got;
        else
          for (size_t i = 0; i < no; ++i) maxdiff = std::max(maxdiff, double(std::fabs(got[i] - first[i])));
        const bool ok = err <= tol && std::isfinite(err);
        all_ok = all_ok && ok;
        const double us = time_us(nbuf, v.call, s, reps, 3, graph);
        const double bytes = double(ny + nw + (with_plus ? 2 : 1) * no) * 4.0;
        std::printf("%6lld %3d %6lld  %-18s %10.2e %10.2e %5s %5d %10.2f %9.1f\n", (long long)T, k, (long long)D,
                    v.name, err, maxdiff, ok ? "yes" : "NO", nbuf, us, bytes / (us * 1e3));
      }
      SBX_CHECK(cudaFree(y));
      SBX_CHECK(cudaFree(w));
      SBX_CHECK(cudaFree(plus));
      SBX_CHECK(cudaFree(out));
    }
  }
  std::printf("\n%s (tolerance: relative L2 %.0e)\n", all_ok ? "ALL CHECKS PASS" : "SOME CHECKS FAILED", tol);
  return all_ok ? 0 : 1;
}
