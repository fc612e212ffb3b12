#include "cli/default_model.h"

#include <filesystem>

#include "core/error.h"

#ifndef MOE_SOURCE_DIR
#define MOE_SOURCE_DIR ""
#endif

namespace fs = std::filesystem;

namespace moe::cli {

std::vector<std::string> default_model_candidates(const std::string& source_dir) {
  std::vector<std::string> c = {kDefaultModel};
  if (!source_dir.empty()) {
    const fs::path p = fs::path(source_dir) / kDefaultModel;
    std::error_code ec;
    if (!fs::equivalent(p, kDefaultModel, ec)) c.push_back(p.string());
  }
  return c;
}

std::string resolve_model(const std::string& model, const std::vector<std::string>& candidates) {
  if (!model.empty()) return model;
  std::string looked;
  for (const std::string& dir : candidates) {
    const fs::path p(dir);
    std::string why;
    if (!fs::is_directory(p))
      why = "no such directory";
    else if (!fs::exists(p / "config.json"))
      why = "no config.json";
    else if (!fs::exists(p / "model.safetensors") && !fs::exists(p / "model.safetensors.index.json"))
      why = "no weights (model.safetensors or model.safetensors.index.json)";
    else
      return dir;
    looked += "\n  " + dir + ": " + why;
  }
  fail("no --model given, and the default model {} is not usable; looked at:{}\nPass --model DIR, or run from a "
       "checkout of the repository, whose {} holds the trained model (scripts/train/default_model.sh trains it; "
       "docs/training.md, \"The default model\")",
       kDefaultModel, looked, kDefaultModel);
}

std::string resolve_model(const std::string& model) {
  return resolve_model(model, default_model_candidates(MOE_SOURCE_DIR));
}

}  // namespace moe::cli
