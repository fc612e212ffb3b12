// MLA attention (expanded form, causal), flash style (kernels.h's attention_*_flash; --attention flash): the same
// maths as attention_gemm.cu without the [b, H, t, t] scores. The forward keeps lse [b, H, t] (the log-sum-exp of
// each query row's scaled scores) instead of the probabilities; the backward recomputes P from it (FlashAttention-2's
// scheme, without atomics: every output element has one writer, so the result is bit-reproducible).
//
// Operands. q, kv, k_rope and dout are rounded to BF16 once, by a conversion pass before the kernels (to_bf16, as
// the GEMM's bf16 mode, and in the backward's delta kernel for dout), not while loading: each K/V row is read by up
// to t/128 query tiles (and each Q/dO row by up to t/128 key tiles in the backward), so a one-time conversion
// halves those reads, and BF16 rows can stream into shared memory with cp.async (asynchronous, overlapped with
// the products; cp.async cannot convert). The pass costs ~6 bytes a value once (~30 us at train-mid's shape).
//
// Tensor cores: mma.sync m16n8k16, BF16 operands, FP32 accumulators (backend/cuda/tensor_core.cuh), fragment
// layouts as mla_prefill.cu's: a warp's C tile [16, 8] holds (row lane/4 (+8), columns 2 (lane%4) + {0, 1}); two
// adjacent C tiles of a row block make one A fragment [16, 16] (how P and dS feed the next product without
// shared memory); B fragments come from row-major shared tiles through ldmatrix (a [n][k] tile: plain, a [k][n]
// tile: .trans). Shared rows are padded by 8 values (16 bytes): the 8 row addresses of an ldmatrix hit 8 distinct
// 4-bank groups at every width here.
//
// Kernels (all 8 warps, 256 threads, one (sequence, head) per CTA, heaviest causal tiles launched first):
//   forward   a tile of 128 queries (warp w: rows 16w..16w+15; Q fragments in registers), key blocks of 64 up to
//             the diagonal through a two-stage cp.async ring; online softmax in FP32 (log2 domain): P = 2^(x - m)
//             rounded to BF16 for P V, O in FP32; O / l and lse written at the end.
//   delta     D_i = sum_d bf16(dO_id) O_id per (row, head), and the BF16 copy of dO (one warp a row).
//   dkv       a block of 128 keys (warp w: keys 16w..16w+15; dK [16, dn+dr] and dV [16, dv] in FP32 registers),
//             query tiles of 64 from the diagonal to the end through a two-stage ring, 16 queries at a time:
//             S^T = K Q^T, P^T = 2^(S^T scale log2e - lse2), dP^T = V dO^T, dS^T = P^T (dP^T - D) scale;
//             dV += bf16(P^T) dO, dK += bf16(dS^T) Q. dK's nope part and dV are added into dkv; its rope part
//             is written to a per-head scratch [H, b*t, dr].
//   dq        a tile of 128 queries (warp w: 16 rows; dQ [16, dn+dr] in registers), key blocks of 64 up to the
//             diagonal through a two-stage ring, 32 keys at a time: S, P, dP, dS as above; dQ += bf16(dS) K.
//   dkr sum   dk_rope += the per-head partials, heads in order (as the GEMM path's one product per head).
//
// BF16 roundings against the GEMM bf16 mode (so its error analysis carries over): Q, K (nope and rope), V, dO, P
// (for P V and P^T dO) and dS (for dS K and dS^T Q) are rounded once to nearest even, as there. Where they differ:
//   - the forward's P V takes P relative to the running maximum (2^(x - m), not the final probability): each P
//     value still carries one rounding of u relative; O is divided by the sum of the rounded values (numerator and
//     denominator agree), while lse sums the unrounded ones, so the backward's recomputed P is the FP32 softmax of
//     the BF16-operand scores, the GEMM mode's FP32 probabilities (up to FP32 rounding: exp2 of the difference to
//     lse instead of exp of the difference to the max, divided by the sum);
//   - D = dO . O over dv values instead of sum_j P_ij dP_ij over t: equal in exact arithmetic (O = P V); it takes
//     the BF16 dO as dP does, and O carries the forward's P rounding (u, random over the keys);
//   - S and dS are recomputed twice in the backward (dkv: S^T = K Q^T; dq: S = Q K^T): the two may differ in the
//     last FP32 bit (the mma's summation order), hence in a BF16 rounding of dS now and then (FlashAttention-2 does
//     the same).
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/tensor_core.cuh"
#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

using moe::cuda::bf16_bits_to_float;
using moe::cuda::cp_async16;
using moe::cuda::cp_async_commit;
using moe::cuda::cp_async_wait;
using moe::cuda::float_to_bf16_bits;
using moe::cuda::ldmatrix_x4;
using moe::cuda::ldmatrix_x4_trans;
using moe::cuda::mma_bf16;

