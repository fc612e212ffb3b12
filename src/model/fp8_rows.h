#pragma once
// Rows of activations as FP8 E4M3 with one F32 scale per 1x128 tile (DeepSeek-V3's activation format), for
// expert parallelism's FP8 dispatch (expert_parallel.h): a row of D values travels as D bytes plus
// ceil(D / 128) scales instead of 4 D bytes of F32.
//   quantize:   scale = amax(tile) / 448 (1 for an all-zero tile), q = E4M3(x / scale) (round to nearest even);
//   dequantize: x' = float(q) * scale.
// Error per element: |x' - x| <= 2^-4 |x| + 2^-10 scale (3 mantissa bits: half an ulp is 2^-4 relative in the
// normal range; below E4M3's smallest normal 2^-6 the spacing is 2^-9, so half of it times the scale).
#include <cstdint>

namespace moe {

constexpr int64_t kFp8RowTile = 128;
inline int64_t fp8_row_tiles(int64_t D) { return (D + kFp8RowTile - 1) / kFp8RowTile; }
// Bytes of one quantised row of D values: the E4M3 values and the F32 scales.
inline int64_t fp8_row_bytes(int64_t D) { return D + fp8_row_tiles(D) * int64_t(sizeof(float)); }

// x [rows, D] F32 -> q [rows, D] E4M3, scales [rows, fp8_row_tiles(D)].
void quantize_rows_e4m3(const float* x, int64_t rows, int64_t D, uint8_t* q, float* scales);
// q [rows, D], scales [rows, fp8_row_tiles(D)] -> out [rows, D] F32.
void dequantize_rows_e4m3(const uint8_t* q, const float* scales, int64_t rows, int64_t D, float* out);

}  // namespace moe
