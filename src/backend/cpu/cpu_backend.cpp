// The CPU backend: host memory, memory-mapped weights used in place, F32 activations and latent cache,
// ops dispatched to one file each (cpu_ops.h). Threads come from the backend's own pool (CpuOptions::threads).
#include <algorithm>
#include <cstring>
#include <thread>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace moe {

namespace {

class CpuBackend final : public Backend {
 public:
  explicit CpuBackend(const CpuOptions& options)
      : pool_(options.threads > 0 ? options.threads : int(std::max(1u, std::thread::hardware_concurrency()))) {
    MOE_CHECK(options.threads >= 0, "CPU options: threads must be >= 0, not {}", options.threads);
  }
  std::string name() const override { return "cpu"; }
  Device device() const override { return Device::host(); }
  DType activation_dtype() const override { return DType::F32; }
  DType cache_dtype() const override { return DType::F32; }

  Tensor alloc(DType dtype, Shape shape) override { return Tensor::host(dtype, shape); }
  void copy_from_host(const void* src, const TensorView& dst) override { std::memcpy(dst.data, src, dst.nbytes()); }
  void copy_to_host(const TensorView& src, void* dst) override { std::memcpy(dst, src.data, src.nbytes()); }
  void copy(const TensorView& src, const TensorView& dst) override {
    MOE_CHECK(src.nbytes() == dst.nbytes(), "copy: {} bytes into {}", src.nbytes(), dst.nbytes());
    std::memmove(dst.data, src.data, src.nbytes());
  }
  Weight upload_weight(const Weight& host) override { return host; }
  DeviceBatch upload_batch(const BatchPlan& plan) override {
    DeviceBatch b;
    b.plan = &plan;
    auto view = [](const std::vector<int32_t>& v) {
      TensorView t;
      t.data = const_cast<int32_t*>(v.data());
      t.dtype = DType::I32;
      t.shape = Shape{int64_t(v.size())};
      return t;
    };
    b.positions = view(plan.positions);
    b.token_seq = view(plan.token_seq);
    b.slots = view(plan.slots);
    b.seq_lens = view(plan.seq_lens);
    b.block_table = view(plan.block_table);
    return b;
  }

  void embedding(const Weight& table, const TensorView& ids, const TensorView& out) override {
    cpu::embedding(table, ids, out);
  }
  void rms_norm(const TensorView& x, const Weight& w, float eps, const TensorView& out) override {
    cpu::rms_norm(pool_, x, w, eps, out);
  }
  void matmul(const TensorView& x, const Weight& w, const TensorView& out) override { cpu::matmul(pool_, x, w, out); }
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override { cpu::add(a, b, out); }
  void concat_cols(const TensorView& a, const TensorView& b, const TensorView& out) override {
    cpu::concat_cols(a, b, out);
  }
  void gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out) override {
    cpu::gather_rows(x, rows, out);
  }
  void index_rows(const TensorView& x, const TensorView& rows, const TensorView& out) override {
    check_index_rows(x, rows, out);
    cpu::index_rows(x, rows, out);
  }
  void kept_rows(const TensorView& tokens, const TensorView& verified, const TensorView& rows) override {
    check_kept_rows(tokens, verified, rows);
    cpu::kept_rows(tokens, verified, rows);
  }
  void chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance,
                   const DeviceBatch& to) override {
    check_chain_batch(from, rows, advance, to);
    cpu::chain_batch(from, rows, advance, to);
  }
  void swiglu_mlp(const TensorView& x, const MlpWeights& mlp, const TensorView& out) override {
    cpu::swiglu_mlp(pool_, x, mlp, out);
  }
  void mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps, const RopeParams& rope,
                       const DeviceBatch& batch, const TensorView& cache) override {
    cpu::mla_write_cache(kv_a, kv_norm, eps, rope, *batch.plan, cache);
  }
  void mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope, const DeviceBatch& batch) override {
    cpu::mla_rope_q(q, dn, rope, *batch.plan);
  }
  void mla_absorb(const TensorView& q, const Weight& kv_b, int64_t dn, int64_t dv, const TensorView& qf) override {
    cpu::mla_absorb(pool_, q, kv_b, dn, dv, qf);
  }
  void mla_latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                            const TensorView& o_lat, const TensorView& lse) override {
    cpu::mla_latent_attention(pool_, qf, cache, scale, *batch.plan, o_lat, lse);
  }
  void mla_project_v(const TensorView& o_lat, const Weight& kv_b, int64_t dn, int64_t dv,
                     const TensorView& out) override {
    cpu::mla_project_v(pool_, o_lat, kv_b, dn, dv, out);
  }
  // mla_attention: the Backend's composition of the three.
  bool has_sparse_attention() const override { return true; }
  void dsa_write_index_cache(const TensorView& k, const Weight& norm_w, const Weight& norm_b, float eps,
                             const RopeParams& rope, const DeviceBatch& batch, const TensorView& index_cache) override {
    cpu::dsa_write_index_cache(k, norm_w, norm_b, eps, rope, *batch.plan, index_cache);
  }
  void dsa_rope_q(const TensorView& q, const RopeParams& rope, const DeviceBatch& batch) override {
    cpu::dsa_rope_q(q, rope, *batch.plan);
  }
  void dsa_index_scores(const TensorView& q, const TensorView& weights, const TensorView& index_cache, float scale,
                        float weight_scale, const DeviceBatch& batch, const TensorView& scores) override {
    cpu::dsa_index_scores(pool_, q, weights, index_cache, scale, weight_scale, *batch.plan, scores);
  }
  void dsa_topk(const TensorView& scores, const DeviceBatch& batch, const TensorView& indices) override {
    cpu::dsa_topk(pool_, scores, *batch.plan, indices);
  }
  void mla_sparse_latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                                   const TensorView& indices, const TensorView& o_lat, const TensorView& lse) override {
    cpu::mla_sparse_latent_attention(pool_, qf, cache, scale, *batch.plan, indices, o_lat, lse);
  }
  // mla_sparse_attention: the Backend's composition.
  void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
                 const TensorView& expert_ids, const TensorView& expert_weights) override {
    cpu::moe_route(logits, bias, params, expert_ids, expert_weights);
  }
  MoeDispatch moe_dispatch(const TensorView& x, const TensorView& expert_ids, int32_t num_experts) override {
    return cpu::moe_dispatch(pool_, x, expert_ids, num_experts);
  }
  void moe_grouped_mlp(const MoeDispatch& d, const ExpertWeights& experts, const TensorView& y) override {
    cpu::moe_grouped_mlp(pool_, d, experts, y);
  }
  void moe_combine(const TensorView& y, const MoeDispatch& d, const TensorView& expert_weights, const TensorView& plus,
                   const TensorView& out) override {
    cpu::moe_combine(y, d, expert_weights, plus, out);
  }
  // moe_experts: the Backend's composition of the three.

 private:
  ThreadPool pool_;
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options) { return std::make_unique<CpuBackend>(options); }

}  // namespace moe
