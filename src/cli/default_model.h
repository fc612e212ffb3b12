#pragma once
// The model `moe generate`, `moe chat` and `moe serve` load when --model is absent: the project's own small
// model, committed under models/moe-tiny (trained by scripts/train/default_model.sh; card: its README.md).
#include <string>
#include <vector>

namespace moe::cli {

inline constexpr const char* kDefaultModel = "models/moe-tiny";

// Where the default model is looked for, in order: models/moe-tiny under the working directory, then under
// `source_dir` (the source tree this binary was built from, fixed at compile time) when that differs.
std::vector<std::string> default_model_candidates(const std::string& source_dir);

// `model` when it is not empty; else the first candidate that holds config.json and weights
// (model.safetensors or model.safetensors.index.json). Otherwise throws moe::Error naming every place looked
// at, what was missing there, and how to get the model (or to pass --model).
std::string resolve_model(const std::string& model, const std::vector<std::string>& candidates);

// resolve_model with default_model_candidates of the build's source tree.
std::string resolve_model(const std::string& model);

}  // namespace moe::cli
