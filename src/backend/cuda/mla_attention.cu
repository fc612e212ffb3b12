// MLA attention over the paged BF16 latent cache, absorbed form: a multi-query attention whose key is the
// W = r + dr wide cache row and whose value is its first r columns, on the tensor cores (mma.sync m16n8k16,
// BF16 operands, F32 accumulators).
//
// Work split (FlashDecoding-like split-KV):
//   grid (token t x head group, split s); a block of 8 warps handles 16*MT heads of one token (MT = 1 for
//   Moonlight's 16 heads, 2 for DeepSeek-V3's 128: 32 heads per block, so the 4 blocks of one token read
//   each cache tile once from DRAM and 4 times from L2 instead of 8). The host fixes the number of splits from
//   (T, H, cache capacity) alone; each block derives its own range from positions[t] on the device, so a CUDA
//   graph captured once replays correctly at any length (empty splits write m = -inf, l = 0).
//   The split's positions are walked in tiles of 32 cache rows (one lane per row for the page lookup),
//   copied with cp.async into a ring of STAGES shared-memory buffers: STAGES-1 tiles are in flight while one
//   is computed (4 x 37 KB per SM keeps ~110 KB of reads outstanding, enough for full DRAM bandwidth).
// Per tile:
//   1. Partial scores. Warp w owns k-quarter w/2 of the W columns (9 k-steps of 16) and, for MT = 1, the 16
//      positions (w%2)*16.. of the tile (MT = 2: head rows (w%2)*16.. and all 32 positions). Its query
//      fragments stay in registers for the whole kernel (loaded once), so each cache element is read from
//      shared memory once for the scores; the four k-quarters' partial sums meet in shared memory (F32).
//   2. Online softmax (all 256 threads: 256/(16*MT) threads per head row): sum the partials, scale (log2
//      domain), mask positions past the causal end, running max m and sum l; P = 2^(S - m) rounded to BF16
//      (l sums the rounded values, so numerator and denominator agree), alpha = 2^(m_old - m_new).
//   3. O = alpha O + P V, V = the tile's first r columns: warp w owns r/8 output columns for all heads; B
//      fragments come from the same shared tile through ldmatrix.trans.
//   A split writes its unnormalised O and (m, l) (or, with a single split, the normalised o_lat directly);
//   the combine kernel merges splits: o = sum_s 2^(m_s - M) O_s / sum_s 2^(m_s - M) l_s, parallel over
//   (token, head, 128 latent columns) and over splits within a block. With MlaParams::lse, the step that
//   normalises (the split kernel with one split, else the combine) also writes ln 2 * (M + log2 L).
// Three __syncthreads per tile: tile landed + previous tile done (then the next copy is issued into the
// buffer just freed), partial scores written, P written.
#include <algorithm>
#include <cstdint>
#include <cstdlib>
#include <cstring>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/tensor_core.cuh"

