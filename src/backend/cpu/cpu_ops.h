#pragma once
// The CPU backend's ops, one file each; CpuBackend (cpu_backend.cpp) dispatches to these.
// Semantics and shapes are those of the Backend interface (backend/backend.h). Activations are F32. Ops that
// split their work take the backend's own pool (CpuBackend owns one, sized by CpuOptions::threads).
#include "backend/backend.h"
#include "core/thread_pool.h"

namespace moe::cpu {

void matmul(ThreadPool& pool, const TensorView& x, const Weight& w, const TensorView& out);                       // matmul.cpp
void rms_norm(ThreadPool& pool, const TensorView& x, const Weight& w, float eps, const TensorView& out);          // rms_norm.cpp
void embedding(const Weight& table, const TensorView& ids, const TensorView& out);              // elementwise.cpp
void add(const TensorView& a, const TensorView& b, const TensorView& out);                      // elementwise.cpp
void concat_cols(const TensorView& a, const TensorView& b, const TensorView& out);              // elementwise.cpp
void gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out); // elementwise.cpp
void index_rows(const TensorView& x, const TensorView& rows, const TensorView& out);  // elementwise.cpp
void kept_rows(const TensorView& tokens, const TensorView& verified,
               const TensorView& rows);  // speculative_chain.cpp
void chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance, const DeviceBatch& to);
void swiglu_mlp(ThreadPool& pool, const TensorView& x, const MlpWeights& mlp, const TensorView& out);             // swiglu_mlp.cpp
void mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps, const RopeParams& rope,
                     const BatchPlan& plan, const TensorView& cache);                           // mla_cache.cpp
void mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope, const BatchPlan& plan);  // mla_cache.cpp
void mla_absorb(ThreadPool& pool, const TensorView& q, const Weight& kv_b, int64_t dn, int64_t dv, const TensorView& qf);  // mla_absorb.cpp
void mla_latent_attention(ThreadPool& pool, const TensorView& qf, const TensorView& cache, float scale, const BatchPlan& plan,
                          const TensorView& o_lat, const TensorView& lse);       // mla_latent_attention.cpp
void mla_project_v(ThreadPool& pool, const TensorView& o_lat, const Weight& kv_b, int64_t dn, int64_t dv,
                   const TensorView& out);                                        // mla_project_v.cpp
void dsa_write_index_cache(const TensorView& k, const Weight& norm_w, const Weight& norm_b, float eps,
                           const RopeParams& rope, const BatchPlan& plan, const TensorView& index_cache);  // dsa_index_cache.cpp
void dsa_rope_q(const TensorView& q, const RopeParams& rope, const BatchPlan& plan);              // dsa_index_cache.cpp
void dsa_index_scores(ThreadPool& pool, const TensorView& q, const TensorView& weights, const TensorView& index_cache,
                      float scale, float weight_scale, const BatchPlan& plan, const TensorView& scores);  // dsa_index_scores.cpp
void dsa_topk(ThreadPool& pool, const TensorView& scores, const BatchPlan& plan, const TensorView& indices);  // dsa_topk.cpp
void mla_sparse_latent_attention(ThreadPool& pool, const TensorView& qf, const TensorView& cache, float scale,
                                 const BatchPlan& plan, const TensorView& indices, const TensorView& o_lat,
                                 const TensorView& lse);                         // mla_sparse_latent_attention.cpp
void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
               const TensorView& expert_ids, const TensorView& expert_weights);  // moe_route.cpp
MoeDispatch moe_dispatch(ThreadPool& pool, const TensorView& x, const TensorView& expert_ids, int32_t num_experts);  // moe_dispatch.cpp
void moe_grouped_mlp(ThreadPool& pool, const MoeDispatch& d, const ExpertWeights& experts, const TensorView& y);  // moe_grouped_mlp.cpp
void moe_combine(const TensorView& y, const MoeDispatch& d, const TensorView& expert_weights, const TensorView& plus,
                 const TensorView& out);                                          // moe_combine.cpp

// Rotates interleaved pairs (v[2i], v[2i+1]) of v[0..dr) for position pos (YaRN folded into params).
void apply_rope(float* v, int64_t dr, int32_t pos, const RopeParams& rope);
// Rotates half-split pairs (v[i], v[i + dr/2]) of v[0..dr) (the DSA indexer's layout).
void apply_rope_half(float* v, int64_t dr, int32_t pos, const RopeParams& rope);

}  // namespace moe::cpu