constexpr int kWarps = 8, kThreads = kWarps * 32, kPad = 8;
constexpr int kFwdRows = 128, kFwdKeys = 64;  // forward: queries a CTA, keys a block
constexpr int kBwdKeys = 128, kBwdRows = 64;  // dkv: keys a CTA, queries a tile
constexpr int kDqRows = 128, kDqKeys = 64;    // dq: queries a CTA, keys a block
constexpr int kDqChunk = 32;                  // dq: keys a warp takes at a time (its A fragments loaded once)
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(float_to_bf16_bits(lo)) | (uint32_t(float_to_bf16_bits(hi)) << 16);
}
__device__ __forceinline__ float round_bf16(float x) { return bf16_bits_to_float(float_to_bf16_bits(x)); }

// Pointers and sizes of one call (BF16 operands, FP32 outputs). Rows are tokens of the b sequences, n = b t.
struct FlashArgs {
  const uint16_t *q = nullptr, *kv = nullptr, *kr = nullptr, *dout = nullptr;  // [n, H, dq] [n, H, dn+dv] [n, dr] [n, H, dv]
  const float *lse = nullptr, *delta = nullptr;                                // [b, H, t]
  float *out = nullptr, *lse_out = nullptr;                                    // forward: [n, H, dv], [b, H, t]
  float *dq = nullptr, *dkv = nullptr, *dkr_part = nullptr;                    // [n, H, dq], [n, H, dn+dv], [H, n, dr]
  int t = 0, H = 0, n = 0;
  float scale = 1.0f;
};

// Copies of `rows` rows of a K tile [rows][DQK + pad] (k_nope of head h, then the shared k_rope) and a V tile
// [rows][DV + pad] from token rows row0 .. row0 + rows - 1; rows at or past `valid` are zero-filled.
template <int DN, int DR, int DV>
__device__ __forceinline__ void load_kv_tile(uint16_t* kd, uint16_t* vd, int rows, int64_t row0, int valid,
                                             const FlashArgs& p, int h) {
  constexpr int DQK = DN + DR, QP = DQK + kPad, VP = DV + kPad;
  const int tid = int(threadIdx.x);
  for (int i = tid; i < rows * (DQK / 8); i += kThreads) {
    const int r = i / (DQK / 8), col = (i % (DQK / 8)) * 8;
    const bool ok = r < valid;
    const int64_t row = row0 + (ok ? r : 0);
    const uint16_t* src = col < DN ? p.kv + (row * p.H + h) * (DN + DV) + col : p.kr + row * DR + (col - DN);
    cp_async16(kd + r * QP + col, src, ok);
  }
  for (int i = tid; i < rows * (DV / 8); i += kThreads) {
    const int r = i / (DV / 8), col = (i % (DV / 8)) * 8;
    const bool ok = r < valid;
    const int64_t row = row0 + (ok ? r : 0);
    cp_async16(vd + r * VP + col, p.kv + (row * p.H + h) * (DN + DV) + DN + col, ok);
  }
}

// Copies of a Q tile [rows][DQK + pad] and a dO tile [rows][DV + pad] (dO only when dod is not null).
template <int DQK, int DV>
__device__ __forceinline__ void load_q_tile(uint16_t* qd, uint16_t* dod, int rows, int64_t row0, int valid,
                                            const FlashArgs& p, int h) {
  constexpr int QP = DQK + kPad, VP = DV + kPad;
  const int tid = int(threadIdx.x);
  for (int i = tid; i < rows * (DQK / 8); i += kThreads) {
    const int r = i / (DQK / 8), col = (i % (DQK / 8)) * 8;
    const bool ok = r < valid;
    const int64_t row = row0 + (ok ? r : 0);
    cp_async16(qd + r * QP + col, p.q + (row * p.H + h) * DQK + col, ok);
  }
  if (!dod) return;
  for (int i = tid; i < rows * (DV / 8); i += kThreads) {
    const int r = i / (DV / 8), col = (i % (DV / 8)) * 8;
    const bool ok = r < valid;
    const int64_t row = row0 + (ok ? r : 0);
    cp_async16(dod + r * VP + col, p.dout + (row * p.H + h) * DV + col, ok);
  }
}

// ---- forward -------------------------------------------------------------------------------------------------
// grid (H, ceil(t / 128), b); blockIdx.y = 0 is the last query tile (the most keys).
template <int DN, int DR, int DV>
__global__ void __launch_bounds__(kThreads, 1) flash_forward_kernel(const FlashArgs p) {
  constexpr int DQK = DN + DR, QP = DQK + kPad, VP = DV + kPad;
  constexpr int KS = DQK / 16, NT = kFwdKeys / 8, VT = DV / 8, PK = kFwdKeys / 16;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);  // [128][QP]
  uint16_t* ks = qs + kFwdRows * QP;                      // [2][64][QP]
  uint16_t* vs = ks + 2 * kFwdKeys * QP;                  // [2][64][VP]

  const int h = int(blockIdx.x), tiles = int(gridDim.y), tile = tiles - 1 - int(blockIdx.y), seq = int(blockIdx.z);
  const int t = p.t, q0 = tile * kFwdRows, tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int64_t base = int64_t(seq) * t;  // the sequence's first token row
  const int qcount = min(kFwdRows, t - q0);
  const int nkeys = q0 + qcount;  // keys 0 .. nkeys-1 are seen by some row of the tile
  const int nblocks = (nkeys + kFwdKeys - 1) / kFwdKeys;

  load_q_tile<DQK, DV>(qs, nullptr, kFwdRows, base + q0, qcount, p, h);
  load_kv_tile<DN, DR, DV>(ks, vs, kFwdKeys, base, min(kFwdKeys, nkeys), p, h);
  cp_async_commit();

  // This thread's rows: lane/4 and lane/4 + 8 of the warp's 16; position -1 past the sequence (sees no key).
  const int row0 = warp * 16 + lane / 4;
  int qpos[2];
