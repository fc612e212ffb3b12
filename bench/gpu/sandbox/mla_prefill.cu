// Sandbox: the MLA prefill attention (expanded form, causal; src/backend/cuda/mla_prefill.cu) at Moonlight's
// (16 heads) and DeepSeek-V3's (128 heads) widths, dn 128 / rope 64 / dv 128, and the test fixture's small heads.
//
// Variants: production's kernel (compiled here from the production source: #include of the .cu with its public
// launchers renamed, so this binary does not collide with moe_backend_cuda's copy): the FlashAttention-2 schedule
// on wgmma (S = Q K^T as m64n64k16 from shared memory, P V with P from registers and V MN-major); and the kernel
// it replaced (copied below from commit 424b991): the same schedule on mma.sync m16n8k16 with ldmatrix, 8 warps of
// 16 query rows.
// Inputs (fresh random, never zero): q F32 [T, H, dn + dr] uniform in (-2, 2), the expanded rows kv BF16
// [rows, H, dn + dv] and the gathered latent rows lat BF16 [rows, 576] (rope columns 512 ..) uniform in (-1, 1),
// scale 1 / sqrt(dn + dr). Tiles as the backend plans them (plan_mla_prefill: tiles of up to 128 tokens of one
// sequence, heaviest first). Outputs start as NaN.
// Check: every variant against a float64 host softmax(q k^T scale) v on the unrounded inputs (q in F32, the
// kernels round it to BF16; k, v are BF16 already), on every 7th token and the last 64 tokens of each sequence,
// all heads. Error sources: q rounded to BF16 (2^-9 relative at most per element: a score error of about
// 2^-9 / sqrt(3) |s| rms) and P rounded to BF16 (same relative size per weight; l sums the rounded weights, so
// O stays a convex combination of v rows); both average over the keys: rel L2 ~1e-3 expected, bound 5e-3. A
// wrong row, key, mask or layout errs by O(1).
// Timing: median of 20 after 3 warm-ups (inputs under 200 MB are rotated over copies, as the other sandboxes);
// FLOPs = 2 H sum_t (pos_t + 1) (dn + dr + dv), the causal half of the square.
//
// Measured (H200, 2026-12-04; bench/RESULTS.md "MLA prefill attention on wgmma"), T 4096, one sequence:
//   16 heads                                                                  128 heads
//   mma.sync (production before)                          464-468 us (184-185 TFLOP/s)   3628-3644 us (189)
//   wgmma, S then softmax then P V in series, 3 stages    372.5 us (231)                 2882 us (239)
//   + scores double-buffered (S(j+1) during softmax(j))   337.7 us (254)                 2650 us (259)
//   + lean copies (one row a thread, offsets fixed) and softmax (fma + ex2.approx, cvt.rn.bf16x2 pairs), the
//     last block without a next S: production               257.1 us (334)                 2128 us (323)
//   the same warp-specialised (a producer warpgroup issues the ring's copies, mbarriers, setmaxnreg 40 / 232;
//     the math warpgroups never wait for each other)      274.0 us (314)                 2201 us (312)
// The double-buffered version's PTX held 4729 instructions (prologue and three inlined key-block bodies; each
// copy recomputed its row, chunk and 64-bit source address, each score took ~12 instructions), the lean one 2614:
// with two warps a scheduler the first issued about as many slots per key block as its ~2560 tensor-core cycles.
// Outputs agree with the mma.sync kernel to rel L2 6e-6 (the fused multiply-add and ex2.approx round
// differently; the first wgmma versions were bit-identical to it).
//
// Sizes: --tokens 4096 (one sequence from position 0), --heads 16,128.
#define mla_gather_latent sbx_mla_gather_latent
#define configure_mla_prefill_kernels sbx_configure_mla_prefill_kernels
#define mla_prefill_supported sbx_mla_prefill_supported
#define mla_prefill_attention sbx_mla_prefill_attention
#include "../../../src/backend/cuda/mla_prefill.cu"
#undef mla_gather_latent
#undef configure_mla_prefill_kernels
#undef mla_prefill_supported
#undef mla_prefill_attention

#include "common.cuh"

