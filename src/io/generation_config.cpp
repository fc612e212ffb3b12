#include "io/generation_config.h"

#include <nlohmann/json.hpp>

#include <cmath>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>

#include "core/error.h"

namespace moe {
namespace {

using nlohmann::json;

// A number key within [lo, hi] (lo excluded when open_lo); null or absent: unset.
std::optional<double> number(const json& j, const char* key, double lo, double hi, bool open_lo,
                             const char* expected, const std::string& source) {
  const auto it = j.find(key);
  if (it == j.end() || it->is_null()) return std::nullopt;
  if (!it->is_number())
    fail("{}: '{}' must be a number, not {}", source, key, it->type_name());
  const double v = it->get<double>();
  if (!std::isfinite(v) || v < lo || v > hi || (open_lo && v == lo))
    fail("{}: '{}' is {} (expected {})", source, key, it->dump(), expected);
  return v;
}

}  // namespace

GenerationDefaults parse_generation_config(std::string_view text, const std::string& source) {
  const json j = json::parse(text.begin(), text.end(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded()) fail("{}: not valid JSON", source);
  if (!j.is_object()) fail("{}: expected a JSON object, got {}", source, j.type_name());
  GenerationDefaults g;
  if (const auto it = j.find("do_sample"); it != j.end() && !it->is_null()) {
    if (!it->is_boolean()) fail("{}: 'do_sample' must be true or false, not {}", source, it->dump());
    g.do_sample = it->get<bool>();
  }
  const double inf = std::numeric_limits<double>::max();
  g.temperature = number(j, "temperature", 0, inf, false, "a number >= 0", source);
  g.top_p = number(j, "top_p", 0, 1, true, "a number in (0, 1]", source);
  g.min_p = number(j, "min_p", 0, 1, false, "a number in [0, 1]", source);
  g.repetition_penalty = number(j, "repetition_penalty", 0, inf, true, "a number > 0", source);
  if (const auto it = j.find("top_k"); it != j.end() && !it->is_null()) {
    if (!it->is_number_integer() || it->get<int64_t>() < 0 || it->get<int64_t>() > std::numeric_limits<int32_t>::max())
      fail("{}: 'top_k' must be a non-negative integer, not {}", source, it->dump());
    g.top_k = int32_t(it->get<int64_t>());
  }
  return g;
}

GenerationDefaults load_generation_config(const std::string& model_dir) {
  const std::filesystem::path path = std::filesystem::path(model_dir) / "generation_config.json";
  std::error_code ec;
  if (!std::filesystem::exists(path, ec)) return {};
  std::ifstream in(path, std::ios::binary);
  if (!in) fail("{}: cannot be read", path.string());
  std::ostringstream s;
  s << in.rdbuf();
  return parse_generation_config(s.str(), path.string());
}

}  // namespace moe
