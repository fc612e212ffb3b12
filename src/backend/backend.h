#pragma once
// The one interface every compute backend implements (CPU now, CUDA next). The model code calls these ops
// and never branches on the device. All tensors passed to an op live on the backend's device; activations
// are in activation_dtype(), the latent cache in cache_dtype(). Shapes are given per op as [rows, cols].
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "backend/backend_options.h"
#include "backend/sampling.h"
#include "core/error.h"
#include "core/tensor.h"

namespace moe {

// A projection weight as stored in the checkpoint: [N, K] (out_features x in_features), BF16/F16/F32,
// or F8_E4M3 with one F32 scale per block_n x block_k block in scale_inv [ceil(N/bn), ceil(K/bk)].
// A weight [rows, cols] as the checkpoint stores it:
//   BF16/F16/F32: w itself.
//   F8_E4M3: w, and scale_inv F32 [ceil(rows / block_n), ceil(cols / block_k)]; value = w * scale_inv of its block.
//     pow2_scales: every scale is a power of two (config scale_fmt ue8m0); FP8 activation scales then are too.
//   INT4 (group_size > 0; compressed-tensors pack-quantized, W4A16): w is I32 [rows, cols / 8], 8 values per
//     word along the input dim, value k of a row in bits [4 (k % 8), 4 (k % 8) + 4) of word k / 8, stored with an
//     offset of 8 (q + 8 in [0, 15], q in [-8, 7]); scale_inv BF16/F32 [rows, cols / group_size];
//     value = q * scale_inv[row, k / group_size] (symmetric, no zero point).
struct Weight {
  TensorView w;
  TensorView scale_inv;  // FP8 block scales or INT4 group scales; empty otherwise
  int32_t block_n = 128, block_k = 128;
  int32_t group_size = 0;    // INT4 when > 0
  bool pow2_scales = false;  // FP8 scales are powers of two (ue8m0)

