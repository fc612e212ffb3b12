// Sandbox: the routed experts of prefill (BF16 experts, bf16 precision mode), the op
//   y[t * k + j] = W_down[e] (silu(W_gate[e] x_t) * (W_up[e] x_t)),   e = ids[t * k + j]
// with y left in assignment order for the combine (not included: see moe_combine.cu).
// Compares:
//   cublas   the per-expert path (MOE_CUDA_MOE_GEMM=cublas; CudaBackend::moe_expert_gemms_cublas in
//            src/backend/cuda/cuda_backend_moe.cpp), copied below: moe_plan, the expert counts copied to the host
//            (a stream sync), x rows gathered into expert order as BF16, one cuBLAS GEMM (BF16 in, F32 out) per
//            active expert for gate, then for up, silu_mul in F32, BF16 cast, one GEMM per expert for down, rows
//            scattered back to assignment order;
//   grouped  production (CudaBackend::moe_expert_gemms, cuda_backend_prefill.cpp): moe_plan with 128-row work
//            items, x cast to BF16, then two moe::cuda::grouped_gemm launches (wgmma): gate+up with the token rows
//            gathered in the kernel and SwiGLU in the epilogue (h BF16), down with rows scattered in the epilogue.
//            No host synchronisation.
// Both include moe_plan (production runs it for either path). Split precision (MOE_CUDA_PREFILL=split) and FP8
// experts are not covered.
// Check: y rows of --check-tokens tokens (evenly spaced, all k slots) against a float64 host reference on the
// BF16-rounded x and the BF16 weights (random uniform, non-zero; weights scaled 1/sqrt(fan-in)); relative L2
// tolerance 1e-2: both variants round h = silu(g) * u to BF16 (2^-9 relative per element, ~1e-3 over a row) and
// accumulate in F32, so ~1e-3 is expected; a layout or indexing bug gives O(1).
// Timing: cudaEvents around the whole op (so the cuBLAS path's host sync and launch gaps count), median of --reps;
// two copies of x rotate; the weights (E * 3 * D * I * 2 bytes, 1.1 GB at the defaults) never fit the 50 MB L2.
// TFLOP/s = 6 * T * k * D * I (useful multiply-adds x 2) over the time.
//
// Sizes (defaults: Moonlight-16B): --tokens 4096 --hidden 2048 --inner 1408 --experts 64 --topk 6, uniform
// random routing (k distinct experts per token). Run:
//   build-cuda/bench/gpu/sandbox/sandbox_moe_experts_prefill [--tokens 4096] [--reps 10] [--check-tokens 64]
//
// Results so far (bench/RESULTS.md and bench/gpu/NOTES-prefill.md, run P, H100, commit ecff7ba, whole-model
// prefill of 4096 tokens, Moonlight BF16 random checkpoint, 26 MoE layers): grouped (default) 0.066-0.068 s =
// 40.0-40.6 % of the GEMM rate; MOE_CUDA_MOE_GEMM=cublas 0.111 s = 26.6 %. The routed experts are 11.06 of the
// 20.70 model TFLOP, so the ~44 ms difference is ~1.7 ms per layer.
#include "backend/cuda/gemm.h"
#include "common.cuh"

using namespace sbx;

namespace {

// ---- legacy, copied from src/backend/cuda/elementwise.cu (silu_mul), moe_plan.cu
// (moe_gather_bf16, moe_scatter_rows) and cuda_backend_moe.cpp (moe_expert_gemms_cublas, non-split part); the
// cuBLAS call is production's moe::cuda::gemm_bf16 (gemm.h: BF16 in, F32 out, F32 compute) -----------------------
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

__global__ void gather_bf16_kernel(const float* x, const int32_t* perm, int32_t k, int64_t D, uint16_t* xp) {
  const int64_t i = blockIdx.y;
  const float* src = x + int64_t(perm[i] / k) * D;
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x)
    xp[i * D + d] = float_to_bf16_bits(src[d]);
}
__global__ void scatter_rows_kernel(const float* yp, const int32_t* perm, int64_t D, float* y) {
  const int64_t i = blockIdx.y;
  float* dst = y + int64_t(perm[i]) * D;
  for (int64_t d = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; d < D; d += int64_t(gridDim.x) * blockDim.x)
    dst[d] = yp[i * D + d];
}
unsigned col_blocks(int64_t D) { return unsigned(std::min<int64_t>((D + 255) / 256, 32)); }

