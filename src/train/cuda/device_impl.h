#pragma once
// DeviceTrainer's insides (device_trainer.h), shared by its three files: device_trainer.cpp (arenas, buffers,
// GEMMs, optimiser, host sync), device_layer.cpp (one decoder layer and its FFN halves) and device_model.cpp (the
// whole model with its MTP module and the objective). Shapes follow the CPU trainer's (layer.h, model.h); every
// pointer below is a device pointer unless named host.
#include <cuda_runtime.h>

#include <algorithm>
#include <map>
#include <memory>
#include <string>
#include <unordered_map>
#include <vector>

#include "core/error.h"
#include "dist/communicator.h"
#include "train/cuda/device_trainer.h"
#include "train/cuda/fp8_experts.h"
#include "train/cuda/fp8_gemm.h"
#include "train/cuda/grouped_gemm.h"
#include "train/cuda/kernels.h"
#include "train/cuda/step_profile.h"
#include "train/layer.h"
#include "train/memory_plan.h"

namespace moe::train::cuda {

// Row blocks: [height, width] floats at pitch src_pitch copied to pitch dst_pitch (splits and concatenations).
void copy2d(float* dst, int64_t dst_pitch, const float* src, int64_t src_pitch, int64_t width, int64_t height,
            cudaStream_t s);

void check_cuda(cudaError_t e, const char* what);

// An activation as the GEMMs read it: FP32, its BF16 rounding, or both. Under BF16 GEMMs the producers of
// activations that only GEMMs read (the input norms' outputs, the MLPs' SwiGLU, the attention output) write the
// BF16 form themselves, once: no conversion pass before each product and again before its weight gradient.
// Elsewhere (FP32, FP8) they write FP32 and each product converts what it needs, as before.
struct Operand {
  const float* f32 = nullptr;
  const uint16_t* bf16 = nullptr;
  Operand() = default;
  Operand(const float* f) : f32(f) {}  // NOLINT(google-explicit-constructor): a plain FP32 buffer
  Operand(const float* f, const uint16_t* b) : f32(f), bf16(b) {}
};

// Kept activations of an MLP over n rows (x is the caller's). Under BF16 GEMMs act exists only as act_bf.
struct DMlp {
  Operand x;
  float *gate = nullptr, *up = nullptr, *act = nullptr;
  const uint16_t* act_bf = nullptr;
};

struct DMoe {
  float *logits = nullptr, *scores = nullptr, *weights = nullptr, *denom = nullptr, *frac = nullptr;
  int32_t *chosen = nullptr, *rows = nullptr, *slots = nullptr, *pos = nullptr;
  std::vector<int32_t> host_chosen, host_rows, host_slots, host_pos;  // the routing, sorted by expert on the host
  std::vector<int64_t> offsets;  // [E + 1]: expert e's rows are offsets[e] .. offsets[e+1] of the sorted pairs
  std::vector<int64_t> load;     // [E]
  float *xs = nullptr, *eout = nullptr;  // [nK, D] gathered inputs (per expert only), outputs
  DMlp experts;                          // over the nK sorted rows, [nK, F] (grouped: act is a temporary)
  // grouped: xs [nK, D] and act [nK, F] only in BF16 (the GEMMs' operands), kept for the weight gradients
  const uint16_t *xs_bf = nullptr, *act_bf = nullptr;
  DMlp shared;
  int aux_slot = -1;  // the scalar slot of this layer's balance loss (-1: none)
};

// Under BF16 GEMMs a, qan and c (read only by GEMMs) exist only as BF16 (a_bf, qan_bf, c_bf; the FP32 pointers
// null), and att and f (read also by the attention's backward, the router and the gather) in both forms.
struct DLayer {
  int64_t b = 0, t = 0, n = 0;
  int32_t* pos = nullptr;  // [n] position of each token in its sequence
  const float* x = nullptr;
  float *a = nullptr, *a_rstd = nullptr, *qa = nullptr, *qa_rstd = nullptr, *qan = nullptr, *q = nullptr;
  float *kva = nullptr, *c_in = nullptr, *c = nullptr, *c_rstd = nullptr, *kr = nullptr, *kv = nullptr;
  float *probs = nullptr, *att = nullptr, *h = nullptr, *f = nullptr, *f_rstd = nullptr;
  uint16_t *a_bf = nullptr, *qan_bf = nullptr, *c_bf = nullptr, *att_bf = nullptr, *f_bf = nullptr;
  float* lse = nullptr;  // flash attention: [b, H, t] instead of probs (null with the GEMM attention)
  DMlp dense;
  DMoe moe;
};

struct DeviceTrainer::Impl {
  explicit Impl(GemmPrecision p, int device);
  ~Impl();

