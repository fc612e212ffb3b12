#pragma once
// Weight-streaming GEMV for decode: out[t, n] = x[t] . W[n] for up to TILE tokens per pass.
//
// Algorithm. Each warp owns two consecutive weight rows (four with SwiGLU's gate and up); its lanes walk
// the row in 16-byte chunks (8 BF16 or 16 FP8 values), lane i taking chunks i, i+32, ..., so a warp reads
// 512 contiguous bytes per step and every weight byte is read exactly once per pass. The chunk loop is
// unrolled so several 16-byte loads per lane are in flight (the loads bypass L1: weights are streamed).
// The TILE token rows of x (F32) are read through L1/L2, where they stay for all rows of the block.
// Partial sums are F32 per lane; FP8 chunks lie inside one 128-wide scale block, so each chunk's product
// is multiplied by its block scale before it is added (DeepSeek's per-block promotion). A warp-shuffle
// reduction finishes each dot product. Grouped mode resolves the expert and the token rows of the work
// item first (see cuda_ops.h), so all experts of a layer run in one launch.
//
// The launcher sends FP8 weights (1-8 tokens) and BF16 weights (2-8 tokens) to the tensor-core variant in
// gemv_mma.cuh instead; this kernel keeps BF16 at one token, F16 / F32 weights and the shapes that one does
// not take, except tall single-token matrices (the LM head), which go to gemv_stream_kernel below.
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/gemv_mma.cuh"

namespace moe::cuda {

// The fused kernels' last-block protocol (moe_router.cu, gemv_combine.cu): every
// thread of each of `total` blocks calls this once, after its block's writes. It returns true in the last
// block to arrive on `counter`, with the other blocks' writes visible, and sets the counter back to 0 there
// (no block of this launch counts again, and the next launch counts only after griddepcontrol.wait, i.e.
// after this one: a graph replay starts from 0).
__device__ __forceinline__ bool last_block_to_arrive(unsigned* counter, unsigned total) {
  __shared__ bool last;
  __threadfence();  // this block's writes visible to the last block
  __syncthreads();
  if (threadIdx.x == 0) last = atomicAdd(counter, 1u) == total - 1;
  __syncthreads();
  if (!last) return false;
  __threadfence();
  if (threadIdx.x == 0) *counter = 0;
  return true;
}

namespace gemv_detail {

// The fused down + combine's tail (gemv_combine.cu), every thread after its block has written its `rows` rows
// of y (block x: rows x * rows ..): the last block of column x to arrive sums those rows of out for every
// token in moe_combine's order of fmaf (the same bits) and sets the column's counter back to 0.
__device__ __forceinline__ void combine_tail(const GemvParams& p, const GemvCombine& c, int rows) {
  if (!last_block_to_arrive(c.done + blockIdx.x, gridDim.y)) return;
  const int64_t D = p.N, r0 = int64_t(blockIdx.x) * rows, T = gridDim.y / c.k;
  for (int64_t i = threadIdx.x; i < T * rows; i += blockDim.x) {
    const int64_t t = i / rows, d = r0 + i % rows;
    if (d >= D) continue;
    float acc = 0.0f;
    for (int j = 0; j < c.k; ++j) {
      const float wj = c.w[t * c.k + j];
      if (wj != 0.0f) acc = fmaf(wj, __ldcg(p.out + (t * c.k + j) * D + d), acc);  // 0: an id -1, y unwritten
    }
    c.out[t * D + d] = c.plus ? c.plus[t * D + d] + acc : acc;
  }
}

constexpr int kWarps = 8, kRowsPerWarp = 2, kRowsPerBlock = kWarps * kRowsPerWarp;

// Elements of one 16-byte chunk as floats.
template <DType WT>
struct Chunk;
template <>
struct Chunk<DType::BF16> {
  static constexpr int kElems = 8;
  __device__ static void unpack(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[2 * i] = __uint_as_float(w[i] << 16);
      f[2 * i + 1] = __uint_as_float(w[i] & 0xffff0000u);
    }
  }
};
template <>
struct Chunk<DType::F16> {
  static constexpr int kElems = 8;
  __device__ static void unpack(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      const float2 p = __half22float2(*reinterpret_cast<const __half2*>(&w[i]));
      f[2 * i] = p.x;
      f[2 * i + 1] = p.y;
    }
  }
};
template <>
struct Chunk<DType::F32> {
  static constexpr int kElems = 4;
  __device__ static void unpack(const uint4& v, float* f) {
    f[0] = __uint_as_float(v.x);
    f[1] = __uint_as_float(v.y);
    f[2] = __uint_as_float(v.z);
    f[3] = __uint_as_float(v.w);
  }
};
// FP8 E4M3 by bit placement (e4m3_placed, cuda_common.cuh): 2^-120 times the values, the factor folded into the
// block scale. The conversion unit's path (cvt e4m3x2 -> f16x2 -> f32) left this GEMV compute-bound at
// ~1.2 TB/s, half the BF16 GEMV's rate for the same number of weights.
template <>
struct Chunk<DType::F8_E4M3> {
  static constexpr int kElems = 16;
  __device__ static void unpack(const uint4& v, float* f) {
    const uint32_t w[4] = {v.x, v.y, v.z, v.w};
#pragma unroll
    for (int i = 0; i < 4; ++i) {
      f[4 * i] = e4m3_placed(w[i] << 24);
      f[4 * i + 1] = e4m3_placed(w[i] << 16);
      f[4 * i + 2] = e4m3_placed(w[i] << 8);
      f[4 * i + 3] = e4m3_placed(w[i]);
    }
  }
};

