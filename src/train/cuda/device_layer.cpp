// One decoder layer on the device, forward with kept activations and backward: layer.cpp and ffn.cpp's maths
// over device buffers (see those files for the formulas). Backward ops add into their gradients, as there.
#include <algorithm>
#include <cstdio>
#include <optional>

#include "core/error.h"
#include "train/cuda/device_impl.h"

namespace moe::train::cuda {

namespace {
constexpr double kLatentNormEps = 1e-6;  // q_a_layernorm and kv_a_layernorm (layer.cpp)

RouterArgs router_args(const RouterConfig& r) {
  RouterArgs a;
  a.experts = r.experts, a.top_k = r.top_k, a.n_group = r.n_group, a.topk_group = r.topk_group;
  a.sigmoid = r.scoring == ScoringFunc::Sigmoid;
  a.noaux = r.method == TopkMethod::NoauxTc;
  a.group_limited = r.method != TopkMethod::Greedy;
  a.norm_topk_prob = r.norm_topk_prob;
  a.scaling = r.scaling;
  return a;
}

}  // namespace

void copy2d(float* dst, int64_t dst_pitch, const float* src, int64_t src_pitch, int64_t width, int64_t height,
            cudaStream_t s) {
  if (width == 0 || height == 0) return;
  check_cuda(cudaMemcpy2DAsync(dst, size_t(dst_pitch) * 4, src, size_t(src_pitch) * 4, size_t(width) * 4,
                               size_t(height), cudaMemcpyDeviceToDevice, s),
             "cudaMemcpy2DAsync");
}

void DeviceTrainer::Impl::rmsnorm(float* y, float* rstd, const float* x, const Param* p, int64_t n, int64_t d,
                                  double eps, uint16_t* y_bf) {
  rmsnorm_forward(y, rstd, x, w(p), n, d, float(eps), stream(), y_bf);
}

void DeviceTrainer::Impl::rope_apply(float* x, const int32_t* pos, int64_t n, int64_t heads, int64_t head_dim, int64_t off, float sign) {
  rope_rotate(x, n, heads, head_dim, off, pos, inv_freq, rope_half, float(rope.attn_factor), sign, stream());
}

AttnPrecision DeviceTrainer::Impl::attention_mode(int64_t dn, int64_t dr, int64_t dv) {
  if (attention_prec != AttnPrecision::Flash || attention_flash_supported(dn, dr, dv)) return attention_prec;
  if (!flash_fallback_noted)
    std::fprintf(stderr, "moe: note: --attention flash has no kernel for heads of (nope, rope, value) = (%lld, %lld, "
                 "%lld) (it has (128, 64, 128), (64, 32, 64), (32, 16, 32)); those layers run the bf16 GEMM attention\n",
                 static_cast<long long>(dn), static_cast<long long>(dr), static_cast<long long>(dv));
  flash_fallback_noted = true;
  return AttnPrecision::Bf16;
}

AttnFlash DeviceTrainer::Impl::attention_flash_scratch(int64_t b, int64_t t, int64_t H, int64_t dn, int64_t dr,
                                                       int64_t dv, bool backward) {
  AttnFlash f;
  auto half = [&](const char* key, int64_t count) { return static_cast<uint16_t*>(raw(key, size_t(count) * 2)); };
  const int64_t n = b * t;
  f.q = half("bf.att_q", n * H * (dn + dr));
  f.kv = half("bf.att_kv", n * H * (dn + dv));
  f.kr = half("bf.att_kr", n * dr);
  if (backward) {
    f.dout = half("bf.att_dout", n * H * dv);
    f.delta = f32("tmp.att_delta", b * H * t);
    f.dkr_part = f32("tmp.att_dkr_part", H * n * dr);
  }
  return f;
}

AttnBf16 DeviceTrainer::Impl::attention_bf16_scratch(AttnPrecision p, int64_t b, int64_t t, int64_t H, int64_t dn,
                                                    int64_t dr, int64_t dv, bool backward) {
  AttnBf16 bf;
  if (p != AttnPrecision::Bf16) return bf;
  auto half = [&](const char* key, int64_t count) { return static_cast<uint16_t*>(raw(key, size_t(count) * 2)); };
  const int64_t n = b * t;
  bf.q = half("bf.att_q", n * H * (dn + dr));
  bf.kv = half("bf.att_kv", n * H * (dn + dv));
  bf.kr = half("bf.att_kr", n * dr);
  bf.sq = half("bf.att_sq", b * H * t * t);
  if (backward) bf.dout = half("bf.att_dout", n * H * dv);
  return bf;
}

void DeviceTrainer::Impl::layer_forward(DLayer& A, const LayerParams& P, const LayerContext& ctx,
                                        const std::string& key, const float* x, int64_t b, int64_t t, float* out) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = b * t, D = c.hidden_size, H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank, ql = c.q_lora_rank, dq = dn + dr;
  const cudaStream_t s = stream();
  A.b = b, A.t = t, A.n = n, A.x = x;
  A.pos = positions(b, t);
  // a, qan and c are read only by GEMMs: BF16 only under BF16 GEMMs (Operand), FP32 otherwise.
  const bool bf = bf16_activations();
  A.a = bf ? nullptr : f32(key + "a", n * D);
  A.a_bf = bf ? bf16_buffer(key + "a_bf", n * D) : nullptr;
  A.a_rstd = f32(key + "a_rstd", n);
  rmsnorm(A.a, A.a_rstd, x, P.input_norm, n, D, c.rms_norm_eps, A.a_bf);
  const Operand a{A.a, A.a_bf};
  const AttnParams& W = P.attn;
  A.q = f32(key + "q", n * H * dq);
  if (ql > 0) {
    A.qa = f32(key + "qa", n * ql);
    A.qan = bf ? nullptr : f32(key + "qan", n * ql);
    A.qan_bf = bf ? bf16_buffer(key + "qan_bf", n * ql) : nullptr;
    A.qa_rstd = f32(key + "qa_rstd", n);
    mm(A.qa, a, W.q_a, n, D, ql, false);
    rmsnorm(A.qan, A.qa_rstd, A.qa, W.q_a_norm, n, ql, kLatentNormEps, A.qan_bf);
    mm(A.q, Operand{A.qan, A.qan_bf}, W.q_b, n, ql, H * dq, false);
  } else {
    mm(A.q, a, W.q_proj, n, D, H * dq, false);
  }
  rope_apply(A.q, A.pos, n, H, dq, dn, 1.0f);
  check_point(key, "q", A.q, n * H * dq);
  A.kva = f32(key + "kva", n * (r + dr));
  mm(A.kva, a, W.kv_a, n, D, r + dr, false, /*same_x=*/ql == 0);  // (q's product read a just before)
  A.c_in = f32(key + "c_in", n * r);
  A.kr = f32(key + "kr", n * dr);
  copy2d(A.c_in, r, A.kva, r + dr, r, n, s);
  copy2d(A.kr, dr, A.kva + r, r + dr, dr, n, s);
  A.c = bf ? nullptr : f32(key + "c", n * r);
  A.c_bf = bf ? bf16_buffer(key + "c_bf", n * r) : nullptr;
  A.c_rstd = f32(key + "c_rstd", n);
  rmsnorm(A.c, A.c_rstd, A.c_in, W.kv_a_norm, n, r, kLatentNormEps, A.c_bf);
  rope_apply(A.kr, A.pos, n, 1, dr, 0, 1.0f);
  A.kv = f32(key + "kv", n * H * (dn + dv));
  mm(A.kv, Operand{A.c, A.c_bf}, W.kv_b, n, r, H * (dn + dv), false);
  check_point(key, "kv", A.kv, n * H * (dn + dv));
  // The backward needs P: kept as probs [b, H, t, t] (GEMM attention) or recomputed from lse [b, H, t] and the
  // output att (flash).
  const AttnPrecision mode = attention_mode(dn, dr, dv);
  const AttnShape shape{b, t, H, dn, dr, dv, float(ctx.attn_scale), mode};
  A.att = f32(key + "att", n * H * dv);
  A.probs = A.lse = nullptr;
  prof.enter(OpClass::Attention);
  if (mode == AttnPrecision::Flash) {
    A.lse = f32(key + "lse", b * H * t);
    MOE_CHECK(attention_forward_flash(A.att, A.lse, A.q, A.kv, A.kr, shape,
                                      attention_flash_scratch(b, t, H, dn, dr, dv, false), s),
              "cuda train: the flash attention's forward failed to launch");
  } else {
    A.probs = f32(key + "probs", b * H * t * t);
    const AttnBf16 bf = attention_bf16_scratch(mode, b, t, H, dn, dr, dv, false);
    MOE_CHECK(attention_forward_gemm(cc.blas(), A.att, A.probs, A.q, A.kv, A.kr, shape, s, &bf),
              "cuda train: attention's cuBLAS GEMMs failed");
  }
  check_cuda(cudaGetLastError(), "attention_forward");
  prof.enter(OpClass::Other);
  check_point(key, "attention output", A.att, n * H * dv);
  // att: FP32 for the attention's backward, and under BF16 GEMMs its rounding once, kept for dW_o.
  A.att_bf = nullptr;
  if (bf) {
    A.att_bf = bf16_buffer(key + "att_bf", n * H * dv);
    const ProfScope scope(prof, OpClass::Gemm);  // the conversion o_proj's product made before
    to_bf16(A.att_bf, A.att, n * H * dv, s);
  }
  A.h = f32(key + "h", n * D);
  mm(A.h, Operand{A.att, A.att_bf}, W.o_proj, n, H * dv, D, false);
  add_strided(A.h, n * D, x, n * D, n * D, 1, s);
  check_point(key, "h (after attention)", A.h, n * D);
  // f: FP32 for the router, and under BF16 GEMMs its rounding for the shared or dense MLP and the gather;
  // under FP8 the rounding too where the routed experts run grouped (their gather takes BF16 rows in 16-byte
  // chunks; from FP32 it converts value by value, ~4x the time).
  A.f = f32(key + "f", n * D);
  const bool f_bf = bf || (P.is_moe && fp8_grouped(D, c.moe_intermediate_size));
  A.f_bf = f_bf ? bf16_buffer(key + "f_bf", n * D) : nullptr;
  A.f_rstd = f32(key + "f_rstd", n);
  rmsnorm(A.f, A.f_rstd, A.h, P.post_norm, n, D, c.rms_norm_eps, A.f_bf);
  if (P.is_moe)
    moe_forward(A.moe, P, ctx, key + "moe.", Operand{A.f, A.f_bf}, b, t, out);
  else
    mlp_forward(A.dense, P.dense, key + "mlp.", Operand{A.f, A.f_bf}, n, out);
  check_point(key, P.is_moe ? "MoE output" : "MLP output", out, n * D);
  add_strided(out, n * D, A.h, n * D, n * D, 1, s);
  check_cuda(cudaGetLastError(), "layer_forward");
}

