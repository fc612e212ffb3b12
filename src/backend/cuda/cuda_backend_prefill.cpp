// The CUDA backend's prefill paths (many tokens per forward):
//   gemm / gemm_rounded  F32 activations rounded to BF16 (hi + lo in split mode), cuBLAS GEMMs with F32
//   output. swiglu_gemm          dense SwiGLU MLP: gate + up in one grouped-GEMM launch with the SwiGLU in
//   its epilogue
//                        (h stays BF16, never F32 in memory), down on cuBLAS.
//   moe_expert_gemms     routed experts: two grouped-GEMM launches per layer (moe_gemm.cu) over moe_plan's
//   work
//                        items: gate + up with the token rows gathered inside the kernel, down with its rows
//                        scattered back to assignment order. No per-expert launches, and for BF16 experts no
//                        host synchronisation.
//   mla_attention_prefill MLA in the expanded form (mla_prefill.cu): context latents gathered from the paged
//                        cache, k_nope / v for every head from one GEMM against kv_b, then flash attention.
#include <algorithm>
#include <cstring>
#include <string>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "core/error.h"

namespace moe {

using cuda::check;
using cuda::ref;

namespace {

const uint16_t* bf16_ptr(const Tensor& t) { return t.data() ? t.as<const uint16_t>() : nullptr; }

// The sequences of a batch as the expanded MLA sees them: each sequence with new tokens contributes its
// context rows 0 .. max position (gathered contiguously: rows offs[i] ..), and its tokens in tiles of up to
// kMlaPrefillRows, sorted by position, heaviest tiles first.
struct MlaPrefillPlan {
  std::vector<int32_t> seqs, lens, offs;
  std::vector<int32_t> tiles;  // [n, 4]: first context row, first qlist entry, count, keys (max position + 1)
  std::vector<int32_t> qlist;
  int64_t rows = 0;
  int32_t max_len = 0, max_new = 0;  // longest context, most new tokens of one sequence
  double expanded_flops = 0.0, absorbed_flops = 0.0;
};

MlaPrefillPlan plan_mla_prefill(const BatchPlan& plan, int64_t H, int64_t dn, int64_t dr, int64_t dv,
                                int64_t r, bool with_tiles) {
  MlaPrefillPlan mp;
  const int64_t T = plan.num_tokens(), S = plan.num_seqs();
  std::vector<std::vector<int32_t>> toks(static_cast<size_t>(S));
  for (int64_t t = 0; t < T; ++t) toks[size_t(plan.token_seq[size_t(t)])].push_back(int32_t(t));
  double keys = 0.0;
  for (int64_t s = 0; s < S; ++s) {
    std::vector<int32_t>& tk = toks[size_t(s)];
    if (tk.empty()) continue;
    int32_t len = 0;
    for (int32_t t : tk) {
      len = std::max(len, plan.positions[size_t(t)] + 1);
      keys += double(plan.positions[size_t(t)]) + 1.0;
    }
    mp.seqs.push_back(int32_t(s));
    mp.lens.push_back(len);
    mp.offs.push_back(int32_t(mp.rows));
    mp.rows += len;
    mp.max_len = std::max(mp.max_len, len);
    mp.max_new = std::max(mp.max_new, int32_t(tk.size()));
    if (!with_tiles) continue;
    std::stable_sort(tk.begin(), tk.end(), [&](int32_t a, int32_t b) {
      return plan.positions[size_t(a)] < plan.positions[size_t(b)];
    });
    for (size_t i = 0; i < tk.size(); i += cuda::kMlaPrefillRows) {
      const size_t n = std::min<size_t>(cuda::kMlaPrefillRows, tk.size() - i);
      mp.tiles.insert(mp.tiles.end(), {mp.offs.back(), int32_t(mp.qlist.size() + i), int32_t(n),
                                       plan.positions[size_t(tk[i + n - 1])] + 1});
    }
    mp.qlist.insert(mp.qlist.end(), tk.begin(), tk.end());
  }
  // Tensor-core work of the two forms (multiply-adds x 2), for the choice between them.
  mp.expanded_flops =
      2.0 * double(mp.rows) * double(H * r * (dn + dv)) + 2.0 * keys * double(H * (dn + dr + dv));
  mp.absorbed_flops = 2.0 * double(T) * double(H * r * (dn + dv)) + 2.0 * keys * double(H * (2 * r + dr));
  if (with_tiles) {  // heaviest first, so the long causal tiles do not end up in the last wave
    const size_t n = mp.tiles.size() / 4;
    std::vector<size_t> order(n);
    for (size_t i = 0; i < n; ++i) order[i] = i;
    std::stable_sort(order.begin(), order.end(),
                     [&](size_t a, size_t b) { return mp.tiles[4 * a + 3] > mp.tiles[4 * b + 3]; });
    std::vector<int32_t> sorted;
    sorted.reserve(mp.tiles.size());
    for (size_t i : order)
      sorted.insert(sorted.end(), mp.tiles.begin() + 4 * i, mp.tiles.begin() + 4 * i + 4);
    mp.tiles.swap(sorted);
  }
  return mp;
}

}  // namespace

// ---- GEMMs
// ---------------------------------------------------------------------------------------------------

cuda::Fp8Gemm& CudaBackend::fp8_gemm() {
  if (!fp8_) fp8_ = std::make_unique<cuda::Fp8Gemm>(stream_);
  return *fp8_;
}

const float* CudaBackend::fp8_weight_scales(const float* s, int64_t N, int64_t K, Tensor& tmp) {
  const int64_t nb = (N + 127) / 128, kb = (K + 127) / 128, ld = cuda::fp8_scale_ld(K);
  if (ld == kb) return s;
  tmp = scratch(DType::F32, {nb, ld});
  cuda::pad_scales(s, int32_t(nb), int32_t(kb), int32_t(ld), tmp.as<float>(), stream_);
  return tmp.as<const float>();
}

CudaBackend::Fp8Activations CudaBackend::quantize_activations(const float* x, int64_t ldx, int64_t T,
                                                              int64_t K, bool pow2_scales,
                                                              const uint16_t* x_bf16, bool zero_padding) {
  // cuBLASLt takes row counts that are multiples of 4: T4 rows, the padding rows zero (unless !zero_padding).
  Fp8Activations a;
  a.T = T;
  a.T4 = (T + 3) / 4 * 4;
  a.K = K;
  a.pow2_scales = pow2_scales;
  a.q = scratch(DType::U8, {a.T4, K});
  a.s = scratch(DType::F32, {(K + 127) / 128, a.T4});
  if (a.T4 != T && zero_padding)
    check(cudaMemsetAsync(a.q.as<uint8_t>() + T * K, 0, size_t((a.T4 - T) * K), stream_), "memset (FP8 padding rows)");
  cuda::Fp8QuantParams q;
  q.x = x_bf16 ? nullptr : x;
  q.x_bf16 = x_bf16;
  q.ldx = ldx;
  q.M = T;
  q.K = K;
  q.q = a.q.as<uint8_t>();
  q.ldq = K;
  q.scales = a.s.as<float>();
  q.pow2_scales = pow2_scales;  // ue8m0 models: activation scales rounded up to powers of two too
  cuda::quantize_fp8(q, stream_);
  return a;
}

void CudaBackend::gemm_fp8(const Fp8Activations& x, const Weight& w, float* out) {
  const int64_t N = w.rows(), K = w.cols(), T = x.T, T4 = x.T4;
  MOE_CHECK(x.K == K && x.pow2_scales == w.pow2_scales, "gemm_fp8: activations of {} columns for a weight of {}",
            x.K, K);
  Tensor wst, otmp;
  if (T4 != T) otmp = scratch(DType::F32, {T4, N});  // the output through [T4, N] when T is not a multiple of 4
  cuda::Fp8GemmArgs a;
  a.x = x.q.as<const uint8_t>();
  a.xs = x.s.as<const float>();
  a.w = static_cast<const uint8_t*>(w.w.data);
  a.ws = fp8_weight_scales(w.scale_inv.as<const float>(), N, K, wst);
  a.out = T4 == T ? out : otmp.as<float>();
  a.T = T4;
  a.N = N;
  a.K = K;
  a.ldo = N;
  fp8_gemm().run(a);
  if (T4 != T)
    check(cudaMemcpyAsync(out, otmp.data(), size_t(T * N) * 4, cudaMemcpyDeviceToDevice, stream_), "FP8 GEMM rows");
}

void CudaBackend::gemm_fp8(const float* x, int64_t ldx, const Weight& w, float* out, int64_t T) {
  gemm_fp8(quantize_activations(x, ldx, T, w.cols(), w.pow2_scales), w, out);
}

CudaBackend::Bf16Activations CudaBackend::round_activations(const float* x, int64_t T, int64_t K) {
  Bf16Activations a;
  a.hi = scratch(DType::BF16, {T, K});
  if (split()) a.lo = scratch(DType::BF16, {T, K});
  cuda::f32_to_bf16(x, a.hi.as<uint16_t>(), T * K, stream_, split() ? a.lo.as<uint16_t>() : nullptr);
  return a;
}

void CudaBackend::gemm(const float* x, const Weight& w, float* out, int64_t T) {
  const int64_t K = w.cols();
  if (fp8_gemm_ok(w)) return gemm_fp8(x, K, w, out, T);
  const Bf16Activations xa = round_activations(x, T, K);
  gemm_rounded(xa.hi_data(), xa.lo_data(), w, out, T);
}

void CudaBackend::gemm_rounded(const uint16_t* x_hi, const uint16_t* x_lo, const Weight& w, float* out,
                               int64_t T) {
  const int64_t N = w.rows(), K = w.cols();
  const uint16_t* wb = static_cast<const uint16_t*>(w.w.data);
  Tensor wtmp, wlo;
  if (w.w.dtype != DType::BF16) {
    wtmp = scratch(DType::BF16, {N, K});
    if (x_lo) wlo = scratch(DType::BF16, {N, K});
    cuda::weight_to_bf16(ref(w), wtmp.as<uint16_t>(), stream_, x_lo ? wlo.as<uint16_t>() : nullptr);
    wb = wtmp.as<const uint16_t>();
  }
  cuda::gemm_bf16(cublas_, x_hi, wb, out, T, N, K);
  if (x_lo) {
    cuda::gemm_bf16(cublas_, x_lo, wb, out, T, N, K, 1.0f);
    if (wlo.data()) cuda::gemm_bf16(cublas_, x_hi, wlo.as<const uint16_t>(), out, T, N, K, 1.0f);
  }
}

// ---- Dense SwiGLU MLP
// ------------------------------------------------------------------------------------------

bool CudaBackend::swiglu_gemm_ok(int64_t T, const MlpWeights& mlp) const {
  return use_gemm(T, mlp.gate) && gemm_ok(mlp.up) && gemm_ok(mlp.down);
}

void CudaBackend::swiglu_gemm(const TensorView& x, const MlpWeights& mlp, const TensorView& out) {
  const int64_t T = x.rows(), D = x.row_size(), I = mlp.gate.rows();
  const bool fp8 = fp8_gemm_ok(mlp.gate) && fp8_gemm_ok(mlp.up) && fp8_gemm_ok(mlp.down);
  const bool fused = !fp8 && mlp.up.w.dtype == mlp.gate.w.dtype && mlp.up.rows() == I &&
                     mlp.up.cols() == D && D % 8 == 0 && I % 8 == 0;
  if (fp8 && mlp.gate.pow2_scales == mlp.up.pow2_scales && mlp.up.rows() == I && mlp.up.cols() == D &&
      cuda::grouped_gemm_fp8_shape_ok(I, D)) {
    // FP8 W8A8: x quantised once, gate + up in one launch of the grouped FP8 GEMM as a single expert with the
    // SwiGLU in its epilogue (h BF16 with the 128-row CTAs, else F32; no gate / up products in memory), then
    // down on the FP8 GEMM.
    const Fp8Activations xq = quantize_activations(x.as<const float>(), D, T, D, mlp.gate.pow2_scales);
    const int32_t cta_rows = T <= 64 ? 64 : 128;
    const bool hb = cta_rows == 128;
    Tensor h = scratch(hb ? DType::BF16 : DType::F32, {T, I});
    cuda::GroupedGemmFp8Params p;
    p.M = int32_t(T);
    p.K = int32_t(D);
    p.N = int32_t(I);
    p.a = xq.q.as<const uint8_t>();
    p.lda = D;
    p.as = xq.s.as<const float>();
    p.ld_as = xq.T4;
    p.wdirect[0] = mlp.gate.w.data;
    p.wdirect[1] = mlp.up.w.data;
    p.wdirect[2] = mlp.gate.scale_inv.data;
    p.wdirect[3] = mlp.up.scale_inv.data;
    p.swiglu = true;
    if (hb)
      p.h_bf16 = h.as<uint16_t>();
    else
      p.h = h.as<float>();
    p.ldh = I;
    p.cta_rows = cta_rows;
    cuda::grouped_gemm_fp8(p, int32_t((T + cuda::kGroupedRows - 1) / cuda::kGroupedRows), stream_);
    if (hb)
      gemm_fp8(quantize_activations(nullptr, I, T, I, mlp.down.pow2_scales, h.as<const uint16_t>()), mlp.down,
               out.as<float>());
    else
      gemm(h.as<const float>(), mlp.down, out.as<float>(), T);
    return;
  }
  if (!fused) {  // shapes the grouped kernels do not take: F32 gate and up products, silu_mul, down
    Tensor h = scratch(DType::F32, {T, I}), u = scratch(DType::F32, {T, I});
    gemm(x.as<const float>(), mlp.gate, h.as<float>(), T);
    gemm(x.as<const float>(), mlp.up, u.as<float>(), T);
    cuda::silu_mul(h.as<const float>(), u.as<const float>(), h.as<float>(), T * I, stream_);
    gemm(h.as<const float>(), mlp.down, out.as<float>(), T);
    return;
  }
  const bool sp = split(), wsplit = sp && mlp.gate.w.dtype != DType::BF16;
  const Bf16Activations xa = round_activations(x.as<const float>(), T, D);
  // Weight slots: 0 gate, 1 up (BF16, dequantised if stored otherwise), 3 and 4 their split remainders.
  cuda::GroupedGemmParams p;
  Tensor wtmp[2], wlo[2];
  const Weight* ws[2] = {&mlp.gate, &mlp.up};
  for (int j = 0; j < 2; ++j) {
    if (ws[j]->w.dtype == DType::BF16) {
      p.wdirect[j] = ws[j]->w.data;
      continue;
    }
    wtmp[j] = scratch(DType::BF16, {I, D});
    if (wsplit) wlo[j] = scratch(DType::BF16, {I, D});
    cuda::weight_to_bf16(ref(*ws[j]), wtmp[j].as<uint16_t>(), stream_,
                         wsplit ? wlo[j].as<uint16_t>() : nullptr);
    p.wdirect[j] = wtmp[j].data();
    if (wsplit) p.wdirect[3 + j] = wlo[j].data();
  }
  p.M = int32_t(T);
  p.K = int32_t(D);
  p.N = int32_t(I);
  p.lda = D;
  p.swiglu = true;
  p.a[0] = xa.hi_data();
  p.bmat[0][0] = 0;
  p.bmat[0][1] = 1;
  if (sp) {  // x_lo W, then x W_lo
    p.nseg = 2;
    p.a[1] = xa.lo_data();
    p.bmat[1][0] = 0;
    p.bmat[1][1] = 1;
    if (wsplit) {
      p.nseg = 3;
      p.a[2] = xa.hi_data();
      p.bmat[2][0] = 3;
      p.bmat[2][1] = 4;
    }
  }
  Tensor hb = scratch(DType::BF16, {T, I}), hl;
  if (sp) hl = scratch(DType::BF16, {T, I});
  p.h = hb.as<uint16_t>();
  p.h_lo = sp ? hl.as<uint16_t>() : nullptr;
  p.ldh = I;
  cuda::grouped_gemm(p, int32_t((T + cuda::kGroupedRows - 1) / cuda::kGroupedRows), stream_);
  gemm_rounded(hb.as<const uint16_t>(), bf16_ptr(hl), mlp.down, out.as<float>(), T);
}

// ---- Routed experts
// ------------------------------------------------------------------------------------------

void CudaBackend::moe_expert_gemms(const TensorView& x, const PreparedExperts& prep, const Tensor& perm,
                                   const Tensor& items, int64_t n_items, const Tensor& counts, int64_t T,
                                   int64_t K, const Tensor& y) {
  const int64_t D = prep.hidden, I = prep.inner, TK = T * K;
  const int32_t E = int32_t(counts.numel());
  const bool sp = split(), wsplit = sp && prep.dtype != DType::BF16;
  const Bf16Activations xa = round_activations(x.as<const float>(), T, D);
  Tensor hb = scratch(DType::BF16, {TK, I}), hl;
  if (sp) hl = scratch(DType::BF16, {TK, I});

  // gate + up: h[i] = silu(x[perm[i] / K] Wg^T) * (x[perm[i] / K] Wu^T), sorted rows.
  cuda::GroupedGemmParams up;
  up.items = items.as<const int32_t>();
  up.a_rows = perm.as<const int32_t>();
  up.a_div = int32_t(K);
  up.lda = D;
  up.K = int32_t(D);
  up.N = int32_t(I);
  up.swiglu = true;
  up.h = hb.as<uint16_t>();
  up.h_lo = sp ? hl.as<uint16_t>() : nullptr;
  up.ldh = I;
  // down: y[perm[i]] = h[i] Wd^T, back in assignment order for the combine.
  cuda::GroupedGemmParams down;
  down.items = items.as<const int32_t>();
  down.lda = I;
  down.K = int32_t(I);
  down.N = int32_t(D);
  down.y = y.as<float>();
  down.y_rows = perm.as<const int32_t>();
  down.ldy = D;
  // Segments: (x, W); split: + (x_lo, W); split with dequantised weights: + (x, W_lo). Table slots per
  // expert: 0 gate, 1 up, 2 down (3, 4, 5: the remainders of dequantised weights).
  up.a[0] = xa.hi_data();
  up.bmat[0][0] = 0;
  up.bmat[0][1] = 1;
  down.a[0] = hb.as<const uint16_t>();
  down.bmat[0][0] = 2;
  if (sp) {
    up.nseg = down.nseg = 2;
    up.a[1] = xa.lo_data();
    up.bmat[1][0] = 0;
    up.bmat[1][1] = 1;
    down.a[1] = hl.as<const uint16_t>();
    down.bmat[1][0] = 2;
  }
  if (wsplit) {
    up.nseg = down.nseg = 3;
    up.a[2] = xa.hi_data();
    up.bmat[2][0] = 3;
    up.bmat[2][1] = 4;
    down.a[2] = hb.as<const uint16_t>();
    down.bmat[2][0] = 5;
  }
  if (prep.dtype == DType::BF16) {  // the prepared table holds the weights as they are
    up.wtab = down.wtab = const_cast<const void* const*>(prep.table);
    cuda::grouped_gemm(up, int32_t(n_items), stream_);
    cuda::grouped_gemm(down, int32_t(n_items), stream_);
    return;
  }

  // Other dtypes (FP8): the active experts' weights dequantised to BF16 (+ remainders in split mode), in
  // chunks of experts whose copies fit a 2 GiB budget, each chunk with its own pointer table.
  MOE_CHECK(!ctx_.capturing(), "FP8 experts at {} rows per expert need their counts on the host: not capturable",
            TK / E);
  std::vector<int32_t> c(static_cast<size_t>(E));
  check(cudaMemcpyAsync(c.data(), counts.data(), size_t(E) * 4, cudaMemcpyDeviceToHost, stream_), "counts");
  synchronize();
  const int64_t mat = I * D, per_expert = 3 * mat * (wsplit ? 2 : 1),
                budget = int64_t(1) << 30;  // BF16 elements
  for (int32_t eb = 0; eb < E;) {
    int32_t ee = eb;
    int64_t active = 0;
    while (ee < E && (active == 0 || (active + (c[size_t(ee)] > 0)) * per_expert <= budget)) {
      active += c[size_t(ee)] > 0;
      ++ee;
    }
    if (active == 0) {
      eb = ee;
      continue;
    }
    Tensor wbuf = scratch(DType::BF16, {active, per_expert});
    std::vector<const void*> table(size_t(ee - eb) * 6, nullptr);
    int64_t slot = 0;
    for (int32_t e = eb; e < ee; ++e) {
      if (c[size_t(e)] == 0) continue;
      uint16_t* base = wbuf.as<uint16_t>() + slot++ * per_expert;
      for (int j = 0; j < 3; ++j) {
        uint16_t* hi = base + j * mat;
        uint16_t* lo = wsplit ? base + (3 + j) * mat : nullptr;
        cuda::weight_to_bf16(prep.matrix(e, j), hi, stream_, lo);
        table[size_t(e - eb) * 6 + size_t(j)] = hi;
        if (lo) table[size_t(e - eb) * 6 + 3 + size_t(j)] = lo;
      }
    }
    Tensor tab = scratch(DType::I64, {int64_t(table.size())});
    copy_from_host(table.data(), tab);
    up.wtab = down.wtab = static_cast<const void* const*>(tab.data());
    up.e_begin = down.e_begin = eb;
    up.e_end = down.e_end = ee;
    cuda::grouped_gemm(up, int32_t(n_items), stream_);
    cuda::grouped_gemm(down, int32_t(n_items), stream_);
    eb = ee;
  }
}

// ---- MLA, expanded form
// ----------------------------------------------------------------------------------------

bool CudaBackend::mla_prefill_wanted(const TensorView& q, const TensorView& cache, int64_t dn, int64_t dv,
                                     const DeviceBatch& batch) const {
  const int64_t T = q.rows(), H = q.shape[1], dr = q.shape[2] - dn;
  const int64_t W = cache.shape[cache.shape.rank - 1], r = W - dr;
  const bool always = ctx_.options().mla_prefill_always;
  const int64_t min_tokens = ctx_.options().mla_prefill_min_tokens;
  if (min_tokens <= 0 || T < min_tokens || !batch.plan) return false;
  if (!cuda::mla_prefill_supported(dn, dr, dv) || W % 8 != 0 || r % 8 != 0) return false;
  // Never inside a graph capture: the path uploads a plan built from this batch's positions.
  if (ctx_.capturing()) return false;
  const MlaPrefillPlan mp = plan_mla_prefill(*batch.plan, H, dn, dr, dv, r, false);
  if (mp.max_new < min_tokens) return false;                           // no prefill chunk of that many tokens
  if (mp.rows * H * (dn + dv) * 2 > (int64_t(4) << 30)) return false;  // the expanded k/v would exceed 4 GiB
  return always || mp.expanded_flops < mp.absorbed_flops;
}

void CudaBackend::mla_attention_prefill(const TensorView& q, const Weight& kv_b, const TensorView& cache,
                                        int64_t dn, int64_t dv, float scale, const DeviceBatch& batch,
                                        const TensorView& out) {
  const BatchPlan& plan = *batch.plan;
  const int64_t T = q.rows(), H = q.shape[1], dr = q.shape[2] - dn;
  const int64_t W = cache.shape[cache.shape.rank - 1], r = W - dr, N = H * (dn + dv);
  MOE_CHECK(kv_b.rows() == N && kv_b.cols() == r, "mla_attention: kv_b_proj is {} but expected [{}, {}]",
            kv_b.w.shape.str(), N, r);
  MOE_CHECK(out.numel() == T * H * dv, "mla_attention: out has the wrong size");
  MOE_CHECK(cache.dtype == DType::BF16, "mla_attention: the CUDA cache is BF16");
  if (T == 0) return;
  const MlaPrefillPlan mp = plan_mla_prefill(plan, H, dn, dr, dv, r, true);
  const int32_t S = int32_t(mp.seqs.size()), ntiles = int32_t(mp.tiles.size() / 4);

  // One upload: seqs, lens, offs [S], tiles [ntiles, 4], qlist [T].
  std::vector<int32_t> meta;
  meta.reserve(size_t(3 * S) + mp.tiles.size() + mp.qlist.size());
  for (const auto* v : {&mp.seqs, &mp.lens, &mp.offs, &mp.tiles, &mp.qlist})
    meta.insert(meta.end(), v->begin(), v->end());
  Tensor dmeta = scratch(DType::I32, {int64_t(meta.size())});
  copy_from_host(meta.data(), dmeta);
  const int32_t* d = dmeta.as<const int32_t>();

  // The context's latent rows, then k_nope and v of every head: kv [rows, H * (dn + dv)] = lat[:, :r] kv_b^T.
  Tensor lat = scratch(DType::BF16, {mp.rows, W});
  cuda::mla_gather_latent(cache.as<const uint16_t>(), batch.block_table.as<const int32_t>(), plan.max_pages,
                          plan.page_size, W, d, d + S, d + 2 * S, S, mp.max_len, lat.as<uint16_t>(), stream_);
  const uint16_t* wb = static_cast<const uint16_t*>(kv_b.w.data);
  Tensor wtmp;
  if (kv_b.w.dtype != DType::BF16) {
    wtmp = scratch(DType::BF16, {N, r});
    cuda::weight_to_bf16(ref(kv_b), wtmp.as<uint16_t>(), stream_);
    wb = wtmp.as<const uint16_t>();
  }
  Tensor kv = scratch(DType::BF16, {mp.rows, N});
  cuda::gemm_bf16_out(cublas_, lat.as<const uint16_t>(), W, wb, kv.as<uint16_t>(), mp.rows, N, r);

  cuda::MlaPrefillParams p;
  p.q = q.as<const float>();
  p.kv = kv.as<const uint16_t>();
  p.lat = lat.as<const uint16_t>();
  p.tiles = d + 3 * S;
  p.qlist = d + 3 * S + 4 * ntiles;
  p.positions = batch.positions.as<const int32_t>();
  p.out = out.as<float>();
  p.num_tiles = ntiles;
  p.H = int32_t(H);
  p.dn = int32_t(dn);
  p.dr = int32_t(dr);
  p.dv = int32_t(dv);
  p.r = int32_t(r);
  p.W = int32_t(W);
  p.scale = scale;
  cuda::mla_prefill_attention(p, stream_);
}

}  // namespace moe
