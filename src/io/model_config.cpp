#include "io/model_config.h"

#include <cmath>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

#include "core/error.h"

namespace moe {

using json = nlohmann::json;

namespace {

// Reads an integer field; `required` fields must be present and positive where noted.
int64_t get_int(const json& j, const char* key, const std::string& src, std::optional<int64_t> fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail("{}: missing required field '{}'", src, key);
  }
  if (!it->is_number_integer()) fail("{}: field '{}' must be an integer", src, key);
  return it->get<int64_t>();
}

double get_double(const json& j, const char* key, const std::string& src, std::optional<double> fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) {
    if (fallback) return *fallback;
    fail("{}: missing required field '{}'", src, key);
  }
  if (!it->is_number()) fail("{}: field '{}' must be a number", src, key);
  return it->get<double>();
}

bool get_bool(const json& j, const char* key, const std::string& src, bool fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_boolean()) fail("{}: field '{}' must be true or false", src, key);
  return it->get<bool>();
}

std::string get_string(const json& j, const char* key, const std::string& src, const std::string& fallback) {
  auto it = j.find(key);
  if (it == j.end() || it->is_null()) return fallback;
  if (!it->is_string()) fail("{}: field '{}' must be a string", src, key);
  return it->get<std::string>();
}

}  // namespace

