#pragma once
// Split FP32 master weights (kernels.h's split_weights): a value's 32 bits kept as a BF16 `hi` the GEMMs read as
// they lie and an int16 `lo` that completes it, so the routed experts need no BF16 copy per micro-batch.
//   hi = W rounded to BF16, nearest even: exactly the operand to_bf16 makes of W (the CPU trainer's BF16 rounding).
//   lo = W's bits - (hi's bits << 16), in [-2^15, 2^15 - 1]; W's bits = (hi << 16) + lo, mod 2^32.
// 16 bits cannot complete every W under nearest even: an even BF16 value has 65,537 FP32 values rounding to it
// (both ties around it), an odd one 65,535. So a W exactly on a tie over an even truncation (low 16 bits 0x8000,
// one value in 131,072) is stored one FP32 ulp nearer zero (low bits 0x7FFF): the same hi, and a master that moved
// by 2^-24 of itself, below the FP32 rounding every AdamW update makes. Every other W comes back bit for bit.
// In bits, after that nudge, nearest even is "add half an ulp and truncate" (the carry runs into the exponent as
// rounding does). Finite values only.
#include <cuda_runtime.h>

#include <cstdint>

namespace moe::train::cuda {

__device__ __forceinline__ void split_value(float x, uint16_t& hi, int16_t& lo) {
  uint32_t b = __float_as_uint(x);
  if ((b & 0x1FFFFu) == 0x8000u) --b;  // a tie over an even truncation: one ulp nearer zero (see above)
  const uint32_t h = (b + 0x8000u) >> 16;
  hi = uint16_t(h);
  lo = int16_t(int32_t(b - (h << 16)));
}
__device__ __forceinline__ float join_value(uint16_t hi, int16_t lo) {
  return __uint_as_float((uint32_t(hi) << 16) + uint32_t(int32_t(lo)));
}

}  // namespace moe::train::cuda
