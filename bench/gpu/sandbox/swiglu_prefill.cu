// Sandbox: the dense SwiGLU MLP for many tokens (shared experts, the dense first layer; BF16 weights, bf16
// precision mode):  out = W_down (silu(W_gate x) * (W_up x)),  x [T, D] F32, out [T, D] F32.
// Compares (CudaBackend::swiglu_gemm, src/backend/cuda/cuda_backend_prefill.cpp):
//   cublas  the earlier path (MOE_CUDA_PREFILL_KERNELS=0), copied below: gemm(x, gate) and gemm(x, up), each a
//           BF16 cast of x (twice, as production did) and a cuBLAS GEMM with F32 output, then silu_mul in F32, a
//           BF16 cast of h, and the down GEMM on cuBLAS;
//   fused   production: one BF16 cast of x, gate + up in one moe::cuda::grouped_gemm launch (one "expert" over all
//           rows, wgmma) with SwiGLU in the epilogue (h written once, BF16: no F32 g/u round trip, no silu_mul
//           pass), then the same cuBLAS down GEMM.
// The cuBLAS GEMMs and BF16 casts are production's launchers (moe::cuda::gemm_bf16, f32_to_bf16); the legacy
// silu_mul kernel is copied. Split precision (MOE_CUDA_PREFILL=split) and FP8 weights are not covered.
// Check: out rows of --check-tokens tokens (evenly spaced) against a float64 host reference on the BF16-rounded x
// and the BF16 weights (random uniform, non-zero; scaled 1/sqrt(fan-in)); relative L2 tolerance 1e-2: both
// variants round h to BF16 (2^-9 relative per element) and accumulate in F32, ~1e-3 expected.
// Timing: cudaEvents around the whole MLP, median of --reps; copies of x rotate (>= --rotate-mb per cycle, at most
// 8); the weights (3 * D * I * 2 bytes) are re-read from HBM or L2 as production would. TFLOP/s = 6 * T * D * I.
//
// Sizes (defaults): --tokens 4096, (hidden, inner) pairs --hidden 2048,2048,7168 --inner 2816,11264,18432
// (Moonlight-16B's two shared experts, Moonlight's dense layer 0, DeepSeek-V3's dense layers). Run:
//   build-cuda/bench/gpu/sandbox/sandbox_swiglu_prefill [--tokens 4096] [--hidden 2048 --inner 2816] [--reps 10]
//
// Results so far: whole-model only (bench/gpu/NOTES-prefill.md, run P, H100, ecff7ba, Moonlight BF16 prefill of
// 4096 tokens): MOE_CUDA_PREFILL_KERNELS=0 (which also switches the routed experts to per-expert cuBLAS and MLA to
// the absorbed form) 0.242 s = 11.2 % of the GEMM rate vs 0.066-0.068 s = 40.0-40.6 % with the kernels; the dense
// SwiGLU part alone was not measured separately (shared + dense = 4.26 of 20.70 model TFLOP).
#include "backend/cuda/gemm.h"
#include "common.cuh"

using namespace sbx;

namespace {

// ---- legacy, copied from src/backend/cuda/elementwise.cu (silu_mul) and cuda_backend_prefill.cpp (the
// non-fused branch of CudaBackend::swiglu_gemm, CudaBackend::gemm in bf16 mode) -----------------------------------
__global__ void silu_mul_kernel(const float* g, const float* u, float* out, int64_t n) {
  pdl_trigger();
  pdl_wait();
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i < n) out[i] = g[i] / (1.0f + __expf(-g[i])) * u[i];
}
void silu_mul(const float* g, const float* u, float* out, int64_t n, cudaStream_t s) {
  if (n == 0) return;
  launch(true, silu_mul_kernel, blocks_for(n, 256), 256, 0, s, g, u, out, n);
}

struct Mlp {
  int64_t T, D, I;
  const uint16_t *wg, *wu, *wd;  // [I, D], [I, D], [D, I] BF16
};
struct Scratch {
  uint16_t* xb;  // [T, max(D, I)] BF16 cast of a GEMM input
  float *g, *u;  // [T, I]
  uint16_t* hb;  // [T, I]
};

