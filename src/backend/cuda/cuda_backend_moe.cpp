// The CUDA backend's MoE ops: expert tables, routing, grouped experts (kernels: moe_*.cu, gemv.cuh, cuBLAS).
#include <string>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "backend/cuda/gemm.h"
#include "backend/cuda/moe_w4a16.h"
#include "core/error.h"

namespace moe {

using cuda::check;
using cuda::ref;
using cuda::tile_for;

void CudaBackend::prepare_experts(ExpertWeights& experts) {
  const cuda::DeviceGuard guard(ctx_.device());
  auto prep = std::make_shared<PreparedExperts>();
  const size_t E = experts.experts.size();
  if (E == 0) return;
  const MlpWeights& e0 = experts.experts[0];
  prep->dtype = e0.gate.w.dtype;
  prep->hidden = e0.gate.cols();
  prep->inner = e0.gate.rows();
  prep->block_n = e0.gate.block_n;
  prep->block_k = e0.gate.block_k;
  prep->pow2_scales = e0.gate.pow2_scales;
  prep->group_size = e0.gate.group_size;
  prep->bf16_scales = e0.gate.is_int4() && e0.gate.scale_inv.dtype == DType::BF16;
  prep->host_table.resize(E * 6);
  for (size_t e = 0; e < E; ++e) {
    const MlpWeights& m = experts.experts[e];
    MOE_CHECK(m.gate.w.dtype == prep->dtype && m.up.w.dtype == prep->dtype && m.down.w.dtype == prep->dtype,
              "prepare_experts: experts of one layer must share a dtype");
    const Weight* ws[3] = {&m.gate, &m.up, &m.down};
    for (const Weight* w : ws)
      MOE_CHECK(w->group_size == prep->group_size && (!w->is_int4() || (w->scale_inv.dtype == DType::BF16) ==
                                                                             prep->bf16_scales),
                "prepare_experts: INT4 experts of one layer must share a group size and a scale dtype");
    if (prep->group_size > 0)  // the W4A16 GEMV's limits (moe_w4a16.h): whole groups of whole words
      MOE_CHECK(prep->group_size % 8 == 0 && prep->hidden % prep->group_size == 0 &&
                    prep->inner % prep->group_size == 0 && prep->hidden % 4 == 0 && prep->inner % 4 == 0,
                "prepare_experts: INT4 experts of [{}, {}] with group size {} (need multiples of the group, "
                "itself a multiple of 8)",
                prep->inner, prep->hidden, prep->group_size);
    for (int i = 0; i < 3; ++i) {
      prep->host_table[e * 6 + size_t(i)] = ws[i]->w.data;
      prep->host_table[e * 6 + 3 + size_t(i)] = ws[i]->scale_inv.data;
    }
  }
  void* table = ctx_.persistent(E * 6 * sizeof(void*), prep->host_table.data());
  prep->table = static_cast<void**>(table);
  experts.prepared = prep;
}

// The kernels' routing parameters for outputs of `cols` columns (those past top_k: the shared experts).
cuda::RouteParams CudaBackend::route_params(const RoutingParams& params, int32_t cols) {
  return cuda::RouteParams{params.num_experts,
                           params.top_k,
                           params.n_group,
                           params.topk_group,
                           params.score == RoutingScore::Sigmoid,
                           params.method == RoutingMethod::NoauxTc,
                           params.method == RoutingMethod::Greedy,
                           params.norm_topk_prob,
                           params.routed_scaling_factor,
                           cols - params.top_k};
}

// The shared experts as routed ones (backend.h): S = shared width / inner more entries after the routed ones
// in the device table. Slice s is gate and up rows s*I .. (s+1)*I - 1 (in place) and down columns s*I ..
// (s+1)*I - 1 (in place when S is 1, as in V3, R1 and Kimi-K2; else copied apart, since the GEMV reads rows
// of I contiguous weights). Layers whose shared MLP is not such slices (another dtype or block size, INT4)
// keep S = 0.
void CudaBackend::prepare_shared_experts(ExpertWeights& experts, const MlpWeights& shared) {
  const cuda::DeviceGuard guard(ctx_.device());
  auto* prep = static_cast<PreparedExperts*>(experts.prepared.get());
  if (!prep || prep->group_size > 0 || prep->inner <= 0) return;
  MOE_CHECK(!ctx_.capturing(), "prepare_shared_experts inside a capture");
  const int64_t I = prep->inner, D = prep->hidden, E = int64_t(experts.experts.size()),
                width = shared.gate.rows();
  for (const Weight* w : {&shared.gate, &shared.up, &shared.down})
    if (w->w.dtype != prep->dtype || w->is_int4() || w->block_n != prep->block_n ||
        w->block_k != prep->block_k || w->pow2_scales != prep->pow2_scales)
      return;
  if (width % I != 0 || shared.gate.cols() != D || shared.up.rows() != width || shared.up.cols() != D ||
      shared.down.rows() != D || shared.down.cols() != width)
    return;
  const int64_t S = width / I;
  const bool fp8 = prep->dtype == DType::F8_E4M3;
  const int64_t bn = prep->block_n, bk = prep->block_k;
  // FP8 slices start on block boundaries (their scales are then whole rows or columns of the scale grid).
  if (S > 4 || E + S > 1024 || (fp8 && S > 1 && (I % bn != 0 || I % bk != 0))) return;
  const size_t es = dtype_size(prep->dtype);
  const int64_t kbD = (D + bk - 1) / bk, nbD = (D + bn - 1) / bn;
  std::vector<const void*> table(prep->host_table);
  for (int64_t s = 0; s < S; ++s) {
    const auto* gate = static_cast<const char*>(shared.gate.w.data) + size_t(s * I * D) * es;
    const auto* up = static_cast<const char*>(shared.up.w.data) + size_t(s * I * D) * es;
    const float* gs = fp8 ? shared.gate.scale_inv.as<const float>() + (s * I / bn) * kbD : nullptr;
    const float* us = fp8 ? shared.up.scale_inv.as<const float>() + (s * I / bn) * kbD : nullptr;
    const void* down = shared.down.w.data;
    const void* ds = fp8 ? shared.down.scale_inv.data : nullptr;
    if (S > 1) {  // down [D, S*I] -> [D, I]: columns s*I.., and for FP8 the scale grid's columns s*I/bk..
      void* d = ctx_.persistent(size_t(D * I) * es);
      check(cudaMemcpy2DAsync(
                d, size_t(I) * es, static_cast<const char*>(shared.down.w.data) + size_t(s * I) * es,
                size_t(width) * es, size_t(I) * es, size_t(D), cudaMemcpyDeviceToDevice, stream_),
            "shared expert down slice");
      down = d;
      if (fp8) {
        const int64_t kbI = I / bk, kbW = width / bk;
        void* sc = ctx_.persistent(size_t(nbD * kbI) * sizeof(float));
        check(
            cudaMemcpy2DAsync(sc, size_t(kbI) * sizeof(float),
                              shared.down.scale_inv.as<const float>() + s * kbI, size_t(kbW) * sizeof(float),
                              size_t(kbI) * sizeof(float), size_t(nbD), cudaMemcpyDeviceToDevice, stream_),
            "shared expert down scales");
        ds = sc;
      }
    }
    table.insert(table.end(), {gate, up, down, gs, us, ds});
  }
  ctx_.synchronize();  // the slices copied on the stream
  prep->table = static_cast<void**>(ctx_.persistent(table.size() * sizeof(void*), table.data()));
  prep->shared_slots = int32_t(S);
}

int32_t CudaBackend::shared_expert_slots(const ExpertWeights& experts, int64_t T) const {
  const auto* prep = static_cast<const PreparedExperts*>(experts.prepared.get());
  if (!prep || prep->shared_slots == 0 || !ctx_.options().moe_decode_fusion) return 0;
  // One token only. The grouped GEMV passes over a slice once per `tile` of its rows, and a shared slice has
  // a row per token while the tile follows the routed experts' few rows (1 or 2 at Moonlight's batches 2-7):
  // at T tokens the slices would be read T / tile times where the shared MLP apart reads its weights once.
  // And only where one token takes the GEMV (the grouped GEMM starts above one token).
  return T == 1 && grouped_experts_from(*prep) > 1 ? prep->shared_slots : 0;
}

int64_t CudaBackend::grouped_experts_from(const PreparedExperts& prep) const {
  const CudaOptions& o = ctx_.options();
  return prep.dtype == DType::BF16 ? o.bf16_grouped_experts_min_tokens : o.grouped_experts_min_tokens;
}

// One token under moe_decode_fusion: the router's GEMV and the routing as one launch (cuda::router_route, the
// same single-token GEMV pass as matmul and the same routing as moe_route). Otherwise the two ops.
void CudaBackend::moe_router(const TensorView& x, const Weight& router, const TensorView& bias,
                             const RoutingParams& params, const TensorView& logits,
                             const TensorView& expert_ids, const TensorView& expert_weights) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = x.rows(), D = x.row_size(), E = params.num_experts, cols = expert_ids.row_size();
  const bool fused = T == 1 && ctx_.options().moe_decode_fusion && !router.is_int4() && !router.is_fp8() &&
                     x.dtype == DType::F32 && router.rows() == E && router.cols() == D &&
                     logits.numel() == E && cols >= params.top_k && expert_weights.numel() == cols &&
                     params.n_group <= 32 && cuda::router_route_ok(router.w.dtype, int32_t(E), int32_t(cols));
  if (!fused) return Backend::moe_router(x, router, bias, params, logits, expert_ids, expert_weights);
  cuda::GemvParams p = dense_gemv(router, x.as<const float>(), D, logits.as<float>(), E, 1);
  cuda::router_route(p, bias.data ? bias.as<const float>() : nullptr, route_params(params, int32_t(cols)),
                     expert_ids.as<int32_t>(), expert_weights.as<float>(), router_done_, stream_);
}

