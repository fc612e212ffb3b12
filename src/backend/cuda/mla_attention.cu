// MLA attention over the paged BF16 latent cache, absorbed form (multi-query with a W = r + dr wide key whose
// first r values are also the value), on the tensor cores (mma.sync m16n8k16, BF16 in, F32 accumulate).
//
// Algorithm (FlashMLA-like split-KV decode, also used for prefill rows):
//   grid (token t, head group of 16, split s); block = 8 warps. The 16 heads' absorbed queries qf[t, h]
//   (BF16 [16, W]) sit in shared memory. The split's cache positions [s*L, min(pos+1, (s+1)*L)) are
//   walked in tiles of 64 rows, copied page by page with cp.async into a two-stage shared-memory ring
//   (the next tile loads while this one computes). Per tile:
//     1. S[16, 64] = Q K^T * scale: warp w computes the 8 columns 8w..8w+7 over all W (ldmatrix + mma);
//        positions past the causal end are -inf.
//     2. Online softmax, one warp per two heads: running max m and sum l in F32, P = exp(S - m) rounded to
//        BF16 (l sums the rounded values so numerator and denominator agree), alpha = exp(m_old - m_new).
//     3. O[16, r] = alpha * O + P V with V = the tile's first r columns: warp w owns r/8 output columns,
//        B fragments come straight from the same shared tile through ldmatrix.trans.
//   Each split writes its unnormalised O and (m, l); a combine kernel merges splits:
//   o = sum_s e^(m_s - M) O_s / sum_s e^(m_s - M) l_s. Every cache byte is read once per head group.
#include "backend/cuda/cuda_common.cuh"

