#include "model/family.h"

#include <fmt/format.h>

namespace moe {

ModelFamily model_family(const ModelConfig& c) {
  if (c.architecture == "DeepseekV32ForCausalLM") return ModelFamily::V32;
  if (c.architecture == "DeepseekV2ForCausalLM") return ModelFamily::V2;
  if (c.model_type == "kimi_k2") return ModelFamily::KimiK2;
  if (c.ue8m0_scales) return ModelFamily::V31;
  if (c.vocab_size == 163840 && c.q_lora_rank == 0) return ModelFamily::Moonlight;
  if (c.n_routed_experts == 384) return ModelFamily::KimiK2;
  return ModelFamily::V3;
}

const char* family_name(ModelFamily f) {
  switch (f) {
    case ModelFamily::V3: return "DeepSeek-V3/R1";
    case ModelFamily::V31: return "DeepSeek-V3.1";
    case ModelFamily::V32: return "DeepSeek-V3.2";
    case ModelFamily::KimiK2: return "Kimi-K2";
    case ModelFamily::Moonlight: return "Moonlight";
    case ModelFamily::V2: return "DeepSeek-V2-shaped";
  }
  return "?";
}

std::string attention_summary(const ModelConfig& c) {
  if (c.sparse_attention())
    return fmt::format("sparse (DSA: lightning indexer, top {} cached positions per query)", c.indexer->topk);
  return "dense MLA";
}

std::string weight_format_summary(const ModelConfig& c) {
  if (c.packed_int)
    return fmt::format("routed experts INT{} (W{}A16, group {}, compressed-tensors pack-quantized), the rest BF16",
                       c.packed_int->num_bits, c.packed_int->num_bits, c.packed_int->group_size);
  if (c.fp8_block_rows)
    return fmt::format("FP8 e4m3, {}x{} blocks, {} scales", c.fp8_block_rows, c.fp8_block_cols,
                       c.ue8m0_scales ? "ue8m0 (powers of two)" : "F32");
  return "BF16/F32";
}

}  // namespace moe
