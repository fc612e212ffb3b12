#pragma once
// Test-only Backend that captures and replays work the way the CUDA backend does, on the CPU: between
// begin_capture() and end_capture() the ops are recorded (not run), with their arguments as given; replay() runs
// the recording again. Memory allocated while capturing stays reserved for the recording (as a CUDA graph's
// pool does); uploads, downloads and host synchronisation are refused while capturing (a CUDA graph cannot hold
// them either), and so is every op of more than `refuse_tokens` tokens when set (a path that needs the host
// mid-step). upload_batch keeps its own copy of the plan, rewritten by update_batch. So the step executor's
// capture, replay and refusal logic runs in CI, where there is no GPU.
#include <algorithm>
#include <functional>
#include <memory>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"

namespace moe::test {

class ReplayBackend final : public Backend {
 public:
  explicit ReplayBackend(Backend& in) : in_(in) {}
  int64_t refuse_tokens = -1;  // ops over this many rows refuse to be captured (-1: none)
  int64_t recorded_ops = 0;    // ops recorded by all captures
  bool sparse_attention = true;  // false: claims no DSA ops (as a backend without them), whatever `in` has

  std::string name() const override { return "replay(" + in_.name() + ")"; }
  Device device() const override { return in_.device(); }
  DType activation_dtype() const override { return in_.activation_dtype(); }
  DType cache_dtype() const override { return in_.cache_dtype(); }
  Tensor alloc(DType dtype, Shape shape) override { return keep(in_.alloc(dtype, shape)); }
  Tensor alloc_uninitialized(DType dtype, Shape shape) override { return keep(in_.alloc_uninitialized(dtype, shape)); }
  void copy_from_host(const void* src, const TensorView& dst) override {
    refuse_while_capturing("copy_from_host");
    in_.copy_from_host(src, dst);
  }
  void copy_to_host(const TensorView& src, void* dst) override {
    refuse_while_capturing("copy_to_host");
    in_.copy_to_host(src, dst);
  }
  void copy(const TensorView& src, const TensorView& dst) override {
    run([=, this] { in_.copy(src, dst); });
  }
  Weight upload_weight(const Weight& host) override { return in_.upload_weight(host); }
  void prepare_experts(ExpertWeights& experts) override { in_.prepare_experts(experts); }
  void prepare_shared_experts(ExpertWeights& experts, const MlpWeights& shared) override {
    in_.prepare_shared_experts(experts, shared);
  }
  int32_t shared_expert_slots(const ExpertWeights& experts, int64_t T) const override {
    return in_.shared_expert_slots(experts, T);
  }
  void synchronize() override { refuse_while_capturing("synchronize"); }

  // The plan's five arrays in one block of this backend's memory, as the CUDA backend keeps them.
  DeviceBatch upload_batch(const BatchPlan& plan) override {
    refuse_while_capturing("upload_batch");
    DeviceBatch b;
    b.plan = &plan;
    const std::vector<int32_t>* parts[5] = {&plan.positions, &plan.token_seq, &plan.slots, &plan.seq_lens,
                                            &plan.block_table};
    TensorView* views[5] = {&b.positions, &b.token_seq, &b.slots, &b.seq_lens, &b.block_table};
    int64_t total = 0;
    for (auto* p : parts) total += int64_t(p->size());
    Tensor all = Tensor::host(DType::I32, {std::max<int64_t>(total, 1)});
    int64_t off = 0;
    for (int i = 0; i < 5; ++i) {
      TensorView v;
      v.data = all.as<int32_t>() + off;
      v.dtype = DType::I32;
      v.shape = Shape{int64_t(parts[i]->size())};
      *views[i] = v;
      off += int64_t(parts[i]->size());
    }
    b.storage.push_back(all);
    update_batch(plan, b);
    return b;
  }
  void update_batch(const BatchPlan& plan, DeviceBatch& batch) override {
    refuse_while_capturing("update_batch");
    const std::vector<int32_t>* parts[5] = {&plan.positions, &plan.token_seq, &plan.slots, &plan.seq_lens,
                                            &plan.block_table};
    const TensorView* views[5] = {&batch.positions, &batch.token_seq, &batch.slots, &batch.seq_lens,
                                  &batch.block_table};
    for (int i = 0; i < 5; ++i) {
      MOE_CHECK(int64_t(parts[i]->size()) == views[i]->numel(), "update_batch: the plan's sizes differ");
      std::copy(parts[i]->begin(), parts[i]->end(), views[i]->as<int32_t>());
    }
    batch.plan = &plan;
  }