#pragma unroll
  for (int q = 0; q < 2; ++q) qpos[q] = row0 + 8 * q < qcount ? q0 + row0 + 8 * q : -1;
  const int wmax = min(q0 + warp * 16 + 15, t - 1), wmin = q0 + warp * 16;  // the warp's positions (if any)
  const bool active = wmin < t;

  cp_async_wait<0>();
  __syncthreads();
  uint32_t qf[KS][4];
#pragma unroll
  for (int k = 0; k < KS; ++k) ldmatrix_x4(qf[k], qs + (warp * 16 + lane % 16) * QP + k * 16 + (lane / 16) * 8);

  const float sl = p.scale * kLog2e;
  float o[VT][4];
#pragma unroll
  for (int v = 0; v < VT; ++v) o[v][0] = o[v][1] = o[v][2] = o[v][3] = 0.0f;
  // m: running max of x = scale S log2e; l: sum of the BF16-rounded 2^(x - m) (O's denominator); le: the same of
  // the unrounded values (lse's).
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f}, le[2] = {0.0f, 0.0f};

  for (int j = 0; j < nblocks; ++j) {
    if (j + 1 < nblocks) {
      const int k1 = (j + 1) * kFwdKeys;
      load_kv_tile<DN, DR, DV>(ks + ((j + 1) % 2) * kFwdKeys * QP, vs + ((j + 1) % 2) * kFwdKeys * VP, kFwdKeys,
                               base + k1, min(kFwdKeys, nkeys - k1), p, h);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int key0 = j * kFwdKeys;
    if (active && key0 <= wmax) {  // some row of this warp sees some key of the block
      const uint16_t* kt = ks + (j % 2) * kFwdKeys * QP;
      const uint16_t* vt = vs + (j % 2) * kFwdKeys * VP;
      float s[NT][4];
#pragma unroll
      for (int n = 0; n < NT; ++n) s[n][0] = s[n][1] = s[n][2] = s[n][3] = 0.0f;
#pragma unroll
      for (int k = 0; k < KS; ++k)
#pragma unroll
        for (int n = 0; n < NT; n += 2) {
          uint32_t b[4];
          ldmatrix_x4(b, kt + (n * 8 + lane % 8 + (lane / 16) * 8) * QP + k * 16 + ((lane / 8) % 2) * 8);
          mma_bf16(s[n], qf[k], b[0], b[1]);
          mma_bf16(s[n + 1], qf[k], b[2], b[3]);
        }
      const bool mask = key0 + kFwdKeys - 1 > wmin;
      float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
      for (int n = 0; n < NT; ++n)
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const int key = key0 + n * 8 + 2 * (lane % 4) + (c & 1);
          float x = s[n][c] * sl;
          if (mask && key > qpos[c / 2]) x = -INFINITY;
          s[n][c] = x;
          mx[c / 2] = fmaxf(mx[c / 2], x);
        }
      float alpha[2], mu[2];
#pragma unroll
      for (int q = 0; q < 2; ++q) {
        mx[q] = fmaxf(mx[q], __shfl_xor_sync(0xffffffffu, mx[q], 1));
        mx[q] = fmaxf(mx[q], __shfl_xor_sync(0xffffffffu, mx[q], 2));
        const float mn = fmaxf(m[q], mx[q]);
        mu[q] = mn == -INFINITY ? 0.0f : mn;  // a row with no key yet (or a padding row) stays at 0
        alpha[q] = exp2f(m[q] - mu[q]);
        m[q] = mn;
        l[q] *= alpha[q];
        le[q] *= alpha[q];
      }
#pragma unroll
      for (int v = 0; v < VT; ++v) {
        o[v][0] *= alpha[0];
        o[v][1] *= alpha[0];
        o[v][2] *= alpha[1];
        o[v][3] *= alpha[1];
      }
      // P = 2^(x - m), rounded to BF16 as the A fragments of P V (keys 16k .. 16k+15).
      uint32_t pa[PK][4];
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        float pr[4];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          const float e = exp2f(s[n][c] - mu[c / 2]);
          le[c / 2] += e;
          pr[c] = round_bf16(e);
          l[c / 2] += pr[c];
        }
        pa[n / 2][(n % 2) * 2 + 0] = pack_bf16(pr[0], pr[1]);
        pa[n / 2][(n % 2) * 2 + 1] = pack_bf16(pr[2], pr[3]);
      }
#pragma unroll
      for (int k = 0; k < PK; ++k)