template <DType WT>
constexpr int elem_bytes() {
  return WT == DType::F32 ? 4 : WT == DType::F8_E4M3 ? 1 : 2;
}

// One pass: TILE token rows (xrows/orows, `count` of them valid) against the rows n0, n0+1 of the matrices.
template <DType WT, int TILE, bool SWIGLU, int R = kRowsPerWarp, int U = 4>
__device__ __forceinline__ void gemv_pass(const GemvParams& p, int64_t N, const char* const* wbase,
                                          const float* const* sbase, int64_t row_base, int64_t n0,
                                          const float* const* xrows, float* const* orows, int count) {
  using C = Chunk<WT>;
  constexpr int M = SWIGLU ? 2 : 1, E = C::kElems;
  constexpr bool kFp8 = WT == DType::F8_E4M3;
  const int lane = threadIdx.x % 32;
  const int64_t K = p.K, nchunks = K % E == 0 ? K / E : 0;  // else all columns take the tail path
  const int64_t kblocks = (K + p.block_k - 1) / p.block_k;
  // Scale block of chunk c: (c * E) / block_k, a shift when block_k / E is a power of two (always for
  // DeepSeek's 128): a 64-bit division per chunk would cost more than the chunk's arithmetic.
  const int64_t chunks_per_block = p.block_k / E;
  const bool pow2_blocks = chunks_per_block > 0 && (chunks_per_block & (chunks_per_block - 1)) == 0;
  const int block_shift = pow2_blocks ? __ffsll(chunks_per_block) - 1 : 0;
  float acc[M][R][TILE];
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int t = 0; t < TILE; ++t) acc[m][r][t] = 0.0f;

  const char* rows[M][R];
  const float* srow[M][R];
#pragma unroll
  for (int r = 0; r < R; ++r) {
    const int64_t n = min(n0 + r, N - 1);  // rows past N repeat the last one and are not stored
#pragma unroll
    for (int m = 0; m < M; ++m) {
      rows[m][r] = wbase[m] + (row_base + n) * K * elem_bytes<WT>();
      srow[m][r] = kFp8 ? sbase[m] + ((row_base + n) / p.block_n) * kblocks : nullptr;
    }
  }

#pragma unroll U
  for (int64_t c = lane; c < nchunks; c += 32) {
    uint4 raw[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r) raw[m][r] = load_stream(rows[m][r] + c * 16);
    // All weights of the chunk unpacked first, then one token row of x at a time: registers hold M*R*E
    // weights and E x values, not TILE*E x values (with FP8's 16-value chunks and 8 tokens, that many
    // spilled).
    float wf[M][R][E], sc[M][R];
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        C::unpack(raw[m][r], wf[m][r]);
        sc[m][r] = kFp8 ? __ldg(srow[m][r] + (pow2_blocks ? c >> block_shift : (c * E) / p.block_k)) * kE4m3Placed
                        : 1.0f;
      }
