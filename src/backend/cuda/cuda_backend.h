#pragma once
// The CUDA backend's class, shared by its host-side files: cuda_backend.cpp (memory, dense ops, the factory),
// cuda_backend_mla.cpp (MLA), cuda_backend_moe.cpp (MoE) and cuda_backend_prefill.cpp (many-token paths).
// Kernels live in the .cu files (cuda_ops.h). Each backend owns a CudaContext (cuda_context.h): its device,
// stream, cuBLAS handle, memory pool and options; every public method makes that device current first
// (DeviceGuard), so backends on different devices can be used from one thread.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend.h"
#include "backend/cuda/cuda_context.h"
#include "backend/cuda/cuda_ops.h"
#include "backend/cuda/gemm_fp8.h"

namespace moe {

namespace cuda {

inline WeightRef ref(const Weight& w) {
  WeightRef r;
  r.data = w.w.data;
  r.scale = w.is_fp8() ? w.scale_inv.as<const float>() : nullptr;
  r.dtype = w.w.dtype;
  r.rows = w.rows();
  r.cols = w.cols();
  r.block_n = w.block_n;
  r.block_k = w.block_k;
  return r;
}

// Tokens per GEMV pass for T tokens.
inline int tile_for(int64_t tokens) {
  return tokens <= 1 ? 1 : tokens <= 2 ? 2 : tokens <= 4 ? 4 : kGemvMaxTile;
}

// Device pointer table of a layer's experts for the grouped kernels: [E][gate, up, down, scales x3].
struct PreparedExperts {
  void** table = nullptr;
  DType dtype = DType::BF16;
  int64_t hidden = 0, inner = 0;
  int32_t block_n = 128, block_k = 128;
  bool pow2_scales = false;  // FP8 scales are powers of two (ue8m0): so are the activation scales then
  // INT4 (W4A16) experts when > 0: the table holds the packed words and the group scales (BF16 or F32) as stored;
  // decode runs the W4A16 GEMV on them, prefill dequantises the active experts to BF16 scratch first.
  int32_t group_size = 0;
  bool bf16_scales = false;
  // The routed experts' pointers (the device `table`: them, then the shared experts' when shared_slots > 0).
  std::vector<const void*> host_table;
  // The shared experts as routed ones (prepare_shared_experts): entries E .. E + shared_slots - 1 of `table`,
  // each an inner-wide slice of the shared MLP (with more than one, the down slices are copies in persistent
  // memory).
  int32_t shared_slots = 0;
  // Expert e's matrix j (0 gate, 1 up: [inner, hidden]; 2 down: [hidden, inner]) with its scales.
  WeightRef matrix(int64_t e, int j) const {
    WeightRef r;
    r.data = host_table[size_t(e) * 6 + size_t(j)];
    r.scale = static_cast<const float*>(host_table[size_t(e) * 6 + 3 + size_t(j)]);
    r.dtype = dtype;
    r.rows = j < 2 ? inner : hidden;
    r.cols = j < 2 ? hidden : inner;
    r.block_n = block_n;
    r.block_k = block_k;
    r.group = group_size;
    r.bf16_scale = bf16_scales;
    return r;
  }
};

}  // namespace cuda

class CudaBackend final : public Backend {
  using PreparedExperts = cuda::PreparedExperts;

 public:
  CudaBackend(int device, const CudaOptions& options);
  ~CudaBackend() override;

  std::string name() const override { return ctx_.name(); }
  Device device() const override { return Device::cuda(ctx_.device()); }
  void* native_stream() const override { return stream_; }
  const CudaOptions& options() const { return ctx_.options(); }
  DType activation_dtype() const override { return DType::F32; }
  DType cache_dtype() const override { return DType::BF16; }

  Tensor alloc(DType dtype, Shape shape) override;
  // Op outputs written in full by the next op: no cudaMemsetAsync (one per temporary of the model).
  Tensor alloc_uninitialized(DType dtype, Shape shape) override {
    const cuda::DeviceGuard guard(ctx_.device());
    return scratch(dtype, shape);
  }
  void copy_from_host(const void* src, const TensorView& dst) override;
  void copy_to_host(const TensorView& src, void* dst) override;
  void copy(const TensorView& src, const TensorView& dst) override;
  Weight upload_weight(const Weight& host) override;
  void prepare_experts(ExpertWeights& experts) override;
  void prepare_shared_experts(ExpertWeights& experts, const MlpWeights& shared) override;
  void moe_router(const TensorView& x, const Weight& router, const TensorView& bias,
                  const RoutingParams& params, const TensorView& logits, const TensorView& expert_ids,
                  const TensorView& expert_weights) override;
  int32_t shared_expert_slots(const ExpertWeights& experts, int64_t T) const override;
  DeviceBatch upload_batch(const BatchPlan& plan) override;
  void synchronize() override {
    const cuda::DeviceGuard guard(ctx_.device());
    ctx_.synchronize();
  }

