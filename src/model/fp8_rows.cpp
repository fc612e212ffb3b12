// FP8 E4M3 rows with 1x128 tile scales (shapes and error bound in fp8_rows.h).
#include "model/fp8_rows.h"

#include <algorithm>
#include <cmath>

#include "core/dtype.h"

namespace moe {

void quantize_rows_e4m3(const float* x, int64_t rows, int64_t D, uint8_t* q, float* scales) {
  const int64_t tiles = fp8_row_tiles(D);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t b = 0; b < tiles; ++b) {
      const int64_t i0 = b * kFp8RowTile, i1 = std::min(D, i0 + kFp8RowTile);
      float amax = 0.0f;
      for (int64_t i = i0; i < i1; ++i) amax = std::max(amax, std::fabs(x[r * D + i]));
      const float scale = amax > 0.0f ? amax / kE4M3Max : 1.0f;
      scales[r * tiles + b] = scale;
      for (int64_t i = i0; i < i1; ++i) q[r * D + i] = float_to_e4m3(x[r * D + i] / scale);
    }
}

void dequantize_rows_e4m3(const uint8_t* q, const float* scales, int64_t rows, int64_t D, float* out) {
  const int64_t tiles = fp8_row_tiles(D);
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t i = 0; i < D; ++i) out[r * D + i] = e4m3_to_float(q[r * D + i]) * scales[r * tiles + i / kFp8RowTile];
}

}  // namespace moe
