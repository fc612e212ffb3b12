// Decode GEMV (issue 14, decode at 1 and 8 tokens): production's two kernels, compiled here from
// src/backend/cuda/gemv.cuh, on the dense projections of the Moonlight shape, BF16 and FP8 (E4M3, 128x128
// block scales) weights: the CUDA-core kernel (gemv_detail::launch_gemv_cuda_cores: F32 x, every weight
// widened and multiplied on the CUDA cores) and the tensor-core one (launch_gemv_mma, gemv_mma.cuh: x in
// BF16, mma.sync m16n8k16, the 8 mma columns as 8 tokens). Production's launch_gemv takes the tensor cores
// for FP8 at 1-8 tokens and BF16 at 2-8 (BF16 at one token: the CUDA-core kernel, as fast or faster on the
// small projections here). The per-warp tiles of gemv_mma.cuh (production for the experts' grouped passes
// of several assignments) were timed here too on 2026-12-06 (H100) and were 2.5-4.6x slower than the mma
// column on these projections (a 3072-row matrix is only 192 warps); the column was removed.
//
// Measured (H200, 2026-12-04, bench/RESULTS.md "decode round 1"): FP8 at 1 token 1.1-1.6x faster on the
// tensor cores, FP8 and BF16 at 8 tokens 1.7-4.4x; BF16 at 1 token within +-12 % either way. The CUDA-core
// launcher sends single-token BF16 matrices of >= 8192 rows (dense gate, the LM head) to gemv.cuh's
// persistent stream kernel, so its column is that kernel there. The sandbox's own copy of that kernel (a
// "stream" column, 2026-12-05: 129,280 x 2048 in 120.5 us against the per-16-rows kernel's 157.9 on an H200)
// went into production and was removed from here.
//
// Checks: float64 dot products of the F32 x and the (dequantised) weights. CUDA cores (F32 x): bound 1e-5;
// tensor cores (x rounded to BF16: 2^-9 relative per value, independent roundings over K values): bound 1e-2.
//   sandbox_gemv_mma [--tokens 1,8] [--rotate-mb 200]
#include "backend/cuda/gemv.cuh"
#include "common.cuh"

namespace {

using namespace sbx;

uint8_t e4m3_of(float f) {  // nearest E4M3 (setup only; |f| <= 448)
  static std::vector<float> pos;  // values of the bytes 0x00 .. 0x7e, increasing
  if (pos.empty())
    for (int b = 0; b < 0x7f; ++b) pos.push_back(e4m3_value(uint8_t(b)));
  const float a = std::fabs(f);
  const size_t i = size_t(std::lower_bound(pos.begin(), pos.end(), a) - pos.begin());
  size_t best = std::min(i, pos.size() - 1);
  if (i > 0 && (i == pos.size() || a - pos[i - 1] <= pos[i] - a)) best = i - 1;
  return uint8_t(best | (f < 0.0f ? 0x80u : 0u));
}

struct Case {
  int64_t N, K;
  const char* what;
};

}  // namespace