namespace moe::cuda {

namespace {

constexpr int kHeads = 16, kWarps = 8, kTile = kMlaTile, kPad = 8;  // pad: 16 bytes per shared row

__device__ __forceinline__ uint32_t smem_addr(const void* p) { return uint32_t(__cvta_generic_to_shared(p)); }

__device__ __forceinline__ void cp_async16(void* dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(smem_addr(dst)), "l"(src), "r"(valid ? 16 : 0));
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;"); }
template <int N>
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(N));
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* p) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(smem_addr(p)));
}
__device__ __forceinline__ void mma_bf16(float (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
      "{%0,%1,%2,%3};"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// R: latent width (value width), W: R + rope width.
template <int R, int W>
__global__ void __launch_bounds__(256, 1) mla_decode_kernel(MlaParams p) {
  constexpr int WP = W + kPad, NT = R / (8 * kWarps);  // n-tiles of 8 output columns per warp
  static_assert(R % (8 * kWarps) == 0 && W % 32 == 0, "MLA kernel shape");
  extern __shared__ __align__(16) uint8_t smem_raw[];
  uint16_t* qs = reinterpret_cast<uint16_t*>(smem_raw);  // [16][WP]
  uint16_t* ks = qs + kHeads * WP;                        // [2][64][WP]
  float* ss = reinterpret_cast<float*>(ks + 2 * kTile * WP);  // [16][64]
  uint16_t* ps = reinterpret_cast<uint16_t*>(ss + kHeads * kTile);  // [16][64 + 8]
  float* row_alpha = reinterpret_cast<float*>(ps + kHeads * (kTile + kPad));  // [16]
  constexpr int PP = kTile + kPad;

  const int t = blockIdx.x, h0 = blockIdx.y * kHeads, split = blockIdx.z;
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  const int seq = p.token_seq[t], len = p.positions[t] + 1;
  const int begin = split * p.split_len, end = min(len, begin + p.split_len);
  const int ntiles = end > begin ? (end - begin + kTile - 1) / kTile : 0;
  const int32_t* pages = p.block_table + int64_t(seq) * p.max_pages;

  // Queries: 16 rows of W BF16 (zero rows past H).
  for (int i = threadIdx.x; i < kHeads * (W / 8); i += blockDim.x) {
    const int hh = i / (W / 8), c = (i % (W / 8)) * 8;
    uint4 v = make_uint4(0, 0, 0, 0);
    if (h0 + hh < p.H) v = *reinterpret_cast<const uint4*>(p.qf + (int64_t(t) * p.H + h0 + hh) * W + c);
    *reinterpret_cast<uint4*>(qs + hh * WP + c) = v;
  }
  auto load_tile = [&](int tile, int stage) {
    uint16_t* dst = ks + stage * kTile * WP;
    const int j0 = begin + tile * kTile;
    for (int i = threadIdx.x; i < kTile * (W / 8); i += blockDim.x) {
      const int row = i / (W / 8), c = (i % (W / 8)) * 8, j = j0 + row;
      const bool valid = j < end;
      const uint16_t* src = p.cache;
      if (valid) src = p.cache + (int64_t(pages[j / p.page_size]) * p.page_size + j % p.page_size) * W + c;
      cp_async16(dst + row * WP + c, src, valid);
    }
    cp_async_commit();
  };

  float acc[NT][4];
#pragma unroll
  for (int i = 0; i < NT; ++i) acc[i][0] = acc[i][1] = acc[i][2] = acc[i][3] = 0.0f;
  float m_run = -INFINITY, l_run = 0.0f;  // lane 0 of warp w: head rows 2w (and 2w+1 in the second slot)
  float m_run2 = -INFINITY, l_run2 = 0.0f;

  if (ntiles > 0) load_tile(0, 0);
  for (int it = 0; it < ntiles; ++it) {
    if (it + 1 < ntiles) {
      load_tile(it + 1, (it + 1) % 2);
      cp_async_wait<1>();
    } else {
      cp_async_wait<0>();
    }
    __syncthreads();
    const uint16_t* kt = ks + (it % 2) * kTile * WP;
    const int j0 = begin + it * kTile;

    // 1. Scores for columns 8*warp .. +7.
    {
      float s[4] = {0.0f, 0.0f, 0.0f, 0.0f};
#pragma unroll 4
      for (int k0 = 0; k0 < W; k0 += 32) {
        uint32_t a0[4], a1[4], b[4];
        ldmatrix_x4(a0, qs + (lane % 16) * WP + k0 + (lane / 16) * 8);
        ldmatrix_x4(a1, qs + (lane % 16) * WP + k0 + 16 + (lane / 16) * 8);
        ldmatrix_x4(b, kt + (warp * 8 + lane % 8) * WP + k0 + (lane / 8) * 8);
        mma_bf16(s, a0, b[0], b[1]);
        mma_bf16(s, a1, b[2], b[3]);
      }
      const int row = lane / 4, col = warp * 8 + 2 * (lane % 4);
#pragma unroll
      for (int i = 0; i < 4; ++i) {
        const int rr = row + (i / 2) * 8, cc = col + i % 2;
        ss[rr * kTile + cc] = j0 + cc < end ? s[i] * p.scale : -INFINITY;
      }
    }
    __syncthreads();

    // 2. Online softmax: warp w updates head rows 2w and 2w+1.
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int row = 2 * warp + q;
      const float v0 = ss[row * kTile + lane], v1 = ss[row * kTile + lane + 32];
      float& m_old = q == 0 ? m_run : m_run2;
      float& l_old = q == 0 ? l_run : l_run2;
      const float m_new = fmaxf(m_old, warp_max(fmaxf(v0, v1)));
      float p0 = 0.0f, p1 = 0.0f, alpha = 1.0f;
      if (m_new != -INFINITY) {
        p0 = __expf(v0 - m_new);
        p1 = __expf(v1 - m_new);
        alpha = __expf(m_old - m_new);
      }
      const uint16_t b0 = float_to_bf16_bits(p0), b1 = float_to_bf16_bits(p1);
      ps[row * PP + lane] = b0;
      ps[row * PP + lane + 32] = b1;
      const float tile_sum = warp_sum(bf16_bits_to_float(b0) + bf16_bits_to_float(b1));
      l_old = l_old * alpha + tile_sum;
      m_old = m_new;
      if (lane == 0) row_alpha[row] = alpha;
    }
    __syncthreads();

    // 3. O = alpha O + P V over this warp's columns.
    {
      const float al0 = row_alpha[lane / 4], al1 = row_alpha[lane / 4 + 8];
#pragma unroll
      for (int i = 0; i < NT; ++i) {
        acc[i][0] *= al0;
        acc[i][1] *= al0;
        acc[i][2] *= al1;
        acc[i][3] *= al1;
      }
      const int c0 = warp * (R / kWarps);
#pragma unroll
      for (int kk = 0; kk < kTile; kk += 16) {
        uint32_t a[4];
        ldmatrix_x4(a, ps + (lane % 16) * PP + kk + (lane / 16) * 8);
#pragma unroll
        for (int i = 0; i < NT; i += 2) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, kt + (kk + lane % 8 + ((lane / 8) % 2) * 8) * WP + c0 + i * 8 + (lane / 16) * 8);
          mma_bf16(acc[i], a, b[0], b[1]);
          if (i + 1 < NT) mma_bf16(acc[i + 1], a, b[2], b[3]);
        }
      }
    }
    __syncthreads();
  }

  // Unnormalised partial output and (m, l) of this split.
  const int64_t base = (int64_t(split) * p.T + t) * p.H;
  const int c0 = warp * (R / kWarps);
