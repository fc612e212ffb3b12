#pragma once
// Test-only Backend decorator for comparing whole-model runs on two backends op by op.
//   - records the output of every op (record_all) or only the routing decisions (router logits + expert ids);
//   - can force the routing: each moe_route call takes the expert ids of the matching call of another run
//     (the CPU's), with the weights recomputed from this run's own router logits, so the rest of the model is
//     compared on the same discrete expert choices; likewise V3.2's index selections (force_topk).
// Plus the routing margins that say how close a token's expert choice was to a tie.
#include <algorithm>
#include <cmath>
#include <set>
#include <string>
#include <vector>

#include "backend/backend.h"
#include "core/error.h"
#include "cuda_test_util.h"

namespace moe::test {

struct Record {
  std::string op;
  std::vector<float> f;      // the output (moe_route: the router logits [rows, E])
  std::vector<int32_t> ids;  // moe_route: expert ids [rows, cols]
  int64_t rows = 0, cols = 0, E = 0;
};

class TraceBackend final : public Backend {
 public:
  explicit TraceBackend(Backend& in, bool record_all = false) : in_(in), record_all_(record_all) {}
  std::vector<Record> log;
  // Routing taken from `routes` (the moe_route records of another run, in call order), or free when null.
  void force_routing(const std::vector<Record>* routes) {
    forced_ = routes;
    forced_next_ = 0;
  }
  // V3.2's index selections taken from `sel` (the dsa_topk records of another run, in call order), or free when
  // null. The record keeps this run's own selection (what it would have attended), the model gets `sel`'s.
  void force_topk(const std::vector<Record>* sel) {
    forced_topk_ = sel;
    forced_topk_next_ = 0;
  }
  static std::vector<Record> topk_of(const std::vector<Record>& log) {
    std::vector<Record> out;
    for (const Record& r : log)
      if (r.op == "dsa_topk") out.push_back(r);
    return out;
  }
  static std::vector<Record> routes_of(const std::vector<Record>& log) {
    std::vector<Record> out;
    for (const Record& r : log)
      if (r.op == "moe_route") out.push_back(r);
    return out;
  }

  std::string name() const override { return "trace(" + in_.name() + ")"; }
  Device device() const override { return in_.device(); }
  DType activation_dtype() const override { return in_.activation_dtype(); }
  DType cache_dtype() const override { return in_.cache_dtype(); }
  Tensor alloc(DType dtype, Shape shape) override { return in_.alloc(dtype, shape); }
  void copy_from_host(const void* src, const TensorView& dst) override { in_.copy_from_host(src, dst); }
  void copy_to_host(const TensorView& src, void* dst) override { in_.copy_to_host(src, dst); }
  void copy(const TensorView& src, const TensorView& dst) override { in_.copy(src, dst); }
  Weight upload_weight(const Weight& host) override { return in_.upload_weight(host); }
  void prepare_experts(ExpertWeights& experts) override { in_.prepare_experts(experts); }
  void prepare_shared_experts(ExpertWeights& experts, const MlpWeights& shared) override {
    in_.prepare_shared_experts(experts, shared);
  }
  // shared_expert_slots stays the default 0: the routing records (and forced routing) hold top-k columns
  // only.
  DeviceBatch upload_batch(const BatchPlan& plan) override { return in_.upload_batch(plan); }
  void synchronize() override { in_.synchronize(); }