namespace moe::cuda {

namespace {

constexpr int kWarps = 8, kThreads = 32 * kWarps, kTile = kMlaTile, kKq = 4;
static_assert(kTile == 32 && kTile % kWarps == 0, "a tile has one cache row per lane (the page lookup)");

__device__ __forceinline__ uint32_t pack_bf16(uint16_t lo, uint16_t hi) { return uint32_t(lo) | (uint32_t(hi) << 16); }

constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;
// The natural-log log-sum-exp from the kernel's log2-domain running max m and sum l = sum_j 2^(s_j log2e - m).
__device__ __forceinline__ float lse_of(float m, float l) { return (m + log2f(l)) * kLn2; }

// Shapes and shared-memory layout of one kernel instance. R: latent (value) width, W = R + rope width,
// MT: 16-head m-tiles per block, STAGES: cache tiles in the shared ring.
template <int R, int W, int MT, int STAGES>
struct Layout {
  static constexpr int ROWS = 16 * MT;                              // heads per block
  static constexpr int WP = W + 8;                                  // BF16 per shared cache row (+16 B: no bank conflicts)
  static constexpr int CH = W / 8;                                  // 16-byte chunks per cache row
  static constexpr int KSTEPS = W / 16, KPW = (KSTEPS + kKq - 1) / kKq;  // k-steps in all, per k-quarter
  static constexpr int NTW = 2 * MT;                                // score n-tiles (8 positions) per warp
  static constexpr int NT = R / (8 * kWarps);                       // output n-tiles (8 columns) per warp
  static constexpr int TPR = kThreads / ROWS, CPT = kTile / TPR;    // softmax: threads per row, columns each
  static constexpr int RS = kTile + 8;                              // floats per partial-score row
  static constexpr int PP = kTile + 8;                              // BF16 per row of P
  static constexpr size_t kv_bytes = size_t(STAGES) * kTile * WP * 2;
  static constexpr size_t red_bytes = size_t(kKq) * ROWS * RS * 4;  // [k-quarter][head][position]
  static constexpr size_t p_bytes = size_t(ROWS) * PP * 2;
  static constexpr size_t bytes = kv_bytes + red_bytes + p_bytes + size_t(2) * ROWS * 4;
  static_assert(MT == 1 || MT == 2, "16 or 32 heads per block");
  static_assert(W % 16 == 0 && R % 128 == 0 && NT % 2 == 0, "MLA kernel widths");
  static_assert((W * 2) % 16 == 0 && (WP * 2) % 32 == 16, "odd 16-byte stride between shared cache rows");
};

template <int R, int W, int MT, int STAGES>
__global__ void __launch_bounds__(kThreads, 1) mla_decode_kernel(const MlaParams p) {
  using L = Layout<R, W, MT, STAGES>;
  constexpr int ROWS = L::ROWS, WP = L::WP, CH = L::CH, KSTEPS = L::KSTEPS, KPW = L::KPW, NTW = L::NTW,
                NT = L::NT, TPR = L::TPR, CPT = L::CPT, RS = L::RS, PP = L::PP;
  // Score B fragments loaded ahead: all of the k-quarter for 16 heads (36 registers), 2 k-steps for 32.
  constexpr int PD = MT == 1 ? KPW - 1 : (KPW > 2 ? 2 : KPW - 1), NB = PD + 1;
  extern __shared__ __align__(16) uint8_t smem[];
  uint16_t* kv = reinterpret_cast<uint16_t*>(smem);                        // [STAGES][kTile][WP]
  float* red = reinterpret_cast<float*>(smem + L::kv_bytes);               // [kKq][ROWS][RS]
  uint16_t* ps = reinterpret_cast<uint16_t*>(smem + L::kv_bytes + L::red_bytes);  // [ROWS][PP]
  float* row_alpha = reinterpret_cast<float*>(smem + L::kv_bytes + L::red_bytes + L::p_bytes);  // [ROWS]
  float* row_l = row_alpha + ROWS;                                         // [ROWS]

  const int groups = (p.H + ROWS - 1) / ROWS;
  const int t = int(blockIdx.x) / groups, h0 = (int(blockIdx.x) % groups) * ROWS, split = int(blockIdx.y);
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;

  pdl_trigger();  // the combine kernel may start its blocks now; it waits for this grid before reading
  pdl_wait();     // positions, block table, qf and the cache come from earlier kernels

  // This split's positions: the sequence's len = positions[t] + 1 positions are cut into p.splits pieces
  // of split_len (a multiple of the tile); the last pieces may be empty. Sparse (MlaParams::indices, V3.2):
  // the list of the token's chosen positions takes their place, len = its valid prefix (binary search for
  // the first -1), and entry j names the cache position to read.
  const int32_t* sel = p.indices ? p.indices + int64_t(t) * p.K : nullptr;
  const int len = sel ? valid_prefix(sel, p.K) : p.positions[t] + 1;
  int split_len = (len + p.splits - 1) / p.splits;
  split_len = (split_len + kTile - 1) / kTile * kTile;
  const int begin = split * split_len, end = min(len, begin + split_len);
  const int ntiles = end > begin ? (end - begin + kTile - 1) / kTile : 0;
  const int32_t* pages = p.block_table + int64_t(p.token_seq[t]) * p.max_pages;
  const int page_size = p.page_size;

  // Lane l looks up position (first position of the next tile to copy) + l one copy ahead: it keeps the raw
  // block-table entry and the offset in the page, and forms the cache row only when copying, so the load's
  // latency passes during a tile's compute instead of stalling the warp (offset -1: past the end; the copy
  // then zero-fills, so masked rows hold no stale NaN that 0 * V would spread).
  int next_page = 0, next_off = -1;
  auto lookup = [&](int j) {
    const int pj = j < end ? (sel ? sel[j] : j) : 0;
    next_off = j < end ? pj % page_size : -1;
    if (j < end) next_page = pages[pj / page_size];
  };
  if (ntiles > 0) lookup(begin + lane);
  auto issue = [&](int k) {  // copy tile k into stage k % STAGES; always one commit group
    if (k < ntiles) {
      uint16_t* dst = kv + (k % STAGES) * kTile * WP;
      const int rows = next_off >= 0 ? next_page * page_size + next_off : -1;
#pragma unroll
      for (int rr = 0; rr < kTile / kWarps; ++rr) {  // warp w copies rows 4w .. 4w+3, a lane every 32nd chunk
        const int r = warp * (kTile / kWarps) + rr, row = __shfl_sync(0xffffffffu, rows, r);
        const uint16_t* src = p.cache + int64_t(max(row, 0)) * W;
#pragma unroll
        for (int c = lane; c < CH; c += 32) cp_async16(dst + r * WP + c * 8, src + c * 8, row >= 0);
      }
      if (k + 1 < ntiles) lookup(begin + (k + 1) * kTile + lane);
    }
    cp_async_commit();
  };
#pragma unroll
  for (int k = 0; k < STAGES - 1; ++k) issue(k);

  // Score roles: k-quarter kq; m-tile mi (MT = 2) or positions nb.. (MT = 1).
  const int sub = warp & 1, kq = warp >> 1;
  const int mi = MT == 2 ? sub : 0, nb = MT == 1 ? sub * 16 : 0;
  const int g = lane / 4, c2 = 2 * (lane % 4);  // mma fragment row and column pair
  // Query A fragments of this warp's k-quarter, kept in registers: rows h0 + 16 mi + g (+8).
  uint32_t qa[KPW][4];
  {
    const int ha = h0 + 16 * mi + g, hb = ha + 8;
    const uint16_t* qrow_a = p.qf + (int64_t(t) * p.H + ha) * W;
    const uint16_t* qrow_b = p.qf + (int64_t(t) * p.H + hb) * W;
#pragma unroll
    for (int ks = 0; ks < KPW; ++ks) {
      const int k0 = (kq * KPW + ks) * 16 + c2;
      const bool kv_ok = kq * KPW + ks < KSTEPS;
      qa[ks][0] = kv_ok && ha < p.H ? *reinterpret_cast<const uint32_t*>(qrow_a + k0) : 0u;
      qa[ks][1] = kv_ok && hb < p.H ? *reinterpret_cast<const uint32_t*>(qrow_b + k0) : 0u;
      qa[ks][2] = kv_ok && ha < p.H ? *reinterpret_cast<const uint32_t*>(qrow_a + k0 + 8) : 0u;
      qa[ks][3] = kv_ok && hb < p.H ? *reinterpret_cast<const uint32_t*>(qrow_b + k0 + 8) : 0u;
    }
  }

  // Softmax role: head row srow, columns sc .. sc + CPT - 1 of each tile. m_run is the row's running max
  // (log2 domain, equal in the TPR threads of a row); l_run this thread's share of the running sum.
  const int srow = int(threadIdx.x) / TPR, sc = (int(threadIdx.x) % TPR) * CPT;
  const float scale = p.scale * kLog2e;
  float m_run = -INFINITY, l_run = 0.0f;

  float acc[MT][NT][4];
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int i = 0; i < NT; ++i) acc[m][i][0] = acc[m][i][1] = acc[m][i][2] = acc[m][i][3] = 0.0f;
  const int c0 = warp * (R / kWarps);  // this warp's output columns

