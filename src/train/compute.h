#pragma once
// The device seam of the trainer: the heavy ops of a training step (every projection's GEMM forward and backward,
// MLA attention forward and backward, the fused cross-entropy over the vocabulary) behind one interface, so the
// same model code (layer.cpp, ffn.cpp, model.cpp) runs them on the CPU or on a GPU. Arrays stay host arrays with
// the ops.h conventions (row-major, backward ops ADD into their gradients, null gradient outputs skipped); an
// implementation copies in and out. The GPU no longer uses this seam: it runs the whole step with everything
// resident (train/device_step.h, train/cuda/device_trainer.h); CpuCompute and the tests' BF16 emulation do.
#include <cstdint>

#include "train/ops.h"

namespace moe {
class ThreadPool;
}

namespace moe::train {

class Compute {
 public:
  virtual ~Compute() = default;
  virtual const char* name() const = 0;
  // y[n, m] = x[n, k] W[m, k]^T. fp32: the GEMMs DeepSeek-V3 keeps in higher precision in mixed-precision
  // training (the MoE gate and the output head) ask for FP32 operands; others may use the device's compute type.
  virtual void matmul_forward(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m,
                              bool fp32) = 0;
  // dx[n, k] += dy W; dw[m, k] += dy^T x
  virtual void matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                               int64_t k, int64_t m, bool fp32) = 0;
  // b sequences of d.t tokens, laid out one after another (q [b*t, H, dn+dr], kv [b*t, H, dn+dv], k_rope
  // [b*t, dr], out [b*t, H, dv], probs [b, H, t, t]).
  virtual void attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                                 const MlaDims& d, int64_t b) = 0;
  virtual void attention_backward(float* dq, float* dkv, float* dk_rope, const float* dout, const float* probs,
                                  const float* q, const float* kv, const float* k_rope, const MlaDims& d,
                                  int64_t b) = 0;
  // cross_entropy_fused's contract (ops.h): logits become dlogits, returns the summed loss.
  virtual double cross_entropy(float* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale) = 0;
};

// The CPU trainer's ops (ops.h) on `pool`'s threads (null: this thread).
class CpuCompute final : public Compute {
 public:
  explicit CpuCompute(ThreadPool* pool = nullptr) : pool_(pool) {}
  const char* name() const override { return "cpu"; }
  void matmul_forward(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m, bool fp32) override;
  void matmul_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n, int64_t k,
                       int64_t m, bool fp32) override;
  void attention_forward(float* out, float* probs, const float* q, const float* kv, const float* k_rope,
                         const MlaDims& d, int64_t b) override;
  void attention_backward(float* dq, float* dkv, float* dk_rope, const float* dout, const float* probs,
                          const float* q, const float* kv, const float* k_rope, const MlaDims& d, int64_t b) override;
  double cross_entropy(float* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale) override;

 private:
  ThreadPool* pool_;
};

}  // namespace moe::train