  CudaCompute cc;  // the stream, cuBLAS and its GEMM entry points
  GemmPrecision prec;
  std::unique_ptr<Fp8Gemms> f8;  // prec == Fp8: the FP8 products (weights quantised once per optimizer step)
  Fp8Gemms& fp8() {              // made at the first FP8 product
    if (!f8) f8 = std::make_unique<Fp8Gemms>(cc.stream());
    return *f8;
  }
  // prec == Fp8 under grouped experts: the routed experts' grouped FP8 products
  std::unique_ptr<Fp8Experts> f8x;
  int64_t fp8_expert_both_layers = -1;  // set_fp8_expert_both_layers
  bool fp8_expert_prefetch = true;      // set_fp8_expert_prefetch
  Fp8Experts& fp8_experts() {
    if (!f8x) {
      f8x = std::make_unique<Fp8Experts>(cc.stream());
      f8x->set_both_layers(fp8_expert_both_layers);
      f8x->set_prefetch(fp8_expert_prefetch);
    }
    return *f8x;
  }
  // A MoE layer whose backward comes next but one: its experts' backward layouts made ahead where they are
  // made per layer (Fp8Experts::prefetch_backward), so that their transposes overlap the work before it.
  void prefetch_expert_layouts(const LayerParams& P, const DMoe& A, const ModelConfig& c);
  // The routed experts of widths D, F take Fp8Experts (else, under Fp8, BF16 grouped GEMMs).
  bool fp8_grouped(int64_t D, int64_t F) const {
    return use_grouped() && prec == GemmPrecision::Fp8 && Fp8Experts::applies(D, F);
  }
  double bf16_flops = 0;  // prec == Fp8: the products left in BF16 (widths the FP8 GEMMs refuse, weight
                          // gradients of the grouped experts)
  cudaStream_t stream() const { return cc.stream(); }
  StepProfile prof;     // per-op-class device time (off unless set_profile)
  GroupedGemm egemm;    // the routed experts' grouped GEMMs (BF16)
  // BF16 and FP8: the experts' GEMMs grouped (egemm: one launch of our wgmma kernel per product,
  // grouped_gemm_wgmma.cu; under FP8 the forward and input-gradient products on Fp8Experts); false, or FP32:
  // one mm/mm_bwd per expert (the reference)
  bool grouped_experts = true;
  AttnPrecision attention_prec = AttnPrecision::Fp32;  // the attention's score and value GEMMs (set_attention)
  // The mode a layer of these head widths runs: attention_prec, except Flash for a head shape without flash kernels,
  // which runs the Bf16 GEMMs (the same roundings) with a note on stderr the first time.
  AttnPrecision attention_mode(int64_t dn, int64_t dr, int64_t dv);
  bool flash_fallback_noted = false;
  // Bf16 (p): the products' BF16 operand copies (shared by every layer: grow-only buffers, one attention at a time).
  AttnBf16 attention_bf16_scratch(AttnPrecision p, int64_t b, int64_t t, int64_t H, int64_t dn, int64_t dr, int64_t dv,
                                  bool backward);
  // Flash: the BF16 operand copies (the same buffers as Bf16's) and, for the backward, delta and the per-head
  // dk_rope partials.
  AttnFlash attention_flash_scratch(int64_t b, int64_t t, int64_t H, int64_t dn, int64_t dr, int64_t dv, bool backward);
  bool use_grouped() const { return grouped_experts && prec != GemmPrecision::Fp32; }
  size_t mem_free_at_bind = 0, mem_free_min = 0;  // cudaMemGetInfo: before the arenas, the lowest since
  void note_free_memory();