  for (int it = 0; it < ntiles; ++it) {
    cp_async_wait<STAGES - 2>();
    __syncthreads();  // tile `it` landed for every thread; every warp finished tile it-1
    issue(it + STAGES - 1);  // into the stage tile it-1 used
    const uint16_t* kt = kv + (it % STAGES) * kTile * WP;
    const int j0 = begin + it * kTile;

    // 1. Partial scores over this warp's k-quarter. Straight-line code (no per-step branch when the
    // k-steps split evenly): the B fragments are loaded PD steps ahead of their mma, and even and odd
    // k-steps accumulate separately, so no chain of dependent mma is longer than ceil(KPW / 2).
    {
      const uint16_t* bbase = kt + (nb + (lane / 16) * 8 + lane % 8) * WP + ((lane / 8) % 2) * 8;
      auto step_ok = [&](int ks) { return KSTEPS % kKq == 0 || kq * KPW + ks < KSTEPS; };
      uint32_t b[NB][NTW / 2][4];
      auto load_b = [&](int ks, uint32_t (&bb)[NTW / 2][4]) {
#pragma unroll
        for (int n = 0; n < NTW / 2; ++n)  // two n-tiles (16 positions) per ldmatrix
          ldmatrix_x4(bb[n], bbase + n * 16 * WP + (kq * KPW + ks) * 16);
      };
      float s[2][NTW][4];
#pragma unroll
      for (int e = 0; e < 2; ++e)
#pragma unroll
        for (int n = 0; n < NTW; ++n) s[e][n][0] = s[e][n][1] = s[e][n][2] = s[e][n][3] = 0.0f;
#pragma unroll
      for (int ks = 0; ks < PD && ks < KPW; ++ks)
        if (step_ok(ks)) load_b(ks, b[ks % NB]);
#pragma unroll
      for (int ks = 0; ks < KPW; ++ks) {
        if (ks + PD < KPW && step_ok(ks + PD)) load_b(ks + PD, b[(ks + PD) % NB]);
        if (!step_ok(ks)) continue;
#pragma unroll
        for (int n = 0; n < NTW / 2; ++n) {
          mma_bf16(s[ks % 2][2 * n], qa[ks], b[ks % NB][n][0], b[ks % NB][n][1]);
          mma_bf16(s[ks % 2][2 * n + 1], qa[ks], b[ks % NB][n][2], b[ks % NB][n][3]);
        }
      }
      float* rq = red + (kq * ROWS + 16 * mi + g) * RS + nb + c2;
#pragma unroll
      for (int n = 0; n < NTW; ++n) {
        *reinterpret_cast<float2*>(rq + n * 8) = make_float2(s[0][n][0] + s[1][n][0], s[0][n][1] + s[1][n][1]);
        *reinterpret_cast<float2*>(rq + 8 * RS + n * 8) = make_float2(s[0][n][2] + s[1][n][2], s[0][n][3] + s[1][n][3]);
      }
    }
    __syncthreads();

    // 2. Online softmax of row srow, columns sc..sc+CPT-1.
    {
      float v[CPT];
#pragma unroll
      for (int i = 0; i < CPT; ++i) v[i] = 0.0f;
#pragma unroll
      for (int q = 0; q < kKq; ++q) {
        const float* rr = red + (q * ROWS + srow) * RS + sc;
        if constexpr (CPT == 4) {  // one 16-byte load: a quarter warp reads 128 contiguous bytes
          const float4 x = *reinterpret_cast<const float4*>(rr);
          v[0] += x.x;
          v[1] += x.y;
          v[2] += x.z;
          v[3] += x.w;
        } else {
          static_assert(CPT == 2, "softmax columns per thread");
          const float2 x = *reinterpret_cast<const float2*>(rr);
          v[0] += x.x;
          v[1] += x.y;
        }
      }
      float mx = -INFINITY;
#pragma unroll
      for (int i = 0; i < CPT; ++i) {
        v[i] = j0 + sc + i < end ? v[i] * scale : -INFINITY;
        mx = fmaxf(mx, v[i]);
      }
#pragma unroll
      for (int o = TPR / 2; o > 0; o >>= 1) mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, o));
      const float m_new = fmaxf(m_run, mx);
      const float alpha = m_new == -INFINITY ? 1.0f : ex2(m_run - m_new);
      float sum = 0.0f;
      uint16_t pb[CPT];
#pragma unroll
      for (int i = 0; i < CPT; ++i) {
        pb[i] = float_to_bf16_bits(m_new == -INFINITY ? 0.0f : ex2(v[i] - m_new));
        sum += bf16_bits_to_float(pb[i]);
      }
#pragma unroll
      for (int i = 0; i < CPT; i += 2)
        *reinterpret_cast<uint32_t*>(ps + srow * PP + sc + i) = pack_bf16(pb[i], pb[i + 1]);
      l_run = l_run * alpha + sum;
      m_run = m_new;
      if (sc == 0) row_alpha[srow] = alpha;
    }
    __syncthreads();

