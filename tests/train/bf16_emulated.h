#pragma once
// A Compute (train/compute.h) that emulates BF16 mixed-precision GEMMs on the CPU: every GEMM operand rounded to
// BF16 (round to nearest even, as the GPU's conversion does) before the CPU trainer's exact GEMM; the GEMMs the
// model marks fp32 (MoE gate, head) stay exact; attention and cross-entropy are the CPU ops. The GPU step with
// BF16 GEMMs (train/cuda) rounds at exactly these points, so it must match this closely.
// Options follow the GPU's throughput settings: head_vocab > 0 rounds the operands of the fp32-marked GEMMs whose
// output width is that vocabulary (the heads; the MoE gate stays exact), as DeviceTrainer::set_head_fp32(false);
// bf16_attention rounds the attention products' operands where attention_gemm.cu's Bf16 mode does (Q, K, V, P,
// dO, dS), with the softmax and its backward exact, as set_attention(AttnPrecision::Bf16).
#include <algorithm>
#include <cmath>
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
  struct Options {
    int64_t head_vocab = 0;       // > 0: the heads' GEMMs (output width head_vocab) on BF16 operands too
    bool bf16_attention = false;  // the attention products on BF16 operands
  };
  Bf16Emulated() = default;
  explicit Bf16Emulated(Options o) : o_(o) {}
  const char* name() const override { return "bf16-emulated"; }
  void matmul_forward(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m, bool fp32) override {
    if (fp32 && !is_head(m)) return cpu_.matmul_forward(y, x, w, n, k, m, true);
    cpu_.matmul_forward(y, rounded(x, n * k).data(), rounded(w, m * k).data(), n, k, m, false);
  }
  void matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n, int64_t k,
                       int64_t m, bool fp32) override {
    if (fp32 && !is_head(m)) return cpu_.matmul_backward(dx, dw, dy, x, w, n, k, m, true);
    cpu_.matmul_backward(dx, dw, rounded(dy, n * m).data(), rounded(x, n * k).data(), rounded(w, m * k).data(), n, k,
                         m, false);
  }
  void attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                         const MlaDims& d, int64_t b) override {
    if (!o_.bf16_attention) return cpu_.attention_forward(out, probs, q, kv, k_rope, d, b);
    const int64_t t = d.t, H = d.heads, dn = d.dn, dr = d.dr, dv = d.dv, dq = dn + dr, dkv = dn + dv, n = b * t;
    const std::vector<float> Q = rounded(q, n * H * dq), KV = rounded(kv, n * H * dkv), KR = rounded(k_rope, n * dr);
    std::vector<double> row(static_cast<size_t>(t));
    for (int64_t s = 0; s < b; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < t; ++i) {
          const float* qi = &Q[size_t(((s * t + i) * H + h) * dq)];
          double mx = -INFINITY;
          for (int64_t j = 0; j <= i; ++j) {
            const float* kj = &KV[size_t(((s * t + j) * H + h) * dkv)];
            const float* rj = &KR[size_t((s * t + j) * dr)];
            double acc = 0;
            for (int64_t c = 0; c < dn; ++c) acc += double(qi[c]) * kj[c];
            for (int64_t c = 0; c < dr; ++c) acc += double(qi[dn + c]) * rj[c];
            row[size_t(j)] = acc * d.scale;
            mx = std::max(mx, row[size_t(j)]);
          }
          double z = 0;
          for (int64_t j = 0; j <= i; ++j) z += std::exp(row[size_t(j)] - mx);
          float* pr = probs + ((s * H + h) * t + i) * t;
          float* o = out + ((s * t + i) * H + h) * dv;
          std::fill(o, o + dv, 0.0f);
          std::vector<double> acc(size_t(dv), 0.0);
          for (int64_t j = 0; j < t; ++j) {
            pr[j] = j <= i ? float(std::exp(row[size_t(j)] - mx) / z) : 0.0f;
            if (j > i) continue;
            const double p16 = round_bf16(pr[j]);
            const float* vj = &KV[size_t(((s * t + j) * H + h) * dkv + dn)];
            for (int64_t c = 0; c < dv; ++c) acc[size_t(c)] += p16 * vj[c];
          }
          for (int64_t c = 0; c < dv; ++c) o[c] = float(acc[size_t(c)]);
        }
  }
  void attention_backward(float* dq, float* dkv, float* dk_rope, const float* dout, const float* probs, const float* q,
                          const float* kv, const float* k_rope, const MlaDims& d, int64_t b) override {
    if (!o_.bf16_attention) return cpu_.attention_backward(dq, dkv, dk_rope, dout, probs, q, kv, k_rope, d, b);
    // dP = dO V^T; dS = P (dP - sum_j P dP) scale (exact, from the FP32 P); then the products on BF16 dS, P, Q, K,
    // dO, as the GPU: dq += dS K, dk += dS^T Q, dv += P^T dO, dk_rope += dS^T Q_rope.
    const int64_t t = d.t, H = d.heads, dn = d.dn, dr = d.dr, dv = d.dv, dq_ = dn + dr, dkv_ = dn + dv, n = b * t;
    const std::vector<float> Q = rounded(q, n * H * dq_), KV = rounded(kv, n * H * dkv_), KR = rounded(k_rope, n * dr),
                             DO = rounded(dout, n * H * dv);
    std::vector<double> dp(static_cast<size_t>(t));
    for (int64_t s = 0; s < b; ++s)
      for (int64_t h = 0; h < H; ++h)
        for (int64_t i = 0; i < t; ++i) {
          const float* pr = probs + ((s * H + h) * t + i) * t;
          const float* doi = &DO[size_t(((s * t + i) * H + h) * dv)];
          double dot = 0;
          for (int64_t j = 0; j <= i; ++j) {
            const float* vj = &KV[size_t(((s * t + j) * H + h) * dkv_ + dn)];
            double acc = 0;
            for (int64_t c = 0; c < dv; ++c) acc += double(doi[c]) * vj[c];
            dp[size_t(j)] = float(acc);
            dot += double(pr[j]) * dp[size_t(j)];
          }
          const float* qi = &Q[size_t(((s * t + i) * H + h) * dq_)];
          float* dqi = dq + ((s * t + i) * H + h) * dq_;
          for (int64_t j = 0; j <= i; ++j) {
            const double ds = round_bf16(float(double(pr[j]) * (dp[size_t(j)] - dot) * d.scale));
            const double p16 = round_bf16(pr[j]);
            const float* kj = &KV[size_t(((s * t + j) * H + h) * dkv_)];
            const float* rj = &KR[size_t((s * t + j) * dr)];
            float* dkj = dkv + ((s * t + j) * H + h) * dkv_;
            float* drj = dk_rope + (s * t + j) * dr;
            for (int64_t c = 0; c < dn; ++c) dqi[c] += float(ds * kj[c]), dkj[c] += float(ds * qi[c]);
            for (int64_t c = 0; c < dr; ++c) dqi[dn + c] += float(ds * rj[c]), drj[c] += float(ds * qi[dn + c]);
            for (int64_t c = 0; c < dv; ++c) dkj[dn + c] += float(p16 * doi[c]);
          }
        }
  }
  double cross_entropy(float* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale) override {
    return cpu_.cross_entropy(logits, targets, n, vocab, dscale);
  }

 private:
  bool is_head(int64_t m) const { return o_.head_vocab > 0 && m == o_.head_vocab; }
  Options o_;
  CpuCompute cpu_;
};

}  // namespace moe::train::test