ModelConfig ModelConfig::from_json(const json& j, const std::string& src) {
  if (!j.is_object()) fail("{}: config is not a JSON object", src);
  ModelConfig c;
  if (auto a = j.find("architectures"); a != j.end() && a->is_array() && !a->empty() && (*a)[0].is_string())
    c.architecture = (*a)[0].get<std::string>();
  const std::string model_type = get_string(j, "model_type", src, "");
  if (c.architecture.empty()) {
    if (model_type == "deepseek_v3") c.architecture = "DeepseekV3ForCausalLM";
    if (model_type == "deepseek_v32") c.architecture = "DeepseekV32ForCausalLM";
    if (model_type == "deepseek_v2") c.architecture = "DeepseekV2ForCausalLM";
  }
  if (c.architecture != "DeepseekV3ForCausalLM" && c.architecture != "DeepseekV32ForCausalLM" &&
      c.architecture != "DeepseekV2ForCausalLM")
    fail("{}: unknown architecture '{}' (supported: DeepseekV3ForCausalLM, DeepseekV32ForCausalLM, "
         "DeepseekV2ForCausalLM)",
         src, c.architecture.empty() ? model_type : c.architecture);
  const bool v32 = c.architecture == "DeepseekV32ForCausalLM";
  const bool v3 = c.architecture == "DeepseekV3ForCausalLM" || v32;

  c.vocab_size = get_int(j, "vocab_size", src, std::nullopt);
  c.hidden_size = get_int(j, "hidden_size", src, std::nullopt);
  c.intermediate_size = get_int(j, "intermediate_size", src, std::nullopt);
  c.num_hidden_layers = get_int(j, "num_hidden_layers", src, std::nullopt);
  c.num_attention_heads = get_int(j, "num_attention_heads", src, std::nullopt);
  c.q_lora_rank = get_int(j, "q_lora_rank", src, int64_t(0));
  c.kv_lora_rank = get_int(j, "kv_lora_rank", src, std::nullopt);
  c.qk_nope_head_dim = get_int(j, "qk_nope_head_dim", src, std::nullopt);
  c.qk_rope_head_dim = get_int(j, "qk_rope_head_dim", src, std::nullopt);
  c.v_head_dim = get_int(j, "v_head_dim", src, std::nullopt);
  c.n_routed_experts = get_int(j, "n_routed_experts", src, int64_t(0));
  c.n_shared_experts = get_int(j, "n_shared_experts", src, int64_t(0));
  c.num_experts_per_tok = get_int(j, "num_experts_per_tok", src, int64_t(0));
  c.moe_intermediate_size = get_int(j, "moe_intermediate_size", src, c.n_routed_experts ? std::nullopt : std::optional<int64_t>(0));
  c.n_group = get_int(j, "n_group", src, int64_t(1));
  c.topk_group = get_int(j, "topk_group", src, int64_t(1));
  c.first_k_dense_replace = get_int(j, "first_k_dense_replace", src, int64_t(0));
  c.moe_layer_freq = get_int(j, "moe_layer_freq", src, int64_t(1));
  c.norm_topk_prob = get_bool(j, "norm_topk_prob", src, false);
  c.routed_scaling_factor = get_double(j, "routed_scaling_factor", src, 1.0);
  c.rms_norm_eps = get_double(j, "rms_norm_eps", src, 1e-6);
  c.rope_theta = get_double(j, "rope_theta", src, 10000.0);
  c.max_position_embeddings = get_int(j, "max_position_embeddings", src, int64_t(4096));
  c.num_nextn_predict_layers = get_int(j, "num_nextn_predict_layers", src, int64_t(0));
  c.tie_word_embeddings = get_bool(j, "tie_word_embeddings", src, false);
  if (auto b = j.find("bos_token_id"); b != j.end() && b->is_number_integer()) c.bos_token_id = b->get<int64_t>();
  if (auto e = j.find("eos_token_id"); e != j.end() && e->is_number_integer()) c.eos_token_id = e->get<int64_t>();

  const std::string scoring = get_string(j, "scoring_func", src, v3 ? "sigmoid" : "softmax");
  if (scoring == "sigmoid") c.scoring_func = ScoringFunc::Sigmoid;
  else if (scoring == "softmax") c.scoring_func = ScoringFunc::Softmax;
  else fail("{}: unknown scoring_func '{}' (supported: sigmoid, softmax)", src, scoring);
  const std::string method = get_string(j, "topk_method", src, v3 ? "noaux_tc" : "greedy");
  if (method == "noaux_tc") c.topk_method = TopkMethod::NoauxTc;
  else if (method == "greedy") c.topk_method = TopkMethod::Greedy;
  else if (method == "group_limited_greedy") c.topk_method = TopkMethod::GroupLimitedGreedy;
  else fail("{}: unknown topk_method '{}' (supported: noaux_tc, greedy, group_limited_greedy)", src, method);

  if (auto rs = j.find("rope_scaling"); rs != j.end() && rs->is_object()) {
    const std::string type = get_string(*rs, "type", src, get_string(*rs, "rope_type", src, ""));
    if (type == "yarn") {
      YarnConfig y;
      y.factor = get_double(*rs, "factor", src, std::nullopt);
      y.original_max_position_embeddings = get_int(*rs, "original_max_position_embeddings", src, int64_t(4096));
      y.beta_fast = get_double(*rs, "beta_fast", src, 32.0);
      y.beta_slow = get_double(*rs, "beta_slow", src, 1.0);
      y.mscale = get_double(*rs, "mscale", src, 1.0);
      y.mscale_all_dim = get_double(*rs, "mscale_all_dim", src, 0.0);
      c.yarn = y;
    } else if (!type.empty() && type != "default") {
      fail("{}: unsupported rope_scaling type '{}' (supported: yarn)", src, type);
    }
  }
  if (auto q = j.find("quantization_config"); q != j.end() && !q->is_null()) c.parse_quantization(*q, src);
  c.model_type = model_type;

  // Sanity: the sizes the forward pass relies on.
  auto positive = [&](int64_t v, const char* name) {
    if (v <= 0) fail("{}: '{}' must be positive, got {}", src, name, v);
  };
  positive(c.vocab_size, "vocab_size");
  positive(c.hidden_size, "hidden_size");
  positive(c.num_hidden_layers, "num_hidden_layers");
  positive(c.num_attention_heads, "num_attention_heads");
  positive(c.kv_lora_rank, "kv_lora_rank");
  positive(c.qk_rope_head_dim, "qk_rope_head_dim");
  positive(c.v_head_dim, "v_head_dim");
  if (c.qk_rope_head_dim % 2) fail("{}: qk_rope_head_dim must be even", src);
  positive(c.max_position_embeddings, "max_position_embeddings");
  // The values the maths divides by or takes a logarithm or root of: out of range they load silently and make
  // every logit NaN (rope_theta 0 or 1: log(theta) divides; rms_norm_eps <= 0: 1/sqrt(0) or of a negative; YaRN
  // factor 0: frequencies divided by it; a negative mscale can make the attention factor's divisor 0).
  auto finite = [&](double v, const char* name, bool ok, const char* rule) {
    if (!std::isfinite(v) || !ok) fail("{}: '{}' must be {}, got {}", src, name, rule, v);
  };
  finite(c.rope_theta, "rope_theta", c.rope_theta > 1, "a number > 1");
  finite(c.rms_norm_eps, "rms_norm_eps", c.rms_norm_eps > 0, "a number > 0");
  finite(c.routed_scaling_factor, "routed_scaling_factor", c.routed_scaling_factor > 0, "a number > 0");
  if (c.yarn) {
    const YarnConfig& y = *c.yarn;
    finite(y.factor, "rope_scaling.factor", y.factor > 0, "a number > 0");
    if (y.original_max_position_embeddings <= 0)
      fail("{}: 'rope_scaling.original_max_position_embeddings' must be positive, got {}", src,
           y.original_max_position_embeddings);
    finite(y.beta_fast, "rope_scaling.beta_fast", y.beta_fast > 0, "a number > 0");
    finite(y.beta_slow, "rope_scaling.beta_slow", y.beta_slow > 0, "a number > 0");
    finite(y.mscale, "rope_scaling.mscale", y.mscale >= 0, "a number >= 0");
    finite(y.mscale_all_dim, "rope_scaling.mscale_all_dim", y.mscale_all_dim >= 0, "a number >= 0");
  }
  if (c.q_lora_rank < 0 || c.qk_nope_head_dim < 0) fail("{}: negative q_lora_rank or qk_nope_head_dim", src);
  if (c.n_routed_experts > 0) {
    positive(c.num_experts_per_tok, "num_experts_per_tok");
    positive(c.moe_intermediate_size, "moe_intermediate_size");
    positive(c.n_group, "n_group");
    positive(c.moe_layer_freq, "moe_layer_freq");
    if (c.n_routed_experts % c.n_group) fail("{}: n_routed_experts must be divisible by n_group", src);
    if (c.topk_group > c.n_group || c.topk_group <= 0) fail("{}: topk_group must be in [1, n_group]", src);
    if (c.num_experts_per_tok > c.n_routed_experts) fail("{}: num_experts_per_tok exceeds n_routed_experts", src);
    const int64_t per_group = c.n_routed_experts / c.n_group;
    if (c.topk_method == TopkMethod::NoauxTc && per_group < 2)
      fail("{}: noaux_tc routing needs at least two experts per group", src);
    if (c.num_experts_per_tok > c.topk_group * per_group && c.topk_method != TopkMethod::Greedy)
      fail("{}: num_experts_per_tok exceeds the experts in topk_group groups", src);
  }
  if (c.packed_int) {
    // The routed experts' input dims must be whole groups: the hidden size (gate/up) and moe_intermediate_size
    // (down). Every quantised tensor is checked again at load time, naming it.
    const int64_t g = c.packed_int->group_size;
    for (auto [v, name] : {std::pair<int64_t, const char*>{c.hidden_size, "hidden_size"},
                           std::pair<int64_t, const char*>{c.moe_intermediate_size, "moe_intermediate_size"}})
      if (v > 0 && v % g)
        fail("{}: quantization_config group_size {} does not divide {} ({})", src, g, name, v);
  }
  if (v32) {
    // The indexer's fields have no defaults here: a V3.2 config without them is not one we can run exactly.
    IndexerConfig ix;
    ix.n_heads = get_int(j, "index_n_heads", src, std::nullopt);
    ix.head_dim = get_int(j, "index_head_dim", src, std::nullopt);
    ix.topk = get_int(j, "index_topk", src, std::nullopt);
    positive(ix.n_heads, "index_n_heads");
    positive(ix.head_dim, "index_head_dim");
    positive(ix.topk, "index_topk");
    if (ix.head_dim < c.qk_rope_head_dim)
      fail("{}: index_head_dim ({}) must be at least qk_rope_head_dim ({}): the indexer's rope covers its first "
           "qk_rope_head_dim dimensions", src, ix.head_dim, c.qk_rope_head_dim);
    if (c.q_lora_rank <= 0)
      fail("{}: DeepseekV32ForCausalLM needs q_lora_rank > 0 (the indexer's queries come from the query latent)", src);
    c.indexer = ix;
  }
  return c;
}

ModelConfig ModelConfig::load(const std::string& model_dir) {
  const std::string path = (std::filesystem::path(model_dir) / "config.json").string();
  std::ifstream in(path);
  if (!in) fail("cannot open {}", path);
  json j;
  try {
    j = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  return from_json(j, path);
}

}  // namespace moe