    // 3. O = alpha O + P V over this warp's columns, all MT m-tiles.
#pragma unroll
    for (int m = 0; m < MT; ++m) {
      const float al0 = row_alpha[16 * m + g], al1 = row_alpha[16 * m + g + 8];
#pragma unroll
      for (int i = 0; i < NT; ++i) {
        acc[m][i][0] *= al0;
        acc[m][i][1] *= al0;
        acc[m][i][2] *= al1;
        acc[m][i][3] *= al1;
      }
    }
#pragma unroll
    for (int kk = 0; kk < kTile; kk += 16) {
      uint32_t a[MT][4];
#pragma unroll
      for (int m = 0; m < MT; ++m) ldmatrix_x4(a[m], ps + (16 * m + lane % 16) * PP + kk + (lane / 16) * 8);
#pragma unroll
      for (int i = 0; i < NT; i += 2) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, kt + (kk + lane % 8 + ((lane / 8) % 2) * 8) * WP + c0 + i * 8 + (lane / 16) * 8);
#pragma unroll
        for (int m = 0; m < MT; ++m) {
          mma_bf16(acc[m][i], a[m], b[0], b[1]);
          mma_bf16(acc[m][i + 1], a[m], b[2], b[3]);
        }
      }
    }
  }
  cp_async_wait<0>();  // no copy may still target shared memory when the block exits

  // Row sums: each of the TPR threads of a row summed its own columns.