void CudaBackend::moe_route(const TensorView& logits, const TensorView& bias, const RoutingParams& params,
                            const TensorView& expert_ids, const TensorView& expert_weights) {
  const cuda::DeviceGuard guard(ctx_.device());
  MOE_CHECK(logits.row_size() == params.num_experts, "moe_route: {} router logits for {} experts",
            logits.row_size(), params.num_experts);
  const cuda::RouteParams p = route_params(params, int32_t(expert_ids.row_size()));
  const int64_t T = logits.rows(), TK = T * expert_ids.row_size();
  MOE_CHECK(p.shared_slots >= 0 && expert_ids.numel() == TK && expert_weights.numel() == TK,
            "moe_route: outputs of {} and {} for {} x {}", expert_ids.shape.str(), expert_weights.shape.str(),
            T, params.top_k);
  const float* b = bias.data ? bias.as<const float>() : nullptr;
  cuda::moe_route(logits.as<const float>(), b, p, T, expert_ids.as<int32_t>(), expert_weights.as<float>(),
                  stream_);
}

// GEMV tile (assignments per pass over an expert's weights): sized for about twice the average rows per
// expert, not for T. A tile computes all its token slots, so at batch 8 over 64 experts (0.75 rows per expert
// on average) a tile of 8 would do ~8x the arithmetic and hold 8 tokens' accumulators (fewer blocks per SM)
// for nothing; an expert with more rows than the tile gets several work items (its weights then come from L2
// for the later ones).
int CudaBackend::grouped_gemv_tile(int64_t T, int64_t TK, int32_t E) {
  return tile_for(std::min<int64_t>(T, std::max<int64_t>(1, (2 * TK + E - 1) / E)));
}

