// Small data-movement ops: embedding lookup, residual add, column concat, row gathers (ids on the host or the
// device).
#include <cstring>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"

namespace moe::cpu {

void embedding(const Weight& table, const TensorView& ids, const TensorView& out) {
  const int64_t T = ids.numel(), D = table.cols(), V = table.rows();
  for (int64_t t = 0; t < T; ++t) {
    const int32_t id = ids.as<const int32_t>()[t];
    MOE_CHECK(id >= 0 && id < V, "token id {} is outside the vocabulary (size {})", id, V);
    dequant_row(table, id, 0, D, out.as<float>() + t * D);
  }
}

void add(const TensorView& a, const TensorView& b, const TensorView& out) {
  const int64_t n = a.numel();
  const float* pa = a.as<const float>();
  const float* pb = b.as<const float>();
  float* po = out.as<float>();
  for (int64_t i = 0; i < n; ++i) po[i] = pa[i] + pb[i];
}

void concat_cols(const TensorView& a, const TensorView& b, const TensorView& out) {
  const int64_t T = a.rows(), da = a.row_size(), db = b.row_size();
  for (int64_t t = 0; t < T; ++t) {
    std::memcpy(out.as<float>() + t * (da + db), a.as<const float>() + t * da, size_t(da) * 4);
    std::memcpy(out.as<float>() + t * (da + db) + da, b.as<const float>() + t * db, size_t(db) * 4);
  }
}

void gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out) {
  const int64_t D = x.row_size();
  for (size_t r = 0; r < rows.size(); ++r)
    std::memcpy(out.as<float>() + int64_t(r) * D, x.as<const float>() + int64_t(rows[r]) * D, size_t(D) * 4);
}

void index_rows(const TensorView& x, const TensorView& rows, const TensorView& out) {
  const int64_t D = x.row_size(), T = x.rows();
  const int32_t* id = rows.as<const int32_t>();
  for (int64_t r = 0; r < rows.numel(); ++r) {
    MOE_CHECK(id[r] >= 0 && id[r] < T, "index_rows: row {} of {}", id[r], T);
    std::memcpy(out.as<float>() + r * D, x.as<const float>() + int64_t(id[r]) * D, size_t(D) * 4);
  }
}

}  // namespace moe::cpu
