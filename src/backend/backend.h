#pragma once
// The one interface every compute backend implements (CPU now, CUDA next). The model code calls these ops
// and never branches on the device. All tensors passed to an op live on the backend's device; activations
// are in activation_dtype(), the latent cache in cache_dtype(). Shapes are given per op as [rows, cols].
#include <memory>
#include <string>
#include <vector>

#include "backend/backend_options.h"
#include "core/error.h"
#include "core/tensor.h"

namespace moe {

// A projection weight as stored in the checkpoint: [N, K] (out_features x in_features), BF16/F16/F32,
// or F8_E4M3 with one F32 scale per block_n x block_k block in scale_inv [ceil(N/bn), ceil(K/bk)].
struct Weight {
  TensorView w;
  TensorView scale_inv;  // empty unless w is F8_E4M3
  int32_t block_n = 128, block_k = 128;

  int64_t rows() const { return w.shape[0]; }
  int64_t cols() const { return w.shape.rank > 1 ? w.shape[1] : 1; }
  bool is_fp8() const { return w.dtype == DType::F8_E4M3; }
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
  virtual DeviceBatch upload_batch(const BatchPlan& plan) = 0;
  virtual void synchronize() {}

  // Capture (CUDA graphs). Between begin_capture() and end_capture() the ops are recorded, not run, with
  // every host-side choice they make (grid sizes, code paths, scratch addresses) frozen; replay() runs the
  // recording again. Memory allocated during a capture is reserved for it and lives as long as the
  // returned object. Only work whose host-side choices repeat may be captured: decode steps, whose
  // changing inputs are rewritten in place with update_batch / copy_from_host (see DeepseekV3::forward).
  // (Defined inline: Backend keeps no key function, so every library that derives from it has its typeinfo.)
  virtual bool can_capture(int64_t tokens) const { return false; }  // a step of `tokens` new tokens
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
  // out [T, H * dv] = MLA attention of q [T, H, dn + dr] over the cache [pages, page_size, r + dr],
  // using kv_b [H * (dn + dv), r] (rows h*(dn+dv) .. +dn are W_UK[h], the next dv rows W_UV[h]).
  virtual void mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn,
                             int64_t dv, float scale, const DeviceBatch& batch, const TensorView& out) = 0;

  // MoE. Router logits [T, E] (F32) -> chosen experts I32 [T, k] and weights F32 [T, k].
  // bias (F32 [E] or empty) is added for choosing only.
  virtual void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
                         const TensorView& expert_ids, const TensorView& expert_weights) = 0;
  // out [T, D] = plus[t] + sum_j expert_weights[t, j] * Expert[expert_ids[t, j]](x[t]); x [T, D]; plus [T, D]
  // (the shared experts' output, so the sum needs no extra pass) or empty for 0.
  virtual void moe_experts(const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                           const TensorView& expert_weights, const TensorView& plus,
                           const TensorView& out) = 0;
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
