// MLA attention for prefill in the expanded form: the context's latent rows are gathered from the paged cache
// (mla_gather_latent), expanded by kv_b into per-head k_nope and v with one GEMM (CudaBackend), and a
// flash-attention kernel (this file) runs causal multi-head attention with a 192-wide query/key (k_nope of the
// head, then the rope key shared by all heads) and a 128-wide value, writing out [T, H * dv] directly.
//
// Why expanded for prefill: per query token and context position the absorbed form does 2 * (2r + dr) = 2176
// FLOPs per head (Moonlight/V3 widths), the expanded one 2 * (dn + dr + dv) = 640, plus the expansion of each
// context row once (2 * r * (dn + dv) per head), so from a few hundred tokens on the expanded form does ~3x
// less tensor-core work, and needs neither the query absorption nor the W_UV product.
//
// Kernel (FlashAttention-2's schedule on Hopper's warpgroup MMA, wgmma BF16 -> F32; wgmma.cuh):
//   grid (head, tile): a tile is up to 128 query tokens of one sequence (host-sorted, heaviest first). Block =
//   2 warpgroups, warpgroup w owns query rows 64w .. 64w+63. Shared memory, every block [rows][64 BF16] in the
//   128-byte swizzle of wgmma.cuh: the tile's queries (F32 -> BF16 once) as ceil(dqk/64) blocks of 128 rows, and
//   a ring of 4 stages of 64 context rows each (a key block): ceil(dqk/64) K blocks (k_nope columns from the
//   expanded rows, rope columns from the gathered latent rows) and dv/64 V blocks, copied with cp.async one key
//   block ahead (thread t: row t/4, every 4th 16-byte chunk; rows past the tile's keys zero-filled).
//   Per key block j, per warpgroup (scores double-buffered in registers, s0 / s1):
//     1. one barrier: block j+1 landed everywhere, and both warpgroups retired block j-2's P V, so block j+2's
//        copies take its stage (the ring holds j-1 .. j+2);
//     2. S(j+1) = Q K^T issued: dqk/16 wgmma m64n64k16 (A = Q, B = K, both K-major) into the other buffer;
//     3. softmax of S(j) while S(j+1) and P V of block j-1 run on the tensor cores: keys past a row's position
//        -> -inf (only in blocks that reach past the warp's smallest position), row max of the raw scores,
//        m = running max in the log2 domain, alpha = 2^(m_old - m_new), P = 2^(S scale log2e - m) rounded to
//        BF16 (the running sum l adds the rounded values, so numerator and denominator agree);
//     4. wait for both, O = alpha O, then O += P V: 4 wgmma m64n{dv}k16 (64 keys) with A = P from registers (the S
//        accumulators' layout is the register A fragment's, taken pairwise) and B = V MN-major (keys are its
//        rows: the transpose bit); it runs on into the next block's softmax.
//   (Waiting for P V alone while S(j+1) ran on would overlap more, but ptxas then serialises every wgmma of the
//   loop, C7514.) Both warpgroups visit every key block up to the tile's last key (a wgmma cannot sit under a
//   per-warpgroup condition without ptxas serialising them), so the first warpgroup of a tile on the diagonal
//   scores one block that its causal mask empties. Finally O / l is written as F32.
#include <type_traits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/tensor_core.cuh"
#include "backend/cuda/wgmma.cuh"

