// The CUDA backend's MoE primitives (Backend::moe_dispatch, moe_grouped_mlp, moe_combine), built from the
// kernels of the fused moe_experts (cuda_backend_moe.cpp): moe_plan's counting sort, the grouped GEMV for
// few rows per expert, the grouped expert GEMMs (or per-expert cuBLAS) for many, and the combine.
// The grouped kernels take the sorted rows through an identity permutation (iota): sorted row i is read
// from and written to row i. Path choices are those of the fused op for the same T, k and E (minus its
// MOE_CUDA_MOE_GEMM override), so the composition computes the same rows with the same kernels; moe_combine
// sums a token's k rows in slot order like the fused combine.
#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/moe_primitives.h"
#include "core/error.h"

namespace moe {

namespace {

// MoeDispatch::plan of the CUDA backend.
struct CudaMoePlan {
  Tensor items;   // I32 [n_items, 3]: (expert, begin, count) work items of moe_plan, for the chosen path's tile
  Tensor counts;  // I32 [E]
  Tensor inv;     // I32 [M]: sorted row of assignment a (the inverse of perm)
  Tensor iota;    // I32 [M]: 0, 1, ..., M-1 (the grouped kernels' row permutation for sorted input)
  int64_t n_items = 0;
  int gemv_tile = 1;
  bool grouped_gemm = false;  // the expert-GEMM path (prefill), else the grouped GEMV
  bool cublas = false;        // the GEMM path on per-expert cuBLAS calls
  // Decode batches of >= CudaOptions::bf16_grouped_experts_min_tokens tokens in Bf16 mode: work items of
  // kGroupedRows rows as well, for BF16 experts on the grouped GEMM (moe_experts' choice; the dispatch does
  // not know the experts' dtype, moe_grouped_mlp does).
  Tensor items_gemm;
  int64_t n_items_gemm = 0;
};

}  // namespace

MoeDispatch CudaBackend::moe_dispatch(const TensorView& x, const TensorView& expert_ids, int32_t num_experts) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = x.rows(), D = x.row_size(), K = expert_ids.row_size(), M = T * K;
  const int32_t E = num_experts;
  MOE_CHECK(x.dtype == DType::F32, "moe_dispatch: the CUDA backend's activations are F32");
  MOE_CHECK(expert_ids.dtype == DType::I32 && expert_ids.rows() == T,
            "moe_dispatch: expert ids {} for {} tokens", expert_ids.shape.str(), T);
  MOE_CHECK(E > 0 && E <= 1024, "moe_dispatch: {} experts (moe_plan takes 1 .. 1024)", E);
  auto plan = std::make_shared<CudaMoePlan>();
  // The fused op's choice (CudaBackend::moe_experts): expert GEMMs once the experts average >= 32 rows.
  plan->grouped_gemm =
      M >= 32 * int64_t(E) && T > cuda::kGemvMaxTile && ctx_.options().prefill != CudaOptions::Prefill::Gemv;
  plan->cublas = plan->grouped_gemm && D % 8 != 0;  // I % 8: moe_grouped_mlp
  plan->gemv_tile = grouped_gemv_tile(T, M, E);
  const int tile = !plan->grouped_gemm ? plan->gemv_tile : plan->cublas ? 1 << 20 : cuda::kGroupedRows;
  plan->n_items = plan->cublas ? 1 : std::min<int64_t>(E, M) + (M + tile - 1) / tile;
  plan->items = scratch(DType::I32, {std::max<int64_t>(plan->n_items, 1), 3});
  plan->counts = scratch(DType::I32, {E});
  const bool bf16_gemm_items = !plan->grouped_gemm && bf16_grouped_step(T, D);
  plan->inv = scratch(DType::I32, {M});
  plan->iota = scratch(DType::I32, {M});
  MoeDispatch d;
  d.tokens = T;
  d.top_k = K;
  d.rows = scratch(DType::F32, {M, D});
  d.perm = scratch(DType::I32, {M});
  d.offsets = scratch(DType::I32, {int64_t(E) + 1});
  cuda::moe_plan(expert_ids.as<const int32_t>(), M, E, tile, int32_t(plan->n_items), d.perm.as<int32_t>(),
                 plan->items.as<int32_t>(), plan->counts.as<int32_t>(), stream_);
  if (bf16_gemm_items) {  // the same counts, so the same expert ranges of the sorted rows; its perm is not kept
    plan->n_items_gemm = std::min<int64_t>(E, M) + (M + cuda::kGroupedRows - 1) / cuda::kGroupedRows;
    plan->items_gemm = scratch(DType::I32, {plan->n_items_gemm, 3});
    Tensor perm2 = scratch(DType::I32, {M});
    cuda::moe_plan(expert_ids.as<const int32_t>(), M, E, cuda::kGroupedRows, int32_t(plan->n_items_gemm),
                   perm2.as<int32_t>(), plan->items_gemm.as<int32_t>(), nullptr, stream_);
  }
  cuda::moe_offsets(plan->counts.as<const int32_t>(), E, d.offsets.as<int32_t>(), stream_);
  cuda::moe_dispatch_rows(x.as<const float>(), d.perm.as<const int32_t>(), M, int32_t(K), D, d.rows.as<float>(),
                          plan->inv.as<int32_t>(), plan->iota.as<int32_t>(), stream_);
  d.plan = std::move(plan);
  return d;
}

