// The FP8 x FP8 block-scaled GEMM (gemm_fp8.h, cuBLASLt) against the BF16 GEMM (gemm.h, cuBLAS) on the same
// shapes in the same run, and the activation quantiser (fp8_quant.cu) alone. Random data (never zeros); CUDA
// events around each call, median of 20 after 3 warm-ups. FLOPs = 2 M N K.
//   quantise: x [M, K] F32 -> E4M3 + scales; GB/s = (4 + 1) M K bytes over the time.
//   fp8:      xq [M, K] E4M3 (1x128 scales) @ wq [N, K]^T E4M3 (128x128 scales), F32 out.
//   fp8+q:    quantise + fp8 (what a prefill linear costs).
//   bf16:     x [M, K] BF16 @ w [N, K]^T BF16, F32 out (the bf16 prefill path's GEMM, without its casts).
// Usage: bench_fp8_gemm [M,N,K ...]   (default: DeepSeek-V3's prefill shapes at M = 4096, and M = 128)
#include <cublas_v2.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>
#include <functional>
#include <random>
#include <string>
#include <vector>

#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gemm.h"
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
  MOE_CUDA_CHECK(cudaMalloc(&p, h.size() * sizeof(T)));
  MOE_CUDA_CHECK(cudaMemcpy(p, h.data(), h.size() * sizeof(T), cudaMemcpyHostToDevice));
  return p;
}

}  // namespace

int main(int argc, char** argv) {
  struct S { int64_t M, N, K; };
  std::vector<S> shapes;
  for (int i = 1; i < argc; ++i) {
    S s{};
    if (std::sscanf(argv[i], "%ld,%ld,%ld", &s.M, &s.N, &s.K) == 3) shapes.push_back(s);
  }
  if (shapes.empty())
    shapes = {{4096, 7168, 2048}, {4096, 24576, 1536}, {4096, 2048, 7168}, {4096, 7168, 16384},
              {128, 7168, 16384}, {4096, 2816, 2048},  {4096, 2048, 1408}};
  cudaStream_t st;
  MOE_CUDA_CHECK(cudaStreamCreate(&st));
  cublasHandle_t blas;
  cublasCreate(&blas);
  cublasSetStream(blas, st);
  cuda::Fp8Gemm fp8(st);
  std::mt19937_64 rng(12345);
  std::normal_distribution<float> nd(0.0f, 1.0f);
  std::uniform_real_distribution<float> ud(-1.0f, 1.0f);
  fmt::print("{:>6} {:>6} {:>6} | {:>9} {:>9} | {:>9} {:>9} {:>9} | {:>9} | {:>7} {:>7}\n", "M", "N", "K", "quant us",
             "GB/s", "fp8 TF/s", "fp8+q", "fp8 bf16o", "bf16 TF/s", "fp8/bf", "of 1979");
  for (const S& sh : shapes) {
    const int64_t M = sh.M, N = sh.N, K = sh.K;
    std::vector<float> x(size_t(M * K));
    for (auto& v : x) v = nd(rng);
    std::vector<uint8_t> w(size_t(N * K));
    for (auto& v : w) v = float_to_e4m3(400.0f * ud(rng));
    std::vector<float> ws(size_t((N + 127) / 128 * cuda::fp8_scale_ld(K)));
    for (auto& v : ws) v = (0.5f + 0.5f * std::abs(ud(rng))) / 448.0f;
    std::vector<uint16_t> xb(x.size()), wb(w.size());
    for (size_t i = 0; i < xb.size(); ++i) xb[i] = float_to_bf16(x[i]);
    for (size_t i = 0; i < wb.size(); ++i) wb[i] = float_to_bf16(0.02f * ud(rng));
    float* dx = upload(x);
    uint8_t* dw = upload(w);
    float* dws = upload(ws);
    uint16_t* dxb = upload(xb);
    uint16_t* dwb = upload(wb);
    uint8_t* dxq = nullptr;
    float *dxs = nullptr, *dout = nullptr;
    MOE_CUDA_CHECK(cudaMalloc(&dxq, size_t(M * K)));
    MOE_CUDA_CHECK(cudaMalloc(&dxs, size_t(M * ((K + 127) / 128)) * 4));
    MOE_CUDA_CHECK(cudaMalloc(&dout, size_t(M * N) * 4));
    cuda::Fp8QuantParams q;
    q.x = dx;
    q.ldx = K;
    q.M = M;
    q.K = K;
    q.q = dxq;
    q.ldq = K;
    q.scales = dxs;
    cuda::Fp8GemmArgs a;
    a.x = dxq;
    a.xs = dxs;
    a.w = dw;
    a.ws = dws;
    a.out = dout;
    a.T = M;
    a.N = N;
    a.K = K;
    a.ldo = N;
    const double flop = 2.0 * double(M) * double(N) * double(K);
    const double tq = median_ms(st, [&] { cuda::quantize_fp8(q, st); });
    const double tf = median_ms(st, [&] { fp8.run(a); });
    const double tfq = median_ms(st, [&] { cuda::quantize_fp8(q, st); fp8.run(a); });
    double tfb = 0;
    if (fp8.supported(M, N, K, true)) {
      cuda::Fp8GemmArgs b = a;
      b.out_bf16 = true;
      tfb = median_ms(st, [&] { fp8.run(b); });
    }
    const double tb = median_ms(st, [&] { cuda::gemm_bf16(blas, dxb, dwb, dout, M, N, K); });
    MOE_CUDA_CHECK(cudaStreamSynchronize(st));
    auto tf_s = [&](double ms) { return ms > 0 ? flop / (ms * 1e-3) / 1e12 : 0.0; };
    fmt::print("{:>6} {:>6} {:>6} | {:>9.1f} {:>9.0f} | {:>9.0f} {:>9.0f} {:>9.0f} | {:>9.0f} | {:>7.2f} {:>6.0f}%\n",
               M, N, K, tq * 1e3, 5.0 * double(M * K) / (tq * 1e-3) / 1e9, tf_s(tf), tf_s(tfq), tf_s(tfb), tf_s(tb),
               tb / tf, 100.0 * tf_s(tf) / 1979.0);
    for (void* p : {(void*)dx, (void*)dw, (void*)dws, (void*)dxb, (void*)dwb, (void*)dxq, (void*)dxs, (void*)dout})
      cudaFree(p);
  }
  fmt::print("FP8 GEMMs run as BF16-output + widening (no F32-output algorithm): {}\n", fp8.bf16_fallbacks());
  cublasDestroy(blas);
  cudaStreamDestroy(st);
  return 0;
}
