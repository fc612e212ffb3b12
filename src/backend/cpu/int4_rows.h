#pragma once
// Row access to INT4 weights (compressed-tensors pack-quantized, W4A16; layout in backend.h's Weight): the
// nibbles are turned into F32 in registers inside the dot product, one group's partial sum at a time times its
// scale, so the weight stays 4-bit in memory.
#include <cstdint>

#include "backend/backend.h"

namespace moe::cpu {

// sum_k x[k] * W[n, k] over row n.
float dot_row_int4(const float* x, const Weight& w, int64_t n);
// out[i] = W[n, k0 + i] for i < count.
void dequant_row_int4(const Weight& w, int64_t n, int64_t k0, int64_t count, float* out);

}  // namespace moe::cpu
