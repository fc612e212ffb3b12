#pragma once
// Row access to checkpoint weights on the CPU: dot products of an F32 vector with a weight row, and rows
// dequantised to F32. BF16/F16/F32 rows, F8_E4M3 rows with 128x128 block scales and INT4 rows (int4_rows.h);
// vectorised with AVX2.
#include <cstdint>

#include "backend/backend.h"

namespace moe::cpu {

// sum_k x[k] * W[n, k] over the whole row n (FP8: each block's partial sum times its block scale).
float dot_row(const float* x, const Weight& w, int64_t n);
// y[k] += a * W[n, k] over the whole row n (dequantised on the fly).
void axpy_row(float a, const Weight& w, int64_t n, float* y);
// BF16 rows without shuffles: x is repacked once per matmul so that each 16-wide block holds its 8 even
// elements then its 8 odd ones; a 32-byte load of 16 BF16 weights then yields the even weights by a shift and
// the odd ones by a mask. Needs K % 16 == 0.
bool can_use_packed_bf16(const Weight& w);
void pack_bf16_pairs(const float* x, int64_t K, float* packed);
float dot_row_packed_bf16(const float* packed, const Weight& w, int64_t n);
// FP8 rows the same way: x is repacked per 32-wide block so that a 32-byte load of E4M3 weights, viewed as 8
// 32-bit lanes of 4 bytes, yields the weights for x[4l + j] from byte j of lane l by shifts and masks alone.
// E4M3 -> F32 by moving bits: magnitude << 20 and sign << 24 give the value times 2^-120, undone with the block
// scale. Needs K % block_k == 0 and block_k % 32 == 0.
bool can_use_packed_fp8(const Weight& w);
void pack_fp8_quads(const float* x, int64_t K, float* packed);
float dot_row_packed_fp8(const float* packed, const Weight& w, int64_t n);
// out[k] = W[n, k] for k in [k0, k0 + count) (dequantised).
void dequant_row(const Weight& w, int64_t n, int64_t k0, int64_t count, float* out);
// out[i] = v[i] for a BF16/F16/F32 vector (norm weights).
void dequant_vector(const TensorView& v, float* out);
// Plain F32 dot product.
float dot_f32(const float* a, const float* b, int64_t n);
// y[i] += a * x[i]
void axpy_f32(float a, const float* x, float* y, int64_t n);

}  // namespace moe::cpu
