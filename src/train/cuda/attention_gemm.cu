// MLA attention (expanded form, causal) through cuBLAS (kernels.h's contract; the twin of train/ops/attention.cpp),
// with the score and value products as strided-batched GEMMs (one call per head and product, batched over the b
// sequences; FP32, TF32 or BF16 operands: kernels.h's AttnPrecision) and two row kernels: the causal softmax of the scores and the softmax's backward. The full t x t
// square is multiplied (twice the causal FLOPs, but on cuBLAS instead of v1's one block per query row walking
// strided memory, which it replaced); above the diagonal P and dS are 0, so nothing there reaches an output.
// Row-major [r, c] matrices are column-major [c, r] ones for cuBLAS (cuda_compute.cpp's mapping):
//   S = Qn Kn^T + Qr Kr^T  ->  gemm(T, N, t, t, d, K, Q), twice (dn, then dr with beta 1)
//   O = P V                ->  gemm(N, N, dv, t, t, V, P)
//   dP = dO V^T            ->  gemm(T, N, t, t, dv, V, dO)
//   dQ = dS K              ->  gemm(N, N, d, t, t, K, dS)
//   dK = dS^T Q, dV = P^T dO  ->  gemm(N, T, d, t, t, Q, dS), gemm(N, T, dv, t, t, dO, P)
#include <cublas_v2.h>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

// probs row i of one (sequence, head): softmax over j <= i of scale * s, 0 above the diagonal. In place.
__global__ void causal_softmax_kernel(float* p, int64_t t, float scale) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x, i = row % t;
  float* r = p + row * t;
  float mx = -INFINITY;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) mx = fmaxf(mx, r[j] * scale);
  mx = block_reduce<true>(mx, red);
  float z = 0;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) z += expf(r[j] * scale - mx);
  z = block_reduce<false>(z, red);
  for (int64_t j = threadIdx.x; j < t; j += blockDim.x) r[j] = j <= i ? expf(r[j] * scale - mx) / z : 0.0f;
}

// dS = P (dP - sum_j P dP) scale, in place on dP; 0 above the diagonal.
__global__ void softmax_backward_kernel(float* ds, const float* p, int64_t t, float scale) {
  __shared__ float red[32];
  const int64_t row = blockIdx.x, i = row % t;
  float* g = ds + row * t;
  const float* pr = p + row * t;
  float dot = 0;
  for (int64_t j = threadIdx.x; j <= i; j += blockDim.x) dot += pr[j] * g[j];
  dot = block_reduce<false>(dot, red);
  for (int64_t j = threadIdx.x; j < t; j += blockDim.x) g[j] = j <= i ? pr[j] * (g[j] - dot) * scale : 0.0f;
}

// One strided-batched product of `batch` problems; a and b are FP32 (Fp32, Tf32) or BF16 (Bf16) operands, c FP32.
struct Gemm {
  cublasHandle_t h;
  AttnPrecision prec = AttnPrecision::Fp32;
  cublasStatus_t operator()(int64_t batch, cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k,
                            const void* a, int64_t lda, int64_t sa, const void* b, int64_t ldb, int64_t sb, float beta,
                            float* c, int64_t ldc, int64_t sc) const {
    const float one = 1.0f;
    const cudaDataType_t ab = prec == AttnPrecision::Bf16 ? CUDA_R_16BF : CUDA_R_32F;
    const cublasComputeType_t ct = prec == AttnPrecision::Fp32   ? CUBLAS_COMPUTE_32F_PEDANTIC
                                   : prec == AttnPrecision::Tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32
                                                                 : CUBLAS_COMPUTE_32F;
    return cublasGemmStridedBatchedEx(h, ta, tb, int(m), int(n), int(k), &one, a, ab, int(lda), sa, b, ab, int(ldb),
                                      sb, &beta, c, CUDA_R_32F, int(ldc), sc, int(batch), ct, CUBLAS_GEMM_DEFAULT);
  }
};

