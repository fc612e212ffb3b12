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

  // Where the input-gradient products' weights (W_down^T, [W_gate^T | W_up^T]) live, per layer. Both: the
  // layer keeps them beside the forward layout, quantised once per weight version (2 bytes an expert's value:
  // both layouts of E4M3). ForwardOnly: the layer keeps only the forward layout (1 byte a value), and its
  // backward moves those bytes into one of two buffers shared by such layers (fp8_transpose: a block's codes
  // are the same under its one scale, so the products are bit-identical to Both's), 6 D F bytes an expert
  // read and written per layer and micro-batch; for models whose FP8 weights in both layouts do not fit
  // (train-mid on one H200, train/memory_plan.h). set_both_layers(n): the first n layers to be used (the
  // forward's order) keep Both, the others ForwardOnly; -1 (the default) every layer Both. set_layouts is the
  // all-or-none form.
  enum class Layouts { Both, ForwardOnly };
  void set_both_layers(int64_t n);
  int64_t both_layers() const { return both_layers_; }
  void set_layouts(Layouts l) { set_both_layers(l == Layouts::Both ? -1 : 0); }
  // A ForwardOnly layer whose backward comes soon: its transposes go to a side stream of lower priority now
  // (after the work queued so far), to overlap what runs until that backward, which then waits for them (at
  // train-mid cut to 6 layers on an H100 the kernels beside them slowed by as much: bench/RESULTS.md,
  // 2026-12-07). A Both layer, or one whose current layouts a buffer holds, needs nothing. The trainer asks
  // for layer l - 1 at the start of layer l's backward (and for the first layers of the backward after the
  // forward's last). Off (set_prefetch(false)): every transpose runs on the trainer's stream when its
  // backward asks.
  void prefetch_backward(const Layer& L);
  void set_prefetch(bool on) { prefetch_ = on; }

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
  // A ForwardOnly layer's backward layouts (its table's forward slots null): whose (key) at which weight
  // version (w.version); async: made on the side stream (ready: recorded there after them; the trainer's
  // stream waits for it before a product reads them or the buffer is made again); pending: made by a prefetch
  // and not read since (never the one a prefetch replaces); used: when it was last read or made (the least
  // recent is replaced).
  struct Backward {
    Weights w;
    const void* key = nullptr;
    cudaEvent_t ready = nullptr;
    bool async = false, pending = false;
    int64_t used = 0;
  };
  const Weights& weights(const Layer& L);
  // L's backward layouts: its own under Both, else a buffer holding them for L's current weights (made now on
  // the trainer's stream unless a prefetch made or is making them).
  const Weights& backward_weights(const Layer& L);
  // Whether b holds a prefetch's layouts of the current weights that no product has read yet.
  bool awaited(const Backward& b) const;
  // The buffer holding L's backward layouts at W's version, or null.
  Backward* resident(const Layer& L, const Weights& W);
  // Makes L's backward layouts in a buffer (one transpose launch per matrix kind for all experts), on the
  // side stream (async) or the trainer's.
  Backward& make_backward(const Layer& L, const Weights& W, bool async);
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
  int64_t both_layers_ = -1, both_given_ = 0;  // set_both_layers; layers given Both so far
  Backward bwd_[2];                            // the ForwardOnly layers' backward layouts
  int64_t uses_ = 0;                           // the clock of Backward::used
  bool prefetch_ = true;
  cudaStream_t side_ = nullptr;         // the prefetches' stream (lower priority), made at the first
  cudaEvent_t fork_ = nullptr;          // recorded on the trainer's stream before a prefetch's transposes
  std::vector<int32_t> items_;          // host staging of the work items
  std::vector<int64_t> items_offsets_;  // the row offsets the items on the device were made from
  int32_t n_items_ = 0;
  int64_t version_ = 0, weight_quantisations_ = 0;
  double fp8_flops_ = 0;
};

}  // namespace moe::train::cuda
