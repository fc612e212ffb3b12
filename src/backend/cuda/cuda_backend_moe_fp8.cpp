// The routed experts of FP8 checkpoints in W8A8 (Prefill::Fp8, FP8 experts with 128x128 blocks), prefill and
// decode batches of >= grouped_experts_min_tokens tokens: see CudaBackend::moe_expert_gemms_fp8 in cuda_backend.h.
// The weights are used as stored (E4M3 with their 128x128 block scales); only the activations are quantised,
// per 1x128 tile. Everything stays on the device (moe_plan's work items): capturable in a decode graph.
#include "backend/cuda/cuda_backend.h"
#include "core/error.h"

namespace moe {

bool CudaBackend::fp8_experts_ok(const PreparedExperts& prep) const {
  return ctx_.options().prefill == CudaOptions::Prefill::Fp8 && prep.dtype == DType::F8_E4M3 &&
         prep.block_n == 128 && prep.block_k == 128 && cuda::grouped_gemm_fp8_shape_ok(prep.inner, prep.hidden) &&
         cuda::grouped_gemm_fp8_shape_ok(prep.hidden, prep.inner);
}

void CudaBackend::moe_expert_gemms_fp8(const TensorView& x, const PreparedExperts& prep, const Tensor& perm,
                                       const Tensor& items, int64_t n_items, int64_t T, int64_t K, const Tensor& y) {
  const int64_t D = prep.hidden, I = prep.inner, TK = T * K;
  // 64-row CTAs (two per SM) while the experts average <= 64 rows (decode batches), else 128-row CTAs.
  const int64_t E = int64_t(prep.host_table.size() / 6);
  const int32_t cta_rows = TK <= 64 * E ? 64 : 128;
  // x per token (not per assignment: the k experts of a token share its row), E4M3 [T4, D] (the padding
  // rows unwritten: the kernel reads rows through perm) + scales [D / 128, T4] (fp8_quant.cu's layout).
  const Fp8Activations xa =
      quantize_activations(x.as<const float>(), D, T, D, prep.pow2_scales, nullptr, false);

  // gate + up with SwiGLU: h[i] = silu(x[perm[i] / K] Wg^T) * (x[perm[i] / K] Wu^T), sorted rows; BF16 with the
  // 128-row CTAs (half the bytes through memory; E4M3's 3-bit mantissa comes after the rounding), else F32.
  const bool hb = cta_rows == 128;
  Tensor h = scratch(hb ? DType::BF16 : DType::F32, {TK, I});
  cuda::GroupedGemmFp8Params up;
  up.items = items.as<const int32_t>();
  up.K = int32_t(D);
  up.N = int32_t(I);
  up.a = xa.q.as<const uint8_t>();
  up.lda = D;
  up.as = xa.s.as<const float>();
  up.ld_as = xa.T4;
  up.a_rows = perm.as<const int32_t>();
  up.a_div = int32_t(K);
  up.wtab = const_cast<const void* const*>(prep.table);
  up.wslot[0] = 0;
  up.wslot[1] = 1;
  up.sslot[0] = 3;
  up.sslot[1] = 4;
  up.swiglu = true;
  if (hb)
    up.h_bf16 = h.as<uint16_t>();
  else
    up.h = h.as<float>();
  up.ldh = I;
  up.cta_rows = cta_rows;
  cuda::grouped_gemm_fp8(up, int32_t(n_items), stream_);

  // h quantised per 1x128 tile (sorted rows), then down: y[perm[i]] = h[i] Wd^T in assignment order.
  const Fp8Activations ha =
      quantize_activations(hb ? nullptr : h.as<const float>(), I, TK, I, prep.pow2_scales,
                           hb ? h.as<const uint16_t>() : nullptr, false);
  cuda::GroupedGemmFp8Params down;
  down.items = items.as<const int32_t>();
  down.K = int32_t(I);
  down.N = int32_t(D);
  down.a = ha.q.as<const uint8_t>();
  down.lda = I;
  down.as = ha.s.as<const float>();
  down.ld_as = ha.T4;
  down.wtab = up.wtab;
  down.wslot[0] = down.wslot[1] = 2;
  down.sslot[0] = down.sslot[1] = 5;
  down.y = y.as<float>();
  down.y_rows = perm.as<const int32_t>();
  down.ldy = D;
  down.cta_rows = cta_rows;
  cuda::grouped_gemm_fp8(down, int32_t(n_items), stream_);
}

}  // namespace moe
