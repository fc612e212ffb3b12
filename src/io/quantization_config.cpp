// config.json's quantization_config, the two schemes the DeepSeek-V3 family publishes:
//   quant_method "fp8" (V3, R1, V3.1, V3.2): E4M3 weights with F32 weight_scale_inv per weight_block_size block;
//       scale_fmt "ue8m0" (V3.1, V3.2) says the scales are powers of two (absent or null: any F32).
//   quant_method "compressed-tensors", format "pack-quantized" (Kimi-K2-Thinking): weight-only symmetric integers
//       in groups along the input dim, one config group of weights {type int, num_bits, group_size, strategy
//       group, symmetric true}, no activation quantisation.
#include <nlohmann/json.hpp>

#include "core/error.h"
#include "io/model_config.h"

namespace moe {

using json = nlohmann::json;

namespace {

std::string str_field(const json& j, const char* key, const std::string& where, const std::string& src,
                      const std::string& fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) fail("{}: {}.{} must be a string", src, where, key);
  return it->get<std::string>();
}

void parse_fp8(const json& q, const std::string& src, ModelConfig& c) {
  auto bs = q.find("weight_block_size");
  if (bs == q.end() || !bs->is_array() || bs->size() != 2 || !(*bs)[0].is_number_integer() ||
      !(*bs)[1].is_number_integer())
    fail("{}: quantization_config.weight_block_size must be two integers", src);
  c.fp8_block_rows = (*bs)[0].get<int64_t>();
  c.fp8_block_cols = (*bs)[1].get<int64_t>();
  if (c.fp8_block_rows <= 0 || c.fp8_block_cols <= 0) fail("{}: weight_block_size must be positive", src);
  const std::string fmt = str_field(q, "fmt", "quantization_config", src, "e4m3");
  if (fmt != "e4m3") fail("{}: unsupported quantization_config.fmt '{}' (supported: e4m3)", src, fmt);
  const std::string scale_fmt = str_field(q, "scale_fmt", "quantization_config", src, "");
  if (scale_fmt == "ue8m0") c.ue8m0_scales = true;
  else if (!scale_fmt.empty())
    fail("{}: unsupported quantization_config.scale_fmt '{}' (supported: ue8m0, or absent for F32 scales)", src,
         scale_fmt);
}

void parse_pack_quantized(const json& q, const std::string& src, ModelConfig& c) {
  const std::string format = str_field(q, "format", "quantization_config", src, "");
  if (format != "pack-quantized")
    fail("{}: unsupported quantization_config.format '{}' for compressed-tensors (supported: pack-quantized)", src,
         format);
  auto groups = q.find("config_groups");
  if (groups == q.end() || !groups->is_object() || groups->empty())
    fail("{}: quantization_config.config_groups must be a non-empty object", src);
  if (groups->size() != 1)
    fail("{}: quantization_config.config_groups has {} groups; only one weight scheme is supported", src,
         groups->size());
  const std::string gname = groups->begin().key();
  const json& g = groups->begin().value();
  const std::string where = "quantization_config.config_groups." + gname;
  if (!g.is_object()) fail("{}: {} must be an object", src, where);
  if (auto a = g.find("input_activations"); a != g.end() && !a->is_null())
    fail("{}: {}.input_activations is set; only weight-only quantisation (W4A16) is supported", src, where);
  auto w = g.find("weights");
  if (w == g.end() || !w->is_object()) fail("{}: {}.weights must be an object", src, where);
  const std::string wh = where + ".weights";
  auto integer = [&](const char* key) {
    auto it = w->find(key);
    if (it == w->end() || !it->is_number_integer()) fail("{}: {}.{} must be an integer", src, wh, key);
    return it->get<int64_t>();
  };
  const std::string type = str_field(*w, "type", wh, src, "int");
  if (type != "int") fail("{}: unsupported {}.type '{}' (supported: int)", src, wh, type);
  PackedIntConfig p;
  p.num_bits = integer("num_bits");
  if (p.num_bits != 4) fail("{}: unsupported {}.num_bits {} (supported: 4)", src, wh, p.num_bits);
  const std::string strategy = str_field(*w, "strategy", wh, src, "");
  if (strategy != "group") fail("{}: unsupported {}.strategy '{}' (supported: group)", src, wh, strategy);
  p.group_size = integer("group_size");
  if (p.group_size != 32 && p.group_size != 64 && p.group_size != 128)
    fail("{}: unsupported {}.group_size {} (supported: 32, 64, 128)", src, wh, p.group_size);
  auto sym = w->find("symmetric");
  if (sym == w->end() || !sym->is_boolean() || !sym->get<bool>())
    fail("{}: {}.symmetric must be true (asymmetric zero points are not supported)", src, wh);
  if (auto d = w->find("dynamic"); d != w->end() && d->is_boolean() && d->get<bool>())
    fail("{}: {}.dynamic must be false for stored weights", src, wh);
  c.packed_int = p;
}

}  // namespace

void ModelConfig::parse_quantization(const json& q, const std::string& src) {
  if (!q.is_object()) fail("{}: quantization_config must be an object", src);
  const std::string method = str_field(q, "quant_method", "quantization_config", src, "fp8");
  if (method == "fp8") parse_fp8(q, src, *this);
  else if (method == "compressed-tensors") parse_pack_quantized(q, src, *this);
  else
    fail("{}: unsupported quantization_config.quant_method '{}' (supported: fp8, compressed-tensors)", src, method);
}

}  // namespace moe
