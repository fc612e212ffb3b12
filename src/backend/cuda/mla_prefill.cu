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
// Kernel (FlashAttention-2 scheme, mma.sync m16n8k16 BF16 -> F32):
//   grid (head, tile): a tile is up to 128 query tokens of one sequence (host-sorted, heaviest first). Block =
//   8 warps, warp w owns query rows 16w .. 16w+15. The tile's queries (F32 -> BF16) go through shared memory
//   into registers once (A fragments, dqk/16 k-steps). Keys are visited in blocks of 64 context rows, loaded
//   with cp.async into a two-stage ring (K block [64][dqk]: k_nope columns from the expanded rows, rope columns
//   from the gathered latent rows; V block [64][dv]); block j+1 loads while block j computes. Per block:
//     S[16, 64] = Q K^T (ldmatrix + mma), scaled by scale*log2(e); keys past a row's position -> -inf (only in
//     blocks that reach past the warp's smallest position; a warp skips blocks wholly past its largest one);
//     online softmax per row in F32: m = running max, alpha = 2^(m_old - m_new), P = 2^(S - m) rounded to BF16
//     (the running sum l adds the rounded values, so numerator and denominator agree), O = alpha O + P V with
//     P taken straight from the S accumulators as A fragments and V through ldmatrix.trans.
//   Finally O / l is written as F32. Shared rows are padded by 16 bytes (ldmatrix without bank conflicts).
#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/tensor_core.cuh"

namespace moe::cuda {

namespace {

constexpr int kRows = kMlaPrefillRows, kKeys = 64, kWarps = kRows / 16, kThreads = kWarps * 32, kPad = 8;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(float_to_bf16_bits(lo)) | (uint32_t(float_to_bf16_bits(hi)) << 16);
}

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
  constexpr int DQK = DN + DR, QP = DQK + kPad, VP = DV + kPad;
  constexpr int KS = DQK / 16, NT = kKeys / 8, VT = DV / 8, PK = kKeys / 16;
  static_assert(DQK % 16 == 0 && DV % 16 == 0 && DN % 8 == 0, "MLA prefill head shape");
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);  // [kRows][QP]
  uint16_t* ks = qs + kRows * QP;                         // [2][kKeys][QP]
  uint16_t* vs = ks + 2 * kKeys * QP;                     // [2][kKeys][VP]

  const int h = int(blockIdx.x), tile = int(blockIdx.y);
  const int ctx0 = p.tiles[4 * tile], qbeg = p.tiles[4 * tile + 1], qcount = p.tiles[4 * tile + 2],
            nkeys = p.tiles[4 * tile + 3];
  const int tid = int(threadIdx.x), warp = tid / 32, lane = tid % 32;
  const int64_t kv_row = int64_t(p.H) * (DN + DV);

  // Copies of key block j (context rows ctx0 + 64 j ..) into stage st; rows past nkeys are zero.
  auto load_kv = [&](int j, int st) {
    uint16_t* kd = ks + st * kKeys * QP;
    uint16_t* vd = vs + st * kKeys * VP;
    for (int i = tid; i < kKeys * (DQK / 8); i += kThreads) {
      const int row = i / (DQK / 8), col = (i % (DQK / 8)) * 8, key = j * kKeys + row;
      const bool ok = key < nkeys;
      const int64_t ctx = ctx0 + (ok ? key : 0);
      const uint16_t* src = col < DN ? p.kv + ctx * kv_row + int64_t(h) * (DN + DV) + col
                                     : p.lat + ctx * p.W + p.r + (col - DN);
      cp_async16(kd + row * QP + col, src, ok);
    }
    for (int i = tid; i < kKeys * (DV / 8); i += kThreads) {
      const int row = i / (DV / 8), col = (i % (DV / 8)) * 8, key = j * kKeys + row;
      const bool ok = key < nkeys;
      const int64_t ctx = ctx0 + (ok ? key : 0);
      cp_async16(vd + row * VP + col, p.kv + ctx * kv_row + int64_t(h) * (DN + DV) + DN + col, ok);
    }
  };
  const int nblocks = (nkeys + kKeys - 1) / kKeys;
  if (nblocks > 0) load_kv(0, 0);
  cp_async_commit();

  // Queries: F32 rows -> BF16 in shared memory, zero rows past the tile's count.
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
    *reinterpret_cast<uint2*>(qs + row * QP + c) = b;
  }
  // This thread's two rows (lane/4 and lane/4 + 8 of the warp's 16) and their positions; -1 past the count.
  const int row0 = warp * 16 + lane / 4;
  int qpos[2];