#pragma unroll
        for (int v = 0; v < VT; v += 2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, vt + (k * 16 + lane % 8 + ((lane / 8) % 2) * 8) * VP + v * 8 + (lane / 16) * 8);
          mma_bf16(o[v], pa[k], b[0], b[1]);
          mma_bf16(o[v + 1], pa[k], b[2], b[3]);
        }
    }
    __syncthreads();  // the next iteration's copies overwrite the stage read here
  }

  // O / l and lse = (m + log2 le) ln 2: rows row0 and row0 + 8, columns 8 v + 2 (lane % 4) + {0, 1}.
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    float sum = l[q], sume = le[q];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    sume += __shfl_xor_sync(0xffffffffu, sume, 1);
    sume += __shfl_xor_sync(0xffffffffu, sume, 2);
    if (qpos[q] < 0) continue;
    const float inv = 1.0f / sum;  // >= 1: the row's maximum contributes 2^0
    float* dst = p.out + ((base + qpos[q]) * p.H + h) * DV + 2 * (lane % 4);
#pragma unroll
    for (int v = 0; v < VT; ++v)
      *reinterpret_cast<float2*>(dst + v * 8) = make_float2(o[v][2 * q] * inv, o[v][2 * q + 1] * inv);
    if (lane % 4 == 0) p.lse_out[(int64_t(seq) * p.H + h) * t + qpos[q]] = (m[q] + log2f(sume)) * kLn2;
  }
}