// CudaBackend::gemm (bf16 mode): out = bf16(x) W^T on cuBLAS, F32 out.
void gemm(cublasHandle_t h, const float* x, const uint16_t* w, float* out, int64_t T, int64_t N, int64_t K,
          uint16_t* xb, cudaStream_t s) {
  moe::cuda::f32_to_bf16(x, xb, T * K, s);
  moe::cuda::gemm_bf16(h, xb, w, out, T, N, K);
}

void swiglu_cublas(const Mlp& m, const float* x, float* out, Scratch& w, cublasHandle_t h, cudaStream_t s) {
  gemm(h, x, m.wg, w.g, m.T, m.I, m.D, w.xb, s);
  gemm(h, x, m.wu, w.u, m.T, m.I, m.D, w.xb, s);
  silu_mul(w.g, w.u, w.g, m.T * m.I, s);
  gemm(h, w.g, m.wd, out, m.T, m.D, m.I, w.xb, s);
}

// ---- production: the fused branch of CudaBackend::swiglu_gemm (BF16 weights, non-split) -----------------------
void swiglu_fused(const Mlp& m, const float* x, float* out, Scratch& w, cublasHandle_t h, cudaStream_t s) {
  moe::cuda::f32_to_bf16(x, w.xb, m.T * m.D, s);
  moe::cuda::GroupedGemmParams p;
  p.wdirect[0] = m.wg;
  p.wdirect[1] = m.wu;
  p.M = int32_t(m.T);
  p.K = int32_t(m.D);
  p.N = int32_t(m.I);
  p.lda = m.D;
  p.swiglu = true;
  p.a[0] = w.xb;
  p.bmat[0][0] = 0;
  p.bmat[0][1] = 1;
  p.h = w.hb;
  p.ldh = m.I;
  moe::cuda::grouped_gemm(p, int32_t((m.T + moe::cuda::kGroupedRows - 1) / moe::cuda::kGroupedRows), s);
  moe::cuda::gemm_bf16(h, w.hb, m.wd, out, m.T, m.D, m.I);
}

}  // namespace