  // CUDA graphs of steps of any size (CudaOptions::graphs). The ops only enqueue work on the stream; cuBLAS
  // has a workspace of its own; a path that needs the host in the middle of a step (the FP8 experts' counts
  // in prefill, the expanded MLA's plan) is not taken while capturing or, where there is no other path,
  // throws, and the caller runs that step eagerly.
  bool can_capture(int64_t tokens) const override { return ctx_.options().graphs; }
  void begin_capture() override;
  std::shared_ptr<CapturedWork> end_capture() override;
  void abort_capture() override;
  void replay(const CapturedWork& work) override;
  void update_batch(const BatchPlan& plan, DeviceBatch& batch) override;

  void embedding(const Weight& table, const TensorView& ids, const TensorView& out) override;
  void rms_norm(const TensorView& x, const Weight& w, float eps, const TensorView& out) override;
  void matmul(const TensorView& x, const Weight& w, const TensorView& out) override;
  void matmul_pair(const TensorView& x, const Weight& wa, const TensorView& out_a, const Weight& wb,
                   const TensorView& out_b) override;
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override;
  void add_rms_norm(const TensorView& h, const TensorView& y, const Weight& w, float eps,
                    const TensorView& out) override;
  void concat_cols(const TensorView& a, const TensorView& b, const TensorView& out) override;
  void gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out) override;
  void swiglu_mlp(const TensorView& x, const MlpWeights& mlp, const TensorView& out) override;

