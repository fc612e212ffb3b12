#pragma once
// Device helpers shared by the kernels: conversions from the stored weight types to float.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>

#include <utility>

#include "backend/cuda/cuda_ops.h"

namespace moe::cuda {

// (lo, hi) rounded to nearest-even BF16 in one register, lo in the low half (one cvt.rn.bf16x2).
__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
}
// 16 bytes of a stream read once (weights): through L2, not kept in L1.
__device__ __forceinline__ uint4 load_stream(const void* p) {
  uint4 v;
  asm volatile("ld.global.nc.L1::no_allocate.v4.u32 {%0,%1,%2,%3}, [%4];"
               : "=r"(v.x), "=r"(v.y), "=r"(v.z), "=r"(v.w)
               : "l"(p));
  return v;
}
__device__ __forceinline__ float ex2(float x) {  // 2^x (ex2.approx.ftz: 2 ulp); ex2(-inf) = 0
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}
__device__ __forceinline__ float bf16_bits_to_float(uint32_t b) { return __uint_as_float(b << 16); }
// The length of a V3.2 index row's valid prefix: ascending cache positions, then -1 padding (binary search).
__device__ __forceinline__ int valid_prefix(const int32_t* sel, int K) {
  int lo = 0, hi = K;
  while (lo < hi) {
    const int mid = (lo + hi) / 2;
    if (sel[mid] >= 0) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}
__device__ __forceinline__ uint16_t float_to_bf16_bits(float f) {
  return __bfloat16_as_ushort(__float2bfloat16_rn(f));
}
// FP8 E4M3 by bit placement, for loops where the conversion unit is the bottleneck (cvt e4m3x2 -> f16x2 -> f32:
// ~1.5 conversions per value at a quarter of the integer rate): the byte s eeee mmm, given in bits 31..24 of
// `top`, goes to F32 bits s at 31 and eeee mmm at 26..20: the F32 with exponent field eeee and mantissa mmm,
// which is exactly 2^-120 (1 / kE4m3Placed) times the E4M3 value, for normal values (F32's bias 127 against
// E4M3's 7) and subnormal ones (an F32 subnormal of mantissa m << 20 is m * 2^-129 = 2^-120 * m/8 * 2^-6).
// NaN (0x7f) does not occur in weights. Callers fold kE4m3Placed into the block scale. Products of placed
// weights with activations may be F32 subnormals (no flush to zero in this build): their absolute rounding
// of 2^-149 is 2^-29 in E4M3 units before the block scale, far below E4M3's own 2^-4 relative step.
// Per value: an arithmetic shift (sign copied into bits 31..27) and a mask; a shift left first for the lower bytes.
constexpr float kE4m3Placed = 0x1p120f;
__device__ __forceinline__ float e4m3_placed(uint32_t top) {
  return __int_as_float((int32_t(top) >> 4) & int32_t(0x87f00000u));
}
__device__ __forceinline__ float e4m3_to_float(uint8_t v) {
  const __half_raw h = __nv_cvt_fp8_to_halfraw(__nv_fp8_storage_t(v), __NV_E4M3);
  return __half2float(__half(h));
}
// Element i of a BF16/F16/F32 vector, or of an FP8 weight without its scale.
__device__ __forceinline__ float load_element(const void* p, DType dt, int64_t i) {
  switch (dt) {
    case DType::F32:
      return static_cast<const float*>(p)[i];
    case DType::BF16:
      return bf16_bits_to_float(static_cast<const uint16_t*>(p)[i]);
    case DType::F16:
      return __half2float(__ushort_as_half(static_cast<const uint16_t*>(p)[i]));
    case DType::F8_E4M3:
      return e4m3_to_float(static_cast<const uint8_t*>(p)[i]);
    default:
      return 0.0f;
  }
}
// W[n, k] dequantised.
__device__ __forceinline__ float load_weight(const WeightRef& w, int64_t n, int64_t k) {
  if (w.group > 0) {  // INT4 pack-quantized (cuda_ops.h)
    const uint32_t word = static_cast<const uint32_t*>(w.data)[n * (w.cols / 8) + k / 8];
    const int64_t si = n * (w.cols / w.group) + k / w.group;
    const float s = w.bf16_scale ? bf16_bits_to_float(reinterpret_cast<const uint16_t*>(w.scale)[si]) : w.scale[si];
    return float(int((word >> (4 * (k % 8))) & 0xfu) - 8) * s;
  }
  float v = load_element(w.data, w.dtype, n * w.cols + k);
  if (w.dtype == DType::F8_E4M3) v *= w.scale[(n / w.block_n) * w.kblocks() + k / w.block_k];
  return v;
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}
__device__ __forceinline__ float warp_max(float v) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}

// The sum of v over a block of at most 256 threads (a multiple of 32), for every thread: warp sums, then the
// warps' partial sums in warp order. Once per kernel (its shared partials are not fenced for a second call).
__device__ __forceinline__ float block_sum(float v) {
  __shared__ float partial[8];
  v = warp_sum(v);
  if (threadIdx.x % 32 == 0) partial[threadIdx.x / 32] = v;
  __syncthreads();
  float total = 0.0f;
  for (int i = 0; i < int(blockDim.x / 32); ++i) total += partial[i];
  return total;
}

inline unsigned blocks_for(int64_t n, int threads) { return unsigned((n + threads - 1) / threads); }

// Programmatic dependent launch (PDL). A kernel started with launch() may begin while the kernel before it
// in the stream is still finishing, once every block of that one has called pdl_trigger() (or exited).
// Rules for every kernel launched with launch():
//   - before pdl_wait() it may read only data that no earlier kernel writes (weights, the rope table,
//     parameters) and must write nothing;
//   - pdl_wait() returns when the previous kernel has completed and its writes are visible; since that
//     kernel did the same, everything enqueued earlier has completed too;
//   - pdl_trigger() early (after the prologue) lets the next kernel's blocks start their own prologue
//     (e.g. prefetching their weights) on SMs this one frees.
// Without PDL (a launch with <<<>>>) both are no-ops.
__device__ __forceinline__ void pdl_wait() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.wait;" ::: "memory");
#endif
}
__device__ __forceinline__ void pdl_trigger() {
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 900
  asm volatile("griddepcontrol.launch_dependents;" :::);
#endif
}

// kernel<<<grid, block, smem, s>>>(args...) with the PDL attribute, then check_launch. (Launches without PDL
// were measured slower at batch-1 decode: bench/RESULTS.md; the A/B lives in bench/gpu/sandbox.)
template <typename... Params, typename... Args>
void launch(const char* name, void (*kernel)(Params...), dim3 grid, dim3 block, size_t smem, cudaStream_t s,
            Args&&... args) {
  cudaLaunchAttribute attr[1];
  attr[0].id = cudaLaunchAttributeProgrammaticStreamSerialization;
  attr[0].val.programmaticStreamSerializationAllowed = 1;
  cudaLaunchConfig_t cfg{};
  cfg.gridDim = grid;
  cfg.blockDim = block;
  cfg.dynamicSmemBytes = smem;
  cfg.stream = s;
  cfg.attrs = attr;
  cfg.numAttrs = 1;
  check(cudaLaunchKernelEx(&cfg, kernel, Params(std::forward<Args>(args))...), name);
}

}  // namespace moe::cuda
