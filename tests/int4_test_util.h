#pragma once
// Random INT4 (W4A16) weights packed by hand for the tests, in compressed-tensors' pack-quantized layout:
// value k of a row is q + 8 in bits [4 (k % 8), 4 (k % 8) + 4) of the row's word k / 8, q in [-8, 7], with one
// scale per row and group of `group` inputs. `ref` holds q * scale in double: the independent reference.
#include <cmath>
#include <cstdint>
#include <random>
#include <vector>

#include "backend/backend.h"
#include "core/dtype.h"

namespace moe::test {

struct HostInt4 {
  std::vector<uint32_t> words;   // [N, K / 8]
  std::vector<uint16_t> bf16;    // [N, K / group] scales (BF16)
  std::vector<float> f32;        // the same scales as F32
  std::vector<double> ref;       // [N, K] dequantised
  Weight w;                      // views of words and the BF16 (or F32) scales
};

inline void random_int4(std::mt19937_64& rng, int64_t N, int64_t K, int64_t group, bool f32_scales, HostInt4& h) {
  const int64_t G = K / group;
  h.words.assign(size_t(N * K / 8), 0u);
  h.bf16.resize(size_t(N * G));
  h.f32.resize(size_t(N * G));
  h.ref.resize(size_t(N * K));
  std::uniform_int_distribution<int> qd(-8, 7);
  std::uniform_real_distribution<float> sd(0.5f, 1.5f);
  for (int64_t n = 0; n < N; ++n) {
    for (int64_t g = 0; g < G; ++g) {
      // Scales around 1 / (7 sqrt(K)) so a row's dot with unit-size inputs stays near unit size.
      const uint16_t b = float_to_bf16(sd(rng) / (4.0f * std::sqrt(float(K))));
      h.bf16[size_t(n * G + g)] = b;
      h.f32[size_t(n * G + g)] = bf16_to_float(b);
    }
    for (int64_t k = 0; k < K; ++k) {
      const int q = qd(rng);
      h.words[size_t(n * (K / 8) + k / 8)] |= uint32_t(q + 8) << (4 * (k % 8));
      h.ref[size_t(n * K + k)] = double(q) * double(h.f32[size_t(n * G + k / group)]);
    }
  }
  h.w = Weight{};
  h.w.w.data = h.words.data();
  h.w.w.dtype = DType::I32;
  h.w.w.shape = Shape{N, K / 8};
  h.w.scale_inv.data = f32_scales ? static_cast<void*>(h.f32.data()) : static_cast<void*>(h.bf16.data());
  h.w.scale_inv.dtype = f32_scales ? DType::F32 : DType::BF16;
  h.w.scale_inv.shape = Shape{N, G};
  h.w.group_size = int32_t(group);
}

}  // namespace moe::test
