#pragma once
// Element types of checkpoints and activations, and scalar conversions to and from float.
#include <cstdint>
#include <cstring>
#include <string>
#include <string_view>

namespace moe {

enum class DType : uint8_t { F32, F16, BF16, F8_E4M3, I32, I64, U8 };

size_t dtype_size(DType dtype);
std::string_view dtype_name(DType dtype);  // safetensors spelling: "F32", "BF16", "F8_E4M3", ...
bool parse_dtype(std::string_view name, DType* out);

inline float bits_to_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}
inline uint32_t float_to_bits(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, 4);
  return bits;
}

inline float bf16_to_float(uint16_t b) { return bits_to_float(uint32_t(b) << 16); }
// Round to nearest even, as torch does; NaN stays NaN.
inline uint16_t float_to_bf16(float f) {
  uint32_t bits = float_to_bits(f);
  if ((bits & 0x7fffffffu) > 0x7f800000u) return uint16_t((bits >> 16) | 0x40);
  bits += 0x7fffu + ((bits >> 16) & 1u);
  return uint16_t(bits >> 16);
}

float f16_to_float(uint16_t h);
uint16_t float_to_f16(float f);

// E4M3 (fn variant): bias 7, no infinities, 0x7f/0xff are NaN, max finite 448.
float e4m3_to_float(uint8_t v);
uint8_t float_to_e4m3(float f);  // round to nearest even, saturating to +-448
constexpr float kE4M3Max = 448.0f;

}  // namespace moe
