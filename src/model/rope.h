#pragma once
// Rotary embedding frequencies with YaRN (rope_scaling.type == "yarn"), and MLA's softmax scale.
#include "backend/backend.h"
#include "io/model_config.h"

namespace moe {

// f_i for i < qk_rope_head_dim / 2, and the factor YaRN puts on cos and sin.
RopeParams make_rope_params(const ModelConfig& config);
// (qk_nope + qk_rope)^-0.5, times mscale(factor, mscale_all_dim)^2 when YaRN is on.
float attention_scale(const ModelConfig& config);
// YaRN's magnitude correction: 1 for s <= 1, else 0.1 * m * ln(s) + 1.
double yarn_mscale(double s, double m);

}  // namespace moe