void CudaBackend::moe_local_choices(const TensorView& expert_ids, const TensorView& expert_weights,
                                    const TensorView& slots, const TensorView& local_ids,
                                    const TensorView& local_weights) {
  const cuda::DeviceGuard guard(ctx_.device());
  check_local_choices(expert_ids, expert_weights, slots, local_ids, local_weights);
  cuda::moe_local_choices(expert_ids.as<const int32_t>(), expert_weights.as<const float>(),
                          slots.as<const int32_t>(), expert_ids.numel(), int32_t(expert_ids.row_size()),
                          int32_t(slots.shape[1]), int32_t(slots.shape[0]), local_ids.as<int32_t>(),
                          local_weights.as<float>(), stream_);
}

void CudaBackend::moe_experts(const TensorView& x, const ExpertWeights& experts, const TensorView& expert_ids,
                              const TensorView& expert_weights, const TensorView& plus,
                              const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  const auto* prep = static_cast<const PreparedExperts*>(experts.prepared.get());
  MOE_CHECK(prep != nullptr, "moe_experts: prepare_experts was not called");
  const int64_t T = x.rows(), D = x.row_size(), K = expert_ids.row_size(), TK = T * K, I = prep->inner;
  const int32_t routed = int32_t(experts.experts.size());
  MOE_CHECK(D == prep->hidden, "moe_experts: x has {} columns for experts of {}", D, prep->hidden);
  if (T == 0) return;
  // Expert GEMMs once the experts average >= 32 rows (4 GEMV tiles, so the grouped GEMV would read each
  // weight 4+ times): prefill. Below that (decode batches) the grouped GEMV streams each weight about once
  // and needs no host round trip; measured on the H100 (Moonlight shape, batch 64 decode): 1922 tok/s with
  // the GEMV, 670 tok/s with per-expert cuBLAS calls (host-bound at 6 rows per expert).
  // The GEMMs run on moe_plan's work items of kGroupedRows rows (cuda_backend_prefill.cpp); for widths the
  // grouped kernel does not take, one cuBLAS GEMM per active expert.
  // From CudaOptions::bf16_grouped_experts_min_tokens (BF16 experts, Bf16 mode) and
  // grouped_experts_min_tokens (FP8 experts under Prefill::Fp8) tokens on, decode batches included, the
  // grouped tensor-core kernels (cuda_backend_moe_fp8.cpp; W8A8, as the mode's dense linears): neither reads
  // anything back to the host, so both are captured. At decode batches their 128-row (FP8: 64-row) tiles are
  // mostly padding, but the weights, which bound the step, are still streamed once, on the tensor cores
  // instead of the GEMV's CUDA cores.
  const CudaOptions& o = ctx_.options();
  const bool fp8_experts = T >= grouped_experts_from(*prep) && fp8_experts_ok(*prep);
  const bool bf16_experts = bf16_grouped_step(T, D) && bf16_grouped_experts(*prep);
  // INT4 experts' GEMMs read the counts on the host (per-expert dequantisation): while capturing, the W4A16 GEMV.
  const bool grouped_gemm =
      fp8_experts || bf16_experts ||
      (TK >= 32 * int64_t(routed) && T > cuda::kGemvMaxTile && o.prefill != CudaOptions::Prefill::Gemv &&
       !(prep->group_size > 0 && ctx_.capturing()));
  // INT4 experts in prefill: the active ones dequantised to BF16 scratch, one cuBLAS GEMM each.
  const bool cublas_experts = grouped_gemm && !fp8_experts && (D % 8 != 0 || I % 8 != 0 || prep->group_size > 0);
  const bool per_expert = cublas_experts;  // one segment per expert: no work items
  // The GEMV path also takes the shared experts as routed ones (ids routed.. from moe_route,
  // shared_expert_slots); their table entries follow the routed experts'.
  const int32_t E = grouped_gemm ? routed : routed + prep->shared_slots;
  const int gemv_tile = grouped_gemv_tile(T, TK, E);
  const int tile = !grouped_gemm ? gemv_tile : per_expert ? 1 << 20 : cuda::kGroupedRows;
  Tensor y = scratch(DType::F32, {TK, D});
  MOE_CHECK(!plus.data || plus.numel() == out.numel(), "moe_experts: plus is {} for an output of {}",
            plus.shape.str(), out.shape.str());
  if (!grouped_gemm && gemv_tile == 1 && prep->group_size == 0 && o.moe_decode_fusion) {
    // One assignment per pass over an expert's weights (tile 1: batch 1, and decode batches whose assignments
    // are few against the experts): the plan would only reorder them, so the GEMV takes each assignment as
    // its own work item straight from the ids, and the down launch does the weighted combine too. The same
    // rows through the same kernels, two launches (moe_plan, moe_combine) fewer.
    const cuda::GemvCombine combine{expert_weights.as<const float>(),
                                    plus.data ? plus.as<const float>() : nullptr, out.as<float>(), int32_t(K),
                                    combine_done_};
    if (grouped_expert_gemv(*prep, nullptr, TK, nullptr, 1, x.as<const float>(), int32_t(K), TK,
                            y.as<float>(), expert_ids.as<const int32_t>(), &combine))
      return;
  } else {
    const int64_t max_items = per_expert ? 1 : std::min<int64_t>(E, TK) + (TK + tile - 1) / tile;
    Tensor perm = scratch(DType::I32, {TK}), items = scratch(DType::I32, {max_items, 3}),
           counts = scratch(DType::I32, {E});
    cuda::moe_plan(expert_ids.as<const int32_t>(), TK, E, std::min(tile, 1 << 30), int32_t(max_items),
                   perm.as<int32_t>(), items.as<int32_t>(), counts.as<int32_t>(), stream_);
    if (fp8_experts) {
      moe_expert_gemms_fp8(x, *prep, perm, items, max_items, T, K, y);
    } else if (cublas_experts) {
      moe_expert_gemms_cublas(x, *prep, perm, counts, T, K, y);
    } else if (grouped_gemm) {
      moe_expert_gemms(x, *prep, perm, items, max_items, counts, T, K, y);
    } else {
      grouped_expert_gemv(*prep, items.as<const int32_t>(), max_items, perm.as<const int32_t>(), gemv_tile,
                          x.as<const float>(), int32_t(K), TK, y.as<float>());
    }
  }
  cuda::moe_combine(y.as<const float>(), expert_weights.as<const float>(), T, int32_t(K), D,
                    plus.data ? plus.as<const float>() : nullptr, out.as<float>(), stream_);
}

