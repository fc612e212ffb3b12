// RMSNorm y = w * x * r, r = (mean(x^2) + eps)^-1/2, per row of d values.
// Backward, with g = dy * w:  dx_i = r g_i - r^3 x_i (sum_j g_j x_j) / d,  dw_i += sum over rows dy_i x_i r.
#include <cmath>

#include "train/ops.h"

namespace moe::train {

template <typename T>
void rmsnorm_forward(T* y, T* rstd, const T* x, const T* w, int64_t n, int64_t d, double eps) {
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    double ss = 0;
    for (int64_t j = 0; j < d; ++j) ss += double(xi[j]) * double(xi[j]);
    const double r = 1.0 / std::sqrt(ss / double(d) + eps);
    rstd[i] = T(r);
    for (int64_t j = 0; j < d; ++j) y[i * d + j] = T(double(w[j]) * double(xi[j]) * r);
  }
}

template <typename T>
void rmsnorm_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, const T* rstd, int64_t n, int64_t d) {
  for (int64_t i = 0; i < n; ++i) {
    const T* xi = x + i * d;
    const T* dyi = dy + i * d;
    const double r = double(rstd[i]);
    double gx = 0;  // sum_j (dy_j w_j) x_j
    for (int64_t j = 0; j < d; ++j) gx += double(dyi[j]) * double(w[j]) * double(xi[j]);
    if (dx)
      for (int64_t j = 0; j < d; ++j)
        dx[i * d + j] += T(r * double(dyi[j]) * double(w[j]) - r * r * r * double(xi[j]) * gx / double(d));
    if (dw)
      for (int64_t j = 0; j < d; ++j) dw[j] += T(double(dyi[j]) * double(xi[j]) * r);
  }
}

#define INSTANTIATE(T)                                                                                  \
  template void rmsnorm_forward<T>(T*, T*, const T*, const T*, int64_t, int64_t, double);             \
  template void rmsnorm_backward<T>(T*, T*, const T*, const T*, const T*, const T*, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