  int64_t rows() const { return w.shape[0]; }
  int64_t cols() const { return w.shape.rank > 1 ? w.shape[1] * (is_int4() ? 8 : 1) : 1; }
  bool is_fp8() const { return w.dtype == DType::F8_E4M3; }
  bool is_int4() const { return group_size > 0; }
  size_t nbytes() const { return w.nbytes() + (scale_inv.data ? scale_inv.nbytes() : 0); }
};

// SwiGLU MLP: down(silu(gate(x)) * up(x)). Used by dense layers, shared experts and each routed expert.
struct MlpWeights {
  Weight gate, up, down;
  size_t nbytes() const { return gate.nbytes() + up.nbytes() + down.nbytes(); }
};

// All routed experts of one MoE layer. `prepared` holds whatever the backend builds once at load time
// (device pointer tables for a grouped GEMM, say).
struct ExpertWeights {
  std::vector<MlpWeights> experts;
  std::shared_ptr<void> prepared;
};

enum class RoutingScore { Sigmoid, Softmax };
enum class RoutingMethod { NoauxTc, Greedy, GroupLimitedGreedy };

struct RoutingParams {
  RoutingScore score = RoutingScore::Sigmoid;
  RoutingMethod method = RoutingMethod::NoauxTc;
  int32_t num_experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  bool norm_topk_prob = true;
  float routed_scaling_factor = 1.0f;
};

// Rotary embedding with YaRN folded in: frequency i of dr/2 and a factor applied to cos and sin.
struct RopeParams {
  std::vector<double> inv_freq;  // [dr/2]
  double attn_factor = 1.0;      // mscale(s, mscale) / mscale(s, mscale_all_dim)
};

// One forward step's layout, planned on the host: T new tokens from S sequences, each token's position,
// the cache slot its latent is written to, and each sequence's pages. Token t of sequence s attends to
// the cache positions 0..positions[t] of that sequence (causal).
struct BatchPlan {
  std::vector<int32_t> positions;    // [T]
  std::vector<int32_t> token_seq;    // [T] index of the token's sequence
  std::vector<int32_t> slots;        // [T] page * page_size + offset
  std::vector<int32_t> seq_lens;     // [S] cache length after this step
  std::vector<int32_t> block_table;  // [S, max_pages] page ids, padded with -1
  int32_t max_pages = 0;
  int32_t page_size = 0;
  int64_t num_tokens() const { return int64_t(positions.size()); }
  int64_t num_seqs() const { return int64_t(seq_lens.size()); }
};

// The plan uploaded to the backend's device (the CPU backend aliases the host vectors).
struct DeviceBatch {
  const BatchPlan* plan = nullptr;
  TensorView positions, token_seq, slots, seq_lens, block_table;  // I32
  std::vector<Tensor> storage;
};

// The routed experts' rows in expert-contiguous order: what Backend::moe_dispatch returns and
// moe_grouped_mlp / moe_combine consume. Every tensor is allocated by the op, lives on the backend's device
// and is owned here (Tensor copies share their buffers): the caller keeps the struct as long as it wants (a
// backward pass reuses perm, offsets and rows).
//   M = T * k rows (one per (token, slot) assignment), E experts.
//   rows     [M, D] activation dtype: sorted row i is x[perm[i] / k].
//   perm     I32 [M]: the assignment index t * k + j of sorted row i.
//   offsets  I32 [E + 1]: rows of expert e are offsets[e] .. offsets[e+1]-1 (offsets[0] = 0, offsets[E] = M).
// Rows are grouped by expert in ascending expert order; the order of the rows within one expert's segment is
// the backend's (CPU: ascending assignment index; CUDA: the order of moe_plan's atomics, not reproducible
// from run to run). Results do not depend on it: each row's MLP is independent and moe_combine adds a
// token's k rows in slot order j (CUDA) or ascending expert order (CPU) whatever their positions.
// Expert parallelism: with the experts dealt to R ranks in contiguous blocks (rank q owns experts
// E*q/R .. E*(q+1)/R - 1), the rows bound for rank q are the single range offsets[E*q/R] .. offsets[E*(q+1)/R]
// of `rows`, so the all-to-all's send buffer is `rows` itself and its per-destination counts are differences
// of `offsets` at the rank boundaries (copied to the host once per layer). The receiving rank would run
// moe_grouped_mlp on what it received (re-sorted by local expert) and send the outputs back into the sorted
// positions before moe_combine. Not built here.
struct MoeDispatch {
  Tensor rows;
  Tensor perm;
  Tensor offsets;
  int64_t tokens = 0, top_k = 0;  // T and k: M = tokens * top_k
  std::shared_ptr<void> plan;     // backend-specific (CUDA: work items, per-expert counts, inverse perm)
  int64_t num_rows() const { return tokens * top_k; }
  int64_t num_experts() const { return offsets.empty() ? 0 : offsets.numel() - 1; }
};

// Device work recorded by Backend::end_capture (a CUDA graph) and run again by Backend::replay.
class CapturedWork {
 public:
  virtual ~CapturedWork() = default;
};

class Backend {
 public:
  virtual ~Backend() = default;
  virtual std::string name() const = 0;
  virtual Device device() const = 0;
  virtual DType activation_dtype() const = 0;
  virtual DType cache_dtype() const = 0;

  // Memory.
  virtual Tensor alloc(DType dtype, Shape shape) = 0;  // zero-filled
  // Contents unspecified: for outputs that the next op writes in full (saves the zero fill on a device).
  virtual Tensor alloc_uninitialized(DType dtype, Shape shape) { return alloc(dtype, shape); }
  virtual void copy_from_host(const void* src, const TensorView& dst) = 0;
  virtual void copy_to_host(const TensorView& src, void* dst) = 0;
  virtual void copy(const TensorView& src, const TensorView& dst) = 0;  // same device, same bytes
  virtual Weight upload_weight(const Weight& host) = 0;  // CPU: the memory-mapped weight itself
  virtual void prepare_experts(ExpertWeights& experts) {}
  // After prepare_experts, for a layer that holds all its routed experts: the shared experts (one SwiGLU MLP
  // of n_shared routed experts' width) may join the prepared experts as n_shared more, ids E and up (slices
  // of the MLP), so that a backend can run them in the routed experts' launches.
  virtual void prepare_shared_experts(ExpertWeights& experts, const MlpWeights& shared) {}
  // How many shared-expert slots moe_route should append to each token's choices at T tokens for moe_experts
  // to run the shared experts as routed ones (weight 1, no `plus`); 0: run them apart (swiglu_mlp) and pass
  // them as `plus`. Default 0; the CUDA backend fuses them at batch-1 decode, where each launch costs more
  // than its bytes.
  virtual int32_t shared_expert_slots(const ExpertWeights& experts, int64_t T) const { return 0; }
  virtual DeviceBatch upload_batch(const BatchPlan& plan) = 0;
  virtual void synchronize() {}

