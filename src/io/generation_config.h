#pragma once
// A checkpoint's generation_config.json (the Hugging Face file beside config.json): the sampling defaults its
// authors recommend, e.g. DeepSeek-V3's {"do_sample": true, "temperature": 0.6, "top_p": 0.95}. The engine uses
// them where a request or the command line leaves a parameter out, as vLLM and SGLang do (docs/server.md,
// "Sampling defaults"). Only the sampling keys are read; HF's other keys (token ids, max_length, ...) are
// ignored, since config.json and the tokenizer already define them.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

namespace moe {

struct GenerationDefaults {
  // HF semantics: do_sample false means greedy decoding whatever temperature says; absent keys stay unset.
  std::optional<bool> do_sample;
  std::optional<double> temperature, top_p, min_p, repetition_penalty;
  std::optional<int32_t> top_k;
  bool empty() const {
    return !do_sample && !temperature && !top_p && !min_p && !repetition_penalty && !top_k;
  }
};

// Parses the file's text; `source` names it in errors. Throws moe::Error naming the source and the key for a
// file that is not a JSON object or a sampling key of the wrong type or out of range (temperature >= 0,
// 0 < top_p <= 1, 0 <= min_p <= 1, repetition_penalty > 0, top_k >= 0; null is treated as absent).
GenerationDefaults parse_generation_config(std::string_view text, const std::string& source);
// dir/generation_config.json, or no defaults when the file does not exist.
GenerationDefaults load_generation_config(const std::string& model_dir);

}  // namespace moe
