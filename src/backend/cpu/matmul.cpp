// out [T, N] = x [T, K] @ W[N, K]^T on the CPU, FP32 activations and accumulation.
// Few tokens (decode): each thread streams its share of weight rows once, converting in registers, so the
// step runs at memory bandwidth. Many tokens (prefill): each thread dequantises a tile of 16 weight rows
// into an L2-resident F32 buffer once and reuses it for every token.
#include <immintrin.h>

#include <algorithm>
#include <vector>

#include "backend/cpu/cpu_ops.h"
#include "backend/cpu/weight_rows.h"
#include "core/error.h"
#include "core/thread_pool.h"

namespace moe::cpu {

namespace {

constexpr int64_t kDecodeTokens = 4;  // up to this many tokens use the streaming path
constexpr int64_t kTileRows = 16;

void matmul_streaming(ThreadPool& pool, const float* x, int64_t T, const Weight& w, float* out) {
  const int64_t N = w.rows(), K = w.cols();
  const bool packed_bf16 = can_use_packed_bf16(w), packed_fp8 = can_use_packed_fp8(w);
  std::vector<float> xp(packed_bf16 || packed_fp8 ? size_t(T * K) : 0);
  for (int64_t t = 0; t < T && !xp.empty(); ++t) {
    if (packed_bf16) pack_bf16_pairs(x + t * K, K, xp.data() + t * K);
    else pack_fp8_quads(x + t * K, K, xp.data() + t * K);
  }
  // Rows in order, each read from memory once (for the second and later tokens it is still in L1).
  pool.parallel_for(
      N,
      [&](int64_t begin, int64_t end, int) {
        for (int64_t n = begin; n < end; ++n)
          for (int64_t t = 0; t < T; ++t) {
            float v;
            if (packed_bf16) v = dot_row_packed_bf16(xp.data() + t * K, w, n);
            else if (packed_fp8) v = dot_row_packed_fp8(xp.data() + t * K, w, n);
            else v = dot_row(x + t * K, w, n);
            out[t * N + n] = v;
          }
      },
      64);
}

// out[t][n] for 4 tokens x 2 rows of an F32 tile: 8 accumulators share each load of x and w.
inline void micro_4x2(const float* x, int64_t ldx, const float* w, int64_t K, float* out, int64_t ldo) {
#if defined(__AVX2__) && defined(__FMA__)
  __m256 acc[4][2];
  for (auto& a : acc) a[0] = a[1] = _mm256_setzero_ps();
  int64_t k = 0;
  for (; k + 8 <= K; k += 8) {
    const __m256 w0 = _mm256_loadu_ps(w + k), w1 = _mm256_loadu_ps(w + K + k);
    for (int t = 0; t < 4; ++t) {
      const __m256 xv = _mm256_loadu_ps(x + t * ldx + k);
      acc[t][0] = _mm256_fmadd_ps(xv, w0, acc[t][0]);
      acc[t][1] = _mm256_fmadd_ps(xv, w1, acc[t][1]);
    }
  }
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 2; ++i) {
      alignas(32) float lanes[8];
      _mm256_store_ps(lanes, acc[t][i]);
      float s = 0.0f;
      for (float v : lanes) s += v;
      for (int64_t kk = k; kk < K; ++kk) s += x[t * ldx + kk] * w[i * K + kk];
      out[t * ldo + i] = s;
    }
#else
  for (int t = 0; t < 4; ++t)
    for (int i = 0; i < 2; ++i) out[t * ldo + i] = dot_f32(x + t * ldx, w + i * K, K);
#endif
}

void matmul_tiled(ThreadPool& pool, const float* x, int64_t T, const Weight& w, float* out) {
  const int64_t N = w.rows(), K = w.cols();
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  pool.parallel_for(tiles, [&](int64_t begin, int64_t end, int) {
    std::vector<float> buf(static_cast<size_t>(kTileRows * K));
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kTileRows, rows = std::min(kTileRows, N - n0);
      for (int64_t i = 0; i < rows; ++i) dequant_row(w, n0 + i, 0, K, buf.data() + i * K);
      int64_t t = 0;
      for (; t + 4 <= T; t += 4) {
        int64_t i = 0;
        for (; i + 2 <= rows; i += 2) micro_4x2(x + t * K, K, buf.data() + i * K, K, out + t * N + n0 + i, N);
        for (; i < rows; ++i)
          for (int64_t tt = t; tt < t + 4; ++tt) out[tt * N + n0 + i] = dot_f32(x + tt * K, buf.data() + i * K, K);
      }
      for (; t < T; ++t)
        for (int64_t i = 0; i < rows; ++i) out[t * N + n0 + i] = dot_f32(x + t * K, buf.data() + i * K, K);
    }
  });
}

}  // namespace

void matmul(ThreadPool& pool, const TensorView& x, const Weight& w, const TensorView& out) {
  const int64_t T = x.rows(), K = x.row_size(), N = w.rows();
  MOE_CHECK(x.dtype == DType::F32 && out.dtype == DType::F32, "matmul: CPU activations must be F32");
  MOE_CHECK(w.cols() == K, "matmul: x has {} columns but the weight has {}", K, w.cols());
  MOE_CHECK(out.rows() == T && out.row_size() == N, "matmul: out is {} but should be [{}, {}]",
            out.shape.str(), T, N);
  if (T <= kDecodeTokens) matmul_streaming(pool, x.as<const float>(), T, w, out.as<float>());
  else matmul_tiled(pool, x.as<const float>(), T, w, out.as<float>());
}

}  // namespace moe::cpu
