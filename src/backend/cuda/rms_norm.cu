// RMSNorm, one block per row: out = w * x / sqrt(mean(x^2) + eps); the sum of squares in F32 over
// 256 partial sums (the CPU uses double; both are far below the 1e-2 tolerance for rows of <= 7168).
//
// Fast path (row width a multiple of 4, at most 8192): rms_norm.cuh's rms_norm_row, one block per row. With a
// residual (add_rms_norm) the same pass first forms x = h + y and stores it to h.
#include "backend/cuda/rms_norm.cuh"

namespace moe::cuda {

namespace {

constexpr int kThreads = kNormThreads;

__global__ void __launch_bounds__(kThreads)
    rms_norm_kernel(const float* x, WeightRef w, float eps, int64_t D, float* out) {
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

// V float4s per thread (rms_norm.cuh). RESID: x = h + y, written back to h (h = x's row source, y the
// residual branch).
template <int V, bool RESID>
__global__ void __launch_bounds__(kThreads)
    rms_norm_vec_kernel(const float* x, float* h, const float* y, WeightRef w, float eps, int64_t D,
                        float* out) {
  pdl_trigger();
  pdl_wait();
  rms_norm_row<V, RESID>(x, h, y, w, eps, D, blockIdx.x, out);
}

template <bool RESID>
void launch_vec(int V, const float* x, float* h, const float* y, const WeightRef& w, float eps, int64_t T,
                int64_t D, float* out, cudaStream_t s) {
  switch (V) {
    case 1:
      launch("rms_norm", rms_norm_vec_kernel<1, RESID>, unsigned(T), kThreads, 0, s, x, h, y, w, eps, D, out);
      break;
    case 2:
      launch("rms_norm", rms_norm_vec_kernel<2, RESID>, unsigned(T), kThreads, 0, s, x, h, y, w, eps, D, out);
      break;
    case 4:
      launch("rms_norm", rms_norm_vec_kernel<4, RESID>, unsigned(T), kThreads, 0, s, x, h, y, w, eps, D, out);
      break;
    default:
      launch("rms_norm", rms_norm_vec_kernel<8, RESID>, unsigned(T), kThreads, 0, s, x, h, y, w, eps, D, out);
      break;
  }
}

}  // namespace

void rms_norm(const float* x, const WeightRef& w, float eps, int64_t T, int64_t D, float* out,
              cudaStream_t s) {
  if (T == 0) return;
  const int V = rms_norm_vec_width(D, x, out, x);
  if (V)
    launch_vec<false>(V, x, nullptr, nullptr, w, eps, T, D, out, s);
  else
    launch("rms_norm", rms_norm_kernel, unsigned(T), kThreads, 0, s, x, w, eps, D, out);
}

void add_rms_norm(float* h, const float* y, const WeightRef& w, float eps, int64_t T, int64_t D, float* out,
                  cudaStream_t s) {
  if (T == 0) return;
  const int V = rms_norm_vec_width(D, h, y, out);
  if (V) {
    launch_vec<true>(V, nullptr, h, y, w, eps, T, D, out, s);
    return;
  }
  add(h, y, h, T * D, s);
  rms_norm(h, w, eps, T, D, out, s);
}

}  // namespace moe::cuda
