#pragma once
// Split FP32 master weights (kernels.h's split_weights): a value's 32 bits kept as a BF16 `hi` the GEMMs read as
// they lie and an int16 `lo` that completes it exactly, so the routed experts need no BF16 copy per micro-batch.
//   hi = W rounded to BF16, nearest with ties away from zero (adding half an ulp to the sign-magnitude bits and
//        truncating: the carry runs into the exponent as rounding does). Round-to-nearest-even cannot be used: an
//        even BF16 value would then have 65,537 FP32 values rounding to it and an odd one 65,535, so 16 bits
//        could not name the value; with ties away every BF16 value has exactly 65,536. It differs from nearest
//        even only on exact ties (W's low 16 bits 0x8000: one value in 65,536, one BF16 ulp).
//   lo = W's bits - (hi's bits << 16), in [-2^15, 2^15 - 1]; W's bits = (hi << 16) + lo, mod 2^32 (exact).
// Finite values only: a W whose magnitude rounds past the largest BF16 gets hi = infinity (still exact back).
#include <cuda_runtime.h>

#include <cstdint>

namespace moe::train::cuda {

__device__ __forceinline__ void split_value(float x, uint16_t& hi, int16_t& lo) {
  const uint32_t b = __float_as_uint(x), h = (b + 0x8000u) >> 16;
  hi = uint16_t(h);
  lo = int16_t(int32_t(b - (h << 16)));
}
__device__ __forceinline__ float join_value(uint16_t hi, int16_t lo) {
  return __uint_as_float((uint32_t(hi) << 16) + uint32_t(int32_t(lo)));
}

}  // namespace moe::train::cuda