int main(int argc, char** argv) {
  const Args args{argc, argv};
  const std::vector<int64_t> tokens = args.list("tokens", {1, 8});
  const Case cases[] = {{3072, 2048, "q_proj (Moonlight)"},
                        {576, 2048, "kv_a"},
                        {2048, 2048, "o_proj"},
                        {2816, 2048, "shared gate"},
                        {2048, 2816, "shared down"},
                        {11264, 2048, "dense gate"},
                        {2048, 11264, "dense down"},
                        {129280, 2048, "LM head (V3 vocab)"}};
  cudaStream_t st;
  SBX_CHECK(cudaStreamCreateWithFlags(&st, cudaStreamNonBlocking));
  int fails = 0;
  std::printf("%-20s %6s %6s %3s %5s | %9s %8s | %9s %8s | %s\n", "matrix", "N", "K", "T", "dtype",
              "cores us", "TB/s", "mma us", "TB/s", "rel L2 cores / mma");
  for (const Case& cs : cases)
    for (bool fp8 : {false, true})
      for (int64_t T : tokens) {
        const int64_t N = cs.N, K = cs.K, kb = (K + 127) / 128, nb = (N + 127) / 128;
        const size_t wbytes = size_t(N * K) * (fp8 ? 1 : 2);
        // Host weights (the check's copy), then device copies for the rotation.
        std::vector<float> wf(size_t(N * K)), xf(size_t(T * K)), sc(size_t(nb * kb), 1.0f);
        fill_uniform(wf, -1.0f, 1.0f, 11 + uint64_t(N) * 7 + uint64_t(K));
        fill_uniform(xf, -2.0f, 2.0f, 5 + uint64_t(T));
        std::vector<uint16_t> wbf;
        std::vector<uint8_t> w8;
        std::vector<double> wd(size_t(N * K));
        if (fp8) {
          fill_uniform(sc, 0.5f / 448.0f, 2.0f / 448.0f, 3);
          w8.resize(size_t(N * K));
          for (size_t i = 0; i < w8.size(); ++i) w8[i] = e4m3_of(448.0f * 0.9f * wf[i]);
          for (int64_t n = 0; n < N; ++n)
            for (int64_t k = 0; k < K; ++k)
              wd[size_t(n * K + k)] = double(e4m3_value(w8[size_t(n * K + k)])) * sc[size_t((n / 128) * kb + k / 128)];
        } else {
          for (float& v : wf) v /= std::sqrt(float(K));
          wbf = to_bf16(wf);
          for (size_t i = 0; i < wd.size(); ++i) wd[i] = bf2f(wbf[i]);
        }
        std::vector<double> ref(size_t(T * N));
        parallel_for(T * N, [&](int64_t i) {
          const int64_t t = i / N, n = i % N;
          double s = 0.0;
          for (int64_t k = 0; k < K; ++k) s += double(xf[size_t(t * K + k)]) * wd[size_t(n * K + k)];
          ref[size_t(i)] = s;
        });
        const int nbuf = rotation(wbytes, args, 64);
        std::vector<uint8_t*> dw(static_cast<size_t>(nbuf));
        for (int i = 0; i < nbuf; ++i) {
          dw[size_t(i)] = dalloc<uint8_t>(wbytes);
          SBX_CHECK(cudaMemcpy(dw[size_t(i)], fp8 ? static_cast<const void*>(w8.data()) : wbf.data(), wbytes,
                               cudaMemcpyHostToDevice));
        }
        float* ds = dupload(sc);
        float* dx = dupload(xf);
        float* dout = dalloc<float>(size_t(T * N));
        const auto params = [&](int i) {
          moe::cuda::GemvParams p;
          p.wdtype = fp8 ? moe::DType::F8_E4M3 : moe::DType::BF16;
          p.w[0] = dw[size_t(i)];
          p.s[0] = fp8 ? ds : nullptr;
          p.N = N;
          p.K = K;
          p.x = dx;
          p.x_stride = K;
          p.out = dout;
          p.out_stride = N;
          p.T = int32_t(T);
          return p;
        };
        const int tile = T <= 1 ? 1 : T <= 2 ? 2 : T <= 4 ? 4 : 8;
        const auto prod = [&](int i) {
          if (fp8)
            moe::cuda::gemv_detail::launch_gemv_cuda_cores<moe::DType::F8_E4M3>(params(i), tile, st);
          else
            moe::cuda::gemv_detail::launch_gemv_cuda_cores<moe::DType::BF16>(params(i), tile, st);
        };
        const auto mma = [&](int i) {
          if (fp8)
            moe::cuda::gemv_detail::launch_gemv_mma<moe::DType::F8_E4M3>(params(i), st);
          else
            moe::cuda::gemv_detail::launch_gemv_mma<moe::DType::BF16>(params(i), st);
        };
        const std::function<void(int)> fprod = prod, fmma = mma;
        double err[2] = {0.0, 0.0};
        int v = 0;
        for (const std::function<void(int)>* f : {&fprod, &fmma}) {
          SBX_CHECK(cudaMemset(dout, 0xff, size_t(T * N) * 4));  // NaN: an unwritten output fails
          (*f)(0);
          const std::vector<float> got = ddownload(dout, size_t(T * N));
          err[v++] = rel_l2(got.data(), ref.data(), got.size());
        }
        const bool ok = err[0] <= 1e-5 && err[1] <= 1e-2;
        fails += !ok;
        const double tp = time_us(nbuf, prod, st, 20, 3, true), tm = time_us(nbuf, mma, st, 20, 3, true);
        std::printf("%-20s %6lld %6lld %3lld %5s | %9.2f %8.2f | %9.2f %8.2f | %.2e / %.2e%s\n", cs.what,
                    (long long)N, (long long)K, (long long)T, fp8 ? "fp8" : "bf16", tp,
                    double(wbytes) / tp * 1e-6, tm, double(wbytes) / tm * 1e-6, err[0], err[1],
                    ok ? "" : "  FAIL");
        for (uint8_t* p : dw) SBX_CHECK(cudaFree(p));
        SBX_CHECK(cudaFree(ds));
        SBX_CHECK(cudaFree(dx));
        SBX_CHECK(cudaFree(dout));
      }
  std::printf("%s\n", fails ? "FAIL" : "all checks pass");
  return fails ? 1 : 0;
}
