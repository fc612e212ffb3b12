#pragma once
// The trainer's FP8 mixed-precision GEMMs (issue 11 item 2; DeepSeek-V3 report section 3.3) on the inference
// engine's cuBLASLt block-scaled FP8 GEMM (backend/cuda/gemm_fp8.h): E4M3 operands quantised by fp8_quantize
// (kernels.h), FP32 accumulation with the scales applied per 128-deep K block, FP32 outputs. Row-major, as
// DeviceTrainer's mm / mm_bwd, for a weight W [m, k] and n tokens:
//   Fprop  y  [n, m]  = x [n, k] W^T   x per 1x128 tile (along k), W per 128x128 block
//   Dgrad  dx [n, k] (+)= dy [n, m] W  dy per 1x128 tile (along m), W^T per 128x128 block (quantised with W)
//   Wgrad  dW [m, k] += dy^T x         dy^T and x^T per 1x128 tile along the tokens (128x1 tiles of dy and x), or
//                                      x^T per 128x128 block where cuBLASLt has no VEC128 x VEC128 kernel
// Tokens are padded with zero rows: to a multiple of 4 for Fprop/Dgrad (cuBLASLt's rule for the token operand;
// an output of n % 4 != 0 rows goes through a scratch), to a multiple of 128 for Wgrad (its K).
// Weights are quantised in both layouts once per version (new_weights() after each optimizer step), on first use.
// Activations: in a training pass (begin_pass) Fprop quantises x in both tilings at once and keeps x^T for the
// Wgrad of the same x, and a second product of one input (same_x) takes the quantised form of the first.
// What stays in higher precision is the caller's choice (DeviceTrainer: embedding, heads, router, norms and the
// attention core never come here).
#include <cuda_runtime.h>

#include <cstdint>
#include <memory>
#include <unordered_map>

#include "train/cuda/cuda_compute.h"

namespace moe::cuda {
class Fp8Gemm;
}

namespace moe::train::cuda {

// Wgrad's scale modes: Auto asks cuBLASLt per shape and takes 1x128 tiles on both operands when offered.
enum class Fp8Wgrad { Auto, TileTile, TileBlock };

class Fp8Gemms {
 public:
  explicit Fp8Gemms(cudaStream_t s, Fp8Wgrad wgrad = Fp8Wgrad::Auto);
  ~Fp8Gemms();
  Fp8Gemms(const Fp8Gemms&) = delete;
  Fp8Gemms& operator=(const Fp8Gemms&) = delete;

  // The widths of a weight [m, k] whose products can take the FP8 path (cuBLASLt: K % 128, N % 16).
  static bool fprop_widths(int64_t k, int64_t m) { return k % 128 == 0 && m % 16 == 0; }
  static bool dgrad_widths(int64_t k, int64_t m) { return m % 128 == 0 && k % 16 == 0; }
  static bool wgrad_widths(int64_t k, int64_t m) { return m % 16 == 0 && k % 16 == 0; }
  // ... and for n tokens cuBLASLt offers an algorithm (asked once per shape): the caller runs the others in BF16.
  bool fprop_ok(int64_t n, int64_t k, int64_t m);
  bool dgrad_ok(int64_t n, int64_t k, int64_t m);
  bool wgrad_ok(int64_t n, int64_t k, int64_t m);

  // Pointers: device, 16-byte aligned, rows packed (x [n, k], w [m, k], dy [n, m]).
  // same_x: x holds the values it held when the previous product quantised it (two projections of one input:
  // MLA's q and kv_a, an MLP's gate and up), so its quantised form is taken again where the scratch still
  // holds x's (same pointer and shape, no other x quantised since) instead of being made again.
  void fprop(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m, bool same_x = false);
  // dx (+= when add_dx) dy W if dx, dW += dy^T x if dw; dy is quantised once for both. same_x: as fprop's,
  // for x^T (Wgrad).
  void backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n, int64_t k,
                int64_t m, bool add_dx, bool same_x = false);
  void new_weights() { ++version_; }
  // A forward whose backward follows (keep, the trainer's training step) or not. While keeping, every Fprop
  // quantises x in both tilings in one pass and keeps x^T (Wgrad's operand) in a buffer of x's own; the
  // backward's Wgrad of the same x (pointer and shape) in the same pass takes it instead of reading x again,
  // as DeepSeek-V3 caches the FP8 activations for the backward. The caller's promise: a forward input is
  // unchanged until the backward has read it (the trainer's kept activations are), or read only from another
  // pointer. Entries the last pass did not make (inputs at other addresses now: the per-expert products' rows
  // move with the routing) are freed here.
  void begin_pass(bool keep);
  // A product of x ran elsewhere (in BF16): no same_x after it may take what the scratch holds.
  void forget_x() { held_x_ = held_xt_ = Held{}; }
  // Whether Wgrad of this shape runs with 1x128 tiles on both operands.
  bool wgrad_tile_tile(int64_t n, int64_t k, int64_t m);

  struct Counts {
    double fp8_flops = 0;       // of the three products run here
    int64_t weight_quantisations = 0;
    int64_t x_reuses = 0;  // quantisations of x (Fprop) or x^T (Wgrad) saved by same_x
    int64_t kept_xt_reads = 0;  // Wgrads that read the forward's x^T (begin_pass)
  };
  const Counts& counts() const { return counts_; }

 private:
  struct WeightQ {
    int64_t m = 0, k = 0, version = -1;
    uint8_t *q = nullptr, *qt = nullptr;  // W [m, k], W^T [k, m]
    float *s = nullptr, *st = nullptr;    // [ceil(m/128), ld(k)], [ceil(k/128), ld(m)]
  };
  const WeightQ& weight(const float* w, int64_t m, int64_t k);
  // Copies (or adds) a [n, width] scratch result of n4 >= n rows into out.
  void finish(float* out, const float* tmp, int64_t n, int64_t width, bool add);

  cudaStream_t stream_;
  Fp8Wgrad wgrad_;
  std::unique_ptr<moe::cuda::Fp8Gemm> gemm_;
  DeviceScratch scratch_;
  std::unordered_map<const float*, WeightQ> weights_;
  // Whose quantised form the x (Fprop) and x^T (Wgrad) scratch slots hold: pointer, rows, columns, and for
  // x^T its scale mode (1x128 tiles or 128x128 blocks).
  struct Held {
    const float* x = nullptr;
    int64_t n = 0, k = 0;
    bool tile = false;
    bool matches(const float* x2, int64_t n2, int64_t k2, bool tile2) const {
      return x == x2 && n == n2 && k == k2 && tile == tile2;
    }
  };
  Held held_x_, held_xt_;
  // x^T of the forward's inputs, per x pointer (kept across passes: the same activations come back each
  // micro-batch), valid for the pass that made it.
  struct KeptXt {
    DeviceScratch mem;  // slot 0: the codes, 1: the scales
    uint8_t* q = nullptr;
    float* s = nullptr;
    Held of;
    int64_t pass = -1;
  };
  std::unordered_map<const float*, KeptXt> kept_;
  int64_t pass_ = 0;
  bool keep_xt_ = false;

  int64_t version_ = 0;
  Counts counts_;
};

}  // namespace moe::train::cuda