struct Problem {
  int64_t T, D, I, TK;
  int32_t E, k;
  const int32_t* ids;
  const uint16_t* const* hw;  // host array [E * 3]: expert e's gate, up ([I, D]) and down ([D, I]) on the device
  const void* const* dtable;  // the same as a device table [E * 6] (slots 3..5 null), production's layout
  float* y;                   // [TK, D]
};

struct CublasScratch {
  int32_t *perm, *items, *counts;
  uint16_t *xp, *hb;
  float *g, *u, *yp;
  std::vector<int32_t> c;
};

void experts_cublas(const Problem& p, const float* x, CublasScratch& w, cublasHandle_t h, cudaStream_t s) {
  const int64_t D = p.D, I = p.I, TK = p.TK;
  moe::cuda::moe_plan(p.ids, TK, p.E, 1 << 20, 1, w.perm, w.items, w.counts, s);
  SBX_CHECK(cudaMemcpyAsync(w.c.data(), w.counts, size_t(p.E) * 4, cudaMemcpyDeviceToHost, s));
  SBX_CHECK(cudaStreamSynchronize(s));
  gather_bf16_kernel<<<dim3(col_blocks(D), unsigned(TK)), 256, 0, s>>>(x, w.perm, p.k, D, w.xp);
  std::vector<int64_t> offs(size_t(p.E) + 1, 0);
  for (int32_t e = 0; e < p.E; ++e) offs[size_t(e) + 1] = offs[size_t(e)] + w.c[size_t(e)];
  // out = x W^T per active expert, for gate, then up, then (after SwiGLU) down, as production's project().
  auto project = [&](int j, const uint16_t* in, float* out, int64_t N, int64_t K) {
    for (int32_t e = 0; e < p.E; ++e) {
      const int m = w.c[size_t(e)];
      if (m == 0) continue;
      const int64_t o = offs[size_t(e)];
      moe::cuda::gemm_bf16(h, in + o * K, p.hw[size_t(e) * 3 + size_t(j)], out + o * N, m, N, K);
    }
  };
  project(0, w.xp, w.g, I, D);
  project(1, w.xp, w.u, I, D);
  silu_mul(w.g, w.u, w.g, TK * I, s);
  moe::cuda::f32_to_bf16(w.g, w.hb, TK * I, s);
  project(2, w.hb, w.yp, D, I);
  scatter_rows_kernel<<<dim3(col_blocks(D), unsigned(TK)), 256, 0, s>>>(w.yp, w.perm, D, p.y);
  SBX_CHECK(cudaGetLastError());
}

// ---- production: CudaBackend::moe_expert_gemms (BF16, non-split), through the production launchers ------------
struct GroupedScratch {
  int32_t *perm, *items, *counts;
  int64_t max_items;
  uint16_t *xb, *hb;
};

void experts_grouped(const Problem& p, const float* x, GroupedScratch& w, cudaStream_t s) {
  const int64_t D = p.D, I = p.I, TK = p.TK;
  const int tile = moe::cuda::kGroupedRows;
  moe::cuda::moe_plan(p.ids, TK, p.E, tile, int32_t(w.max_items), w.perm, w.items, w.counts, s);
  moe::cuda::f32_to_bf16(x, w.xb, p.T * D, s);
  moe::cuda::GroupedGemmParams up;
  up.items = w.items;
  up.a_rows = w.perm;
  up.a_div = p.k;
  up.lda = D;
  up.K = int32_t(D);
  up.N = int32_t(I);
  up.swiglu = true;
  up.h = w.hb;
  up.ldh = I;
  up.a[0] = w.xb;
  up.bmat[0][0] = 0;
  up.bmat[0][1] = 1;
  up.wtab = p.dtable;
  moe::cuda::GroupedGemmParams down;
  down.items = w.items;
  down.lda = I;
  down.K = int32_t(I);
  down.N = int32_t(D);
  down.y = p.y;
  down.y_rows = w.perm;
  down.ldy = D;
  down.a[0] = w.hb;
  down.bmat[0][0] = 2;
  down.wtab = p.dtable;
  moe::cuda::grouped_gemm(up, int32_t(w.max_items), s);
  moe::cuda::grouped_gemm(down, int32_t(w.max_items), s);
}

}  // namespace

