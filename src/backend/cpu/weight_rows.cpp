#include "backend/cpu/weight_rows.h"

#include "backend/cpu/int4_rows.h"

#include <immintrin.h>

#include <algorithm>

#include "core/dtype.h"
#include "core/error.h"

namespace moe::cpu {

namespace {

#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
constexpr bool kVector = true;

inline float hsum(__m256 v) {
  __m128 lo = _mm256_castps256_ps128(v), hi = _mm256_extractf128_ps(v, 1);
  lo = _mm_add_ps(lo, hi);
  lo = _mm_add_ps(lo, _mm_movehl_ps(lo, lo));
  lo = _mm_add_ss(lo, _mm_shuffle_ps(lo, lo, 1));
  return _mm_cvtss_f32(lo);
}
inline __m256 load_bf16x8(const uint16_t* p) {
  __m128i v = _mm_loadu_si128(reinterpret_cast<const __m128i*>(p));
  return _mm256_castsi256_ps(_mm256_slli_epi32(_mm256_cvtepu16_epi32(v), 16));
}
inline __m256 load_f16x8(const uint16_t* p) {
  return _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
}
// E4M3 -> F16 by moving the bits: sign to bit 15, exponent and mantissa up by 7. The F16 value is the E4M3
// value times 2^-8 (exponent bias 15 vs 7), subnormals included; callers multiply by 256.
inline void load_e4m3x16(const uint8_t* p, __m256& lo, __m256& hi) {
  __m256i b = _mm256_cvtepu8_epi16(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  __m256i mag = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x7f)), 7);
  __m256i sign = _mm256_slli_epi16(_mm256_and_si256(b, _mm256_set1_epi16(0x80)), 8);
  __m256i h = _mm256_or_si256(mag, sign);
  lo = _mm256_cvtph_ps(_mm256_castsi256_si128(h));
  hi = _mm256_cvtph_ps(_mm256_extracti128_si256(h, 1));
}
#else
constexpr bool kVector = false;
#endif

inline float scalar_weight(const Weight& w, int64_t n, int64_t k) {
  const int64_t K = w.cols();
  if (w.is_int4()) {
    float v;
    dequant_row_int4(w, n, k, 1, &v);
    return v;
  }
  switch (w.w.dtype) {
    case DType::F32: return w.w.as<const float>()[n * K + k];
    case DType::BF16: return bf16_to_float(w.w.as<const uint16_t>()[n * K + k]);
    case DType::F16: return f16_to_float(w.w.as<const uint16_t>()[n * K + k]);
    case DType::F8_E4M3: {
      const int64_t kb = (K + w.block_k - 1) / w.block_k;
      const float s = w.scale_inv.as<const float>()[(n / w.block_n) * kb + k / w.block_k];
      return e4m3_to_float(w.w.as<const uint8_t>()[n * K + k]) * s;
    }
    default: fail("unsupported weight dtype {}", dtype_name(w.w.dtype));
  }
}

// Dot of x[0..count) with a same-typed row segment p (no scales).
template <DType D>
float dot_segment(const float* x, const void* row, int64_t count) {
  int64_t k = 0;
  float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__) && defined(__F16C__)
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  if constexpr (D == DType::BF16 || D == DType::F16) {
    const uint16_t* p = static_cast<const uint16_t*>(row);
    for (; k + 16 <= count; k += 16) {
      __m256 w0 = D == DType::BF16 ? load_bf16x8(p + k) : load_f16x8(p + k);
      __m256 w1 = D == DType::BF16 ? load_bf16x8(p + k + 8) : load_f16x8(p + k + 8);
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w0, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), w1, acc1);
    }
  } else if constexpr (D == DType::F32) {
    const float* p = static_cast<const float*>(row);
    for (; k + 16 <= count; k += 16) {
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), _mm256_loadu_ps(p + k), acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), _mm256_loadu_ps(p + k + 8), acc1);
    }
  } else if constexpr (D == DType::F8_E4M3) {
    const uint8_t* p = static_cast<const uint8_t*>(row);
    for (; k + 16 <= count; k += 16) {
      __m256 w0, w1;
      load_e4m3x16(p + k, w0, w1);
      acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k), w0, acc0);
      acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(x + k + 8), w1, acc1);
    }
  }
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; k < count; ++k) {
    float wv;
    if constexpr (D == DType::BF16) wv = bf16_to_float(static_cast<const uint16_t*>(row)[k]);
    else if constexpr (D == DType::F16) wv = f16_to_float(static_cast<const uint16_t*>(row)[k]);
    else if constexpr (D == DType::F32) wv = static_cast<const float*>(row)[k];
    else wv = e4m3_to_float(static_cast<const uint8_t*>(row)[k]) * (kVector ? 1.0f / 256.0f : 1.0f);
    sum += x[k] * wv;
  }
  return sum;
}