// An operand of the products: the FP32 tensor, or its BF16 copy (Bf16), addressed in elements either way.
struct Operand {
  const float* f = nullptr;
  const uint16_t* h = nullptr;  // non-null: BF16
  const void* at(int64_t i) const { return h ? static_cast<const void*>(h + i) : static_cast<const void*>(f + i); }
};
Operand operand(const float* f, uint16_t* h, int64_t count, cudaStream_t s) {
  if (!h) return {f, nullptr};
  to_bf16(h, f, count, s);
  return {f, h};
}

// Element strides of an operand between heads and between sequences (0: shared, as k_rope across heads).
struct Strides {
  int64_t head, seq;
};
// A product per (sequence, head), batched over one of the two and looped over the other: over the heads when there
// are at least as many heads as sequences (one call per sequence: train-mid's micro-batch is one sequence of 16
// heads), else over the sequences. `at` offsets are in elements. A product whose output is shared by the heads
// (C's head stride 0: dk_rope) is always batched over the sequences, never over what it sums.
struct Products {
  Gemm gemm;
  int64_t b, H;
  bool operator()(cublasOperation_t ta, cublasOperation_t tb, int64_t m, int64_t n, int64_t k, const Operand& A,
                  int64_t a0, Strides sa, int64_t lda, const Operand& B, int64_t b0, Strides sb, int64_t ldb,
                  float beta, float* C, Strides sc, int64_t ldc) const {
    bool ok = true;
    if (H >= b && sc.head != 0) {
      for (int64_t q = 0; q < b; ++q)
        ok = ok && gemm(H, ta, tb, m, n, k, A.at(a0 + q * sa.seq), lda, sa.head, B.at(b0 + q * sb.seq), ldb, sb.head,
                        beta, C + q * sc.seq, ldc, sc.head) == CUBLAS_STATUS_SUCCESS;
    } else {
      for (int64_t h = 0; h < H; ++h)
        ok = ok && gemm(b, ta, tb, m, n, k, A.at(a0 + h * sa.head), lda, sa.seq, B.at(b0 + h * sb.head), ldb, sb.seq,
                        beta, C + h * sc.head, ldc, sc.seq) == CUBLAS_STATUS_SUCCESS;
    }
    return ok;
  }
};

}  // namespace

bool attention_forward_gemm(cublasHandle_t blas, float* out, float* probs, const float* q, const float* kv,
                            const float* k_rope, const AttnShape& a, cudaStream_t s, const AttnBf16* bf) {
  if (a.prec == AttnPrecision::Flash) return false;  // attention_flash.cu's
  if (a.b == 0 || a.t == 0) return true;
  const bool half = a.prec == AttnPrecision::Bf16;
  if (half && (!bf || !bf->q || !bf->kv || !bf->kr || !bf->sq)) return false;
  if (cublasSetStream(blas, s) != CUBLAS_STATUS_SUCCESS) return false;
  const int64_t t = a.t, H = a.heads, dn = a.dn, dr = a.dr, dv = a.dv, dq = dn + dr, dkv = dn + dv, n = a.b * t;
  const Operand Q = operand(q, half ? bf->q : nullptr, n * H * dq, s);
  const Operand KV = operand(kv, half ? bf->kv : nullptr, n * H * dkv, s);
  const Operand KR = operand(k_rope, half ? bf->kr : nullptr, n * dr, s);
  // Strides: q [b, t, H, dq], kv [b, t, H, dkv], k_rope [b, t, dr], probs [b, H, t, t], out [b, t, H, dv].
  const Strides sq{dq, t * H * dq}, skv{dkv, t * H * dkv}, skr{0, t * dr}, ss{t * t, H * t * t}, so{dv, t * H * dv};
  const Products prod{{blas, a.prec}, a.b, H};
  bool ok = prod(CUBLAS_OP_T, CUBLAS_OP_N, t, t, dn, KV, 0, skv, H * dkv, Q, 0, sq, H * dq, 0.0f, probs, ss, t);
  ok = ok && prod(CUBLAS_OP_T, CUBLAS_OP_N, t, t, dr, KR, 0, skr, dr, Q, dn, sq, H * dq, 1.0f, probs, ss, t);
  causal_softmax_kernel<<<unsigned(a.b * H * t), 128, 0, s>>>(probs, t, a.scale);
  const Operand P = operand(probs, half ? bf->sq : nullptr, a.b * H * t * t, s);
  ok = ok && prod(CUBLAS_OP_N, CUBLAS_OP_N, dv, t, t, KV, dn, skv, H * dkv, P, 0, ss, t, 0.0f, out, so, H * dv);
  return ok;
}