void DeviceTrainer::Impl::layer_backward(float* dx, const float* dout, DLayer& A, const LayerParams& P,
                                         const LayerContext& ctx, const std::string& key) {
  (void)key;
  const ModelConfig& c = *ctx.config;
  const int64_t b = A.b, t = A.t, n = A.n, D = c.hidden_size, H = c.num_attention_heads, dn = c.qk_nope_head_dim,
                dr = c.qk_rope_head_dim, dv = c.v_head_dim, r = c.kv_lora_rank, ql = c.q_lora_rank, dq = dn + dr;
  const AttnParams& W = P.attn;
  const cudaStream_t s = stream();
  // FFN half: dh = dout + norm^T ffn^T dout
  float* dh = f32("tmp.dh", n * D);
  check_cuda(cudaMemcpyAsync(dh, dout, size_t(n * D) * 4, cudaMemcpyDeviceToDevice, s), "copy");
  float* df = zeros("tmp.df", n * D);
  if (P.is_moe)
    moe_backward(df, dout, A.moe, P, ctx, A.f, b, t);
  else
    mlp_backward(df, dout, A.dense, P.dense, n);
  rmsnorm_backward(dh, g(P.post_norm), df, A.h, w(P.post_norm), A.f_rstd, n, D, s);
  // Attention half
  float* datt = f32("tmp.datt", n * H * dv);
  mm_bwd(datt, g(W.o_proj), dh, Operand{A.att, A.att_bf}, W.o_proj, n, H * dv, D, false, false);
  float* dq_ = zeros("tmp.dq", n * H * dq);
  float* dkv = zeros("tmp.dkv", n * H * (dn + dv));
  float* dkr = zeros("tmp.dkr", n * dr);
  const AttnPrecision mode = attention_mode(dn, dr, dv);
  const AttnShape shape{b, t, H, dn, dr, dv, float(ctx.attn_scale), mode};
  prof.enter(OpClass::Attention);
  if (mode == AttnPrecision::Flash) {
    MOE_CHECK(A.lse != nullptr, "cuda train: the flash attention's backward without its forward's lse");
    MOE_CHECK(attention_backward_flash(dq_, dkv, dkr, datt, A.att, A.lse, A.q, A.kv, A.kr, shape,
                                       attention_flash_scratch(b, t, H, dn, dr, dv, true), s),
              "cuda train: the flash attention's backward failed to launch");
  } else {
    MOE_CHECK(A.probs != nullptr, "cuda train: the GEMM attention's backward without its forward's probabilities");
    float* ds = f32("tmp.ds", b * H * t * t);
    const AttnBf16 bf = attention_bf16_scratch(mode, b, t, H, dn, dr, dv, true);
    MOE_CHECK(attention_backward_gemm(cc.blas(), dq_, dkv, dkr, ds, datt, A.probs, A.q, A.kv, A.kr, shape, s, &bf),
              "cuda train: attention's cuBLAS GEMMs failed");
  }
  check_cuda(cudaGetLastError(), "attention_backward");
  prof.enter(OpClass::Other);
  // kv path
  float* dc = f32("tmp.dc", n * r);
  mm_bwd(dc, g(W.kv_b), dkv, Operand{A.c, A.c_bf}, W.kv_b, n, r, H * (dn + dv), false, false);
  float* dc_in = zeros("tmp.dc_in", n * r);
  rmsnorm_backward(dc_in, g(W.kv_a_norm), dc, A.c_in, w(W.kv_a_norm), A.c_rstd, n, r, s);
  rope_apply(dkr, A.pos, n, 1, dr, 0, -1.0f);
  float* dkva = f32("tmp.dkva", n * (r + dr));
  copy2d(dkva, r + dr, dc_in, r, r, n, s);
  copy2d(dkva + r, r + dr, dkr, dr, dr, n, s);
  float* da = f32("tmp.da", n * D);
  const Operand a{A.a, A.a_bf};
  mm_bwd(da, g(W.kv_a), dkva, a, W.kv_a, n, D, r + dr, false, false);
  // q path
  rope_apply(dq_, A.pos, n, H, dq, dn, -1.0f);
  if (ql > 0) {
    float* dqan = f32("tmp.dqan", n * ql);
    mm_bwd(dqan, g(W.q_b), dq_, Operand{A.qan, A.qan_bf}, W.q_b, n, ql, H * dq, false, false);
    float* dqa = zeros("tmp.dqa", n * ql);
    rmsnorm_backward(dqa, g(W.q_a_norm), dqan, A.qa, w(W.q_a_norm), A.qa_rstd, n, ql, s);
    mm_bwd(da, g(W.q_a), dqa, a, W.q_a, n, D, ql, false);
  } else {
    mm_bwd(da, g(W.q_proj), dq_, a, W.q_proj, n, D, H * dq, false, true, /*same_x=*/true);  // (kv_a's read a)
  }
  rmsnorm_backward(dx, g(P.input_norm), da, A.x, w(P.input_norm), A.a_rstd, n, D, s);
  add_strided(dx, n * D, dh, n * D, n * D, 1, s);
  check_cuda(cudaGetLastError(), "layer_backward");
}