// ---- backward: D and the BF16 dO -------------------------------------------------------------------------------
// One warp per (token row, head): dout_bf = bf16(dout); delta[seq, h, i] = sum_d bf16(dout) out, in a fixed order.
__global__ void flash_delta_kernel(uint16_t* dout_bf, float* delta, const float* dout, const float* out, int64_t rows,
                                   int H, int dv, int t) {
  const int64_t r = int64_t(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;  // r = token * H + head
  const int lane = int(threadIdx.x % 32);
  if (r >= rows) return;
  float acc = 0.0f;
  for (int c = lane; c < dv; c += 32) {
    const uint16_t b = float_to_bf16_bits(dout[r * dv + c]);
    dout_bf[r * dv + c] = b;
    acc += bf16_bits_to_float(b) * out[r * dv + c];
  }
  acc = moe::cuda::warp_sum(acc);
  if (lane == 0) {
    const int64_t token = r / H, h = r % H, seq = token / t, i = token % t;
    delta[(seq * H + h) * t + i] = acc;
  }
}

// ---- backward: dK, dV ------------------------------------------------------------------------------------------
// grid (H, ceil(t / 128), b); blockIdx.y = 0 is the first key block (the most queries).
template <int DN, int DR, int DV>
__global__ void __launch_bounds__(kThreads, 1) flash_dkv_kernel(const FlashArgs p) {
  constexpr int DQK = DN + DR, QP = DQK + kPad, VP = DV + kPad;
  constexpr int KS = DQK / 16, VS = DV / 16, NQ = DQK / 8, NV = DV / 8;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint16_t* ks = reinterpret_cast<uint16_t*>(smem_raw);  // [128][QP]
  uint16_t* vs = ks + kBwdKeys * QP;                      // [128][VP]
  uint16_t* qs = vs + kBwdKeys * VP;                      // [2][64][QP]
  uint16_t* dos = qs + 2 * kBwdRows * QP;                 // [2][64][VP]
  float* lse2s = reinterpret_cast<float*>(dos + 2 * kBwdRows * VP);  // [2][64]: lse log2 e, +inf past the sequence
  float* ds_ = lse2s + 2 * kBwdRows;                                 // [2][64]: D, 0 past the sequence

  const int h = int(blockIdx.x), kb = int(blockIdx.y), seq = int(blockIdx.z);
  const int t = p.t, k0 = kb * kBwdKeys, tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int64_t base = int64_t(seq) * t;
  const int64_t stat0 = (int64_t(seq) * p.H + h) * t;  // lse and delta of the (sequence, head)
  const int ntiles = (t - k0 + kBwdRows - 1) / kBwdRows;  // query tiles k0, k0 + 64, .. (k0 is a multiple of 64)

  auto load_tile = [&](int i, int st) {
    const int qt0 = k0 + i * kBwdRows;
    load_q_tile<DQK, DV>(qs + st * kBwdRows * QP, dos + st * kBwdRows * VP, kBwdRows, base + qt0, t - qt0, p, h);
    if (tid < kBwdRows) {
      const bool ok = qt0 + tid < t;
      lse2s[st * kBwdRows + tid] = ok ? p.lse[stat0 + qt0 + tid] * kLog2e : INFINITY;
      ds_[st * kBwdRows + tid] = ok ? p.delta[stat0 + qt0 + tid] : 0.0f;
    }
  };
  load_kv_tile<DN, DR, DV>(ks, vs, kBwdKeys, base + k0, t - k0, p, h);
  load_tile(0, 0);
  cp_async_commit();

  const float sl = p.scale * kLog2e;
  const int kw0 = k0 + warp * 16;  // the warp's keys kw0 .. kw0 + 15
  const bool active = kw0 < t;
  float dk[NQ][4], dv[NV][4];
#pragma unroll
  for (int v = 0; v < NQ; ++v) dk[v][0] = dk[v][1] = dk[v][2] = dk[v][3] = 0.0f;
#pragma unroll
  for (int v = 0; v < NV; ++v) dv[v][0] = dv[v][1] = dv[v][2] = dv[v][3] = 0.0f;

  for (int i = 0; i < ntiles; ++i) {
    if (i + 1 < ntiles) load_tile(i + 1, (i + 1) % 2);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int st = i % 2, qt0 = k0 + i * kBwdRows;
    const uint16_t* qt = qs + st * kBwdRows * QP;
    const uint16_t* dot = dos + st * kBwdRows * VP;
    const float* lse2 = lse2s + st * kBwdRows;
    const float* dd = ds_ + st * kBwdRows;
#pragma unroll 1
    for (int c = 0; c < kBwdRows / 16 && active; ++c) {
      const int qc = qt0 + c * 16;  // queries qc .. qc + 15
      if (qc >= t) break;
      if (qc + 15 < kw0) continue;  // every query of the chunk precedes every key of the warp
      // S^T [16 keys, 16 queries] = K Q^T and dP^T = V dO^T (A: the warp's K / V rows, B: the chunk's Q / dO rows).
      float s[2][4], dp[2][4];
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
      for (int k = 0; k < KS; ++k) {
        uint32_t a[4], b[4];
        ldmatrix_x4(a, ks + (warp * 16 + lane % 16) * QP + k * 16 + (lane / 16) * 8);
        ldmatrix_x4(b, qt + (c * 16 + lane % 8 + (lane / 16) * 8) * QP + k * 16 + ((lane / 8) % 2) * 8);
        mma_bf16(s[0], a, b[0], b[1]);
        mma_bf16(s[1], a, b[2], b[3]);
      }
#pragma unroll
      for (int k = 0; k < VS; ++k) {
        uint32_t a[4], b[4];
        ldmatrix_x4(a, vs + (warp * 16 + lane % 16) * VP + k * 16 + (lane / 16) * 8);
        ldmatrix_x4(b, dot + (c * 16 + lane % 8 + (lane / 16) * 8) * VP + k * 16 + ((lane / 8) % 2) * 8);
        mma_bf16(dp[0], a, b[0], b[1]);
        mma_bf16(dp[1], a, b[2], b[3]);
      }
      // P^T = 2^(x - lse2) (0 above the diagonal: key > query), dS^T = P^T (dP^T - D) scale; both rounded to BF16
      // as A fragments over the chunk's 16 queries. Element e of C tile n: key kw0 + lane/4 + 8 (e/2), query
      // qc + 8 n + 2 (lane % 4) + (e & 1).
      const bool mask = qc < kw0 + 15;
      uint32_t pa[4], da[4];
#pragma unroll
      for (int n = 0; n < 2; ++n) {
        float pv[4], dsv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int ql = c * 16 + n * 8 + 2 * (lane % 4) + (e & 1);  // the query within the tile
          const int key = kw0 + lane / 4 + 8 * (e / 2);
          float x = exp2f(s[n][e] * sl - lse2[ql]);
          if (mask && key > qt0 + ql) x = 0.0f;
          pv[e] = x;
          dsv[e] = x * (dp[n][e] - dd[ql]) * p.scale;
        }
        pa[n * 2 + 0] = pack_bf16(pv[0], pv[1]);
        pa[n * 2 + 1] = pack_bf16(pv[2], pv[3]);
        da[n * 2 + 0] = pack_bf16(dsv[0], dsv[1]);
        da[n * 2 + 1] = pack_bf16(dsv[2], dsv[3]);
      }
      // dV [16 keys, dv] += P^T dO, dK [16 keys, dq] += dS^T Q (B: the chunk's dO / Q rows, transposed loads).
#pragma unroll
      for (int v = 0; v < NV; v += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, dot + (c * 16 + lane % 8 + ((lane / 8) % 2) * 8) * VP + v * 8 + (lane / 16) * 8);
        mma_bf16(dv[v], pa, b[0], b[1]);
        mma_bf16(dv[v + 1], pa, b[2], b[3]);
      }
#pragma unroll
      for (int v = 0; v < NQ; v += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, qt + (c * 16 + lane % 8 + ((lane / 8) % 2) * 8) * QP + v * 8 + (lane / 16) * 8);
        mma_bf16(dk[v], da, b[0], b[1]);
        mma_bf16(dk[v + 1], da, b[2], b[3]);
      }
    }
    __syncthreads();  // the next iteration's copies overwrite the stage read here
  }

  // Keys kw0 + lane/4 (+8), columns 8 v + 2 (lane % 4) + {0, 1}: dk_nope and dv added into dkv, dk_rope written
  // to the head's partial.
  if (!active) return;
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int key = kw0 + lane / 4 + 8 * q;
    if (key >= t) continue;
    const int64_t row = base + key;
    float* dst = p.dkv + (row * p.H + h) * (DN + DV) + 2 * (lane % 4);
    float* part = p.dkr_part + (int64_t(h) * p.n + row) * DR + 2 * (lane % 4);
