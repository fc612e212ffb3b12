// out [T, N] = x [T, K] @ W[N, K]^T on the CPU, FP32 activations and accumulation.
// Few tokens (decode): each thread streams its share of weight rows once, converting in registers, so the
// step runs at memory bandwidth. Many tokens (prefill): each thread dequantises a tile of 16 weight rows
// into an L2-resident F32 buffer once and reuses it for every token.
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

void matmul_streaming(const float* x, int64_t T, const Weight& w, float* out) {
  const int64_t N = w.rows(), K = w.cols();
  ThreadPool::global().parallel_for(
      (N + 3) / 4,
      [&](int64_t begin, int64_t end, int) {
        for (int64_t q = begin; q < end; ++q) {
          const int64_t n = q * 4;
          for (int64_t t = 0; t < T; ++t) {
            if (n + 4 <= N) {
              float r[4];
              dot_rows4(x + t * K, w, n, r);
              for (int i = 0; i < 4; ++i) out[t * N + n + i] = r[i];
            } else {
              for (int64_t i = n; i < N; ++i) out[t * N + i] = dot_row(x + t * K, w, i);
            }
          }
        }
      },
      16);
}

void matmul_tiled(const float* x, int64_t T, const Weight& w, float* out) {
  const int64_t N = w.rows(), K = w.cols();
  const int64_t tiles = (N + kTileRows - 1) / kTileRows;
  ThreadPool::global().parallel_for(tiles, [&](int64_t begin, int64_t end, int) {
    std::vector<float> buf(static_cast<size_t>(kTileRows * K));
    for (int64_t tile = begin; tile < end; ++tile) {
      const int64_t n0 = tile * kTileRows, rows = std::min(kTileRows, N - n0);
      for (int64_t i = 0; i < rows; ++i) dequant_row(w, n0 + i, 0, K, buf.data() + i * K);
      for (int64_t t = 0; t < T; ++t) {
        const float* xt = x + t * K;
        float* ot = out + t * N + n0;
        for (int64_t i = 0; i < rows; ++i) ot[i] = dot_f32(xt, buf.data() + i * K, K);
      }
    }
  });
}

}  // namespace

void matmul(const TensorView& x, const Weight& w, const TensorView& out) {
  const int64_t T = x.rows(), K = x.row_size(), N = w.rows();
  MOE_CHECK(x.dtype == DType::F32 && out.dtype == DType::F32, "matmul: CPU activations must be F32");
  MOE_CHECK(w.cols() == K, "matmul: x has {} columns but the weight has {}", K, w.cols());
  MOE_CHECK(out.rows() == T && out.row_size() == N, "matmul: out is {} but should be [{}, {}]",
            out.shape.str(), T, N);
  if (T <= kDecodeTokens) matmul_streaming(x.as<const float>(), T, w, out.as<float>());
  else matmul_tiled(x.as<const float>(), T, w, out.as<float>());
}

}  // namespace moe::cpu