// FP8 scale factor that undoes the 2^-8 of the bit-moving conversion.
constexpr float kFp8Unit = kVector ? 256.0f : 1.0f;

}  // namespace

float dot_row(const float* x, const Weight& w, int64_t n) {
  const int64_t K = w.cols();
  if (w.is_int4()) return dot_row_int4(x, w, n);
  switch (w.w.dtype) {
    case DType::BF16: return dot_segment<DType::BF16>(x, w.w.as<const uint16_t>() + n * K, K);
    case DType::F16: return dot_segment<DType::F16>(x, w.w.as<const uint16_t>() + n * K, K);
    case DType::F32: return dot_segment<DType::F32>(x, w.w.as<const float>() + n * K, K);
    case DType::F8_E4M3: {
      // Each 128-wide block's partial product is scaled and added in FP32 (DeepSeek's promotion scheme).
      const uint8_t* row = w.w.as<const uint8_t>() + n * K;
      const int64_t kblocks = (K + w.block_k - 1) / w.block_k;
      const float* scales = w.scale_inv.as<const float>() + (n / w.block_n) * kblocks;
      float acc = 0.0f;
      for (int64_t b = 0; b < kblocks; ++b) {
        const int64_t k0 = b * w.block_k, len = std::min<int64_t>(w.block_k, K - k0);
        acc += dot_segment<DType::F8_E4M3>(x + k0, row + k0, len) * (scales[b] * kFp8Unit);
      }
      return acc;
    }
    default: fail("matmul: unsupported weight dtype {}", dtype_name(w.w.dtype));
  }
}

bool can_use_packed_bf16(const Weight& w) {
#if defined(__AVX2__) && defined(__FMA__)
  return w.w.dtype == DType::BF16 && w.cols() % 16 == 0;
#else
  return false;
#endif
}

void pack_bf16_pairs(const float* x, int64_t K, float* packed) {
  for (int64_t k = 0; k < K; k += 16)
    for (int j = 0; j < 8; ++j) {
      packed[k + j] = x[k + 2 * j];
      packed[k + 8 + j] = x[k + 2 * j + 1];
    }
}

float dot_row_packed_bf16(const float* packed, const Weight& w, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__)
  // One row at a time, 64 weights per step into 8 independent accumulators: a single sequential stream that the
  // hardware prefetcher follows, and no FMA dependency chain (interleaving 4 rows 4 KB apart ran at 40 %).
  const int64_t K = w.cols();
  const uint16_t* p = w.w.as<const uint16_t>() + n * K;
  const __m256i high = _mm256_set1_epi32(int(0xffff0000u));
  __m256 even[4], odd[4];
  for (int i = 0; i < 4; ++i) even[i] = odd[i] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 64 <= K; k += 64) {
    for (int i = 0; i < 4; ++i) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + k + 16 * i));
      even[i] = _mm256_fmadd_ps(_mm256_loadu_ps(packed + k + 16 * i), _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), even[i]);
      odd[i] = _mm256_fmadd_ps(_mm256_loadu_ps(packed + k + 16 * i + 8), _mm256_castsi256_ps(_mm256_and_si256(v, high)), odd[i]);
    }
  }
  for (; k < K; k += 16) {
    const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + k));
    even[0] = _mm256_fmadd_ps(_mm256_loadu_ps(packed + k), _mm256_castsi256_ps(_mm256_slli_epi32(v, 16)), even[0]);
    odd[0] = _mm256_fmadd_ps(_mm256_loadu_ps(packed + k + 8), _mm256_castsi256_ps(_mm256_and_si256(v, high)), odd[0]);
  }
  const __m256 sum = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(even[0], even[1]), _mm256_add_ps(even[2], even[3])),
                                   _mm256_add_ps(_mm256_add_ps(odd[0], odd[1]), _mm256_add_ps(odd[2], odd[3])));
  return hsum(sum);
