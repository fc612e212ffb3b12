// AdamW on the device, elementwise (the twin of adamw_step's inner loop in train/optimizer.cpp; the global norm
// and the clip factor come from the caller). The CPU computes in double; here FP32, so parameters agree to FP32
// rounding (~1e-7 relative per step). One kernel over the storage of the weights (FP32, or split into BF16 hi +
// int16 lo: split_weights.cuh, the same FP32 value) and of the moments (FP32, or BF16 rounded to nearest even
// when stored, the update using the stored values: optimizer.cpp's bf16_moments rule).
#include <cuda_bf16.h>

#include "train/cuda/common.cuh"
#include "train/cuda/kernels.h"
#include "train/cuda/split_weights.cuh"

namespace moe::train::cuda {

namespace {
// Storage of the weights and of the moments: load4 / store4 move 4 consecutive values (i a multiple of 4 from
// a base aligned for the vector access), load1 / store1 one value; keep() is the value the moment's storage holds
// for x (store* take kept values).
struct F32Weights {
  float* w;
  __device__ void load4(int64_t i, float (&x)[4]) const {
    const float4 q = *reinterpret_cast<const float4*>(w + i);
    x[0] = q.x, x[1] = q.y, x[2] = q.z, x[3] = q.w;
  }
  __device__ void store4(int64_t i, const float (&x)[4]) const {
    *reinterpret_cast<float4*>(w + i) = make_float4(x[0], x[1], x[2], x[3]);
  }
  __device__ float load1(int64_t i) const { return w[i]; }
  __device__ void store1(int64_t i, float x) const { w[i] = x; }
  F32Weights at(int64_t o) const { return {w + o}; }
  bool aligned() const { return reinterpret_cast<uintptr_t>(w) % 16 == 0; }
};
struct SplitWeights {
  uint16_t* hi;
  int16_t* lo;
  __device__ void load4(int64_t i, float (&x)[4]) const {
    const ushort4 h = *reinterpret_cast<const ushort4*>(hi + i);
    const short4 l = *reinterpret_cast<const short4*>(lo + i);
    x[0] = join_value(h.x, l.x), x[1] = join_value(h.y, l.y), x[2] = join_value(h.z, l.z), x[3] = join_value(h.w, l.w);
  }
  __device__ void store4(int64_t i, const float (&x)[4]) const {
    ushort4 h;
    short4 l;
    split_value(x[0], h.x, l.x), split_value(x[1], h.y, l.y), split_value(x[2], h.z, l.z), split_value(x[3], h.w, l.w);
    *reinterpret_cast<ushort4*>(hi + i) = h;
    *reinterpret_cast<short4*>(lo + i) = l;
  }
  __device__ float load1(int64_t i) const { return join_value(hi[i], lo[i]); }
  __device__ void store1(int64_t i, float x) const { split_value(x, hi[i], lo[i]); }
  SplitWeights at(int64_t o) const { return {hi + o, lo + o}; }
  bool aligned() const { return reinterpret_cast<uintptr_t>(hi) % 8 == 0 && reinterpret_cast<uintptr_t>(lo) % 8 == 0; }
};
struct F32Moment {
  float* p;
  __device__ static float keep(float x) { return x; }
  __device__ void load4(int64_t i, float (&x)[4]) const { F32Weights{p}.load4(i, x); }
  __device__ void store4(int64_t i, const float (&x)[4]) const { F32Weights{p}.store4(i, x); }
  __device__ float load1(int64_t i) const { return p[i]; }
  __device__ void store1(int64_t i, float x) const { p[i] = x; }
  F32Moment at(int64_t o) const { return {p + o}; }
  bool aligned() const { return reinterpret_cast<uintptr_t>(p) % 16 == 0; }
};
struct Bf16Moment {  // nearest even when stored; the update uses the stored value
  uint16_t* p;
  __device__ static float keep(float x) { return __bfloat162float(__float2bfloat16_rn(x)); }
  __device__ void load4(int64_t i, float (&x)[4]) const {
    const ushort4 q = *reinterpret_cast<const ushort4*>(p + i);
    x[0] = __uint_as_float(uint32_t(q.x) << 16), x[1] = __uint_as_float(uint32_t(q.y) << 16);
    x[2] = __uint_as_float(uint32_t(q.z) << 16), x[3] = __uint_as_float(uint32_t(q.w) << 16);
  }
  __device__ void store4(int64_t i, const float (&x)[4]) const {  // x holds kept (BF16) values: exact
    const ushort4 q{uint16_t(__float_as_uint(x[0]) >> 16), uint16_t(__float_as_uint(x[1]) >> 16),
                    uint16_t(__float_as_uint(x[2]) >> 16), uint16_t(__float_as_uint(x[3]) >> 16)};
    *reinterpret_cast<ushort4*>(p + i) = q;
  }
  __device__ float load1(int64_t i) const { return __uint_as_float(uint32_t(p[i]) << 16); }
  __device__ void store1(int64_t i, float x) const { p[i] = uint16_t(__float_as_uint(x) >> 16); }
  Bf16Moment at(int64_t o) const { return {p + o}; }
  bool aligned() const { return reinterpret_cast<uintptr_t>(p) % 8 == 0; }
};

// One value's update with every rounding spelled out (no contraction left to the compiler), so the vector and
// the scalar kernel give the same bits for the same inputs.
template <class Mo>
__device__ __forceinline__ void update(float& w, float& m, float& v, float g, const AdamWArgs& a) {
  const float gi = __fmul_rn(g, a.clip);
  m = Mo::keep(__fmaf_rn(a.beta1, m, __fmul_rn(1.0f - a.beta1, gi)));
  v = Mo::keep(__fmaf_rn(a.beta2, v, __fmul_rn(__fmul_rn(1.0f - a.beta2, gi), gi)));
  const float step = __fdiv_rn(__fdiv_rn(m, a.bc1), __fadd_rn(__fsqrt_rn(__fdiv_rn(v, a.bc2)), a.eps));
  w = __fmaf_rn(w, a.decay, -__fmul_rn(a.lr, step));
}

// Thread q updates values 4q .. 4q + 3 (of `quads` groups): one 16- or 8-byte access per array.
template <class Wt, class Mo>
__global__ void adamw_kernel(Wt w, const float* g, Mo m, Mo v, int64_t quads, AdamWArgs a) {
  const int64_t q = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (q >= quads) return;
  const int64_t i = 4 * q;
  float wv[4], mv[4], vv[4];
  w.load4(i, wv);
  m.load4(i, mv);
  v.load4(i, vv);
  const float4 g4 = *reinterpret_cast<const float4*>(g + i);
  const float gv[4] = {g4.x, g4.y, g4.z, g4.w};
#pragma unroll
  for (int j = 0; j < 4; ++j) update<Mo>(wv[j], mv[j], vv[j], gv[j], a);
  m.store4(i, mv);
  v.store4(i, vv);
  w.store4(i, wv);
}
// The same one value a thread, for the ends of a run the vector accesses cannot reach.
template <class Wt, class Mo>
__global__ void adamw1_kernel(Wt w, const float* g, Mo m, Mo v, int64_t count, AdamWArgs a) {
  const int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x;
  if (i >= count) return;
  float w0 = w.load1(i), m0 = m.load1(i), v0 = v.load1(i);
  update<Mo>(w0, m0, v0, g[i], a);
  m.store1(i, m0), v.store1(i, v0), w.store1(i, w0);
}

// Splits [0, count) into a scalar head up to the first index where every array is aligned for its vector access,
// the vector body and a scalar tail (all scalar when the arrays' alignments disagree).
template <class Wt, class Mo>
void launch(Wt w, const float* g, Mo m, Mo v, int64_t count, const AdamWArgs& a, cudaStream_t s) {
  if (count <= 0) return;
  auto scalar = [&](int64_t o, int64_t n) {
    if (n > 0) adamw1_kernel<<<blocks_for(n, 256), 256, 0, s>>>(w.at(o), g + o, m.at(o), v.at(o), n, a);
  };
  int64_t head = 0;
  while (head < count && head < 4 && !(w.at(head).aligned() && reinterpret_cast<uintptr_t>(g + head) % 16 == 0))
    ++head;
  const bool vec = head < count && w.at(head).aligned() && reinterpret_cast<uintptr_t>(g + head) % 16 == 0 &&
                   m.at(head).aligned() && v.at(head).aligned();
  if (!vec) return scalar(0, count);
  const int64_t quads = (count - head) / 4;
  scalar(0, head);
  if (quads > 0)
    adamw_kernel<<<blocks_for(quads, 256), 256, 0, s>>>(w.at(head), g + head, m.at(head), v.at(head), quads, a);
  scalar(head + 4 * quads, count - head - 4 * quads);
}
}  // namespace

void adamw_update(float* w, const float* g, float* m, float* v, int64_t count, const AdamWArgs& a, cudaStream_t s) {
  launch(F32Weights{w}, g, F32Moment{m}, F32Moment{v}, count, a, s);
}

void adamw_update_bf16(float* w, const float* g, uint16_t* m, uint16_t* v, int64_t count, const AdamWArgs& a,
                       cudaStream_t s) {
  launch(F32Weights{w}, g, Bf16Moment{m}, Bf16Moment{v}, count, a, s);
}

void adamw_update_split(uint16_t* hi, int16_t* lo, const float* g, void* m, void* v, bool bf16_moments,
                        int64_t count, const AdamWArgs& a, cudaStream_t s) {
  if (bf16_moments)
    launch(SplitWeights{hi, lo}, g, Bf16Moment{static_cast<uint16_t*>(m)}, Bf16Moment{static_cast<uint16_t*>(v)},
           count, a, s);
  else
    launch(SplitWeights{hi, lo}, g, F32Moment{static_cast<float*>(m)}, F32Moment{static_cast<float*>(v)}, count, a,
           s);
}

}  // namespace moe::train::cuda
