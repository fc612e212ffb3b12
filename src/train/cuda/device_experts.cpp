// The routed experts' FFN on the device over the expert-sorted rows (device_layer.cpp's moe_forward gathers
// them: expert e's rows are offsets[e] .. offsets[e+1] of xs [nK, D]). Two paths with the same maths
// (ffn.cpp's):
//  - grouped (BF16 and FP8, the default): xs, act and the gradients are rounded to BF16 once for all experts
//    (xs and act kept to the backward only as BF16; SwiGLU writes act, dgate and dup as BF16 directly, xs is
//    gathered as BF16), and each product is one grouped GEMM over the experts (grouped_gemm.h): gate and up
//    together, down; in the backward dact, dW_down, dxs (gate then up: they share their output) and dW_gate
//    with dW_up. SwiGLU and its backward run once over all rows. BF16 reads the expert weights where they lie
//    (the split masters' BF16 halves, device_impl.h); FP8 runs gate, up, down, dact and dxs on Fp8Experts
//    (fp8_experts.h: E4M3 operands, weights quantised once per optimizer step) and the weight gradients on
//    the BF16 grouped GEMM.
//  - per expert (any precision): one mm / mm_bwd per expert and product, the reference the grouped path is
//    tested against (the operands are the same BF16 values; only the FP32 summation order of cuBLAS's kernels
//    may differ).
#include <fmt/format.h>

#include "core/error.h"
#include "train/cuda/device_impl.h"