#else
  (void)packed, (void)w, (void)n;
  fail("dot_row_packed_bf16 needs AVX2");
#endif
}

bool can_use_packed_fp8(const Weight& w) {
#if defined(__AVX2__) && defined(__FMA__)
  return w.w.dtype == DType::F8_E4M3 && w.block_k % 32 == 0 && w.cols() % w.block_k == 0;
#else
  return false;
#endif
}

void pack_fp8_quads(const float* x, int64_t K, float* packed) {
  for (int64_t k = 0; k < K; k += 32)
    for (int j = 0; j < 4; ++j)
      for (int l = 0; l < 8; ++l) packed[k + j * 8 + l] = x[k + 4 * l + j];
}

float dot_row_packed_fp8(const float* packed, const Weight& w, int64_t n) {
#if defined(__AVX2__) && defined(__FMA__)
  // One row at a time; within a 128-wide block each 32-byte load feeds 4 independent accumulators (byte j of
  // every 32-bit lane), and each block's partial sum is scaled and added in F32.
  const int64_t K = w.cols(), kblocks = K / w.block_k;
  const uint8_t* p = w.w.as<const uint8_t>() + n * K;
  const float* scales = w.scale_inv.as<const float>() + (n / w.block_n) * kblocks;
  const __m256i mag_mask = _mm256_set1_epi32(0x7f), sign_mask = _mm256_set1_epi32(0x80);
  constexpr float kUnbias = 1.329228e36f;  // 2^120
  float total = 0.0f;
  for (int64_t b = 0; b < kblocks; ++b) {
    __m256 acc[4];
    for (auto& a : acc) a = _mm256_setzero_ps();
    for (int64_t k = b * w.block_k; k < (b + 1) * w.block_k; k += 32) {
      const __m256i v = _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p + k));
      for (int j = 0; j < 4; ++j) {
        const __m256i byte = j ? _mm256_srli_epi32(v, 8 * j) : v;
        const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(byte, mag_mask), 20),
                                             _mm256_slli_epi32(_mm256_and_si256(byte, sign_mask), 24));
        acc[j] = _mm256_fmadd_ps(_mm256_loadu_ps(packed + k + j * 8), _mm256_castsi256_ps(bits), acc[j]);
      }
    }
    total += hsum(_mm256_add_ps(_mm256_add_ps(acc[0], acc[1]), _mm256_add_ps(acc[2], acc[3]))) * (scales[b] * kUnbias);
  }
  return total;
#else
  (void)packed, (void)w, (void)n;
  fail("dot_row_packed_fp8 needs AVX2");
#endif
}

