#include "engine/grammar/number_bounds.h"

#include <algorithm>
#include <charconv>
#include <string>

#include "core/error.h"

namespace moe::grammar {

namespace {

constexpr Wide pow10(int k) {
  Wide r = 1;
  while (k-- > 0) r *= 10;
  return r;
}

constexpr int digit_count(Wide v) {
  int n = 0;
  for (; v > 0; v /= 10) ++n;
  return n;
}

constexpr Wide kClamp = pow10(32);

// Whether the magnitudes {a + j q : a + j q < b} (a, b multiples of q) meet [lo, hi] on the prefix's side of zero.
bool grid_meets(Wide a, Wide b, Wide q, bool negative, Wide lo, Wide hi) {
  const Wide low = negative ? -hi : lo, high = negative ? -lo : hi;
  const Wide x = std::max(a, low);
  const Wide g = a + (x - a + q - 1) / q * q;  // the first grid point at or above x
  return g < b && g <= high;
}

}  // namespace

Wide scaled_bound(const nlohmann::json& v, int scale, bool round_up) {
  MOE_CHECK(v.is_number(), "a bound must be a number, not {}", v.dump());
  // value = (negative ? -1 : 1) * mantissa * 10^exponent, exactly.
  bool negative = false;
  Wide mantissa = 0;
  int exponent = 0;
  if (v.is_number_unsigned()) {
    mantissa = Wide(v.get<uint64_t>());
  } else if (v.is_number_integer()) {
    const int64_t i = v.get<int64_t>();
    negative = i < 0;
    mantissa = negative ? Wide(0) - Wide(i) : Wide(i);
  } else {
    char buf[64];
    const auto r = std::to_chars(buf, buf + sizeof buf, v.get<double>());  // the shortest round-trip decimal
    MOE_CHECK(r.ec == std::errc(), "cannot format the bound {}", v.dump());
    const std::string s(buf, r.ptr);
    size_t i = 0;
    if (i < s.size() && s[i] == '-') negative = true, ++i;
    bool point = false;
    for (; i < s.size() && s[i] != 'e'; ++i) {
      if (s[i] == '.') {
        point = true;
        continue;
      }
      if (mantissa < pow10(36)) {
        mantissa = mantissa * 10 + (s[i] - '0');
        if (point) --exponent;
      } else if (!point) {
        ++exponent;  // a digit past 36 of the integer part (always a zero in a shortest decimal)
      }
    }
    if (i < s.size()) exponent += std::stoi(s.substr(i + 1));
  }
  const int e = exponent + scale;
  Wide floor_mag, ceil_mag;  // of the magnitude
  if (mantissa == 0) {
    floor_mag = ceil_mag = 0;
  } else if (e >= 0) {
    floor_mag = ceil_mag = digit_count(mantissa) + e > 32 ? kClamp : std::min(kClamp, mantissa * pow10(e));
  } else if (-e > 38) {
    floor_mag = 0;
    ceil_mag = 1;
  } else {
    const Wide p = pow10(-e);
    floor_mag = mantissa / p;
    ceil_mag = floor_mag + (mantissa % p != 0 ? 1 : 0);
  }
  if (!negative) return round_up ? ceil_mag : floor_mag;
  return round_up ? -floor_mag : -ceil_mag;
}

bool number_step(DecimalPrefix& p, uint8_t b) {
  const bool digit = b >= '0' && b <= '9';
  const uint64_t d = digit ? uint64_t(b - '0') : 0;
  switch (p.phase) {
    case 0:
      if (b == '-') {
        p.negative = true;
        p.phase = 1;
        return true;
      }
      [[fallthrough]];
    case 1:
      if (!digit) return false;
      p.phase = d == 0 ? 3 : 2;
      p.digits = d;
      p.significant = d == 0 ? 0 : 1;
      return true;
    case 2:
      if (b == '.') {
        if (p.significant >= uint32_t(kBoundedDigits)) return false;  // no room for a decimal
        p.phase = 4;
        return true;
      }
      if (!digit || p.significant >= uint32_t(kBoundedDigits)) return false;
      p.digits = p.digits * 10 + d;
      p.significant++;
      return true;
    case 3:
      if (b != '.') return false;
      p.phase = 4;
      return true;
    case 4:
    case 5:
      if (!digit || p.decimals >= uint32_t(kBoundedDecimals)) return false;
      if (p.digits > 0 || d > 0) {
        if (p.significant >= uint32_t(kBoundedDigits)) return false;
        p.significant++;
      }
      p.digits = p.digits * 10 + d;
      p.decimals++;
      p.phase = 5;
      return true;
    default:
      return false;
  }
}

bool number_feasible(const DecimalPrefix& p, Wide lo, Wide hi) {
  if (lo > hi) return false;
  switch (p.phase) {
    case 0:
    case 1: {  // some first digit (or, at the start, the minus sign) leads on
      for (uint8_t b : {uint8_t('-'), uint8_t('0'), uint8_t('1'), uint8_t('2'), uint8_t('3'), uint8_t('4'),
                        uint8_t('5'), uint8_t('6'), uint8_t('7'), uint8_t('8'), uint8_t('9')}) {
        DecimalPrefix next = p;
        if (number_step(next, b) && number_feasible(next, lo, hi)) return true;
      }
      return false;
    }
    case 2:  // k more integer digits, then at most 15 - significant - k decimals: a grid per k
      for (int k = 0; int(p.significant) + k <= kBoundedDigits; ++k) {
        const Wide unit = pow10(kBoundedScale + k);
        if (grid_meets(Wide(p.digits) * unit, Wide(p.digits + 1) * unit, pow10(int(p.significant) + k), p.negative,
                       lo, hi))
          return true;
      }
      return false;
    case 3:  // 0, or 0. and up to 15 decimals
      return grid_meets(0, pow10(kBoundedScale), 1, p.negative, lo, hi);
    case 4:
    case 5: {
      const int room = p.digits == 0 ? kBoundedDecimals - int(p.decimals)
                                     : std::min(kBoundedDecimals - int(p.decimals), kBoundedDigits - int(p.significant));
      if (p.phase == 4 && room < 1) return false;
      const Wide unit = pow10(kBoundedScale - int(p.decimals));
      return grid_meets(Wide(p.digits) * unit, Wide(p.digits + 1) * unit,
                        pow10(kBoundedScale - int(p.decimals) - room), p.negative, lo, hi);
    }
    default:
      return false;
  }
}

bool number_complete(const DecimalPrefix& p, Wide lo, Wide hi) {
  if (p.phase != 2 && p.phase != 3 && p.phase != 5) return false;
  Wide v = Wide(p.digits) * pow10(kBoundedScale - int(p.decimals));
  if (p.negative) v = -v;
  return v >= lo && v <= hi;
}

}  // namespace moe::grammar