  // ---- parameters (device_trainer.cpp)
  TrainModel* bound = nullptr;
  float *W = nullptr, *G = nullptr;  // arenas of `total` floats
  void *M = nullptr, *V = nullptr;   // arenas of `total` floats, or BF16 values (bf16_moments)
  bool bf16_moments = false;
  int64_t total = 0;
  size_t moment_bytes() const { return bf16_moments ? 2 : 4; }
  void* moment_at(void* arena, int64_t o) const { return static_cast<char*>(arena) + size_t(o) * moment_bytes(); }
  void upload_moment(void* arena, int64_t o, const std::vector<float>& host);  // converts to BF16 when stored so
  void download_moment(std::vector<float>& host, const void* arena, int64_t o);  // syncs
  std::unordered_map<const Param*, int64_t> offset;
  void bind(TrainModel& m);  // no-op when m is already bound
  // Split master weights (split_weights.cuh) for the weights every reader takes in BF16 (fixed at bind): the
  // routed experts' under the grouped GEMMs (use_grouped()) and, under BF16 GEMMs, every dense projection (attention,
  // dense and shared MLPs, the MTP's eh_proj, the head unless head_fp32; not the router or the embedding, read in
  // FP32). A region [o, o + n) of W, a run of such parameters lying together there (bind lays them out in order),
  // holds in its 4n bytes hi[n] (BF16 nearest even: what the GEMMs read, so no per-micro-batch BF16 copy of the
  // weights: 553 M values a layer's experts and 335 M the head at train-mid) then lo[n] (int16; a tie over an even
  // truncation is kept one FP32 ulp nearer zero). bind splits, pull joins, AdamW updates them in place; w() refuses
  // them. A region starts at a multiple of 4 floats and holds sizes that are multiples of 8, so every parameter's
  // hi and lo start on 16 bytes (cp.async and cuBLAS's vector loads).
  struct SplitRegion {
    int64_t o = 0, n = 0;
  };
  std::vector<SplitRegion> split_regions;
  std::unordered_map<const Param*, size_t> split_of;  // parameter -> its region
  uint16_t* split_hi(const SplitRegion& r) const { return reinterpret_cast<uint16_t*>(W + r.o); }
  int16_t* split_lo(const SplitRegion& r) const { return reinterpret_cast<int16_t*>(split_hi(r) + r.n); }
  void plan_split(const TrainModel& m);  // fills split_regions, split_of (offsets set)
  // p's BF16 hi half when it is stored split, else null.
  const uint16_t* split_bf16(const Param* p) const {
    const auto it = split_of.find(p);
    if (it == split_of.end()) return nullptr;
    const SplitRegion& r = split_regions[it->second];
    return split_hi(r) + (offset.at(p) - r.o);
  }
  float* w(const Param* p) {
    MOE_CHECK(split_of.count(p) == 0, "cuda train: {} is stored split (BF16 + int16), not as FP32", p->name);
    return W + offset.at(p);
  }
  float* g(const Param* p) { return G + offset.at(p); }
  // all_reduce_gradients through host memory (communicators other than NCCL): a pinned buffer of reduce_piece
  // floats the arena passes through piece by piece (allocated at the first such call).
  int64_t reduce_piece = int64_t(16) << 20;
  float* reduce_host = nullptr;
  // reduce_during_next_backward (NCCL): the communicator while a step's reductions are in flight (null otherwise),
  // their side stream and the event each waits on, and the ranges of G already reduced this step. layer_grads[l]:
  // decoder layer l's gradients as one range of G ({0, 0} when its parameters do not lie together), set at bind.
  struct Range {
    int64_t o = 0, n = 0;
  };
  std::vector<Range> layer_grads;
  dist::Communicator* overlap_comm = nullptr;
  void* overlap_prev_stream = nullptr;  // the communicator's stream before, restored at the end
  bool overlap_armed = false;           // the next backward reduces its layers
  cudaStream_t comm_stream = nullptr;
  cudaEvent_t comm_event = nullptr;
  std::vector<Range> reduced;
  void plan_layer_grads(const TrainModel& m);
  // Deferred zeroing of the routed experts' gradients (grouped BF16 experts): zero_grad memsets every gradient but
  // theirs and marks each MoE layer fresh; the layer's next backward writes its weight gradients (beta 0, and zeros
  // for experts without rows) instead of adding to zeros: 2 x 4 bytes less a value of ~9 B gradients at train-mid.
  // Anything else that reads or scales G first calls settle_gradients, which zeroes what is still fresh.
  std::vector<Range> expert_grads;  // merged ranges of G holding routed experts' gradients (set at bind)
  std::unordered_map<const LayerParams*, bool> fresh_experts;  // MoE layer -> its expert gradients are unset
  void zero_gradients(const TrainModel& m);
  void settle_gradients();
  // In a layer's backward: whether its expert gradients are to be written (fresh) rather than added; clears it.
  bool take_fresh(const LayerParams& P);
  // In the armed backward, after decoder layer l's backward: its gradient range all-reduced on comm_stream.
  void reduce_layer(int64_t l);

