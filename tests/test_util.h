#pragma once
// Helpers shared by the tests: the fixture paths (copied into the repo from ../shared/fixtures), reference
// loading, and comparisons.
#include <nlohmann/json.hpp>

#include <cmath>
#include <fstream>
#include <string>
#include <vector>

#include "io/safetensors.h"

namespace moe::test {

inline const std::string kTinyModel = "models/tiny-dsv3";
inline const std::string kTinyModelFp8 = "models/tiny-dsv3-fp8";
inline const std::string kReferenceJson = "tests/data/tiny-dsv3/reference.json";
inline const std::string kReferenceTensors = "tests/data/tiny-dsv3/reference.safetensors";
// DeepSeek-V3.2 (sparse attention, index_topk 16): three prompts of 9, 40 and 110 tokens.
inline const std::string kTinyV32Model = "models/tiny-dsv32";
inline const std::string kV32ReferenceJson = "tests/data/tiny-dsv32/reference.json";
inline const std::string kV32ReferenceTensors = "tests/data/tiny-dsv32/reference.safetensors";

struct ReferenceCase {
  std::vector<int32_t> input_ids, greedy_continuation;
};

inline std::vector<ReferenceCase> load_reference_cases(const std::string& path = kReferenceJson) {
  std::ifstream in(path);
  const nlohmann::json j = nlohmann::json::parse(in);
  std::vector<ReferenceCase> out;
  for (const auto& c : j["cases"])
    out.push_back({c["input_ids"].get<std::vector<int32_t>>(), c["greedy_continuation"].get<std::vector<int32_t>>()});
  return out;
}

// max |a - b| over all elements.
inline double max_abs_diff(const float* a, const float* b, int64_t n) {
  double m = 0.0;
  for (int64_t i = 0; i < n; ++i) m = std::max(m, std::fabs(double(a[i]) - double(b[i])));
  return m;
}

inline std::string temp_path(const std::string& name) {
  return std::string(::testing::TempDir()) + "moe_" + std::to_string(::getpid()) + "_" + name;
}

}  // namespace moe::test