int main(int argc, char** argv) {
  const Args a{argc, argv};
  Problem p{};
  p.T = a.i64("tokens", 4096);
  p.D = a.i64("hidden", 2048);
  p.I = a.i64("inner", 1408);
  p.E = int32_t(a.i64("experts", 64));
  p.k = int32_t(a.i64("topk", 6));
  p.TK = p.T * p.k;
  const int reps = int(a.i64("reps", 10));
  const int64_t ncheck = std::min<int64_t>(p.T, a.i64("check-tokens", 64));
  const double tol = 1e-2;
  const int64_t D = p.D, I = p.I, T = p.T, TK = p.TK;
  if (p.k > p.E || D % 8 || I % 8) {
    std::fprintf(stderr, "need topk <= experts and hidden, inner multiples of 8\n");
    return 2;
  }
  print_device();
  // The grouped GEMM's shared memory above 48 KB is a per-device attribute that a CudaContext sets when the
  // backend is made; these programs call the launcher without one.
  moe::cuda::configure_grouped_gemm_kernels();
  std::printf("routed experts: T %lld, hidden %lld, inner %lld, %d experts, top-%d (BF16 weights %.2f GB)\n",
              (long long)T, (long long)D, (long long)I, p.E, p.k, double(p.E) * 3 * D * I * 2 / 1e9);
  cudaStream_t s;
  SBX_CHECK(cudaStreamCreate(&s));  // blocking: ordered after the setup copies on the default stream
  cublasHandle_t handle;
  check_cublas(cublasCreate(&handle), "cublasCreate");
  check_cublas(cublasSetStream(handle, s), "cublasSetStream");

  // Weights: one block, expert e's gate, up, down at (3e + j) * D * I.
  const size_t mat = size_t(D * I);
  uint16_t* wall = dalloc<uint16_t>(size_t(p.E) * 3 * mat);
  for (int64_t e = 0; e < p.E; ++e)
    for (int j = 0; j < 3; ++j)
      dfill_bf16(wall + (size_t(e) * 3 + j) * mat, mat, 100 + 3 * e + j, 1.0f / std::sqrt(float(j < 2 ? D : I)));
  std::vector<const uint16_t*> hw(size_t(p.E) * 3);
  std::vector<const void*> table(size_t(p.E) * 6, nullptr);
  for (int64_t e = 0; e < p.E; ++e)
    for (int j = 0; j < 3; ++j) {
      hw[size_t(e) * 3 + j] = wall + (size_t(e) * 3 + j) * mat;
      table[size_t(e) * 6 + j] = hw[size_t(e) * 3 + j];
    }
  p.hw = hw.data();
  const void** dtable = dalloc<const void*>(table.size());
  SBX_CHECK(cudaMemcpy(dtable, table.data(), table.size() * sizeof(void*), cudaMemcpyHostToDevice));
  p.dtable = dtable;

  // Routing: k distinct uniform experts per token.
  std::vector<int32_t> ids(static_cast<size_t>(TK));
  {
    std::mt19937 g(7);
    std::vector<int32_t> all(static_cast<size_t>(p.E));
    for (int32_t e = 0; e < p.E; ++e) all[size_t(e)] = e;
    for (int64_t t = 0; t < T; ++t) {
      for (int j = 0; j < p.k; ++j) std::swap(all[size_t(j)], all[size_t(j) + g() % size_t(p.E - j)]);
      for (int j = 0; j < p.k; ++j) ids[size_t(t * p.k + j)] = all[size_t(j)];
    }
  }
  p.ids = dupload(ids);
  const int nbuf = rotation(size_t(T * D) * 4, a, 8);
  float* x = dalloc<float>(size_t(T * D) * nbuf);
  dfill_f32(x, size_t(T * D), 1, 1.0f);
  for (int b = 1; b < nbuf; ++b) SBX_CHECK(cudaMemcpy(x + b * T * D, x, size_t(T * D) * 4, cudaMemcpyDeviceToDevice));
  p.y = dalloc<float>(size_t(TK * D));

  CublasScratch cs{};
  cs.perm = dalloc<int32_t>(size_t(TK));
  cs.items = dalloc<int32_t>(3);
  cs.counts = dalloc<int32_t>(size_t(p.E));
  cs.xp = dalloc<uint16_t>(size_t(TK * D));
  cs.hb = dalloc<uint16_t>(size_t(TK * I));
  cs.g = dalloc<float>(size_t(TK * I));
  cs.u = dalloc<float>(size_t(TK * I));
  cs.yp = dalloc<float>(size_t(TK * D));
  cs.c.resize(size_t(p.E));
  GroupedScratch gs{};
  gs.max_items = std::min<int64_t>(p.E, TK) + (TK + moe::cuda::kGroupedRows - 1) / moe::cuda::kGroupedRows;
  gs.perm = dalloc<int32_t>(size_t(TK));
  gs.items = dalloc<int32_t>(size_t(gs.max_items) * 3);
  gs.counts = dalloc<int32_t>(size_t(p.E));
  gs.xb = dalloc<uint16_t>(size_t(T * D));
  gs.hb = dalloc<uint16_t>(size_t(TK * I));

  // Host copies for the reference: x rounded to BF16 as both variants do, the weights as stored.
  const std::vector<float> hx = ddownload(x, size_t(T * D));
  const std::vector<uint16_t> hwall = ddownload(wall, size_t(p.E) * 3 * mat);
  std::vector<int64_t> check_t(static_cast<size_t>(ncheck));
  for (int64_t i = 0; i < ncheck; ++i) check_t[size_t(i)] = (i * T) / ncheck + (i % 7);
  for (auto& t : check_t) t = std::min(t, T - 1);
  std::vector<double> ref(static_cast<size_t>(ncheck * p.k * D));
  parallel_for(ncheck * p.k, [&](int64_t r) {
    const int64_t t = check_t[size_t(r / p.k)];
    const int32_t e = ids[size_t(t * p.k + r % p.k)];
    std::vector<double> xb(static_cast<size_t>(D)), hh(static_cast<size_t>(I));
    for (int64_t d = 0; d < D; ++d) xb[size_t(d)] = bf2f(f2bf(hx[size_t(t * D + d)]));
    const uint16_t* wg = hwall.data() + (size_t(e) * 3 + 0) * mat;
    const uint16_t* wu = hwall.data() + (size_t(e) * 3 + 1) * mat;
    const uint16_t* wd = hwall.data() + (size_t(e) * 3 + 2) * mat;
    for (int64_t n = 0; n < I; ++n) {
      double g = 0.0, u = 0.0;
      for (int64_t d = 0; d < D; ++d) {
        g += xb[size_t(d)] * bf2f(wg[n * D + d]);
        u += xb[size_t(d)] * bf2f(wu[n * D + d]);
      }
      hh[size_t(n)] = silu(g) * u;
    }
    for (int64_t d = 0; d < D; ++d) {
      double acc = 0.0;
      for (int64_t n = 0; n < I; ++n) acc += hh[size_t(n)] * bf2f(wd[d * I + n]);
      ref[size_t(r * D + d)] = acc;
    }
  });

  struct Variant {
    const char* name;
    std::function<void(int)> call;
  };
  const std::vector<Variant> vs = {
      {"cublas per expert (legacy)", [&](int b) { experts_cublas(p, x + b * T * D, cs, handle, s); }},
      {"grouped wgmma (production)", [&](int b) { experts_grouped(p, x + b * T * D, gs, s); }},
  };
  const double flops = 6.0 * double(TK) * double(D) * double(I);
  std::printf("\n%-28s %10s %5s %10s %10s\n", "variant", "rel_L2", "ok", "ms", "TFLOP/s");
  bool all_ok = true;
  for (const Variant& v : vs) {
    SBX_CHECK(cudaMemset(p.y, 0, size_t(TK * D) * 4));
    v.call(0);
    SBX_CHECK(cudaStreamSynchronize(s));
    const std::vector<float> y = ddownload(p.y, size_t(TK * D));
    std::vector<float> got(ref.size());
    for (int64_t r = 0; r < ncheck * p.k; ++r) {
      const int64_t row = check_t[size_t(r / p.k)] * p.k + r % p.k;
      std::copy(y.begin() + row * D, y.begin() + (row + 1) * D, got.begin() + r * D);
    }
    const double err = rel_l2(got.data(), ref.data(), ref.size());
    const bool ok = err <= tol && std::isfinite(err);
    all_ok = all_ok && ok;
    const double us = time_us(nbuf, v.call, s, reps, 2);
    std::printf("%-28s %10.2e %5s %10.3f %10.1f\n", v.name, err, ok ? "yes" : "NO", us / 1e3, flops / (us * 1e6));
  }
  std::printf("\n%s (tolerance: relative L2 %.0e over %lld tokens x %d slots)\n",
              all_ok ? "ALL CHECKS PASS" : "SOME CHECKS FAILED", tol, (long long)ncheck, p.k);
  check_cublas(cublasDestroy(handle), "cublasDestroy");
  return all_ok ? 0 : 1;
}
