// SwiGLU MLP: out [T, D] = down(silu(gate(x)) * up(x)), x [T, H], hidden width I = gate.rows().
#include <cmath>

#include "backend/cpu/cpu_ops.h"
#include "core/tensor.h"

namespace moe::cpu {

void swiglu_mlp(ThreadPool& pool, const TensorView& x, const MlpWeights& mlp, const TensorView& out) {
  const int64_t T = x.rows(), I = mlp.gate.rows();
  Tensor g = Tensor::host(DType::F32, {T, I}), u = Tensor::host(DType::F32, {T, I});
  matmul(pool, x, mlp.gate, g);
  matmul(pool, x, mlp.up, u);
  float* pg = g.as<float>();
  const float* pu = u.as<const float>();
  for (int64_t i = 0; i < T * I; ++i) pg[i] = pg[i] / (1.0f + std::exp(-pg[i])) * pu[i];
  matmul(pool, g, mlp.down, out);
}

}  // namespace moe::cpu
