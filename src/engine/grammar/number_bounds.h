#pragma once
// Exact bounds (minimum, maximum, exclusiveMinimum, exclusiveMaximum) on JSON numbers and integers.
//
// A bounded `number` is generated as `-?(0|[1-9][0-9]*)(\.[0-9]+)?` (no exponent) with at most 15 significant
// digits (those after the first non-zero digit) and at most 15 decimals, so every value is an integer number of
// units of 10^-15 below 10^30 in magnitude, and bounds are compared exactly on that grid:
// - a bound is read exactly: a JSON integer as it is, a double as its shortest round-trip decimal (std::to_chars),
//   then rounded to the grid (ceil for minimum, floor for maximum, the next grid point for exclusive ones);
// - a value with at most 15 significant digits round-trips through a double, and two different such values never
//   round to the same double, so the exact decimal comparison is also what a validator comparing doubles (Ajv,
//   or any that parses JSON numbers into doubles) decides: a generated value never fails either kind.
// The matcher checks every prefix with number_feasible(): the prefix's possible completions are a few grids of
// magnitudes (one per count of further integer digits), and one grid point must lie within the bounds, so the
// automaton never enters a dead end and never ends on a value outside them.
#include <nlohmann/json.hpp>

#include <cstdint>

namespace moe::grammar {

using Wide = __int128;

inline constexpr int kBoundedDigits = 15;    // significant digits of a bounded number
inline constexpr int kBoundedDecimals = 15;  // digits after the point; the grid unit is 10^-15
inline constexpr int kBoundedScale = 15;

// The bound keyword's value (a JSON number) times 10^scale, rounded up or down to an integer, exactly; clamped to
// +-10^32 (beyond every value generated at scale 15). Throws moe::Error when `v` is not a number.
Wide scaled_bound(const nlohmann::json& v, int scale, bool round_up);

// Where a bounded number's text stands (the matcher's frame holds these fields).
struct DecimalPrefix {
  uint8_t phase = 0;  // 0 start, 1 after '-', 2 integer digits, 3 after a leading 0, 4 after '.', 5 decimals
  bool negative = false;
  uint64_t digits = 0;  // every digit written, as an integer (leading zeros vanish)
  uint32_t significant = 0;  // digits written from the first non-zero one on
  uint32_t decimals = 0;     // digits after the point
};

// Some completion of the prefix (including itself when it may end) lies in [lo, hi] (units of 10^-15).
bool number_feasible(const DecimalPrefix& p, Wide lo, Wide hi);
// The prefix is a whole number (phase 2, 3 or 5) within [lo, hi].
bool number_complete(const DecimalPrefix& p, Wide lo, Wide hi);
// The prefix after byte b, or false when the format (digits and decimals limits included) does not allow b.
// Bounds are not checked here.
bool number_step(DecimalPrefix& p, uint8_t b);

}  // namespace moe::grammar