bool CudaBackend::grouped_expert_gemv(const PreparedExperts& prep, const int32_t* items, int64_t n_items,
                                      const int32_t* perm, int tile, const float* x, int32_t x_row_div,
                                      int64_t M, float* y, const int32_t* ids,
                                      const cuda::GemvCombine* combine) {
  const int64_t D = prep.hidden, I = prep.inner;
  Tensor h = scratch(DType::F32, {M, I});
  if (prep.group_size > 0) {
    int4_expert_gemv(prep, items, n_items, perm, x, x_row_div, M, h, y);
    return false;
  }
  cuda::GemvParams p;
  p.wdtype = prep.dtype;
  p.table = const_cast<const void* const*>(reinterpret_cast<void* const*>(prep.table));
  p.block_n = prep.block_n;
  p.block_k = prep.block_k;
  p.items = items;
  p.perm = perm;
  p.ids = ids;
  p.grid_y = int32_t(n_items);
  p.assignments = int32_t(M);
  // gate + up with SwiGLU: h[a] = silu(x[a / div] Wg^T) * (x[a / div] Wu^T)
  p.matrix = 0;
  p.swiglu = true;
  p.N = I;
  p.K = D;
  p.x = x;
  p.x_stride = D;
  p.x_row_div = x_row_div;
  p.out = h.as<float>();
  p.out_stride = I;
  cuda::gemv(p, tile, stream_);
  // down: y[a] = h[a] Wd^T
  p.matrix = 2;
  p.swiglu = false;
  p.N = D;
  p.K = I;
  p.x = h.as<const float>();
  p.x_stride = I;
  p.x_row_div = 1;
  p.out = y;
  p.out_stride = D;
  if (combine && ids && tile == 1 && cuda::gemv_combine(p, *combine, stream_)) return true;
  cuda::gemv(p, tile, stream_);
  return false;
}