#pragma unroll
  for (int i = 0; i < NT; ++i) {
    const int col = c0 + i * 8 + 2 * (lane % 4);
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int hh = h0 + lane / 4 + half * 8;
      if (hh < p.H) {
        float* o = p.o_part + (base + hh) * R + col;
        o[0] = acc[i][2 * half];
        o[1] = acc[i][2 * half + 1];
      }
    }
  }
  if (lane == 0) {
#pragma unroll
    for (int q = 0; q < 2; ++q) {
      const int hh = h0 + 2 * warp + q;
      if (hh < p.H) {
        p.ml_part[(base + hh) * 2] = q == 0 ? m_run : m_run2;
        p.ml_part[(base + hh) * 2 + 1] = q == 0 ? l_run : l_run2;
      }
    }
  }
}

// o_lat[t, h] = sum_s e^(m_s - M) O_s / sum_s e^(m_s - M) l_s; one block per (t, h).
__global__ void combine_kernel(MlaParams p) {
  const int64_t th = blockIdx.x, stride = int64_t(p.T) * p.H;
  float M = -INFINITY;
  for (int s = 0; s < p.splits; ++s) M = fmaxf(M, p.ml_part[(s * stride + th) * 2]);
  float L = 0.0f;
  for (int s = 0; s < p.splits; ++s) {
    const float m = p.ml_part[(s * stride + th) * 2];
    if (m != -INFINITY) L += __expf(m - M) * p.ml_part[(s * stride + th) * 2 + 1];
  }
  const float inv = L > 0.0f ? 1.0f / L : 0.0f;
  for (int c = threadIdx.x; c < p.r; c += blockDim.x) {
    float o = 0.0f;
    for (int s = 0; s < p.splits; ++s) {
      const float m = p.ml_part[(s * stride + th) * 2];
      if (m != -INFINITY) o += __expf(m - M) * p.o_part[(s * stride + th) * p.r + c];
    }
    p.o_lat[th * p.r + c] = o * inv;
  }
}

template <int R, int W>
void launch(const MlaParams& p, cudaStream_t s) {
  constexpr int WP = W + kPad;
  const size_t smem = size_t(kHeads * WP + 2 * kTile * WP) * 2 + size_t(kHeads * kTile) * 4 +
                      size_t(kHeads * (kTile + kPad)) * 2 + kHeads * 4;
  static bool configured = false;
  if (!configured) {
    MOE_CUDA_CHECK(cudaFuncSetAttribute(mla_decode_kernel<R, W>, cudaFuncAttributeMaxDynamicSharedMemorySize, int(smem)));
    configured = true;
  }
  const dim3 grid(unsigned(p.T), unsigned((p.H + kHeads - 1) / kHeads), unsigned(p.splits));
  mla_decode_kernel<R, W><<<grid, 256, smem, s>>>(p);
  check_launch("mla_attention");
}

}  // namespace

void mla_attention(const MlaParams& p, cudaStream_t s) {
  if (p.T == 0) return;
  if (p.r == 512 && p.dr == 64) launch<512, 576>(p, s);          // DeepSeek-V2/V3, Moonlight, Kimi
  else if (p.r == 128 && p.dr == 32) launch<128, 160>(p, s);     // the tiny test fixture
  else if (p.r == 256 && p.dr == 64) launch<256, 320>(p, s);
  else check(cudaErrorInvalidValue, "mla_attention: latent width not compiled (supported r/dr: 512/64, 256/64, 128/32)");
  combine_kernel<<<unsigned(int64_t(p.T) * p.H), 128, 0, s>>>(p);
  check_launch("mla_combine");
}

}  // namespace moe::cuda
