// Sampling on the device: one block of 1024 threads per row of logits, all rows in one launch, the host
// Sampler's choices (backend/sampling.cpp) reproduced step by step:
//   padding (ids >= vocab_limit) -> -inf; the raw row's log-softmax normaliser and top-N (when asked);
//   the allowed-token mask -> -inf; logit_bias and penalties on the few edited ids (the same float operations
//   as the host, written as _rn intrinsics so nvcc never contracts them); then greedy (argmax, ties to the lower
//   id) or: top-k, min-p and top-p as cuts that write -inf into the row, and the draw.
// Cuts: top-k and top-p find their boundary logit by a radix select over the ordered bit pattern of the
// logits (4 passes of 8 bits, shared-memory histograms of counts or of weights exp((l - max) / T) in double,
// warp-aggregated), never a sort; entries tied at the boundary go in by ascending id (a block scan), as the
// host's "higher logit first, ties to the lower id" order counts them.
// The draw: x = u * total, total the candidates' weights, then the first candidate in ascending id whose
// cumulative weight exceeds x; each thread owns a contiguous id segment, a block scan gives its prefix.
//
// Agreement with the host (same row, same u). Every candidate set is the host's exactly (same float ops on the
// same values) except where rounding decides: the weights come from CUDA's double exp (<= 1 ulp, like glibc's),
// and the sums (total, top-p's cumulative weight, each candidate's cumulative weight) are added in another
// order. Each such sum of n positive terms differs from the host's by at most ~2 n 2^-53 of the total (plus
// the weights' ulps), so the choices differ only if u * total lies within ~4 n 2^-53 * total (about 6e-11 of the
// total at n = 129280) of a candidate boundary, or top_p * total or min_p within that of a boundary weight:
// for u uniform, a probability of order 1e-10 per draw (tests/cuda/test_cuda_sample.cpp checks the straddle).
#include <cub/block/block_reduce.cuh>
#include <cub/block/block_scan.cuh>

#include <climits>

#include "backend/cuda/cuda_common.cuh"
#include "backend/cuda/sample.h"

