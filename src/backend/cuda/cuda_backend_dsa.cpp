// The CUDA backend's DeepSeek Sparse Attention ops (V3.2's lightning indexer and MLA over the chosen positions):
// shape checks here, kernels in dsa_index_cache.cu, dsa_index_scores.cu, dsa_topk.cu and, for the attention,
// the MLA decode kernels (mla_attention.cu, or mla_attention_generic.cu for other widths) over an index list.
// Index keys are F32 (model/latent_cache.h).
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace moe {

void CudaBackend::dsa_write_index_cache(const TensorView& k, const Weight& norm_w, const Weight& norm_b, float eps,
                                        const RopeParams& rope, const DeviceBatch& batch,
                                        const TensorView& index_cache) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = k.rows(), Di = k.row_size(), dr = int64_t(rope.inv_freq.size()) * 2;
  MOE_CHECK(k.dtype == DType::F32 && index_cache.dtype == DType::F32 &&
                index_cache.shape[index_cache.shape.rank - 1] == Di,
            "dsa_write_index_cache: index cache {} {} for F32 keys of {}", dtype_name(index_cache.dtype),
            index_cache.shape.str(), Di);
  MOE_CHECK(dr <= Di && batch.plan->num_tokens() == T && norm_w.w.numel() == Di && norm_b.w.numel() == Di,
            "dsa_write_index_cache: {} keys of {} (rope {}) for a plan of {}", T, Di, dr, batch.plan->num_tokens());
  const int64_t capacity = index_cache.numel() / Di;
  for (int32_t slot : batch.plan->slots)
    MOE_CHECK(slot >= 0 && slot < capacity, "dsa_write_index_cache: slot {} outside the cache", slot);
  cuda::dsa_write_index_cache(k.as<const float>(), cuda::ref(norm_w), cuda::ref(norm_b), eps, inv_freq(rope),
                              rope.attn_factor, batch.positions.as<const int32_t>(), batch.slots.as<const int32_t>(),
                              T, Di, dr, index_cache.as<float>(), stream_);
}

void CudaBackend::dsa_rope_q(const TensorView& q, const RopeParams& rope, const DeviceBatch& batch) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = q.rows(), Hi = q.shape[1], Di = q.shape[2], dr = int64_t(rope.inv_freq.size()) * 2;
  MOE_CHECK(q.dtype == DType::F32 && dr <= Di && batch.plan->num_tokens() == T,
            "dsa_rope_q: q {} (rope {}) for a plan of {}", q.shape.str(), dr, batch.plan->num_tokens());
  cuda::dsa_rope_q(q.as<float>(), inv_freq(rope), rope.attn_factor, batch.positions.as<const int32_t>(), T, Hi, Di, dr,
                   stream_);
}

void CudaBackend::dsa_index_scores(const TensorView& q, const TensorView& weights, const TensorView& index_cache,
                                   float scale, float weight_scale, const DeviceBatch& batch,
                                   const TensorView& scores) {
  const cuda::DeviceGuard guard(ctx_.device());
  const BatchPlan& plan = *batch.plan;
  const int64_t T = q.rows(), Hi = q.shape[1], Di = q.shape[2], L = scores.row_size();
  MOE_CHECK(index_cache.dtype == DType::F32 && index_cache.shape[index_cache.shape.rank - 1] == Di,
            "dsa_index_scores: index cache {} {} for queries of {}", dtype_name(index_cache.dtype),
            index_cache.shape.str(), Di);
  MOE_CHECK(q.dtype == DType::F32 && weights.dtype == DType::F32 && scores.dtype == DType::F32 &&
                weights.numel() == T * Hi && scores.rows() == T && plan.num_tokens() == T,
            "dsa_index_scores: weights {} / scores {} for q {} and a plan of {}", weights.shape.str(),
            scores.shape.str(), q.shape.str(), plan.num_tokens());
  MOE_CHECK(L >= int64_t(plan.max_pages) * plan.page_size, "dsa_index_scores: {} scores per row for a page table of {}",
            L, int64_t(plan.max_pages) * plan.page_size);
  cuda::dsa_index_scores(q.as<const float>(), weights.as<const float>(), index_cache.as<const float>(),
                         batch.block_table.as<const int32_t>(), batch.token_seq.as<const int32_t>(),
                         batch.positions.as<const int32_t>(), plan.max_pages, plan.page_size, T, Hi, Di, L, scale,
                         weight_scale, scores.as<float>(), stream_);
}

void CudaBackend::dsa_topk(const TensorView& scores, const DeviceBatch& batch, const TensorView& indices) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = scores.rows(), L = scores.row_size(), K = indices.row_size();
  MOE_CHECK(scores.dtype == DType::F32 && indices.dtype == DType::I32 && indices.rows() == T &&
                batch.plan->num_tokens() == T,
            "dsa_topk: indices {} for scores {} and a plan of {}", indices.shape.str(), scores.shape.str(),
            batch.plan->num_tokens());
  MOE_CHECK(L >= int64_t(batch.plan->max_pages) * batch.plan->page_size, "dsa_topk: {} scores per row", L);
  cuda::dsa_topk(scores.as<const float>(), batch.positions.as<const int32_t>(), T, L, K, indices.as<int32_t>(),
                 stream_);
}

void CudaBackend::mla_sparse_latent_attention(const TensorView& qf, const TensorView& cache, float scale,
                                              const DeviceBatch& batch, const TensorView& indices,
                                              const TensorView& o_lat, const TensorView& lse) {
  MOE_CHECK(indices.data, "mla_sparse_latent_attention: no indices");
  latent_attention(qf, cache, scale, batch, indices, o_lat, lse);  // cuda_backend_mla_primitives.cpp
}

}  // namespace moe
