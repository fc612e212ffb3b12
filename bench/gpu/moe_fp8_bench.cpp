// Routed experts of one MoE layer (Moonlight-16B-A3B shape by default: hidden 2048, inner 1408, 64 experts, top 6)
// on three paths, on the same random routing and data in one run (CUDA events, median of 20 after 3 warm-ups):
//   fp8 grouped:  the production W8A8 path (cuda_backend_moe_fp8.cpp): quantise x per token, one grouped
//                 gate+up launch with the SwiGLU epilogue, quantise h, one grouped down launch with the scatter
//                 (moe_gemm_fp8.cu), CTA rows as production picks them; "kernels" is the two grouped
//                 launches alone, with 128-row and with 64-row CTAs.
//   fp8 per-expert: the path it replaced, GEMMs only: per active expert three cuBLASLt block-scaled FP8 GEMMs
//                 (gate, up, down; rows padded to 4) over 4 streams. Its quantisers, silu_mul, scatter and the
//                 per-layer count read-back are not timed, so this is a lower bound for the old path.
//   bf16 grouped: the BF16 grouped kernel (moe_gemm.cu) on BF16 weights of the same shape (gate+up SwiGLU,
//                 down scatter), casts not timed.
// FLOPs = 6 T k D I (three projections of T k rows). The cuBLAS BF16 GEMM rate (8192^3) is measured in the same
// run; "of bf16 GEMM" is each path's TFLOP/s over it.
// Usage: bench_moe_fp8 [tokens ...] (default 4096 8 64 256) [--shape D,I,E,k]
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <memory>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/ceilings.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gemm_fp8.h"
#include "core/dtype.h"

using namespace moe;

namespace {

double median_ms(cudaStream_t s, const std::function<void()>& f) {
  for (int i = 0; i < 3; ++i) f();
  cudaEvent_t a, b;
  cudaEventCreate(&a);
  cudaEventCreate(&b);
  std::vector<double> t;
  for (int i = 0; i < 20; ++i) {
    cudaEventRecord(a, s);
    f();
    cudaEventRecord(b, s);
    cudaEventSynchronize(b);
    float ms = 0;
    cudaEventElapsedTime(&ms, a, b);
    t.push_back(ms);
  }
  cudaEventDestroy(a);
  cudaEventDestroy(b);
  std::sort(t.begin(), t.end());
  return t[t.size() / 2];
}

template <typename T>
T* upload(const std::vector<T>& h) {
  T* p = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(h.size(), 1) * sizeof(T)));
  MOE_CUDA_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}