void DeviceTrainer::Impl::mlp_forward(DMlp& A, const MlpParams& P, const std::string& key, Operand x, int64_t n,
                                      float* out) {
  const int64_t F = P.width, D = bound->config.hidden_size;
  A.x = x;
  A.gate = f32(key + "gate", n * F);
  A.up = f32(key + "up", n * F);
  mm(A.gate, x, P.gate, n, D, F, false);
  mm(A.up, x, P.up, n, D, F, false, /*same_x=*/true);
  // act is read only by GEMMs (down's product, dW_down): BF16 only under BF16 GEMMs
  A.act = nullptr, A.act_bf = nullptr;
  if (bf16_activations()) {
    auto* ab = bf16_buffer(key + "act_bf", n * F);
    swiglu_forward_bf16(ab, A.gate, A.up, n * F, stream());
    A.act_bf = ab;
  } else {
    A.act = f32(key + "act", n * F);
    swiglu_forward(A.act, A.gate, A.up, n * F, stream());
  }
  mm(out, Operand{A.act, A.act_bf}, P.down, n, F, D, false);
}

void DeviceTrainer::Impl::mlp_backward(float* dx, const float* dout, const DMlp& A, const MlpParams& P, int64_t n) {
  const int64_t F = P.width, D = bound->config.hidden_size;
  float* dact = f32("tmp.dact", n * F);
  mm_bwd(dact, g(P.down), dout, Operand{A.act, A.act_bf}, P.down, n, F, D, false, false);
  // dgate and dup are read only by GEMMs: BF16 only under BF16 GEMMs
  Operand dgate, dup;
  if (bf16_activations()) {
    uint16_t* gb = bf16_buffer("bf.dgate", n * F);
    uint16_t* ub = bf16_buffer("bf.dup", n * F);
    swiglu_backward_bf16(gb, ub, dact, A.gate, A.up, n * F, stream());
    dgate.bf16 = gb, dup.bf16 = ub;
  } else {
    float* gf = f32("tmp.dgate", n * F);
    float* uf = f32("tmp.dup", n * F);
    swiglu_backward(gf, uf, dact, A.gate, A.up, n * F, stream(), /*accumulate=*/false);
    dgate.f32 = gf, dup.f32 = uf;
  }
  mm_bwd(dx, g(P.gate), dgate, A.x, P.gate, n, D, F, false);
  mm_bwd(dx, g(P.up), dup, A.x, P.up, n, D, F, false, true, /*same_x=*/true);
}

