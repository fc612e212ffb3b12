// Rotary embedding on interleaved pairs: (a, b) -> m (a cos - b sin, a sin + b cos), angle = pos * f_i,
// m = rope.attn_factor. The Jacobian is m R(angle); its transpose is m R(-angle), which is the backward.
#include <cmath>

#include "train/ops.h"

namespace moe::train {

namespace {
template <typename T>
void rotate(T* x, int64_t n, int64_t heads, int64_t head_dim, int64_t offset, const int32_t* pos,
            const RopeParams& rope, double sign) {
  const int64_t half = int64_t(rope.inv_freq.size());
  for (int64_t i = 0; i < n; ++i)
    for (int64_t p = 0; p < half; ++p) {
      const double angle = double(pos[i]) * rope.inv_freq[size_t(p)];
      const double c = std::cos(angle) * rope.attn_factor, s = sign * std::sin(angle) * rope.attn_factor;
      for (int64_t h = 0; h < heads; ++h) {
        T* v = x + (i * heads + h) * head_dim + offset + 2 * p;
        const double a = double(v[0]), b = double(v[1]);
        v[0] = T(a * c - b * s);
        v[1] = T(a * s + b * c);
      }
    }
}
}  // namespace

template <typename T>
void rope_forward(T* x, int64_t n, int64_t heads, int64_t head_dim, int64_t offset, const int32_t* pos,
                  const RopeParams& rope) {
  rotate(x, n, heads, head_dim, offset, pos, rope, 1.0);
}

template <typename T>
void rope_backward(T* dx, int64_t n, int64_t heads, int64_t head_dim, int64_t offset, const int32_t* pos,
                   const RopeParams& rope) {
  rotate(dx, n, heads, head_dim, offset, pos, rope, -1.0);
}

#define INSTANTIATE(T)                                                                                         \
  template void rope_forward<T>(T*, int64_t, int64_t, int64_t, int64_t, const int32_t*, const RopeParams&); \
  template void rope_backward<T>(T*, int64_t, int64_t, int64_t, int64_t, const int32_t*, const RopeParams&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
