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
  // Four rows of x share each row of W as it streams through the cache, and their four sums run side by side
  // (independent chains, each still in the order l = 0, 1, ...: the same bits as one at a time).
  split(pool, (n + 3) / 4, 4 * k * m, [&](int64_t b, int64_t e) {
    for (int64_t i0 = b * 4; i0 < std::min(n, e * 4); i0 += 4) {
      const int64_t rows = std::min<int64_t>(4, n - i0);
      for (int64_t j = 0; j < m; ++j) {
        const T* wj = w + j * k;
        if (rows == 4) {
          const T *x0 = x + i0 * k, *x1 = x0 + k, *x2 = x1 + k, *x3 = x2 + k;
          double a0 = 0, a1 = 0, a2 = 0, a3 = 0;
          for (int64_t l = 0; l < k; ++l) {
            const double wl = double(wj[l]);
            a0 += double(x0[l]) * wl, a1 += double(x1[l]) * wl, a2 += double(x2[l]) * wl, a3 += double(x3[l]) * wl;
          }
          y[i0 * m + j] = T(a0), y[(i0 + 1) * m + j] = T(a1), y[(i0 + 2) * m + j] = T(a2), y[(i0 + 3) * m + j] = T(a3);
          continue;
        }
        for (int64_t r = 0; r < rows; ++r) {
          const T* xi = x + (i0 + r) * k;
          double acc = 0;
          for (int64_t l = 0; l < k; ++l) acc += double(xi[l]) * double(wj[l]);
          y[(i0 + r) * m + j] = T(acc);
        }
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
