#pragma once
// The CUDA backend's kernels, one file each; CudaBackend (cuda_backend.cpp) plans and dispatches to these.
// Every launcher takes plain parameters and a stream and only enqueues work (no host synchronisation), so
// a step can be captured in a CUDA graph. Activations are F32, the latent cache BF16, weights BF16/F16/F32
// or F8_E4M3 with 128x128 block scales, kept as stored.
#include <cuda_runtime.h>

#include <cstdint>

#include "core/dtype.h"
#include "core/host_device.h"

namespace moe::cuda {

void check(cudaError_t e, const char* what);  // throws moe::Error
#define MOE_CUDA_CHECK(expr) ::moe::cuda::check((expr), #expr)
void check_launch(const char* kernel);  // cudaGetLastError after a launch

// Kernel attributes (the dynamic shared memory of the big-tile kernels) are per device: a CudaContext sets
// them for its device when it is made, through these, once each (no launcher keeps state of its own).
void configure_mla_attention_kernels();  // mla_attention.cu
void configure_grouped_gemm_kernels();   // moe_gemm.cu
void configure_mla_prefill_kernels();    // mla_prefill.cu

// A weight as the kernels see it: [rows, cols] row-major, FP8 with scale[(n / block_n) * kblocks + k / block_k];
// INT4 when group > 0 (backend.h's Weight: uint32 words [rows, cols / 8], value k = (nibble k % 8) - 8, times
// scale[n * cols / group + k / group], F32 or, with bf16_scale, BF16 bits).
struct WeightRef {
  const void* data = nullptr;
  const float* scale = nullptr;
  DType dtype = DType::BF16;
  int64_t rows = 0, cols = 0;
  int32_t block_n = 128, block_k = 128;
  int32_t group = 0;
  bool bf16_scale = false;
  MOE_HOST_DEVICE int64_t kblocks() const { return (cols + block_k - 1) / block_k; }
};

// ---- elementwise.cu ------------------------------------------------------------------------------------
void embedding(const WeightRef& table, const int32_t* ids, int64_t T, float* out, cudaStream_t s);
void add(const float* a, const float* b, float* out, int64_t n, cudaStream_t s);
void gather_rows(const float* x, const int32_t* rows, int64_t R, int64_t D, float* out, cudaStream_t s);
void silu_mul(const float* g, const float* u, float* out, int64_t n, cudaStream_t s);
// out = bf16(x); with lo, also lo = bf16(x - out), so that out + lo holds x to ~2^-17 relative (the split-BF16
// GEMM inputs of prefill, see CudaBackend::gemm).
void f32_to_bf16(const float* x, uint16_t* out, int64_t n, cudaStream_t s, uint16_t* lo = nullptr);
// Any weight (BF16/F16/F32, FP8 or INT4 with scales) to dense BF16 [rows, cols] (with lo: the rounding remainder too).
void weight_to_bf16(const WeightRef& w, uint16_t* out, cudaStream_t s, uint16_t* lo = nullptr);

// ---- fp8_quant.cu: activations to E4M3 for the FP8 x FP8 GEMMs (gemm_fp8.h) ---------------------------
// Row i (of M) of segment s (rows [seg_offs[s], seg_offs[s + 1]), m_s of them; one segment of M rows when
// seg_offs is null) goes to output row r(i) = seg_poffs[s] + (i - seg_offs[s]) (i without seg_poffs):
// q[r(i), k] = e4m3(x[src(i), k] / scale), scale = amax of the 1x128 tile / 448 (1 for an all-zero tile),
// saturating; src(i) = rows ? rows[i] / row_div : i; the scale at scales[sbase_s + kb * m4_s + (i - seg_offs[s])]
// with m4_s = m_s rounded up to a multiple of 4 and sbase_s = seg_sbase[s] (0): cuBLASLt's VEC128_32F layout
// for a GEMM over the segment's m4_s rows (cuBLASLt wants row counts that are multiples of 4; the rows past
// m_s are not written here).
constexpr float kE4M3MaxDevice = 448.0f;
struct Fp8QuantParams {
  const float* x = nullptr;
  const uint16_t* x_bf16 = nullptr;  // instead of x: BF16 rows (ldx apart, as x)
  int64_t ldx = 0;
  const int32_t* rows = nullptr;
  int32_t row_div = 1;
  int64_t M = 0, K = 0;
  uint8_t* q = nullptr;
  int64_t ldq = 0;
  float* scales = nullptr;
  const int32_t* seg_offs = nullptr;   // [nseg + 1]
  const int32_t* seg_sbase = nullptr;  // [nseg]
  const int32_t* seg_poffs = nullptr;  // [nseg], optional
  int32_t nseg = 0;
  // ue8m0 (DeepSeek-V3.1 and later): scale rounded up to a power of two, 2^ceil(log2(amax / 448)), as DeepSeek's
  // own inference code quantises activations for those models (still no value above 448 after division).
  bool pow2_scales = false;
};
void quantize_fp8(const Fp8QuantParams& p, cudaStream_t s);
// out[t, n] (F32, ldo apart) = in[t, n] (BF16, [T, N] dense).
void bf16_rows_to_f32(const uint16_t* in, int64_t T, int64_t N, float* out, int64_t ldo, cudaStream_t s);
// A [rows, cols] scale grid re-laid with ld columns (zeros after cols): cuBLASLt wants the 128x128 grid's
// leading dimension a multiple of 4.
void pad_scales(const float* in, int32_t rows, int32_t cols, int32_t ld, float* out, cudaStream_t s);

// ---- rms_norm.cu ---------------------------------------------------------------------------------------
void rms_norm(const float* x, const WeightRef& w, float eps, int64_t T, int64_t D, float* out, cudaStream_t s);
// h += y (in place), then out = rms_norm(h) * w, in one pass over each row.
void add_rms_norm(float* h, const float* y, const WeightRef& w, float eps, int64_t T, int64_t D, float* out,
                  cudaStream_t s);

// ---- gemv_*.cu: weight-streaming matrix-vector products for few tokens --------------------------------
// out[t, n] = sum_k x[t, k] * W[row_base + n, k] (or, with swiglu, silu(x.Wg[n]) * (x.Wu[n])).
// Dense: blockIdx.y batches independent problems (MLA heads): weight rows, x and out advance by the *_step.
// Grouped (items != nullptr): blockIdx.y is a work item (expert, begin, count) over `perm`; each of up to
// `tile` assignments a = perm[begin + i] reads x row a / x_row_div and writes out row a, with expert e's
// weights from table[e * 6 + matrix] (scales at table[e * 6 + 3 + matrix]). Or (ids != nullptr, tile 1) the
// work item of blockIdx.y = a is (ids[a], a, 1) with perm the identity: no plan.
struct GemvParams {
  DType wdtype = DType::BF16;
  const void* w[2] = {nullptr, nullptr};
  const float* s[2] = {nullptr, nullptr};
  const void* const* table = nullptr;
  int32_t matrix = 0;  // grouped: 0 (gate, with up = 1 when swiglu) or 2 (down)
  int64_t N = 0, K = 0;
  int32_t block_n = 128, block_k = 128;
  int64_t w_row_base = 0, w_row_step = 0;
  const float* x = nullptr;
  int64_t x_stride = 0, x_step = 0;
  float* out = nullptr;
  int64_t out_stride = 0, out_step = 0;
  int32_t T = 0;  // dense: tokens
  const int32_t* items = nullptr;
  const int32_t* perm = nullptr;
  // Grouped without a plan (tile 1): blockIdx.y is assignment a itself, expert ids[a] (valid ids only), one
  // row.
  const int32_t* ids = nullptr;
  int32_t x_row_div = 1;
  int32_t grid_y = 1;
  int32_t assignments = 0;  // grouped: rows of out (the launcher picks its kernel by them)
  bool swiglu = false;
  bool prefetch = false;  // set by gemv(): dense mode asks L2 for its weight rows before pdl_wait()
  // Dense mode: a second weight [second.N, K] (same dtype and K) applied to the same x in the same launch,
  // e.g. MLA's q and kv_a projections. first_block is set by gemv().
  struct Second {
    const void* w = nullptr;
    const float* s = nullptr;
    int64_t N = 0;
    float* out = nullptr;
    int64_t out_stride = 0;
    unsigned first_block = 0;
  } second;
};
constexpr int kGemvMaxTile = 8;  // tokens per pass over the weights
// FP8 grouped passes of one assignment each run on the per-warp tiles (gemv_mma.cuh, warp_tiles_pay) from
// this many assignments (GemvParams::assignments); below, on gemv_mma_block.
constexpr int32_t kGemvWarpTilesFp8 = 16;
// tile in {1, 2, 4, 8}: tokens (dense) or assignments (grouped) processed per pass.
void gemv(const GemvParams& p, int tile, cudaStream_t s);
void gemv_bf16(const GemvParams& p, int tile, cudaStream_t s);  // gemv_bf16.cu (BF16, F16 and F32 go here)
void gemv_fp8(const GemvParams& p, int tile, cudaStream_t s);   // gemv_fp8.cu
// gemv_combine.cu: the grouped GEMV over moe_route's ids (p.ids, tile 1: the routed experts' down projection,
// y = p.out [grid_y, N]) and moe_combine after it in one launch: out [T, N] = plus + sum_j w[t, j] y[t * k +
// j], T = grid_y / k, the same bits as gemv then moe_combine. Returns false, launching nothing, where the
// kernel does not take the parameters. `done`: kGemvCombineColumns device counters at 0, left at 0.
constexpr int64_t kGemvCombineColumns = 1024;  // 16-row columns: output widths up to 16384
struct GemvCombine {
  const float* w = nullptr;     // [T, k] routing weights
  const float* plus = nullptr;  // [T, N] or null
  float* out = nullptr;         // [T, N]
  int32_t k = 0;
  unsigned* done = nullptr;
};
bool gemv_combine(const GemvParams& p, const GemvCombine& c, cudaStream_t s);

// ---- mla_cache.cu ----------------------------------------------------------------------------------------
// cache[slot[t]] = bf16(rms_norm(kv_a[t, :r]) * w, rope(kv_a[t, r:], pos[t])); angles from inv_freq (device
// F64 [dr/2]) and attn_factor.
void mla_write_cache(const float* kv_a, const WeightRef& norm_w, float eps, const double* inv_freq, double attn_factor,
                     const int32_t* positions, const int32_t* slots, int64_t T, int64_t r, int64_t dr, uint16_t* cache,
                     cudaStream_t s);
// Both of the above in one launch.
void mla_rope_and_cache(const float* kv_a, const WeightRef& norm_w, float eps, float* q, const double* inv_freq,
                        double attn_factor, const int32_t* positions, const int32_t* slots, int64_t T, int64_t H,
                        int64_t dn, int64_t r, int64_t dr, uint16_t* cache, cudaStream_t s);
// q [T, H, dn + dr]: rope on the last dr of each head, in place.
void mla_rope_q(float* q, const double* inv_freq, double attn_factor, const int32_t* positions, int64_t T, int64_t H,
                int64_t dn, int64_t dr, cudaStream_t s);

// ---- mla_absorb.cu ---------------------------------------------------------------------------------------
// qf [T, H, r + dr] (BF16) = (W_UK[h]^T q_nope[t, h], q_rope[t, h]) with W_UK[h] rows h*(dn+dv) .. +dn of kv_b.
void mla_absorb_q(const float* q, const WeightRef& kv_b, int64_t T, int64_t H, int64_t dn, int64_t dv, int64_t dr,
                  uint16_t* qf, cudaStream_t s);
// The absorption on the tensor cores (CudaBackend::mla_absorb, batches above the GEMV's tile) takes q's parts
// apart first: qn [T, H, dn] = BF16(q_nope) for the batched GEMM over heads, and qf's rope columns [r, r +
// dr) = BF16(q_rope).
void mla_split_q(const float* q, int64_t T, int64_t H, int64_t dn, int64_t dr, int64_t r, uint16_t* qn,
                 uint16_t* qf, cudaStream_t s);

// ---- mla_attention.cu --------------------------------------------------------------------------------------
// Absorbed MLA attention over the paged latent cache: o_lat[t, h] = softmax_j(scale * qf[t, h] . cache[j]) cache[j, :r]
// over positions j = 0 .. positions[t] of sequence token_seq[t]. The launch (grid, splits, scratch sizes) depends
// only on T, H, r and the cache capacity per sequence (mla_choose_splits), never on the positions, so a CUDA
// graph of it replays correctly: every block derives its range of positions from positions[t] on the device.
struct MlaParams {
  const uint16_t* qf = nullptr;     // [T, H, W] BF16, W = r + dr
  const uint16_t* cache = nullptr;  // [pages, page_size, W] BF16
  int64_t cache_rows = 0;           // pages * page_size, or 0 if unknown (then no tensor-map copies of it)
  const int32_t* block_table = nullptr;
  const int32_t* token_seq = nullptr;
  const int32_t* positions = nullptr;
  int32_t max_pages = 0, page_size = 0;
  int32_t T = 0, H = 0, r = 0, dr = 0;
  float scale = 1.0f;
  int32_t splits = 1;        // pieces each sequence is cut into (mla_choose_splits); 1: no combine
  float* o_part = nullptr;   // [splits, T, H, r] unnormalised partial outputs (splits > 1)
  float* ml_part = nullptr;  // [splits, T, H, 2]: running max (log2 domain) and sum (splits > 1)
  float* o_lat = nullptr;    // [T, H, r] normalised
  float* lse = nullptr;      // [T, H] or null: natural-log log-sum-exp of the scaled scores (scale * qf . c_j)
  // DeepSeek Sparse Attention: [T, K] positions per token (ascending, -1 padded, at least one) instead of
  // 0 .. positions[t]; splits then cut the list (mla_choose_splits with capacity K).
  const int32_t* indices = nullptr;
  int32_t K = 0;
  // The wgmma kernel (mla_decode_wgmma.cu) instead of the mma.sync one; only where mla_wgmma_applies.
  bool wgmma = false;
};
constexpr int kMlaTile = 32;        // cache positions per tile
constexpr int kMlaMaxSplits = 256;  // upper bound of MlaParams::splits
// Splits for T tokens of H heads over a cache of `capacity` positions per sequence (max_pages * page_size) on
// `sms` multiprocessors; `forced` > 0 (CudaOptions::mla_splits, for tuning) takes that many, clamped to what
// the capacity allows.
// `wgmma`: for the wgmma kernels (mla_wgmma_heads per block, 64-position tiles).
int32_t mla_choose_splits(int64_t T, int64_t H, int64_t r, int64_t capacity, int sms, int32_t forced = 0,
                          bool wgmma = false);
void mla_attention(const MlaParams& p, cudaStream_t s);
// ---- mla_decode_wgmma.cu: the same attention on wgmma (H % 16 == 0, r 512, rope 64): 64 heads per block
// where H % 64 == 0, else mla_decode_narrow.cu's 32 (H % 32 == 0) or 16 (mla_narrow_heads) ----
bool mla_wgmma_applies(int64_t H, int64_t r, int64_t dr);
int mla_wgmma_heads(int64_t H);  // heads per block of the wgmma kernel for H
// CudaOptions::mla_decode Auto's choice where a wgmma kernel applies, for T tokens over `capacity` positions
// each: the 64-head kernel always; the narrow one for long contexts (capacity >= 2048) or batches that stream
// at least 32768 cached positions (T x capacity). Below that the mma.sync kernel's 32-position tiles split a
// short context finer. H100, 16 heads, attention + combine, mma.sync / narrow: context 4096 at batch 1 16.7 /
// 15.6 us, 8 29.3 / 27.2, 16 44.3 / 41.7, 64 127.4 / 121.2; context 512 at batch 1 12.5 / 13.3, 8 14.8
// / 14.9, 32 23.1 / 23.0, 64 35.4 / 34.5; the 8-layer peer model's BF16 decode at batch 8, context 512, 1 %
// slower on the narrow kernel (bench/RESULTS.md).
bool mla_wgmma_preferred(int64_t T, int64_t H, int64_t capacity);
void configure_mla_decode_wgmma_kernel();
void mla_attention_wgmma(const MlaParams& p, cudaStream_t s);  // attention only (mla_attention adds the combine)
int mla_narrow_heads(int64_t H);
void configure_mla_decode_narrow_kernel();
void mla_attention_narrow(const MlaParams& p, cudaStream_t s);
// The same attention for any r and dr (the tensor-core kernel is compiled for r/dr 512/64, 256/64, 128/32):
// mla_attention falls back to it; it ignores `splits` and writes o_lat (and lse) directly.
void mla_attention_generic(const MlaParams& p, cudaStream_t s);

// ---- dsa_index_cache.cu, dsa_index_scores.cu, dsa_topk.cu: DeepSeek Sparse Attention's indexer -------------
void dsa_write_index_cache(const float* k, const WeightRef& norm_w, const WeightRef& norm_b, float eps,
                           const double* inv_freq, double attn_factor, const int32_t* positions, const int32_t* slots,
                           int64_t T, int64_t Di, int64_t dr, float* cache, cudaStream_t s);
void dsa_rope_q(float* q, const double* inv_freq, double attn_factor, const int32_t* positions, int64_t T, int64_t Hi,
                int64_t Di, int64_t dr, cudaStream_t s);
void dsa_index_scores(const float* q, const float* weights, const float* cache, const int32_t* block_table,
                      const int32_t* token_seq, const int32_t* positions, int32_t max_pages, int32_t page_size,
                      int64_t T, int64_t Hi, int64_t Di, int64_t L, float scale, float weight_scale, float* scores,
                      cudaStream_t s);
void dsa_topk(const float* scores, const int32_t* positions, int64_t T, int64_t L, int64_t K, int32_t* indices,
              cudaStream_t s);

// ---- moe_route.cu ----------------------------------------------------------------------------------------
// ids, weights [T, top_k + shared_slots]: the last shared_slots columns of a row name the shared experts as
// routed ones (ids num_experts.., weight 1; backend.h's moe_route).
struct RouteParams {
  int32_t num_experts, top_k, n_group, topk_group;
  bool sigmoid, noaux, greedy, norm_topk_prob;
  float routed_scaling_factor;
  int32_t shared_slots = 0;
};
void moe_route(const float* logits, const float* bias, const RouteParams& p, int64_t T, int32_t* ids, float* weights,
               cudaStream_t s);
// ---- moe_router.cu: one token's router GEMV (dense GemvParams, T 1, out = the logits [E]) and its routing
// in one launch; done: a device counter at 0, left at 0.
bool router_route_ok(DType wdtype, int32_t num_experts, int32_t cols);
void router_route(const GemvParams& p, const float* bias, const RouteParams& rp, int32_t* ids, float* weights,
                  unsigned* done, cudaStream_t s);

// ---- moe_plan.cu -----------------------------------------------------------------------------------------------
// Sorts the T*k assignments by expert: perm (expert-contiguous assignment indices) and work items
// (expert, begin, count <= tile), max_items of them (unused ones have count 0).
void moe_plan(const int32_t* ids, int64_t TK, int32_t E, int32_t tile, int32_t max_items, int32_t* perm,
              int32_t* items, int32_t* counts, cudaStream_t s);
// out[t, d] = plus[t, d] + sum_j w[t, j] * y[t * k + j, d] (plus may be null: 0; the shared experts' output)
void moe_combine(const float* y, const float* w, int64_t T, int32_t k, int64_t D, const float* plus, float* out,
                 cudaStream_t s);
// moe_local_choices.cu (Backend::moe_local_choices): n = T * k choices, slots [E, L].
void moe_local_choices(const int32_t* ids, const float* w, const int32_t* slots, int64_t n, int32_t k, int32_t L,
                       int32_t E, int32_t* local_ids, float* local_w, cudaStream_t s);
// speculative_chain.cu (Backend::kept_rows, Backend::chain_batch): S sequences of R rows; block_table [S, W].
void kept_rows(const int32_t* tokens, const int32_t* verified, int64_t S, int32_t R, int32_t* rows,
               cudaStream_t s);
void chain_batch(const int32_t* positions, const int32_t* block_table, const int32_t* rows, int64_t S,
                 int32_t W, int32_t page, int32_t advance, int32_t* out_positions, int32_t* out_slots,
                 int32_t* out_lens, cudaStream_t s);
// Grouped-GEMM helpers: xp[i] = bf16(x[perm[i] / k]); out rows scattered back.
void moe_gather_bf16(const float* x, const int32_t* perm, int64_t TK, int32_t k, int64_t D, uint16_t* xp, cudaStream_t s,
                     uint16_t* xp_lo = nullptr);  // with xp_lo: bf16(x - xp) too
void moe_scatter_rows(const float* yp, const int32_t* perm, int64_t TK, int64_t D, float* y, cudaStream_t s);


// ==== Prefill (many tokens per forward): grouped expert GEMM and expanded-form MLA attention ====

// ---- moe_gemm.cu ---------------------------------------------------------------------------------------------
// Grouped GEMM on the tensor cores (wgmma, BF16 operands, F32 accumulation), see the top of moe_gemm.cu.
// Rows come in tiles of kGroupedRows: work items (expert, begin, count) from moe_plan with that tile, or, with
// items == nullptr, one expert (0) over rows 0 .. M-1. Sorted row i reads A row a_rows[i] / a_div (a_rows null:
// row i). Segment s adds A_s @ W^T with W = table[(e - e_begin) * wstride + bmat[s][j]] (or wdirect[bmat[s][j]]
// when wtab is null); items of experts outside [e_begin, e_end) are skipped.
//   swiglu: output columns n use gate = bmat[s][0] and up = bmat[s][1] rows n; h[i, n] = bf16(silu(g) * u) (and
//           h_lo = the rounding remainder when h_lo is set), ldh-strided, in sorted row order.
//   plain:  y[y_rows ? y_rows[i] : i, n] = acc (F32, ldy-strided).
// K, N and lda must be multiples of 8.
constexpr int kGroupedRows = 128;
struct GroupedGemmParams {
  const int32_t* items = nullptr;
  int32_t M = 0;
  int32_t e_begin = 0, e_end = 1 << 30;
  const int32_t* a_rows = nullptr;
  int32_t a_div = 1;
  int64_t lda = 0;
  int32_t K = 0, N = 0;
  int32_t nseg = 1;
  const uint16_t* a[3] = {nullptr, nullptr, nullptr};
  int32_t bmat[3][2] = {{0, 0}, {0, 0}, {0, 0}};
  const void* const* wtab = nullptr;
  int32_t wstride = 6;
  const void* wdirect[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};
  bool swiglu = false;
  uint16_t* h = nullptr;
  uint16_t* h_lo = nullptr;
  int64_t ldh = 0;
  float* y = nullptr;
  const int32_t* y_rows = nullptr;
  int64_t ldy = 0;
};
// tiles: the number of work items (grid rows); items with count 0 exit at once.
void grouped_gemm(const GroupedGemmParams& p, int32_t tiles, cudaStream_t s);

// ---- moe_gemm_fp8.cu -----------------------------------------------------------------------------------------
// Grouped FP8 x FP8 GEMM (wgmma m64n128k32 E4M3 operands, F32 accumulation promoted per 128-deep K block with
// the activation's 1x128 scale times the weight's 128x128 block scale; DeepSeek-V3's scheme), see the top of
// moe_gemm_fp8.cu. Work items (expert, begin, count <= kGroupedRows) from moe_plan (items null: one expert, 0,
// over rows 0 .. M-1); no host read-back, so the launch can be captured in a graph.
// A: E4M3 rows [*, K] (lda bytes apart); sorted row i reads A row a_rows[i] / a_div (a_rows null: i), whose
// scale for K block kb is as[kb * ld_as + that row] (fp8_quant.cu's layout for one segment: ld_as = rows
// rounded up to a multiple of 4). Weights of expert e: E4M3 [N, K] at wtab[e * wstride + wslot[j]] with their
// [ceil(N/128), ceil(K/128)] F32 block scales (row-major) at wtab[e * wstride + sslot[j]].
//   swiglu: j = 0 gate, 1 up; h[i, n] = silu(g) * u (F32, ldh-strided, sorted rows), n < N (the inner width).
//   plain:  y[y_rows ? y_rows[i] : i, n] = acc (F32, ldy-strided).
// K must be a multiple of 16, N of 8, lda of 16, N x K below 2^31.
struct GroupedGemmFp8Params {
  const int32_t* items = nullptr;
  int32_t M = 0;
  int32_t K = 0, N = 0;
  const uint8_t* a = nullptr;
  int64_t lda = 0;
  const float* as = nullptr;
  int64_t ld_as = 0;
  const int32_t* a_rows = nullptr;
  int32_t a_div = 1;
  const void* const* wtab = nullptr;
  int32_t wstride = 6;
  int32_t wslot[2] = {0, 1};
  int32_t sslot[2] = {3, 4};
  // Without a table (wtab null): one expert's weights given directly (a dense layer: items null, M rows):
  // weights for slots 0 and 1 (1: SwiGLU's up), then their 128x128 block scales.
  const void* wdirect[4] = {nullptr, nullptr, nullptr, nullptr};
  bool swiglu = false;
  float* h = nullptr;
  uint16_t* h_bf16 = nullptr;  // instead of h (cta_rows 128): h rounded to BF16 (half the bytes to write and read)
  int64_t ldh = 0;
  float* y = nullptr;
  const int32_t* y_rows = nullptr;
  int64_t ldy = 0;
  // Rows per CTA: 128 (two warpgroups, one CTA per SM) or 64 (one warpgroup, two CTAs per SM, a work item split
  // over grid.z = 2 CTAs of which the second exits when the item has <= 64 rows: decode batches).
  int32_t cta_rows = 128;
};
// tiles: the number of work items (grid rows); items with count 0 exit at once.
void grouped_gemm_fp8(const GroupedGemmFp8Params& p, int32_t tiles, cudaStream_t s);
bool grouped_gemm_fp8_shape_ok(int64_t N, int64_t K);
void configure_grouped_gemm_fp8_kernels();

// ---- mla_prefill.cu --------------------------------------------------------------------------------------------
// lat [rows, W] (BF16) = the cache rows of positions 0 .. lens[i]-1 of sequence seqs[i], at rows offs[i] ...
void mla_gather_latent(const uint16_t* cache, const int32_t* block_table, int32_t max_pages, int32_t page_size,
                       int64_t W, const int32_t* seqs, const int32_t* lens, const int32_t* offs, int32_t S,
                       int32_t max_len, uint16_t* lat, cudaStream_t s);
// Causal attention in MLA's expanded form, flash-style (mma.sync BF16, online softmax in F32):
//   out[t, h*dv .. +dv] = sum_j softmax_j(scale * (q[t,h,:dn] . k_nope[j,h] + q[t,h,dn:] . k_rope[j])) v[j,h]
// over the context rows j = ctx0 .. ctx0 + positions[t] of the token's tile. A tile is up to kMlaPrefillRows
// tokens of one sequence: tiles[4 i ..] = (first context row, first entry of qlist, count, keys to visit).
constexpr int kMlaPrefillRows = 128;
struct MlaPrefillParams {
  const float* q = nullptr;         // [T, H, dn + dr] F32, rope applied
  const uint16_t* kv = nullptr;     // [rows, H, dn + dv] BF16: k_nope then v per head (kv_b applied to the latent)
  const uint16_t* lat = nullptr;    // [rows, W] BF16: gathered cache rows; k_rope = columns r .. r + dr
  const int32_t* tiles = nullptr;   // [num_tiles, 4]
  const int32_t* qlist = nullptr;   // token indices, by sequence, positions ascending within a tile
  const int32_t* positions = nullptr;
  float* out = nullptr;             // [T, H * dv]
  int32_t num_tiles = 0, H = 0, dn = 0, dr = 0, dv = 0, r = 0, W = 0;
  float scale = 1.0f;
};
bool mla_prefill_supported(int64_t dn, int64_t dr, int64_t dv);  // head shapes with a compiled kernel
void mla_prefill_attention(const MlaPrefillParams& p, cudaStream_t s);

}  // namespace moe::cuda
