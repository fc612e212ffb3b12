#pragma once
// The routed experts' FP8 products on the grouped path (issue 11: DeepSeek-V3's FP8 scheme where most of an
// MoE model's FLOPs are): the inference engine's grouped FP8 x FP8 GEMM (backend/cuda/moe_gemm_fp8.cu: wgmma
// on E4M3 operands, FP32 accumulation promoted per 128-deep K block with the activation's 1x128 scale times
// the weight's 128x128 block scale) over the expert-sorted rows, one launch per product for all experts of a
// layer. Before it,
// --gemm fp8 ran one cuBLASLt GEMM per expert and product (fp8_gemm.h), ~200-row GEMMs that left FP8 training
// slower than BF16's grouped path.
//
// Rows: expert e's are offsets[e] .. offsets[e+1] of the sorted [nk, *] operands (DMoe). With D the hidden
// width and F the expert's inner width (both multiples of 128), per layer:
//   Fprop  gate, up [nk, F] = xs [nk, D] W_gate^T, xs W_up^T;   eout [nk, D] = act [nk, F] W_down^T
//   Dgrad  dact [nk, F] = dys [nk, D] W_down;   dxs [nk, D] = [dgate | dup] [nk, 2F] [W_gate ; W_up]
// dxs is one product over K = 2F (dgate and dup quantised side by side, W_gate^T and W_up^T stored side by
// side): the two sums meet in the FP32 promotion instead of a second pass over dxs. Activations arrive in
// BF16 (the grouped path's form, DMoe) and are quantised per 1x128 tile along K (backend/cuda fp8_quant.cu);
// the weights are quantised from their FP32 masters in both layouts once per weight version (new_weights()
// after each optimizer step), with one scale per 128x128 block. The weight gradients stay on the BF16 grouped
// GEMM (grouped_gemm.h): they contract over each expert's rows, whose counts are not multiples of 128
// (DeepSeek quantises them per 128x1 tile; that k-grouped FP8 product is not built yet).
#include <cuda_runtime.h>

#include <cstdint>
#include <unordered_map>
#include <vector>

#include "train/cuda/cuda_compute.h"

namespace moe::train::cuda {

class Fp8Experts {
 public:
  explicit Fp8Experts(cudaStream_t s);
  ~Fp8Experts();
  Fp8Experts(const Fp8Experts&) = delete;
  Fp8Experts& operator=(const Fp8Experts&) = delete;

  // Whether this device and these widths take the grouped FP8 products (sm_90: the kernel is built for
  // sm_90a).
  static bool applies(int64_t D, int64_t F);

  // A layer's experts: key identifies the layer (its weights' versions are kept per key); w holds the FP32
  // masters (device) gate, up, down of expert 0, then of expert 1, ...; offsets [E + 1] the sorted rows per
  // expert (host).
  struct Layer {
    const void* key = nullptr;
    std::vector<const float*> w;
    const std::vector<int64_t>* offsets = nullptr;
    int64_t D = 0, F = 0;
  };
  void forward_gate_up(const Layer& L, const uint16_t* xs, float* gate, float* up);
  void forward_down(const Layer& L, const uint16_t* act, float* eout);
  void backward_dact(const Layer& L, const uint16_t* dys, float* dact);
  void backward_dxs(const Layer& L, const uint16_t* dgate, const uint16_t* dup, float* dxs);

  // Where the input-gradient products' weights (W_down^T, [W_gate^T | W_up^T]) live. Both (the default):
  // every layer keeps them beside the forward layout, quantised once per weight version (2 bytes an expert's
  // value: both layouts of E4M3). ForwardOnly: every layer keeps only the forward layout (1 byte a value),
  // and the backward of a layer moves its bytes into one buffer shared by the layers (fp8_transpose: a
  // block's codes are the same under its one scale, so the products are bit-identical to Both's), 6 D F bytes
  // an expert read and written per layer and micro-batch; for models whose FP8 weights in both layouts do not
  // fit (train-mid on one H200, train/memory_plan.h).
  enum class Layouts { Both, ForwardOnly };
  void set_layouts(Layouts l);
  Layouts layouts() const { return layouts_; }

  void new_weights() { ++version_; }
  double fp8_flops() const { return fp8_flops_; }
  int64_t weight_quantisations() const { return weight_quantisations_; }

 private:
  // One layer's quantised weights, one allocation: per expert e, at e * stride bytes, the E4M3 matrices
  //   gate [F, D], up [F, D], down [D, F] (Fprop), down^T [F, D] (Dgrad of act), [W_gate^T | W_up^T] [D, 2F]
  // (the last two only under Both) and after all experts' matrices their scale grids (row-major [rows / 128,
  // cols / 128]); table: the device pointer table the kernel reads, kSlots matrices then kSlots grids per
  // expert (null where the layout is not kept). bwd_ (ForwardOnly) holds down^T and [W_gate^T | W_up^T] of
  // one layer the same way (its table's forward slots null).
  static constexpr int kGate = 0, kUp = 1, kDown = 2, kDownT = 3, kGateUpT = 4, kSlots = 5;
  struct Weights {
    int64_t experts = 0, D = 0, F = 0, version = -1;
    Layouts layouts = Layouts::Both;
    void* mem = nullptr;
    void** table = nullptr;
  };
  const Weights& weights(const Layer& L);
  // ForwardOnly: the shared buffer of the backward layouts, made for L's current weights (one transpose
  // launch per matrix kind for all experts) unless it holds them already.
  const Weights& backward_weights(const Layer& L);
  // The work items (expert, first sorted row, rows <= 128) of L's rows, uploaded; returns their number.
  int32_t upload_items(const Layer& L);
  // a [nk, k] (BF16) quantised into the scratch operand at column offset col of a [nk, lda] E4M3 matrix, its
  // scales at column block col / 128 of the [lda / 128, nk4] grid.
  void quantize(const uint16_t* a, int64_t nk, int64_t k, int64_t lda, int64_t col);
  // out [nk, n] = A [nk, k] (the scratch operand) W_slot^T for every expert.
  void gemm(const Layer& L, const Weights& W, int slot, int64_t n, int64_t k, float* out);

  cudaStream_t stream_;
  DeviceScratch scratch_;
  std::unordered_map<const void*, Weights> layers_;
  Layouts layouts_ = Layouts::Both;
  Weights bwd_;  // ForwardOnly: the backward layouts of the layer bwd_key_ at weight version bwd_.version
  const void* bwd_key_ = nullptr;
  std::vector<int32_t> items_;          // host staging of the work items
  std::vector<int64_t> items_offsets_;  // the row offsets the items on the device were made from
  int32_t n_items_ = 0;
  int64_t version_ = 0, weight_quantisations_ = 0;
  double fp8_flops_ = 0;
};

}  // namespace moe::train::cuda