void DeviceTrainer::Impl::moe_forward(DMoe& A, const LayerParams& P, const LayerContext& ctx, const std::string& key,
                                      Operand xo, int64_t b, int64_t t, float* out) {
  const float* x = f32_of(xo, "the MoE's input");  // the router and the gather read FP32
  const ModelConfig& c = *ctx.config;
  const int64_t n = b * t, D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok,
                F = c.moe_intermediate_size, nk = n * K;
  const cudaStream_t s = stream();
  const RouterArgs ra = router_args(ctx.router);
  MOE_CHECK(router_supported(ra), "train on cuda: a router of top-{} over {} groups is not supported (top-k <= 16, "
            "groups <= 64)", ra.top_k, ra.n_group);
  A.logits = f32(key + "logits", n * E);
  mm(A.logits, x, P.router, n, D, E, true);
  A.scores = f32(key + "scores", n * E);
  A.chosen = i32(key + "chosen", nk);
  A.weights = f32(key + "weights", nk);
  A.denom = f32(key + "denom", n);
  float* bias = nullptr;
  if (P.bias) {
    bias = f32(key + "bias", E);
    upload(bias, P.bias->value.data(), size_t(E) * 4);
  }
  {
    const ProfScope scope(prof, OpClass::Router);
    router_forward(A.scores, A.chosen, A.weights, A.denom, A.logits, bias, n, ra, s);
    check_cuda(cudaGetLastError(), "router_forward");
  }
  // The routing comes back to the host (sorted there by expert, tokens in order within an expert, as ffn.cpp):
  // copied into pinned memory behind an event, and waited for after the shared experts' FFN is enqueued, which does
  // not depend on it, so the GPU runs that FFN while the host waits and sorts (one idle gap a layer less).
  if (routing_host_cap < nk) {
    if (routing_host) check_cuda(cudaFreeHost(routing_host), "cudaFreeHost");
    routing_host = nullptr;
    check_cuda(cudaMallocHost(&routing_host, size_t(nk) * 4), "cudaMallocHost (routing)");
    routing_host_cap = nk;
  }
  if (!routing_event) check_cuda(cudaEventCreateWithFlags(&routing_event, cudaEventDisableTiming), "cudaEventCreate");
  check_cuda(cudaMemcpyAsync(routing_host, A.chosen, size_t(nk) * 4, cudaMemcpyDeviceToHost, s), "download");
  check_cuda(cudaEventRecord(routing_event, s), "cudaEventRecord");
  float* so = nullptr;
  if (P.shared.present()) {
    so = f32(key + "shared_out", n * D);
    mlp_forward(A.shared, P.shared, key + "shared.", xo, n, so);
  }
  std::optional<ProfScope> wait(std::in_place, prof, OpClass::HostWait);
  check_cuda(cudaEventSynchronize(routing_event), "routing");
  A.host_chosen.assign(routing_host, routing_host + nk);
  A.load.assign(size_t(E), 0);
  for (int32_t e : A.host_chosen) {
    MOE_CHECK(e >= 0 && e < E, "cuda train: the router chose expert {} of {}", e, E);
    ++A.load[size_t(e)];
  }
  A.offsets.assign(size_t(E + 1), 0);
  for (int64_t e = 0; e < E; ++e) A.offsets[size_t(e + 1)] = A.offsets[size_t(e)] + A.load[size_t(e)];
  std::vector<int64_t> cursor(A.offsets.begin(), A.offsets.end() - 1);
  A.host_rows.resize(size_t(nk));
  A.host_slots.resize(size_t(nk));
  A.host_pos.resize(size_t(nk));
  for (int64_t i = 0; i < n; ++i)
    for (int64_t j = 0; j < K; ++j) {
      const int64_t r = cursor[size_t(A.host_chosen[size_t(i * K + j)])]++;
      A.host_rows[size_t(r)] = int32_t(i);
      A.host_slots[size_t(r)] = int32_t(j);
      A.host_pos[size_t(i * K + j)] = int32_t(r);
    }
  A.rows = i32(key + "rows", nk);
  A.slots = i32(key + "slots", nk);
  A.pos = i32(key + "pos", nk);
  upload(A.rows, A.host_rows.data(), size_t(nk) * 4);
  upload(A.slots, A.host_slots.data(), size_t(nk) * 4);
  upload(A.pos, A.host_pos.data(), size_t(nk) * 4);
  wait.reset();
  A.eout = f32(key + "eout", nk * D);
  prof.enter(OpClass::MoeDispatch);
  if (use_grouped()) {  // gathered straight into BF16, the only form its readers (GEMMs) take, kept for dW_gate/up
    A.xs = nullptr;
    auto* xb = static_cast<uint16_t*>(raw(key + "xs_bf", size_t(std::max<int64_t>(nk * D, 1)) * sizeof(uint16_t)));
    if (xo.bf16)
      moe_gather_bf16_rows(xb, xo.bf16, A.rows, nk, D, s);
    else
      moe_gather_bf16(xb, x, A.rows, nk, D, s);
    A.xs_bf = xb;
  } else {
    A.xs = f32(key + "xs", nk * D);
    moe_gather(A.xs, x, A.rows, nk, D, s);
  }
  prof.enter(OpClass::Other);
  experts_forward(A, P, key, D, F);
  prof.enter(OpClass::MoeDispatch);
  moe_combine(out, A.eout, A.pos, A.weights, n, K, D, s);
  prof.enter(OpClass::Other);
  if (so) add_strided(out, n * D, so, n * D, n * D, 1, s);
  A.aux_slot = -1;
  if (ctx.seq_aux_alpha > 0) {
    A.frac = f32(key + "frac", b * E);
    const ProfScope scope(prof, OpClass::Router);
    balance_fractions(A.frac, A.chosen, b, t, ra, s);
    float* terms = f32("tmp.aux_terms", n);
    balance_terms(terms, A.scores, A.frac, b, t, ra, ctx.seq_aux_alpha, s);
    A.aux_slot = next_aux_slot++;
    sum_into(A.aux_slot, terms, n, false);
  }
  check_cuda(cudaGetLastError(), "moe_forward");
}

