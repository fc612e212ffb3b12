// DeviceTrainer (device_trainer.h): binding a model's parameters to the device arenas, the buffers, the GEMMs,
// the optimiser step and the host sync. The forward and backward are in device_model.cpp / device_layer.cpp.
#include "train/cuda/device_trainer.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <unordered_set>

#include "core/dtype.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "train/cuda/device_impl.h"

namespace moe::train::cuda {

void check_cuda(cudaError_t e, const char* what) {
  MOE_CHECK(e == cudaSuccess, "cuda train: {}: {}", what, cudaGetErrorString(e));
}

namespace {
constexpr size_t kHeadroom = size_t(512) << 20;  // left free for cuBLAS's workspaces and the CUDA context

void* device_alloc(size_t bytes, const std::string& what) {
  size_t free = 0, total = 0;
  check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  MOE_CHECK(bytes + kHeadroom <= free,
            "train on cuda: {} needs {:.0f} MiB of device memory, {:.0f} MiB of {:.0f} MiB are free: this shape does not "
            "fit on the device (lower --batch, --micro-batch or --seq-len)",
            what, double(bytes) / 1048576.0, double(free) / 1048576.0, double(total) / 1048576.0);
  void* p = nullptr;
  check_cuda(cudaMalloc(&p, bytes), "cudaMalloc");
  return p;
}
}  // namespace

DeviceTrainer::Impl::Impl(GemmPrecision p, int device)
    : cc(p, device),
      prec(p),
      prof(cc.stream()),
      egemm(
          cc.blas(), cc.stream(), [this](size_t bytes) { return raw("grouped.ptrs", bytes); },
          [](const std::string& line) { std::fprintf(stderr, "moe: note: %s\n", line.c_str()); }) {}

void DeviceTrainer::Impl::note_free_memory() {
  size_t free = 0, total_mem = 0;
  check_cuda(cudaMemGetInfo(&free, &total_mem), "cudaMemGetInfo");
  if (mem_free_min == 0 || free < mem_free_min) mem_free_min = free;
}

DeviceTrainer::Impl::~Impl() {
  for (auto& [key, buf] : buffers)
    if (buf.first) cudaFree(buf.first);
  for (void* p : {static_cast<void*>(W), static_cast<void*>(G), M, V})
    if (p) cudaFree(p);
  if (scalars) cudaFree(scalars);
  if (sum_scratch) cudaFree(sum_scratch);
  if (reduce_host) cudaFreeHost(reduce_host);
  if (comm_event) cudaEventDestroy(comm_event);
  if (comm_stream) cudaStreamDestroy(comm_stream);
  if (routing_host) cudaFreeHost(routing_host);
  if (routing_event) cudaEventDestroy(routing_event);
}

void* DeviceTrainer::Impl::raw(const std::string& key, size_t bytes) {
  auto& [p, have] = buffers[key];
  if (have < bytes) {
    if (p) check_cuda(cudaFree(p), "cudaFree");
    p = nullptr;
    have = 0;
    p = device_alloc(bytes, "the activation buffer " + key);
    have = bytes;
  }
  return p;
}

float* DeviceTrainer::Impl::zeros(const std::string& key, int64_t count) {
  float* p = f32(key, count);
  check_cuda(cudaMemsetAsync(p, 0, size_t(count) * 4, stream()), "cudaMemsetAsync");
  return p;
}

void DeviceTrainer::Impl::upload(void* dst, const void* host, size_t bytes) {
  if (bytes == 0) return;
  check_cuda(cudaMemcpyAsync(dst, host, bytes, cudaMemcpyHostToDevice, stream()), "upload");
}

void DeviceTrainer::Impl::sum_into(int slot, const float* x, int64_t count, bool squares) {
  MOE_CHECK(slot >= 0 && slot < kScalars, "cuda train: scalar slot {} out of range", slot);
  sum_double(scalars + slot, sum_scratch, x, count, squares, stream());
  check_cuda(cudaGetLastError(), "sum_double");
}

void DeviceTrainer::Impl::check_point(const std::string& prefix, const char* what, const float* x, int64_t count) {
  if (!check_finite) return;
  const int slot = next_aux_slot++;
  sum_into(slot, x, count, true);
  checks.emplace_back(prefix + what, slot);
}

void DeviceTrainer::Impl::throw_if_nonfinite(const std::vector<double>& sums, const char* pass) {
  for (const auto& [what, slot] : checks)
    MOE_CHECK(std::isfinite(sums[size_t(slot)]), "train: the {} pass's first non-finite values are in {} (--check-finite)",
              pass, what);
}

std::vector<double> DeviceTrainer::Impl::read_scalars(int count) {
  const ProfScope scope(prof, OpClass::HostWait);
  std::vector<double> out(static_cast<size_t>(count));
  check_cuda(cudaMemcpyAsync(out.data(), scalars, size_t(count) * sizeof(double), cudaMemcpyDeviceToHost, stream()),
             "download");
  check_cuda(cudaStreamSynchronize(stream()), "cudaStreamSynchronize");
  prof.collect();
  note_free_memory();
  return out;
}

void DeviceTrainer::Impl::bind(TrainModel& m) {
  if (bound == &m) return;
  for (void* p : {static_cast<void*>(W), static_cast<void*>(G), M, V})
    if (p) check_cuda(cudaFree(p), "cudaFree");
  W = G = nullptr;
  M = V = nullptr;
  {
    size_t total_mem = 0;
    check_cuda(cudaMemGetInfo(&mem_free_at_bind, &total_mem), "cudaMemGetInfo");
    mem_free_min = mem_free_at_bind;
  }
  offset.clear();
  total = 0;
  for (const auto& p : m.params) {
    offset[p.get()] = total;
    total += int64_t(p->w.size());
  }
  const size_t bytes = size_t(total) * sizeof(float);
  W = static_cast<float*>(device_alloc(bytes, fmt::format("the parameters ({} values)", total)));
  G = static_cast<float*>(device_alloc(bytes, "the gradients"));
  const size_t mbytes = size_t(total) * moment_bytes();
  M = device_alloc(mbytes, bf16_moments ? "the AdamW first moments (BF16)" : "the AdamW first moments");
  V = device_alloc(mbytes, bf16_moments ? "the AdamW second moments (BF16)" : "the AdamW second moments");
  if (!scalars) scalars = static_cast<double*>(device_alloc(kScalars * sizeof(double), "the step's scalars"));
  if (!sum_scratch)
    sum_scratch = static_cast<double*>(device_alloc(size_t(sum_scratch_doubles()) * sizeof(double), "the sums"));
  bound = &m;
  shape_t = -1;
  if (f8) f8->new_weights();
  if (f8x) f8x->new_weights();
  // A model without host state (TrainModel::init's host_state false) starts with zero gradients and moments.
  check_cuda(cudaMemsetAsync(G, 0, bytes, stream()), "cudaMemsetAsync");
  check_cuda(cudaMemsetAsync(M, 0, size_t(total) * moment_bytes(), stream()), "cudaMemsetAsync");
  check_cuda(cudaMemsetAsync(V, 0, size_t(total) * moment_bytes(), stream()), "cudaMemsetAsync");
  plan_split(m);
  plan_layer_grads(m);
  for (const auto& p : m.params) {  // push, with the host's gradients (zero for a fresh model)
    const size_t b = p->w.size() * sizeof(float);
    if (const auto it = split_of.find(p.get()); it != split_of.end()) {  // through a staging buffer, split there
      const SplitRegion& r = split_regions[it->second];
      const int64_t c = int64_t(p->w.size()), at = offset[p.get()] - r.o;
      float* stage = f32("stage.split", std::min(c, kSplitStageValues));
      for (int64_t i = 0; i < c; i += kSplitStageValues) {  // in pieces: the head is 335 M values at train-mid
        const int64_t piece = std::min(kSplitStageValues, c - i);
        upload(stage, p->w.data() + i, size_t(piece) * sizeof(float));
        split_weights(split_hi(r) + at + i, split_lo(r) + at + i, stage, piece, stream());
        check_cuda(cudaGetLastError(), "split_weights");
      }
    } else {
      upload(W + offset[p.get()], p->w.data(), b);
    }
    if (p->g.size() == p->w.size()) upload(G + offset[p.get()], p->g.data(), b);
    if (p->m.size() == p->w.size()) upload_moment(M, offset[p.get()], p->m);
    if (p->v.size() == p->w.size()) upload_moment(V, offset[p.get()], p->v);
  }
  check_cuda(cudaStreamSynchronize(stream()), "bind");
}

void DeviceTrainer::Impl::plan_layer_grads(const TrainModel& m) {
  layer_grads.assign(size_t(m.config.num_hidden_layers), Range{});
  std::vector<int64_t> lo(layer_grads.size(), total), hi(layer_grads.size(), 0), sum(layer_grads.size(), 0);
  for (const auto& p : m.params) {
    if (p->name.rfind("model.layers.", 0) != 0) continue;
    const size_t dot = p->name.find('.', 13);
    const int64_t l = std::stoll(p->name.substr(13, dot - 13));
    if (l < 0 || l >= int64_t(layer_grads.size())) continue;  // the MTP module's layer: with the rest
    const int64_t o = offset.at(p.get()), n = int64_t(p->w.size());
    lo[size_t(l)] = std::min(lo[size_t(l)], o), hi[size_t(l)] = std::max(hi[size_t(l)], o + n), sum[size_t(l)] += n;
  }
  for (size_t l = 0; l < layer_grads.size(); ++l)  // only a layer whose parameters lie together is reduced alone
    if (sum[l] > 0 && hi[l] - lo[l] == sum[l]) layer_grads[l] = Range{lo[l], sum[l]};
  // The routed experts' gradient ranges, merged where they touch (a layer's experts lie together).
  std::vector<Range> ex;
  auto add = [&](const LayerParams& L) {
    for (const MlpParams& e : L.experts)
      for (const Param* p : {e.gate, e.up, e.down}) ex.push_back(Range{offset.at(p), int64_t(p->w.size())});
  };
  for (const LayerParams& L : m.layers)
    if (L.is_moe) add(L);
  if (m.has_mtp && m.mtp_layer.is_moe) add(m.mtp_layer);
  std::sort(ex.begin(), ex.end(), [](const Range& a, const Range& b) { return a.o < b.o; });
  expert_grads.clear();
  for (const Range& r : ex)
    if (!expert_grads.empty() && expert_grads.back().o + expert_grads.back().n == r.o)
      expert_grads.back().n += r.n;
    else
      expert_grads.push_back(r);
  fresh_experts.clear();
}

void DeviceTrainer::Impl::zero_gradients(const TrainModel& m) {
  fresh_experts.clear();
  if (!use_grouped() || expert_grads.empty()) {
    check_cuda(cudaMemsetAsync(G, 0, size_t(total) * sizeof(float), stream()), "zero_grad");
    return;
  }
  int64_t at = 0;  // every range but the experts'
  for (const Range& r : expert_grads) {
    if (r.o > at) check_cuda(cudaMemsetAsync(G + at, 0, size_t(r.o - at) * sizeof(float), stream()), "zero_grad");
    at = r.o + r.n;
  }
  if (total > at) check_cuda(cudaMemsetAsync(G + at, 0, size_t(total - at) * sizeof(float), stream()), "zero_grad");
  for (const LayerParams& L : m.layers)
    if (L.is_moe) fresh_experts[&L] = true;
  if (m.has_mtp && m.mtp_layer.is_moe) fresh_experts[&m.mtp_layer] = true;
}

void DeviceTrainer::Impl::settle_gradients() {
  for (const auto& [L, fresh] : fresh_experts)
    if (fresh)
      for (const MlpParams& e : L->experts)
        for (const Param* p : {e.gate, e.up, e.down})
          check_cuda(cudaMemsetAsync(g(p), 0, p->w.size() * sizeof(float), stream()), "zero_grad (settled)");
  fresh_experts.clear();
}

bool DeviceTrainer::Impl::take_fresh(const LayerParams& P) {
  const auto it = fresh_experts.find(&P);
  if (it == fresh_experts.end()) return false;
  const bool fresh = it->second;
  fresh_experts.erase(it);
  return fresh;
}

void DeviceTrainer::Impl::reduce_layer(int64_t l) {
  if (!overlap_armed || l < 0 || l >= int64_t(layer_grads.size()) || layer_grads[size_t(l)].n == 0) return;
  const Range r = layer_grads[size_t(l)];
  check_cuda(cudaEventRecord(comm_event, stream()), "cudaEventRecord");  // layer l's backward is queued before it
  check_cuda(cudaStreamWaitEvent(comm_stream, comm_event, 0), "cudaStreamWaitEvent");
  overlap_comm->all_reduce_sum(std::span<float>(G + r.o, size_t(r.n)));  // on comm_stream (the comm's stream)
  reduced.push_back(r);
}

void DeviceTrainer::Impl::plan_split(const TrainModel& m) {
  split_regions.clear();
  split_of.clear();
  // Who reads each weight in BF16 only: the routed experts under the grouped BF16 GEMMs (under FP8 their
  // masters are quantised from FP32, fp8_experts.h); under BF16 GEMMs the dense projections mm() takes at
  // prec (the router's products are FP32; the head's are BF16 unless head_fp32, under FP8 as well; the
  // embedding is read by its gather in FP32, so a head tied to it stays FP32).
  std::unordered_set<const Param*> bf16_only;
  auto mlp = [&](const MlpParams& e) {
    if (e.present()) bf16_only.insert({e.gate, e.up, e.down});
  };
  std::vector<const LayerParams*> layers;
  for (const LayerParams& l : m.layers) layers.push_back(&l);
  if (m.has_mtp) layers.push_back(&m.mtp_layer);
  for (const LayerParams* l : layers) {
    if (use_grouped() && prec == GemmPrecision::Bf16)
      for (const MlpParams& e : l->experts) mlp(e);
    if (prec != GemmPrecision::Bf16) continue;
    for (const Param* p : {l->attn.q_a, l->attn.q_b, l->attn.q_proj, l->attn.kv_a, l->attn.kv_b, l->attn.o_proj})
      if (p) bf16_only.insert(p);
    mlp(l->dense);
    mlp(l->shared);
  }
  if (prec == GemmPrecision::Bf16 && m.eh_proj) bf16_only.insert(m.eh_proj);
  // The head stays BF16 under FP8 too (one of V3's exceptions): split, it is not converted from FP32 at each
  // use (V x D values, forward and backward of both heads every micro-batch).
  if (prec != GemmPrecision::Fp32 && !head_fp32 && m.head && m.head != m.embed) bf16_only.insert(m.head);
  // Regions: maximal runs of such parameters adjacent in W, each starting on 16 bytes; a parameter whose size is
  // not a multiple of 8 stays FP32 (its neighbours' halves would lose their 16-byte alignment).
  SplitRegion cur;
  auto close = [&] {
    if (cur.n > 0) split_regions.push_back(cur);
    cur = SplitRegion{};
  };
  for (const auto& up : m.params) {
    const Param* p = up.get();
    const int64_t o = offset.at(p), c = int64_t(p->w.size());
    if (!bf16_only.count(p) || c % 8 != 0 || c == 0) {
      close();
      continue;
    }
    if (cur.n > 0 && cur.o + cur.n != o) close();
    if (cur.n == 0) {
      if (o % 4 != 0) continue;
      cur.o = o;
    }
    cur.n += c;
    split_of[p] = split_regions.size();
  }
  close();
}

void DeviceTrainer::Impl::upload_moment(void* arena, int64_t o, const std::vector<float>& host) {
  if (!bf16_moments) {
    upload(moment_at(arena, o), host.data(), host.size() * 4);
    return;
  }
  std::vector<uint16_t> b(host.size());  // nearest even: exact for moments a BF16 run wrote
  for (size_t i = 0; i < host.size(); ++i) b[i] = float_to_bf16(host[i]);
  upload(moment_at(arena, o), b.data(), b.size() * 2);
  check_cuda(cudaStreamSynchronize(stream()), "upload");  // b leaves scope
}

void DeviceTrainer::Impl::download_moment(std::vector<float>& host, const void* arena, int64_t o) {
  const void* src = static_cast<const char*>(arena) + size_t(o) * moment_bytes();
  if (!bf16_moments) {
    check_cuda(cudaMemcpyAsync(host.data(), src, host.size() * 4, cudaMemcpyDeviceToHost, stream()), "pull");
    return;
  }
  std::vector<uint16_t> b(host.size());
  check_cuda(cudaMemcpyAsync(b.data(), src, b.size() * 2, cudaMemcpyDeviceToHost, stream()), "pull");
  check_cuda(cudaStreamSynchronize(stream()), "pull");
  for (size_t i = 0; i < host.size(); ++i) host[i] = bf16_to_float(b[i]);
}

const void* DeviceTrainer::Impl::operand(const char* slot, const float* src, int64_t count, GemmPrecision p) {
  if (p == GemmPrecision::Fp32) return src;
  auto* b = static_cast<uint16_t*>(raw(slot, size_t(count) * sizeof(uint16_t)));
  to_bf16(b, src, count, stream());
  check_cuda(cudaGetLastError(), "to_bf16");
  return b;
}

const void* DeviceTrainer::Impl::operand(const char* slot, const Operand& x, int64_t count, GemmPrecision p) {
  if (p == GemmPrecision::Bf16 && x.bf16) return x.bf16;
  return operand(slot, f32_of(x, slot), count, p);
}

const float* DeviceTrainer::Impl::f32_of(const Operand& x, const char* what) {
  MOE_CHECK(x.f32 != nullptr, "cuda train: {}: an activation kept only in BF16 was read at another precision", what);
  return x.f32;
}

const void* DeviceTrainer::Impl::weight_operand(const Param* w, int64_t count, GemmPrecision p) {
  if (const uint16_t* hi = split_bf16(w)) {
    MOE_CHECK(p == GemmPrecision::Bf16, "cuda train: {} is stored split (BF16 + int16) and read at FP32", w->name);
    return hi;
  }
  return operand("bf.w", this->w(w), count, p);
}

void DeviceTrainer::Impl::mm_at(GemmPrecision p, float* y, Operand x, const Param* w, int64_t n, int64_t k,
                                int64_t m, OpClass cls, bool same_x) {
  if (n == 0 || m == 0) return;
  const ProfScope scope(prof, cls);
  if (p == GemmPrecision::Fp8) {
    if (fp8().fprop_ok(n, k, m)) return fp8().fprop(y, f32_of(x, "fp8 fprop"), this->w(w), n, k, m, same_x);
    fp8().forget_x();  // (a same_x after this product must not take an older quantisation of x)
    p = GemmPrecision::Bf16;
    bf16_flops += 2.0 * double(n) * double(k) * double(m);
  }
  cc.gemm_nt(p, y, operand("bf.x", x, n * k, p), weight_operand(w, m * k, p), n, k, m, 0.0f);
}

void DeviceTrainer::Impl::mm_bwd_at(GemmPrecision p, float* dx, float* dw, Operand dy, Operand x,
                                    const Param* w, int64_t n, int64_t k, int64_t m, bool add_dx, OpClass cls,
                                    bool same_x) {
  if (n == 0 || m == 0) return;
  const ProfScope scope(prof, cls);
  if (p == GemmPrecision::Fp8) {  // the FP8 products here, the others in BF16 below
    float* dx8 = dx && fp8().dgrad_ok(n, k, m) ? dx : nullptr;
    float* dw8 = dw && fp8().wgrad_ok(n, k, m) ? dw : nullptr;
    fp8().backward(dx8, dw8, f32_of(dy, "fp8 backward"), dw8 ? f32_of(x, "fp8 wgrad") : nullptr, this->w(w),
                   n, k, m, add_dx, same_x);
    if (dw && !dw8) fp8().forget_x();
    if (dx8) dx = nullptr;
    if (dw8) dw = nullptr;
    if (!dx && !dw) return;
    p = GemmPrecision::Bf16;
    bf16_flops += 2.0 * double(n) * double(k) * double(m) * ((dx ? 1 : 0) + (dw ? 1 : 0));
  }
  const void* dy_op = operand("bf.dy", dy, n * m, p);
  if (dx) cc.gemm_nn(p, dx, dy_op, weight_operand(w, m * k, p), n, k, m, add_dx ? 1.0f : 0.0f);
  if (dw) cc.gemm_tn(p, dw, dy_op, operand("bf.x", x, n * k, p), n, k, m, 1.0f);
}

// ---- DeviceTrainer

DeviceTrainer::DeviceTrainer(GemmPrecision precision, int device)
    : impl_(std::make_unique<Impl>(precision, device)) {}
DeviceTrainer::~DeviceTrainer() = default;

int DeviceTrainer::device_count() {
  int n = 0;
  return cudaGetDeviceCount(&n) == cudaSuccess ? n : 0;
}

std::string DeviceTrainer::device_name() const { return impl_->cc.device_name(); }
GemmPrecision DeviceTrainer::precision() const { return impl_->prec; }
double DeviceTrainer::measure_bf16_gemm_gflops() { return impl_->cc.measure_bf16_gemm_gflops(); }

std::string DeviceTrainer::gemm_summary() const {
  if (impl_->prec != GemmPrecision::Fp8) return "";
  const Fp8Gemms::Counts c = impl_->f8 ? impl_->f8->counts() : Fp8Gemms::Counts{};
  const Fp8Experts* x = impl_->f8x.get();
  const double fp8 = c.fp8_flops + (x ? x->fp8_flops() : 0.0), all = fp8 + impl_->bf16_flops;
  return fmt::format(
      "fp8 GEMMs: {:.1f} % of the projections' FLOPs ({:.1f} GFLOP FP8, {:.1f} GFLOP BF16), {} weight "
      "quantisations ({} of them the grouped experts'), {} activation quantisations taken again for a second "
      "product of the same input, {} weight gradients on the forward's x^T",
      all > 0 ? 100.0 * fp8 / all : 0.0, fp8 / 1e9, impl_->bf16_flops / 1e9,
      c.weight_quantisations + (x ? x->weight_quantisations() : 0), x ? x->weight_quantisations() : 0,
      c.x_reuses, c.kept_xt_reads);
}

LossParts DeviceTrainer::forward_backward(TrainModel& m, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                                          const Objective& obj, ExpertLoads* loads,
                                          const std::vector<uint8_t>* mask) {
  impl_->bind(m);
  const LossParts parts = impl_->forward(m, ids, b, t, obj, mask, true);
  impl_->backward(m);
  impl_->loads(m, loads);
  return parts;
}

LossParts DeviceTrainer::forward_loss(TrainModel& m, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                                      const Objective& obj, const std::vector<uint8_t>* mask) {
  impl_->bind(m);
  return impl_->forward(m, ids, b, t, obj, mask, false);
}

void DeviceTrainer::zero_grad(TrainModel& m) {
  impl_->bind(m);
  impl_->zero_gradients(m);
}

void DeviceTrainer::scale_gradients(TrainModel& m, double s) {
  impl_->bind(m);
  impl_->settle_gradients();
  scale(impl_->G, float(s), impl_->total, impl_->stream());
  check_cuda(cudaGetLastError(), "scale");
}

double DeviceTrainer::global_grad_norm(TrainModel& m) {
  impl_->bind(m);
  impl_->settle_gradients();
  {
    const ProfScope scope(impl_->prof, OpClass::Optimizer);
    impl_->sum_into(0, impl_->G, impl_->total, true);
  }
  return std::sqrt(impl_->read_scalars(1)[0]);
}

std::string DeviceTrainer::Impl::nonfinite_gradients(const TrainModel& m) {
  std::string names;
  int64_t count = 0;
  for (size_t first = 0; first < m.params.size(); first += kScalars) {  // kScalars tensors per read
    const size_t n = std::min(m.params.size() - first, size_t(kScalars));
    for (size_t j = 0; j < n; ++j) {
      const Param* p = m.params[first + j].get();
      sum_into(int(j), G + offset.at(p), int64_t(p->w.size()), true);
    }
    const std::vector<double> sums = read_scalars(int(n));
    for (size_t j = 0; j < n; ++j)
      if (!std::isfinite(sums[j]) && ++count <= 8) names += (names.empty() ? "" : ", ") + m.params[first + j]->name;
  }
  if (count > 8) names += " and " + std::to_string(count - 8) + " more";
  return names.empty() ? "none found in the parameters' sums" : names;
}

StepStats DeviceTrainer::adamw_step(TrainModel& m, const AdamW& opt, double lr, double clip_norm, int64_t step) {
  MOE_CHECK(opt.bf16_moments == impl_->bf16_moments,
            "train on cuda: the optimiser's moments are {} but the device stores them in {} (set_bf16_moments)",
            opt.bf16_moments ? "bf16" : "f32", impl_->bf16_moments ? "bf16" : "f32");
  StepStats st;
  st.lr = lr;
  st.grad_norm = global_grad_norm(m);
  MOE_CHECK(std::isfinite(st.grad_norm), "train: the gradient norm is {} at step {} (non-finite gradients: {})",
            st.grad_norm, step, impl_->nonfinite_gradients(m));
  st.clip_scale = std::min(1.0, clip_norm / (st.grad_norm + 1e-6));
  AdamWArgs a;
  a.clip = float(st.clip_scale);
  a.lr = float(lr);
  a.beta1 = float(opt.beta1);
  a.beta2 = float(opt.beta2);
  a.eps = float(opt.eps);
  a.bc1 = float(1.0 - std::pow(opt.beta1, double(step)));
  a.bc2 = float(1.0 - std::pow(opt.beta2, double(step)));
  Impl& I = *impl_;
  const ProfScope scope(I.prof, OpClass::Optimizer);
  // One launch per run of parameters that lie together in the arenas (bind lays them out in order) and share the
  // decay rule: ~2 per layer instead of one per tensor (train-mid has ~3,300 tensors, most of them experts').
  // Runs stay inside one split region or outside all (region -1).
  auto update = [&](int64_t o, int64_t count, bool decay, int64_t region) {
    a.decay = decay ? float(1.0 - lr * opt.weight_decay) : 1.0f;
    if (region >= 0) {
      const Impl::SplitRegion& r = I.split_regions[size_t(region)];
      adamw_update_split(I.split_hi(r) + (o - r.o), I.split_lo(r) + (o - r.o), I.G + o, I.moment_at(I.M, o),
                         I.moment_at(I.V, o), I.bf16_moments, count, a, I.stream());
    } else if (I.bf16_moments)
      adamw_update_bf16(I.W + o, I.G + o, static_cast<uint16_t*>(I.M) + o, static_cast<uint16_t*>(I.V) + o, count, a,
                        I.stream());
    else
      adamw_update(I.W + o, I.G + o, static_cast<float*>(I.M) + o, static_cast<float*>(I.V) + o, count, a, I.stream());
  };
  int64_t run_at = 0, run_count = 0, run_region = -1;
  bool run_decay = false;
  for (const auto& p : m.params) {
    const int64_t o = I.offset.at(p.get()), c = int64_t(p->w.size());
    const auto it = I.split_of.find(p.get());
    const int64_t region = it == I.split_of.end() ? -1 : int64_t(it->second);
    if (run_count > 0 && o == run_at + run_count && p->decay == run_decay && region == run_region) {
      run_count += c;
      continue;
    }
    if (run_count > 0) update(run_at, run_count, run_decay, run_region);
    run_at = o, run_count = c, run_decay = p->decay, run_region = region;
  }
  if (run_count > 0) update(run_at, run_count, run_decay, run_region);
  check_cuda(cudaGetLastError(), "adamw_update");
  if (I.f8) I.f8->new_weights();  // the FP8 copies of the weights are quantised again at their next use
  if (I.f8x) I.f8x->new_weights();
  return st;
}

void DeviceTrainer::pull(TrainModel& m) {
  Impl& I = *impl_;
  if (I.bound != &m) {  // nothing ran on the device yet: the host copies are current (zero where absent)
    for (const auto& p : m.params)
      for (auto* x : {&p->g, &p->m, &p->v}) x->resize(p->w.size(), 0.0f);
    return;
  }
  I.settle_gradients();
  for (const auto& p : m.params) {
    const size_t bytes = p->w.size() * sizeof(float);
    const int64_t o = I.offset.at(p.get());
    p->g.resize(p->w.size());
    p->m.resize(p->w.size());
    p->v.resize(p->w.size());
    if (const auto it = I.split_of.find(p.get()); it != I.split_of.end()) {  // joined into a staging buffer
      const Impl::SplitRegion& r = I.split_regions[it->second];
      const int64_t c = int64_t(p->w.size()), at = o - r.o;
      float* stage = I.f32("stage.split", std::min(c, kSplitStageValues));
      for (int64_t i = 0; i < c; i += kSplitStageValues) {  // in pieces, as bind
        const int64_t piece = std::min(kSplitStageValues, c - i);
        join_weights(stage, I.split_hi(r) + at + i, I.split_lo(r) + at + i, piece, I.stream());
        check_cuda(cudaGetLastError(), "join_weights");
        check_cuda(cudaMemcpyAsync(p->w.data() + i, stage, size_t(piece) * sizeof(float), cudaMemcpyDeviceToHost,
                                   I.stream()),
                   "pull");
      }
    } else {
      check_cuda(cudaMemcpyAsync(p->w.data(), I.W + o, bytes, cudaMemcpyDeviceToHost, I.stream()), "pull");
    }
    check_cuda(cudaMemcpyAsync(p->g.data(), I.G + o, bytes, cudaMemcpyDeviceToHost, I.stream()), "pull");
    I.download_moment(p->m, I.M, o);
    I.download_moment(p->v, I.V, o);
  }
  check_cuda(cudaStreamSynchronize(I.stream()), "pull");
}

void DeviceTrainer::check_fits(int64_t parameters) {
  size_t free = 0, total = 0;
  check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  const double need = double(parameters) * (8.0 + 2.0 * double(impl_->moment_bytes()));
  MOE_CHECK(need + double(kHeadroom) <= double(free),
            "train on cuda: {} parameters need {:.1f} GiB for their values, gradients (FP32) and AdamW moments ({}), "
            "and {:.1f} GiB of {:.1f} GiB are free on the device: this model does not fit on one GPU{}",
            parameters, need / 1073741824.0, impl_->bf16_moments ? "BF16" : "FP32", double(free) / 1073741824.0,
            double(total) / 1073741824.0, impl_->bf16_moments ? "" : " (--moments bf16 needs 12 bytes a parameter)");
}

void DeviceTrainer::set_bf16_moments(bool bf16) {
  if (impl_->bf16_moments == bf16) return;
  MOE_CHECK(!impl_->bound, "train on cuda: the moments' storage changes before the first step only");
  impl_->bf16_moments = bf16;
}

DeviceMemory DeviceTrainer::memory() {
  size_t free = 0, total = 0;
  check_cuda(cudaMemGetInfo(&free, &total), "cudaMemGetInfo");
  impl_->note_free_memory();
  DeviceMemory r;
  r.total = double(total);
  r.free_before = double(impl_->mem_free_at_bind);
  r.peak_used = impl_->mem_free_at_bind ? double(impl_->mem_free_at_bind) - double(impl_->mem_free_min) : 0.0;
  return r;
}

void DeviceTrainer::synchronize() { impl_->cc.sync(); }

void DeviceTrainer::all_reduce_gradients(TrainModel& m, dist::Communicator& comm) {
  Impl& I = *impl_;
  I.bind(m);
  I.settle_gradients();
  const ProfScope scope(I.prof, OpClass::GradReduce);
  if (comm.name() == "nccl" && I.overlap_comm == &comm) {
    // After an armed backward (reduce_during_next_backward): the ranges its layers did not reduce, on the side
    // stream once everything queued so far has run, then the step's stream waits for every reduction.
    std::vector<Impl::Range> done = I.reduced;
    std::sort(done.begin(), done.end(), [](const Impl::Range& a, const Impl::Range& b) { return a.o < b.o; });
    check_cuda(cudaEventRecord(I.comm_event, I.stream()), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(I.comm_stream, I.comm_event, 0), "cudaStreamWaitEvent");
    int64_t at = 0;
    for (size_t i = 0; i <= done.size(); ++i) {
      const int64_t end = i < done.size() ? done[i].o : I.total;
      MOE_CHECK(end >= at, "cuda train: overlapping gradient reductions");
      if (end > at) comm.all_reduce_sum(std::span<float>(I.G + at, size_t(end - at)));
      if (i < done.size()) at = done[i].o + done[i].n;
    }
    check_cuda(cudaEventRecord(I.comm_event, I.comm_stream), "cudaEventRecord");
    check_cuda(cudaStreamWaitEvent(I.stream(), I.comm_event, 0), "cudaStreamWaitEvent");
    comm.set_stream(I.overlap_prev_stream);
    I.overlap_comm = nullptr, I.overlap_armed = false;
    I.reduced.clear();
    return;
  }
  if (comm.name() == "nccl") {
    // In place on the arena, queued on the step's stream after the backward that wrote it (no host wait).
    void* const prev = comm.stream();
    comm.set_stream(I.stream());
    comm.all_reduce_sum(std::span<float>(I.G, size_t(I.total)));
    comm.set_stream(prev);
    return;
  }
  // Host communicators: each piece down, summed over the ranks (every rank walks the same pieces), and up again.
  if (!I.reduce_host)
    check_cuda(cudaMallocHost(reinterpret_cast<void**>(&I.reduce_host), size_t(I.reduce_piece) * sizeof(float)),
               "cudaMallocHost (gradient all-reduce)");
  for (int64_t o = 0; o < I.total; o += I.reduce_piece) {
    const int64_t n = std::min(I.reduce_piece, I.total - o);
    check_cuda(cudaMemcpyAsync(I.reduce_host, I.G + o, size_t(n) * sizeof(float), cudaMemcpyDeviceToHost, I.stream()),
               "all_reduce_gradients");
    check_cuda(cudaStreamSynchronize(I.stream()), "all_reduce_gradients");
    comm.all_reduce_sum(std::span<float>(I.reduce_host, size_t(n)));
    check_cuda(cudaMemcpyAsync(I.G + o, I.reduce_host, size_t(n) * sizeof(float), cudaMemcpyHostToDevice, I.stream()),
               "all_reduce_gradients");
  }
  check_cuda(cudaStreamSynchronize(I.stream()), "all_reduce_gradients");  // the buffer is free for the next call
}

void DeviceTrainer::set_profile(bool on) {
  impl_->prof.set_enabled(on);
  impl_->prof.reset();
}

std::vector<std::pair<std::string, double>> DeviceTrainer::profile_ms() {
  impl_->cc.sync();
  impl_->prof.collect();
  return impl_->prof.milliseconds();
}

void DeviceTrainer::set_grouped_experts(bool on) {
  // The experts' masters are stored split or not from the first step on (bind): the choice comes before it.
  MOE_CHECK(impl_->bound == nullptr || on == impl_->grouped_experts,
            "cuda train: set_grouped_experts must come before the first step");
  impl_->grouped_experts = on;
  impl_->egemm.set_grouped(on);
}

int64_t DeviceTrainer::split_master_values() const {
  int64_t n = 0;
  for (const Impl::SplitRegion& r : impl_->split_regions) n += r.n;
  return n;
}

void DeviceTrainer::set_attention(AttnPrecision p) { impl_->attention_prec = p; }
void DeviceTrainer::set_fp8_expert_both_layers(int64_t n) {
  n = std::max<int64_t>(n, -1);
  MOE_CHECK(impl_->bound == nullptr || n == impl_->fp8_expert_both_layers,
            "cuda train: set_fp8_expert_both_layers must come before the first step");
  impl_->fp8_expert_both_layers = n;
}
void DeviceTrainer::set_fp8_expert_prefetch(bool on) {
  impl_->fp8_expert_prefetch = on;
  if (impl_->f8x) impl_->f8x->set_prefetch(on);
}
void DeviceTrainer::set_head_fp32(bool on) {
  // A BF16 head's master is stored split from the first step on (bind): the choice comes before it.
  MOE_CHECK(impl_->bound == nullptr || on == impl_->head_fp32, "cuda train: set_head_fp32 must come before the first step");
  impl_->head_fp32 = on;
}
void DeviceTrainer::reduce_during_next_backward(TrainModel& m, dist::Communicator& comm) {
  Impl& I = *impl_;
  I.bind(m);
  if (comm.name() != "nccl") return;  // host communicators reduce the whole arena afterwards
  MOE_CHECK(I.overlap_comm == nullptr, "cuda train: reduce_during_next_backward twice before all_reduce_gradients");
  if (!I.comm_stream) check_cuda(cudaStreamCreateWithFlags(&I.comm_stream, cudaStreamNonBlocking), "cudaStreamCreate");
  if (!I.comm_event) check_cuda(cudaEventCreateWithFlags(&I.comm_event, cudaEventDisableTiming), "cudaEventCreate");
  I.overlap_comm = &comm;
  I.overlap_prev_stream = comm.stream();
  comm.set_stream(I.comm_stream);  // every collective of the step in one order on one stream, host-staged ones too
  I.overlap_armed = true;
  I.reduced.clear();
}

void DeviceTrainer::set_check_finite(bool on) { impl_->check_finite = on; }
void DeviceTrainer::set_host_reduce_piece(int64_t values) {
  MOE_CHECK(values > 0, "cuda train: the host all-reduce's piece must hold at least one value");
  if (impl_->reduce_host) cudaFreeHost(impl_->reduce_host);
  impl_->reduce_host = nullptr;  // reallocated at the next call
  impl_->reduce_piece = values;
}

void DeviceTrainer::push(TrainModel& m) {
  impl_->bound = nullptr;  // bind uploads everything again
  impl_->bind(m);
}

}  // namespace moe::train::cuda
