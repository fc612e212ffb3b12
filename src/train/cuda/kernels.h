#pragma once
// Launchers of the trainer's CUDA kernels: plain functions of device pointers and a stream, one .cu per op, each
// the twin of the CPU op in train/ops.h (same shapes, same conventions: backward launchers ADD into their
// gradients). FP32 in and out, FP32 accumulation. Included by .cu files (C++17) and by cuda_compute.cpp.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <cstdint>

namespace moe::train::cuda {

// convert.cu: out[i] = bf16(in[i]) (round to nearest even), count values.
void to_bf16(uint16_t* out, const float* in, int64_t count, cudaStream_t s);
// split_weights.cu: FP32 master weights to and from their split form (split_weights.cuh: hi the BF16 value,
// nearest even, and lo the int16 rest; join(split(w)) is w bit for bit, but for a tie over an even truncation,
// which comes back one FP32 ulp nearer zero).
void split_weights(uint16_t* hi, int16_t* lo, const float* w, int64_t count, cudaStream_t s);
void join_weights(float* w, const uint16_t* hi, const int16_t* lo, int64_t count, cudaStream_t s);
// convert.cu: out[i] = bf16 of a hash of (seed, i) mapped to [-1, 1) (never all zeros): operands for rate
// measurements that must not read uninitialised or zero memory.
void fill_bf16_uniform(uint16_t* out, int64_t count, uint32_t seed, cudaStream_t s);

// attention_gemm.cu: MLA, expanded form, causal, b sequences of t tokens one after another (ops.h MlaDims):
// q [b*t, H, dn+dr], kv [b*t, H, dn+dv], k_rope [b*t, dr]; out [b*t, H, dv], probs [b, H, t, t] (0 above the
// diagonal), through cuBLAS strided-batched GEMMs (blas is set to stream s). The backward needs a scratch
// ds of b*H*t*t floats (the score gradients) and adds into dq, dkv, dk_rope. False: a cuBLAS error, or Bf16
// without its scratch.
// Precision of the score and value products (the softmax and its backward are FP32 in every mode):
//   Fp32: FP32 operands and products (no TF32), the reference;
//   Tf32: TF32 tensor cores (10-bit mantissa products);
//   Bf16: every operand rounded to BF16 once (nearest even) into AttnBf16 scratch, FP32 accumulation and outputs:
//         mixed-precision training's attention (what FlashAttention runs in BF16), on the BF16 tensor cores;
//   Flash: not these GEMMs (which refuse it: false) but attention_flash.cu below, with Bf16's roundings.
enum class AttnPrecision { Fp32, Tf32, Bf16, Flash };
struct AttnShape {
  int64_t b = 0, t = 0, heads = 0, dn = 0, dr = 0, dv = 0;
  float scale = 1.0f;
  AttnPrecision prec = AttnPrecision::Fp32;
};
// Bf16 scratch (BF16 bits), sizes in values: q b*t*H*(dn+dr), kv b*t*H*(dn+dv), kr b*t*dr, sq b*H*t*t (P, then
// dS in the backward), dout b*t*H*dv (backward only).
struct AttnBf16 {
  uint16_t *q = nullptr, *kv = nullptr, *kr = nullptr, *sq = nullptr, *dout = nullptr;
};
bool attention_forward_gemm(cublasHandle_t blas, float* out, float* probs, const float* q, const float* kv,
                            const float* k_rope, const AttnShape& a, cudaStream_t s, const AttnBf16* bf = nullptr);
bool attention_backward_gemm(cublasHandle_t blas, float* dq, float* dkv, float* dk_rope, float* ds, const float* dout,
                             const float* probs, const float* q, const float* kv, const float* k_rope,
                             const AttnShape& a, cudaStream_t s, const AttnBf16* bf = nullptr);

// attention_flash.cu: the same attention flash style (FlashAttention-2's scheme on mma.sync BF16 tensor cores,
// FP32 accumulation and softmax; --attention flash): nothing of size t x t, the causal upper triangle skipped.
// The forward writes out [b*t, H, dv] and lse [b, H, t] (FP32 log-sum-exp of each query row's scale * S, natural
// log); the backward recomputes the probabilities from lse and out and ADDS into dq, dkv, dk_rope, with no
// atomics (bit-reproducible). q, kv, k_rope and dout are rounded to BF16 into the scratch (q n*H*(dn+dr), kv
// n*H*(dn+dv), kr n*dr, dout n*H*dv values; n = b*t), and the backward needs delta (b*H*t floats: rowsum(dO O))
// and dkr_part (H*n*dr floats: each head's dk_rope before the in-order sum over heads). Roundings as Bf16's (Q, K,
// V, P, dO, dS; the differences are listed in the file). Kernels for (dn, dr, dv) = (128, 64, 128), (64, 32, 64)
// and (32, 16, 32) (attention_flash_supported); false: another shape, a missing scratch pointer or a launch
// error (a.prec is not read).
struct AttnFlash {
  uint16_t *q = nullptr, *kv = nullptr, *kr = nullptr, *dout = nullptr;
  float *delta = nullptr, *dkr_part = nullptr;
};
bool attention_flash_supported(int64_t dn, int64_t dr, int64_t dv);
bool attention_forward_flash(float* out, float* lse, const float* q, const float* kv, const float* k_rope,
                             const AttnShape& a, const AttnFlash& f, cudaStream_t s);
bool attention_backward_flash(float* dq, float* dkv, float* dk_rope, const float* dout, const float* out,
                              const float* lse, const float* q, const float* kv, const float* k_rope,
                              const AttnShape& a, const AttnFlash& f, cudaStream_t s);

// cross_entropy.cu: per row of logits [n, V]: loss[i] = -log softmax(logits_i)[target_i] (0 for a negative
// target), and logits_i overwritten with dscale * (softmax - onehot) (zeros for a negative target); with
// grad_bf16 [n, V] the gradient is written there instead, rounded to BF16, and the logits are left as they were.
void cross_entropy(float* logits, float* loss, const int32_t* targets, int64_t n, int64_t vocab, float dscale,
                   cudaStream_t s, uint16_t* grad_bf16 = nullptr);

// rmsnorm.cu: y [n, d] = w * x * rstd, and/or its BF16 rounding y_bf16 (nearest even; either may be null);
// backward adds dx (may be null) and dw (may be null; its row sums are taken in row order by one thread per
// column, deterministic).
void rmsnorm_forward(float* y, float* rstd, const float* x, const float* w, int64_t n, int64_t d, float eps,
                     cudaStream_t s, uint16_t* y_bf16 = nullptr);
void rmsnorm_backward(float* dx, float* dw, const float* dy, const float* x, const float* w, const float* rstd,
                      int64_t n, int64_t d, cudaStream_t s);

// swiglu.cu: out = silu(gate) * up; backward adds into dgate, dup (either may be null), or writes them when
// accumulate is false.
void swiglu_forward(float* out, const float* gate, const float* up, int64_t count, cudaStream_t s);
void swiglu_backward(float* dgate, float* dup, const float* dout, const float* gate, const float* up, int64_t count,
                     cudaStream_t s, bool accumulate = true);
// The forms for readers that are only BF16 GEMMs (the grouped experts, the dense and shared MLPs under BF16): the same FP32 values rounded to BF16 (nearest even)
// as they are written, so to_bf16 of the FP32 form gives the same bits; the backward writes (never adds).
void swiglu_forward_bf16(uint16_t* out, const float* gate, const float* up, int64_t count, cudaStream_t s);
void swiglu_backward_bf16(uint16_t* dgate, uint16_t* dup, const float* dout, const float* gate, const float* up,
                          int64_t count, cudaStream_t s);

// rope.cu: rotate interleaved pairs of columns [offset, offset + 2 * half) of every head of x [n, heads,
// head_dim] in place by pos[i] * inv_freq[p], cos/sin times attn_factor; sign -1 is the backward. inv_freq is
// double, as RopeParams keeps it: an FP32 frequency times a position of 4096 is off by ~2e-4 rad.
void rope_rotate(float* x, int64_t n, int64_t heads, int64_t head_dim, int64_t offset, const int32_t* pos,
                 const double* inv_freq, int64_t half, float attn_factor, float sign, cudaStream_t s);

// embedding.cu: out[i] = table[ids[i]]; backward dtable[ids[i]] += dout[i], one thread per column walking the
// rows in order (deterministic, no atomics).
void embedding_forward(float* out, const int32_t* ids, int64_t n, const float* table, int64_t d, cudaStream_t s);
void embedding_backward(float* dtable, const int32_t* ids, int64_t n, const float* dout, int64_t d, cudaStream_t s);
// The same over rows grouped by id on the host (fast at any n: one block per distinct id and 128 columns):
// segment g is id seg_id[g] with the rows order[seg_start[g] .. seg_start[g+1]), ascending; seg_start has
// segments + 1 entries. Each table row gets one add of its rows' sum taken in row order.
void embedding_backward_sorted(float* dtable, const int32_t* seg_id, const int32_t* seg_start, int64_t segments,
                               const int32_t* order, const float* dout, int64_t d, cudaStream_t s);

// adamw.cu: one AdamW update of count values, optimizer.cpp's formula: g' = clip g; m = b1 m + (1-b1) g';
// v = b2 v + (1-b2) g'^2; w = w decay - lr (m / bc1) / (sqrt(v / bc2) + eps), decay = 1 - lr wd (1: no decay),
// bc1 = 1 - b1^step, bc2 = 1 - b2^step.
struct AdamWArgs {
  float clip = 1, lr = 0, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, decay = 1, bc1 = 1, bc2 = 1;
};
void adamw_update(float* w, const float* g, float* m, float* v, int64_t count, const AdamWArgs& a, cudaStream_t s);
// The same with BF16 moments (AdamW::bf16_moments): m and v rounded to BF16 when stored, the update from them.
void adamw_update_bf16(float* w, const float* g, uint16_t* m, uint16_t* v, int64_t count, const AdamWArgs& a,
                       cudaStream_t s);
// The same for weights stored split (split_weights.cuh: BF16 hi + int16 lo, the same FP32 value), moments FP32 or
// BF16 (bf16_moments: m and v are uint16_t arrays).
void adamw_update_split(uint16_t* hi, int16_t* lo, const float* g, void* m, void* v, bool bf16_moments,
                        int64_t count, const AdamWArgs& a, cudaStream_t s);

// elementwise.cu: dst[y * dst_pitch + x] += src[y * src_pitch + x] for x < width, y < height (floats);
// x *= factor; *out = sum of x (or of its squares) in double, in a fixed order (deterministic), through
// `scratch` of sum_scratch_doubles() doubles.
void add_strided(float* dst, int64_t dst_pitch, const float* src, int64_t src_pitch, int64_t width, int64_t height,
                 cudaStream_t s);
void scale(float* x, float factor, int64_t count, cudaStream_t s);
int64_t sum_scratch_doubles();
void sum_double(double* out, double* scratch, const float* x, int64_t count, bool squares, cudaStream_t s);

// router.cu: ops.h's router_forward / router_*_backward / balance_loss_* for n tokens (see the file).
struct RouterArgs {
  int64_t experts = 0, top_k = 0, n_group = 1, topk_group = 1;
  bool sigmoid = true, noaux = true, group_limited = true, norm_topk_prob = true;
  double scaling = 1.0;
};
bool router_supported(const RouterArgs& c);  // K <= 16, n_group <= 64, E <= 1024
// scores [n, E], chosen [n, K], weights [n, K], denom [n]; bias [E] or null.
void router_forward(float* scores, int32_t* chosen, float* weights, float* denom, const float* logits,
                    const float* bias, int64_t n, const RouterArgs& c, cudaStream_t s);
// f [b, E] = E / (K t) x the tokens of each sequence routed to each expert; terms [b*t]: each token's share of
// the balance loss (alpha included), to be summed.
void balance_fractions(float* f, const int32_t* chosen, int64_t b, int64_t t, const RouterArgs& c, cudaStream_t s);
void balance_terms(float* terms, const float* scores, const float* f, int64_t b, int64_t t, const RouterArgs& c,
                   double alpha, cudaStream_t s);
// dlogits [n, E] (written, not added) from dweights [n, K] and, when f is not null, the balance loss (alpha).
void router_backward(float* dlogits, const float* dweights, const float* scores, const int32_t* chosen,
                     const float* denom, const float* f, int64_t b, int64_t t, const RouterArgs& c, double alpha,
                     cudaStream_t s);

// moe.cu: the routed experts' dispatch and combine over the expert-sorted (token, slot) pairs (see the file).
void moe_gather(float* xs, const float* x, const int32_t* rows, int64_t count, int64_t d, cudaStream_t s);
void moe_combine(float* out, const float* eout, const int32_t* pos, const float* weights, int64_t n, int64_t k,
                 int64_t d, cudaStream_t s);
void moe_expert_dout(float* dy, float* dweights, const float* dout, const float* eout, const int32_t* rows,
                     const int32_t* slots, const float* weights, int64_t count, int64_t k, int64_t d, cudaStream_t s);
void moe_scatter_add(float* dx, const float* dxs, const int32_t* pos, int64_t n, int64_t k, int64_t d,
                     cudaStream_t s);
// The grouped experts' forms (their only readers are BF16 GEMMs): xs and dy written as BF16, the FP32 values of
// moe_gather / moe_expert_dout rounded to nearest even (the same bits as to_bf16 of those); dweights as above.
void moe_gather_bf16(uint16_t* xs, const float* x, const int32_t* rows, int64_t count, int64_t d, cudaStream_t s);
// The same gather from x already in BF16 (its producer's rounding): a copy of rows.
void moe_gather_bf16_rows(uint16_t* xs, const uint16_t* x, const int32_t* rows, int64_t count, int64_t d,
                          cudaStream_t s);
void moe_expert_dout_bf16(uint16_t* dy, float* dweights, const float* dout, const float* eout, const int32_t* rows,
                          const int32_t* slots, const float* weights, int64_t count, int64_t k, int64_t d,
                          cudaStream_t s);

// fp8_quant.cu: E4M3 quantisation of an FP32 matrix x [rows, cols] (rows ldx apart) for the FP8 GEMMs
// (fp8_gemm.h), DeepSeek-V3's scheme: one FP32 scale per tile, scale = max(amax / 448, FLT_MIN) (1 for an
// all-zero tile), q = E4M3(v * (1 / scale)) rounded to nearest even, saturating at 448. One block per 128x128
// tile reads x once and writes either or both of
//   q  [rows_out, cols] (x's layout), row_mode 1: 1x128 tiles, scale of (row r, column tile cb) at
//      qs[cb * qs_ld + r] for r < qs_ld (cuBLASLt's VEC128_32F); row_mode 2: 128x128 blocks, scale of block
//      (rb, cb) at qs[rb * qs_ld + cb] (BLK128x128_32F);
//   qt [cols, rows_out] (the transpose; its rows qt_ld apart, rows_out when 0), col_mode 1: 128x1 tiles of x
//      (1x128 tiles of qt), scale of (row tile rb, column c) at qts[rb * qts_ld + c]; col_mode 2: 128x128
//      blocks, scale of block (rb, cb) at qts[cb * qts_ld + rb]. A qt_ld above rows_out places the transpose
//      as the left columns of a wider matrix (fp8_experts.h lays W_gate^T and W_up^T side by side).
// Rows rows .. rows_out-1 are written as zeros (token padding). Mode 0: that output is not written.
// batch > 1: that many matrices of these shapes in one launch, matrix z at x + z x_bstride (floats) and its
// outputs at q + z q_bstride, qs + z qs_bstride, qt + z qt_bstride, qts + z qts_bstride (a layer's experts).
// Needs cols % 16 == 0, rows_out % 16 == 0, x 16-byte aligned, ldx % 4 == 0 (fp8_quantize_args_ok).
struct Fp8QuantArgs {
  const float* x = nullptr;
  int64_t rows = 0, cols = 0, ldx = 0, rows_out = 0;
  int row_mode = 0;
  uint8_t* q = nullptr;
  float* qs = nullptr;
  int64_t qs_ld = 0;
  int col_mode = 0;
  uint8_t* qt = nullptr;
  float* qts = nullptr;
  int64_t qts_ld = 0;
  int64_t qt_ld = 0;  // 0: rows_out
  int batch = 1;
  int64_t x_bstride = 0, q_bstride = 0, qs_bstride = 0, qt_bstride = 0, qts_bstride = 0;
};
bool fp8_quantize_args_ok(const Fp8QuantArgs& a);
void fp8_quantize(const Fp8QuantArgs& a, cudaStream_t s);

// fp8_transpose.cu: a batch of E4M3 matrices under 128x128 block scales, transposed: out [cols, rows] (rows
// out_ld bytes apart) of in [rows, cols] (rows packed), and the scale grid out_scales [cols / 128, rows /
// 128] (rows out_sld apart) of in_scales [rows / 128, cols / 128] (rows in_sld apart). Matrix b of the batch
// is at in + b in_stride (bytes), its scales at in_scales + b in_sstride (values); the same for out. The
// codes are unchanged: under one scale per block, a block's transpose is its codes moved. Needs rows and cols
// multiples of 128, in, out, the strides and out_ld multiples of 16 bytes.
struct Fp8TransposeArgs {
  const uint8_t* in = nullptr;
  const float* in_scales = nullptr;
  int64_t rows = 0, cols = 0, in_stride = 0, in_sld = 0, in_sstride = 0;
  uint8_t* out = nullptr;
  float* out_scales = nullptr;
  int64_t out_ld = 0, out_stride = 0, out_sld = 0, out_sstride = 0;
  int64_t batch = 0;
};
bool fp8_transpose_args_ok(const Fp8TransposeArgs& a);
void fp8_transpose(const Fp8TransposeArgs& a, cudaStream_t s);

}  // namespace moe::train::cuda