int main(int argc, char** argv) {
  const Args a{argc, argv};
  const int64_t T = a.i64("tokens", 4096);
  const auto Ds = a.list("hidden", {2048, 2048, 7168});
  const auto Is = a.list("inner", {2816, 11264, 18432});
  const int reps = int(a.i64("reps", 10));
  const int64_t ncheck = std::min<int64_t>(T, a.i64("check-tokens", 32));
  const double tol = 1e-2;
  if (Ds.size() != Is.size()) {
    std::fprintf(stderr, "--hidden and --inner take lists of the same length (pairs)\n");
    return 2;
  }
  print_device();
  // The grouped GEMM's shared memory above 48 KB is a per-device attribute that a CudaContext sets when the
  // backend is made; these programs call the launcher without one.
  moe::cuda::configure_grouped_gemm_kernels();
  cudaStream_t s;
  SBX_CHECK(cudaStreamCreate(&s));  // blocking: ordered after the setup copies on the default stream
  cublasHandle_t handle;
  check_cublas(cublasCreate(&handle), "cublasCreate");
  check_cublas(cublasSetStream(handle, s), "cublasSetStream");
  std::printf("\n%6s %6s %6s  %-26s %10s %5s %10s %10s\n", "T", "D", "I", "variant", "rel_L2", "ok", "ms", "TFLOP/s");
  bool all_ok = true;
  for (size_t c = 0; c < Ds.size(); ++c) {
    const int64_t D = Ds[c], I = Is[c];
    if (D % 8 || I % 8) {
      std::fprintf(stderr, "hidden and inner must be multiples of 8\n");
      return 2;
    }
    Mlp m{T, D, I, nullptr, nullptr, nullptr};
    const size_t mat = size_t(D * I);
    uint16_t* wall = dalloc<uint16_t>(3 * mat);
    dfill_bf16(wall, mat, 200 + 3 * c, 1.0f / std::sqrt(float(D)));
    dfill_bf16(wall + mat, mat, 201 + 3 * c, 1.0f / std::sqrt(float(D)));
    dfill_bf16(wall + 2 * mat, mat, 202 + 3 * c, 1.0f / std::sqrt(float(I)));
    m.wg = wall;
    m.wu = wall + mat;
    m.wd = wall + 2 * mat;
    const int nbuf = rotation(size_t(T * D) * 4, a, 8);
    float* x = dalloc<float>(size_t(T * D) * nbuf);
    dfill_f32(x, size_t(T * D), 20 + c, 1.0f);
    for (int b = 1; b < nbuf; ++b)
      SBX_CHECK(cudaMemcpy(x + b * T * D, x, size_t(T * D) * 4, cudaMemcpyDeviceToDevice));
    float* out = dalloc<float>(size_t(T * D));
    Scratch w{};
    w.xb = dalloc<uint16_t>(size_t(T * std::max(D, I)));
    w.g = dalloc<float>(size_t(T * I));
    w.u = dalloc<float>(size_t(T * I));
    w.hb = dalloc<uint16_t>(size_t(T * I));

    const std::vector<float> hx = ddownload(x, size_t(T * D));
    const std::vector<uint16_t> hw = ddownload(wall, 3 * mat);
    std::vector<int64_t> check_t(static_cast<size_t>(ncheck));
    for (int64_t i = 0; i < ncheck; ++i) check_t[size_t(i)] = std::min(T - 1, (i * T) / ncheck + (i % 5));
    std::vector<double> ref(static_cast<size_t>(ncheck * D));
    parallel_for(ncheck, [&](int64_t r) {
      const int64_t t = check_t[size_t(r)];
      std::vector<double> xb(static_cast<size_t>(D)), hh(static_cast<size_t>(I));
      for (int64_t d = 0; d < D; ++d) xb[size_t(d)] = bf2f(f2bf(hx[size_t(t * D + d)]));
      for (int64_t n = 0; n < I; ++n) {
        double g = 0.0, u = 0.0;
        for (int64_t d = 0; d < D; ++d) {
          g += xb[size_t(d)] * bf2f(hw[size_t(n * D + d)]);
          u += xb[size_t(d)] * bf2f(hw[mat + size_t(n * D + d)]);
        }
        hh[size_t(n)] = silu(g) * u;
      }
      for (int64_t d = 0; d < D; ++d) {
        double acc = 0.0;
        for (int64_t n = 0; n < I; ++n) acc += hh[size_t(n)] * bf2f(hw[2 * mat + size_t(d * I + n)]);
        ref[size_t(r * D + d)] = acc;
      }
    });

    struct Variant {
      const char* name;
      std::function<void(int)> call;
    };
    const std::vector<Variant> vs = {
        {"cublas + silu_mul (legacy)", [&](int b) { swiglu_cublas(m, x + b * T * D, out, w, handle, s); }},
        {"fused grouped (production)", [&](int b) { swiglu_fused(m, x + b * T * D, out, w, handle, s); }},
    };
    const double flops = 6.0 * double(T) * double(D) * double(I);
    for (const Variant& v : vs) {
      SBX_CHECK(cudaMemset(out, 0, size_t(T * D) * 4));
      v.call(0);
      SBX_CHECK(cudaStreamSynchronize(s));
      const std::vector<float> y = ddownload(out, size_t(T * D));
      std::vector<float> got(ref.size());
      for (int64_t r = 0; r < ncheck; ++r)
        std::copy(y.begin() + check_t[size_t(r)] * D, y.begin() + (check_t[size_t(r)] + 1) * D, got.begin() + r * D);
      const double err = rel_l2(got.data(), ref.data(), ref.size());
      const bool ok = err <= tol && std::isfinite(err);
      all_ok = all_ok && ok;
      const double us = time_us(nbuf, v.call, s, reps, 2);
      std::printf("%6lld %6lld %6lld  %-26s %10.2e %5s %10.3f %10.1f\n", (long long)T, (long long)D, (long long)I,
                  v.name, err, ok ? "yes" : "NO", us / 1e3, flops / (us * 1e6));
    }
    for (void* ptr : {(void*)wall, (void*)x, (void*)out, (void*)w.xb, (void*)w.g, (void*)w.u, (void*)w.hb})
      SBX_CHECK(cudaFree(ptr));
  }
  std::printf("\n%s (tolerance: relative L2 %.0e over %lld tokens)\n",
              all_ok ? "ALL CHECKS PASS" : "SOME CHECKS FAILED", tol, (long long)ncheck);
  check_cublas(cublasDestroy(handle), "cublasDestroy");
  return all_ok ? 0 : 1;
}
