#pragma once
// A Compute (train/compute.h) that emulates BF16 mixed-precision GEMMs on the CPU: every GEMM operand rounded to
// BF16 (round to nearest even, as the GPU's conversion does) before the CPU trainer's exact GEMM; the GEMMs the
// model marks fp32 (MoE gate, head) stay exact; attention and cross-entropy are the CPU ops. The GPU step with
// BF16 GEMMs (train/cuda) rounds at exactly these points, so it must match this closely.
#include <cstring>
#include <vector>

#include "train/compute.h"

namespace moe::train::test {

inline float round_bf16(float f) {
  uint32_t u;
  std::memcpy(&u, &f, 4);
  u = (u + 0x7FFFu + ((u >> 16) & 1u)) & 0xFFFF0000u;  // nearest, ties to even (finite inputs)
  std::memcpy(&f, &u, 4);
  return f;
}

inline std::vector<float> rounded(const float* p, int64_t count) {
  std::vector<float> v(p, p + count);
  for (float& x : v) x = round_bf16(x);
  return v;
}

class Bf16Emulated final : public Compute {
 public:
  const char* name() const override { return "bf16-emulated"; }
  void matmul_forward(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m, bool fp32) override {
    if (fp32) return cpu_.matmul_forward(y, x, w, n, k, m, true);
    cpu_.matmul_forward(y, rounded(x, n * k).data(), rounded(w, m * k).data(), n, k, m, false);
  }
  void matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n, int64_t k,
                       int64_t m, bool fp32) override {
    if (fp32) return cpu_.matmul_backward(dx, dw, dy, x, w, n, k, m, true);
    cpu_.matmul_backward(dx, dw, rounded(dy, n * m).data(), rounded(x, n * k).data(), rounded(w, m * k).data(), n, k,
                         m, false);
  }
  void attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                         const MlaDims& d, int64_t b) override {
    cpu_.attention_forward(out, probs, q, kv, k_rope, d, b);
  }
  void attention_backward(float* dq, float* dkv, float* dk_rope, const float* dout, const float* probs, const float* q,
                          const float* kv, const float* k_rope, const MlaDims& d, int64_t b) override {
    cpu_.attention_backward(dq, dkv, dk_rope, dout, probs, q, kv, k_rope, d, b);
  }
  double cross_entropy(float* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale) override {
    return cpu_.cross_entropy(logits, targets, n, vocab, dscale);
  }

 private:
  CpuCompute cpu_;
};

}  // namespace moe::train::test
