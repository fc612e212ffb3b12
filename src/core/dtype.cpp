#include "core/dtype.h"

#include <cmath>

namespace moe {

size_t dtype_size(DType dtype) {
  switch (dtype) {
    case DType::F32: return 4;
    case DType::F16: return 2;
    case DType::BF16: return 2;
    case DType::F8_E4M3: return 1;
    case DType::I32: return 4;
    case DType::I64: return 8;
    case DType::U8: return 1;
  }
  return 0;
}

std::string_view dtype_name(DType dtype) {
  switch (dtype) {
    case DType::F32: return "F32";
    case DType::F16: return "F16";
    case DType::BF16: return "BF16";
    case DType::F8_E4M3: return "F8_E4M3";
    case DType::I32: return "I32";
    case DType::I64: return "I64";
    case DType::U8: return "U8";
  }
  return "?";
}

bool parse_dtype(std::string_view name, DType* out) {
  static constexpr DType all[] = {DType::F32, DType::F16, DType::BF16, DType::F8_E4M3,
                                  DType::I32, DType::I64, DType::U8};
  for (DType d : all) {
    if (dtype_name(d) == name) {
      *out = d;
      return true;
    }
  }
  return false;
}

float f16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const uint32_t exp = (h >> 10) & 0x1f;
  const uint32_t mant = h & 0x3ff;
  if (exp == 0) {
    const float v = std::ldexp(float(mant), -24);
    return sign ? -v : v;
  }
  if (exp == 31) return bits_to_float(sign | 0x7f800000u | (mant << 13));
  return bits_to_float(sign | ((exp + 112) << 23) | (mant << 13));
}

uint16_t float_to_f16(float f) {
  const uint32_t bits = float_to_bits(f);
  const uint16_t sign = uint16_t((bits >> 16) & 0x8000);
  const float a = std::fabs(f);
  if (std::isnan(f)) return sign | 0x7e00;
  if (a >= 65520.0f) return sign | 0x7c00;
  if (a < std::ldexp(1.0f, -14)) {  // subnormal: units of 2^-24, round to nearest even
    return sign | uint16_t(std::nearbyint(a * std::ldexp(1.0f, 24)));
  }
  uint32_t abits = bits & 0x7fffffffu;
  abits += 0xfffu + ((abits >> 13) & 1u);
  return sign | uint16_t(((abits >> 13) - (112u << 10)));
}

namespace {
float e4m3_to_float_exact(uint8_t v) {
  const bool neg = v & 0x80;
  const int exp = (v >> 3) & 0xf;
  const int mant = v & 0x7;
  float r;
  if (exp == 0xf && mant == 0x7) {
    r = NAN;
  } else if (exp == 0) {
    r = std::ldexp(float(mant), -9);  // subnormal: mant/8 * 2^-6
  } else {
    r = std::ldexp(1.0f + float(mant) / 8.0f, exp - 7);
  }
  return neg ? -r : r;
}

struct E4m3Table {
  float values[256];
  E4m3Table() {
    for (int i = 0; i < 256; ++i) values[i] = e4m3_to_float_exact(uint8_t(i));
  }
};
}  // namespace

float e4m3_to_float(uint8_t v) {
  static const E4m3Table table;
  return table.values[v];
}

uint8_t float_to_e4m3(float f) {
  if (std::isnan(f)) return 0x7f;
  const uint8_t sign = std::signbit(f) ? 0x80 : 0;
  float a = std::fabs(f);
  if (a >= kE4M3Max) return sign | 0x7e;
  // Find the best code by rounding in the target's own spacing (exact for this 8-bit format).
  int e;
  std::frexp(a, &e);                 // a = m * 2^e, m in [0.5, 1)
  int exp_unbiased = std::max(e - 1, -6);  // normals from 2^-6; below that the subnormal spacing 2^-9
  const float quantum = std::ldexp(1.0f, exp_unbiased - 3);
  float q = std::nearbyint(a / quantum) * quantum;  // nearbyint rounds half to even by default
  if (q >= kE4M3Max) return sign | 0x7e;
  if (q == 0.0f) return sign;
  int qe;
  std::frexp(q, &qe);
  int biased = qe - 1 + 7;
  if (biased <= 0) return sign | uint8_t(std::lround(q / std::ldexp(1.0f, -9)));
  const int mant = int(std::lround((q / std::ldexp(1.0f, qe - 1) - 1.0f) * 8.0f));
  return sign | uint8_t(biased << 3) | uint8_t(mant);
}

}  // namespace moe
