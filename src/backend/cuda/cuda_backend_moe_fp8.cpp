// The routed experts of prefill on FP8 x FP8 GEMMs (Prefill::Fp8, FP8 experts): see
// CudaBackend::moe_expert_gemms_fp8 in cuda_backend.h. The weights are used as stored (E4M3 with their
// 128x128 block scales); only the activations are quantised, per 1x128 tile.
#include <algorithm>
#include <vector>

#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace moe {

using cuda::check;

bool CudaBackend::fp8_experts_ok(const PreparedExperts& prep) const {
  return ctx_.options().prefill == CudaOptions::Prefill::Fp8 && prep.dtype == DType::F8_E4M3 &&
         prep.block_n == 128 && prep.block_k == 128 && cuda::fp8_gemm_shape_ok(prep.inner, prep.hidden) &&
         cuda::fp8_gemm_shape_ok(prep.hidden, prep.inner);
}

void CudaBackend::moe_expert_gemms_fp8(const TensorView& x, const PreparedExperts& prep, const Tensor& perm,
                                       const Tensor& counts, int64_t T, int64_t K, const Tensor& y) {
  const int64_t D = prep.hidden, I = prep.inner, TK = T * K;
  const int32_t E = int32_t(counts.numel());
  MOE_CHECK(!ctx_.capturing(), "FP8 x FP8 experts need their counts on the host: not capturable");
  std::vector<int32_t> c(static_cast<size_t>(E));
  check(cudaMemcpyAsync(c.data(), counts.data(), size_t(E) * 4, cudaMemcpyDeviceToHost, stream_), "counts");
  synchronize();

  // Segments (one per expert, in moe_plan's sorted order): sorted rows offs[e] .. offs[e + 1], placed at rows
  // poffs[e] .. of the padded buffers, each expert's block m4 = count rounded up to a multiple of 4 rows
  // (cuBLASLt's rule; the padding rows hold leftovers and only produce output rows nobody reads); the
  // activation scales of expert e at sbx[e] (x) and sbh[e] (h), [K/128, m4] each (16-byte aligned).
  const int64_t kbD = D / 128, kbI = I / 128;
  std::vector<int32_t> meta(size_t(4 * E + 2), 0);  // offs [E + 1], poffs [E + 1], sbx [E], sbh [E]
  int32_t* offs = meta.data();
  int32_t* poffs = offs + E + 1;
  int32_t* sbx = poffs + E + 1;
  int32_t* sbh = sbx + E;
  auto m4 = [&](int32_t e) { return int64_t(c[size_t(e)] + 3) / 4 * 4; };
  for (int32_t e = 0; e < E; ++e) {
    offs[e + 1] = offs[e] + c[size_t(e)];
    poffs[e + 1] = int32_t(poffs[e] + m4(e));
    sbx[e] = int32_t(int64_t(poffs[e]) * kbD);
    sbh[e] = int32_t(int64_t(poffs[e]) * kbI);
  }
  const int64_t TKp = poffs[E];
  MOE_CHECK(offs[E] == TK && TKp * std::max(kbD, kbI) < (int64_t(1) << 31),
            "moe_expert_gemms_fp8: {} assignments counted for {}", offs[E], TK);
  Tensor dmeta = scratch(DType::I32, {int64_t(meta.size())});
  copy_from_host(meta.data(), dmeta);
  const int32_t* dm = dmeta.as<const int32_t>();

  // x rows in expert order, quantised: xq[poffs[e] + j] = e4m3(x[perm[offs[e] + j] / K]).
  Tensor xq = scratch(DType::U8, {TKp, D}), xs = scratch(DType::F32, {TKp * kbD});
  cuda::Fp8QuantParams q;
  q.x = x.as<const float>();
  q.ldx = D;
  q.rows = perm.as<const int32_t>();
  q.row_div = int32_t(K);
  q.M = TK;
  q.K = D;
  q.q = xq.as<uint8_t>();
  q.ldq = D;
  q.scales = xs.as<float>();
  q.seg_offs = dm;
  q.seg_poffs = dm + E + 1;
  q.seg_sbase = dm + 2 * (E + 1);
  q.nseg = E;
  q.pow2_scales = prep.pow2_scales;
  cuda::quantize_fp8(q, stream_);

  // Weight scales with cuBLASLt's leading dimension (padded copies of all E experts when the grid is narrower).
  const int64_t nbI = (I + 127) / 128, nbD = (D + 127) / 128, ldD = cuda::fp8_scale_ld(D), ldI = cuda::fp8_scale_ld(I);
  Tensor pad_gu, pad_d;
  if (ldD != kbD) {
    pad_gu = scratch(DType::F32, {2, int64_t(E), nbI * ldD});
    for (int j = 0; j < 2; ++j)
      cuda::pad_scales_table(const_cast<const void* const*>(prep.table), 3 + j, 6, E, int32_t(nbI), int32_t(kbD),
                             int32_t(ldD), pad_gu.as<float>() + j * E * nbI * ldD, stream_);
  }
  if (ldI != kbI) {
    pad_d = scratch(DType::F32, {int64_t(E), nbD * ldI});
    cuda::pad_scales_table(const_cast<const void* const*>(prep.table), 5, 6, E, int32_t(nbD), int32_t(kbI),
                           int32_t(ldI), pad_d.as<float>(), stream_);
  }
  auto wscale = [&](int32_t e, int j) -> const float* {
    if (j < 2 && pad_gu.data()) return pad_gu.as<const float>() + (j * E + e) * nbI * ldD;
    if (j == 2 && pad_d.data()) return pad_d.as<const float>() + e * nbD * ldI;
    return static_cast<const float*>(prep.host_table[size_t(e) * 6 + 3 + size_t(j)]);
  };

  Tensor g = scratch(DType::F32, {TKp, I}), u = scratch(DType::F32, {TKp, I});
  cuda::Fp8Gemm& gemm = fp8_gemm();
  // gate and up: g / u rows poffs[e] .. = xq rows W^T, per active expert, spread over the GEMM lanes (one
  // expert's GEMM of ~T k / E rows fills only part of the GPU).
  gemm.fork();
  int lane = 0;
  for (int32_t e = 0; e < E; ++e) {
    if (c[size_t(e)] == 0) continue;
    cuda::Fp8GemmArgs a;
    a.x = xq.as<const uint8_t>() + int64_t(poffs[e]) * D;
    a.xs = xs.as<const float>() + sbx[e];
    a.T = m4(e);
    a.N = I;
    a.K = D;
    a.ldo = I;
    for (int j = 0; j < 2; ++j) {
      a.w = static_cast<const uint8_t*>(prep.host_table[size_t(e) * 6 + size_t(j)]);
      a.ws = wscale(e, j);
      a.out = (j == 0 ? g : u).as<float>() + int64_t(poffs[e]) * I;
      gemm.run(a, lane++);
    }
  }
  gemm.join();
  cuda::silu_mul(g.as<const float>(), u.as<const float>(), g.as<float>(), TKp * I, stream_);
  u = Tensor();
  // h = silu(g) * u quantised in the padded layout itself (segments poffs, padding rows included), then down
  // per active expert into yp (padded rows), then the rows back to assignment order.
  Tensor hq = scratch(DType::U8, {TKp, I}), hs = scratch(DType::F32, {TKp * kbI});
  q.x = g.as<const float>();
  q.ldx = I;
  q.rows = nullptr;
  q.row_div = 1;
  q.M = TKp;
  q.K = I;
  q.q = hq.as<uint8_t>();
  q.ldq = I;
  q.scales = hs.as<float>();
  q.seg_offs = dm + E + 1;
  q.seg_poffs = nullptr;
  q.seg_sbase = dm + 2 * (E + 1) + E;
  q.pow2_scales = prep.pow2_scales;
  cuda::quantize_fp8(q, stream_);
  Tensor yp = scratch(DType::F32, {TKp, D});
  gemm.fork();
  for (int32_t e = 0; e < E; ++e) {
    if (c[size_t(e)] == 0) continue;
    cuda::Fp8GemmArgs a;
    a.x = hq.as<const uint8_t>() + int64_t(poffs[e]) * I;
    a.xs = hs.as<const float>() + sbh[e];
    a.w = static_cast<const uint8_t*>(prep.host_table[size_t(e) * 6 + 2]);
    a.ws = wscale(e, 2);
    a.out = yp.as<float>() + int64_t(poffs[e]) * D;
    a.T = m4(e);
    a.N = D;
    a.K = I;
    a.ldo = D;
    gemm.run(a, lane++);
  }
  gemm.join();
  cuda::scatter_rows_padded(yp.as<const float>(), perm.as<const int32_t>(), dm, dm + E + 1, E, TK, D, y.as<float>(),
                            stream_);
}

}  // namespace moe
