// y = x W^T, the model's every projection: x [n, k], W [m, k] (the checkpoint's [out, in] layout), y [n, m].
// Dot products accumulate in double, so float results are the exact products rounded once. Threads split the
// outputs, never a sum, so any number of threads gives the same bits.
#include <algorithm>
#include <vector>

#include "core/thread_pool.h"
#include "train/ops.h"

namespace moe::train {

namespace {

// fn(begin, end) over [0, count), on the pool when there is one and the work (count * per_item multiply-adds) is
// worth waking it for.
template <typename Fn>
void split(ThreadPool* pool, int64_t count, int64_t per_item, const Fn& fn) {
  if (!pool || pool->size() == 1 || count * per_item < (int64_t(1) << 15)) return fn(int64_t(0), count);
  const int64_t grain = std::max<int64_t>(1, (int64_t(1) << 14) / std::max<int64_t>(per_item, 1));
  pool->parallel_for(count, [&](int64_t b, int64_t e, int) { fn(b, e); }, grain);
}

}  // namespace

template <typename T>
void matmul_forward(T* y, const T* x, const T* w, int64_t n, int64_t k, int64_t m, ThreadPool* pool) {
  // Panels of 8 output columns: W's 8 rows transposed into wt [k, 8] (double), then for every row of x the 8 sums
  // run side by side over l = 0, 1, ... (a vector of 8 accumulators: each sum keeps its order, so the same bits as
  // one dot product at a time, for any panel split). Columns past the last full panel: plain dot products.
  constexpr int64_t P = 8;
  const int64_t panels = m / P;
  split(pool, panels + (m % P ? 1 : 0), n * k * P, [&](int64_t b, int64_t e) {
    std::vector<double> wt(static_cast<size_t>(k * P));
    for (int64_t p = b; p < e; ++p) {
      const int64_t j0 = p * P;
      if (p == panels) {  // the remainder columns
        for (int64_t i = 0; i < n; ++i)
          for (int64_t j = j0; j < m; ++j) {
            const T* xi = x + i * k;
            const T* wj = w + j * k;
            double acc = 0;
            for (int64_t l = 0; l < k; ++l) acc += double(xi[l]) * double(wj[l]);
            y[i * m + j] = T(acc);
          }
        continue;
      }
      for (int64_t c = 0; c < P; ++c)
        for (int64_t l = 0; l < k; ++l) wt[size_t(l * P + c)] = double(w[(j0 + c) * k + l]);
      for (int64_t i = 0; i < n; ++i) {
        const T* xi = x + i * k;
        double acc[P] = {0, 0, 0, 0, 0, 0, 0, 0};
        for (int64_t l = 0; l < k; ++l) {
          const double xl = double(xi[l]);
          const double* wl = wt.data() + l * P;
          for (int64_t c = 0; c < P; ++c) acc[c] += xl * wl[c];
        }
        for (int64_t c = 0; c < P; ++c) y[i * m + j0 + c] = T(acc[c]);
      }
    }
  });
}

template <typename T>
void matmul_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t n, int64_t k, int64_t m,
                     ThreadPool* pool) {
  if (dx)  // dx[i, :] += sum_j dy[i, j] W[j, :]
    split(pool, n, k * m, [&](int64_t b, int64_t e) {
      std::vector<double> acc(static_cast<size_t>(k));
      for (int64_t i = b; i < e; ++i) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t j = 0; j < m; ++j) {
          const double g = double(dy[i * m + j]);
          if (g == 0) continue;
          const T* wj = w + j * k;
          for (int64_t l = 0; l < k; ++l) acc[size_t(l)] += g * double(wj[l]);
        }
        for (int64_t l = 0; l < k; ++l) dx[i * k + l] += T(acc[size_t(l)]);
      }
    });
  if (dw)  // dW[j, :] += sum_i dy[i, j] x[i, :]
    split(pool, m, k * n, [&](int64_t b, int64_t e) {
      std::vector<double> acc(static_cast<size_t>(k));
      for (int64_t j = b; j < e; ++j) {
        std::fill(acc.begin(), acc.end(), 0.0);
        for (int64_t i = 0; i < n; ++i) {
          const double g = double(dy[i * m + j]);
          if (g == 0) continue;
          const T* xi = x + i * k;
          for (int64_t l = 0; l < k; ++l) acc[size_t(l)] += g * double(xi[l]);
        }
        for (int64_t l = 0; l < k; ++l) dw[j * k + l] += T(acc[size_t(l)]);
      }
    });
}

#define INSTANTIATE(T)                                                                                   \
  template void matmul_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, ThreadPool*);     \
  template void matmul_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, ThreadPool*);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