  bool can_capture(int64_t) const override { return true; }
  void begin_capture() override {
    MOE_CHECK(!recording_, "begin_capture: a capture is already under way");
    recording_ = std::make_shared<Recording>();
  }
  std::shared_ptr<CapturedWork> end_capture() override {
    MOE_CHECK(recording_ != nullptr, "end_capture without begin_capture");
    return std::move(recording_);
  }
  void abort_capture() override { recording_.reset(); }
  void replay(const CapturedWork& work) override {
    const auto* r = dynamic_cast<const Recording*>(&work);
    MOE_CHECK(r != nullptr, "replay: not a recording of this backend");
    for (const auto& op : r->ops) op();
  }

  void embedding(const Weight& table, const TensorView& ids, const TensorView& out) override {
    run([=, this] { in_.embedding(table, ids, out); }, out.rows());
  }
  void rms_norm(const TensorView& x, const Weight& w, float eps, const TensorView& out) override {
    run([=, this] { in_.rms_norm(x, w, eps, out); }, x.rows());
  }
  void matmul(const TensorView& x, const Weight& w, const TensorView& out) override {
    run([=, this] { in_.matmul(x, w, out); }, x.rows());
  }
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override {
    run([=, this] { in_.add(a, b, out); });
  }
  void concat_cols(const TensorView& a, const TensorView& b, const TensorView& out) override {
    run([=, this] { in_.concat_cols(a, b, out); }, a.rows());
  }
  void argmax_rows(const TensorView& logits, int64_t limit, const TensorView& ids) override {
    run([=, this] { in_.argmax_rows(logits, limit, ids); });
  }
  void kept_rows(const TensorView& tokens, const TensorView& verified, const TensorView& rows) override {
    run([=, this] { in_.kept_rows(tokens, verified, rows); });
  }
  // The batch's arrays here are this backend's copy, while the CPU ops it runs read the plan: the plan gets
  // the new values too (it is the caller's to change, as the CPU backend's batches alias theirs).
  void chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance,
                   const DeviceBatch& to) override {
    run([=, this] {
      in_.chain_batch(from, rows, advance, to);
      BatchPlan& plan = const_cast<BatchPlan&>(*to.plan);
      const int64_t S = rows.numel();
      std::copy_n(to.positions.as<const int32_t>(), S, plan.positions.begin());
      std::copy_n(to.slots.as<const int32_t>(), S, plan.slots.begin());
      std::copy_n(to.seq_lens.as<const int32_t>(), S, plan.seq_lens.begin());
    });
  }
  void index_rows(const TensorView& x, const TensorView& rows, const TensorView& out) override {
    run([=, this] { in_.index_rows(x, rows, out); });
  }
  void gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out) override {
    refuse_while_capturing("gather_rows (a host index list)");
    in_.gather_rows(x, rows, out);
  }
  void swiglu_mlp(const TensorView& x, const MlpWeights& mlp, const TensorView& out) override {
    run([=, this] { in_.swiglu_mlp(x, mlp, out); }, x.rows());
  }
  void mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps, const RopeParams& rope,
                       const DeviceBatch& batch, const TensorView& cache) override {
    const DeviceBatch* b = &batch;  // the executor keeps the batch (and rewrites it in place)
    run([=, this] { in_.mla_write_cache(kv_a, kv_norm, eps, rope, *b, cache); }, kv_a.rows());
  }
  void mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope, const DeviceBatch& batch) override {
    const DeviceBatch* b = &batch;
    run([=, this] { in_.mla_rope_q(q, dn, rope, *b); }, q.rows());
  }
  void mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn, int64_t dv,
                     float scale, const DeviceBatch& batch, const TensorView& out) override {
    const DeviceBatch* b = &batch;
    run([=, this] { in_.mla_attention(q, kv_b, cache, dn, dv, scale, *b, out); }, q.rows());
  }
  void mla_absorb(const TensorView& q, const Weight& kv_b, int64_t dn, int64_t dv, const TensorView& qf) override {
    run([=, this] { in_.mla_absorb(q, kv_b, dn, dv, qf); }, q.rows());
  }
  void mla_latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                            const TensorView& o_lat, const TensorView& lse) override {
    const DeviceBatch* b = &batch;
    run([=, this] { in_.mla_latent_attention(qf, cache, scale, *b, o_lat, lse); }, qf.rows());
  }
  void mla_project_v(const TensorView& o_lat, const Weight& kv_b, int64_t dn, int64_t dv,
                     const TensorView& out) override {
    run([=, this] { in_.mla_project_v(o_lat, kv_b, dn, dv, out); }, o_lat.rows());
  }
  bool has_sparse_attention() const override { return sparse_attention && in_.has_sparse_attention(); }
  void dsa_write_index_cache(const TensorView& k, const Weight& norm_w, const Weight& norm_b, float eps,
                             const RopeParams& rope, const DeviceBatch& batch, const TensorView& index_cache) override {
    const DeviceBatch* b = &batch;
    run([=, this] { in_.dsa_write_index_cache(k, norm_w, norm_b, eps, rope, *b, index_cache); }, k.rows());
  }
  void dsa_rope_q(const TensorView& q, const RopeParams& rope, const DeviceBatch& batch) override {
    const DeviceBatch* b = &batch;
    run([=, this] { in_.dsa_rope_q(q, rope, *b); }, q.rows());
  }
  void dsa_index_scores(const TensorView& q, const TensorView& weights, const TensorView& index_cache, float scale,
                        float weight_scale, const DeviceBatch& batch, const TensorView& scores) override {
    const DeviceBatch* b = &batch;
    run([=, this] { in_.dsa_index_scores(q, weights, index_cache, scale, weight_scale, *b, scores); }, q.rows());
  }
  void dsa_topk(const TensorView& scores, const DeviceBatch& batch, const TensorView& indices) override {
    const DeviceBatch* b = &batch;
    run([=, this] { in_.dsa_topk(scores, *b, indices); }, scores.rows());
  }
  void mla_sparse_latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                                   const TensorView& indices, const TensorView& o_lat, const TensorView& lse) override {
    const DeviceBatch* b = &batch;
    run([=, this] { in_.mla_sparse_latent_attention(qf, cache, scale, *b, indices, o_lat, lse); }, qf.rows());
  }
  void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
                 const TensorView& expert_ids, const TensorView& expert_weights) override {
    run([=, this] { in_.moe_route(logits, bias, params, expert_ids, expert_weights); }, logits.rows());
  }
  // The dispatch returns tensors it allocates and fills: recorded through moe_experts as a whole instead.
  MoeDispatch moe_dispatch(const TensorView& x, const TensorView& expert_ids, int32_t num_experts) override {
    refuse_while_capturing("moe_dispatch");
    return in_.moe_dispatch(x, expert_ids, num_experts);
  }
  void moe_grouped_mlp(const MoeDispatch& d, const ExpertWeights& experts, const TensorView& y) override {
    const ExpertWeights* e = &experts;
    run([=, this] { in_.moe_grouped_mlp(d, *e, y); }, d.num_rows());
  }
  void moe_combine(const TensorView& y, const MoeDispatch& d, const TensorView& expert_weights,
                   const TensorView& plus, const TensorView& out) override {
    run([=, this] { in_.moe_combine(y, d, expert_weights, plus, out); }, out.rows());
  }
  void moe_experts(const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                   const TensorView& expert_weights, const TensorView& plus, const TensorView& out) override {
    const ExpertWeights* e = &experts;  // the model's, alive as long as the model
    run([=, this] { in_.moe_experts(x, *e, expert_ids, expert_weights, plus, out); }, x.rows());
  }
  void moe_local_choices(const TensorView& expert_ids, const TensorView& expert_weights, const TensorView& slots,
                         const TensorView& local_ids, const TensorView& local_weights) override {
    run([=, this] { in_.moe_local_choices(expert_ids, expert_weights, slots, local_ids, local_weights); },
        expert_ids.rows());
  }

 private:
  struct Recording final : CapturedWork {
    std::vector<std::function<void()>> ops;
    std::vector<Tensor> memory;  // everything allocated while capturing
  };
  Tensor keep(Tensor t) {
    if (recording_) recording_->memory.push_back(t);
    return t;
  }
  void refuse_while_capturing(const char* what) const {
    if (recording_) fail("{} cannot be captured", what);
  }
  void run(std::function<void()> op, int64_t tokens = 0) {
    if (!recording_) return op();
    if (refuse_tokens >= 0 && tokens > refuse_tokens)
      fail("an op of {} rows needs the host mid-step: not capturable", tokens);
    recording_->ops.push_back(std::move(op));
    ++recorded_ops;
  }

  Backend& in_;
  std::shared_ptr<Recording> recording_;
};

}  // namespace moe::test