  void embedding(const Weight& table, const TensorView& ids, const TensorView& out) override {
    in_.embedding(table, ids, out);
    record("embedding", out);
  }
  void rms_norm(const TensorView& x, const Weight& w, float eps, const TensorView& out) override {
    in_.rms_norm(x, w, eps, out);
    record("rms_norm", out);
  }
  void matmul(const TensorView& x, const Weight& w, const TensorView& out) override {
    in_.matmul(x, w, out);
    record("matmul", out);
  }
  void add(const TensorView& a, const TensorView& b, const TensorView& out) override {
    in_.add(a, b, out);
    record("add", out);
  }
  void concat_cols(const TensorView& a, const TensorView& b, const TensorView& out) override {
    in_.concat_cols(a, b, out);
  }
  void gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out) override {
    in_.gather_rows(x, rows, out);
  }
  void argmax_rows(const TensorView& logits, int64_t limit, const TensorView& ids) override {
    in_.argmax_rows(logits, limit, ids);
  }
  void kept_rows(const TensorView& tokens, const TensorView& verified, const TensorView& rows) override {
    in_.kept_rows(tokens, verified, rows);
  }
  void chain_batch(const DeviceBatch& from, const TensorView& rows, int32_t advance,
                   const DeviceBatch& to) override {
    in_.chain_batch(from, rows, advance, to);
  }
  void index_rows(const TensorView& x, const TensorView& rows, const TensorView& out) override {
    in_.index_rows(x, rows, out);
  }
  void swiglu_mlp(const TensorView& x, const MlpWeights& mlp, const TensorView& out) override {
    in_.swiglu_mlp(x, mlp, out);
    record("swiglu_mlp", out);
  }
  void mla_write_cache(const TensorView& kv_a, const Weight& kv_norm, float eps, const RopeParams& rope,
                       const DeviceBatch& batch, const TensorView& cache) override {
    in_.mla_write_cache(kv_a, kv_norm, eps, rope, batch, cache);
  }
  void mla_rope_q(const TensorView& q, int64_t dn, const RopeParams& rope, const DeviceBatch& batch) override {
    in_.mla_rope_q(q, dn, rope, batch);
  }
  void mla_absorb(const TensorView& q, const Weight& kv_b, int64_t dn, int64_t dv, const TensorView& qf) override {
    in_.mla_absorb(q, kv_b, dn, dv, qf);
  }
  void mla_latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                            const TensorView& o_lat, const TensorView& lse) override {
    in_.mla_latent_attention(qf, cache, scale, batch, o_lat, lse);
  }
  void mla_project_v(const TensorView& o_lat, const Weight& kv_b, int64_t dn, int64_t dv,
                     const TensorView& out) override {
    in_.mla_project_v(o_lat, kv_b, dn, dv, out);
  }
  void mla_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn, int64_t dv,
                     float scale, const DeviceBatch& batch, const TensorView& out) override {
    in_.mla_attention(q, kv_b, cache, dn, dv, scale, batch, out);
    record("mla_attention", out);
  }
  // V3.2's sparse attention, passed through (the index scores and selections recorded with record_all).
  bool has_sparse_attention() const override { return in_.has_sparse_attention(); }
  void dsa_write_index_cache(const TensorView& k, const Weight& norm_w, const Weight& norm_b, float eps,
                             const RopeParams& rope, const DeviceBatch& batch, const TensorView& index_cache) override {
    in_.dsa_write_index_cache(k, norm_w, norm_b, eps, rope, batch, index_cache);
  }
  void dsa_rope_q(const TensorView& q, const RopeParams& rope, const DeviceBatch& batch) override {
    in_.dsa_rope_q(q, rope, batch);
  }
  void dsa_index_scores(const TensorView& q, const TensorView& weights, const TensorView& index_cache, float scale,
                        float weight_scale, const DeviceBatch& batch, const TensorView& scores) override {
    in_.dsa_index_scores(q, weights, index_cache, scale, weight_scale, batch, scores);
    record("dsa_index_scores", scores);
  }
  void dsa_topk(const TensorView& scores, const DeviceBatch& batch, const TensorView& indices) override {
    in_.dsa_topk(scores, batch, indices);
    if (record_all_ || forced_topk_) {
      Record r;
      r.op = "dsa_topk";
      r.rows = indices.rows();
      r.cols = indices.row_size();
      r.ids.resize(size_t(indices.numel()));
      in_.copy_to_host(indices, r.ids.data());
      if (forced_topk_) {
        MOE_CHECK(forced_topk_next_ < forced_topk_->size(), "forced top-k: more dsa_topk calls than recorded");
        const Record& f = (*forced_topk_)[forced_topk_next_++];
        MOE_CHECK(f.rows == r.rows && f.cols == r.cols, "forced top-k: shapes differ");
        in_.copy_from_host(f.ids.data(), indices);
      }
      if (record_all_) log.push_back(std::move(r));
    }
  }
  void mla_sparse_latent_attention(const TensorView& qf, const TensorView& cache, float scale, const DeviceBatch& batch,
                                   const TensorView& indices, const TensorView& o_lat, const TensorView& lse) override {
    in_.mla_sparse_latent_attention(qf, cache, scale, batch, indices, o_lat, lse);
  }
  void mla_sparse_attention(const TensorView& q, const Weight& kv_b, const TensorView& cache, int64_t dn, int64_t dv,
                            float scale, const DeviceBatch& batch, const TensorView& indices,
                            const TensorView& out) override {
    in_.mla_sparse_attention(q, kv_b, cache, dn, dv, scale, batch, indices, out);
    record("mla_sparse_attention", out);
  }

  void moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
                 const TensorView& expert_ids, const TensorView& expert_weights) override {
    in_.moe_route(logits, bias, params, expert_ids, expert_weights);
    Record r;
    r.op = "moe_route";
    r.rows = expert_ids.rows();
    r.cols = expert_ids.row_size();
    r.E = logits.row_size();
    r.f = to_host_f32(in_, logits);
    r.ids.resize(size_t(expert_ids.numel()));
    in_.copy_to_host(expert_ids, r.ids.data());
    if (forced_) {
      MOE_CHECK(forced_next_ < forced_->size(), "forced routing: more moe_route calls than recorded");
      const Record& f = (*forced_)[forced_next_++];
      MOE_CHECK(f.rows == r.rows && f.cols == r.cols, "forced routing: shapes differ");
      MOE_CHECK(params.score == RoutingScore::Sigmoid, "forced routing handles sigmoid scores");
      // The weights of the forced experts from this run's logits, as moe_route computes them.
      std::vector<float> w(f.ids.size());
      for (int64_t t = 0; t < r.rows; ++t) {
        float sum = 0.0f;
        for (int64_t j = 0; j < r.cols; ++j) {
          const float l = r.f[size_t(t * r.E + f.ids[size_t(t * r.cols + j)])];
          sum += (w[size_t(t * r.cols + j)] = 1.0f / (1.0f + std::exp(-l)));
        }
        for (int64_t j = 0; j < r.cols; ++j) {
          float& x = w[size_t(t * r.cols + j)];
          if (params.norm_topk_prob) x /= (sum + 1e-20f);
          x *= params.routed_scaling_factor;
        }
      }
      in_.copy_from_host(f.ids.data(), expert_ids);
      in_.copy_from_host(w.data(), expert_weights);
      r.ids = f.ids;
    }
    log.push_back(std::move(r));
  }
  MoeDispatch moe_dispatch(const TensorView& x, const TensorView& expert_ids, int32_t num_experts) override {
    return in_.moe_dispatch(x, expert_ids, num_experts);
  }
  void moe_grouped_mlp(const MoeDispatch& d, const ExpertWeights& experts, const TensorView& y) override {
    in_.moe_grouped_mlp(d, experts, y);
  }
  void moe_combine(const TensorView& y, const MoeDispatch& d, const TensorView& expert_weights, const TensorView& plus,
                   const TensorView& out) override {
    in_.moe_combine(y, d, expert_weights, plus, out);
  }
  void moe_experts(const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                   const TensorView& expert_weights, const TensorView& plus, const TensorView& out) override {
    in_.moe_experts(x, experts, expert_ids, expert_weights, plus, out);
    record("moe_experts", out);
  }
  void moe_local_choices(const TensorView& expert_ids, const TensorView& expert_weights, const TensorView& slots,
                         const TensorView& local_ids, const TensorView& local_weights) override {
    in_.moe_local_choices(expert_ids, expert_weights, slots, local_ids, local_weights);
  }

 private:
  void record(const char* op, const TensorView& v) {
    if (!record_all_) return;
    Record r;
    r.op = op;
    r.rows = v.rows();
    r.cols = v.row_size();
    r.f = to_host_f32(in_, v);
    log.push_back(std::move(r));
  }
  Backend& in_;
  bool record_all_;
  const std::vector<Record>* forced_ = nullptr;
  size_t forced_next_ = 0;
  const std::vector<Record>* forced_topk_ = nullptr;
  size_t forced_topk_next_ = 0;
};