  void mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps, const RopeParams& rope,
                       const DeviceBatch& batch, const TensorView& cache) override;
  void mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope, const DeviceBatch& batch) override;
  void mla_rope_and_cache(const TensorView& q, int64_t dn, const TensorView& kv_a, const Weight& kv_norm,
                          float eps, const RopeParams& rope, const DeviceBatch& batch,
                          const TensorView& cache) override;
  void mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn, int64_t dv,
                     float scale, const DeviceBatch& batch, const TensorView& out) override;

  void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
                 const TensorView& expert_ids, const TensorView& expert_weights) override;
  void moe_local_choices(const TensorView& expert_ids, const TensorView& expert_weights, const TensorView& slots,
                         const TensorView& local_ids, const TensorView& local_weights) override;
  void moe_experts(const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                   const TensorView& expert_weights, const TensorView& plus, const TensorView& out) override;

  // MoE and MLA as primitive ops (cuda_backend_moe_primitives.cpp, cuda_backend_mla_primitives.cpp), from the
  // kernels of the fused moe_experts and mla_attention above, which stay as they are.
  MoeDispatch moe_dispatch(const TensorView& x, const TensorView& expert_ids, int32_t num_experts) override;
  void moe_grouped_mlp(const MoeDispatch& d, const ExpertWeights& experts, const TensorView& y) override;
  void moe_combine(const TensorView& y, const MoeDispatch& d, const TensorView& expert_weights,
                   const TensorView& plus, const TensorView& out) override;
  void mla_absorb(const TensorView& q, const Weight& kv_b, int64_t dn, int64_t dv, const TensorView& qf) override;
  void mla_latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                            const TensorView& o_lat, const TensorView& lse) override;
  void mla_project_v(const TensorView& o_lat, const Weight& kv_b, int64_t dn, int64_t dv,
                     const TensorView& out) override;
  // DeepSeek Sparse Attention (cuda_backend_dsa.cpp; kernels dsa_*.cu and mla_attention_generic.cu).
  bool has_sparse_attention() const override { return true; }
  void dsa_write_index_cache(const TensorView& k, const Weight& norm_w, const Weight& norm_b, float eps,
                             const RopeParams& rope, const DeviceBatch& batch, const TensorView& index_cache) override;
  void dsa_rope_q(const TensorView& q, const RopeParams& rope, const DeviceBatch& batch) override;
  void dsa_index_scores(const TensorView& q, const TensorView& weights, const TensorView& index_cache, float scale,
                        float weight_scale, const DeviceBatch& batch, const TensorView& scores) override;
  void dsa_topk(const TensorView& scores, const DeviceBatch& batch, const TensorView& indices) override;
  void mla_sparse_latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                                   const TensorView& indices, const TensorView& o_lat, const TensorView& lse) override;
  // Every row in one launch of cuda::sample_rows (cuda_backend_sample.cpp): one upload of the rows' settings,
  // edits and masks, one download of the ids and logprobs.
  void sample(const TensorView& logits, std::span<const SampleRow> rows, std::vector<SampleResult>& out) override;
  void argmax_rows(const TensorView& logits, int64_t limit, const TensorView& ids) override;
  void kept_rows(const TensorView& tokens, const TensorView& verified, const TensorView& rows) override;
  void chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance,
                   const DeviceBatch& to) override;
  void index_rows(const TensorView& x, const TensorView& rows, const TensorView& out) override;

 private:
  // mla_latent_attention and mla_sparse_latent_attention (indices empty for the dense op).
  void latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                        const TensorView& indices, const TensorView& o_lat, const TensorView& lse);
  class Graph;
  Tensor scratch(DType dtype, Shape shape) { return ctx_.scratch(dtype, shape); }
  TensorView upload_persistent(const TensorView& host);
  const double* inv_freq(const RopeParams& rope);
  // F32 weights (the router) stay on the F32 GEMV path: rounding them or x to BF16 can flip expert choices.
  static bool gemm_ok(const Weight& w) {
    return w.w.dtype == DType::BF16 || w.w.dtype == DType::F8_E4M3 || w.w.dtype == DType::F16;
  }
  bool use_gemm(int64_t T, const Weight& w) const {
    return T > cuda::kGemvMaxTile && gemm_ok(w) && ctx_.options().prefill != CudaOptions::Prefill::Gemv;
  }
  bool split() const { return ctx_.options().prefill == CudaOptions::Prefill::Split; }
  // MLA's absorption (W_UK) and value projection (W_UV) as strided batched BF16 GEMMs over the heads instead
  // of the head-batched CUDA-core kernels: above the GEMV's tile, with BF16 kv_b, where the GEMMs round their
  // activations to BF16 (not in Split mode, which keeps them exact, nor in Gemv mode).
  bool mla_products_on_gemm(int64_t T, const Weight& kv_b) const {
    return T > cuda::kGemvMaxTile && kv_b.w.dtype == DType::BF16 && !split() &&
           ctx_.options().prefill != CudaOptions::Prefill::Gemv;
  }
  // Prefill::Fp8 and an FP8 weight with 128x128 blocks of a shape cuBLASLt's block-scaled GEMM takes.
  bool fp8_gemm_ok(const Weight& w) const {
    return ctx_.options().prefill == CudaOptions::Prefill::Fp8 && w.w.dtype == DType::F8_E4M3 &&
           w.block_n == 128 && w.block_k == 128 && cuda::fp8_gemm_shape_ok(w.rows(), w.cols());
  }
  cuda::GemvParams dense_gemv(const Weight& w, const float* x, int64_t x_stride, float* out,
                              int64_t out_stride, int64_t T);
  // out [T, N] = x W^T on the tensor cores (cuBLAS); non-BF16 weights go through a BF16 scratch copy.
  //
  // Precision. Prefill::Bf16 (CudaOptions' default) is the plain tensor-core GEMM: x (and a dequantised FP8
  // weight, w8 * scale) rounded to BF16, 8 significant bits, ~2^-9 relative per element, F32 accumulation: a
  // normal BF16 budget (~1e-3 relative per matmul), and the only mode whose tensor-core work equals the model
  // FLOPs. The decode GEMV keeps x in F32, so prefill and decode differ by that rounding; the fixture's
  // router scores (sigmoid, 16 experts, group-limited top-4) have near-ties that such perturbations flip (see
  // tests/cuda/test_cuda_model.cpp and test_cuda_trace.cpp). Prefill::Split (CudaOptions::prefill, the
  // near-F32 mode) writes x = x_hi + x_lo (both BF16, x_lo = bf16(x - x_hi)) and, for non-BF16 weights,
  // W = W_hi + W_lo the same way, and accumulates x_hi W_hi + x_lo W_hi (+ x_hi W_lo) in F32 on the tensor
  // cores: the inputs then carry ~16 significant bits (2^-17 relative), the dropped x_lo W_lo term is
  // ~2^-18, so the GEMM matches the F32 GEMV to ~1e-5 at 2x (BF16 weights) or 3x (FP8) the tensor-core
  // work. Prefill::Gemv forces the F32 GEMV for every token count.
  void gemm(const float* x, const Weight& w, float* out, int64_t T);
  // Prefill::Fp8 (fp8_gemm_ok(w)): x [T, K] quantised to E4M3 per 1x128 tile (fp8_quant.cu), then
  // out = x W^T on cuBLASLt's block-scaled FP8 GEMM with the weight and its scales as stored (gemm_fp8.h).
  //
  // Precision: E4M3 keeps 3 mantissa bits, so each quantised activation is within 2^-4 relative of x (plus
  // 2^-10 of its tile's scale below the normal range); the products are exact and accumulate in F32 per
  // 128-deep block. Over random-sign terms the output error is ~2^-4/sqrt(3) * ||x .* w||_2 (rms ~2-3 % of
  // the output per matmul; measured in tests/cuda/test_cuda_fp8.cpp), against ~2^-9 for Prefill::Bf16.
  void gemm_fp8(const float* x, int64_t ldx, const Weight& w, float* out, int64_t T);
  // The two halves of gemm_fp8, for products that share their input (matmul_pair, the dense SwiGLU's gate and
  // up): x quantised once (E4M3 [T4, K] with T4 = T rounded up to 4, padding rows zero, and the [K/128, T4]
  // scales), then any number of GEMMs against weights with the same scale kind.
  struct Fp8Activations {
    Tensor q, s;
    int64_t T = 0, T4 = 0, K = 0;
    bool pow2_scales = false;
  };
  // x_bf16: the rows in BF16 instead of x. zero_padding false: the padding rows of q are left unwritten, for
  // kernels that read only the T rows (the grouped FP8 GEMM, through its rows' ids).
  Fp8Activations quantize_activations(const float* x, int64_t ldx, int64_t T, int64_t K, bool pow2_scales,
                                      const uint16_t* x_bf16 = nullptr, bool zero_padding = true);
  void gemm_fp8(const Fp8Activations& x, const Weight& w, float* out);
  // x [T, K] rounded to BF16 once (split mode: and the remainder x - hi, also BF16), for gemm_rounded and the
  // grouped BF16 kernels; lo_data() is null outside split mode.
  struct Bf16Activations {
    Tensor hi, lo;
    const uint16_t* hi_data() const { return hi.as<const uint16_t>(); }
    const uint16_t* lo_data() const { return lo.data() ? lo.as<const uint16_t>() : nullptr; }
  };
  Bf16Activations round_activations(const float* x, int64_t T, int64_t K);
  // The weight's 128x128 scale grid with its leading dimension a multiple of 4 (a padded scratch copy in
  // `tmp` when the checkpoint's grid is narrower).
  const float* fp8_weight_scales(const float* s, int64_t N, int64_t K, Tensor& tmp);
  cuda::Fp8Gemm& fp8_gemm();

  // ---- Prefill (many tokens per forward): cuda_backend_prefill.cpp ----
  // The prefill kernels of moe_gemm.cu / mla_prefill.cu: grouped expert GEMM, fused dense SwiGLU, expanded MLA.
  // (The cuBLAS-only paths they replaced are kept for A/B timing in bench/gpu/sandbox, not here.)
  // gemm() on inputs already rounded: x_hi (and x_lo, the split remainder, or null) BF16 [T, K].
  void gemm_rounded(const uint16_t* x_hi, const uint16_t* x_lo, const Weight& w, float* out, int64_t T);
  // swiglu_mlp for many tokens: gate and up in one grouped-GEMM launch with SwiGLU in its epilogue (h in
  // BF16, hi + lo in split mode), then down on cuBLAS; for shapes the kernel does not take (widths not a
  // multiple of 8, gate and up of different dtypes): gate and up as two GEMMs with F32 outputs, silu_mul, down.
  bool swiglu_gemm_ok(int64_t T, const MlpWeights& mlp) const;
  void swiglu_gemm(const TensorView& x, const MlpWeights& mlp, const TensorView& out);
  // Routed experts for many tokens, from moe_plan's work items of kGroupedRows rows: gate + up (SwiGLU fused,
  // x rows gathered by token inside the kernel) and down (rows scattered back to assignment order into y) as
  // two grouped-GEMM launches. BF16 experts need no host synchronisation; FP8 experts are dequantised (active
  // ones only, in chunks) after a copy of the per-expert counts to the host.
  void moe_expert_gemms(const TensorView& x, const PreparedExperts& prep, const Tensor& perm,
                        const Tensor& items, int64_t n_items, const Tensor& counts, int64_t T, int64_t K,
                        const Tensor& y);
  // For widths the grouped kernel does not take (not multiples of 8): one cuBLAS GEMM per active expert and
  // projection over rows gathered into expert order (needs the counts on the host: never captured).
  void moe_expert_gemms_cublas(const TensorView& x, const PreparedExperts& prep, const Tensor& perm,
                               const Tensor& counts, int64_t T, int64_t K, const Tensor& y);
  // Prefill::Fp8 with FP8 experts (fp8_experts_ok), prefill and decode batches of >=
  // CudaOptions::grouped_experts_min_tokens tokens: x quantised to E4M3 per token and 1x128 tile, gate + up as one grouped FP8 x FP8 launch over
  // moe_plan's work items (cuda::grouped_gemm_fp8, SwiGLU epilogue, F32 h), h quantised likewise, down as one
  // grouped launch scattering rows back to assignment order. No host read-back: capturable.
  bool fp8_experts_ok(const PreparedExperts& prep) const;
  // The step size from which prep's routed experts leave the GEMV for a grouped tensor-core GEMM, by their
  // dtype: CudaOptions::bf16_grouped_experts_min_tokens for BF16, grouped_experts_min_tokens otherwise.
  int64_t grouped_experts_from(const PreparedExperts& prep) const;
  // BF16 experts on the grouped GEMM at decode batches (moe_experts, and moe_dispatch + moe_grouped_mlp,
  // which must choose alike): a step of >= bf16_grouped_experts_min_tokens tokens of width D in Bf16 or Fp8
  // mode (Fp8 runs BF16 weights as Bf16 does), and experts the kernel takes.
  bool bf16_grouped_step(int64_t T, int64_t D) const {
    const CudaOptions::Prefill m = ctx_.options().prefill;
    return T >= ctx_.options().bf16_grouped_experts_min_tokens &&
           (m == CudaOptions::Prefill::Bf16 || m == CudaOptions::Prefill::Fp8) && D % 8 == 0;
  }
  static bool bf16_grouped_experts(const PreparedExperts& prep) {
    return prep.dtype == DType::BF16 && prep.inner % 8 == 0;
  }
  void moe_expert_gemms_fp8(const TensorView& x, const PreparedExperts& prep, const Tensor& perm,
                            const Tensor& items, int64_t n_items, int64_t T, int64_t K, const Tensor& y);
  // MLA in the expanded form (cuda::mla_prefill_attention) for a batch with a prefill chunk of at least
  // CudaOptions::mla_prefill_min_tokens new tokens (mla_prefill_always skips the cost test), when it does less
  // tensor-core work than the absorbed form; never while a graph is being captured.
  bool mla_prefill_wanted(const TensorView& q, const TensorView& cache, int64_t dn, int64_t dv,
                          const DeviceBatch& batch) const;
  void mla_attention_prefill(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn,
                             int64_t dv, float scale, const DeviceBatch& batch, const TensorView& out);

  // Routed experts for few rows per expert (cuda_backend_moe.cpp): two grouped-GEMV launches over moe_plan's
  // work items, gate + up with SwiGLU fused (h [M, I] F32 scratch), then down into y [M, D]; assignment a =
  // perm[i] reads x row a / x_row_div and writes y row a. With ids (items and perm null, tile 1, n_items =
  // M): assignment a is work item a, of expert ids[a]; then with `combine` the down launch also does the
  // weighted combine where cuda::gemv_combine takes the shape. Returns whether it did.
  bool grouped_expert_gemv(const PreparedExperts& prep, const int32_t* items, int64_t n_items,
                           const int32_t* perm, int tile, const float* x, int32_t x_row_div, int64_t M,
                           float* y, const int32_t* ids = nullptr,
                           const cuda::GemvCombine* combine = nullptr);
  // The same for INT4 experts (the W4A16 GEMV): h [M, I] is the caller's scratch.
  void int4_expert_gemv(const PreparedExperts& prep, const int32_t* items, int64_t n_items, const int32_t* perm,
                        const float* x, int32_t x_row_div, int64_t M, const Tensor& h, float* y);
  static cuda::RouteParams route_params(const RoutingParams& params, int32_t cols);
  // The grouped GEMV's tile for TK assignments of T tokens over E experts (cuda_backend_moe.cpp).
  static int grouped_gemv_tile(int64_t T, int64_t TK, int32_t E);

  cuda::CudaContext ctx_;
  // The context's handles, cached: every op uses them.
  const cudaStream_t stream_ = ctx_.stream();
  const cublasHandle_t cublas_ = ctx_.cublas();
  const int sms_ = ctx_.sms();
  std::unordered_map<std::string, const double*> rope_tables_;  // inv_freq tables uploaded, by contents
  std::unique_ptr<cuda::Fp8Gemm> fp8_;  // made on the first FP8 GEMM (its cuBLASLt handle and workspace)
  // cuda::router_route's block counter (made with the backend, 0 between launches).
  unsigned* router_done_ = nullptr;
  // cuda::gemv_combine's column counters (kGemvCombineColumns, the same protocol).
  unsigned* combine_done_ = nullptr;
};

}  // namespace moe
