#include "train/parallel.h"

#include <cmath>
#include <functional>

#include "core/error.h"
#include "dist/communicator.h"
#include "train/device_step.h"

namespace moe::train {

namespace {
void release(std::vector<float>& v) { std::vector<float>().swap(v); }

void for_each_moe_layer(TrainModel& m, const std::function<void(LayerParams&)>& f) {
  for (LayerParams& L : m.layers)
    if (L.is_moe) f(L);
  if (m.has_mtp && m.mtp_layer.is_moe) f(m.mtp_layer);
}
}  // namespace

DistributedTraining::DistributedTraining(TrainModel& model, dist::Communicator& comm, ParallelOptions options)
    : m_(model), c_(comm), o_(options) {
  const int N = c_.size();
  MOE_CHECK(o_.zero >= 0 && o_.zero <= 3, "train: --zero is 0, 1, 2 or 3, not {}", o_.zero);
  MOE_CHECK(o_.zero < 3 || !m_.compute, "train: --zero 3 gathers layers into host memory and runs on the CPU only "
            "(leave out --device, or use --zero 2)");
  // A whole-step device keeps the gradients and the optimizer on the GPU: plain data parallelism there (the arena
  // all-reduced, every rank's AdamW on the whole model), not yet sharded state or experts.
  MOE_CHECK(!m_.device || (o_.zero == 0 && !o_.ep), "train: on --device cuda, data-parallel training runs with "
            "--zero 0 and without --ep (gradients all-reduced on the GPUs, every rank updating the whole model); "
            "sharded optimizer state and expert parallelism run on the CPU only");
  if (o_.ep) {
    const int64_t E = m_.config.n_routed_experts;
    MOE_CHECK(E > 0, "train: --ep needs a model with routed experts");
    MOE_CHECK(E % N == 0, "train: --ep over {} ranks needs the {} routed experts to divide evenly among them", N, E);
    ep_.comm = &c_, ep_.experts = E;
    m_.ep = &ep_;
    for_each_moe_layer(m_, [&](LayerParams& L) {
      for (size_t e = 0; e < L.experts.size(); ++e)
        for (Param* p : {L.experts[e].gate, L.experts[e].up, L.experts[e].down})
          expert_owner_.emplace_back(p, ep_.owner(int64_t(e)));
    });
    for (auto& [p, owner] : expert_owner_) owner_of_[p] = owner;
    for (auto& [p, owner] : expert_owner_)
      if (owner != c_.rank()) release(p->w), release(p->g), release(p->m), release(p->v);  // the owner's alone
  }
  for (auto& p : m_.params)
    if (!expert_param(p.get())) replicated_.push_back(p.get());
  for (Param* p : replicated_) offset_.push_back(total_), total_ += p->w.size();
  chunk_ = (total_ + size_t(N) - 1) / size_t(N);
  if (o_.zero == 3) {
    build_groups();  // zero3.cpp
  } else if (o_.zero > 0) {
    // This rank's slice of the moments (from the model's, which a resumed run may have filled), then the model's
    // copies go: each rank keeps 1/N of the optimizer state.
    g_shard_.assign(chunk_, 0.f), m_shard_.assign(chunk_, 0.f), v_shard_.assign(chunk_, 0.f);
    const size_t lo = size_t(c_.rank()) * chunk_;
    for (size_t i = 0; i < replicated_.size(); ++i) {
      Param* p = replicated_[i];
      for (size_t k = 0; k < p->w.size(); ++k) {
        const size_t f = offset_[i] + k;
        if (f >= lo && f < lo + chunk_) m_shard_[f - lo] = p->m[k], v_shard_[f - lo] = p->v[k];
      }
      release(p->m), release(p->v);
    }
  }
  m_.hooks = this;
  reset_peak_param_bytes();
}

DistributedTraining::~DistributedTraining() {
  if (m_.ep == &ep_) m_.ep = nullptr;
  if (m_.hooks == this) m_.hooks = nullptr;
}

bool DistributedTraining::expert_param(const Param* p) const { return owner_of_.count(p) > 0; }

bool DistributedTraining::owned(const Param* p) const {
  const auto it = owner_of_.find(p);
  return it == owner_of_.end() || it->second == c_.rank();
}

std::vector<int32_t> DistributedTraining::local_batch(const std::vector<int32_t>& ids, int64_t b, int64_t t) const {
  const int64_t N = c_.size();
  MOE_CHECK(b % N == 0, "train: a batch of {} sequences does not split evenly over {} data-parallel ranks", b, N);
  MOE_CHECK(int64_t(ids.size()) == b * t, "train: a batch of {} ids is not {} x {}", ids.size(), b, t);
  const int64_t per = b / N, r = c_.rank();
  return std::vector<int32_t>(ids.begin() + r * per * t, ids.begin() + (r + 1) * per * t);
}

int DistributedTraining::rank() const { return c_.rank(); }

LossParts DistributedTraining::local_pass(const std::vector<int32_t>& ids, int64_t b, int64_t t, const Objective& obj,
                                          ExpertLoads* loads, const std::vector<uint8_t>* mask) {
  const std::vector<int32_t> mine = local_batch(ids, b, t);
  std::vector<uint8_t> mine_mask;
  if (mask) {
    MOE_CHECK(mask->size() == ids.size(), "train: a loss mask of {} values for {} ids", mask->size(), ids.size());
    const int64_t per = b / c_.size(), r = c_.rank();
    mine_mask.assign(mask->begin() + r * per * t, mask->begin() + (r + 1) * per * t);
  }
  ExpertLoads part;
  const LossParts p = train::forward_backward(m_, mine, b / c_.size(), t, obj, &part, mask ? &mine_mask : nullptr);
  if (loads)
    for (auto& [gate, load] : part) {
      auto& sum = (*loads)[gate];
      sum.resize(load.size(), 0);
      for (size_t e = 0; e < load.size(); ++e) sum[e] += load[e];
    }
  return p;
}

void DistributedTraining::before_last_pass() {
  if (m_.device) m_.device->reduce_during_next_backward(m_, c_);
}

LossParts DistributedTraining::reduce(const LossParts& p, ExpertLoads* loads) {
  const double N = double(c_.size());
  // Equal shares: the batch mean is the mean of the ranks' means (every sequence has t-1 and t-2 targets).
  std::vector<double> parts = {p.loss, p.main_ce, p.mtp_ce, p.seq_aux};
  c_.all_reduce_sum(std::span<double>(parts));
  if (loads)
    for (auto& [gate, load] : *loads) {  // every rank has every MoE layer's entry, in the map's (sorted) order
      std::vector<double> sum(load.begin(), load.end());
      c_.all_reduce_sum(std::span<double>(sum));
      load.assign(sum.begin(), sum.end());
    }
  if (m_.device) {
    m_.device->all_reduce_gradients(m_, c_);
    m_.device->scale_gradients(m_, 1.0 / N);
  } else {
    reduce_gradients();
  }
  note_bytes();
  return LossParts{parts[0] / N, parts[1] / N, parts[2] / N, parts[3] / N};
}

LossParts DistributedTraining::forward_backward(const std::vector<int32_t>& ids, int64_t b, int64_t t,
                                                const Objective& obj, ExpertLoads* loads) {
  m_.zero_grad();
  if (o_.zero == 3) std::fill(g_shard_.begin(), g_shard_.end(), 0.f);
  if (loads) loads->clear();
  before_last_pass();
  const LossParts p = local_pass(ids, b, t, obj, loads);
  return reduce(p, loads);
}

void DistributedTraining::reduce_gradients() {
  const double N = double(c_.size());
  if (o_.zero == 3) {  // the replicated gradients were reduce-scattered per layer during the backward
    scale_owned_expert_gradients();
    return;
  }
  std::vector<double> flat(chunk_ * size_t(c_.size()), 0.0);
  for (size_t i = 0; i < replicated_.size(); ++i)
    std::copy(replicated_[i]->g.begin(), replicated_[i]->g.end(), flat.begin() + ptrdiff_t(offset_[i]));
  if (o_.zero == 2) {
    std::vector<double> mine(chunk_);
    c_.reduce_scatter_sum(std::span<const double>(flat), std::span<double>(mine));
    for (size_t k = 0; k < chunk_; ++k) g_shard_[k] = float(mine[k] / N);
  } else {
    c_.all_reduce_sum(std::span<double>(flat));
    for (size_t i = 0; i < replicated_.size(); ++i) {
      std::vector<float>& g = replicated_[i]->g;
      for (size_t k = 0; k < g.size(); ++k) g[k] = float(flat[offset_[i] + k] / N);
    }
    if (o_.zero == 1) {
      const size_t lo = size_t(c_.rank()) * chunk_;
      for (size_t k = 0; k < chunk_; ++k) g_shard_[k] = float(flat[lo + k] / N);
    }
  }
  scale_owned_expert_gradients();
}

void DistributedTraining::scale_owned_expert_gradients() {
  const double N = double(c_.size());
  // The owner's experts saw every rank's rows: their sum over the ranks' losses, scaled like the rest.
  for (auto& [p, owner] : expert_owner_)
    if (owner == c_.rank())
      for (float& g : p->g) g = float(double(g) / N);
}

StepStats DistributedTraining::step(const AdamW& opt, double lr, double clip_norm, int64_t step) {
  // The device's gradients are the same on every rank after reduce (an all-reduce leaves one result everywhere),
  // so its own norm and update keep the ranks' models identical.
  if (m_.device) return adamw_step(m_, opt, lr, clip_norm, step);
  StepStats st;
  st.lr = lr;
  // Sum of squares: the replicated gradient once (rank 0's copy, or each rank's slice), plus the owned experts.
  double ss = 0;
  if (o_.zero == 0) {
    if (c_.rank() == 0)
      for (Param* p : replicated_)
        for (float g : p->g) ss += double(g) * double(g);
  } else {
    for (float g : g_shard_) ss += double(g) * double(g);  // the padding past total_ is 0
  }
  for (auto& [p, owner] : expert_owner_)
    if (owner == c_.rank())
      for (float g : p->g) ss += double(g) * double(g);
  std::vector<double> total = {ss};
  c_.all_reduce_sum(std::span<double>(total));
  st.grad_norm = std::sqrt(total[0]);
  MOE_CHECK(std::isfinite(st.grad_norm), "train: the gradient norm is {} at step {}", st.grad_norm, step);
  st.clip_scale = std::min(1.0, clip_norm / (st.grad_norm + 1e-6));

  if (o_.zero == 3) {
    // Each group's slice [lo, lo + chunk) of this rank, parameter by parameter, on the shards; no all-gather: the
    // next pass gathers each layer when it runs. The gradient shard is consumed.
    for (const Group& G : groups_) {
      const size_t lo = size_t(c_.rank()) * G.chunk, hi = std::min(G.total, lo + G.chunk);
      for (size_t i = 0; i < G.params.size(); ++i) {
        const size_t n = size_t(G.params[i]->shape.numel());
        const size_t a = std::max(lo, G.offset[i]), b = std::min(hi, G.offset[i] + n);
        if (a >= b) continue;
        const size_t s = G.at + (a - lo);
        adamw_update(w_shard_.data() + s, g_shard_.data() + s, m_shard_.data() + s, v_shard_.data() + s, b - a,
                     G.params[i]->decay, opt, lr, st.clip_scale, step);
      }
    }
    std::fill(g_shard_.begin(), g_shard_.end(), 0.f);
  } else if (o_.zero == 0) {
    for (Param* p : replicated_)
      adamw_update(p->w.data(), p->g.data(), p->m.data(), p->v.data(), p->w.size(), p->decay, opt, lr, st.clip_scale,
                   step);
  } else {
    // Update this rank's slice [lo, lo + chunk) of the flat layout, parameter by parameter, then all-gather.
    const size_t lo = size_t(c_.rank()) * chunk_, hi = std::min(total_, lo + chunk_);
    std::vector<float> mine(chunk_, 0.f), all(chunk_ * size_t(c_.size()));
    for (size_t i = 0; i < replicated_.size(); ++i) {
      Param* p = replicated_[i];
      const size_t a = std::max(lo, offset_[i]), b = std::min(hi, offset_[i] + p->w.size());
      if (a >= b) continue;
      float* w = p->w.data() + (a - offset_[i]);
      adamw_update(w, g_shard_.data() + (a - lo), m_shard_.data() + (a - lo), v_shard_.data() + (a - lo), b - a,
                   p->decay, opt, lr, st.clip_scale, step);
      std::copy(w, w + (b - a), mine.begin() + ptrdiff_t(a - lo));
    }
    c_.all_gather(std::span<const float>(mine), std::span<float>(all));
    for (size_t i = 0; i < replicated_.size(); ++i)
      std::copy(all.begin() + ptrdiff_t(offset_[i]), all.begin() + ptrdiff_t(offset_[i] + replicated_[i]->w.size()),
                replicated_[i]->w.begin());
  }
  for (auto& [p, owner] : expert_owner_)
    if (owner == c_.rank())
      adamw_update(p->w.data(), p->g.data(), p->m.data(), p->v.data(), p->w.size(), p->decay, opt, lr, st.clip_scale,
                   step);
  note_bytes();
  return st;
}

void DistributedTraining::gather_model() {
  for (auto& [p, owner] : expert_owner_) {
    const size_t n = size_t(p->shape.numel());
    for (std::vector<float>* v : {&p->w, &p->m, &p->v}) {
      v->resize(n);
      c_.broadcast(v->data(), n * sizeof(float), owner);
    }
    p->g.resize(n);
  }
  if (o_.zero == 3) {
    for (const Group& G : groups_) {
      gather_group(G, w_shard_, &Param::w);
      gather_group(G, m_shard_, &Param::m);
      gather_group(G, v_shard_, &Param::v);
    }
  } else if (o_.zero > 0) {
    for (std::vector<float>* shard : {&m_shard_, &v_shard_}) {
      std::vector<float> all(chunk_ * size_t(c_.size()));
      c_.all_gather(std::span<const float>(*shard), std::span<float>(all));
      const bool first = shard == &m_shard_;
      for (size_t i = 0; i < replicated_.size(); ++i) {
        std::vector<float>& dst = first ? replicated_[i]->m : replicated_[i]->v;
        dst.assign(all.begin() + ptrdiff_t(offset_[i]), all.begin() + ptrdiff_t(offset_[i] + replicated_[i]->w.size()));
      }
    }
  }
}

}  // namespace moe::train