#pragma unroll
  for (int o = TPR / 2; o > 0; o >>= 1) l_run += __shfl_xor_sync(0xffffffffu, l_run, o);
  const bool one = p.splits == 1;
  if (sc == 0) {
    row_l[srow] = l_run;
    if (one && p.lse && h0 + srow < p.H) p.lse[int64_t(t) * p.H + h0 + srow] = lse_of(m_run, l_run);
    if (!one && h0 + srow < p.H)
      *reinterpret_cast<float2*>(p.ml_part + ((int64_t(split) * p.T + t) * p.H + h0 + srow) * 2) = make_float2(m_run, l_run);
  }
  if (ntiles == 0) return;  // an empty split leaves only (m = -inf, l = 0): the combine skips its O
  __syncthreads();

  // Unnormalised partial O of this split, or o_lat itself when there is one split (l > 0: len >= 1).
#pragma unroll
  for (int m = 0; m < MT; ++m)
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int hr = 16 * m + g + 8 * half, hh = h0 + hr;
      if (hh >= p.H) continue;
      const float inv = one ? 1.0f / row_l[hr] : 1.0f;
      float* o = one ? p.o_lat + (int64_t(t) * p.H + hh) * R
                     : p.o_part + ((int64_t(split) * p.T + t) * p.H + hh) * R;