namespace moe::cuda {

namespace {

constexpr int kThreads = 1024;

__device__ __forceinline__ float neg_inf() { return -__int_as_float(0x7f800000); }
__device__ __forceinline__ bool live(float v) { return v > neg_inf(); }  // false for -inf and NaN
// The bit pattern as an unsigned key in the order of the values (for non-NaN values).
__device__ __forceinline__ uint32_t key_of(float v) {
  const uint32_t b = __float_as_uint(v);
  return (b & 0x80000000u) ? ~b : (b | 0x80000000u);
}
__device__ __forceinline__ float value_of(uint32_t k) {
  return __uint_as_float((k & 0x80000000u) ? (k & 0x7fffffffu) : ~k);
}
// The host's exp(double(l - mx) / temperature).
__device__ __forceinline__ double weight_of(float v, float mx, float t) {
  return exp(double(__fsub_rn(v, mx)) / double(t));
}

// A (value, id) candidate of an argmax; id INT_MAX: none. Higher value first, ties to the lower id.
struct Cand {
  float v;
  int id;
};
struct Better {
  __device__ Cand operator()(const Cand& a, const Cand& b) const {
    if (a.id == INT_MAX) return b;
    if (b.id == INT_MAX) return a;
    if (a.v > b.v) return a;
    if (b.v > a.v) return b;
    return a.id < b.id ? a : b;
  }
};
struct MinOp {
  __device__ int operator()(int a, int b) const { return a < b ? a : b; }
};
struct MaxOp {
  __device__ int operator()(int a, int b) const { return a > b ? a : b; }
};

struct Shared {
  union {
    cub::BlockReduce<float, kThreads>::TempStorage rf;
    cub::BlockReduce<double, kThreads>::TempStorage rd;
    cub::BlockReduce<int, kThreads>::TempStorage ri;
    cub::BlockReduce<Cand, kThreads>::TempStorage rc;
    cub::BlockScan<int, kThreads>::TempStorage si;
    cub::BlockScan<double, kThreads>::TempStorage sd;
  } tmp;
  unsigned cnt[256];
  double wsum[256];
  float f;
  double d;
  int i;
  Cand c;
  // radix_select's result
  uint32_t prefix;
  int above, eq;
  double above_w;
  bool found;
};

// Block-wide reductions, the result in every thread.
__device__ float block_max(float v, Shared& sh) {
  __syncthreads();
  const float r = cub::BlockReduce<float, kThreads>(sh.tmp.rf).Reduce(v, [](float a, float b) { return fmaxf(a, b); });
  if (threadIdx.x == 0) sh.f = r;
  __syncthreads();
  return sh.f;
}
__device__ double block_sum(double v, Shared& sh) {
  __syncthreads();
  const double r = cub::BlockReduce<double, kThreads>(sh.tmp.rd).Sum(v);
  if (threadIdx.x == 0) sh.d = r;
  __syncthreads();
  return sh.d;
}
template <class Op>
__device__ int block_int(int v, Op op, Shared& sh) {
  __syncthreads();
  const int r = cub::BlockReduce<int, kThreads>(sh.tmp.ri).Reduce(v, op);
  if (threadIdx.x == 0) sh.i = r;
  __syncthreads();
  return sh.i;
}
__device__ Cand block_best(Cand c, Shared& sh) {
  __syncthreads();
  const Cand r = cub::BlockReduce<Cand, kThreads>(sh.tmp.rc).Reduce(c, Better());
  if (threadIdx.x == 0) sh.c = r;
  __syncthreads();
  return sh.c;
}

// The host's argmax: the first largest non-NaN value (0 when every value is NaN).
__device__ int row_argmax(const float* x, int n, Shared& sh) {
  Cand c{0.0f, INT_MAX};
  for (int i = threadIdx.x; i < n; i += kThreads) {
    const float v = x[i];
    if (!isnan(v)) c = Better()(c, Cand{v, i});
  }
  c = block_best(c, sh);
  return c.id == INT_MAX ? 0 : c.id;
}

// The boundary of the live entries in descending key order: kWeighted false, the key of the target_k-th
// entry; true, the first key at which the cumulative weight reaches target_w. Leaves in sh: found (false: the
// entries never reach the target), prefix (the boundary key), above / above_w (count and weight of the
// entries with a higher key) and eq (how many share the boundary key).
template <bool kWeighted>
__device__ void radix_select(const float* x, int n, float mx, float t, double target_w, int target_k, Shared& sh) {
  const int tid = threadIdx.x, lane = tid & 31;
  __syncthreads();
  if (tid == 0) {
    sh.found = true;
    sh.prefix = 0;
    sh.above = 0;
    sh.above_w = 0.0;
    sh.eq = 0;
  }
  uint32_t prefix = 0, mask = 0;
  for (int shift = 24; shift >= 0; shift -= 8) {
    for (int b = tid; b < 256; b += kThreads) {
      sh.cnt[b] = 0;
      sh.wsum[b] = 0.0;
    }
    __syncthreads();
    for (int base = 0; base < n; base += kThreads) {  // warp-uniform trip count
      const int i = base + tid;
      int digit = 256 + lane;  // unique per lane: not counted
      double w = 0.0;
      if (i < n) {
        const float v = x[i];
        if (live(v)) {
          const uint32_t k = key_of(v);
          if ((k & mask) == prefix) {
            digit = int((k >> shift) & 0xffu);
            if (kWeighted) w = weight_of(v, mx, t);
          }
        }
      }
      // Lanes with the same digit add up first, then one shared-memory atomic per digit and warp.
      const unsigned peers = __match_any_sync(0xffffffffu, digit);
      const int leader = __ffs(peers) - 1;
      double s = w;
      if (kWeighted && __any_sync(0xffffffffu, peers != (1u << lane))) {
        s = 0.0;
        for (int j = 0; j < 32; ++j) {
          const double wj = __shfl_sync(0xffffffffu, w, j);
          if ((peers >> j) & 1u) s += wj;
        }
      }
      if (lane == leader && digit < 256) {
        atomicAdd(&sh.cnt[digit], unsigned(__popc(peers)));
        if (kWeighted) atomicAdd(&sh.wsum[digit], s);
      }
    }
    __syncthreads();
    if (tid == 0) {
      int sel = -1;
      for (int b = 255; b >= 0; --b) {
        if (sh.cnt[b] == 0) continue;
        if (kWeighted ? sh.above_w + sh.wsum[b] >= target_w : sh.above + int(sh.cnt[b]) >= target_k) {
          sel = b;
          break;
        }
        sh.above += int(sh.cnt[b]);
        sh.above_w += sh.wsum[b];
      }
      if (sel < 0) {
        sh.found = false;
      } else {
        sh.prefix |= uint32_t(sel) << shift;
        sh.eq = int(sh.cnt[sel]);
      }
    }
    __syncthreads();
    if (!sh.found) return;
    prefix = sh.prefix;
    mask |= 0xffu << shift;
  }
}

// Keeps the live entries with key > thr and the first `need` (by ascending id) with key == thr; the rest of
// the row becomes -inf.
__device__ void cut(float* x, int n, uint32_t thr, int need, Shared& sh) {
  const int seg = (n + kThreads - 1) / kThreads, b = min(n, int(threadIdx.x) * seg), e = min(n, b + seg);
  int ties = 0;
  for (int i = b; i < e; ++i)
    if (live(x[i]) && key_of(x[i]) == thr) ++ties;
  int rank = 0;
  __syncthreads();
  cub::BlockScan<int, kThreads>(sh.tmp.si).ExclusiveSum(ties, rank);
  for (int i = b; i < e; ++i) {
    const float v = x[i];
    if (!live(v)) continue;
    const uint32_t k = key_of(v);
    if (k < thr || (k == thr && rank++ >= need)) x[i] = neg_inf();
  }
  __syncthreads();
}

__global__ void __launch_bounds__(kThreads) sample_kernel(float* logits, int64_t V, const SampleDesc* descs,
                                                          const SampleEdit* edits, float* edit_raw,
                                                          const uint32_t* masks, int32_t top_stride,
                                                          SampleOut* out, int32_t* top_ids, float* top_lp) {
  __shared__ Shared sh;
  const SampleDesc d = descs[blockIdx.x];
  float* x = logits + d.row * V;
  const int n = int(V), tid = threadIdx.x;
  for (int i = max(d.vocab_limit, 0) + tid; i < n; i += kThreads) x[i] = neg_inf();
  __syncthreads();

  // The model's distribution (before the mask, penalties and temperature), as the host's log_softmax.
  float lse = 0.0f;
  if (d.top_n >= 0) {
    float m = neg_inf();
    for (int i = tid; i < n; i += kThreads) m = fmaxf(m, x[i]);
    m = block_max(m, sh);
    double s = 0.0;
    for (int i = tid; i < n; i += kThreads) s += exp(double(__fsub_rn(x[i], m)));
    s = block_sum(s, sh);
    lse = __fadd_rn(m, float(log(s)));
    Cand prev{0.0f, -1};
    for (int j = 0; j < d.top_n; ++j) {  // the next largest after prev, top_n times (top_n <= 20)
      Cand c{0.0f, INT_MAX};
      for (int i = tid; i < n; i += kThreads) {
        const float lp = __fsub_rn(x[i], lse);
        if (isnan(lp)) continue;
        if (j > 0 && !(lp < prev.v || (lp == prev.v && i > prev.id))) continue;
        c = Better()(c, Cand{lp, i});
      }
      c = block_best(c, sh);
      if (tid == 0) {
        top_ids[int64_t(blockIdx.x) * top_stride + j] = c.id == INT_MAX ? -1 : c.id;
        top_lp[int64_t(blockIdx.x) * top_stride + j] = c.v;
      }
      if (c.id == INT_MAX) {
        for (int k = j + 1 + tid; k < d.top_n; k += kThreads) top_ids[int64_t(blockIdx.x) * top_stride + k] = -1;
        break;
      }
      prev = c;
    }
  }

  // The allowed-token mask, then the edits (distinct ids: one thread each).
  if (d.mask_word >= 0) {
    const uint32_t* w = masks + d.mask_word;
    for (int i = tid; i < n; i += kThreads)
      if (!((w[i >> 5] >> (i & 31)) & 1u)) x[i] = neg_inf();
  }
  __syncthreads();
  for (int j = d.edit_begin + tid; j < d.edit_end; j += kThreads) {
    const SampleEdit e = edits[j];
    float l = x[e.id];
    edit_raw[j] = l;
    if (e.flags & 1) l = __fadd_rn(l, e.bias);
    if (e.flags & 2) l = l > 0.0f ? __fdiv_rn(l, d.repetition) : __fmul_rn(l, d.repetition);
    if (e.count > 0) l = __fsub_rn(l, __fmaf_rn(d.frequency, float(e.count), d.presence));
    x[e.id] = l;
  }
  __syncthreads();

  int token = -1;
  if (d.temperature <= 0.0f) token = row_argmax(x, n, sh);
  float mx = neg_inf();
  if (token < 0) {
    if (d.top_k > 0 && d.top_k < n) {
      radix_select<false>(x, n, 0.0f, 1.0f, 0.0, d.top_k, sh);
      if (sh.found) cut(x, n, sh.prefix, d.top_k - sh.above, sh);
    }
    for (int i = tid; i < n; i += kThreads) mx = fmaxf(mx, live(x[i]) ? x[i] : neg_inf());
    mx = block_max(mx, sh);
    if (!live(mx)) token = row_argmax(x, n, sh);  // nothing to weigh: the host's fallback
  }
  if (token < 0) {
    const float t = d.temperature;
    double total = 0.0;
    for (int i = tid; i < n; i += kThreads)
      if (live(x[i])) total += weight_of(x[i], mx, t);
    total = block_sum(total, sh);
    if (d.min_p > 0.0f) {
      const double floor = fmin(double(d.min_p), 1.0);
      for (int i = tid; i < n; i += kThreads)
        if (live(x[i]) && weight_of(x[i], mx, t) < floor) x[i] = neg_inf();
      __syncthreads();
    }
    if (d.top_p < 1.0f) {
      const double target = double(d.top_p) * total;
      radix_select<true>(x, n, mx, t, target, 0, sh);
      if (sh.found) {
        if (tid == 0) {  // the tied entries, by id, while the weight before each is short of the target
          const double w = weight_of(value_of(sh.prefix), mx, t);
          double acc = sh.above_w;
          int need = 0;
          while (need < sh.eq && acc < target) {
            acc += w;
            ++need;
          }
          sh.i = max(need, sh.above == 0 ? 1 : 0);
        }
        __syncthreads();
        cut(x, n, sh.prefix, sh.i, sh);
      }
    }
    // The draw over contiguous id segments.
    const int seg = (n + kThreads - 1) / kThreads, b = min(n, tid * seg), e = min(n, b + seg);
    double local = 0.0;
    int last = -1;
    for (int i = b; i < e; ++i)
      if (live(x[i])) {
        const double w = weight_of(x[i], mx, t);
        local += w;
        if (w > 0.0) last = i;
      }
    double prefix = 0.0, sum = 0.0;
    __syncthreads();
    cub::BlockScan<double, kThreads>(sh.tmp.sd).ExclusiveSum(local, prefix, sum);
    const double target = d.u * sum;
    int found = INT_MAX;
    double cum = prefix;
    for (int i = b; i < e; ++i)
      if (live(x[i])) {
        cum += weight_of(x[i], mx, t);
        if (target < cum) {
          found = i;
          break;
        }
      }
    token = block_int(found, MinOp(), sh);
    if (token == INT_MAX) {  // u * total rounded past the sum: the last candidate that can be drawn
      token = block_int(last, MaxOp(), sh);
      if (token < 0) token = row_argmax(x, n, sh);
    }
  }

  if (d.top_n >= 0) {  // the chosen token's logit before its edits
    __syncthreads();
    if (tid == 0) sh.f = x[token];
    __syncthreads();
    for (int j = d.edit_begin + tid; j < d.edit_end; j += kThreads)
      if (edits[j].id == token) sh.f = edit_raw[j];
    __syncthreads();
  }
  if (tid == 0) out[blockIdx.x] = SampleOut{token, d.top_n >= 0 ? __fsub_rn(sh.f, lse) : 0.0f};
}

// Greedy rows (speculative decoding's fused step): one block per row, row_argmax over the first n columns.
__global__ void __launch_bounds__(kThreads) argmax_kernel(const float* logits, int64_t V, int n, int32_t* ids) {
  __shared__ Shared sh;
  const int id = row_argmax(logits + int64_t(blockIdx.x) * V, n, sh);
  if (threadIdx.x == 0) ids[blockIdx.x] = id;
}

}  // namespace

void sample_rows(float* logits, int64_t V, const SampleDesc* descs, int64_t R, const SampleEdit* edits,
                 float* edit_raw, const uint32_t* masks, int32_t top_stride, SampleOut* out, int32_t* top_ids,
                 float* top_lp, cudaStream_t stream) {
  if (R == 0) return;
  sample_kernel<<<unsigned(R), kThreads, 0, stream>>>(logits, V, descs, edits, edit_raw, masks, top_stride, out,
                                                      top_ids, top_lp);
  check_launch("sample_kernel");
}

void argmax_rows(const float* logits, int64_t V, int64_t R, int64_t n, int32_t* ids, cudaStream_t stream) {
  if (R == 0) return;
  argmax_kernel<<<unsigned(R), kThreads, 0, stream>>>(logits, V, int(n), ids);
  check_launch("argmax_kernel");
}

}  // namespace moe::cuda