// ---- the mma.sync kernel (production until this sandbox's commit) ----------------------------------------------
namespace old {
using namespace moe::cuda;
constexpr int kRows = kMlaPrefillRows, kKeys = 64, kWarps = kRows / 16, kThreads = kWarps * 32, kPad = 8;

__device__ __forceinline__ uint32_t pack_bf16(float lo, float hi) {
  return uint32_t(float_to_bf16_bits(lo)) | (uint32_t(float_to_bf16_bits(hi)) << 16);
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

}  // namespace old

namespace {

using moe::cuda::MlaPrefillParams;
constexpr int kR = 512;

struct Shape {
  int H, dn, dr, dv;
};

// A batch: sequences of (cached positions, new tokens); every context row is present (gathered), the new tokens'
// queries are those of the batch, tokens in sequence order.
struct Problem {
  Shape sh;
  std::vector<std::pair<int, int>> seqs;
  int64_t T = 0, rows = 0;
  std::vector<int32_t> tiles, qlist, positions, tok_ctx0;  // tok_ctx0: the token's sequence's first context row
  double flops = 0.0;
};

Problem plan(const Shape& sh, const std::vector<std::pair<int, int>>& seqs) {
  Problem pr;
  pr.sh = sh;
  pr.seqs = seqs;
  std::vector<int32_t> tiles;
  for (const auto& [start, n] : seqs) {
    const int32_t ctx0 = int32_t(pr.rows);
    for (int i = 0; i < n; ++i) {
      pr.positions.push_back(start + i);
      pr.tok_ctx0.push_back(ctx0);
      pr.qlist.push_back(int32_t(pr.T + i));
      pr.flops += 2.0 * sh.H * double(start + i + 1) * double(sh.dn + sh.dr + sh.dv);
    }
    for (int i = 0; i < n; i += moe::cuda::kMlaPrefillRows) {
      const int c = std::min(moe::cuda::kMlaPrefillRows, n - i);
      tiles.insert(tiles.end(), {ctx0, int32_t(pr.T + i), c, start + i + c});
    }
    pr.T += n;
    pr.rows += start + n;
  }
  // heaviest first (keys to visit), as plan_mla_prefill
  const size_t nt = tiles.size() / 4;
  std::vector<size_t> order(nt);
  for (size_t i = 0; i < nt; ++i) order[i] = i;
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return tiles[4 * a + 3] > tiles[4 * b + 3]; });
  for (size_t i : order) pr.tiles.insert(pr.tiles.end(), tiles.begin() + 4 * i, tiles.begin() + 4 * i + 4);
  return pr;
}

struct Inputs {
  std::vector<float> q;
  std::vector<uint16_t> kv, lat;
};

Inputs make_inputs(const Problem& pr, uint64_t seed) {
  const Shape& s = pr.sh;
  Inputs in;
  in.q.resize(size_t(pr.T * s.H * (s.dn + s.dr)));
  sbx::fill_uniform(in.q, -2.0f, 2.0f, seed);
  std::vector<float> kv(size_t(pr.rows * s.H * (s.dn + s.dv))), lat(size_t(pr.rows * (kR + s.dr)));
  sbx::fill_uniform(kv, -1.0f, 1.0f, seed + 1);
  sbx::fill_uniform(lat, -1.0f, 1.0f, seed + 2);
  in.kv = sbx::to_bf16(kv);
  in.lat = sbx::to_bf16(lat);
  return in;
}