#pragma unroll
    for (int t = 0; t < TILE; ++t) {
      float xv[E];
      const float4* xp = reinterpret_cast<const float4*>(xrows[t] + c * E);
#pragma unroll
      for (int i = 0; i < E / 4; ++i) {
        const float4 v = __ldg(xp + i);
        xv[4 * i] = v.x;
        xv[4 * i + 1] = v.y;
        xv[4 * i + 2] = v.z;
        xv[4 * i + 3] = v.w;
      }
#pragma unroll
      for (int m = 0; m < M; ++m)
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float d = 0.0f;
#pragma unroll
          for (int i = 0; i < E; ++i) d = fmaf(xv[i], wf[m][r][i], d);
          acc[m][r][t] = fmaf(d, sc[m][r], acc[m][r][t]);
        }
    }
  }
  // Tail columns (K not a multiple of the chunk), element by element.
  for (int64_t k = nchunks * E + lane; k < K; k += 32) {
#pragma unroll
    for (int m = 0; m < M; ++m)
#pragma unroll
      for (int r = 0; r < R; ++r) {
        float wv = load_element(rows[m][r], WT, k);
        if (kFp8) wv *= srow[m][r][k / p.block_k];
#pragma unroll
        for (int t = 0; t < TILE; ++t) acc[m][r][t] = fmaf(xrows[t][k], wv, acc[m][r][t]);
      }
  }
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r)
#pragma unroll
      for (int t = 0; t < TILE; ++t) acc[m][r][t] = warp_sum(acc[m][r][t]);
  if (lane == 0) {
#pragma unroll
    for (int r = 0; r < R; ++r) {
      if (n0 + r >= N) continue;
#pragma unroll
      for (int t = 0; t < TILE; ++t) {
        if (t >= count) continue;
        float v = acc[0][r][t];
        if constexpr (SWIGLU) v = v / (1.0f + __expf(-v)) * acc[M - 1][r][t];
        orows[t][n0 + r] = v;
      }
    }
  }
}

// Dense mode under programmatic dependent launch: before waiting for the previous kernel, the warp asks L2
// for its weight rows (they do not depend on earlier kernels), so streaming them overlaps the previous
// kernel's tail instead of starting after it.
template <DType WT, bool SWIGLU, int R>
__device__ __forceinline__ void prefetch_rows(const GemvParams& p, int64_t N, const char* const* wbase,
                                              int64_t row_base, int64_t n0) {
  constexpr int M = SWIGLU ? 2 : 1;
  const int lane = threadIdx.x % 32;
  const int64_t row_bytes = p.K * elem_bytes<WT>();
#pragma unroll
  for (int m = 0; m < M; ++m)
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const int64_t n = min(n0 + r, N - 1);
      const char* row = wbase[m] + (row_base + n) * row_bytes;
      for (int64_t b = int64_t(lane) * 128; b < row_bytes; b += 32 * 128)
        asm volatile("prefetch.global.L2 [%0];" ::"l"(row + b));
    }
}

// One token against one matrix, one weight row per warp (the unfused single-token GEMV's arithmetic): the
// warp's rows asked of L2 before waiting for the previous kernel, then the pass. For kernels that go on after
// it (moe_router.cu); every thread returns having passed pdl_wait.
template <DType WT>
__device__ __forceinline__ void single_token_pass(const GemvParams& p) {
  const int64_t n0 = int64_t(blockIdx.x) * kWarps + int(threadIdx.x) / 32;
  pdl_trigger();
  const char* wbase[2] = {static_cast<const char*>(p.w[0]), nullptr};
  const float* sbase[2] = {p.s[0], nullptr};
  if (n0 < p.N) prefetch_rows<WT, false, 1>(p, p.N, wbase, 0, n0);
  pdl_wait();  // x comes from the previous kernel
  const float* xrows[1] = {p.x};
  float* orows[1] = {p.out};
  if (n0 < p.N) gemv_pass<WT, 1, false, 1, 8>(p, p.N, wbase, sbase, 0, n0, xrows, orows, 1);
}