namespace moe::cuda {

namespace {

constexpr int kRows = kMlaPrefillRows, kKeys = 64, kThreads = 256, kStages = 4;
constexpr uint32_t kBlk = 64 * 128;  // a swizzled [64 rows][64 BF16] block
static_assert(kRows == 128 && kKeys == 64, "two warpgroups of 64 query rows over 64-key blocks");

// Shared-memory plan of a head shape: Q blocks of 128 rows, then the ring's stages (K blocks, V blocks).
template <int DN, int DR, int DV>
struct PrefillLayout {
  static constexpr int kQK = DN + DR, kQB = (kQK + 63) / 64, kVB = DV / 64;
  static constexpr uint32_t kQBytes = uint32_t(kQB) * 2 * kBlk, kStageBytes = uint32_t(kQB + kVB) * kBlk;
  static constexpr size_t kSmem = size_t(kQBytes) + size_t(kStages) * kStageBytes + 1024;  // + base alignment
  static_assert(kQK % 32 == 0 && DV % 64 == 0 && DN % 8 == 0, "MLA prefill head shape");
  static_assert(kSmem <= 227 * 1024, "shared memory of one CTA");
};

__global__ void __launch_bounds__(256) gather_latent_kernel(const uint16_t* cache, const int32_t* block_table,
                                                            int32_t max_pages, int32_t page_size, int64_t W,
                                                            const int32_t* seqs, const int32_t* lens,
                                                            const int32_t* offs, uint16_t* lat) {
  const int s = int(blockIdx.y), l = int(blockIdx.x) * 8 + int(threadIdx.x) / 32, lane = int(threadIdx.x) % 32;
  if (l >= lens[s]) return;
  const int32_t page = block_table[int64_t(seqs[s]) * max_pages + l / page_size];
  const uint4* src = reinterpret_cast<const uint4*>(cache + (int64_t(page) * page_size + l % page_size) * W);
  uint4* dst = reinterpret_cast<uint4*>(lat + (int64_t(offs[s]) + l) * W);
  for (int64_t c = lane; c < W / 8; c += 32) dst[c] = src[c];
}

// DN, DR, DV: nope, rope and value widths of a head.
template <int DN, int DR, int DV>
__global__ void __launch_bounds__(kThreads, 1) mla_prefill_kernel(const MlaPrefillParams p) {
  using L = PrefillLayout<DN, DR, DV>;
  constexpr int DQK = L::kQK, QB = L::kQB, KS = DQK / 16, NT = kKeys / 8, VT = DV / 8, PK = kKeys / 16;
  constexpr int KC = DQK / 8, VC = DV / 8;  // 16-byte chunks of a key row and of a value row
  extern __shared__ uint8_t smem_raw[];
  const uint32_t base = (smem_addr(smem_raw) + 1023u) & ~1023u;
  uint8_t* const sgen = smem_raw + (base - smem_addr(smem_raw));  // generic pointer to `base`
  const uint32_t ring = base + L::kQBytes;

  const int h = int(blockIdx.x), tile = int(blockIdx.y);
  const int ctx0 = p.tiles[4 * tile], qbeg = p.tiles[4 * tile + 1], qcount = p.tiles[4 * tile + 2],
            nkeys = p.tiles[4 * tile + 3];
  const int tid = int(threadIdx.x), wg = tid / 128, warp = (tid % 128) / 32, lane = tid % 32;
  const int64_t kv_row = int64_t(p.H) * (DN + DV);
  const int nblocks = (nkeys + kKeys - 1) / kKeys;

  // Copies: thread t copies context row t / 4 of a key block, 16-byte chunks c = t % 4 + 4 i of its key row (KC
  // chunks: k_nope from the expanded row, then rope from the latent row) and of its value row (VC chunks): chunk c
  // lands in block c / 8 at chunk c % 8 of the swizzle, i.e. at one of two offsets (i even / odd) inside a block.
  static_assert(DN % 32 == 0 && DQK % 32 == 0 && DV % 32 == 0, "whole chunk quads per source");
  const int crow = tid / 4, cq4 = tid % 4;
  const uint32_t cdst[2] = {swz(crow, cq4), swz(crow, cq4 + 4)};
  // Key block j (context rows ctx0 + 64 j ..) into stage j % kStages; rows past the tile's keys zero-filled.
  auto load_kv = [&](int j) {
    if (j < nblocks) {
      const uint32_t kd = ring + uint32_t(j % kStages) * L::kStageBytes, vd = kd + uint32_t(QB) * kBlk;
      const int key = j * kKeys + crow;
      const bool ok = key < nkeys;
      const int64_t ctx = ctx0 + (ok ? key : 0);
      const uint16_t* kvr = p.kv + ctx * kv_row + int64_t(h) * (DN + DV) + cq4 * 8;
      const uint16_t* lr = p.lat + ctx * p.W + p.r + cq4 * 8;
#pragma unroll
      for (int i = 0; i < KC / 4; ++i) {
        const uint16_t* src = i < DN / 32 ? kvr + 32 * i : lr + 32 * (i - DN / 32);
        cp_async16(kd + uint32_t(i / 2) * kBlk + cdst[i % 2], src, ok);
      }
#pragma unroll
      for (int i = 0; i < VC / 4; ++i) cp_async16(vd + uint32_t(i / 2) * kBlk + cdst[i % 2], kvr + DN + 32 * i, ok);
    }
    cp_async_commit();
  };
  load_kv(0);
  load_kv(1);

  // Queries: F32 rows -> BF16 into the Q blocks, zero rows past the tile's count.
  for (int i = tid; i < kRows * (DQK / 4); i += kThreads) {
    const int row = i / (DQK / 4), c = (i % (DQK / 4)) * 4;
    float4 v = make_float4(0.0f, 0.0f, 0.0f, 0.0f);
    if (row < qcount) {
      const int64_t t = p.qlist[qbeg + row];
      v = *reinterpret_cast<const float4*>(p.q + (t * p.H + h) * DQK + c);
    }
    uint2 b;
    b.x = pack_bf16(v.x, v.y);
    b.y = pack_bf16(v.z, v.w);
    *reinterpret_cast<uint2*>(sgen + uint32_t(c / 64) * 2 * kBlk + swz(row, (c % 64) / 8) + (c % 8) * 2) = b;
  }
  // This thread's two rows (tile rows row0 and row0 + 8) and their positions; -1 past the count.
  const int row0 = wg * 64 + warp * 16 + lane / 4;
  int qpos[2];
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int row = row0 + 8 * q;
    qpos[q] = row < qcount ? p.positions[p.qlist[qbeg + row]] : -1;
  }
  int wmin = qpos[0] < 0 ? INT_MAX : min(qpos[0], qpos[1] < 0 ? INT_MAX : qpos[1]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, o));