  // Capture (CUDA graphs). Between begin_capture() and end_capture() the ops are recorded, not run, with
  // every host-side choice they make (grid sizes, code paths, scratch addresses) frozen; replay() runs the
  // recording again. Memory allocated during a capture is reserved for it and lives as long as the
  // returned object. Only work whose host-side choices repeat may be captured: decode steps, whose
  // changing inputs are rewritten in place with update_batch / copy_from_host (see DeepseekV3::forward).
  // (Defined inline: Backend keeps no key function, so every library that derives from it has its typeinfo.)
  virtual bool can_capture(int64_t tokens) const { return false; }  // a step of `tokens` new tokens
  // The device queue the backend's work runs in order on (a cudaStream_t on CUDA; null on the CPU): a collective
  // that reads or writes the backend's tensors is enqueued there (dist::Communicator::set_stream).
  virtual void* native_stream() const { return nullptr; }
  virtual void begin_capture() { fail("the {} backend cannot capture work", name()); }
  virtual std::shared_ptr<CapturedWork> end_capture() { fail("the {} backend cannot capture work", name()); }
  virtual void abort_capture() {}  // after an exception between begin and end
  virtual void replay(const CapturedWork& work) { fail("the {} backend cannot replay work", name()); }
  // Writes `plan` into `batch`, an upload of a plan with the same sizes, in place.
  virtual void update_batch(const BatchPlan& plan, DeviceBatch& batch) {
    fail("the {} backend cannot update a batch", name());
  }

  // out[t] = table[ids[t]]. table [V, D] (BF16/F32), ids I32 [T], out [T, D].
  virtual void embedding(const Weight& table, const TensorView& ids, const TensorView& out) = 0;
  // out[t] = w * x[t] / sqrt(mean(x[t]^2) + eps). x, out [T, D]; w [D].
  virtual void rms_norm(const TensorView& x, const Weight& w, float eps, const TensorView& out) = 0;
  // out [T, N] = x [T, K] @ w [N, K]^T, FP32 accumulation; FP8 weights dequantised block by block.
  virtual void matmul(const TensorView& x, const Weight& w, const TensorView& out) = 0;
  // Two projections of the same input: out_a = x wa^T, out_b = x wb^T (a backend may run both in one pass
  // over x: MLA's query and latent projections).
  virtual void matmul_pair(const TensorView& x, const Weight& wa, const TensorView& out_a, const Weight& wb,
                           const TensorView& out_b) {
    matmul(x, wa, out_a);
    matmul(x, wb, out_b);
  }
  // out = a + b, elementwise, same shape (out may alias a).
  virtual void add(const TensorView& a, const TensorView& b, const TensorView& out) = 0;
  // The residual step: h += y, then out = rms_norm(h) with w (h, y, out [T, D]; out does not alias h or y).
  // Default: add, then rms_norm; a backend may fuse the two.
  virtual void add_rms_norm(const TensorView& h, const TensorView& y, const Weight& w, float eps,
                            const TensorView& out) {
    add(h, y, h);
    rms_norm(h, w, eps, out);
  }
  // out [T, Da+Db] = concat(a [T, Da], b [T, Db]) along columns.
  virtual void concat_cols(const TensorView& a, const TensorView& b, const TensorView& out) = 0;
  // out [R, D] = x[rows[r]] for x [T, D], rows I32 host vector.
  virtual void gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out) = 0;
  // out [T, D] = down(silu(gate(x)) * up(x)); x [T, H].
  virtual void swiglu_mlp(const TensorView& x, const MlpWeights& mlp, const TensorView& out) = 0;

