#pragma once
// How a backend is made: the device, and one options struct per backend. The CLI fills these from its flags
// (and from the one documented environment variable per flag, which CLI11 reads in src/cli); tests fill them
// directly. Nothing under src/backend reads the environment.
#include <cstdint>

#include "core/tensor.h"

namespace moe {

struct CpuOptions {
  int32_t threads = 0;  // worker threads of the backend's own pool; 0: one per hardware thread
};

enum class MlaDecodeKernel { Auto, Mma, Wgmma };

struct CudaOptions {
  // The tensor-core GEMMs of steps with more than 8 tokens (prefill): see CudaBackend::gemm.
  //   Bf16:  x (and a dequantised FP8 weight) rounded to BF16 once, F32 accumulation (this struct's default:
  //          the precision the fixture tests hold the GPU to).
  //   Split: x = hi + lo in two BF16 halves, ~1e-5 of the F32 GEMV at 2-3x the tensor-core work.
  //   Gemv:  the F32 weight-streaming GEMV for every token count (slow; a reference).
  //   Fp8:   FP8 weights (128x128 block scales) on cuBLASLt's block-scaled FP8 x FP8 GEMM: x quantised
  //          to E4M3 per 1x128 tile (DeepSeek-V3's W8A8 scheme, no widening of the weights); other weights
  //          exactly as Bf16 (BF16 experts included), so a BF16 checkpoint runs the same kernels, the same
  //          bits. The CLI's default (src/cli/common.h): FP8 checkpoints run on the FP8 GEMMs, as vLLM and
  //          SGLang serve them (llama.cpp-peer checkpoint, H100, 2026-12-06: prefill of 4096 tokens 2.9x,
  //          decode at batch 64 1.5x and at 256 1.7x the widening path, batch 1 the same kernels;
  //          bench/RESULTS.md).
  enum class Prefill { Bf16, Split, Gemv, Fp8 };
  Prefill prefill = Prefill::Bf16;
  // Capture steps as CUDA graphs and replay them (Backend::can_capture answers false when off).
  bool graphs = true;
  // Expanded-form MLA (flash attention over k/v expanded from the latent) for a batch holding a prefill
  // chunk of at least this many new tokens, when it does less tensor-core work than the absorbed form; 0: never.
  int64_t mla_prefill_min_tokens = 64;
  bool mla_prefill_always = false;  // skip the cost comparison (tests run every prompt through the kernel)
  // Split count of the decode attention's sequences; 0: chosen per shape (cuda::mla_choose_splits).
  int32_t mla_splits = 0;
  // Decode attention kernel: Auto takes the wgmma kernel where it applies (H % 64 == 0 at r 512 / rope 64)
  // and the mma.sync kernel elsewhere; Mma forces the mma.sync kernel, Wgmma the wgmma one where it applies
  // (for A/B runs: bench_mla_attention). Auto since the wgmma kernel passed its tests on an H200 (2026-12-02:
  // 2.09x the mma.sync kernel at 128 heads, batch 64, context 4096; bench/RESULTS.md).
  MlaDecodeKernel mla_decode = MlaDecodeKernel::Auto;
  // Routed FP8 experts on the grouped FP8 x FP8 kernel (moe_gemm_fp8.cu, under Prefill::Fp8) from this many
  // tokens in a step, decode batches included; below it, the weight-streaming grouped GEMV. (Other experts,
  // and Split / Gemv modes, take the kernels only for prefill-sized steps.) 8: at batch 8 on the
  // llama.cpp-peer checkpoint, 5179 tok/s on the kernel against 4409 on the tensor-core GEMV (H200,
  // 2026-12-05).
  int64_t grouped_experts_min_tokens = 8;
  // The same for BF16 experts in Bf16 and Fp8 modes (moe_gemm.cu). Its tiles are 128 rows, mostly padding at
  // decode batches (batch 8 over 64 experts: ~35 experts of ~1.4 rows), and the GEMV on the tensor cores
  // streams the weights faster there: batch 8 on the llama.cpp-peer checkpoint 3954-3963 tok/s on the GEMV
  // against 3779-3824 on the kernel (H200, 2026-12-05, bench/RESULTS.md).
  int64_t bf16_grouped_experts_min_tokens = 9;
  // Fewer launches for the MoE half of decode steps, same sums. At one token: the shared experts as routed
  // ones of weight 1 (Backend::shared_expert_slots), their slices in the routed experts' two GEMV launches
  // instead of two launches of their own, and the router's GEMV with the routing in one launch
  // (Backend::moe_router). Wherever each grouped-GEMV pass takes one assignment (tile 1: batch 1, and decode
  // batches with few rows per expert), the GEMV straight over the routing's ids, without moe_plan's launch.
  // There the routed experts' down launch also does the weighted combine (cuda::gemv_combine). Batch 1: 3
  // launches per MoE layer instead of 8; Moonlight's shape 338 -> 391 tok/s in BF16 on an H200
  // (bench/RESULTS.md; scripts/gpu/run.sh fusion-ab measures both sides).
  bool moe_decode_fusion = true;
};

struct BackendOptions {
  Device device;  // host: the CPU backend; cuda(i): the CUDA backend on device i
  CpuOptions cpu;
  CudaOptions cuda;
};

// Parses a CudaOptions::Prefill name (bf16, split, gemv, fp8); throws moe::Error naming the text otherwise.
CudaOptions::Prefill parse_cuda_prefill(const std::string& name);
// Parses a MlaDecodeKernel name (auto, mma, wgmma); throws moe::Error naming the text otherwise.
MlaDecodeKernel parse_mla_decode_kernel(const std::string& name);

}  // namespace moe