template <typename T>
T* alloc(size_t n) {
  T* p = nullptr;
  MOE_CUDA_CHECK(cudaMalloc(&p, std::max<size_t>(n, 1) * sizeof(T)));
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  std::vector<int64_t> tokens;
  int64_t D = 2048, I = 1408, E = 64, k = 6;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--shape") == 0 && i + 1 < argc) {
      if (std::sscanf(argv[++i], "%ld,%ld,%ld,%ld", &D, &I, &E, &k) != 4) return 2;
    } else {
      tokens.push_back(std::atoll(argv[i]));
    }
  }
  if (tokens.empty()) tokens = {4096, 8, 64, 256};
  const int dev = 0;
  MOE_CUDA_CHECK(cudaSetDevice(dev));
  cudaStream_t s;
  MOE_CUDA_CHECK(cudaStreamCreate(&s));
  cuda::configure_grouped_gemm_kernels();
  cuda::configure_grouped_gemm_fp8_kernels();
  const double bf16_rate = cuda::measure_bf16_gemm_rate(dev, 8192);
  fmt::print("device {}; cuBLAS BF16 GEMM 8192^3: {:.0f} TFLOP/s\n", cuda::device_name(dev), bf16_rate / 1e12);
  fmt::print("shape: hidden {} inner {} experts {} top-{}\n", D, I, E, k);

  // Weights: FP8 (E4M3 + 128x128 scales, gate/up/down per expert) and BF16 copies of the same values.
  std::mt19937_64 rng(12345);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f), us(0.5f, 2.0f);
  const int64_t nbI = (I + 127) / 128, nbD = (D + 127) / 128, kbD = (D + 127) / 128, kbI = (I + 127) / 128;
  std::vector<uint8_t> wq(size_t(I * D));
  std::vector<uint16_t> wb(size_t(I * D));
  for (size_t i = 0; i < wq.size(); ++i) {
    wq[i] = float_to_e4m3(400.0f * u(rng));
    wb[i] = float_to_bf16(e4m3_to_float(wq[i]) / (400.0f * 45.0f));
  }
  std::vector<const void*> t8(size_t(E * 6)), t16(size_t(E * 6));
  std::vector<float> sgu(size_t(nbI * kbD)), sd(size_t(nbD * kbI));
  for (auto& v : sgu) v = us(rng) / (400.0f * 45.0f);
  for (auto& v : sd) v = us(rng) / (400.0f * 37.0f);
  for (int64_t e = 0; e < E; ++e)  // distinct buffers per expert and matrix (weights stream from HBM as in a model)
    for (int j = 0; j < 3; ++j) {
      t8[size_t(e * 6 + j)] = upload(wq);
      t8[size_t(e * 6 + 3 + j)] = upload(j < 2 ? sgu : sd);
      t16[size_t(e * 6 + j)] = upload(wb);
    }
  const void* const* dt8 = upload(t8);
  const void* const* dt16 = upload(t16);

  cuda::Fp8Gemm gemm(s);
  fmt::print("| tokens | rows/expert | fp8 grouped ms | TFLOP/s | kernels ms, 128-row / 64-row CTAs | fp8 per-expert ms "
             "(GEMMs) | TFLOP/s | bf16 grouped ms | TFLOP/s | fp8 grouped / per-expert | / bf16 grouped | of bf16 GEMM "
             "|\n");
  for (const int64_t T : tokens) {
    const int64_t TK = T * k;
    // Routing: k distinct random experts per token.
    std::vector<int32_t> ids(static_cast<size_t>(TK));
    std::vector<int32_t> all(static_cast<size_t>(E));
    for (int64_t e = 0; e < E; ++e) all[size_t(e)] = int32_t(e);
    for (int64_t t = 0; t < T; ++t) {
      std::shuffle(all.begin(), all.end(), rng);
      for (int64_t j = 0; j < k; ++j) ids[size_t(t * k + j)] = all[size_t(j)];
    }
    std::vector<float> x(size_t(T * D));
    std::normal_distribution<float> n(0.0f, 1.0f);
    for (auto& v : x) v = n(rng);
    int32_t* dids = upload(ids);
    float* dx = upload(x);
    const int32_t tile = cuda::kGroupedRows;
    const int64_t max_items = std::min<int64_t>(E, TK) + (TK + tile - 1) / tile;
    int32_t *perm = alloc<int32_t>(size_t(TK)), *items = alloc<int32_t>(size_t(3 * max_items)),
            *counts = alloc<int32_t>(size_t(E));
    cuda::moe_plan(dids, TK, int32_t(E), tile, int32_t(max_items), perm, items, counts, s);
    std::vector<int32_t> c(static_cast<size_t>(E));
    MOE_CUDA_CHECK(cudaMemcpy(c.data(), counts, size_t(E) * 4, cudaMemcpyDeviceToHost));
    const int64_t ldT = (T + 3) / 4 * 4, ldTK = (TK + 3) / 4 * 4;
    uint8_t *xq = alloc<uint8_t>(size_t(T * D)), *hq = alloc<uint8_t>(size_t(TK * I));
    float *xs = alloc<float>(size_t(kbD * ldT)), *hs = alloc<float>(size_t(kbI * ldTK)),
          *h = alloc<float>(size_t(TK * I)), *y = alloc<float>(size_t(TK * D));
    cuda::GroupedGemmFp8Params up;
    up.items = items;
    up.K = int32_t(D);
    up.N = int32_t(I);
    up.a = xq;
    up.lda = D;
    up.as = xs;
    up.ld_as = ldT;
    up.a_rows = perm;
    up.a_div = int32_t(k);
    up.wtab = dt8;
    up.swiglu = true;
    up.h = h;
    up.ldh = I;
    cuda::GroupedGemmFp8Params down;
    down.items = items;
    down.K = int32_t(I);
    down.N = int32_t(D);
    down.a = hq;
    down.lda = I;
    down.as = hs;
    down.ld_as = ldTK;
    down.wtab = dt8;
    down.wslot[0] = down.wslot[1] = 2;
    down.sslot[0] = down.sslot[1] = 5;
    down.y = y;
    down.y_rows = perm;
    down.ldy = D;
    cuda::Fp8QuantParams qx, qh;
    qx.x = dx;
    qx.ldx = D;
    qx.M = T;
    qx.K = D;
    qx.q = xq;
    qx.ldq = D;
    qx.scales = xs;
    qh.x = h;
    qh.ldx = I;
    qh.M = TK;
    qh.K = I;
    qh.q = hq;
    qh.ldq = I;
    qh.scales = hs;
    auto kernels = [&] {
      cuda::grouped_gemm_fp8(up, int32_t(max_items), s);
      cuda::grouped_gemm_fp8(down, int32_t(max_items), s);
    };
    up.cta_rows = down.cta_rows = 64;
    const double t_k64 = median_ms(s, kernels);
    up.cta_rows = down.cta_rows = 128;
    const double t_k128 = median_ms(s, kernels);
    up.cta_rows = down.cta_rows = TK <= 64 * E ? 64 : 128;  // the production choice (cuda_backend_moe_fp8.cpp)
    const double t_fp8 = median_ms(s, [&] {
      cuda::quantize_fp8(qx, s);
      cuda::grouped_gemm_fp8(up, int32_t(max_items), s);
      cuda::quantize_fp8(qh, s);
      cuda::grouped_gemm_fp8(down, int32_t(max_items), s);
    });

    // Per-expert cuBLASLt: rows of expert e at padded offsets (m4 rows), scales [kb, m4] per expert; the GEMMs read
    // whatever the buffers hold (timing only). cuBLASLt wants the 128x128 scale grid's columns padded to 4.
    std::vector<int64_t> po(size_t(E) + 1, 0);
    for (int64_t e = 0; e < E; ++e) po[size_t(e) + 1] = po[size_t(e)] + (c[size_t(e)] + 3) / 4 * 4;
    const int64_t TKp = po[size_t(E)], ldD = cuda::fp8_scale_ld(D), ldI = cuda::fp8_scale_ld(I);
    uint8_t *pxq = alloc<uint8_t>(size_t(TKp * D)), *phq = alloc<uint8_t>(size_t(TKp * I));
    std::vector<float> ones_x(size_t(TKp * std::max(kbD, kbI)), 1e-3f);
    float *pxs = upload(ones_x), *phs = upload(ones_x), *pg = alloc<float>(size_t(TKp * I)),
          *pu = alloc<float>(size_t(TKp * I)), *py = alloc<float>(size_t(TKp * D));
    std::vector<float> sgu_pad(size_t(nbI * ldD), 1e-4f), sd_pad(size_t(nbD * ldI), 1e-4f);
    float *dsgu = upload(sgu_pad), *dsd = upload(sd_pad);
    MOE_CUDA_CHECK(cudaMemset(pxq, 0x38, size_t(TKp * D)));
    MOE_CUDA_CHECK(cudaMemset(phq, 0x38, size_t(TKp * I)));
    const double t_pe = median_ms(s, [&] {
      int lane = 0;
      gemm.fork();
      for (int64_t e = 0; e < E; ++e) {
        if (c[size_t(e)] == 0) continue;
        cuda::Fp8GemmArgs a;
        a.x = pxq + po[size_t(e)] * D;
        a.xs = pxs + po[size_t(e)] * kbD;
        a.T = po[size_t(e) + 1] - po[size_t(e)];
        a.N = I;
        a.K = D;
        a.ldo = I;
        a.ws = dsgu;
        for (int j = 0; j < 2; ++j) {
          a.w = static_cast<const uint8_t*>(t8[size_t(e * 6 + j)]);
          a.out = (j == 0 ? pg : pu) + po[size_t(e)] * I;
          gemm.run(a, lane++);
        }
      }
      gemm.join();
      gemm.fork();
      for (int64_t e = 0; e < E; ++e) {
        if (c[size_t(e)] == 0) continue;
        cuda::Fp8GemmArgs a;
        a.x = phq + po[size_t(e)] * I;
        a.xs = phs + po[size_t(e)] * kbI;
        a.T = po[size_t(e) + 1] - po[size_t(e)];
        a.N = D;
        a.K = I;
        a.ldo = D;
        a.ws = dsd;
        a.w = static_cast<const uint8_t*>(t8[size_t(e * 6 + 2)]);
        a.out = py + po[size_t(e)] * D;
        gemm.run(a, lane++);
      }
      gemm.join();
    });

    // BF16 grouped kernel on the same routing.
    uint16_t *xb = alloc<uint16_t>(size_t(T * D)), *hb = alloc<uint16_t>(size_t(TK * I));
    std::vector<uint16_t> xbh(size_t(T * D));
    for (size_t i = 0; i < xbh.size(); ++i) xbh[i] = float_to_bf16(x[i]);
    MOE_CUDA_CHECK(cudaMemcpy(xb, xbh.data(), xbh.size() * 2, cudaMemcpyHostToDevice));
    MOE_CUDA_CHECK(cudaMemset(hb, 0x3c, size_t(TK * I) * 2));
    const void* const* dt16p = dt16;
    cuda::GroupedGemmParams bu;
    bu.items = items;
    bu.a_rows = perm;
    bu.a_div = int32_t(k);
    bu.lda = D;
    bu.K = int32_t(D);
    bu.N = int32_t(I);
    bu.swiglu = true;
    bu.h = hb;
    bu.ldh = I;
    bu.a[0] = xb;
    bu.bmat[0][0] = 0;
    bu.bmat[0][1] = 1;
    bu.wtab = dt16p;
    cuda::GroupedGemmParams bd;
    bd.items = items;
    bd.lda = I;
    bd.K = int32_t(I);
    bd.N = int32_t(D);
    bd.y = y;
    bd.y_rows = perm;
    bd.ldy = D;
    bd.a[0] = hb;
    bd.bmat[0][0] = 2;
    bd.wtab = dt16p;
    const double t_bf = median_ms(s, [&] {
      cuda::grouped_gemm(bu, int32_t(max_items), s);
      cuda::grouped_gemm(bd, int32_t(max_items), s);
    });
    MOE_CUDA_CHECK(cudaStreamSynchronize(s));
    MOE_CUDA_CHECK(cudaGetLastError());
    const double flops = 6.0 * double(TK) * double(D) * double(I);
    auto tf = [&](double ms) { return flops / (ms * 1e-3) / 1e12; };
    fmt::print("| {} | {:.1f} | {:.3f} | {:.0f} | {:.3f} / {:.3f} | {:.3f} | {:.0f} | {:.3f} | {:.0f} | {:.2f}x | {:.2f}x | "
               "{:.0f} % |\n",
               T, double(TK) / double(E), t_fp8, tf(t_fp8), t_k128, t_k64, t_pe, tf(t_pe), t_bf, tf(t_bf), t_pe / t_fp8,
               t_bf / t_fp8, 100.0 * tf(t_fp8) * 1e12 / bf16_rate);
    for (void* p : {static_cast<void*>(dids), static_cast<void*>(dx), static_cast<void*>(perm),
                    static_cast<void*>(items), static_cast<void*>(counts), static_cast<void*>(xq),
                    static_cast<void*>(hq), static_cast<void*>(xs), static_cast<void*>(hs), static_cast<void*>(h),
                    static_cast<void*>(y), static_cast<void*>(pxq), static_cast<void*>(phq), static_cast<void*>(pxs),
                    static_cast<void*>(phs), static_cast<void*>(pg), static_cast<void*>(pu), static_cast<void*>(py),
                    static_cast<void*>(dsgu), static_cast<void*>(dsd), static_cast<void*>(xb), static_cast<void*>(hb)})
      cudaFree(p);
  }
  return 0;
}