  // MLA, absorbed form over the paged latent cache.
  // Latent write: kv_a [T, r + dr] -> cache[slot] = (rms_norm(kv_a[:r]) * norm_w, rope(kv_a[r:], pos)).
  virtual void mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps,
                               const RopeParams& rope, const DeviceBatch& batch, const TensorView& cache) = 0;
  // Rotary embedding on the last dr columns of each head: q [T, H, dn + dr], in place.
  virtual void mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope,
                          const DeviceBatch& batch) = 0;
  // Both of the above: the new tokens' latents into the cache and rope on q (a backend may do them in one
  // pass).
  virtual void mla_rope_and_cache(const TensorView& q, int64_t dn, const TensorView& kv_a,
                                  const Weight& kv_norm, float eps, const RopeParams& rope,
                                  const DeviceBatch& batch, const TensorView& cache) {
    mla_write_cache(kv_a, kv_norm, eps, rope, batch, cache);
    mla_rope_q(q, dn, rope, batch);
  }
  // MLA attention in three steps (the absorbed form, see MODEL.md); mla_attention below composes them.
  // kv_b [H * (dn + dv), r]: rows h*(dn+dv) .. +dn are W_UK[h] [dn, r], the next dv rows W_UV[h] [dv, r].
  //
  // qf [T, H, r + dr] in cache_dtype() = (W_UK[h]^T q[t, h, :dn], q[t, h, dn:]): the query in latent space,
  // with its rope part copied. q [T, H, dn + dr] activation dtype, rope already applied. The caller allocates qf.
  virtual void mla_absorb(const TensorView& q, const Weight& kv_b, int64_t dn, int64_t dv,
                          const TensorView& qf) = 0;
  // Attention of qf [T, H, W = r + dr] (cache_dtype) over the cache [pages, page_size, W] (cache_dtype), the
  // key of position j being its whole cache row c_j and the value its first r columns, causal over the
  // positions 0 .. batch.positions[t] of token t's sequence:
  //   s_j = scale * (qf[t, h] . c_j),  o_lat[t, h] = sum_j softmax(s)_j c_j[:r],  lse[t, h] = log sum_j exp(s_j)
  // o_lat F32 [T, H, r] and lse F32 [T, H] (natural log; the softmax's normaliser, which a backward pass
  // needs) are allocated by the caller; lse may be empty (not written). r is o_lat's last dimension.
  virtual void mla_latent_attention(const TensorView& qf, const TensorView& cache, float scale,
                                    const DeviceBatch& batch, const TensorView& o_lat,
                                    const TensorView& lse) = 0;
  // out [T, H * dv] (activation dtype) = W_UV[h] o_lat[t, h] per head; o_lat F32 [T, H, r].
  virtual void mla_project_v(const TensorView& o_lat, const Weight& kv_b, int64_t dn, int64_t dv,
                             const TensorView& out) = 0;
  // out [T, H * dv] = MLA attention of q [T, H, dn + dr] over the cache [pages, page_size, r + dr].
  // Default: mla_absorb -> mla_latent_attention (no lse) -> mla_project_v on temporaries from
  // alloc_uninitialized; a backend may fuse or choose another form (the CUDA backend's expanded prefill).
  virtual void mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn,
                             int64_t dv, float scale, const DeviceBatch& batch, const TensorView& out) {
    const int64_t T = q.rows(), H = q.shape[1], dr = q.shape[2] - dn;
    const int64_t width = cache.shape[cache.shape.rank - 1], r = width - dr;
    Tensor qf = alloc_uninitialized(cache_dtype(), {T, H, width});
    Tensor o_lat = alloc_uninitialized(DType::F32, {T, H, r});
    mla_absorb(q, kv_b, dn, dv, qf);
    mla_latent_attention(qf, cache, scale, batch, o_lat, {});
    mla_project_v(o_lat, kv_b, dn, dv, out);
  }

  // DeepSeek Sparse Attention (V3.2's lightning indexer; MODEL.md's maths as HF computes it): Hi index heads of
  // Di values, one index key per cached token, and MLA over the K = index_topk positions each query scores
  // highest. A backend without these ops keeps the defaults below (they throw) and has_sparse_attention() false;
  // DeepseekV3 refuses a V3.2 model on such a backend when it is built.
  virtual bool has_sparse_attention() const { return false; }
  // Index-key write: k [T, Di] (activation dtype, wk(x)) -> index_cache[slot] = rope(LayerNorm(k) * w + b), the
  // LayerNorm with mean and eps, w and b [Di]; rope on the first dr = 2 * rope.inv_freq.size() columns in the
  // half-split layout (pairs (v[i], v[i + dr/2])), unlike MLA's interleaved pairs; the rest unrotated.
  // index_cache [pages, page_size, Di] (cache_dtype()), slots from the batch as for the latent cache.
  virtual void dsa_write_index_cache(const TensorView& k, const Weight& norm_w, const Weight& norm_b, float eps,
                                     const RopeParams& rope, const DeviceBatch& batch, const TensorView& index_cache) {
    no_sparse_attention("dsa_write_index_cache");
  }
  // The index queries' rope: q [T, Hi, Di] (activation dtype), each head's first dr columns, half-split, in place.
  virtual void dsa_rope_q(const TensorView& q, const RopeParams& rope, const DeviceBatch& batch) {
    no_sparse_attention("dsa_rope_q");
  }
  // Index scores F32 [T, L] (allocated by the caller, L >= every sequence's length: the page table's width):
  //   scores[t, j] = sum_h relu(scale * q[t, h] . k_j) * (weights[t, h] * weight_scale)   for j <= positions[t]
  //   scores[t, j] = -inf                                                                   for j >  positions[t]
  // k_j the index-cache row of position j of token t's sequence; q [T, Hi, Di] roped; weights F32 [T, Hi]
  // (weights_proj(x)). Accumulated in F32 like the reference's kernel (HF scores in float32 whatever the model's
  // dtype).
  virtual void dsa_index_scores(const TensorView& q, const TensorView& weights, const TensorView& index_cache,
                                float scale, float weight_scale, const DeviceBatch& batch, const TensorView& scores) {
    no_sparse_attention("dsa_index_scores");
  }
  // The positions each token attends: indices I32 [T, K] = the K positions j <= positions[t] of highest
  // scores[t, j] (equal scores: the lower position first), or every position 0 .. positions[t] while there are no
  // more than K (dense attention, as the reference); in ascending order, padded with -1. scores F32 [T, L].
  virtual void dsa_topk(const TensorView& scores, const DeviceBatch& batch, const TensorView& indices) {
    no_sparse_attention("dsa_topk");
  }
  // mla_latent_attention over only the positions indices[t] (I32 [T, K] from dsa_topk: ascending, -1 padded,
  // each <= positions[t]) instead of 0 .. positions[t]; with indices 0 .. positions[t] it is the dense op's sum in
  // the dense op's order. Same qf, cache, o_lat and lse as mla_latent_attention.
  virtual void mla_sparse_latent_attention(const TensorView& qf, const TensorView& cache, float scale,
                                           const DeviceBatch& batch, const TensorView& indices,
                                           const TensorView& o_lat, const TensorView& lse) {
    no_sparse_attention("mla_sparse_latent_attention");
  }
  // mla_attention restricted to indices [T, K]: mla_absorb -> mla_sparse_latent_attention -> mla_project_v.
  virtual void mla_sparse_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn,
                                    int64_t dv, float scale, const DeviceBatch& batch, const TensorView& indices,
                                    const TensorView& out) {
    const int64_t T = q.rows(), H = q.shape[1], dr = q.shape[2] - dn;
    const int64_t width = cache.shape[cache.shape.rank - 1], r = width - dr;
    Tensor qf = alloc_uninitialized(cache_dtype(), {T, H, width});
    Tensor o_lat = alloc_uninitialized(DType::F32, {T, H, r});
    mla_absorb(q, kv_b, dn, dv, qf);
    mla_sparse_latent_attention(qf, cache, scale, batch, indices, o_lat, {});
    mla_project_v(o_lat, kv_b, dn, dv, out);
  }

  // Sampling (backend/sampling.h): one token per SampleRow from its row of logits F32 [R, V], all rows in one
  // pass on the device, only ids and requested logprobs back to the host (out[i] for rows[i]). The logits are
  // edited in place (mask, logit_bias, penalties, cut-offs). For the same row and u every backend chooses the
  // token sample_row_host() chooses, except where u * total falls within float rounding of a boundary between
  // two candidates' cumulative weights (see sample.cu). Default: the rows copied to the host and
  // sample_row_host (what the CPU backend uses); ends with the results on the host (a synchronisation).
  virtual void sample(const TensorView& logits, std::span<const SampleRow> rows, std::vector<SampleResult>& out) {
    MOE_CHECK(logits.dtype == DType::F32 && logits.shape.rank == 2, "sample: logits must be F32 [rows, vocab]");
    const int64_t V = logits.shape[1];
    std::vector<float> copy;
    float* host = logits.as<float>();
    if (!logits.device.is_host()) {
      copy.resize(size_t(logits.numel()));
      copy_to_host(logits, copy.data());
      host = copy.data();
    }
    out.resize(rows.size());
    for (size_t i = 0; i < rows.size(); ++i) {
      MOE_CHECK(rows[i].row >= 0 && rows[i].row < logits.shape[0] && rows[i].params, "sample: bad row {}", i);
      out[i] = sample_row_host(std::span<float>(host + rows[i].row * V, size_t(V)), rows[i]);
    }
  }

  // Greedy tokens of every row, on the device and capturable (no host round trip): ids I32 [R] (any shape of R
  // elements) = argmax(logits [R, V] F32) over the columns [0, limit) (limit <= 0 or > V: all), ties to the lower
  // id, NaNs never chosen (0 if a row is all NaN): sampling.h's argmax. Speculative decoding's fused step
  // (StepExecutor::forward_speculative) verifies drafts and drafts the next ones with it inside the step's graph.
  // Default: for host memory (the CPU backend).
  virtual void argmax_rows(const TensorView& logits, int64_t limit, const TensorView& ids) {
    MOE_CHECK(logits.dtype == DType::F32 && logits.shape.rank == 2, "argmax_rows: logits must be F32 [rows, vocab]");
    MOE_CHECK(ids.dtype == DType::I32 && ids.numel() == logits.shape[0], "argmax_rows: ids must be I32 with {} elements",
              logits.shape[0]);
    MOE_CHECK(logits.device.is_host() && ids.device.is_host(), "the {} backend has no argmax_rows", name());
    const int64_t R = logits.shape[0], V = logits.shape[1], n = limit > 0 && limit < V ? limit : V;
    const float* x = logits.as<const float>();
    int32_t* out = ids.as<int32_t>();
    for (int64_t r = 0; r < R; ++r) out[r] = argmax(std::span<const float>(x + r * V, size_t(n)));
  }

  // Speculative decoding's chained drafts (StepExecutor::forward_speculative with N > 1 drafts a sequence),
  // on the device and capturable. A verification step has S sequences of R = N + 1 rows each: row s * R + j
  // holds sequence s's last token (j = 0) or its draft j. kept_rows: rows I32 [S] = s * R + k_s, the row of
  // sequence s's last kept token, where k_s counts the leading drafts the main model confirmed (tokens[s * R
  // + j + 1] == verified[s * R + j] for every j < k_s; greedy verification). tokens, verified I32 [S * R]:
  // the step's input ids and the main model's token after each row.
  virtual void kept_rows(const TensorView& tokens, const TensorView& verified, const TensorView& rows) = 0;
  // chain_batch: `to`, a batch of one token per sequence over `from`'s S sequences (token_seq 0 .. S-1,
  // from's page table), gets token s at position from.positions[rows[s]] + advance: that position, its slot
  // and the cache length position + 1. A position past the sequence's last page (its page table holds no page
  // there: the sequence ends in this step, see Scheduler's reservation) becomes the last position of that
  // page instead, which no token of the sequence uses. (The CPU backend's batches alias their plans: there
  // the plan changes too.)
  virtual void chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance,
                           const DeviceBatch& to) = 0;
  // out [R, C] = x[rows[r]], x [T, C] of 4-byte elements (F32, I32; C = 1 for a vector), the row ids on the
  // device (I32 [R], each in 0 .. T-1).
  virtual void index_rows(const TensorView& x, const TensorView& rows, const TensorView& out) = 0;

  // MoE. Router logits [T, E] (F32) -> chosen experts I32 [T, k] and weights F32 [T, k].
  // bias (F32 [E] or empty) is added for choosing only. With [T, k + S] outputs, columns k .. k + S - 1 of
  // every row name the S shared experts as routed ones: ids E .. E + S - 1, weight 1 (shared_expert_slots).
  virtual void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
                         const TensorView& expert_ids, const TensorView& expert_weights) = 0;
  // The router and the routing: logits [T, E] F32 = x router^T, then moe_route. Default: the two ops; a
  // backend may run them as one launch (CUDA at one token under --cuda-moe-decode-fusion, the same logits and
  // choices).
  virtual void moe_router(const TensorView& x, const Weight& router, const TensorView& bias,
                          const RoutingParams& params, const TensorView& logits, const TensorView& expert_ids,
                          const TensorView& expert_weights) {
    matmul(x, router, logits);
    moe_route(logits, bias, params, expert_ids, expert_weights);
  }
  //
  // Routed experts in three steps (moe_experts below composes them); see MoeDispatch for the layout.
  // A choice with expert id -1 and weight 0 is no expert: it adds nothing to out, and nothing computes it
  // (expert parallelism's all-reduce mode names the other ranks' experts so: moe_local_choices).
  // Permutes x [T, D] (activation dtype) into expert-contiguous rows, one per assignment of expert_ids
  // (I32 [T, k], every id in -1 .. num_experts-1; the -1 assignments come after offsets[num_experts], in rows
  // that moe_grouped_mlp leaves alone). The returned tensors are new allocations owned by the result.
  virtual MoeDispatch moe_dispatch(const TensorView& x, const TensorView& expert_ids, int32_t num_experts) = 0;
  // y [M, D] (activation dtype, allocated by the caller, sorted order like d.rows) = the SwiGLU MLP of each
  // row's expert: y[i] = Expert[e](d.rows[i]) for offsets[e] <= i < offsets[e+1]. experts has E experts,
  // prepared with prepare_experts.
  virtual void moe_grouped_mlp(const MoeDispatch& d, const ExpertWeights& experts, const TensorView& y) = 0;
  // out [T, D] = plus[t] + sum_j expert_weights[t, j] * y[row of assignment t*k+j]: the weighted un-permute
  // (terms of weight 0 skipped: an id -1's row of y is never written).
  // y [M, D] from moe_grouped_mlp; expert_weights F32 [T, k]; plus [T, D] (the shared experts' output) or
  // empty for 0; out [T, D] may alias plus.
  virtual void moe_combine(const TensorView& y, const MoeDispatch& d, const TensorView& expert_weights,
                           const TensorView& plus, const TensorView& out) = 0;
  // out [T, D] = plus[t] + sum_j expert_weights[t, j] * Expert[expert_ids[t, j]](x[t]); x [T, D]; plus [T, D]
  // (the shared experts' output, so the sum needs no extra pass) or empty for 0.
  // Default: moe_dispatch -> moe_grouped_mlp -> moe_combine; a backend may fuse them (CUDA does).
  // Ids -1 with weight 0: no expert (above).
  virtual void moe_experts(const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                           const TensorView& expert_weights, const TensorView& plus, const TensorView& out) {
    const MoeDispatch d = moe_dispatch(x, expert_ids, int32_t(experts.experts.size()));
    Tensor y = alloc_uninitialized(activation_dtype(), {d.num_rows(), x.row_size()});
    moe_grouped_mlp(d, experts, y);
    moe_combine(y, d, expert_weights, plus, out);
  }
  // Expert parallelism's all-reduce mode (ExpertParallel::set_all_reduce): the choices this rank computes.
  // local_ids[t, j] = slots[expert_ids[t, j], t mod L], the expert's local slot on this rank for that token or
  // -1 where another rank computes it, and local_weights[t, j] = expert_weights[t, j] where the slot is >= 0,
  // else 0. expert_ids, local_ids I32 [T, k]; expert_weights, local_weights F32 [T, k]; slots I32 [E, L], L a
  // multiple of every expert's copy count (copy t mod copies takes token t, as in the all-to-all mode).
  // An id -1 (no expert) stays -1. Default: for host memory (the CPU backend).
  virtual void moe_local_choices(const TensorView& expert_ids, const TensorView& expert_weights,
                                 const TensorView& slots, const TensorView& local_ids,
                                 const TensorView& local_weights) {
    check_local_choices(expert_ids, expert_weights, slots, local_ids, local_weights);
    MOE_CHECK(expert_ids.device.is_host() && slots.device.is_host() && local_ids.device.is_host(),
              "the {} backend has no moe_local_choices", name());
    const int64_t K = expert_ids.row_size(), n = expert_ids.numel(), E = slots.shape[0], L = slots.shape[1];
    const int32_t* ids = expert_ids.as<const int32_t>();
    const int32_t* table = slots.as<const int32_t>();
    const float* w = expert_weights.as<const float>();
    int32_t* lid = local_ids.as<int32_t>();
    float* lw = local_weights.as<float>();
    for (int64_t a = 0; a < n; ++a) {
      MOE_CHECK(ids[a] >= -1 && ids[a] < E, "moe_local_choices: expert id {} out of range (E {})", ids[a], E);
      const int32_t slot = ids[a] < 0 ? -1 : table[ids[a] * L + (a / K) % L];
      lid[a] = slot;
      lw[a] = slot >= 0 ? w[a] : 0.0f;
    }
  }

 protected:
  // moe_local_choices' dtypes and shapes (every backend's override checks them the same way).
  static void check_local_choices(const TensorView& expert_ids, const TensorView& expert_weights,
                                  const TensorView& slots, const TensorView& local_ids,
                                  const TensorView& local_weights) {
    MOE_CHECK(expert_ids.dtype == DType::I32 && local_ids.dtype == DType::I32 && slots.dtype == DType::I32 &&
                  expert_weights.dtype == DType::F32 && local_weights.dtype == DType::F32,
              "moe_local_choices: ids and slots are I32, weights F32");
    MOE_CHECK(expert_ids.numel() == expert_weights.numel() && expert_ids.numel() == local_ids.numel() &&
                  expert_ids.numel() == local_weights.numel() && slots.shape.rank == 2,
              "moe_local_choices: ids {}, weights {}, out {} and {}, slots {}", expert_ids.shape.str(),
              expert_weights.shape.str(), local_ids.shape.str(), local_weights.shape.str(),
              slots.shape.str());
  }
  // The chained-draft ops' dtypes and shapes (every backend checks them the same way). Return S.
  static int64_t check_kept_rows(const TensorView& tokens, const TensorView& verified,
                                 const TensorView& rows) {
    MOE_CHECK(tokens.dtype == DType::I32 && verified.dtype == DType::I32 && rows.dtype == DType::I32,
              "kept_rows: tokens, verified and rows are I32");
    const int64_t S = rows.numel();
    MOE_CHECK(S > 0 && tokens.numel() == verified.numel() && tokens.numel() % S == 0,
              "kept_rows: {} tokens, {} verified, {} sequences", tokens.numel(), verified.numel(), S);
    return S;
  }
  static int64_t check_chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance,
                                   const DeviceBatch& to) {
    const int64_t S = rows.numel();
    MOE_CHECK(from.plan && to.plan && rows.dtype == DType::I32 && advance >= 0, "chain_batch: bad arguments");
    MOE_CHECK(to.plan->num_tokens() == S && to.plan->num_seqs() == S && from.plan->num_seqs() == S &&
                  to.plan->max_pages == from.plan->max_pages && to.plan->page_size == from.plan->page_size,
              "chain_batch: {} rows, a batch of {} sequences into {} tokens of {}", S, from.plan->num_seqs(),
              to.plan->num_tokens(), to.plan->num_seqs());
    return S;
  }
  static void check_index_rows(const TensorView& x, const TensorView& rows, const TensorView& out) {
    MOE_CHECK(dtype_size(x.dtype) == 4 && out.dtype == x.dtype && rows.dtype == DType::I32,
              "index_rows: 4-byte rows and I32 ids");
    MOE_CHECK(out.rows() == rows.numel() && out.row_size() == x.row_size(),
              "index_rows: {} rows of {} into {}", rows.numel(), x.shape.str(), out.shape.str());
  }
  [[noreturn]] void no_sparse_attention(const char* op) const {
    fail("DeepSeek-V3.2 sparse attention ({}) is not implemented on the {} backend yet (the CPU backend has it)", op,
         name());
  }
};

std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options = {});
// A CUDA backend on device `device_index` with its own context (stream, handles, memory pool, kernel
// attributes): several may live in one process, on different devices or the same one. Throws moe::Error
// without CUDA, without that device, or on a GPU that is not Hopper.
std::unique_ptr<Backend> make_cuda_backend(int device_index = 0, const CudaOptions& options = {});
bool cuda_backend_available();  // built with CUDA and a device present
int cuda_device_count();        // 0 without CUDA
std::unique_ptr<Backend> make_backend(const BackendOptions& options);
std::unique_ptr<Backend> make_backend(const std::string& device);  // "cpu", "cuda" or "cuda:N", default options

}  // namespace moe