namespace moe::train::cuda {

const uint16_t* DeviceTrainer::Impl::bf16_copy(const std::string& slot, const float* src, int64_t count) {
  auto* b = static_cast<uint16_t*>(raw(slot, size_t(std::max<int64_t>(count, 1)) * sizeof(uint16_t)));
  to_bf16(b, src, count, stream());
  check_cuda(cudaGetLastError(), "to_bf16");
  return b;
}

std::vector<const uint16_t*> DeviceTrainer::Impl::expert_weights_bf16(const LayerParams& P) {
  const size_t E = P.experts.size();
  std::vector<const Param*> ps;
  ps.reserve(3 * E);
  for (const MlpParams& e : P.experts) ps.insert(ps.end(), {e.gate, e.up, e.down});
  std::vector<const uint16_t*> out(ps.size());
  if (split_bf16(ps[0])) {  // the masters' hi halves: nothing to convert (bind splits all of a layer's or none)
    for (size_t i = 0; i < ps.size(); ++i) {
      out[i] = split_bf16(ps[i]);
      MOE_CHECK(out[i] != nullptr, "cuda train: {} is not stored split as its layer's other experts are", ps[i]->name);
    }
    return out;
  }
  int64_t lo = offset.at(ps[0]), hi = lo, sum = 0;
  for (const Param* p : ps) {
    const int64_t o = offset.at(p), c = int64_t(p->w.size());
    lo = std::min(lo, o), hi = std::max(hi, o + c), sum += c;
  }
  if (hi - lo == sum) {  // the arena holds exactly these, in some order: one conversion
    const uint16_t* b = bf16_copy("bf.experts", W + lo, sum);
    for (size_t i = 0; i < ps.size(); ++i) out[i] = b + (offset.at(ps[i]) - lo);
    return out;
  }
  auto* b = static_cast<uint16_t*>(raw("bf.experts", size_t(sum) * sizeof(uint16_t)));
  int64_t at = 0;
  for (size_t i = 0; i < ps.size(); ++i) {
    const int64_t c = int64_t(ps[i]->w.size());
    to_bf16(b + at, w(ps[i]), c, stream());
    out[i] = b + at;
    at += c;
  }
  check_cuda(cudaGetLastError(), "to_bf16");
  return out;
}

void DeviceTrainer::Impl::prefetch_expert_layouts(const LayerParams& P, const DMoe& A, const ModelConfig& c) {
  const int64_t D = c.hidden_size, F = c.moe_intermediate_size;
  if (!P.is_moe || !fp8_grouped(D, F)) return;
  fp8_experts().prefetch_backward(fp8_layer(P, A, D, F));
}

Fp8Experts::Layer DeviceTrainer::Impl::fp8_layer(const LayerParams& P, const DMoe& A, int64_t D, int64_t F) {
  Fp8Experts::Layer L;
  L.key = &P;
  L.w.reserve(3 * P.experts.size());
  for (const MlpParams& e : P.experts) L.w.insert(L.w.end(), {w(e.gate), w(e.up), w(e.down)});
  L.offsets = &A.offsets;
  L.D = D, L.F = F;
  return L;
}

void DeviceTrainer::Impl::experts_forward(DMoe& A, const LayerParams& P, const std::string& key, int64_t D,
                                          int64_t F) {
  const cudaStream_t s = stream();
  const int64_t E = int64_t(P.experts.size()), nk = A.offsets[size_t(E)];
  A.experts.gate = f32(key + "egate", nk * F);
  A.experts.up = f32(key + "eup", nk * F);
  if (!use_grouped()) {
    A.experts.act = f32(key + "eact", nk * F);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t o = A.offsets[size_t(e)], m = A.load[size_t(e)];
      if (m == 0) continue;
      const MlpParams& ep = P.experts[size_t(e)];
      mm(A.experts.gate + o * F, A.xs + o * D, ep.gate, m, D, F, false);
      mm(A.experts.up + o * F, A.xs + o * D, ep.up, m, D, F, false);
      swiglu_forward(A.experts.act + o * F, A.experts.gate + o * F, A.experts.up + o * F, m * F, s);
      mm(A.eout + o * D, A.experts.act + o * F, ep.down, m, F, D, false);
    }
    return;
  }
  const ProfScope scope(prof, OpClass::ExpertGemm);
  const bool f8 = fp8_grouped(D, F);
  const Fp8Experts::Layer L8 = f8 ? fp8_layer(P, A, D, F) : Fp8Experts::Layer{};
  const std::vector<const uint16_t*> wb = f8 ? std::vector<const uint16_t*>{} : expert_weights_bf16(P);
  if (prec == GemmPrecision::Fp8 && !f8) bf16_flops += 4.0 * double(nk) * double(D) * double(F);
  const uint16_t* xb = A.xs_bf;  // gathered as BF16 (moe_forward), kept for dW_gate, dW_up
  if (f8) {
    fp8_experts().forward_gate_up(L8, xb, A.experts.gate, A.experts.up);
  } else {
    std::vector<GemmProblem> gu;
    for (int64_t e = 0; e < E; ++e) {
      const int64_t o = A.offsets[size_t(e)], m = A.load[size_t(e)];
      gu.push_back({A.experts.gate + o * F, xb + o * D, wb[size_t(3 * e)], m});
      gu.push_back({A.experts.up + o * F, xb + o * D, wb[size_t(3 * e + 1)], m});
    }
    egemm.run(GemmKind::Nt, gu, D, F, 0.0f);
  }
  // act only as BF16 (the down product's operand, kept for dW_down): no FP32 act, no conversion pass
  auto* ab = static_cast<uint16_t*>(raw(key + "act_bf", size_t(std::max<int64_t>(nk * F, 1)) * sizeof(uint16_t)));
  {
    const ProfScope other(prof, OpClass::Other);
    swiglu_forward_bf16(ab, A.experts.gate, A.experts.up, nk * F, s);
  }
  A.experts.act = nullptr;
  A.act_bf = ab;
  if (f8) {
    fp8_experts().forward_down(L8, ab, A.eout);
    return;
  }
  if (prec == GemmPrecision::Fp8) bf16_flops += 2.0 * double(nk) * double(D) * double(F);
  std::vector<GemmProblem> down;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t o = A.offsets[size_t(e)], m = A.load[size_t(e)];
    down.push_back({A.eout + o * D, ab + o * F, wb[size_t(3 * e + 2)], m});
  }
  egemm.run(GemmKind::Nt, down, F, D, 0.0f);
}

