// DistributedTraining's ZeRO-3 half (train/parallel.h): the per-group flat layout of the replicated parameters,
// the per-layer gathers and reduce-scatters run from the model's ParamHooks, and the count of bytes held (every
// mode: it is what shows ZeRO-3's saving against ZeRO-2).
//
// Layout: group 0 the head, 1 the embedding, 2 the globals (every other replicated tensor outside the layers),
// group 3 + l main layer l, then the MTP layer (group(layer) = groups_[layer + 3], ParamHooks' numbering). Group G's tensors are concatenated in the model's order into [0, total) and cut into N slices of
// `chunk` (total rounded up / N); rank r keeps slice r of the values, gradients and both moments in w/g/m/v_shard_
// at G.at. Shapes: a gather moves chunk floats per rank into chunk * N; a reduce-scatter chunk * N doubles per
// rank (the sum in rank order, as the communicator does it) into chunk.
#include <unordered_map>

#include "core/error.h"
#include "dist/communicator.h"
#include "train/parallel.h"

namespace moe::train {

namespace {
void release(std::vector<float>& v) { std::vector<float>().swap(v); }

// A layer's replicated tensors (routed experts included: with --ep they are not replicated and are skipped).
std::vector<Param*> layer_tensors(const LayerParams& L) {
  std::vector<Param*> out;
  const AttnParams& a = L.attn;
  for (Param* p : {L.input_norm, L.post_norm, a.q_a, a.q_a_norm, a.q_b, a.q_proj, a.kv_a, a.kv_a_norm, a.kv_b,
                   a.o_proj, L.dense.gate, L.dense.up, L.dense.down, L.router, L.shared.gate, L.shared.up,
                   L.shared.down})
    if (p) out.push_back(p);
  for (const MlpParams& e : L.experts)
    for (Param* p : {e.gate, e.up, e.down})
      if (p) out.push_back(p);
  return out;
}
}  // namespace

void DistributedTraining::build_groups() {
  const size_t N = size_t(c_.size()), layers = m_.layers.size();
  std::unordered_map<const Param*, size_t> group_of = {{m_.head, 0}, {m_.embed, 1}};
  for (size_t l = 0; l < layers; ++l)
    for (Param* p : layer_tensors(m_.layers[l])) group_of[p] = 3 + l;
  if (m_.has_mtp)
    for (Param* p : layer_tensors(m_.mtp_layer)) group_of[p] = 3 + layers;
  groups_.assign(3 + layers + (m_.has_mtp ? 1 : 0), {});
  for (Param* p : replicated_) {
    const auto it = group_of.find(p);
    Group& G = groups_[it == group_of.end() ? 2 : it->second];
    G.params.push_back(p), G.offset.push_back(G.total), G.total += p->w.size();
  }
  size_t at = 0;
  for (Group& G : groups_) G.chunk = (G.total + N - 1) / N, G.at = at, at += G.chunk;
  w_shard_.assign(at, 0.f), g_shard_.assign(at, 0.f), m_shard_.assign(at, 0.f), v_shard_.assign(at, 0.f);
  // This rank's slices of the values and of the moments (which a resumed run may have filled); then the model's
  // copies go.
  for (const Group& G : groups_) {
    const size_t lo = size_t(c_.rank()) * G.chunk;
    for (size_t i = 0; i < G.params.size(); ++i) {
      Param* p = G.params[i];
      for (size_t k = 0; k < p->w.size(); ++k) {
        const size_t f = G.offset[i] + k;
        if (f < lo || f >= lo + G.chunk) continue;
        w_shard_[G.at + f - lo] = p->w[k];
        if (!p->m.empty()) m_shard_[G.at + f - lo] = p->m[k], v_shard_[G.at + f - lo] = p->v[k];
      }
      release(p->w), release(p->g), release(p->m), release(p->v);
    }
  }
}

void DistributedTraining::gather_group(const Group& G, const std::vector<float>& shard,
                                       std::vector<float> Param::*field) {
  std::vector<float> all(G.chunk * size_t(c_.size()));
  c_.all_gather(std::span<const float>(shard.data() + G.at, G.chunk), std::span<float>(all));
  for (size_t i = 0; i < G.params.size(); ++i) {
    Param* p = G.params[i];
    const size_t n = size_t(p->shape.numel());
    (p->*field).assign(all.begin() + ptrdiff_t(G.offset[i]), all.begin() + ptrdiff_t(G.offset[i] + n));
  }
}

// The group's local gradients summed over ranks (rank order, double), this rank's slice / N added to g_shard_
// (added: micro-batches of one step accumulate).
void DistributedTraining::reduce_scatter_group(const Group& G) {
  const size_t N = size_t(c_.size());
  std::vector<double> flat(G.chunk * N, 0.0), mine(G.chunk);
  for (size_t i = 0; i < G.params.size(); ++i)
    std::copy(G.params[i]->g.begin(), G.params[i]->g.end(), flat.begin() + ptrdiff_t(G.offset[i]));
  c_.reduce_scatter_sum(std::span<const double>(flat), std::span<double>(mine));
  for (size_t k = 0; k < G.chunk; ++k) g_shard_[G.at + k] += float(mine[k] / double(N));
}

void DistributedTraining::before_forward(int layer) {
  if (o_.zero == 3) {
    const Group& G = group(layer);
    if (layer == kGlobals) {  // a pass begins: the globals' values and gradients are held until it ends
      for (Param* p : replicated_) release(p->m), release(p->v);  // gather_model's copies, if any
      for (Param* p : G.params) p->g.assign(size_t(p->shape.numel()), 0.f);
    }
    gather_group(G, w_shard_, &Param::w);
  }
  note_bytes();
}

void DistributedTraining::after_forward(int layer) {
  note_bytes();
  if (o_.zero != 3) return;
  for (Param* p : group(layer).params) {
    release(p->w);
    if (layer == kGlobals) release(p->g);
  }
}

void DistributedTraining::before_backward(int layer) {
  if (o_.zero == 3) {
    const Group& G = group(layer);
    if (layer != kEmbed) gather_group(G, w_shard_, &Param::w);  // the embedding's backward needs no values
    for (Param* p : G.params) p->g.assign(size_t(p->shape.numel()), 0.f);
  }
  note_bytes();
}

void DistributedTraining::after_backward(int layer) {
  note_bytes();
  if (o_.zero != 3) return;
  const Group& G = group(layer);
  reduce_scatter_group(G);
  for (Param* p : G.params) release(p->w), release(p->g);
}

void DistributedTraining::scale_sharded_gradients(double s) {
  if (o_.zero != 3) return;
  for (float& g : g_shard_) g = float(double(g) * s);
}

size_t DistributedTraining::param_bytes() const {
  size_t n = w_shard_.capacity() + g_shard_.capacity() + m_shard_.capacity() + v_shard_.capacity();
  for (const auto& p : m_.params) n += p->w.capacity() + p->g.capacity() + p->m.capacity() + p->v.capacity();
  return n * sizeof(float);
}

}  // namespace moe::train
