#pragma once
// FP8 x FP8 GEMMs with DeepSeek-V3's fine-grained scales on cuBLASLt (Hopper, CUDA >= 12.9):
//   out [T, N] = (xq [T, K] * xs) @ (wq [N, K] * ws)^T
// xq: activations in E4M3 with one F32 scale per 1x128 tile (fp8_quant.cu, layout xs[kb * T + t]);
// wq: the checkpoint's E4M3 weight with its 128x128 block scales `weight_scale_inv` [ceil(N/128), ld] row-major,
// ld = ceil(K/128) rounded up to a multiple of 4 (pad_scales when the checkpoint's grid is narrower).
// FP32 accumulation with the scales applied per 128-deep K block; output F32 (or BF16), row-major, ldo apart.
// cuBLASLt's view: D^T [N, T] = op(A) B with A = wq seen K x N column-major (op T, scale mode BLK128x128_32F)
// and B = xq^T as K x T (op N, VEC128_32F): the "TN" layout FP8 needs on Hopper.
#include <cublasLt.h>
#include <cuda_runtime.h>

#include <cstdint>
#include <map>
#include <tuple>

namespace moe::cuda {

struct Fp8GemmArgs {
  const uint8_t* x = nullptr;   // [T, K], rows K apart
  const float* xs = nullptr;    // [ceil(K/128), T]
  const uint8_t* w = nullptr;   // [N, K]
  const float* ws = nullptr;    // [ceil(N/128), round_up(ceil(K/128), 4)]
  void* out = nullptr;          // [T, N] F32 (or BF16 with out_bf16), rows ldo apart
  int64_t T = 0, N = 0, K = 0, ldo = 0;
  bool out_bf16 = false;
  bool accumulate = false;      // out += instead of out =
  // w scaled per 1x128 tile along K like x (VEC128_32F on both operands; ws [ceil(K/128), N], N fastest) instead
  // of per 128x128 block: the trainer's weight-gradient GEMM, whose two operands are both activations.
  bool w_vec128 = false;
};

// Shapes the path takes: K a multiple of 128 (whole scale tiles), N a multiple of 16 (16-byte rows); T (the
// tokens) must be a multiple of 4 in Fp8Gemm::run (cuBLASLt's rule for these scale modes; callers pad).
inline bool fp8_gemm_shape_ok(int64_t N, int64_t K) { return K % 128 == 0 && N % 16 == 0 && K > 0 && N > 0; }
inline int64_t fp8_scale_ld(int64_t K) { return ((K + 127) / 128 + 3) / 4 * 4; }

// One cuBLASLt handle with its own workspace (so that GEMMs can be captured in graphs) and a cache of the
// algorithm chosen per shape (the heuristic query costs more host time than enqueuing a GEMM).
class Fp8Gemm {
 public:
  explicit Fp8Gemm(cudaStream_t stream);
  ~Fp8Gemm();
  Fp8Gemm(const Fp8Gemm&) = delete;
  Fp8Gemm& operator=(const Fp8Gemm&) = delete;
  // Enqueues the GEMM on the stream (lane < 0) or on side stream `lane % kLanes` (between fork() and join(),
  // each lane with its own workspace); throws moe::Error naming the shape when cuBLASLt has no algorithm.
  void run(const Fp8GemmArgs& a, int lane = -1);
  // Many small independent GEMMs (the routed experts: one fills ~a quarter of the SMs) overlap on kLanes
  // side streams: fork() makes them wait for the work enqueued so far on the stream, join() makes the stream
  // wait for everything enqueued on them.
  static constexpr int kLanes = 4;
  void fork();
  void join();
  // Whether cuBLASLt offers an algorithm for this shape and output type (no work enqueued).
  bool supported(int64_t T, int64_t N, int64_t K, bool out_bf16, bool w_vec128 = false);
  // How many F32-output GEMMs ran as BF16-output GEMMs widened to F32 (when cuBLASLt offers no F32-output
  // algorithm for a shape: one extra rounding to BF16 of the accumulator).
  int64_t bf16_fallbacks() const { return fallbacks_; }

 private:
  struct Plan;
  Plan* plan_for(int64_t T, int64_t N, int64_t K, int64_t ldo, bool out_bf16, bool accumulate, bool w_vec128,
                 const float* ws, const float* xs);
  cudaStream_t stream_;
  cublasLtHandle_t lt_ = nullptr;
  void* workspace_ = nullptr;
  cudaStream_t lanes_[kLanes] = {};
  void* lane_ws_[kLanes] = {};
  cudaEvent_t forked_ = nullptr, done_[kLanes] = {};
  uint16_t* tmp_ = nullptr;  // BF16 output of the fallback, grown as needed
  size_t tmp_elems_ = 0;
  int64_t fallbacks_ = 0;
  // T, N, K, ldo, out_bf16, accumulate, w_vec128
  using Key = std::tuple<int64_t, int64_t, int64_t, int64_t, bool, bool, bool>;
  std::map<Key, Plan*> plans_;
  // The algorithm found for T rounded up to 64 (the routed experts' row counts vary with every batch): a new
  // T in the bucket reuses it after cublasLtMatmulAlgoCheck instead of a heuristic query.
  std::map<Key, cublasLtMatmulAlgo_t> algos_;
};

}  // namespace moe::cuda
