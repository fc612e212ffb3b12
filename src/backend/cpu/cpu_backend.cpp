// The CPU backend: host memory, memory-mapped weights used in place, F32 activations and latent cache,
// ops dispatched to one file each (cpu_ops.h). Threads come from the process-wide pool.
#include <cstring>

#include "backend/backend.h"
#include "backend/cpu/cpu_ops.h"
#include "core/error.h"

namespace moe {

namespace {

class CpuBackend final : public Backend {
 public:
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
    cpu::rms_norm(x, w, eps, out);
  }
  void matmul(const TensorView& x, const Weight& w, const TensorView& out) override { cpu::matmul(x, w, out); }
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override { cpu::add(a, b, out); }
  void concat_cols(const TensorView& a, const TensorView& b, const TensorView& out) override {
    cpu::concat_cols(a, b, out);
  }
  void gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out) override {
    cpu::gather_rows(x, rows, out);
  }
  void swiglu_mlp(const TensorView& x, const MlpWeights& mlp, const TensorView& out) override {
    cpu::swiglu_mlp(x, mlp, out);
  }
  void mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps, const RopeParams& rope,
                       const DeviceBatch& batch, const TensorView& cache) override {
    cpu::mla_write_cache(kv_a, kv_norm, eps, rope, *batch.plan, cache);
  }
  void mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope, const DeviceBatch& batch) override {
    cpu::mla_rope_q(q, dn, rope, *batch.plan);
  }
  void mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn, int64_t dv,
                     float scale, const DeviceBatch& batch, const TensorView& out) override {
    cpu::mla_attention(q, kv_b, cache, dn, dv, scale, *batch.plan, out);
  }
  void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
                 const TensorView& expert_ids, const TensorView& expert_weights) override {
    cpu::moe_route(logits, bias, params, expert_ids, expert_weights);
  }
  void moe_experts(const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                   const TensorView& expert_weights, const TensorView& plus, const TensorView& out) override {
    cpu::moe_experts(x, experts, expert_ids, expert_weights, plus, out);
  }
};

}  // namespace

std::unique_ptr<Backend> make_cpu_backend(const CpuOptions& options) { return std::make_unique<CpuBackend>(); }

}  // namespace moe
