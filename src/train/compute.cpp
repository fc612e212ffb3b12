// CpuCompute: the ops of ops.h, with the layer's per-sequence attention split over the pool (sequences write
// disjoint rows: any thread count gives the same bits).
#include "train/compute.h"

#include "core/thread_pool.h"

namespace moe::train {

namespace {
template <typename Fn>
void for_sequences(ThreadPool* pool, int64_t b, const Fn& fn) {
  if (!pool || b == 1) {
    for (int64_t s = 0; s < b; ++s) fn(s);
    return;
  }
  pool->parallel_for(b, [&](int64_t begin, int64_t end, int) {
    for (int64_t s = begin; s < end; ++s) fn(s);
  });
}
}  // namespace

void CpuCompute::matmul_forward(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m,
                                bool) {
  train::matmul_forward(y, x, w, n, k, m, pool_);
}

void CpuCompute::matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                                 int64_t k, int64_t m, bool) {
  train::matmul_backward(dx, dw, dy, x, w, n, k, m, pool_);
}

void CpuCompute::attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                                   const MlaDims& d, int64_t b) {
  const int64_t t = d.t, H = d.heads, dq = d.dn + d.dr, dkv = d.dn + d.dv;
  for_sequences(pool_, b, [&](int64_t s) {
    mla_attention_forward(out + s * t * H * d.dv, probs + s * H * t * t, q + s * t * H * dq, kv + s * t * H * dkv,
                          k_rope + s * t * d.dr, d);
  });
}

void CpuCompute::attention_backward(float* dq, float* dkv, float* dk_rope, const float* dout, const float* probs,
                                    const float* q, const float* kv, const float* k_rope, const MlaDims& d,
                                    int64_t b) {
  const int64_t t = d.t, H = d.heads, wq = d.dn + d.dr, wkv = d.dn + d.dv;
  for_sequences(pool_, b, [&](int64_t s) {
    mla_attention_backward(dq + s * t * H * wq, dkv + s * t * H * wkv, dk_rope + s * t * d.dr, dout + s * t * H * d.dv,
                           probs + s * H * t * t, q + s * t * H * wq, kv + s * t * H * wkv, k_rope + s * t * d.dr, d);
  });
}

double CpuCompute::cross_entropy(float* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale) {
  return cross_entropy_fused(logits, targets, n, vocab, dscale);
}

}  // namespace moe::train
