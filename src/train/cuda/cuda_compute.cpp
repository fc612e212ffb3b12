// CudaCompute: copy in, run on the device, copy out (cuda_compute.h). Row-major GEMMs map onto cuBLAS's
// column-major ones by reading every row-major [r, c] matrix as a column-major [c, r] one:
//   y[n,m] = x W^T      ->  y^T (m x n) = op_T(W^T (k x m)) * x^T (k x n)
//   dx[n,k] = dy W      ->  dx^T (k x n) = W^T (k x m) * dy^T (m x n)
//   dW[m,k] = dy^T x    ->  dW^T (k x m) = x^T (k x n) * op_T(dy^T (m x n))
#include "train/cuda/cuda_compute.h"

#include <fmt/format.h>

#include "core/error.h"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {
void check(cudaError_t e, const char* what) {
  MOE_CHECK(e == cudaSuccess, "cuda train: {}: {}", what, cudaGetErrorString(e));
}
void check(cublasStatus_t e, const char* what) {
  MOE_CHECK(e == CUBLAS_STATUS_SUCCESS, "cuda train: {}: cuBLAS status {}", what, int(e));
}

// Scratch slots of the ops (an op's operands never share one).
enum Slot : size_t { kA, kB, kC, kD, kE, kF, kG, kH, kI, kBf0, kBf1, kBf2 };
}  // namespace

DeviceScratch::~DeviceScratch() {
  for (auto& [p, bytes] : slots_)
    if (p) cudaFree(p);
}

void* DeviceScratch::get(size_t slot, size_t bytes) {
  if (slots_.size() <= slot) slots_.resize(slot + 1, {nullptr, 0});
  auto& [p, have] = slots_[slot];
  if (have < bytes) {
    if (p) check(cudaFree(p), "cudaFree");
    p = nullptr;
    have = 0;
    check(cudaMalloc(&p, bytes), "cudaMalloc");
    have = bytes;
  }
  return p;
}

bool CudaCompute::available() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess && n > 0;
}

CudaCompute::CudaCompute(GemmPrecision precision, int device) : precision_(precision), device_(device) {
  check(cudaSetDevice(device_), "cudaSetDevice");
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  check(cublasCreate(&blas_), "cublasCreate");
  check(cublasSetStream(blas_, stream_), "cublasSetStream");
}

CudaCompute::~CudaCompute() {
  if (blas_) cublasDestroy(blas_);
  if (stream_) cudaStreamDestroy(stream_);
}

std::string CudaCompute::device_name() const {
  cudaDeviceProp p{};
  if (cudaGetDeviceProperties(&p, device_) != cudaSuccess) return "cuda device " + std::to_string(device_);
  return fmt::format("{} (sm_{}{})", p.name, p.major, p.minor);
}

void CudaCompute::sync() { check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize"); }

float* CudaCompute::upload(size_t slot, const float* host, int64_t count) {
  float* d = static_cast<float*>(scratch_.get(slot, size_t(count) * sizeof(float)));
  check(cudaMemcpyAsync(d, host, size_t(count) * sizeof(float), cudaMemcpyHostToDevice, stream_), "upload");
  return d;
}

void CudaCompute::download(float* host, const float* dev, int64_t count) {
  check(cudaMemcpyAsync(host, dev, size_t(count) * sizeof(float), cudaMemcpyDeviceToHost, stream_), "download");
  sync();
}

const void* CudaCompute::operand(GemmPrecision p, size_t slot, const float* src, int64_t count) {
  if (p == GemmPrecision::Fp32) return src;
  auto* b = static_cast<uint16_t*>(scratch_.get(slot, size_t(count) * sizeof(uint16_t)));
  to_bf16(b, src, count, stream_);
  check(cudaGetLastError(), "to_bf16");
  return b;
}

namespace {
struct GemmTypes {
  cudaDataType_t ab;
  cublasComputeType_t compute;
};
GemmTypes types_of(GemmPrecision p) {
  // BF16 operands, FP32 accumulation; FP32 operands with FP32 products (pedantic: never TF32).
  return p == GemmPrecision::Bf16 ? GemmTypes{CUDA_R_16BF, CUBLAS_COMPUTE_32F}
                                  : GemmTypes{CUDA_R_32F, CUBLAS_COMPUTE_32F_PEDANTIC};
}
}  // namespace

void CudaCompute::gemm_nt(GemmPrecision p, float* y, const void* x, const void* w, int64_t n, int64_t k, int64_t m, float beta) {
  const GemmTypes t = types_of(p);
  const float alpha = 1.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_T, CUBLAS_OP_N, int(m), int(n), int(k), &alpha, w, t.ab, int(k), x, t.ab,
                     int(k), &beta, y, CUDA_R_32F, int(m), t.compute, CUBLAS_GEMM_DEFAULT),
        "gemm y = x W^T");
}

