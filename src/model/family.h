#pragma once
// Which published member of the DeepSeek-V3 family a checkpoint is, and what it uses, for `moe info`. Nothing
// computes with this: the forward pass reads the config's fields themselves.
#include <string>

#include "io/model_config.h"

namespace moe {

enum class ModelFamily { V3, V31, V32, KimiK2, Moonlight, V2 };

// By architecture, then model_type and shape: DeepseekV32ForCausalLM is V3.2; DeepseekV2ForCausalLM V2-shaped;
// of DeepseekV3ForCausalLM, model_type kimi_k2 is Kimi-K2, ue8m0 FP8 scales are V3.1, Moonshot's 163840-token
// vocabulary without q compression is Moonlight, 384 routed experts (a config without kimi_k2) Kimi-K2, the
// rest V3/R1.
ModelFamily model_family(const ModelConfig& c);
const char* family_name(ModelFamily f);  // "DeepSeek-V3/R1", "DeepSeek-V3.1", ...

// One line each: attention (dense MLA or DSA), scale format, weight format.
std::string attention_summary(const ModelConfig& c);
std::string weight_format_summary(const ModelConfig& c);

}  // namespace moe