  // ---- buffers: grow-only, by name; the free memory is checked before each allocation (a clear error, not a
  // crash, when a shape does not fit).
  std::map<std::string, std::pair<void*, size_t>> buffers;
  void* raw(const std::string& key, size_t bytes);
  float* f32(const std::string& key, int64_t count) { return static_cast<float*>(raw(key, size_t(count) * 4)); }
  int32_t* i32(const std::string& key, int64_t count) { return static_cast<int32_t*>(raw(key, size_t(count) * 4)); }
  float* zeros(const std::string& key, int64_t count);  // a buffer set to 0 on the stream
  void upload(void* dst, const void* host, size_t bytes);
  double* scalars = nullptr;  // [kScalars] device doubles the step's sums land in
  static constexpr int kScalars = 1024;
  double* sum_scratch = nullptr;
  void sum_into(int slot, const float* x, int64_t count, bool squares);
  std::vector<double> read_scalars(int count);  // syncs
  // set_check_finite: the sum of squares of each named activation (forward) or gradient (backward) in a scalar
  // slot, in the order computed; a NaN or an infinity there names where non-finite values first appear.
  bool check_finite = false;
  std::vector<std::pair<std::string, int>> checks;
  // Named `prefix` + `what` ("L3." + "q"), the string made only when checking (this runs every layer, every step).
  void check_point(const std::string& prefix, const char* what, const float* x, int64_t count);
  // Throws naming the first non-finite check of `sums` (read_scalars), `pass` being "forward" or "backward".
  void throw_if_nonfinite(const std::vector<double>& sums, const char* pass);
  // The parameters whose gradient holds a NaN or an infinity (the first 8 named, then a count): for the error
  // when the gradient norm is not finite. Syncs.
  std::string nonfinite_gradients(const TrainModel& m);