void CudaCompute::gemm_nn(GemmPrecision p, float* dx, const void* dy, const void* w, int64_t n, int64_t k, int64_t m, float beta) {
  const GemmTypes t = types_of(p);
  const float alpha = 1.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_N, int(k), int(n), int(m), &alpha, w, t.ab, int(k), dy, t.ab,
                     int(m), &beta, dx, CUDA_R_32F, int(k), t.compute, CUBLAS_GEMM_DEFAULT),
        "gemm dx = dy W");
}

void CudaCompute::gemm_tn(GemmPrecision p, float* dw, const void* dy, const void* x, int64_t n, int64_t k, int64_t m, float beta) {
  const GemmTypes t = types_of(p);
  const float alpha = 1.0f;
  check(cublasGemmEx(blas_, CUBLAS_OP_N, CUBLAS_OP_T, int(k), int(m), int(n), &alpha, x, t.ab, int(k), dy, t.ab,
                     int(m), &beta, dw, CUDA_R_32F, int(k), t.compute, CUBLAS_GEMM_DEFAULT),
        "gemm dW = dy^T x");
}

void CudaCompute::matmul_forward(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m,
                                 bool fp32) {
  if (n == 0 || m == 0) return;
  const GemmPrecision p = fp32 ? GemmPrecision::Fp32 : precision_;
  float* dx = upload(kA, x, n * k);
  float* dw = upload(kB, w, m * k);
  float* dy = static_cast<float*>(scratch_.get(kC, size_t(n * m) * sizeof(float)));
  gemm_nt(p, dy, operand(p, kBf0, dx, n * k), operand(p, kBf1, dw, m * k), n, k, m, 0.0f);
  download(y, dy, n * m);
}

void CudaCompute::matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                                  int64_t k, int64_t m, bool fp32) {
  if (n == 0 || m == 0 || (!dx && !dw)) return;
  const GemmPrecision p = fp32 ? GemmPrecision::Fp32 : precision_;
  float* ddy = upload(kA, dy, n * m);
  const void* dy_op = operand(p, kBf0, ddy, n * m);
  if (dx) {
    float* dw_ = upload(kB, w, m * k);
    float* ddx = upload(kC, dx, n * k);
    gemm_nn(p, ddx, dy_op, operand(p, kBf1, dw_, m * k), n, k, m, 1.0f);
    download(dx, ddx, n * k);
  }
  if (dw) {
    float* dxin = upload(kD, x, n * k);
    float* ddw = upload(kE, dw, m * k);
    gemm_tn(p, ddw, dy_op, operand(p, kBf2, dxin, n * k), n, k, m, 1.0f);
    download(dw, ddw, m * k);
  }
}