#pragma unroll
      for (int i = 0; i < NT; ++i)
        *reinterpret_cast<float2*>(o + c0 + i * 8 + c2) = make_float2(acc[m][i][2 * half] * inv, acc[m][i][2 * half + 1] * inv);
    }
}

// o_lat[t, h, c] = sum_s 2^(m_s - M) O_s[t, h, c] / sum_s 2^(m_s - M) l_s over the splits that saw positions.
// Block (t*H + h, 128 columns): 8 warps each take every 8th split, a lane 4 columns (16-byte loads), so a
// batch-1 call with tens of splits spreads its partial reads over T*H*r/128 blocks.
constexpr int kCombineCols = 128, kCombineWarps = 8;
__global__ void __launch_bounds__(kCombineWarps * 32) mla_combine_kernel(const MlaParams p) {
  __shared__ float weight[kMlaMaxSplits];
  __shared__ float4 part[kCombineWarps][32];
  const int64_t th = blockIdx.x, stride = int64_t(p.T) * p.H;
  const int warp = int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  pdl_trigger();
  pdl_wait();
  if (warp == 0) {
    float M = -INFINITY;
    for (int s = lane; s < p.splits; s += 32) M = fmaxf(M, p.ml_part[(s * stride + th) * 2]);
    M = warp_max(M);  // finite: split 0 always sees position 0
    float L = 0.0f;
    for (int s = lane; s < p.splits; s += 32) {
      const float m = p.ml_part[(s * stride + th) * 2];
      if (m != -INFINITY) L += ex2(m - M) * p.ml_part[(s * stride + th) * 2 + 1];
    }
    L = warp_sum(L);
    if (p.lse && blockIdx.y == 0 && lane == 0) p.lse[th] = lse_of(M, L);
    for (int s = lane; s < p.splits; s += 32) {
      const float m = p.ml_part[(s * stride + th) * 2];
      weight[s] = m != -INFINITY ? ex2(m - M) / L : 0.0f;
    }
  }
  __syncthreads();
  const int64_t col = int64_t(blockIdx.y) * kCombineCols + lane * 4;
  float4 o = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
  for (int s = warp; s < p.splits; s += kCombineWarps) {
    const float w = weight[s];
    if (w == 0.0f) continue;  // empty split: its O was never written
    const float4 x = *reinterpret_cast<const float4*>(p.o_part + (s * stride + th) * p.r + col);
    o.x += w * x.x;
    o.y += w * x.y;
    o.z += w * x.z;
    o.w += w * x.w;
  }
  part[warp][lane] = o;
  __syncthreads();
  if (warp == 0) {
#pragma unroll
    for (int w = 1; w < kCombineWarps; ++w) {
      const float4 x = part[w][lane];
      o.x += x.x;
      o.y += x.y;
      o.z += x.z;
      o.w += x.w;
    }
    *reinterpret_cast<float4*>(p.o_lat + th * p.r + col) = o;
  }
}

int heads_per_block(int64_t H) { return H >= 32 ? 32 : 16; }

template <int R, int W, int MT, int STAGES>
void launch_attention(const MlaParams& p, cudaStream_t s) {
  using L = Layout<R, W, MT, STAGES>;
  static_assert(L::bytes <= 227 * 1024, "shared memory of one block");
  auto* kernel = mla_decode_kernel<R, W, MT, STAGES>;
  const unsigned groups = unsigned((p.H + L::ROWS - 1) / L::ROWS);
  launch("mla_attention", kernel, dim3(unsigned(p.T) * groups, unsigned(p.splits)), dim3(kThreads), L::bytes, s, p);
}