#pragma unroll
    for (int v = 0; v < NQ; ++v) {
      if (v * 8 < DN) {
        float2* d2 = reinterpret_cast<float2*>(dst + v * 8);
        const float2 old = *d2;
        *d2 = make_float2(old.x + dk[v][2 * q], old.y + dk[v][2 * q + 1]);
      } else {
        *reinterpret_cast<float2*>(part + (v * 8 - DN)) = make_float2(dk[v][2 * q], dk[v][2 * q + 1]);
      }
    }
#pragma unroll
    for (int v = 0; v < NV; ++v) {
      float2* d2 = reinterpret_cast<float2*>(dst + DN + v * 8);
      const float2 old = *d2;
      *d2 = make_float2(old.x + dv[v][2 * q], old.y + dv[v][2 * q + 1]);
    }
  }
}

// ---- backward: dQ --------------------------------------------------------------------------------------------
// grid (H, ceil(t / 128), b); blockIdx.y = 0 is the last query tile (the most keys).
template <int DN, int DR, int DV>
__global__ void __launch_bounds__(kThreads, 1) flash_dq_kernel(const FlashArgs p) {
  constexpr int DQK = DN + DR, QP = DQK + kPad, VP = DV + kPad;
  constexpr int KS = DQK / 16, VS = DV / 16, NQ = DQK / 8, NC = kDqChunk / 8;
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);  // [128][QP]
  uint16_t* dos = qs + kDqRows * QP;                      // [128][VP]
  uint16_t* ks = dos + kDqRows * VP;                      // [2][64][QP]
  uint16_t* vs = ks + 2 * kDqKeys * QP;                   // [2][64][VP]

  const int h = int(blockIdx.x), tiles = int(gridDim.y), tile = tiles - 1 - int(blockIdx.y), seq = int(blockIdx.z);
  const int t = p.t, q0 = tile * kDqRows, tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int64_t base = int64_t(seq) * t;
  const int64_t stat0 = (int64_t(seq) * p.H + h) * t;
  const int qcount = min(kDqRows, t - q0), nkeys = q0 + qcount;
  const int nblocks = (nkeys + kDqKeys - 1) / kDqKeys;

  load_q_tile<DQK, DV>(qs, dos, kDqRows, base + q0, qcount, p, h);
  load_kv_tile<DN, DR, DV>(ks, vs, kDqKeys, base, min(kDqKeys, nkeys), p, h);
  cp_async_commit();

  // The thread's rows qw0 + lane/4 (+8): lse log2 e (+inf past the sequence: P = 0) and D.
  const int qw0 = q0 + warp * 16, wmax = min(qw0 + 15, t - 1);
  const bool active = qw0 < t;
  float lse2[2], dd[2];
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int i = qw0 + lane / 4 + 8 * q;
    lse2[q] = i < t ? p.lse[stat0 + i] * kLog2e : INFINITY;
    dd[q] = i < t ? p.delta[stat0 + i] : 0.0f;
  }
  const float sl = p.scale * kLog2e;
  float dq[NQ][4];