void dequant_row(const Weight& w, int64_t n, int64_t k0, int64_t count, float* out) {
  const int64_t K = w.cols();
  if (w.is_int4()) return dequant_row_int4(w, n, k0, count, out);
  int64_t k = 0;
  switch (w.w.dtype) {
    case DType::F32:
      for (; k < count; ++k) out[k] = w.w.as<const float>()[n * K + k0 + k];
      return;
    case DType::BF16: {
      const uint16_t* p = w.w.as<const uint16_t>() + n * K + k0;
#if defined(__AVX2__)
      for (; k + 8 <= count; k += 8) _mm256_storeu_ps(out + k, load_bf16x8(p + k));
#endif
      for (; k < count; ++k) out[k] = bf16_to_float(p[k]);
      return;
    }
    case DType::F8_E4M3: {
      const uint8_t* p = w.w.as<const uint8_t>() + n * K;
      const int64_t kblocks = (K + w.block_k - 1) / w.block_k;
      const float* scales = w.scale_inv.as<const float>() + (n / w.block_n) * kblocks;
#if defined(__AVX2__)
      // E4M3 -> F32 by moving bits (the value times 2^-120), 8 at a time, within each block's scale.
      const __m256i mag_mask = _mm256_set1_epi32(0x7f), sign_mask = _mm256_set1_epi32(0x80);
      while (k < count) {
        const int64_t kk = k0 + k, block = kk / w.block_k;
        const int64_t run = std::min(count - k, (block + 1) * w.block_k - kk);
        const __m256 scale = _mm256_set1_ps(scales[block] * 1.329228e36f);  // 2^120
        int64_t i = 0;
        for (; i + 8 <= run; i += 8) {
          const __m256i b = _mm256_cvtepu8_epi32(_mm_loadl_epi64(reinterpret_cast<const __m128i*>(p + kk + i)));
          const __m256i bits = _mm256_or_si256(_mm256_slli_epi32(_mm256_and_si256(b, mag_mask), 20),
                                               _mm256_slli_epi32(_mm256_and_si256(b, sign_mask), 24));
          _mm256_storeu_ps(out + k + i, _mm256_mul_ps(_mm256_castsi256_ps(bits), scale));
        }
        for (; i < run; ++i) out[k + i] = e4m3_to_float(p[kk + i]) * scales[block];
        k += run;
      }
#else
      for (; k < count; ++k) out[k] = e4m3_to_float(p[k0 + k]) * scales[(k0 + k) / w.block_k];
#endif
      return;
    }
    default:
      for (; k < count; ++k) out[k] = scalar_weight(w, n, k0 + k);
  }
}

void axpy_row(float a, const Weight& w, int64_t n, float* y) {
  const int64_t K = w.cols();
  if (w.w.dtype == DType::BF16) {
    const uint16_t* p = w.w.as<const uint16_t>() + n * K;
    int64_t k = 0;
#if defined(__AVX2__) && defined(__FMA__)
    const __m256 av = _mm256_set1_ps(a);
    for (; k + 8 <= K; k += 8) _mm256_storeu_ps(y + k, _mm256_fmadd_ps(av, load_bf16x8(p + k), _mm256_loadu_ps(y + k)));
#endif
    for (; k < K; ++k) y[k] += a * bf16_to_float(p[k]);
    return;
  }
  float buf[256];
  for (int64_t k0 = 0; k0 < K; k0 += 256) {
    const int64_t len = std::min<int64_t>(256, K - k0);
    dequant_row(w, n, k0, len, buf);
    axpy_f32(a, buf, y + k0, len);
  }
}

void dequant_vector(const TensorView& v, float* out) {
  Weight w;
  w.w = v.reshaped({1, v.numel()});
  dequant_row(w, 0, 0, v.numel(), out);
}

float dot_f32(const float* a, const float* b, int64_t n) {
  int64_t i = 0;
  float sum = 0.0f;
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc0 = _mm256_setzero_ps(), acc1 = _mm256_setzero_ps();
  for (; i + 16 <= n; i += 16) {
    acc0 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i), _mm256_loadu_ps(b + i), acc0);
    acc1 = _mm256_fmadd_ps(_mm256_loadu_ps(a + i + 8), _mm256_loadu_ps(b + i + 8), acc1);
  }
  sum = hsum(_mm256_add_ps(acc0, acc1));
#endif
  for (; i < n; ++i) sum += a[i] * b[i];
  return sum;
}

void axpy_f32(float a, const float* x, float* y, int64_t n) {
  int64_t i = 0;
#if defined(__AVX2__) && defined(__FMA__)
  const __m256 av = _mm256_set1_ps(a);
  for (; i + 8 <= n; i += 8) _mm256_storeu_ps(y + i, _mm256_fmadd_ps(av, _mm256_loadu_ps(x + i), _mm256_loadu_ps(y + i)));
#endif
  for (; i < n; ++i) y[i] += a * x[i];
}

}  // namespace moe::cpu
