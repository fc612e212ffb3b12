// The whole model on the device with its MTP module and the objective L = L_main + lambda L_mtp + L_bal: the
// twin of model.cpp's Pass over device buffers (see model.cpp for the formulas and the MTP's shifts).
#include <fmt/format.h>

#include <algorithm>

#include "core/error.h"
#include "train/cuda/device_impl.h"
#include "train/model.h"

namespace moe::train::cuda {

int32_t* DeviceTrainer::Impl::positions(int64_t b, int64_t t) {
  std::vector<int32_t> host(static_cast<size_t>(b * t));
  for (int64_t i = 0; i < b * t; ++i) host[size_t(i)] = int32_t(i % t);
  int32_t* p = i32(fmt::format("pos.{}", t), b * t);
  upload(p, host.data(), host.size() * 4);
  return p;
}

LossParts DeviceTrainer::Impl::forward(TrainModel& M, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                                       const Objective& obj, const std::vector<uint8_t>* mask, bool with_backward) {
  const ModelConfig& c = M.config;
  const int64_t D = c.hidden_size, V = c.vocab_size, n = b * t, L = c.num_hidden_layers;
  const cudaStream_t s = stream();
  main_ctx = make_layer_context(c, obj.seq_aux_alpha);
  mtp_ctx = make_layer_context(c, 0.0);
  rope = main_ctx.rope;
  rope_half = int64_t(rope.inv_freq.size());
  inv_freq = static_cast<double*>(raw("inv_freq", std::max<size_t>(1, rope.inv_freq.size()) * sizeof(double)));
  upload(inv_freq, rope.inv_freq.data(), rope.inv_freq.size() * sizeof(double));
  next_aux_slot = 2;  // 0: the main CE's sum, 1: the MTP CE's
  checks.clear();
  if (prec == GemmPrecision::Fp8)
    fp8().begin_pass(with_backward);  // the FP8 products' x^T kept for the backward
  A.b = b, A.t = t;
  A.ids = i32("ids", n);
  upload(A.ids, ids.data(), size_t(n) * 4);
  A.host_ids = ids;
  A.xs.resize(size_t(L + 1));
  for (int64_t l = 0; l <= L; ++l) A.xs[size_t(l)] = f32(fmt::format("x{}", l), n * D);
  embedding_forward(A.xs[0], A.ids, n, w(M.embed), D, s);
  check_point("", "the embedding's output", A.xs[0], n * D);
  A.layers.resize(size_t(L));
  for (int64_t l = 0; l < L; ++l)
    layer_forward(A.layers[size_t(l)], M.layers[size_t(l)], main_ctx, fmt::format("L{}.", l), A.xs[size_t(l)], b, t,
                  A.xs[size_t(l + 1)]);
  // The backward's first MoE layers: their experts' transposed layouts made while the heads run (where kept
  // per layer; the MTP module's after its forward below).
  if (with_backward && L > 0)
    prefetch_expert_layouts(M.layers[size_t(L - 1)], A.layers[size_t(L - 1)].moe, c);
  A.hn = f32("hn", n * D);
  A.hn_rstd = f32("hn_rstd", n);
  rmsnorm(A.hn, A.hn_rstd, A.xs[size_t(L)], M.final_norm, n, D, c.rms_norm_eps);

  const int64_t t1 = t - 1, n1 = b * t1;
  A.hsel = f32("hsel", n1 * D);
  copy2d(A.hsel, t1 * D, A.hn, t * D, t1 * D, b, s);
  const int64_t t2 = t - 2, n2 = M.has_mtp ? b * t2 : 0;
  float* logits = f32("logits", std::max(n1, n2) * V);  // both heads' in turn
  int64_t c1 = 0;
  const std::vector<int32_t> tg1 = masked_targets(ids, mask, b, t, t1, 1, &c1);
  const double d1 = double(std::max<int64_t>(c1, 1));
  A.dsel = with_backward ? f32("grad.sel", n1 * D) : nullptr;
  head_loss(M, logits, A.hsel, n1, tg1, float(1.0 / d1), 0, "the main head's logits", A.dsel);

  double d2 = 1;
  if (M.has_mtp) {
    const std::vector<int32_t> next = shifted_ids(ids, b, t, t2, 1);
    A.next = i32("next", n2);
    upload(A.next, next.data(), next.size() * 4);
    A.host_next = next;
    A.e = f32("mtp.e", n2 * D);
    A.en = f32("mtp.en", n2 * D);
    A.e_rstd = f32("mtp.e_rstd", n2);
    embedding_forward(A.e, A.next, n2, w(M.embed), D, s);
    rmsnorm(A.en, A.e_rstd, A.e, M.enorm, n2, D, c.rms_norm_eps);
    A.h2 = f32("mtp.h2", n2 * D);
    copy2d(A.h2, t2 * D, A.hn, t * D, t2 * D, b, s);
    A.hh = f32("mtp.hh", n2 * D);
    A.hh_rstd = f32("mtp.hh_rstd", n2);
    rmsnorm(A.hh, A.hh_rstd, A.h2, M.hnorm, n2, D, c.rms_norm_eps);
    A.cat = f32("mtp.cat", n2 * 2 * D);
    copy2d(A.cat, 2 * D, A.en, D, D, n2, s);
    copy2d(A.cat + D, 2 * D, A.hh, D, D, n2, s);
    A.m = f32("mtp.m", n2 * D);
    mm(A.m, A.cat, M.eh_proj, n2, 2 * D, D, false);
    A.y = f32("mtp.y", n2 * D);
    layer_forward(A.mtp, M.mtp_layer, mtp_ctx, "mtp.", A.m, b, t2, A.y);
    if (with_backward) prefetch_expert_layouts(M.mtp_layer, A.mtp.moe, c);
    A.yn = f32("mtp.yn", n2 * D);
    A.yn_rstd = f32("mtp.yn_rstd", n2);
    rmsnorm(A.yn, A.yn_rstd, A.y, M.mtp_norm, n2, D, c.rms_norm_eps);
    int64_t c2 = 0;
    const std::vector<int32_t> tg2 = masked_targets(ids, mask, b, t, t2, 2, &c2);
    d2 = double(std::max<int64_t>(c2, 1));
    A.dyn = with_backward ? f32("grad.yn", n2 * D) : nullptr;
    head_loss(M, logits, A.yn, n2, tg2, float(obj.mtp_lambda / d2), 1, "the MTP module's logits", A.dyn);
  }
  const std::vector<double> sc = read_scalars(next_aux_slot);
  if (check_finite) {
    throw_if_nonfinite(sc, "forward");
    MOE_CHECK(std::isfinite(sc[0]) && (!M.has_mtp || std::isfinite(sc[1])),
              "train: the forward pass's cross-entropy is not finite (--check-finite)");
  }
  LossParts parts;
  parts.main_ce = sc[0] / d1;
  parts.mtp_ce = M.has_mtp ? sc[1] / d2 : 0.0;
  for (const DLayer& la : A.layers)
    if (la.moe.aux_slot >= 0) parts.seq_aux += sc[size_t(la.moe.aux_slot)];
  parts.loss = parts.main_ce + obj.mtp_lambda * parts.mtp_ce + parts.seq_aux;
  return parts;
}

void DeviceTrainer::Impl::head_loss(const TrainModel& M, float* logits, const float* h, int64_t rows,
                                    const std::vector<int32_t>& targets, float dscale, int slot, const char* what,
                                    float* dh) {
  const int64_t D = M.config.hidden_size, V = M.config.vocab_size;
  mm_at(head_gemm(), logits, h, M.head, rows, D, V, OpClass::HeadGemm);
  check_point("", what, logits, rows * V);
  int32_t* tg = i32(fmt::format("targets{}", slot + 1), rows);
  upload(tg, targets.data(), targets.size() * 4);
  float* loss = f32(fmt::format("loss{}", slot + 1), rows);
  // d loss / d logits: in place, or for a BF16 head straight into the BF16 operand of its backward products
  uint16_t* dlogits_bf = dh && head_gemm() == GemmPrecision::Bf16 ? bf16_buffer("bf.dy", rows * V) : nullptr;
  const Operand dlogits = dlogits_bf ? Operand{nullptr, dlogits_bf} : Operand{logits};
  prof.enter(OpClass::Loss);
  cross_entropy(logits, loss, tg, rows, V, dscale, stream(), dlogits_bf);
  check_cuda(cudaGetLastError(), "cross_entropy");
  prof.enter(OpClass::Other);
  sum_into(slot, loss, rows, false);
  if (dh) mm_bwd_at(head_gemm(), dh, g(M.head), dlogits, h, M.head, rows, D, V, false, OpClass::HeadGemm);
}

void DeviceTrainer::Impl::backward(TrainModel& M) {
  const ModelConfig& c = M.config;
  const int64_t b = A.b, t = A.t, D = c.hidden_size, n = b * t, L = c.num_hidden_layers;
  const cudaStream_t s = stream();
  float* dhn = zeros("grad.hn", n * D);
  checks.clear();
  next_aux_slot = 0;  // (the forward's scalars were read)
  if (M.has_mtp) {
    const int64_t t2 = t - 2, n2 = b * t2;
    float* dy = zeros("grad.y", n2 * D);
    rmsnorm_backward(dy, g(M.mtp_norm), A.dyn, A.y, w(M.mtp_norm), A.yn_rstd, n2, D, s);
    float* dm = zeros("grad.m", n2 * D);
    layer_backward(dm, dy, A.mtp, M.mtp_layer, mtp_ctx, "mtp.");
    check_point("mtp.", "input gradient", dm, n2 * D);
    float* dcat = f32("grad.cat", n2 * 2 * D);
    mm_bwd(dcat, g(M.eh_proj), dm, A.cat, M.eh_proj, n2, 2 * D, D, false, false);
    float* den = f32("grad.en", n2 * D);
    float* dhh = f32("grad.hh", n2 * D);
    copy2d(den, D, dcat, 2 * D, D, n2, s);
    copy2d(dhh, D, dcat + D, 2 * D, D, n2, s);
    float* de = zeros("grad.e", n2 * D);
    rmsnorm_backward(de, g(M.enorm), den, A.e, w(M.enorm), A.e_rstd, n2, D, s);
    embedding_grad(g(M.embed), A.host_next, de, D, "emb.mtp");
    float* dh2 = zeros("grad.h2", n2 * D);
    rmsnorm_backward(dh2, g(M.hnorm), dhh, A.h2, w(M.hnorm), A.hh_rstd, n2, D, s);
    add_strided(dhn, t * D, dh2, t2 * D, t2 * D, b, s);
  }
  const int64_t t1 = t - 1, n1 = b * t1;
  check_point("", "the main head's input gradient", A.dsel, n1 * D);  // (made by the forward)
  add_strided(dhn, t * D, A.dsel, t1 * D, t1 * D, b, s);
  std::string cur = "grad.x0", other = "grad.x1";
  float* dx = zeros(cur, n * D);
  rmsnorm_backward(dx, g(M.final_norm), dhn, A.xs[size_t(L)], w(M.final_norm), A.hn_rstd, n, D, s);
  for (int64_t l = L - 1; l >= 0; --l) {
    if (l > 0) prefetch_expert_layouts(M.layers[size_t(l - 1)], A.layers[size_t(l - 1)].moe, c);
    float* dprev = zeros(other, n * D);
    const std::string key = fmt::format("L{}.", l);
    layer_backward(dprev, dx, A.layers[size_t(l)], M.layers[size_t(l)], main_ctx, key);
    reduce_layer(l);  // data parallelism, the step's last micro-batch: its gradients travel while l - 1 runs
    check_point(key, "input gradient", dprev, n * D);
    std::swap(cur, other);
    dx = dprev;
  }
  embedding_grad(g(M.embed), A.host_ids, dx, D, "emb.main");
  overlap_armed = false;  // this backward's layers are on their way; all_reduce_gradients reduces the rest
  check_cuda(cudaGetLastError(), "backward");
  if (check_finite) throw_if_nonfinite(read_scalars(next_aux_slot), "backward");
}

void DeviceTrainer::Impl::embedding_grad(float* dtable, const std::vector<int32_t>& ids, const float* dout, int64_t d,
                                         const std::string& key) {
  std::vector<int32_t> order(ids.size()), seg_id, seg_start;
  for (size_t i = 0; i < ids.size(); ++i) order[i] = int32_t(i);
  std::stable_sort(order.begin(), order.end(), [&](int32_t a, int32_t b) { return ids[size_t(a)] < ids[size_t(b)]; });
  for (size_t r = 0; r < order.size(); ++r)
    if (r == 0 || ids[size_t(order[r])] != ids[size_t(order[r - 1])]) {
      seg_id.push_back(ids[size_t(order[r])]);
      seg_start.push_back(int32_t(r));
    }
  seg_start.push_back(int32_t(order.size()));
  const int64_t segs = int64_t(seg_id.size());
  int32_t* g_id = i32(key + ".seg_id", std::max<int64_t>(segs, 1));
  int32_t* g_start = i32(key + ".seg_start", segs + 1);
  int32_t* g_order = i32(key + ".order", std::max<int64_t>(int64_t(order.size()), 1));
  upload(g_id, seg_id.data(), seg_id.size() * 4);
  upload(g_start, seg_start.data(), seg_start.size() * 4);
  upload(g_order, order.data(), order.size() * 4);
  embedding_backward_sorted(dtable, g_id, g_start, segs, g_order, dout, d, stream());
  check_cuda(cudaGetLastError(), "embedding_backward_sorted");
}

std::map<std::string, std::vector<int32_t>> DeviceTrainer::last_routing(const TrainModel& M) const {
  std::map<std::string, std::vector<int32_t>> out;
  const Impl& I = *impl_;
  for (size_t l = 0; l < I.A.layers.size() && l < M.layers.size(); ++l)
    if (M.layers[l].is_moe) out[M.layers[l].gate_name] = I.A.layers[l].moe.host_chosen;
  if (M.has_mtp && M.mtp_layer.is_moe) out[M.mtp_layer.gate_name] = I.A.mtp.moe.host_chosen;
  return out;
}

void DeviceTrainer::Impl::loads(const TrainModel& M, ExpertLoads* out) const {
  if (!out) return;
  for (size_t l = 0; l < A.layers.size(); ++l)
    if (M.layers[l].is_moe) (*out)[M.layers[l].gate_name] = A.layers[l].moe.load;
  if (M.has_mtp && M.mtp_layer.is_moe) (*out)[M.mtp_layer.gate_name] = A.mtp.moe.load;
}

}  // namespace moe::train::cuda