// float64 attention of token t, all heads: out [H * dv].
void reference(const Problem& pr, const Inputs& in, int64_t t, double* out) {
  const Shape& s = pr.sh;
  const int dqk = s.dn + s.dr, W = kR + s.dr;
  const double scale = 1.0 / std::sqrt(double(dqk));
  const int n = pr.positions[size_t(t)] + 1;
  const int64_t c0 = pr.tok_ctx0[size_t(t)];
  std::vector<double> sc(static_cast<size_t>(n));
  for (int h = 0; h < s.H; ++h) {
    const float* q = in.q.data() + (t * s.H + h) * dqk;
    double mx = -1e300;
    for (int j = 0; j < n; ++j) {
      const uint16_t* k = in.kv.data() + ((c0 + j) * s.H + h) * (s.dn + s.dv);
      const uint16_t* kr = in.lat.data() + (c0 + j) * W + kR;
      double d = 0.0;
      for (int i = 0; i < s.dn; ++i) d += double(q[i]) * sbx::bf2f(k[i]);
      for (int i = 0; i < s.dr; ++i) d += double(q[s.dn + i]) * sbx::bf2f(kr[i]);
      sc[size_t(j)] = d * scale;
      mx = std::max(mx, sc[size_t(j)]);
    }
    double sum = 0.0;
    for (int j = 0; j < n; ++j) sum += (sc[size_t(j)] = std::exp(sc[size_t(j)] - mx));
    for (int v = 0; v < s.dv; ++v) out[h * s.dv + v] = 0.0;
    for (int j = 0; j < n; ++j) {
      const uint16_t* vv = in.kv.data() + ((c0 + j) * s.H + h) * (s.dn + s.dv) + s.dn;
      const double w = sc[size_t(j)] / sum;
      for (int v = 0; v < s.dv; ++v) out[h * s.dv + v] += w * sbx::bf2f(vv[v]);
    }
  }
}

using Launch = void (*)(const MlaPrefillParams&, cudaStream_t);

template <int DN, int DR, int DV>
void launch_old(const MlaPrefillParams& p, cudaStream_t s) {
  constexpr size_t smem = old::prefill_smem<DN, DR, DV>();
  static bool configured = false;
  if (!configured) {
    SBX_CHECK(cudaFuncSetAttribute(old::mla_prefill_kernel<DN, DR, DV>, cudaFuncAttributeMaxDynamicSharedMemorySize,
                                   int(smem)));
    configured = true;
  }
  old::mla_prefill_kernel<DN, DR, DV><<<dim3(unsigned(p.H), unsigned(p.num_tiles)), old::kThreads, smem, s>>>(p);
}

struct Variant {
  const char* name;
  Launch fn;
};