void DeviceTrainer::Impl::experts_backward(float* dxs, const float* dys, const uint16_t* dys_bf, const DMoe& A,
                                           const LayerParams& P, int64_t D, int64_t F) {
  const cudaStream_t s = stream();
  const int64_t E = int64_t(P.experts.size()), nk = A.offsets[size_t(E)];
  float* dact = f32("tmp.moe_dact", nk * F);
  if (!use_grouped()) {
    float* dgate = f32("tmp.moe_dgate", nk * F);  // written, every row (each belongs to an expert with load > 0)
    float* dup = f32("tmp.moe_dup", nk * F);
    for (int64_t e = 0; e < E; ++e) {
      const int64_t o = A.offsets[size_t(e)], m = A.load[size_t(e)];
      if (m == 0) continue;
      const MlpParams& ep = P.experts[size_t(e)];
      mm_bwd(dact + o * F, g(ep.down), dys + o * D, A.experts.act + o * F, ep.down, m, F, D, false, false);
      swiglu_backward(dgate + o * F, dup + o * F, dact + o * F, A.experts.gate + o * F, A.experts.up + o * F, m * F,
                      s, /*accumulate=*/false);
      mm_bwd(dxs + o * D, g(ep.gate), dgate + o * F, A.xs + o * D, ep.gate, m, D, F, false, /*add_dx=*/false);
      mm_bwd(dxs + o * D, g(ep.up), dup + o * F, A.xs + o * D, ep.up, m, D, F, false);
    }
    return;
  }
  const ProfScope scope(prof, OpClass::ExpertGemm);
  // After zero_grad the weight gradients are written (beta 0), not added to zeros; an expert without rows gets its
  // zeros here (the grouped GEMM leaves a problem without rows untouched).
  const bool fresh = take_fresh(P);
  const float beta_w = fresh ? 0.0f : 1.0f;
  if (fresh)
    for (int64_t e = 0; e < E; ++e)
      if (A.load[size_t(e)] == 0)
        for (const Param* p : {P.experts[size_t(e)].gate, P.experts[size_t(e)].up, P.experts[size_t(e)].down})
          check_cuda(cudaMemsetAsync(g(p), 0, p->w.size() * sizeof(float), s), "expert gradients");
  // Under FP8 (Fp8Experts where the widths allow) the input gradients' products are FP8 and the weight
  // gradients' BF16 (fp8_experts.h says why).
  const bool f8 = fp8_grouped(D, F);
  const Fp8Experts::Layer L8 = f8 ? fp8_layer(P, A, D, F) : Fp8Experts::Layer{};
  const std::vector<const uint16_t*> wb = f8 ? std::vector<const uint16_t*>{} : expert_weights_bf16(P);
  if (prec == GemmPrecision::Fp8) bf16_flops += 2.0 * double(nk) * double(D) * double(F) * (f8 ? 3 : 6);
  const uint16_t* dyb = dys_bf;
  const uint16_t* ab = A.act_bf;
  std::vector<GemmProblem> pa, pw;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t o = A.offsets[size_t(e)], m = A.load[size_t(e)];
    if (!f8) pa.push_back({dact + o * F, dyb + o * D, wb[size_t(3 * e + 2)], m});
    pw.push_back({g(P.experts[size_t(e)].down), dyb + o * D, ab + o * F, m});
  }
  if (f8)
    fp8_experts().backward_dact(L8, dyb, dact);
  else
    egemm.run(GemmKind::Nn, pa, F, D, 0.0f);
  egemm.run(GemmKind::Tn, pw, F, D, beta_w);
  // dgate and dup only as BF16 (the operands of dxs and of dW_gate, dW_up), written by SwiGLU's backward itself
  const size_t half_bytes = size_t(std::max<int64_t>(nk * F, 1)) * sizeof(uint16_t);
  auto* gb = static_cast<uint16_t*>(raw("bf.ex_dgate", half_bytes));
  auto* ub = static_cast<uint16_t*>(raw("bf.ex_dup", half_bytes));
  {
    const ProfScope other(prof, OpClass::Other);
    swiglu_backward_bf16(gb, ub, dact, A.experts.gate, A.experts.up, nk * F, s);
  }
  const uint16_t* xb = A.xs_bf;
  std::vector<GemmProblem> dg, du, dw;
  for (int64_t e = 0; e < E; ++e) {
    const int64_t o = A.offsets[size_t(e)], m = A.load[size_t(e)];
    const MlpParams& ep = P.experts[size_t(e)];
    if (!f8) {
      dg.push_back({dxs + o * D, gb + o * F, wb[size_t(3 * e)], m});
      du.push_back({dxs + o * D, ub + o * F, wb[size_t(3 * e + 1)], m});
    }
    dw.push_back({g(ep.gate), gb + o * F, xb + o * D, m});
    dw.push_back({g(ep.up), ub + o * F, xb + o * D, m});
  }
  if (f8) {
    fp8_experts().backward_dxs(L8, gb, ub, dxs);  // dxs = [dgate | dup] [W_gate ; W_up], one product
  } else {
    egemm.run(GemmKind::Nn, dg, D, F, 0.0f);  // dxs = dgate W_gate, then += dup W_up
    egemm.run(GemmKind::Nn, du, D, F, 1.0f);
  }
  egemm.run(GemmKind::Tn, dw, D, F, beta_w);
}

}  // namespace moe::train::cuda
