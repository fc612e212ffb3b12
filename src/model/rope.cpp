#include "model/rope.h"

#include <algorithm>
#include <cmath>

namespace moe {

double yarn_mscale(double s, double m) { return s <= 1.0 ? 1.0 : 0.1 * m * std::log(s) + 1.0; }

RopeParams make_rope_params(const ModelConfig& c) {
  const int64_t dr = c.qk_rope_head_dim;
  const double theta = c.rope_theta;
  RopeParams p;
  p.inv_freq.resize(size_t(dr / 2));
  for (int64_t i = 0; i < dr / 2; ++i) p.inv_freq[size_t(i)] = std::pow(theta, -2.0 * double(i) / double(dr));
  if (!c.yarn) return p;
  const YarnConfig& y = *c.yarn;
  const double s = y.factor, L0 = double(y.original_max_position_embeddings);
  // The dimension whose wavelength completes n rotations over the original context.
  auto correction_dim = [&](double n) { return double(dr) * std::log(L0 / (2.0 * M_PI * n)) / (2.0 * std::log(theta)); };
  const double lo = std::max(std::floor(correction_dim(y.beta_fast)), 0.0);
  double hi = std::min(std::ceil(correction_dim(y.beta_slow)), double(dr - 1));
  if (lo == hi) hi += 0.001;
  for (int64_t i = 0; i < dr / 2; ++i) {
    const double ramp = std::clamp((double(i) - lo) / (hi - lo), 0.0, 1.0);
    const double f = p.inv_freq[size_t(i)];
    p.inv_freq[size_t(i)] = (f / s) * ramp + f * (1.0 - ramp);
  }
  p.attn_factor = yarn_mscale(s, y.mscale) / yarn_mscale(s, y.mscale_all_dim);
  return p;
}

float attention_scale(const ModelConfig& c) {
  double scale = 1.0 / std::sqrt(double(c.qk_head_dim()));
  if (c.yarn) {
    const double m = yarn_mscale(c.yarn->factor, c.yarn->mscale_all_dim);
    scale *= m * m;
  }
  return float(scale);
}

}  // namespace moe