void CudaBackend::moe_grouped_mlp(const MoeDispatch& d, const ExpertWeights& experts, const TensorView& y) {
  const cuda::DeviceGuard guard(ctx_.device());
  const auto* plan = static_cast<const CudaMoePlan*>(d.plan.get());
  const auto* prep = static_cast<const PreparedExperts*>(experts.prepared.get());
  MOE_CHECK(plan != nullptr, "moe_grouped_mlp: the dispatch did not come from the CUDA backend");
  MOE_CHECK(prep != nullptr, "moe_grouped_mlp: prepare_experts was not called");
  const int64_t M = d.num_rows(), D = d.rows.view().row_size(), I = prep->inner;
  MOE_CHECK(d.num_experts() == int64_t(experts.experts.size()),
            "moe_grouped_mlp: a dispatch over {} experts for {} experts", d.num_experts(), experts.experts.size());
  MOE_CHECK(D == prep->hidden, "moe_grouped_mlp: rows of {} columns for experts of {}", D, prep->hidden);
  MOE_CHECK(y.dtype == DType::F32 && y.rows() == M && y.row_size() == D, "moe_grouped_mlp: y is {} for rows {}",
            y.shape.str(), d.rows.shape().str());
  if (M == 0) return;
  const Tensor yt(y, nullptr);  // the GEMM helpers take Tensors; y stays the caller's
  if (plan->grouped_gemm && (plan->cublas || I % 8 != 0 || prep->group_size > 0)) {
    moe_expert_gemms_cublas(d.rows, *prep, plan->iota, plan->counts, M, 1, yt);
    return;
  }
  if (plan->grouped_gemm) {
    moe_expert_gemms(d.rows, *prep, plan->iota, plan->items, plan->n_items, plan->counts, M, 1, yt);
    return;
  }
  if (plan->n_items_gemm > 0 && bf16_grouped_experts(*prep)) {  // as moe_experts: decode batches
    moe_expert_gemms(d.rows, *prep, plan->iota, plan->items_gemm, plan->n_items_gemm, plan->counts, M, 1, yt);
    return;
  }
  // Grouped GEMV over moe_plan's work items: h[i] = silu(rows[i] Wg^T) * (rows[i] Wu^T), y[i] = h[i] Wd^T.
  grouped_expert_gemv(*prep, plan->items.as<const int32_t>(), plan->n_items, plan->iota.as<const int32_t>(),
                      plan->gemv_tile, d.rows.as<const float>(), 1, M, y.as<float>());
}

void CudaBackend::moe_combine(const TensorView& y, const MoeDispatch& d, const TensorView& expert_weights,
                              const TensorView& plus, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  const auto* plan = static_cast<const CudaMoePlan*>(d.plan.get());
  MOE_CHECK(plan != nullptr, "moe_combine: the dispatch did not come from the CUDA backend");
  const int64_t T = d.tokens, K = d.top_k, D = out.row_size();
  MOE_CHECK(out.rows() == T && y.rows() == T * K && y.row_size() == D, "moe_combine: y {} and out {} for {} x {}",
            y.shape.str(), out.shape.str(), T, K);
  MOE_CHECK(expert_weights.numel() == T * K, "moe_combine: expert weights {} for {} x {}",
            expert_weights.shape.str(), T, K);
  MOE_CHECK(!plus.data || plus.numel() == out.numel(), "moe_combine: plus is {} for an output of {}",
            plus.shape.str(), out.shape.str());
  cuda::moe_combine_sorted(y.as<const float>(), plan->inv.as<const int32_t>(), expert_weights.as<const float>(), T,
                           int32_t(K), D, plus.data ? plus.as<const float>() : nullptr, out.as<float>(), stream_);
}

}  // namespace moe
