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

// acc_r[l] += sum over `count` terms t of g(r, t) * row(t)[l], for R outputs r at once: each row(t) is loaded once
// for the R sums (W's rows for dx, x's rows for dW), and each sum still adds its terms in order t = 0, 1, ...
template <typename T, int R, typename G, typename Row>
void accumulate_rows(double* const* acc, int64_t count, int64_t k, const G& g, const Row& row) {
  for (int64_t t = 0; t < count; ++t) {
    double gs[R];
    bool any = false;
    for (int r = 0; r < R; ++r) any |= (gs[r] = g(r, t)) != 0;
    if (!any) continue;  // a zero gradient row (routed experts, masked targets) costs nothing
    const T* v = row(t);
    for (int64_t l = 0; l < k; ++l) {
      const double vl = double(v[l]);
      for (int r = 0; r < R; ++r) acc[r][l] += gs[r] * vl;
    }
  }
}

template <typename T>
void matmul_backward(T* dx, T* dw, const T* dy, const T* x, const T* w, int64_t n, int64_t k, int64_t m,
                     ThreadPool* pool) {
  constexpr int R = 4;
  // Groups of R outputs (rows of dx, or rows of dW); a group's sums share every load of the rows they add.
  auto run = [&](T* out, int64_t outputs, int64_t terms, auto g, auto row) {
    split(pool, (outputs + R - 1) / R, R * k * terms, [&](int64_t b, int64_t e) {
      std::vector<double> buf(static_cast<size_t>(R * k));
      for (int64_t o0 = b * R; o0 < std::min(outputs, e * R); o0 += R) {
        std::fill(buf.begin(), buf.end(), 0.0);
        double* acc[R];
        for (int r = 0; r < R; ++r) acc[r] = buf.data() + r * k;
        if (o0 + R <= outputs) {
          accumulate_rows<T, R>(acc, terms, k, [&](int r, int64_t t) { return g(o0 + r, t); }, row);
        } else {
          for (int64_t o = o0; o < outputs; ++o)
            accumulate_rows<T, 1>(&acc[o - o0], terms, k, [&](int, int64_t t) { return g(o, t); }, row);
        }
        for (int64_t o = o0; o < std::min(outputs, o0 + R); ++o)
          for (int64_t l = 0; l < k; ++l) out[o * k + l] += T(acc[o - o0][l]);
      }
    });
  };
  // dx[i, :] += sum_j dy[i, j] W[j, :]
  if (dx)
    run(dx, n, m, [&](int64_t i, int64_t j) { return double(dy[i * m + j]); }, [&](int64_t j) { return w + j * k; });
  // dW[j, :] += sum_i dy[i, j] x[i, :]
  if (dw)
    run(dw, m, n, [&](int64_t j, int64_t i) { return double(dy[i * m + j]); }, [&](int64_t i) { return x + i * k; });
}

#define INSTANTIATE(T)                                                                                   \
  template void matmul_forward<T>(T*, const T*, const T*, int64_t, int64_t, int64_t, ThreadPool*);     \
  template void matmul_backward<T>(T*, T*, const T*, const T*, const T*, int64_t, int64_t, int64_t, ThreadPool*);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