#pragma unroll
  for (int v = 0; v < NQ; ++v) dq[v][0] = dq[v][1] = dq[v][2] = dq[v][3] = 0.0f;

  for (int j = 0; j < nblocks; ++j) {
    if (j + 1 < nblocks) {
      const int k1 = (j + 1) * kDqKeys;
      load_kv_tile<DN, DR, DV>(ks + ((j + 1) % 2) * kDqKeys * QP, vs + ((j + 1) % 2) * kDqKeys * VP, kDqKeys,
                               base + k1, min(kDqKeys, nkeys - k1), p, h);
    }
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const uint16_t* kt = ks + (j % 2) * kDqKeys * QP;
    const uint16_t* vt = vs + (j % 2) * kDqKeys * VP;
#pragma unroll 1
    for (int c = 0; c < kDqKeys / kDqChunk && active; ++c) {
      const int kc = j * kDqKeys + c * kDqChunk;  // keys kc .. kc + kDqChunk - 1
      if (kc > wmax) break;                       // past every query of the warp
      // S [16 queries, 32 keys] = Q K^T and dP = dO V^T (A: the warp's Q / dO rows, loaded once for the chunk's
      // four C tiles; B: the chunk's K / V rows).
      float s[NC][4], dp[NC][4];
#pragma unroll
      for (int n = 0; n < NC; ++n)
#pragma unroll
        for (int e = 0; e < 4; ++e) s[n][e] = dp[n][e] = 0.0f;
#pragma unroll
      for (int k = 0; k < KS; ++k) {
        uint32_t a[4];
        ldmatrix_x4(a, qs + (warp * 16 + lane % 16) * QP + k * 16 + (lane / 16) * 8);
#pragma unroll
        for (int n = 0; n < NC; n += 2) {
          uint32_t b[4];
          ldmatrix_x4(b, kt + (c * kDqChunk + n * 8 + lane % 8 + (lane / 16) * 8) * QP + k * 16 + ((lane / 8) % 2) * 8);
          mma_bf16(s[n], a, b[0], b[1]);
          mma_bf16(s[n + 1], a, b[2], b[3]);
        }
      }
#pragma unroll
      for (int k = 0; k < VS; ++k) {
        uint32_t a[4];
        ldmatrix_x4(a, dos + (warp * 16 + lane % 16) * VP + k * 16 + (lane / 16) * 8);
#pragma unroll
        for (int n = 0; n < NC; n += 2) {
          uint32_t b[4];
          ldmatrix_x4(b, vt + (c * kDqChunk + n * 8 + lane % 8 + (lane / 16) * 8) * VP + k * 16 + ((lane / 8) % 2) * 8);
          mma_bf16(dp[n], a, b[0], b[1]);
          mma_bf16(dp[n + 1], a, b[2], b[3]);
        }
      }
      // dS = P (dP - D) scale, P = 2^(x - lse2), 0 above the diagonal; rounded to BF16 as A fragments over the
      // chunk's keys (16 a fragment). Element e of C tile n: query qw0 + lane/4 + 8 (e/2), key
      // kc + 8 n + 2 (lane % 4) + (e & 1).
      const bool mask = kc + kDqChunk - 1 > qw0;
      uint32_t da[NC / 2][4];
#pragma unroll
      for (int n = 0; n < NC; ++n) {
        float dsv[4];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int key = kc + n * 8 + 2 * (lane % 4) + (e & 1), query = qw0 + lane / 4 + 8 * (e / 2);
          float x = exp2f(s[n][e] * sl - lse2[e / 2]);
          if (mask && key > query) x = 0.0f;
          dsv[e] = x * (dp[n][e] - dd[e / 2]) * p.scale;
        }
        da[n / 2][(n % 2) * 2 + 0] = pack_bf16(dsv[0], dsv[1]);
        da[n / 2][(n % 2) * 2 + 1] = pack_bf16(dsv[2], dsv[3]);
      }
      // dQ [16, dq] += dS K (B: the chunk's K rows, 16 keys a k-step, transposed loads).
#pragma unroll
      for (int k = 0; k < NC / 2; ++k)
#pragma unroll
        for (int v = 0; v < NQ; v += 2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, kt + (c * kDqChunk + k * 16 + lane % 8 + ((lane / 8) % 2) * 8) * QP + v * 8 +
                                   (lane / 16) * 8);
          mma_bf16(dq[v], da[k], b[0], b[1]);
          mma_bf16(dq[v + 1], da[k], b[2], b[3]);
        }
    }
    __syncthreads();  // the next iteration's copies overwrite the stage read here
  }

  if (!active) return;
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int i = qw0 + lane / 4 + 8 * q;
    if (i >= t) continue;
    float* dst = p.dq + ((base + i) * p.H + h) * DQK + 2 * (lane % 4);
#pragma unroll
    for (int v = 0; v < NQ; ++v) {
      float2* d2 = reinterpret_cast<float2*>(dst + v * 8);
      const float2 old = *d2;
      *d2 = make_float2(old.x + dq[v][2 * q], old.y + dq[v][2 * q + 1]);
    }
  }
}

// dk_rope [n, dr] += the heads' partials [H, n, dr], head 0 first (the GEMM path's order: one product per head).
__global__ void flash_dkr_sum_kernel(float* dkr, const float* part, int64_t count, int H) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= count) return;
  float acc = dkr[i];
  for (int h = 0; h < H; ++h) acc += part[int64_t(h) * count + i];
  dkr[i] = acc;
}

template <int DN, int DR, int DV>
constexpr size_t forward_smem() {
  return size_t(kFwdRows * (DN + DR + kPad) + 2 * kFwdKeys * (DN + DR + kPad) + 2 * kFwdKeys * (DV + kPad)) * 2;
}
template <int DN, int DR, int DV>
constexpr size_t dkv_smem() {
  return size_t(kBwdKeys * (DN + DR + kPad) + kBwdKeys * (DV + kPad) + 2 * kBwdRows * (DN + DR + kPad) +
                2 * kBwdRows * (DV + kPad)) * 2 + size_t(4 * kBwdRows) * 4;
}
template <int DN, int DR, int DV>
constexpr size_t dq_smem() {
  return size_t(kDqRows * (DN + DR + kPad) + kDqRows * (DV + kPad) + 2 * kDqKeys * (DN + DR + kPad) +
                2 * kDqKeys * (DV + kPad)) * 2;
}

// Launches a kernel with `smem` bytes of dynamic shared memory (above 48 KiB needs the attribute, set at each
// launch: a cheap host call, and no process-wide state).
template <typename Kernel>
bool launch(Kernel k, dim3 grid, size_t smem, cudaStream_t s, const FlashArgs& a) {
  if (cudaFuncSetAttribute(k, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)) != cudaSuccess) return false;
  k<<<grid, kThreads, smem, s>>>(a);
  return cudaPeekAtLastError() == cudaSuccess;
}