#pragma unroll
  for (int q = 0; q < 2; ++q) {
    const int row = row0 + 8 * q;
    qpos[q] = row < qcount ? p.positions[p.qlist[qbeg + row]] : -1;
  }
  int wmax = max(qpos[0], qpos[1]), wmin = qpos[0] < 0 ? INT_MAX : min(qpos[0], qpos[1] < 0 ? INT_MAX : qpos[1]);
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) {
    wmax = max(wmax, __shfl_xor_sync(0xffffffffu, wmax, o));
    wmin = min(wmin, __shfl_xor_sync(0xffffffffu, wmin, o));
  }
  __syncthreads();
  uint32_t qf[KS][4];
#pragma unroll
  for (int k = 0; k < KS; ++k) ldmatrix_x4(qf[k], qs + (warp * 16 + lane % 16) * QP + k * 16 + (lane / 16) * 8);

  const float sl = p.scale * 1.4426950408889634f;  // exp(x) = 2^(x log2 e)
  float o[VT][4];
#pragma unroll
  for (int v = 0; v < VT; ++v) o[v][0] = o[v][1] = o[v][2] = o[v][3] = 0.0f;
  float m[2] = {-INFINITY, -INFINITY}, l[2] = {0.0f, 0.0f};

  for (int j = 0; j < nblocks; ++j) {
    if (j + 1 < nblocks) load_kv(j + 1, (j + 1) % 2);
    cp_async_commit();
    cp_async_wait<1>();
    __syncthreads();
    const int key0 = j * kKeys;
    if (key0 <= wmax) {  // some row of this warp sees some key of the block
      const uint16_t* kt = ks + (j % 2) * kKeys * QP;
      const uint16_t* vt = vs + (j % 2) * kKeys * VP;
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
      const bool mask = key0 + kKeys - 1 > wmin;
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
      }
#pragma unroll
      for (int v = 0; v < VT; ++v) {
        o[v][0] *= alpha[0];
        o[v][1] *= alpha[0];
        o[v][2] *= alpha[1];
        o[v][3] *= alpha[1];
      }
      // P = 2^(S - m) in BF16, summed as rounded; packed as the A fragments of P V (keys 16k .. 16k+15).
      uint32_t pa[PK][4];
#pragma unroll
      for (int n = 0; n < NT; ++n) {
        float pr[4];
#pragma unroll
        for (int c = 0; c < 4; ++c) {
          pr[c] = bf16_bits_to_float(float_to_bf16_bits(exp2f(s[n][c] - mu[c / 2])));
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
      *reinterpret_cast<float2*>(dst + v * 8) = make_float2(o[v][2 * q] * inv, o[v][2 * q + 1] * inv);
  }
}

template <int DN, int DR, int DV>
constexpr size_t prefill_smem() {
  return size_t(kRows * (DN + DR + kPad) + 2 * kKeys * (DN + DR + kPad) + 2 * kKeys * (DV + kPad)) * 2;
}

template <int DN, int DR, int DV>
void configure_prefill() {
  check(cudaFuncSetAttribute(mla_prefill_kernel<DN, DR, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                             int(prefill_smem<DN, DR, DV>())),
        "mla_prefill smem");
}

template <int DN, int DR, int DV>
void launch_prefill(const MlaPrefillParams& p, cudaStream_t s) {
  constexpr size_t smem = prefill_smem<DN, DR, DV>();
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
