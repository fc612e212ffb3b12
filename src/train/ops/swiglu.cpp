// SwiGLU: out = silu(g) u, silu(g) = g sigmoid(g); silu'(g) = sigmoid(g) (1 + g (1 - sigmoid(g))).
#include <cmath>

#include "train/ops.h"

namespace moe::train {

template <typename T>
void swiglu_forward(T* out, const T* gate, const T* up, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const double g = double(gate[i]);
    out[i] = T(g / (1.0 + std::exp(-g)) * double(up[i]));
  }
}

template <typename T>
void swiglu_backward(T* dgate, T* dup, const T* dout, const T* gate, const T* up, int64_t count) {
  for (int64_t i = 0; i < count; ++i) {
    const double g = double(gate[i]), sg = 1.0 / (1.0 + std::exp(-g)), d = double(dout[i]);
    if (dgate) dgate[i] += T(d * double(up[i]) * sg * (1.0 + g * (1.0 - sg)));
    if (dup) dup[i] += T(d * g * sg);
  }
}

#define INSTANTIATE(T)                                                       \
  template void swiglu_forward<T>(T*, const T*, const T*, int64_t);        \
  template void swiglu_backward<T>(T*, T*, const T*, const T*, const T*, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
