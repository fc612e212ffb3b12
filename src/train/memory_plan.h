#pragma once
// What a training step of a model needs of a device's memory (issue 11: "an honest estimate printed before
// allocating"): train/cuda's DeviceTrainer keeps four arenas (FP32 values and gradients, AdamW moments in FP32 or
// BF16; the masters read only in BF16 stored split, hi + lo, in the same 4 bytes), the forward's kept activations of
// every layer (FP32; the attention probabilities [b, H, t, t] of every layer, or the flash attention's lse
// [b, H, t]; the routed experts' rows [nK, D] and [nK, F], the GEMM inputs among them in BF16), the backward's
// temporaries (named buffers shared by every layer: the largest layer's), the BF16 copies of GEMM activation
// operands and one head's [n, vocab] logits at a time (each head's backward runs right after its loss). This
// mirrors those buffers (device_*.cpp) shape by shape; tests/train_cuda checks it against what cudaMemGetInfo
// measures on the device, and bench.cpp prints it before the first allocation.
#include <cstdint>

#include "io/model_config.h"

namespace moe::train {

// bind and pull move a split master (train/cuda/device_impl.h) through an FP32 staging buffer of at most this
// many values (the head alone is 335 M values at train-mid).
constexpr int64_t kSplitStageValues = int64_t(1) << 22;

struct DeviceMemoryPlan {
  double arenas = 0;         // values + gradients + two moments (bytes)
  double weight_copies = 0;  // --gemm fp8: the E4M3 weights in both layouts and their scales
  double activations = 0;    // kept from the forward to the backward, all layers
  // the backward's shared buffers, the BF16 operand copies, the FP8 quantisers' outputs
  double temporaries = 0;
  double runtime = 0;  // cuBLAS workspaces and slack: the headroom the device keeps free
  double total() const { return arenas + weight_copies + activations + temporaries + runtime; }
};

// The attention's buffers by its mode (train/cuda's --attention): Gemm (fp32, tf32) keeps each layer's
// probabilities [b, H, t, t] for the backward, whose scores' gradient ds [b, H, t, t] is shared by the layers;
// GemmBf16 (bf16) adds the products' BF16 operand copies (shared), the [b, H, t, t] one among them; Flash keeps
// each layer's lse [b, H, t] instead and has nothing of size t x t: the BF16 copies of q, kv, k_rope and dout, the
// backward's delta [b, H, t] and per-head dk_rope partials [H, b t, dr] (shared). (Flash assumes the head widths
// have flash kernels; others run GemmBf16's buffers.)
enum class PlanAttention { Gemm, GemmBf16, Flash };

// The projections' GEMMs (train/cuda's --gemm; the routed experts grouped, the default). Bf16: the
// activations that only GEMMs read are kept in BF16 only (a, c, att's copy, the MLPs' act), the masters those
// GEMMs read are stored split. Fp8 (train/cuda/fp8_gemm.h, fp8_experts.h): those activations stay FP32 (the
// quantiser reads FP32), the MoE layers' norm output keeps its BF16 rounding for the experts' gather, each
// projection's weight is kept as E4M3 in both layouts (2 bytes a value, plus a scale per 128x128 block and
// layout), and the quantisers write their operands into scratch buffers, each the size of the largest
// product's.
// Fp8ForwardExperts: Fp8 with the routed experts' weights in the forward layout only (--fp8-expert-weights
// forward: 1 byte a value) except in the first fp8_expert_both_layers MoE layers (--fp8-expert-weights N; the
// MTP module's layer counts last), and two layers' transposed copies shared by the others (Fp8Experts makes
// the next one while the current one is read).
enum class PlanGemm { Bf16, Fp8, Fp8ForwardExperts };

DeviceMemoryPlan device_memory_plan(const ModelConfig& c, int64_t batch, int64_t seq_len, bool bf16_moments,
                                    PlanAttention attention = PlanAttention::Gemm,
                                    PlanGemm gemm = PlanGemm::Bf16, int64_t fp8_expert_both_layers = 0);

}  // namespace moe::train