// R weight rows per warp: 2, or 1 for dense single-token GEMVs too small to give every SM a block (kv_a,
// the router, W_UV, o_proj at batch 1), which doubles their blocks.
// U: chunk iterations unrolled (16-byte loads per lane and weight row in flight).
template <DType WT, int TILE, bool SWIGLU, int R = kRowsPerWarp, int U = 4>
__global__ void __launch_bounds__(256) gemv_kernel(GemvParams p) {
  const int warp = threadIdx.x / 32;
  // Dense mode with a second matrix (GemvParams::second): blocks from second.first_block on take it.
  const bool second = p.second.first_block > 0 && blockIdx.x >= p.second.first_block;
  const int64_t bx = second ? blockIdx.x - p.second.first_block : blockIdx.x;
  const int64_t N = second ? p.second.N : p.N;
  const int64_t n0 = (bx * kWarps + warp) * R;
  pdl_trigger();
  if (n0 >= N) return;
  const char* wbase[2];
  const float* sbase[2];
  const float* xrows[TILE];
  float* orows[TILE];
  if (grouped(p)) {
    pdl_wait();  // the work items (moe_plan) or the ids (moe_route) come from earlier kernels
    const WorkItem w = work_item(p);
    if (w.count == 0) return;
    for (int m = 0; m < (SWIGLU ? 2 : 1); ++m) {
      wbase[m] = static_cast<const char*>(p.table[w.e * 6 + p.matrix + m]);
      sbase[m] = static_cast<const float*>(p.table[w.e * 6 + 3 + p.matrix + m]);
    }
#pragma unroll
    for (int t = 0; t < TILE; ++t) {
      const int a = assignment(p, w, min(t, w.count - 1));
      xrows[t] = p.x + int64_t(a / p.x_row_div) * p.x_stride;
      orows[t] = p.out + int64_t(a) * p.out_stride;
    }
    gemv_pass<WT, TILE, SWIGLU, R, U>(p, N, wbase, sbase, 0, n0, xrows, orows, w.count);
    return;
  }
  const int64_t y = blockIdx.y;
  for (int m = 0; m < 2; ++m) {
    wbase[m] = static_cast<const char*>(p.w[m]);
    sbase[m] = p.s[m];
  }
  float* out = p.out;
  int64_t out_stride = p.out_stride;
  if (second) {
    wbase[0] = static_cast<const char*>(p.second.w);
    sbase[0] = p.second.s;
    out = p.second.out;
    out_stride = p.second.out_stride;
  }
  const int64_t row_base = p.w_row_base + y * p.w_row_step;
  if (p.prefetch) prefetch_rows<WT, SWIGLU, R>(p, N, wbase, row_base, n0);
  pdl_wait();
  for (int64_t t0 = int64_t(blockIdx.z) * TILE; t0 < p.T; t0 += int64_t(gridDim.z) * TILE) {
    const int count = int(min(int64_t(TILE), int64_t(p.T) - t0));
#pragma unroll
    for (int t = 0; t < TILE; ++t) {
      const int64_t tt = t0 + min(t, count - 1);
      xrows[t] = p.x + y * p.x_step + tt * p.x_stride;
      orows[t] = out + y * p.out_step + tt * out_stride;
    }
    gemv_pass<WT, TILE, SWIGLU, R, U>(p, N, wbase, sbase, row_base, n0, xrows, orows, count);
  }
}

// Tall single-token GEMVs (the LM head: DeepSeek-V3's vocabulary is 129,280 rows): a persistent grid of 2
// blocks per SM instead of one block per 16 rows, whose short lives (one round of loads each, ~30 waves) left
// the head at 3.35 TB/s. x is staged once per block in shared memory (F32); each warp walks the row pairs
// warp, warp + all warps, ..., and per pair every 16-byte load of a group of kStreamGroup chunks per lane is
// issued before its math. Same arithmetic and order as gemv_pass at R = 2 (per-chunk F32 dot products added
// lane by lane, then the warp sum): bit-identical outputs. Measured as a copy in the GEMV sandbox (H200,
// 2026-12-05, bench/RESULTS.md): 129,280 x 2048 BF16 120.5 us (4.40 TB/s of reads) against 157.9 us;
// 11,264 x 2048 13.5 us against 17.9 us. Batch-1 BF16 decode of the llama.cpp-peer checkpoint: +2.5 % (H100,
// bench/RESULTS.md).
constexpr int kStreamGroup = 8;           // 16-byte chunks per lane and row in flight
constexpr int64_t kStreamMinRows = 8192;  // from here on (the 11,264-row case above gained too)
constexpr int64_t kStreamMaxK = 12288;    // x staged in <= 48 KB of shared memory