  const float sl = p.scale * 1.4426950408889634f;  // exp(x) = 2^(x log2 e)
  float o[DV / 2];  // O [64, DV] of the warpgroup: element 4 v + 2 q + c is row row0 + 8 q, column 8 v + 2 (lane%4) + c
#pragma unroll
  for (int i = 0; i < DV / 2; ++i) o[i] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  // S of block j into sb (one commit group): A = this warpgroup's Q rows, B = the block's K rows.
  auto issue_s = [&](int j, float (&sb)[NT * 4]) {
    const uint32_t kd = ring + uint32_t(j % kStages) * L::kStageBytes;
    const uint64_t dq = smem_desc(opaque(base + uint32_t(wg) * 64 * 128)), dk = smem_desc(opaque(kd));
    wgmma_fence();
#pragma unroll
    for (int kk = 0; kk < KS; ++kk)
      wgmma_m64n64k16(sb, dq + desc_step(uint32_t(kk / 4) * 2 * kBlk + uint32_t(kk % 4) * 32),
                      dk + desc_step(uint32_t(kk / 4) * kBlk + uint32_t(kk % 4) * 32), kk > 0);
    wgmma_commit();
  };
  // Block i landed in every thread's view (its copies were committed a block earlier), and block i + 1's copies
  // go into the stage of block i - 3, whose P V both warpgroups retired before this barrier (the ring's other
  // stages: block i - 2, whose P V may still run, block i - 1, whose P V is next, and block i).
  auto next_block = [&](int i) {
    cp_async_wait<0>();
    fence_proxy_async();  // this thread's copies (and query stores), visible to the tensor cores
    __syncthreads();
    load_kv(i + 1);
  };
  // Block j with its scores in sc (retired) while block j + 1's are computed into sn: softmax, then O += P V.
  // kLast: no block j + 1 (no scores to start).
  auto block = [&](int j, float (&sc)[NT * 4], float (&sn)[NT * 4], auto last) {
    constexpr bool kLast = decltype(last)::value;
    if constexpr (!kLast) {
      next_block(j + 1);
      issue_s(j + 1, sn);
    }
    // Row maxima of the raw scores (scale > 0), keys past a row's position -> -inf (only near the diagonal).
    const int key0 = j * kKeys;
    if (key0 + kKeys - 1 > wmin) {
#pragma unroll
      for (int i = 0; i < NT * 4; ++i)
        if (key0 + (i / 4) * 8 + 2 * (lane % 4) + (i & 1) > qpos[(i % 4) / 2]) sc[i] = -INFINITY;
    }
    float mx[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int i = 0; i < NT * 4; ++i) mx[(i % 4) / 2] = fmaxf(mx[(i % 4) / 2], sc[i]);
    float alpha[2], mu[2];
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      mx[q] = fmaxf(mx[q], __shfl_xor_sync(0xffffffffu, mx[q], 1));
      mx[q] = fmaxf(mx[q], __shfl_xor_sync(0xffffffffu, mx[q], 2));
      const float mn = fmaxf(m[q], mx[q] * sl);  // running max, in the log2 domain
      mu[q] = mn == -INFINITY ? 0.0f : mn;       // a row with no key yet (or a padding row) stays at 0
      alpha[q] = ex2(m[q] - mu[q]);
      m[q] = mn;
      l[q] *= alpha[q];
    }
    // P = 2^(S scale log2e - m) rounded to BF16 (pairwise, in place as floats), summed as rounded.
#pragma unroll
    for (int i = 0; i < NT * 4; i += 2) {
      const float mq = mu[(i % 4) / 2];
      const uint32_t b = pack_bf16(ex2(fmaf(sc[i], sl, -mq)), ex2(fmaf(sc[i + 1], sl, -mq)));
      sc[i] = __uint_as_float(b << 16);
      sc[i + 1] = __uint_as_float(b & 0xffff0000u);
      l[(i % 4) / 2] += sc[i] + sc[i + 1];
    }
    // Block j - 1's P V and block j + 1's scores retired (both ran during this softmax): P's registers and O are
    // free. (A wait<1> that left the scores in flight makes ptxas serialise every wgmma of the loop, C7514.)
    wgmma_wait<0>();
    if constexpr (!kLast) fence_acc(sn);
    // P as the register A fragments of P V (keys 16k .. 16k+15; exact: the values are BF16 already).
    uint32_t pa[PK][4];
#pragma unroll
    for (int n = 0; n < NT; ++n) {
      pa[n / 2][(n % 2) * 2 + 0] = pack_bf16(sc[4 * n + 0], sc[4 * n + 1]);
      pa[n / 2][(n % 2) * 2 + 1] = pack_bf16(sc[4 * n + 2], sc[4 * n + 3]);
    }
    fence_acc(o);
#pragma unroll
    for (int v = 0; v < VT; ++v) {
      o[4 * v + 0] *= alpha[0];
      o[4 * v + 1] *= alpha[0];
      o[4 * v + 2] *= alpha[1];
      o[4 * v + 3] *= alpha[1];
    }
    fence_acc(o);
    wgmma_fence();
    const uint32_t vd = ring + uint32_t(j % kStages) * L::kStageBytes + uint32_t(QB) * kBlk;
#pragma unroll
    for (int k = 0; k < PK; ++k) {
      // V rows 16k .. 16k+15 (two 8-row groups, 2048 bytes), its dv/64 blocks kBlk apart.
      const uint64_t dv = smem_desc(vd + uint32_t(k) * 2048, kBlk, 1024);
      if constexpr (DV == 128)
        wgmma_m64n128k16_rs<1>(o, pa[k], dv);
      else
        wgmma_m64n64k16_rs<1>(o, pa[k], dv);
    }
    wgmma_commit();  // runs on into the next block's softmax
  };

  float s0[NT * 4], s1[NT * 4];
  if (nblocks > 0) {
    cp_async_wait<1>();  // block 0 (block 1 may still be in flight)
    fence_proxy_async();
    __syncthreads();
    issue_s(0, s0);
    wgmma_wait<0>();
    fence_acc(s0);
  }
  using More = std::false_type;
  using Last = std::true_type;
  int j = 0;
  for (; j + 2 < nblocks; j += 2) {
    block(j, s0, s1, More{});
    block(j + 1, s1, s0, More{});
  }
  if (j + 1 < nblocks) {
    block(j, s0, s1, More{});
    block(j + 1, s1, s0, Last{});
  } else if (j < nblocks) {
    block(j, s0, s1, Last{});
  }
  wgmma_wait<0>();
  fence_acc(o);
  cp_async_wait<0>();

  // Normalise and write: rows row0 and row0 + 8, columns 8 v + 2 (lane % 4) + {0, 1} of head h.
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    float sum = l[q];
    sum += __shfl_xor_sync(0xffffffffu, sum, 1);
    sum += __shfl_xor_sync(0xffffffffu, sum, 2);
    const int row = row0 + 8 * q;
    if (row >= qcount) continue;
    const float inv = sum > 0.0f ? 1.0f / sum : 0.0f;
    float* dst = p.out + int64_t(p.qlist[qbeg + row]) * p.H * DV + int64_t(h) * DV + 2 * (lane % 4);