  // ---- GEMMs (row-major, as ops.h): y = x W^T; dx (+)= dy W; dW += dy^T x. fp32: FP32 operands whatever the
  // mode (V3's higher-precision exceptions); under Fp8, each product takes fp8_gemm.h's path where its widths
  // allow. same_x: x is the input of the product just before (of the same kind, forward or backward) and
  // unchanged since, so its FP8 form is taken again (Fp8Gemms' same_x).
  void mm(float* y, Operand x, const Param* w, int64_t n, int64_t k, int64_t m, bool fp32,
          bool same_x = false) {
    mm_at(fp32 ? GemmPrecision::Fp32 : prec, y, x, w, n, k, m, OpClass::Gemm, same_x);
  }
  void mm_bwd(float* dx, float* dw, Operand dy, Operand x, const Param* w, int64_t n, int64_t k, int64_t m,
              bool fp32, bool add_dx = true, bool same_x = false) {
    mm_bwd_at(fp32 ? GemmPrecision::Fp32 : prec, dx, dw, dy, x, w, n, k, m, add_dx, OpClass::Gemm, same_x);
  }
  // The same at precision p (Fp8: fp8_gemm.h's path where the widths allow, BF16 elsewhere).
  // `cls`: the profile's class for the product (the heads' are counted apart).
  void mm_at(GemmPrecision p, float* y, Operand x, const Param* w, int64_t n, int64_t k, int64_t m,
             OpClass cls = OpClass::Gemm, bool same_x = false);
  void mm_bwd_at(GemmPrecision p, float* dx, float* dw, Operand dy, Operand x, const Param* w, int64_t n,
                 int64_t k, int64_t m, bool add_dx, OpClass cls = OpClass::Gemm, bool same_x = false);
  // Whether producers write GEMM-only activations as BF16 only (Operand): the dense GEMMs run in BF16.
  bool bf16_activations() const { return prec == GemmPrecision::Bf16; }
  // A grow-only BF16 buffer of `count` values.
  uint16_t* bf16_buffer(const std::string& key, int64_t count) {
    return static_cast<uint16_t*>(raw(key, size_t(std::max<int64_t>(count, 1)) * sizeof(uint16_t)));
  }
  // The weight operand of a product at precision p (Bf16 or Fp32): the split master's hi half, the FP32 master, or
  // its BF16 copy in the "bf.w" slot.
  const void* weight_operand(const Param* w, int64_t count, GemmPrecision p);
  // The output heads' products (main and MTP): FP32 operands (head_fp32, the default: the CPU trainer's rule) or
  // BF16 operands with FP32 accumulation (never FP8: V3 keeps the head out of FP8, not out of BF16).
  bool head_fp32 = true;
  GemmPrecision head_gemm() const { return head_fp32 ? GemmPrecision::Fp32 : GemmPrecision::Bf16; }
  const void* operand(const char* slot, const float* src, int64_t count, GemmPrecision p);
  // x as a product at precision p reads it: its BF16 form where it has one (p Bf16), else operand() of its FP32.
  const void* operand(const char* slot, const Operand& x, int64_t count, GemmPrecision p);
  const float* f32_of(const Operand& x, const char* what);  // x.f32, or an error naming `what

  // ---- per shape (device_model.cpp)
  int64_t shape_t = -1;
  int32_t* positions(int64_t b, int64_t t);  // [b*t] i % t, uploaded
  double* inv_freq = nullptr;  // a buffer: rope.inv_freq
  RopeParams rope;
  int64_t rope_half = 0;
  LayerContext main_ctx, mtp_ctx;