// INT4 experts (W4A16 GEMV, moe_w4a16.cu, reading the packed words in place): gate and up into h and a second
// scratch, SwiGLU in place, then down into y; rows through moe_plan's work items and permutation as above.
void CudaBackend::int4_expert_gemv(const PreparedExperts& prep, const int32_t* items, int64_t n_items,
                                   const int32_t* perm, const float* x, int32_t x_row_div, int64_t M, const Tensor& h,
                                   float* y) {
  const int64_t D = prep.hidden, I = prep.inner;
  Tensor u = scratch(DType::F32, {M, I});
  cuda::W4A16GemvParams p;
  p.f32_scales = !prep.bf16_scales;
  p.group = prep.group_size;
  p.table_stride = 6;
  p.items = items;
  p.n_items = int32_t(n_items);
  p.perm = perm;
  auto project = [&](int j, const float* in, int64_t K, int32_t div, float* out, int64_t N) {
    p.words = const_cast<const void* const*>(prep.table + j);
    p.scales = const_cast<const void* const*>(prep.table + 3 + j);
    p.x = in;
    p.ldx = K;
    p.x_row_div = div;
    p.K = int32_t(K);
    p.N = int32_t(N);
    p.y = out;
    p.ldy = N;
    cuda::moe_w4a16_gemv(p, stream_);
  };
  project(0, x, D, x_row_div, h.as<float>(), I);
  project(1, x, D, x_row_div, u.as<float>(), I);
  cuda::silu_mul(h.as<const float>(), u.as<const float>(), h.as<float>(), M * I, stream_);
  project(2, h.as<const float>(), I, 1, y, D);
}