#pragma unroll
    for (int v = 0; v < VT; ++v)
      *reinterpret_cast<float2*>(dst + v * 8) = make_float2(o[4 * v + 2 * q] * inv, o[4 * v + 2 * q + 1] * inv);
  }
}

template <int DN, int DR, int DV>
void configure_prefill() {
  check(cudaFuncSetAttribute(mla_prefill_kernel<DN, DR, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(PrefillLayout<DN, DR, DV>::kSmem)),
        "mla_prefill smem");
}

template <int DN, int DR, int DV>
void launch_prefill(const MlaPrefillParams& p, cudaStream_t s) {
  constexpr size_t smem = PrefillLayout<DN, DR, DV>::kSmem;
  mla_prefill_kernel<DN, DR, DV><<<dim3(unsigned(p.H), unsigned(p.num_tiles)), kThreads, smem, s>>>(p);
  check_launch("mla_prefill_attention");
}

}  // namespace

void mla_gather_latent(const uint16_t* cache, const int32_t* block_table, int32_t max_pages, int32_t page_size,
                       int64_t W, const int32_t* seqs, const int32_t* lens, const int32_t* offs, int32_t S,
                       int32_t max_len, uint16_t* lat, cudaStream_t s) {
  if (S == 0 || max_len == 0) return;
  if (W % 8 != 0) check(cudaErrorInvalidValue, "mla_gather_latent: cache rows must be a multiple of 8 wide");
  gather_latent_kernel<<<dim3(unsigned((max_len + 7) / 8), unsigned(S)), 256, 0, s>>>(cache, block_table, max_pages,
                                                                                     page_size, W, seqs, lens, offs, lat);
  check_launch("mla_gather_latent");
}

void configure_mla_prefill_kernels() {
  configure_prefill<128, 64, 128>();
  configure_prefill<64, 32, 64>();
}

// Moonlight and DeepSeek-V3 (128 / 64 / 128), and the test fixture's small heads (64 / 32 / 64).
bool mla_prefill_supported(int64_t dn, int64_t dr, int64_t dv) {
  return (dn == 128 && dr == 64 && dv == 128) || (dn == 64 && dr == 32 && dv == 64);
}

void mla_prefill_attention(const MlaPrefillParams& p, cudaStream_t s) {
  if (p.num_tiles == 0) return;
  if (p.dn == 128 && p.dr == 64 && p.dv == 128)
    launch_prefill<128, 64, 128>(p, s);
  else if (p.dn == 64 && p.dr == 32 && p.dv == 64)
    launch_prefill<64, 32, 64>(p, s);
  else
    check(cudaErrorInvalidValue, "mla_prefill_attention: no kernel for this head shape");
}

}  // namespace moe::cuda