template <int DN, int DR, int DV>
bool forward(const FlashArgs& a, int b, cudaStream_t s) {
  static_assert((DN + DR) % 16 == 0 && DV % 16 == 0 && DN % 8 == 0 && DR % 8 == 0, "flash attention head shape");
  const dim3 grid(unsigned(a.H), unsigned((a.t + kFwdRows - 1) / kFwdRows), unsigned(b));
  return launch(flash_forward_kernel<DN, DR, DV>, grid, forward_smem<DN, DR, DV>(), s, a);
}

template <int DN, int DR, int DV>
bool backward(const FlashArgs& a, int b, cudaStream_t s) {
  const dim3 gk(unsigned(a.H), unsigned((a.t + kBwdKeys - 1) / kBwdKeys), unsigned(b));
  const dim3 gq(unsigned(a.H), unsigned((a.t + kDqRows - 1) / kDqRows), unsigned(b));
  return launch(flash_dkv_kernel<DN, DR, DV>, gk, dkv_smem<DN, DR, DV>(), s, a) &&
         launch(flash_dq_kernel<DN, DR, DV>, gq, dq_smem<DN, DR, DV>(), s, a);
}

// The head shapes with kernels: train-mid / DeepSeek-V3 (128, 64, 128), train-default (64, 32, 64), train-small
// (32, 16, 32). 0: none.
int shape_id(const AttnShape& a) {
  if (a.dn == 128 && a.dr == 64 && a.dv == 128) return 1;
  if (a.dn == 64 && a.dr == 32 && a.dv == 64) return 2;
  if (a.dn == 32 && a.dr == 16 && a.dv == 32) return 3;
  return 0;
}

// Sizes every index in int (t, H, n) or int64 products of them; grids need ceil(t / 128) <= 65535, b <= 65535.
bool sizes_ok(const AttnShape& a) {
  return a.t <= (int64_t(1) << 24) && a.heads <= 4096 && a.b * a.t <= INT32_MAX && a.b <= 65535 && a.heads <= 65535;
}

}  // namespace

bool attention_flash_supported(int64_t dn, int64_t dr, int64_t dv) {
  AttnShape a;
  a.dn = dn, a.dr = dr, a.dv = dv;
  return shape_id(a) != 0;
}

bool attention_forward_flash(float* out, float* lse, const float* q, const float* kv, const float* k_rope,
                             const AttnShape& a, const AttnFlash& f, cudaStream_t s) {
  const int id = shape_id(a);
  if (id == 0 || !sizes_ok(a) || !f.q || !f.kv || !f.kr) return false;
  if (a.b == 0 || a.t == 0 || a.heads == 0) return true;
  const int64_t n = a.b * a.t, H = a.heads;
  to_bf16(f.q, q, n * H * (a.dn + a.dr), s);
  to_bf16(f.kv, kv, n * H * (a.dn + a.dv), s);
  to_bf16(f.kr, k_rope, n * a.dr, s);
  FlashArgs p;
  p.q = f.q, p.kv = f.kv, p.kr = f.kr, p.out = out, p.lse_out = lse;
  p.t = int(a.t), p.H = int(H), p.n = int(n), p.scale = a.scale;
  const int b = int(a.b);
  return id == 1 ? forward<128, 64, 128>(p, b, s) : id == 2 ? forward<64, 32, 64>(p, b, s) : forward<32, 16, 32>(p, b, s);
}

bool attention_backward_flash(float* dq, float* dkv, float* dk_rope, const float* dout, const float* out,
                              const float* lse, const float* q, const float* kv, const float* k_rope,
                              const AttnShape& a, const AttnFlash& f, cudaStream_t s) {
  const int id = shape_id(a);
  if (id == 0 || !sizes_ok(a) || !f.q || !f.kv || !f.kr || !f.dout || !f.delta || !f.dkr_part) return false;
  if (a.b == 0 || a.t == 0 || a.heads == 0) return true;
  const int64_t n = a.b * a.t, H = a.heads;
  to_bf16(f.q, q, n * H * (a.dn + a.dr), s);
  to_bf16(f.kv, kv, n * H * (a.dn + a.dv), s);
  to_bf16(f.kr, k_rope, n * a.dr, s);
  flash_delta_kernel<<<blocks_for(n * H * 32, 256), 256, 0, s>>>(f.dout, f.delta, dout, out, n * H, int(H),
                                                                  int(a.dv), int(a.t));
  FlashArgs p;
  p.q = f.q, p.kv = f.kv, p.kr = f.kr, p.dout = f.dout, p.lse = lse, p.delta = f.delta;
  p.dq = dq, p.dkv = dkv, p.dkr_part = f.dkr_part;
  p.t = int(a.t), p.H = int(H), p.n = int(n), p.scale = a.scale;
  const int b = int(a.b);
  const bool ok = id == 1   ? backward<128, 64, 128>(p, b, s)
                  : id == 2 ? backward<64, 32, 64>(p, b, s)
                            : backward<32, 16, 32>(p, b, s);
  if (!ok) return false;
  flash_dkr_sum_kernel<<<blocks_for(n * a.dr, 256), 256, 0, s>>>(dk_rope, f.dkr_part, n * a.dr, int(H));
  return cudaPeekAtLastError() == cudaSuccess;
}

}  // namespace moe::train::cuda
