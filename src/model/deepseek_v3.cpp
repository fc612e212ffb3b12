// The DeepSeek-V3 forward pass. Shapes: T new tokens, D hidden, H heads, dn/dr/dv head dims, r kv_lora_rank.
#include "model/deepseek_v3.h"

#include <algorithm>
#include <cmath>

#include "core/error.h"
#include "model/rope.h"

namespace moe {

namespace {

// The q_a and kv_a layernorms use 1e-6 in DeepSeek's code and in HF, whatever the config says.
constexpr float kLatentNormEps = 1e-6f;
// So does the indexer's key LayerNorm (k_norm).
constexpr float kIndexNormEps = 1e-6f;

RoutingParams routing_params(const ModelConfig& c) {
  RoutingParams p;
  p.score = c.scoring_func == ScoringFunc::Sigmoid ? RoutingScore::Sigmoid : RoutingScore::Softmax;
  p.method = c.topk_method == TopkMethod::NoauxTc  ? RoutingMethod::NoauxTc
             : c.topk_method == TopkMethod::Greedy ? RoutingMethod::Greedy
                                                   : RoutingMethod::GroupLimitedGreedy;
  p.num_experts = int32_t(c.n_routed_experts);
  p.top_k = int32_t(c.num_experts_per_tok);
  p.n_group = int32_t(c.n_group);
  p.topk_group = int32_t(c.topk_group);
  p.norm_topk_prob = c.norm_topk_prob;
  p.routed_scaling_factor = float(c.routed_scaling_factor);
  return p;
}

// Expert parallelism: this rank's slots of each layer.
ExpertSelection local_experts(const ExpertParallel* ep) {
  if (!ep) return {};
  return [ep](int64_t layer) { return ep->placement().local_experts(size_t(layer), ep->rank()); };
}

}  // namespace

BatchPlan plan_batch(const std::vector<SequenceChunk>& chunks, int64_t page_size) {
  BatchPlan plan;
  plan.page_size = int32_t(page_size);
  for (const auto& c : chunks) plan.max_pages = std::max(plan.max_pages, int32_t(c.pages.size()));
  for (size_t s = 0; s < chunks.size(); ++s) {
    const auto& c = chunks[s];
    MOE_CHECK(!c.tokens.empty(), "forward: sequence {} has no new tokens", s);
    const int64_t len = int64_t(c.start_pos) + int64_t(c.tokens.size());
    MOE_CHECK(int64_t(c.pages.size()) * page_size >= len,
              "forward: sequence {} needs {} cache positions but has {} pages", s, len, c.pages.size());
    for (size_t i = 0; i < c.tokens.size(); ++i) {
      const int32_t pos = c.start_pos + int32_t(i);
      plan.positions.push_back(pos);
      plan.token_seq.push_back(int32_t(s));
      plan.slots.push_back(c.pages[size_t(pos / page_size)] * int32_t(page_size) + pos % int32_t(page_size));
    }
    plan.seq_lens.push_back(int32_t(len));
    for (int32_t p = 0; p < plan.max_pages; ++p)
      plan.block_table.push_back(p < int32_t(c.pages.size()) ? c.pages[size_t(p)] : -1);
  }
  return plan;
}

DeepseekV3::DeepseekV3(const std::string& model_dir, Backend& backend, Options options)
    : config_(ModelConfig::load(model_dir)),
      backend_(backend),
      checkpoint_(std::in_place, model_dir),
      weights_(ModelWeights::load(*checkpoint_, config_, backend, options.load_mtp, options.progress,
                                  local_experts(options.ep))),
      rope_(make_rope_params(config_)),
      attn_scale_(attention_scale(config_)),
      routing_(routing_params(config_)),
      ep_(options.ep),
      load_(options.load) {
  check_backend();
  if (ep_) check_placement(ep_->placement());
}

DeepseekV3::DeepseekV3(std::shared_ptr<const TensorSource> source, ModelConfig config, Backend& backend,
                       Options options)
    : config_(std::move(config)),
      backend_(backend),
      source_(std::move(source)),
      weights_(ModelWeights::load(*source_, config_, backend, options.load_mtp, options.progress,
                                  local_experts(options.ep))),
      rope_(make_rope_params(config_)),
      attn_scale_(attention_scale(config_)),
      routing_(routing_params(config_)),
      ep_(options.ep),
      load_(options.load) {
  check_backend();
  if (ep_) check_placement(ep_->placement());
}

DeepseekV3::DeepseekV3(ModelConfig config, ModelWeights weights, Backend& backend, Options options)
    : config_(std::move(config)),
      backend_(backend),
      weights_(std::move(weights)),
      rope_(make_rope_params(config_)),
      attn_scale_(attention_scale(config_)),
      routing_(routing_params(config_)),
      ep_(options.ep),
      load_(options.load) {
  MOE_CHECK(int64_t(weights_.layers.size()) == config_.num_hidden_layers, "DeepseekV3: {} layers of weights for {}",
            weights_.layers.size(), config_.num_hidden_layers);
  check_backend();
  if (ep_) check_placement(ep_->placement());
  for (const auto& l : weights_.layers)
    MOE_CHECK(l.attn.indexer.has_value() == config_.sparse_attention(),
              "DeepseekV3: the weights {} indexer but the config is {}", l.attn.indexer ? "have an" : "lack the",
              config_.architecture);
}

// Expert parallelism: the placement's experts are the routed ones, plus the shared one when it is routed.
void DeepseekV3::check_placement(const ExpertPlacement& p) const {
  if (!ep_) return;
  const bool shared = ep_->shared_as_routed();
  MOE_CHECK(!shared || config_.n_shared_experts == 1,
            "the shared expert as a routed one needs exactly one shared expert of a routed expert's shape; this model "
            "has {}",
            config_.n_shared_experts);
  MOE_CHECK(p.num_experts == config_.n_routed_experts + (shared ? 1 : 0),
            "expert parallelism: a placement of {} experts for {} routed experts{}", p.num_experts,
            config_.n_routed_experts, shared ? " plus the shared one" : "");
}

void DeepseekV3::check_backend() const {
  if (config_.sparse_attention() && !backend_.has_sparse_attention())
    fail("{} (DeepSeek Sparse Attention) is not yet supported on the {} backend: its indexer and sparse MLA ops "
         "(dsa_*) exist only on the CPU for now (use --device cpu)",
         config_.architecture, backend_.name());
}

void DeepseekV3::set_placement(const ExpertPlacement& p) {
  MOE_CHECK(ep_, "set_placement: this model runs without expert parallelism");
  const TensorSource* src = checkpoint_ ? static_cast<const TensorSource*>(&*checkpoint_) : source_.get();
  MOE_CHECK(src, "set_placement: the model was built from weights and has no checkpoint to load experts from");
  check_placement(p);
  ep_->set_placement(p);
  auto reload = [&](int64_t i, DecoderLayerWeights& l) {
    if (l.is_moe) l.experts = load_experts(*src, config_, backend_, i, p.local_experts(size_t(i), ep_->rank()));
  };
  for (size_t i = 0; i < weights_.layers.size(); ++i) reload(int64_t(i), weights_.layers[i]);
  if (weights_.mtp) reload(config_.num_hidden_layers, weights_.mtp->layer);
}

const Checkpoint& DeepseekV3::checkpoint() const {
  MOE_CHECK(checkpoint_.has_value(), "this model was built from weights in memory and has no checkpoint");
  return *checkpoint_;
}

std::vector<int32_t> DeepseekV3::token_ids(const std::vector<SequenceChunk>& chunks) const {
  std::vector<int32_t> ids;
  for (const auto& c : chunks) {
    for (int32_t t : c.tokens) {
      if (t < 0 || t >= config_.vocab_size)
        fail("token id {} is outside the vocabulary (vocab_size {})", t, config_.vocab_size);
      ids.push_back(t);
    }
  }
  return ids;
}

Tensor DeepseekV3::upload_tokens(const std::vector<SequenceChunk>& chunks) {
  const std::vector<int32_t> ids = token_ids(chunks);
  Tensor out = backend_.alloc_uninitialized(DType::I32, Shape{int64_t(ids.size())});
  backend_.copy_from_host(ids.data(), out);
  return out;
}

ForwardOutput DeepseekV3::forward(const std::vector<SequenceChunk>& chunks, LatentCache& cache) {
  const BatchPlan plan = plan_batch(chunks, cache.page_size());
  const DeviceBatch batch = backend_.upload_batch(plan);
  const Tensor ids = upload_tokens(chunks);
  return run(chunks, batch, ids, cache);
}

ForwardOutput DeepseekV3::run(const std::vector<SequenceChunk>& chunks, const DeviceBatch& batch,
                                     const TensorView& ids, LatentCache& cache) {
  const int64_t T = batch.plan->num_tokens(), D = config_.hidden_size;
  const DType act = backend_.activation_dtype();

  Tensor h = backend_.alloc_uninitialized(act, {T, D}), y = backend_.alloc_uninitialized(act, {T, D});
  backend_.embedding(weights_.embed, ids, h);
  std::vector<Tensor> index_topk;
  for (size_t i = 0; i < weights_.layers.size(); ++i) {
    Tensor chosen = decoder_layer(int64_t(i), weights_.layers[i], h, i == 0 ? TensorView{} : y.view(), y, cache.layer(int64_t(i)),
                                  cache.index_layer(int64_t(i)), batch);
    if (!chosen.empty()) index_topk.push_back(std::move(chosen));
  }
  ForwardOutput out = head(chunks, h, y, weights_.final_norm, weights_.lm_head);
  out.index_topk = std::move(index_topk);
  return out;
}

void DeepseekV3::forward_idle() {
  MOE_CHECK(ep_ && ep_->data_parallel(), "forward_idle: only for expert parallelism with data-parallel attention");
  for (size_t i = 0; i < weights_.layers.size(); ++i)
    if (weights_.layers[i].is_moe)
      ep_->moe_idle(backend_, int64_t(i), weights_.layers[i].experts, config_.hidden_size,
                    config_.num_experts_per_tok);
}

ForwardOutput DeepseekV3::forward_mtp(const std::vector<SequenceChunk>& chunks, const TensorView& hidden,
                                      LatentCache& cache) {
  MOE_CHECK(weights_.mtp.has_value(), "this model was loaded without its MTP module");
  MOE_CHECK(cache.num_layers() > config_.num_hidden_layers, "the cache has no layer for the MTP module");
  const BatchPlan plan = plan_batch(chunks, cache.page_size());
  const DeviceBatch batch = backend_.upload_batch(plan);
  const Tensor ids = upload_tokens(chunks);
  return run_mtp(chunks, batch, ids, hidden, cache);
}

ForwardOutput DeepseekV3::run_mtp(const std::vector<SequenceChunk>& chunks, const DeviceBatch& batch,
                                  const TensorView& ids, const TensorView& hidden, LatentCache& cache) {
  MOE_CHECK(weights_.mtp.has_value(), "this model was loaded without its MTP module");
  MOE_CHECK(cache.num_layers() > config_.num_hidden_layers, "the cache has no layer for the MTP module");
  const MtpWeights& mtp = *weights_.mtp;
  const int64_t T = ids.numel(), D = config_.hidden_size;
  MOE_CHECK(hidden.rows() == T && hidden.row_size() == D, "forward_mtp: hidden is {} for {} tokens",
            hidden.shape.str(), T);
  const DType act = backend_.activation_dtype();
  const float eps = float(config_.rms_norm_eps);

  // m_j = eh_proj(concat(enorm(embed(t[j+1])), hnorm(h_j)))
  Tensor e = backend_.alloc_uninitialized(act, {T, D}), hn = backend_.alloc_uninitialized(act, {T, D});
  Tensor cat = backend_.alloc_uninitialized(act, {T, 2 * D});
  backend_.embedding(weights_.embed, ids, e);
  backend_.rms_norm(e, mtp.enorm, eps, e);
  backend_.rms_norm(hidden, mtp.hnorm, eps, hn);
  backend_.concat_cols(e, hn, cat);
  Tensor m = backend_.alloc_uninitialized(act, {T, D}), y = backend_.alloc_uninitialized(act, {T, D});
  backend_.matmul(cat, mtp.eh_proj, m);
  Tensor chosen = decoder_layer(config_.num_hidden_layers, mtp.layer, m, {}, y, cache.layer(config_.num_hidden_layers),
                                cache.index_layer(config_.num_hidden_layers), batch);
  ForwardOutput out = head(chunks, m, y, mtp.shared_head_norm, mtp.head);
  if (!chosen.empty()) out.index_topk.push_back(std::move(chosen));
  return out;
}

// The last layer's FFN output y is still to be added to the residual stream h: the final norm does both.
ForwardOutput DeepseekV3::head(const std::vector<SequenceChunk>& chunks, const Tensor& h, const Tensor& y,
                               const Weight& norm, const Weight& lm_head) {
  const int64_t T = h.dim(0), D = h.dim(1);
  ForwardOutput out;
  out.hidden = backend_.alloc_uninitialized(backend_.activation_dtype(), {T, D});
  backend_.add_rms_norm(h, y, norm, float(config_.rms_norm_eps), out.hidden);
  int32_t row = 0;
  for (const auto& c : chunks) {
    const int32_t n = int32_t(c.tokens.size());
    if (c.all_logits)
      for (int32_t i = 0; i < n; ++i) out.logit_rows.push_back(row + i);
    else
      out.logit_rows.push_back(row + n - 1);
    row += n;
  }
  const int64_t R = int64_t(out.logit_rows.size());
  bool every_row = R == T;  // decode: logits for every token, no gather
  for (int64_t i = 0; every_row && i < R; ++i) every_row = out.logit_rows[size_t(i)] == i;
  Tensor selected = out.hidden;
  if (!every_row) {
    selected = backend_.alloc_uninitialized(backend_.activation_dtype(), {R, D});
    backend_.gather_rows(out.hidden, out.logit_rows, selected);
  }
  out.logits = backend_.alloc_uninitialized(DType::F32, {R, config_.vocab_size});
  backend_.matmul(selected, lm_head, out.logits);
  return out;
}

// h <- h + MLA(input_norm(h));  h <- h + FFN(post_attention_norm(h))
// Each residual add is fused into the norm that follows it: the previous layer's FFN output `pending` (empty
// for the first layer) is added by this layer's input norm, and this layer's FFN output is left in `y` for
// the next layer (or the final norm) to add.
Tensor DeepseekV3::decoder_layer(int64_t layer, const DecoderLayerWeights& w, const TensorView& h, const TensorView& pending,
                                 const TensorView& y, const TensorView& cache, const TensorView& index_cache,
                                 const DeviceBatch& batch) {
  const int64_t T = h.rows(), D = h.row_size();
  const DType act = backend_.activation_dtype();
  const float eps = float(config_.rms_norm_eps);
  Tensor x = backend_.alloc_uninitialized(act, {T, D});
  if (pending.data)
    backend_.add_rms_norm(h, pending, w.input_norm, eps, x);
  else
    backend_.rms_norm(h, w.input_norm, eps, x);
  Tensor o = backend_.alloc_uninitialized(act, {T, config_.num_attention_heads * config_.v_head_dim});
  Tensor chosen = attention(w.attn, x, cache, index_cache, batch, o);
  backend_.matmul(o, w.attn.o_proj, y);
  backend_.add_rms_norm(h, y, w.post_attention_norm, eps, x);
  if (w.is_moe)
    moe_ffn(layer, w, x, y, batch.plan->num_tokens() == batch.plan->num_seqs());
  else
    backend_.swiglu_mlp(x, w.dense, y);
  return chosen;
}

// Multi-head Latent Attention. The cache keeps c = kv_a_layernorm(kv_a[:r]) and rope(kv_a[r:]) per token;
// attention runs in latent space with W_UK absorbed into the query and W_UV applied to the output.
// V3.2: each query attends only to the index_topk positions the indexer chose (all of them while no more
// exist). out: the heads' outputs [T, H * dv]; the layer applies o_proj with the residual step after it.
Tensor DeepseekV3::attention(const AttentionWeights& w, const TensorView& x, const TensorView& cache,
                             const TensorView& index_cache, const DeviceBatch& batch, const TensorView& out) {
  const ModelConfig& c = config_;
  const int64_t T = x.rows(), H = c.num_attention_heads, dn = c.qk_nope_head_dim, dv = c.v_head_dim;
  const DType act = backend_.activation_dtype();
  Tensor q = backend_.alloc_uninitialized(act, {T, H, c.qk_head_dim()});
  const TensorView q2d = q.view().reshaped({T, H * c.qk_head_dim()});
  Tensor kv_a = backend_.alloc_uninitialized(act, {T, c.cache_width()});
  Tensor chosen;
  if (c.q_lora_rank > 0) {
    Tensor qa = backend_.alloc_uninitialized(act, {T, c.q_lora_rank});
    backend_.matmul_pair(x, w.q_a, qa, w.kv_a, kv_a);
    backend_.rms_norm(qa, w.q_a_norm, kLatentNormEps, qa);
    backend_.matmul(qa, w.q_b, q2d);
    if (w.indexer) chosen = sparse_indices(*w.indexer, x, qa, index_cache, batch);
  } else {
    backend_.matmul_pair(x, w.q_proj, q2d, w.kv_a, kv_a);
  }
  backend_.mla_rope_and_cache(q, dn, kv_a, w.kv_a_norm, kLatentNormEps, rope_, batch, cache);
  if (w.indexer)
    backend_.mla_sparse_attention(q, w.kv_b, cache, dn, dv, attn_scale_, batch, chosen, out);
  else
    backend_.mla_attention(q, w.kv_b, cache, dn, dv, attn_scale_, batch, out);
  return chosen;
}

// The lightning indexer (Hi heads of Di, top K), as HF's DeepseekV32Indexer computes it:
//   q[t, h] = rope(wq_b(q_latent[t]))[h]   k_j = rope(LayerNorm(wk(x_j)))   both roped on their first dr values,
//                                          half-split pairs (MLA's own rope is interleaved), same frequencies
//   score[t, j] = sum_h relu(q[t, h] . k_j / sqrt(Di)) * weights_proj(x[t])[h] / sqrt(Hi),   in F32
//   chosen[t] = top K of score[t, 0 .. pos_t], or all of them while pos_t < K (dense attention).
// DeepSeek's reference also rotates q and k by a Hadamard transform (orthogonal: the scores do not change) and
// scores in FP8; HF and the CPU do neither. The scores span the page table's width, which repeats from step to
// step, so nothing here depends on the inputs' values. x [T, D], q_latent [T, q_lora_rank]; returns I32 [T, K].
Tensor DeepseekV3::sparse_indices(const IndexerWeights& w, const TensorView& x, const TensorView& q_latent,
                                  const TensorView& index_cache, const DeviceBatch& batch) {
  const IndexerConfig& ix = *config_.indexer;
  const int64_t T = x.rows(), Hi = ix.n_heads, Di = ix.head_dim;
  const DType act = backend_.activation_dtype();
  MOE_CHECK(index_cache.data, "the cache has no index keys for this V3.2 model (built for another config?)");
  Tensor iq = backend_.alloc_uninitialized(act, {T, Hi, Di}), ik = backend_.alloc_uninitialized(act, {T, Di});
  Tensor weights = backend_.alloc_uninitialized(DType::F32, {T, Hi});
  backend_.matmul(q_latent, w.wq_b, iq.view().reshaped({T, Hi * Di}));
  backend_.matmul_pair(x, w.wk, ik, w.weights_proj, weights);
  backend_.dsa_write_index_cache(ik, w.k_norm, w.k_norm_bias, kIndexNormEps, rope_, batch, index_cache);
  backend_.dsa_rope_q(iq, rope_, batch);
  const int64_t L = int64_t(batch.plan->max_pages) * batch.plan->page_size;
  Tensor scores = backend_.alloc_uninitialized(DType::F32, {T, L});
  backend_.dsa_index_scores(iq, weights, index_cache, float(1.0 / std::sqrt(double(Di))),
                            float(1.0 / std::sqrt(double(Hi))), batch, scores);
  Tensor chosen = backend_.alloc_uninitialized(DType::I32, {T, ix.topk});
  backend_.dsa_topk(scores, batch, chosen);
  return chosen;
}

// DeepSeekMoE: the router (FP32) picks top-k routed experts per token; shared experts see every token.
// S shared experts may run as routed ones: expert parallelism's decode steps place the one shared expert
// among the routed ones (ExpertParallel::set_shared_as_routed), and without expert parallelism a backend may
// run S slices of the shared MLP in the routed experts' launches (Backend::shared_expert_slots). Then
// moe_route appends them to every token's choices (ids E .. E + S - 1, weight 1) and nothing runs apart; the
// sum is the same.
void DeepseekV3::moe_ffn(int64_t layer, const DecoderLayerWeights& w, const TensorView& x, const TensorView& out,
                         bool decode) {
  const int64_t T = x.rows(), E = config_.n_routed_experts, K = config_.num_experts_per_tok;
  int64_t S = 0;
  if (w.shared_experts)
    S = ep_ ? (ep_->shared_as_routed() && decode ? 1 : 0) : backend_.shared_expert_slots(w.experts, T);
  Tensor logits = backend_.alloc_uninitialized(DType::F32, {T, E});
  Tensor ids = backend_.alloc_uninitialized(DType::I32, {T, K + S});
  Tensor weights = backend_.alloc_uninitialized(DType::F32, {T, K + S});
  backend_.moe_router(x, w.router, w.correction_bias.view(), routing_, logits, ids, weights);
  if (load_) {  // the routed choices only
    std::vector<int32_t> host(size_t(T * (K + S)));
    backend_.copy_to_host(ids, host.data());
    for (int64_t t = 1; S > 0 && t < T; ++t) std::copy_n(host.begin() + t * (K + S), K, host.begin() + t * K);
    load_->add(layer, host.data(), T * K);
  }
  Tensor shared;
  // Expert parallelism's all-reduce mode adds the shared experts' output on one rank a layer (it is summed
  // across ranks anyway), so only that rank computes it.
  if (w.shared_experts && S == 0 && (!ep_ || ep_->computes_shared(layer))) {
    shared = backend_.alloc_uninitialized(backend_.activation_dtype(), {T, x.row_size()});
    backend_.swiglu_mlp(x, *w.shared_experts, shared);
  }
  if (ep_)
    ep_->moe(backend_, layer, w.experts, x, ids, weights, shared.view(), out);
  else
    backend_.moe_experts(x, w.experts, ids, weights, shared.view(), out);
}

}  // namespace moe