// How close token t's routing (V3: sigmoid + bias, group-limited top-k) was to a tie, from one run's router
// logits: the gap between the last kept and the first dropped group score, and between the k-th and the
// (k+1)-th choice score inside the kept groups. Either one crossing zero changes the expert set.
struct RouteMargin {
  double group = INFINITY, expert = INFINITY;
  double min() const { return std::min(group, expert); }
};
inline RouteMargin route_margin(const float* logits, const float* bias, const RoutingParams& p) {
  const int32_t E = p.num_experts, per = E / p.n_group;
  std::vector<double> c(size_t(E), 0.0);
  for (int32_t e = 0; e < E; ++e) c[size_t(e)] = 1.0 / (1.0 + std::exp(-double(logits[e]))) + (bias ? bias[e] : 0.0);
  RouteMargin m;
  std::vector<bool> keep(size_t(p.n_group), true);
  if (p.n_group > 1 && p.topk_group < p.n_group) {
    std::vector<std::pair<double, int>> gs;
    for (int32_t g = 0; g < p.n_group; ++g) {
      std::vector<double> mem(c.begin() + g * per, c.begin() + (g + 1) * per);
      std::sort(mem.begin(), mem.end(), std::greater<double>());
      gs.push_back({mem[0] + (per > 1 ? mem[1] : 0.0), g});
    }
    std::sort(gs.begin(), gs.end(), [](auto a, auto b) { return a.first > b.first; });
    m.group = gs[size_t(p.topk_group - 1)].first - gs[size_t(p.topk_group)].first;
    std::fill(keep.begin(), keep.end(), false);
    for (int32_t i = 0; i < p.topk_group; ++i) keep[size_t(gs[size_t(i)].second)] = true;
  }
  std::vector<double> kept;
  for (int32_t e = 0; e < E; ++e)
    if (keep[size_t(e / per)]) kept.push_back(c[size_t(e)]);
  std::sort(kept.begin(), kept.end(), std::greater<double>());
  if (int64_t(kept.size()) > p.top_k) m.expert = kept[size_t(p.top_k - 1)] - kept[size_t(p.top_k)];
  return m;
}

// Tokens whose expert set differs between two runs' records of one moe_route call.
inline std::vector<int64_t> route_flips(const Record& a, const Record& b) {
  std::vector<int64_t> out;
  for (int64_t t = 0; t < a.rows; ++t) {
    std::set<int32_t> x(a.ids.begin() + t * a.cols, a.ids.begin() + (t + 1) * a.cols),
        y(b.ids.begin() + t * b.cols, b.ids.begin() + (t + 1) * b.cols);
    if (x != y) out.push_back(t);
  }
  return out;
}

}  // namespace moe::test