template <DType WT>
__global__ void __launch_bounds__(256, 2) gemv_stream_kernel(GemvParams p) {
  using C = Chunk<WT>;
  constexpr int E = C::kElems, R = 2;
  extern __shared__ float4 xs4[];  // [K / 4]
  const int lane = int(threadIdx.x) % 32, warp = int(threadIdx.x) / 32;
  const int64_t N = p.N, K = p.K, nch = K / E, row_bytes = K * elem_bytes<WT>();
  const int64_t first = (int64_t(blockIdx.x) * kWarps + warp) * R, stride = int64_t(gridDim.x) * kWarps * R;
  const char* wbase[2] = {static_cast<const char*>(p.w[0]), nullptr};
  pdl_trigger();
  if (first < N) prefetch_rows<WT, false, R>(p, N, wbase, 0, first);  // weights: before the wait
  pdl_wait();                                                         // x comes from the previous kernel
  for (int64_t i = threadIdx.x; i < K / 4; i += blockDim.x) xs4[i] = reinterpret_cast<const float4*>(p.x)[i];
  __syncthreads();
  for (int64_t n0 = first; n0 < N; n0 += stride) {
    const char* rows[R];
#pragma unroll
    for (int r = 0; r < R; ++r) rows[r] = wbase[0] + min(n0 + r, N - 1) * row_bytes;  // past N: not stored
    float acc[R] = {};
    for (int64_t g0 = lane; g0 < nch; g0 += 32 * kStreamGroup) {
      uint4 raw[R][kStreamGroup];
#pragma unroll
      for (int j = 0; j < kStreamGroup; ++j)
#pragma unroll
        for (int r = 0; r < R; ++r)
          raw[r][j] =
              g0 + 32 * j < nch ? load_stream(rows[r] + (g0 + 32 * j) * 16) : make_uint4(0u, 0u, 0u, 0u);
#pragma unroll
      for (int j = 0; j < kStreamGroup; ++j) {
        const int64_t c = g0 + 32 * j;
        if (c >= nch) break;
        float xv[E];
#pragma unroll
        for (int i = 0; i < E / 4; ++i) {
          const float4 v = xs4[c * (E / 4) + i];
          xv[4 * i] = v.x;
          xv[4 * i + 1] = v.y;
          xv[4 * i + 2] = v.z;
          xv[4 * i + 3] = v.w;
        }
#pragma unroll
        for (int r = 0; r < R; ++r) {
          float wf[E];
          C::unpack(raw[r][j], wf);
          float d = 0.0f;
#pragma unroll
          for (int i = 0; i < E; ++i) d = fmaf(xv[i], wf[i], d);
          acc[r] += d;
        }
      }
    }
#pragma unroll
    for (int r = 0; r < R; ++r) {
      const float v = warp_sum(acc[r]);
      if (lane == 0 && n0 + r < N) p.out[n0 + r] = v;
    }
  }
}

// Whether gemv_stream_kernel takes p: one token, one dense BF16 / F16 matrix of >= kStreamMinRows rows (no
// second matrix, no batched rows), whole 16-byte chunks, x aligned and small enough to stage.
template <DType WT>
bool stream_gemv_ok(const GemvParams& p) {
  return (WT == DType::BF16 || WT == DType::F16) && p.T == 1 && !grouped(p) && !p.swiglu && p.second.N == 0 &&
         p.grid_y == 1 && p.w_row_base == 0 && p.N >= kStreamMinRows && p.K % Chunk<WT>::kElems == 0 &&
         p.K <= kStreamMaxK && reinterpret_cast<uintptr_t>(p.x) % 16 == 0;
}

template <DType WT>
void launch_gemv_stream(const GemvParams& p, cudaStream_t s) {
  int dev = 0, sms = 0;
  check(cudaGetDevice(&dev), "gemv_stream: device");
  check(cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, dev), "gemv_stream: SM count");
  const int64_t rows_per_trip = 2 * kWarps;  // a block's rows per trip: a pair per warp
  const unsigned blocks =
      unsigned(std::min<int64_t>(2 * int64_t(sms), (p.N + rows_per_trip - 1) / rows_per_trip));
  const size_t smem = size_t(p.K) * sizeof(float);
  launch("gemv_stream", gemv_stream_kernel<WT>, dim3(blocks), 256, smem, s, p);
}

