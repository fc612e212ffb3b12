// y = x W^T, the model's every projection: x [n, k], W [m, k] (the checkpoint's [out, in] layout), y [n, m].
// Dot products accumulate in double, so float results are the exact products rounded once.
#include <vector>

#include "train/ops.h"

namespace moe::train {

template <typename T>
void matmul_forward(T* y, const T* x, const T* w, int64_t n, int64_t k, int64_t m) {
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < m; ++j) {
      const T* xi = x + i * k;
      const T* wj = w + j * k;
      double acc = 0;
      for (int64_t l = 0; l < k; ++l) acc += double(xi[l]) * double(wj[l]);
      y[i * m + j] = T(acc);
    }
}

template <typename T>
void matmul_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t n, int64_t k, int64_t m) {
  std::vector<double> acc(static_cast<size_t>(k));
  if (dx)  // dx[i, :] += sum_j dy[i, j] W[j, :]
    for (int64_t i = 0; i < n; ++i) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t j = 0; j < m; ++j) {
        const double g = double(dy[i * m + j]);
        if (g == 0) continue;
        const T* wj = w + j * k;
        for (int64_t l = 0; l < k; ++l) acc[size_t(l)] += g * double(wj[l]);
      }
      for (int64_t l = 0; l < k; ++l) dx[i * k + l] += T(acc[size_t(l)]);
    }
  if (dw)  // dW[j, :] += sum_i dy[i, j] x[i, :]
    for (int64_t j = 0; j < m; ++j) {
      std::fill(acc.begin(), acc.end(), 0.0);
      for (int64_t i = 0; i < n; ++i) {
        const double g = double(dy[i * m + j]);
        if (g == 0) continue;
        const T* xi = x + i * k;
        for (int64_t l = 0; l < k; ++l) acc[size_t(l)] += g * double(xi[l]);
      }
      for (int64_t l = 0; l < k; ++l) dw[j * k + l] += T(acc[size_t(l)]);
    }
}

#define INSTANTIATE(T)                                                                          \
  template void matmul_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t);         \
  template void matmul_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
