// INT4 rows: word k / 8 of the row holds value k in bits [4 (k % 8), 4 (k % 8) + 4), as q + 8 (compressed-tensors'
// pack_to_int32: values shifted to unsigned by 2^(bits-1), packed low bits first along the input dim).
#include "backend/cpu/int4_rows.h"

#include <immintrin.h>

#include <algorithm>

#include "core/dtype.h"
#include "core/error.h"

namespace moe::cpu {

namespace {

inline float group_scale(const Weight& w, int64_t n, int64_t g) {
  const int64_t groups = w.cols() / w.group_size;
  return w.scale_inv.dtype == DType::F32 ? w.scale_inv.as<const float>()[n * groups + g]
                                         : bf16_to_float(w.scale_inv.as<const uint16_t>()[n * groups + g]);
}

inline int nibble(uint32_t word, int j) { return int((word >> (4 * j)) & 0xFu) - 8; }

}  // namespace

float dot_row_int4(const float* x, const Weight& w, int64_t n) {
  const int64_t K = w.cols(), G = w.group_size, words = K / 8;
  const uint32_t* row = static_cast<const uint32_t*>(w.w.data) + n * words;
#if defined(__AVX2__) && defined(__FMA__)
  // Each word broadcast to 8 lanes, lane j shifted right by 4j: the 8 nibbles in order, minus the offset 8.
  const __m256i shifts = _mm256_setr_epi32(0, 4, 8, 12, 16, 20, 24, 28);
  const __m256i low4 = _mm256_set1_epi32(0xf), eight = _mm256_set1_epi32(8);
  __m256 total = _mm256_setzero_ps();
  for (int64_t g = 0; g < K / G; ++g) {
    __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
    for (int64_t wd = g * G / 8; wd < (g + 1) * G / 8; wd += 2) {
      const __m256i q0 = _mm256_sub_epi32(
          _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(row[wd])), shifts), low4), eight);
      const __m256i q1 = _mm256_sub_epi32(
          _mm256_and_si256(_mm256_srlv_epi32(_mm256_set1_epi32(int(row[wd + 1])), shifts), low4), eight);
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + wd * 8), _mm256_cvtepi32_ps(q0), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + wd * 8 + 8), _mm256_cvtepi32_ps(q1), acc1);
    }
    total = _mm256_fmadd_ps(_mm256_add_ps(acc0, acc1), _mm256_set1_ps(group_scale(w, n, g)), total);
  }
  __m128 lo = _mm256_castps256_ps128(total), hi = _mm256_extractf128_ps(total, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
#else
  float total = 0.0f;
  for (int64_t g = 0; g < K / G; ++g) {
    float acc = 0.0f;
    for (int64_t k = g * G; k < (g + 1) * G; ++k) acc += x[k] * float(nibble(row[k / 8], int(k % 8)));
    total += acc * group_scale(w, n, g);
  }
  return total;
#endif
}

void dequant_row_int4(const Weight& w, int64_t n, int64_t k0, int64_t count, float* out) {
  const int64_t words = w.cols() / 8;
  const uint32_t* row = static_cast<const uint32_t*>(w.w.data) + n * words;
  // A word never spans two groups (group_size is a multiple of 8): one word load and one scale per word.
  for (int64_t i = 0; i < count;) {
    const int64_t k = k0 + i, end = std::min<int64_t>(count, i + 8 - k % 8);
    const uint32_t word = row[k / 8];
    const float s = group_scale(w, n, k / w.group_size);
    for (; i < end; ++i) out[i] = float(nibble(word, int((k0 + i) % 8))) * s;
  }
}

}  // namespace moe::cpu