// The CUDA-core kernel (launch_gemv below picks between it and the tensor-core one).
template <DType WT>
void launch_gemv_cuda_cores(const GemvParams& p, int tile, cudaStream_t s) {
  if constexpr (WT == DType::BF16 || WT == DType::F16)
    if (tile == 1 && stream_gemv_ok<WT>(p)) return launch_gemv_stream<WT>(p, s);
  GemvParams q = p;
  q.prefetch = true;
  // Blocks along x at rows_per_block weight rows each; a second matrix (dense only) takes the blocks after
  // the first one's.
  const auto blocks_of = [](int64_t rows, int64_t rows_per_block) {
    return unsigned((rows + rows_per_block - 1) / rows_per_block);
  };
  const auto grid_x = [&](int64_t rows_per_block) {
    return blocks_of(p.N, rows_per_block) + blocks_of(p.second.N, rows_per_block);
  };
  constexpr int64_t kSmallGrid = 264;  // 2 blocks per SM of an H100 (132 SMs)
  // Single token (batch-1 decode): one weight row per warp for SwiGLU (gate and up: two rows already) and for
  // dense GEMVs that two rows per warp would leave with fewer than 2 blocks per SM; two rows per warp
  // otherwise.
  const bool one_row =
      tile == 1 && (p.swiglu || (!grouped(p) && int64_t(grid_x(kRowsPerBlock)) * p.grid_y < kSmallGrid));
  const int64_t rows_per_block = one_row ? kWarps : kRowsPerBlock;
  q.second.first_block = p.second.N > 0 ? blocks_of(p.N, rows_per_block) : 0u;
  if (tile == 1) {  // 8 chunks deep: a 2048-wide BF16 row is one round of 16-byte loads per lane
    const dim3 grid(grid_x(rows_per_block), unsigned(p.grid_y), 1);
    if (p.swiglu)
      launch("gemv", gemv_kernel<WT, 1, true, 1, 8>, grid, 256, 0, s, q);
    else if (one_row)
      launch("gemv", gemv_kernel<WT, 1, false, 1, 8>, grid, 256, 0, s, q);
    else
      launch("gemv", gemv_kernel<WT, 1, false, kRowsPerWarp, 8>, grid, 256, 0, s, q);
    return;
  }
  // Several tokens: 4 chunks deep, 2 for FP8 (16 values per chunk, so twice the unpacked weights per chunk
  // in registers: deeper, the 8-token kernel spills).
  constexpr int kTiledUnroll = WT == DType::F8_E4M3 ? 2 : 4;
  const unsigned gx = grid_x(kRowsPerBlock);
  unsigned gz = 1;
  if (!grouped(p))
    gz = unsigned(
        std::min<int64_t>((p.T + tile - 1) / tile, std::max<int64_t>(1, 1024 / (int64_t(gx) * p.grid_y))));
  const dim3 grid(gx, unsigned(p.grid_y), gz);
  switch (tile) {
    case 2:
      if (p.swiglu)
        launch("gemv", gemv_kernel<WT, 2, true, kRowsPerWarp, kTiledUnroll>, grid, 256, 0, s, q);
      else
        launch("gemv", gemv_kernel<WT, 2, false, kRowsPerWarp, kTiledUnroll>, grid, 256, 0, s, q);
      break;
    case 4:
      if (p.swiglu)
        launch("gemv", gemv_kernel<WT, 4, true, kRowsPerWarp, kTiledUnroll>, grid, 256, 0, s, q);
      else
        launch("gemv", gemv_kernel<WT, 4, false, kRowsPerWarp, kTiledUnroll>, grid, 256, 0, s, q);
      break;
    case 8:
      if (p.swiglu)
        launch("gemv", gemv_kernel<WT, 8, true, kRowsPerWarp, kTiledUnroll>, grid, 256, 0, s, q);
      else
        launch("gemv", gemv_kernel<WT, 8, false, kRowsPerWarp, kTiledUnroll>, grid, 256, 0, s, q);
      break;
    default:
      check(cudaErrorInvalidValue, "gemv: tile must be 1, 2, 4 or 8");
  }
}

template <DType WT>
void launch_gemv(const GemvParams& p, int tile, cudaStream_t s) {
  if constexpr (WT == DType::F8_E4M3 || WT == DType::BF16)
    if (mma_gemv_ok<WT>(p, tile)) {
      if constexpr (WT == DType::F8_E4M3)
        if (warp_tiles_pay(p, tile)) return launch_gemv_mma_warp<WT>(p, s);
      return launch_gemv_mma<WT>(p, s);
    }
  launch_gemv_cuda_cores<WT>(p, tile, s);
}

}  // namespace gemv_detail

}  // namespace moe::cuda