  // ---- layers (device_layer.cpp); key prefixes name their buffers ("L3.", "mtp.")
  void layer_forward(DLayer& A, const LayerParams& P, const LayerContext& ctx, const std::string& key,
                     const float* x, int64_t b, int64_t t, float* out);
  void layer_backward(float* dx, const float* dout, DLayer& A, const LayerParams& P, const LayerContext& ctx,
                      const std::string& key);
  void mlp_forward(DMlp& A, const MlpParams& P, const std::string& key, Operand x, int64_t n, float* out);
  void mlp_backward(float* dx, const float* dout, const DMlp& A, const MlpParams& P, int64_t n);
  void moe_forward(DMoe& A, const LayerParams& P, const LayerContext& ctx, const std::string& key, Operand x,
                   int64_t b, int64_t t, float* out);
  void moe_backward(float* dx, const float* dout, const DMoe& A, const LayerParams& P, const LayerContext& ctx,
                    const float* x, int64_t b, int64_t t);
  // device_experts.cpp: the routed experts' FFN over the expert-sorted rows, forward (A.experts, A.eout) and
  // backward (dxs, the experts' weight gradients), as grouped BF16 GEMMs (use_grouped) or one GEMM per expert.
  void experts_forward(DMoe& A, const LayerParams& P, const std::string& key, int64_t D, int64_t F);
  // dys: the experts' output gradients [nK, D], FP32 (per expert) or dys_bf, BF16 (grouped).
  void experts_backward(float* dxs, const float* dys, const uint16_t* dys_bf, const DMoe& A, const LayerParams& P,
                        int64_t D, int64_t F);
  // BF16 values of every routed expert's {gate, up, down} of a layer: [3 E] pointers, expert e's gate, up, down at
  // 3e, 3e + 1, 3e + 2; into the split region's hi (no work), else copies in one buffer.
  std::vector<const uint16_t*> expert_weights_bf16(const LayerParams& P);
  // Fp8Experts' view of a layer's experts: their FP32 masters and A's sorted rows.
  Fp8Experts::Layer fp8_layer(const LayerParams& P, const DMoe& A, int64_t D, int64_t F);
  const uint16_t* bf16_copy(const std::string& slot, const float* src, int64_t count);
  // y and/or y_bf (either may be null): the FP32 output and its BF16 rounding.
  void rmsnorm(float* y, float* rstd, const float* x, const Param* w, int64_t n, int64_t d, double eps,
               uint16_t* y_bf = nullptr);
  void rope_apply(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t head_dim, int64_t off, float sign);
  int next_aux_slot = 0;
  // The routing's way to the host (moe_forward): a pinned buffer of routing_host_cap ids, so the copy is
  // asynchronous, and the event after it the host waits on while the GPU runs the shared experts.
  int32_t* routing_host = nullptr;
  int64_t routing_host_cap = 0;
  cudaEvent_t routing_event = nullptr;

  // ---- the model (device_model.cpp)
  struct Acts {
    int64_t b = 0, t = 0;
    int32_t *ids = nullptr, *next = nullptr;
    std::vector<int32_t> host_ids, host_next;  // for the embedding's backward (rows grouped by id on the host)
    std::vector<float*> xs;
    std::vector<DLayer> layers;
    float *hn = nullptr, *hn_rstd = nullptr, *hsel = nullptr;
    float *e = nullptr, *en = nullptr, *e_rstd = nullptr, *h2 = nullptr, *hh = nullptr, *hh_rstd = nullptr;
    float *cat = nullptr, *m = nullptr, *y = nullptr, *yn = nullptr, *yn_rstd = nullptr;
    // The heads' input gradients [n1, D] and [n2, D], made in the forward (with_backward): each head's logits
    // [rows, vocab] become its loss gradient in place and its backward runs at once, so one logits buffer serves
    // both heads and none is kept to the backward (2 x 2.7 GB at train-mid's 2 x 2048 tokens).
    float *dsel = nullptr, *dyn = nullptr;
    DLayer mtp;
  } A;
  // with_backward: the heads' backward products run here (A.dsel, A.dyn and the head's weight gradient), for
  // backward(); false for a loss alone (forward_loss: no gradient is touched).
  LossParts forward(TrainModel& m, const std::vector<int32_t>& ids, int64_t b, int64_t t, const Objective& obj,
                    const std::vector<uint8_t>* mask, bool with_backward);
  void backward(TrainModel& m);
  // One output head over h [rows, D]: logits [rows, vocab] into `logits` (the buffer both heads share), their
  // cross-entropy against targets (-1: none) scaled by dscale, each row's loss summed into scalar `slot` (0 main,
  // 1 MTP) and the logits turned into the loss's gradient in place; with dh, the head's backward at once: dh [rows, D]
  // and the head's weight gradient. `what` names the logits for set_check_finite.
  void head_loss(const TrainModel& m, float* logits, const float* h, int64_t rows, const std::vector<int32_t>& targets,
                 float dscale, int slot, const char* what, float* dh);
  // dtable[ids[i]] += dout[i] (rows grouped by id here, summed in row order on the device)
  void embedding_grad(float* dtable, const std::vector<int32_t>& ids, const float* dout, int64_t d,
                      const std::string& key);
  void loads(const TrainModel& m, ExpertLoads* out) const;
};

}  // namespace moe::train::cuda
