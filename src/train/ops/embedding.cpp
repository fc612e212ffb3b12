// Token embedding: a row gather forward, a scatter-add backward (a token seen twice gets both rows' gradients).
#include <cstring>

#include "train/ops.h"

namespace moe::train {

template <typename T>
void embedding_forward(T* out, const int32_t* ids, int64_t n, const T* table, int64_t d) {
  for (int64_t i = 0; i < n; ++i) std::memcpy(out + i * d, table + int64_t(ids[i]) * d, size_t(d) * sizeof(T));
}

template <typename T>
void embedding_backward(T* dtable, const int32_t* ids, int64_t n, const T* dout, int64_t d) {
  for (int64_t i = 0; i < n; ++i) {
    T* row = dtable + int64_t(ids[i]) * d;
    for (int64_t j = 0; j < d; ++j) row[j] += dout[i * d + j];
  }
}

#define INSTANTIATE(T)                                                                  \
  template void embedding_forward<T>(T*, const int32_t*, int64_t, const T*, int64_t); \
  template void embedding_backward<T>(T*, const int32_t*, int64_t, const T*, int64_t);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