void CudaBackend::moe_expert_gemms_cublas(const TensorView& x, const PreparedExperts& prep,
                                          const Tensor& perm, const Tensor& counts, int64_t T, int64_t K,
                                          const Tensor& y) {
  const int64_t D = prep.hidden, I = prep.inner, TK = T * K;
  const int32_t E = int32_t(counts.numel());
  MOE_CHECK(!ctx_.capturing(), "the per-expert cuBLAS path needs the counts on the host: not capturable");
  std::vector<int32_t> c(static_cast<size_t>(E));
  check(cudaMemcpyAsync(c.data(), counts.data(), size_t(E) * 4, cudaMemcpyDeviceToHost, stream_), "counts");
  synchronize();
  const bool sp = split(), wsplit = sp && prep.dtype != DType::BF16;
  Tensor xp = scratch(DType::BF16, {TK, D}), xl = scratch(DType::BF16, {sp ? TK : 1, D});
  cuda::moe_gather_bf16(x.as<const float>(), perm.as<const int32_t>(), TK, int32_t(K), D, xp.as<uint16_t>(),
                        stream_, sp ? xl.as<uint16_t>() : nullptr);
  // Expert weights as BF16 (FP8 experts dequantised into one scratch block for the active ones).
  std::vector<int32_t> active;
  for (int32_t e = 0; e < E; ++e)
    if (c[size_t(e)] > 0) active.push_back(e);
  const size_t A = active.size();
  Tensor wtmp, wlo;
  if (prep.dtype != DType::BF16) wtmp = scratch(DType::BF16, {int64_t(A), 3, D * I});
  if (wsplit) wlo = scratch(DType::BF16, {int64_t(A), 3, D * I});
  Tensor g = scratch(DType::F32, {TK, I}), u = scratch(DType::F32, {TK, I}),
         hb = scratch(DType::BF16, {TK, I}), hl = scratch(DType::BF16, {sp ? TK : 1, I}),
         yp = scratch(DType::F32, {TK, D});
  // per group: x, wg, wu, wd, g, u, hb, yp, then the split halves x_lo, h_lo, wg_lo, wu_lo, wd_lo
  constexpr size_t kRoles = 13;
  std::vector<const void*> ptrs(A * kRoles, nullptr);
  std::vector<int> m(A);
  std::vector<int64_t> offs(static_cast<size_t>(E) + 1, 0);
  for (int32_t e = 0; e < E; ++e) offs[size_t(e) + 1] = offs[size_t(e)] + c[size_t(e)];
  for (size_t i = 0; i < A; ++i) {
    const int32_t e = active[i];
    const int64_t o = offs[size_t(e)];
    m[i] = c[size_t(e)];
    for (int j = 0; j < 3; ++j) {
      const void* wsrc = prep.host_table[size_t(e) * 6 + size_t(j)];
      if (prep.dtype != DType::BF16) {
        uint16_t* dst = wtmp.as<uint16_t>() + (int64_t(i) * 3 + j) * D * I;
        uint16_t* lo = wsplit ? wlo.as<uint16_t>() + (int64_t(i) * 3 + j) * D * I : nullptr;
        cuda::weight_to_bf16(prep.matrix(e, j), dst, stream_, lo);
        wsrc = dst;
        if (lo) ptrs[i * kRoles + 10 + size_t(j)] = lo;
      }
      ptrs[i * kRoles + 1 + size_t(j)] = wsrc;
    }
    ptrs[i * kRoles + 0] = xp.as<uint16_t>() + o * D;
    ptrs[i * kRoles + 4] = g.as<float>() + o * I;
    ptrs[i * kRoles + 5] = u.as<float>() + o * I;
    ptrs[i * kRoles + 6] = hb.as<uint16_t>() + o * I;
    ptrs[i * kRoles + 7] = yp.as<float>() + o * D;
    if (sp) {
      ptrs[i * kRoles + 8] = xl.as<uint16_t>() + o * D;
      ptrs[i * kRoles + 9] = hl.as<uint16_t>() + o * I;
    }
  }
  // One cuBLAS GEMM per active expert and projection (cublasGemmGroupedBatchedEx refuses BF16 inputs with
  // F32 outputs: CUBLAS_STATUS_NOT_SUPPORTED on the H100 with CUDA 13.0, measured, and F32 outputs are
  // what the split-precision accumulation needs). The host already holds the counts, so the loop is a few
  // hundred enqueues per layer in prefill, against GEMMs of ~T*k/E rows each.
  // out_role = x_role W_role (+ x_lo W_role + x_role W_lo in split mode), F32 accumulation.
  auto project = [&](size_t xr, size_t xlr, size_t wr, size_t wlr, size_t outr, int64_t N, int64_t Kd) {
    for (size_t i = 0; i < A; ++i) {
      const auto* pr = ptrs.data() + i * kRoles;
      auto bf = [](const void* q) { return static_cast<const uint16_t*>(q); };
      float* o = static_cast<float*>(const_cast<void*>(pr[outr]));
      cuda::gemm_bf16(cublas_, bf(pr[xr]), bf(pr[wr]), o, m[i], N, Kd);
      if (sp) cuda::gemm_bf16(cublas_, bf(pr[xlr]), bf(pr[wr]), o, m[i], N, Kd, 1.0f);
      if (wsplit) cuda::gemm_bf16(cublas_, bf(pr[xr]), bf(pr[wlr]), o, m[i], N, Kd, 1.0f);
    }
  };
  project(0, 8, 1, 10, 4, I, D);
  project(0, 8, 2, 11, 5, I, D);
  // h = silu(g) * u in BF16 rows (hi and lo in split mode) for the down projection.
  cuda::silu_mul(g.as<const float>(), u.as<const float>(), g.as<float>(), TK * I, stream_);
  cuda::f32_to_bf16(g.as<const float>(), hb.as<uint16_t>(), TK * I, stream_,
                    sp ? hl.as<uint16_t>() : nullptr);
  project(6, 9, 3, 12, 7, D, I);
  cuda::moe_scatter_rows(yp.as<const float>(), perm.as<const int32_t>(), TK, D, y.as<float>(), stream_);
}

}  // namespace moe