bool run(const char* name, const Shape& sh, const std::vector<std::pair<int, int>>& seqs, bool time_it,
         const sbx::Args& args) {
  const Problem pr = plan(sh, seqs);
  const Inputs in = make_inputs(pr, 1234 + uint64_t(sh.H));
  const int dqk = sh.dn + sh.dr, W = kR + sh.dr;
  std::vector<Variant> vs;
  if (sh.dn == 128) vs = {{"mma.sync (before)", launch_old<128, 64, 128>}, {"wgmma (production)", moe::cuda::sbx_mla_prefill_attention}};
  else vs = {{"mma.sync (before)", launch_old<64, 32, 64>}, {"wgmma (production)", moe::cuda::sbx_mla_prefill_attention}};

  // Device copies: enough for the rotation when timed.
  const size_t set_bytes = in.q.size() * 4 + in.kv.size() * 2 + in.lat.size() * 2;
  const int nbuf = time_it ? sbx::rotation(set_bytes, args, 8) : 1;
  std::vector<float*> dq(nbuf);
  std::vector<uint16_t*> dkv(nbuf), dlat(nbuf);
  for (int b = 0; b < nbuf; ++b) {
    dq[b] = sbx::dupload(in.q);
    dkv[b] = sbx::dupload(in.kv);
    dlat[b] = sbx::dupload(in.lat);
  }
  int32_t* dtiles = sbx::dupload(pr.tiles);
  int32_t* dqlist = sbx::dupload(pr.qlist);
  int32_t* dpos = sbx::dupload(pr.positions);
  const size_t out_n = size_t(pr.T * sh.H * sh.dv);
  float* dout = sbx::dalloc<float>(out_n);
  auto params = [&](int b) {
    MlaPrefillParams p;
    p.q = dq[b];
    p.kv = dkv[b];
    p.lat = dlat[b];
    p.tiles = dtiles;
    p.qlist = dqlist;
    p.positions = dpos;
    p.out = dout;
    p.num_tiles = int32_t(pr.tiles.size() / 4);
    p.H = sh.H, p.dn = sh.dn, p.dr = sh.dr, p.dv = sh.dv, p.r = kR, p.W = W;
    p.scale = float(1.0 / std::sqrt(double(dqk)));
    return p;
  };

  // Reference rows: every 7th token and the last 64 of each sequence.
  std::vector<int64_t> rows;
  {
    int64_t t0 = 0;
    for (const auto& [start, n] : seqs) {
      for (int i = 0; i < n; ++i)
        if (i % 7 == 0 || i >= n - 64) rows.push_back(t0 + i);
      t0 += n;
    }
  }
  std::vector<double> ref(rows.size() * size_t(sh.H * sh.dv));
  sbx::parallel_for(int64_t(rows.size()), [&](int64_t i) { reference(pr, in, rows[size_t(i)], ref.data() + i * sh.H * sh.dv); });

  bool ok = true;
  std::printf("%s: H %d, dn %d dr %d dv %d, %lld tokens in %zu sequences, %zu tiles, %.2f GFLOP\n", name, sh.H, sh.dn,
              sh.dr, sh.dv, static_cast<long long>(pr.T), seqs.size(), pr.tiles.size() / 4, pr.flops / 1e9);
  std::vector<std::vector<float>> outs;
  for (const Variant& v : vs) {
    std::vector<float> nan(out_n, std::nanf(""));
    SBX_CHECK(cudaMemcpy(dout, nan.data(), out_n * 4, cudaMemcpyHostToDevice));
    v.fn(params(0), 0);
    SBX_CHECK(cudaGetLastError());
    std::vector<float> got = sbx::ddownload(dout, out_n);
    int64_t bad = 0;
    for (float x : got) bad += !std::isfinite(x);
    std::vector<float> sel(ref.size());
    for (size_t i = 0; i < rows.size(); ++i)
      std::copy_n(got.data() + rows[i] * sh.H * sh.dv, sh.H * sh.dv, sel.data() + i * size_t(sh.H * sh.dv));
    const double err = sbx::rel_l2(sel.data(), ref.data(), ref.size());
    const bool pass = bad == 0 && err <= 5e-3;
    ok = ok && pass;
    std::printf("  %-20s rel L2 vs float64 %.2e (%zu tokens checked), non-finite %lld  %s", v.name, err, rows.size(),
                static_cast<long long>(bad), pass ? "ok" : "FAILED");
    if (time_it) {
      const double us = sbx::time_us(nbuf, [&](int b) { v.fn(params(b), 0); }, 0);
      std::printf("   %9.1f us  %6.1f TFLOP/s", us, pr.flops / us / 1e6);
    }
    std::printf("\n");
    outs.push_back(std::move(got));
  }
  if (outs.size() == 2) {
    std::vector<double> a(outs[0].begin(), outs[0].end());
    std::printf("  production vs before: rel L2 %.2e over all outputs\n", sbx::rel_l2(outs[1].data(), a.data(), out_n));
  }
  for (int b = 0; b < nbuf; ++b) {
    cudaFree(dq[b]);
    cudaFree(dkv[b]);
    cudaFree(dlat[b]);
  }
  cudaFree(dtiles);
  cudaFree(dqlist);
  cudaFree(dpos);
  cudaFree(dout);
  return ok;
}

}  // namespace

int main(int argc, char** argv) {
  const sbx::Args args{argc, argv};
  moe::cuda::sbx_configure_mla_prefill_kernels();
  bool ok = true;
  // Tails: lengths no multiple of 64 keys or 128 tokens, a chunk continuing a cached context, a decode token.
  const std::vector<std::pair<int, int>> mixed = {{0, 300}, {517, 130}, {1000, 1}, {0, 77}};
  ok &= run("mixed, Moonlight heads", {16, 128, 64, 128}, mixed, false, args);
  ok &= run("mixed, fixture heads", {4, 64, 32, 64}, {{0, 100}, {33, 40}, {7, 1}}, false, args);
  for (int64_t T : args.list("tokens", {4096}))
    for (int64_t H : args.list("heads", {16, 128}))
      ok &= run("prefill", {int(H), 128, 64, 128}, {{0, int(T)}}, true, args);
  std::printf("%s\n", ok ? "all checks passed" : "SOME CHECKS FAILED");
  return ok ? 0 : 1;
}