void DeviceTrainer::Impl::moe_backward(float* dx, const float* dout, const DMoe& A, const LayerParams& P,
                                       const LayerContext& ctx, const float* x, int64_t b, int64_t t) {
  const ModelConfig& c = *ctx.config;
  const int64_t n = b * t, D = c.hidden_size, E = c.n_routed_experts, K = c.num_experts_per_tok,
                F = c.moe_intermediate_size, nk = n * K;
  const cudaStream_t s = stream();
  if (P.shared.present()) mlp_backward(dx, dout, A.shared, P.shared, n);
  float* dweights = f32("tmp.moe_dweights", nk);
  prof.enter(OpClass::MoeDispatch);
  // The experts' output gradients: BF16 for the grouped GEMMs (their only readers), FP32 for the per-expert loop.
  float* dys = nullptr;
  uint16_t* dys_bf = nullptr;
  if (use_grouped()) {
    dys_bf = static_cast<uint16_t*>(raw("bf.ex_dy", size_t(std::max<int64_t>(nk * D, 1)) * sizeof(uint16_t)));
    moe_expert_dout_bf16(dys_bf, dweights, dout, A.eout, A.rows, A.slots, A.weights, nk, K, D, s);
  } else {
    dys = f32("tmp.moe_dy", nk * D);
    moe_expert_dout(dys, dweights, dout, A.eout, A.rows, A.slots, A.weights, nk, K, D, s);
  }
  prof.enter(OpClass::Other);
  float* dxs = f32("tmp.moe_dxs", nk * D);  // every row written (experts_backward: gate's product, then + up's)
  experts_backward(dxs, dys, dys_bf, A, P, D, F);
  prof.enter(OpClass::MoeDispatch);
  moe_scatter_add(dx, dxs, A.pos, n, K, D, s);
  const RouterArgs ra = router_args(ctx.router);
  float* dlogits = f32("tmp.moe_dlogits", n * E);
  prof.enter(OpClass::Router);
  router_backward(dlogits, dweights, A.scores, A.chosen, A.denom, ctx.seq_aux_alpha > 0 ? A.frac : nullptr, b, t, ra,
                  ctx.seq_aux_alpha, s);
  prof.enter(OpClass::Other);
  mm_bwd(dx, g(P.router), dlogits, x, P.router, n, D, E, true);
  check_cuda(cudaGetLastError(), "moe_backward");
}

}  // namespace moe::train::cuda