// Dynamic shared memory above 48 KB, for the current device (configure_mla_attention_kernels).
template <int R, int W, int MT, int STAGES>
void configure_attention() {
  using L = Layout<R, W, MT, STAGES>;
  MOE_CUDA_CHECK(cudaFuncSetAttribute(mla_decode_kernel<R, W, MT, STAGES>,
                                      cudaFuncAttributeMaxDynamicSharedMemorySize, int(L::bytes)));
}
template <int R, int W>
void configure_widths() {
  configure_attention<R, W, 2, 4>();
  configure_attention<R, W, 1, 4>();
}

template <int R, int W>
void launch_widths(const MlaParams& p, cudaStream_t s) {
  if (heads_per_block(p.H) == 32) launch_attention<R, W, 2, 4>(p, s);
  else launch_attention<R, W, 1, 4>(p, s);
}

}  // namespace

void configure_mla_attention_kernels() {
  configure_mla_decode_wgmma_kernel();
  configure_mla_decode_narrow_kernel();
  configure_widths<512, 576>();
  configure_widths<128, 160>();
  configure_widths<256, 320>();
}

int32_t mla_choose_splits(int64_t T, int64_t H, int64_t r, int64_t capacity, int sms, int32_t forced, bool wgmma) {
  // Cost in tile-times of a lone block (~1.5 us on the H100): the blocks of N = T * head groups per split
  // run in ceil(N S / sms) waves of ceil(tiles / S) tiles plus a ramp of ~2 (first copies in flight);
  // splitting adds the combine launch (~2) and ~0.07 per split and wave (partials written and re-read).
  // Fitted to batch-1 runs on the H100 (bench/gpu/NOTES-mla.md): 18 splits best at 18 tiles (context 512),
  // 26-65 at 130 tiles (4096), where 130 splits cost 4.5 us more. The capacity, not the current length,
  // sets the count: the launch must not depend on positions.
  // The wgmma kernels: mla_wgmma_heads per block (64, or the narrow kernel's 16 / 32) and 64-position tiles
  // (the same model in their own units, not fitted to them).
  (void)r;
  const int64_t hpb = wgmma ? mla_wgmma_heads(H) : heads_per_block(H), tile = wgmma ? 64 : kTile;
  const int64_t N = T * ((H + hpb - 1) / hpb);
  const int64_t tiles = std::max<int64_t>(1, (capacity + tile - 1) / tile);
  const int64_t max_splits = std::min<int64_t>(tiles, kMlaMaxSplits);
  if (forced > 0) return int32_t(std::min<int64_t>(forced, max_splits));
  int64_t best = 1;
  double best_cost = 0.0;
  for (int64_t S = 1; S <= max_splits; ++S) {
    const int64_t waves = (N * S + sms - 1) / sms;
    const double cost = double(waves) * double((tiles + S - 1) / S + 2) + (S > 1 ? 2.0 + 0.07 * double(S * waves) : 0.0);
    if (S == 1 || cost < best_cost) {
      best_cost = cost;
      best = S;
    }
  }
  return int32_t(best);
}

void mla_attention(const MlaParams& p, cudaStream_t s) {
  if (p.T == 0) return;
  if (p.splits < 1 || p.splits > kMlaMaxSplits) check(cudaErrorInvalidValue, "mla_attention: split count out of range");
  if (p.wgmma && mla_wgmma_applies(p.H, p.r, p.dr)) mla_attention_wgmma(p, s);  // mla_decode_wgmma.cu
  else if (p.r == 512 && p.dr == 64) launch_widths<512, 576>(p, s);   // DeepSeek-V2/V3, Moonlight, Kimi
  else if (p.r == 128 && p.dr == 32) launch_widths<128, 160>(p, s);   // the tiny test fixture
  else if (p.r == 256 && p.dr == 64) launch_widths<256, 320>(p, s);
  else return mla_attention_generic(p, s);  // any other widths: CUDA cores, one pass (mla_attention_generic.cu)
  if (p.splits > 1)
    launch("mla_combine", mla_combine_kernel, dim3(unsigned(int64_t(p.T) * p.H), unsigned(p.r / kCombineCols)),
           dim3(kCombineWarps * 32), 0, s, p);
}

}  // namespace moe::cuda
