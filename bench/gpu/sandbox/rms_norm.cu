// Sandbox: RMSNorm and the residual add + RMSNorm (src/backend/cuda/rms_norm.cu).
//
// Compares, on T rows of width D (F32 activations, BF16 norm weight, eps 1e-6):
//   rms_norm      two-pass  the kernel before the batch-1 decode rework (MOE_CUDA_LEGACY=norm): one block per row,
//                           a strided loop for the sum of squares, then a second strided loop over the row
//                           (production keeps it as the fallback for D % 4 != 0 or D > 8192), copied below;
//                 one-pass  production moe::cuda::rms_norm: the row's float4s and weights loaded into
//                           registers in one round before the reduction.
//   add_rms_norm  add+norm  the legacy h += y as a separate add kernel (float4), then the two-pass norm, copied;
//                 fused     production moe::cuda::add_rms_norm: h = h + y, stored, and normalised in one pass.
// All launches carry the programmatic-dependent-launch attribute, as production's launch() does by default.
// Check: every variant against a float64 host reference on random non-zero inputs (out, and h for the add);
// relative L2 tolerance 1e-5 (F32 sums of <= 8192 squares over 256 partials and rsqrtf: ~1e-7 expected).
// Timing: cudaEvents, median of --reps cycles, each cycle one call per input copy, with enough copies to move
// >= --rotate-mb (200) MB per cycle, so nothing is served from the 50 MB L2; the cycle is captured once as a CUDA
// graph and replayed, as decode steps are (--eager: stream launches, host launch cost included).
// GB/s counts the bytes the op must move (rms_norm: read x + write out; add_rms_norm: read h, y + write h, out;
// + the weight), so the two-kernel legacy path shows its extra traffic as a lower rate.
//
// Sizes (defaults): --tokens 1,64,4096 (decode batch 1 and 64, a 4096-token prefill), --hidden 2048,7168
// (Moonlight-16B, DeepSeek-V3). Run: build-cuda/bench/gpu/sandbox/sandbox_rms_norm [--tokens 1,64] [--hidden 2048]
//   [--reps 20] [--rotate-mb 200] [--eager]
//
// Results so far (bench/RESULTS.md at commit 9594e3e, runs C/D: H100, Moonlight BF16 random checkpoint, batch-1
// decode at context 512, whole model): new kernels 209.7-211.9 tok/s (run C), 205.6-207.9 (run D);
// MOE_CUDA_LEGACY=norm 191.2 (C) / 197.2 (D). ncu of a decode step (commit 4507228): RMSNorm 0.23 ms of 5.53 ms.
#include "common.cuh"

using namespace sbx;

namespace {

constexpr int kThreads = 256;

// ---- legacy, copied from src/backend/cuda/rms_norm.cu (rms_norm_kernel) and elementwise.cu (add_kernel) --------
__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const float* x, moe::cuda::WeightRef w, float eps, int64_t D, float* out) {
  pdl_trigger();
  pdl_wait();
  const float* xt = x + blockIdx.x * D;
  float* ot = out + blockIdx.x * D;
  float ss = 0.0f;
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x) ss += xt[i] * xt[i];
  const float total = block_sum(ss);
  const float inv = rsqrtf(total / float(D) + eps);
  for (int64_t i = threadIdx.x; i < D; i += blockDim.x)
    ot[i] = load_element(w.data, w.dtype, i) * (xt[i] * inv);
}

__global__ void add_kernel(const float* a, const float* b, float* out, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = (blockIdx.x * int64_t(blockDim.x) + threadIdx.x) * 4;
  if (i + 4 <= n) {
    const float4 x = *reinterpret_cast<const float4*>(a + i), y = *reinterpret_cast<const float4*>(b + i);
    *reinterpret_cast<float4*>(out + i) = make_float4(x.x + y.x, x.y + y.y, x.z + y.z, x.w + y.w);
  } else {
    for (int64_t j = i; j < n; ++j) out[j] = a[j] + b[j];
  }
}

void legacy_rms_norm(const float* x, const moe::cuda::WeightRef& w, float eps, int64_t T, int64_t D, float* out,
                     cudaStream_t s) {
  launch(true, rms_norm_kernel, unsigned(T), kThreads, 0, s, x, w, eps, D, out);
}
void legacy_add_rms_norm(float* h, const float* y, const moe::cuda::WeightRef& w, float eps, int64_t T, int64_t D,
                         float* out, cudaStream_t s) {
  const int64_t n = T * D;
  launch(true, add_kernel, blocks_for((n + 3) / 4, 256), 256, 0, s, h, y, h, n);
  legacy_rms_norm(h, w, eps, T, D, out, s);
}

// ---- host reference ------------------------------------------------------------------------------------------
void ref_rms_norm(const float* x, const std::vector<uint16_t>& w, double eps, int64_t T, int64_t D, double* out) {
  for (int64_t t = 0; t < T; ++t) {
    double ss = 0.0;
    for (int64_t d = 0; d < D; ++d) ss += double(x[t * D + d]) * x[t * D + d];
    const double inv = 1.0 / std::sqrt(ss / double(D) + eps);
    for (int64_t d = 0; d < D; ++d) out[t * D + d] = double(bf2f(w[size_t(d)])) * x[t * D + d] * inv;
  }
}

}  // namespace

