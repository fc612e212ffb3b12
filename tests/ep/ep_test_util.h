#pragma once
// Helpers shared by the expert-parallel tests (test_ep, test_ep_cli).
#include <algorithm>
#include <cmath>
#include <string>
#include <vector>

#include "core/error.h"
#include "io/model_config.h"

namespace moe::test {

// Which layer indices hold routed experts, the MTP layer (index num_hidden_layers) included: what
// ExpertPlacement::initial takes.
inline std::vector<bool> moe_layers(const ModelConfig& c) {
  std::vector<bool> out;
  for (int64_t i = 0; i <= c.num_hidden_layers; ++i)
    out.push_back(i == c.num_hidden_layers || c.is_moe_layer(i));
  return out;
}

// max |a - b| / max |b| over b's elements (a at least as long).
inline double max_rel_diff(const std::vector<float>& a, const std::vector<float>& b) {
  double scale = 0, diff = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    scale = std::max(scale, std::fabs(double(b[i])));
    diff = std::max(diff, std::fabs(double(a[i]) - double(b[i])));
  }
  return diff / scale;
}

// The message of the moe::Error that fn throws ("no error" if none).
template <typename Fn>
std::string error_of(Fn fn) {
  try {
    fn();
  } catch (const Error& e) {
    return e.what();
  }
  return "no error";
}

}  // namespace moe::test