double CudaCompute::measure_bf16_gemm_gflops() {
  const int64_t n = 8192, k = 8192, m = 8192;
  auto* x = static_cast<uint16_t*>(scratch_.get(kBf0, size_t(n * k) * 2));
  auto* w = static_cast<uint16_t*>(scratch_.get(kBf1, size_t(m * k) * 2));
  auto* y = static_cast<float*>(scratch_.get(kC, size_t(n * m) * 4));
  fill_bf16_uniform(x, n * k, 1, stream_);
  fill_bf16_uniform(w, m * k, 2, stream_);
  check(cudaGetLastError(), "fill");
  for (int i = 0; i < 3; ++i) gemm_nt(GemmPrecision::Bf16, y, x, w, n, k, m, 0.0f);  // warm-up, clocks up
  cudaEvent_t e0, e1;
  check(cudaEventCreate(&e0), "event");
  check(cudaEventCreate(&e1), "event");
  const int reps = 20;
  check(cudaEventRecord(e0, stream_), "event");
  for (int i = 0; i < reps; ++i) gemm_nt(GemmPrecision::Bf16, y, x, w, n, k, m, 0.0f);
  check(cudaEventRecord(e1, stream_), "event");
  check(cudaEventSynchronize(e1), "event");
  float ms = 0;
  check(cudaEventElapsedTime(&ms, e0, e1), "event");
  cudaEventDestroy(e0);
  cudaEventDestroy(e1);
  return 2.0 * double(n) * double(k) * double(m) * reps / (double(ms) * 1e-3) / 1e9;
}

namespace {
AttnShape shape_of(const MlaDims& d, int64_t b) {
  return AttnShape{b, d.t, d.heads, d.dn, d.dr, d.dv, float(d.scale)};
}
}  // namespace

void CudaCompute::attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                                    const MlaDims& d, int64_t b) {
  const int64_t n = b * d.t, H = d.heads;
  float* dq = upload(kA, q, n * H * (d.dn + d.dr));
  float* dkv = upload(kB, kv, n * H * (d.dn + d.dv));
  float* dkr = upload(kC, k_rope, n * d.dr);
  float* dout = static_cast<float*>(scratch_.get(kD, size_t(n * H * d.dv) * sizeof(float)));
  float* dprobs = static_cast<float*>(scratch_.get(kE, size_t(b * H * d.t * d.t) * sizeof(float)));
  cuda::attention_forward(dout, dprobs, dq, dkv, dkr, shape_of(d, b), stream_);
  check(cudaGetLastError(), "attention_forward");
  download(out, dout, n * H * d.dv);
  download(probs, dprobs, b * H * d.t * d.t);
}

void CudaCompute::attention_backward(float* dq, float* dkv, float* dk_rope, const float* dout, const float* probs,
                                     const float* q, const float* kv, const float* k_rope, const MlaDims& d,
                                     int64_t b) {
  const int64_t n = b * d.t, H = d.heads, nq = n * H * (d.dn + d.dr), nkv = n * H * (d.dn + d.dv),
                np = b * H * d.t * d.t;
  float* g_q = upload(kA, dq, nq);
  float* g_kv = upload(kB, dkv, nkv);
  float* g_kr = upload(kC, dk_rope, n * d.dr);
  float* g_out = upload(kD, dout, n * H * d.dv);
  float* p = upload(kE, probs, np);
  float* q_ = upload(kF, q, nq);
  float* kv_ = upload(kG, kv, nkv);
  float* kr_ = upload(kH, k_rope, n * d.dr);
  float* ds = static_cast<float*>(scratch_.get(kI, size_t(np) * sizeof(float)));
  cuda::attention_backward(g_q, g_kv, g_kr, ds, g_out, p, q_, kv_, kr_, shape_of(d, b), stream_);
  check(cudaGetLastError(), "attention_backward");
  download(dq, g_q, nq);
  download(dkv, g_kv, nkv);
  download(dk_rope, g_kr, n * d.dr);
}

double CudaCompute::cross_entropy(float* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale) {
  if (n == 0) return 0.0;
  float* l = upload(kA, logits, n * vocab);
  auto* t = static_cast<int32_t*>(scratch_.get(kB, size_t(n) * sizeof(int32_t)));
  check(cudaMemcpyAsync(t, targets, size_t(n) * sizeof(int32_t), cudaMemcpyHostToDevice, stream_), "upload");
  float* loss = static_cast<float*>(scratch_.get(kC, size_t(n) * sizeof(float)));
  cuda::cross_entropy(l, loss, t, n, vocab, float(dscale), stream_);
  check(cudaGetLastError(), "cross_entropy");
  download(logits, l, n * vocab);
  std::vector<float> rows(static_cast<size_t>(n));
  download(rows.data(), loss, n);
  double total = 0;  // in row order, in double, as the CPU op sums
  for (float v : rows) total += double(v);
  return total;
}

}  // namespace moe::train::cuda