bool attention_backward_gemm(cublasHandle_t blas, float* dq, float* dkv, float* dk_rope, float* ds, const float* dout,
                             const float* probs, const float* q, const float* kv, const float* k_rope,
                             const AttnShape& a, cudaStream_t s, const AttnBf16* bf) {
  if (a.prec == AttnPrecision::Flash) return false;  // attention_flash.cu's
  if (a.b == 0 || a.t == 0) return true;
  const bool half = a.prec == AttnPrecision::Bf16;
  if (half && (!bf || !bf->q || !bf->kv || !bf->kr || !bf->sq || !bf->dout)) return false;
  if (cublasSetStream(blas, s) != CUBLAS_STATUS_SUCCESS) return false;
  const int64_t t = a.t, H = a.heads, dn = a.dn, dr = a.dr, dv = a.dv, dq_ = dn + dr, dkv_ = dn + dv, n = a.b * t;
  const Operand Q = operand(q, half ? bf->q : nullptr, n * H * dq_, s);
  const Operand KV = operand(kv, half ? bf->kv : nullptr, n * H * dkv_, s);
  const Operand KR = operand(k_rope, half ? bf->kr : nullptr, n * dr, s);
  const Operand DO = operand(dout, half ? bf->dout : nullptr, n * H * dv, s);
  const Strides sq{dq_, t * H * dq_}, skv{dkv_, t * H * dkv_}, skr{0, t * dr}, ss{t * t, H * t * t},
      so{dv, t * H * dv};
  const Products prod{{blas, a.prec}, a.b, H};
  // dv += P^T dO first: under Bf16 the one t x t BF16 scratch holds P here and dS below. (Each head's dv is its own
  // slice of dkv, so this order changes no sum.)
  const Operand P = operand(probs, half ? bf->sq : nullptr, a.b * H * t * t, s);
  bool ok = prod(CUBLAS_OP_N, CUBLAS_OP_T, dv, t, t, DO, 0, so, H * dv, P, 0, ss, t, 1.0f, dkv + dn, skv, H * dkv_);
  // dP = dO V^T
  ok = ok && prod(CUBLAS_OP_T, CUBLAS_OP_N, t, t, dv, KV, dn, skv, H * dkv_, DO, 0, so, H * dv, 0.0f, ds, ss, t);
  softmax_backward_kernel<<<unsigned(a.b * H * t), 128, 0, s>>>(ds, probs, t, a.scale);
  const Operand DS = operand(ds, half ? bf->sq : nullptr, a.b * H * t * t, s);
  // dq_nope += dS Kn, dq_rope += dS Kr
  ok = ok && prod(CUBLAS_OP_N, CUBLAS_OP_N, dn, t, t, KV, 0, skv, H * dkv_, DS, 0, ss, t, 1.0f, dq, sq, H * dq_);
  ok = ok && prod(CUBLAS_OP_N, CUBLAS_OP_N, dr, t, t, KR, 0, skr, dr, DS, 0, ss, t, 1.0f, dq + dn, sq, H * dq_);
  // dk_nope += dS^T Qn; dk_rope += dS^T Qr, the heads added in order (its head stride is 0: looped over heads)
  ok = ok && prod(CUBLAS_OP_N, CUBLAS_OP_T, dn, t, t, Q, 0, sq, H * dq_, DS, 0, ss, t, 1.0f, dkv, skv, H * dkv_);
  ok = ok && prod(CUBLAS_OP_N, CUBLAS_OP_T, dr, t, t, Q, dn, sq, H * dq_, DS, 0, ss, t, 1.0f, dk_rope,
                  Strides{0, t * dr}, dr);
  return ok;
}

}  // namespace moe::train::cuda