int main(int argc, char** argv) {
  const Args a{argc, argv};
  const auto Ts = a.list("tokens", {1, 64, 4096});
  const auto Ds = a.list("hidden", {2048, 7168});
  const int reps = int(a.i64("reps", 20));
  const bool graph = !a.has("eager");
  const float eps = 1e-6f;
  const double tol = 1e-5;
  print_device();
  std::printf("timing: %s\n", graph ? "each cycle of calls replayed from a CUDA graph (--eager: stream launches)"
                                      : "stream launches");
  cudaStream_t s;
  SBX_CHECK(cudaStreamCreate(&s));  // blocking: ordered after the setup copies on the default stream

  std::printf("\n%-13s %6s %6s  %-26s %10s %5s %5s %10s %9s\n", "op", "T", "D", "variant", "rel_L2", "ok", "bufs",
              "us", "GB/s");
  bool all_ok = true;
  for (int64_t D : Ds) {
    for (int64_t T : Ts) {
      const size_t n = size_t(T * D);
      const int nbuf = rotation(3 * n * sizeof(float), a);
      // Input set 0 random; the other copies duplicate it (same values, different addresses).
      std::vector<float> hx(n), hy(n), hwf(static_cast<size_t>(D));
      fill_uniform(hx, -2.0f, 2.0f, 1 + uint64_t(T * D));
      fill_uniform(hy, -1.0f, 1.0f, 2 + uint64_t(T * D));
      fill_uniform(hwf, 0.5f, 1.5f, 3);
      const std::vector<uint16_t> hw = to_bf16(hwf);
      float* x = dalloc<float>(n * nbuf);  // x for rms_norm; h (in place) for add_rms_norm
      float* y = dalloc<float>(n * nbuf);
      float* out = dalloc<float>(n * nbuf);
      uint16_t* wd = dupload(hw);
      auto reset = [&] {
        for (int b = 0; b < nbuf; ++b) {
          SBX_CHECK(cudaMemcpy(x + b * n, hx.data(), n * 4, cudaMemcpyHostToDevice));
          SBX_CHECK(cudaMemcpy(y + b * n, hy.data(), n * 4, cudaMemcpyHostToDevice));
        }
      };
      reset();
      moe::cuda::WeightRef w;
      w.data = wd;
      w.dtype = moe::DType::BF16;
      w.rows = 1;
      w.cols = D;

      std::vector<double> ref(n), ref_h(n);
      ref_rms_norm(hx.data(), hw, eps, T, D, ref.data());
      std::vector<float> hsum(n);
      for (size_t i = 0; i < n; ++i) {
        hsum[i] = hx[i] + hy[i];  // F32, as both kernels form it
        ref_h[i] = double(hx[i]) + double(hy[i]);
      }
      std::vector<double> ref_add(n);
      ref_rms_norm(hsum.data(), hw, eps, T, D, ref_add.data());

      struct Variant {
        const char* op;
        const char* name;
        bool add;
        std::function<void(int)> call;
      };
      std::vector<Variant> vs = {
          {"rms_norm", "two-pass (legacy)", false,
           [&](int b) { legacy_rms_norm(x + b * n, w, eps, T, D, out + b * n, s); }},
          {"rms_norm", "one-pass vec (production)", false,
           [&](int b) { moe::cuda::rms_norm(x + b * n, w, eps, T, D, out + b * n, s); }},
          {"add_rms_norm", "add + two-pass (legacy)", true,
           [&](int b) { legacy_add_rms_norm(x + b * n, y + b * n, w, eps, T, D, out + b * n, s); }},
          {"add_rms_norm", "fused one-pass (production)", true,
           [&](int b) { moe::cuda::add_rms_norm(x + b * n, y + b * n, w, eps, T, D, out + b * n, s); }},
      };
      for (const Variant& v : vs) {
        reset();
        SBX_CHECK(cudaMemset(out, 0, n * 4));
        v.call(0);
        SBX_CHECK(cudaStreamSynchronize(s));
        const std::vector<float> got = ddownload(out, n);
        double err = rel_l2(got.data(), v.add ? ref_add.data() : ref.data(), n);
        if (v.add) err = std::max(err, rel_l2(ddownload(x, n).data(), ref_h.data(), n));
        const bool ok = err <= tol && std::isfinite(err);
        all_ok = all_ok && ok;
        const double us = time_us(nbuf, v.call, s, reps, 3, graph);
        const double bytes = double(n) * 4.0 * (v.add ? 4.0 : 2.0) + double(D) * 2.0;
        std::printf("%-13s %6lld %6lld  %-26s %10.2e %5s %5d %10.2f %9.1f\n", v.op, (long long)T, (long long)D,
                    v.name, err, ok ? "yes" : "NO", nbuf, us, bytes / (us * 1e3));
      }
      SBX_CHECK(cudaFree(x));
      SBX_CHECK(cudaFree(y));
      SBX_CHECK(cudaFree(out));
      SBX_CHECK(cudaFree(wd));
    }
  }
  std::printf("\n%s (tolerance: relative L2 %.0e)\n", all_ok ? "ALL CHECKS PASS" : "SOME CHECKS FAILED", tol);
  return all_ok ? 0 : 1;
}
