#include "model/random_checkpoint.h"

#include <algorithm>
#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <vector>

#include "core/dtype.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "io/model_config.h"

namespace moe {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

// How a tensor is filled: uniform with standard deviation `stddev` around `mean`.
struct TensorSpec {
  std::string name;
  int64_t rows, cols;  // cols == 0: a vector
  DType dtype;         // F8_E4M3: with weight_scale_inv blocks; I32: INT4 pack-quantized (weight_packed ...)
  float mean, stddev;
  bool identity = false;  // plus 1 on the diagonal (the check model's eh_proj)
};

constexpr int64_t kInt4Group = 32;

// A file tensor of a spec: an FP8 weight is two (weight, weight_scale_inv), an INT4 one three (weight_packed,
// weight_scale, weight_shape).
struct Part {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  uint64_t bytes() const {
    uint64_t n = dtype_size(dtype);
    for (int64_t d : shape) n *= uint64_t(d);
    return n;
  }
};

std::vector<Part> parts_of(const TensorSpec& s) {
  if (s.dtype == DType::F8_E4M3)
    return {{s.name, s.dtype, {s.rows, s.cols}}, {s.name + "_scale_inv", DType::F32, {(s.rows + 127) / 128, (s.cols + 127) / 128}}};
  if (s.dtype == DType::I32) {
    const std::string base = s.name.substr(0, s.name.size() - std::string(".weight").size());
    return {{base + ".weight_packed", DType::I32, {s.rows, s.cols / 8}},
            {base + ".weight_scale", DType::BF16, {s.rows, s.cols / kInt4Group}},
            {base + ".weight_shape", DType::I64, {2}}};
  }
  return {{s.name, s.dtype, s.cols ? std::vector<int64_t>{s.rows, s.cols} : std::vector<int64_t>{s.rows}}};
}

// SplitMix64: a fast, well-mixed stream per (seed, tensor, chunk), so the output does not depend on threads.
inline uint64_t splitmix(uint64_t& s) {
  uint64_t z = (s += 0x9e3779b97f4a7c15ull);
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
  return z ^ (z >> 31);
}

void fill_uniform(std::vector<float>& v, uint64_t seed, float mean, float stddev) {
  const float half_width = stddev * std::sqrt(3.0f);
  const int64_t n = int64_t(v.size()), chunk = 1 << 16;
  ThreadPool::global().parallel_for((n + chunk - 1) / chunk, [&](int64_t b, int64_t e, int) {
    for (int64_t c = b; c < e; ++c) {
      uint64_t s = seed ^ (uint64_t(c) * 0x632be59bd9b4e019ull);
      for (int64_t i = c * chunk; i < std::min(n, (c + 1) * chunk); ++i) {
        const double u = double(splitmix(s) >> 11) * (1.0 / 9007199254740992.0);  // [0, 1)
        v[size_t(i)] = mean + half_width * float(2.0 * u - 1.0);
      }
    }
  });
}

std::vector<TensorSpec> tensor_specs(const ModelConfig& c, bool fp8, bool int4_experts, bool mtp_check) {
  std::vector<TensorSpec> specs;
  const DType proj = fp8 ? DType::F8_E4M3 : DType::BF16;
  auto matrix = [&](const std::string& name, int64_t rows, int64_t cols, DType dt = DType::BF16) {
    float stddev = 1.0f / std::sqrt(float(cols));
    // The check model: layers add next to nothing to the residual stream (see random_checkpoint.h).
    const auto ends = [&](std::string_view tail) { return name.ends_with(tail); };
    if (mtp_check && (ends("o_proj.weight") || ends("down_proj.weight"))) stddev *= kMtpCheckScale;
    specs.push_back({name, rows, cols, dt, 0.0f, stddev});
  };
  auto norm = [&](const std::string& name, int64_t n) { specs.push_back({name, n, 0, DType::BF16, 1.0f, 0.05f}); };
  auto mlp = [&](const std::string& p, int64_t inner, DType dt) {
    matrix(p + ".gate_proj.weight", inner, c.hidden_size, dt);
    matrix(p + ".up_proj.weight", inner, c.hidden_size, dt);
    matrix(p + ".down_proj.weight", c.hidden_size, inner, dt);
  };
  const int64_t D = c.hidden_size, H = c.num_attention_heads;
  auto layer = [&](int64_t i) {
    const std::string p = "model.layers." + std::to_string(i) + ".";
    norm(p + "input_layernorm.weight", D);
    norm(p + "post_attention_layernorm.weight", D);
    if (c.q_lora_rank > 0) {
      matrix(p + "self_attn.q_a_proj.weight", c.q_lora_rank, D, proj);
      norm(p + "self_attn.q_a_layernorm.weight", c.q_lora_rank);
      matrix(p + "self_attn.q_b_proj.weight", H * c.qk_head_dim(), c.q_lora_rank, proj);
    } else {
      matrix(p + "self_attn.q_proj.weight", H * c.qk_head_dim(), D, proj);
    }
    matrix(p + "self_attn.kv_a_proj_with_mqa.weight", c.cache_width(), D, proj);
    norm(p + "self_attn.kv_a_layernorm.weight", c.kv_lora_rank);
    matrix(p + "self_attn.kv_b_proj.weight", H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank, proj);
    matrix(p + "self_attn.o_proj.weight", D, H * c.v_head_dim, proj);
    if (c.indexer) {  // V3.2's lightning indexer (weights_proj stays BF16, as published)
      const IndexerConfig& ix = *c.indexer;
      matrix(p + "self_attn.indexer.wq_b.weight", ix.n_heads * ix.head_dim, c.q_lora_rank, proj);
      matrix(p + "self_attn.indexer.wk.weight", ix.head_dim, D, proj);
      norm(p + "self_attn.indexer.k_norm.weight", ix.head_dim);
      specs.push_back({p + "self_attn.indexer.k_norm.bias", ix.head_dim, 0, DType::BF16, 0.0f, 0.05f});
      matrix(p + "self_attn.indexer.weights_proj.weight", ix.n_heads, D);
    }
    if (!c.is_moe_layer(i) && i < c.num_hidden_layers) {
      mlp(p + "mlp", c.intermediate_size, proj);
      return;
    }
    matrix(p + "mlp.gate.weight", c.n_routed_experts, D);
    if (c.topk_method == TopkMethod::NoauxTc)
      specs.push_back({p + "mlp.gate.e_score_correction_bias", c.n_routed_experts, 0, DType::F32, 0.0f, 0.02f});
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      mlp(p + "mlp.experts." + std::to_string(e), c.moe_intermediate_size, int4_experts ? DType::I32 : proj);
    if (c.n_shared_experts > 0) mlp(p + "mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts, proj);
  };
  specs.push_back({"model.embed_tokens.weight", c.vocab_size, D, DType::BF16, 0.0f, 1.0f});
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) layer(i);
  norm("model.norm.weight", D);
  if (mtp_check) specs.back().stddev = 0.0f;  // exactly 1: the MTP head's norm is the same
  matrix("lm_head.weight", c.vocab_size, D);
  if (c.num_nextn_predict_layers > 0) {
    const int64_t L = c.num_hidden_layers;
    const std::string p = "model.layers." + std::to_string(L) + ".";
    layer(L);
    norm(p + "enorm.weight", D);
    if (mtp_check) specs.back().stddev = 0.0f;
    norm(p + "hnorm.weight", D);
    matrix(p + "eh_proj.weight", D, 2 * D, proj);
    if (mtp_check) {  // [I + noise, noise]: the embedding half through, the hidden half scaled down
      specs.back().stddev *= kMtpCheckScale;
      specs.back().identity = true;
    }
    norm(p + "shared_head.norm.weight", D);
    if (mtp_check) specs.back().stddev = 0.0f;
  }
  return specs;
}

// The bytes of each of the spec's parts (parts_of) from F32 values.
//   FP8: one scale per 128x128 block, max|w| / 448, rounded up to a power of two when pow2 (ue8m0).
//   INT4: per row and group of 32 inputs s = bf16(max|w| / 7), q = clamp(round(w / s), -8, 7), stored as q + 8 in
//   nibble k % 8 (low bits first) of word k / 8 (compressed-tensors' pack_to_int32; see backend.h's Weight).
void encode(const TensorSpec& s, const std::vector<float>& v, bool pow2, std::vector<std::vector<uint8_t>>& out) {
  const int64_t n = int64_t(v.size());
  const std::vector<Part> parts = parts_of(s);
  out.resize(parts.size());
  for (size_t i = 0; i < parts.size(); ++i) out[i].assign(size_t(parts[i].bytes()), 0);
  if (s.dtype == DType::F32) {
    std::memcpy(out[0].data(), v.data(), out[0].size());
  } else if (s.dtype == DType::BF16) {
    auto* o = reinterpret_cast<uint16_t*>(out[0].data());
    for (int64_t i = 0; i < n; ++i) o[i] = float_to_bf16(v[size_t(i)]);
  } else if (s.dtype == DType::I32) {
    const int64_t R = s.rows, C = s.cols, G = C / kInt4Group;
    auto* words = reinterpret_cast<uint32_t*>(out[0].data());
    auto* scales = reinterpret_cast<uint16_t*>(out[1].data());
    const int64_t shape[2] = {R, C};
    std::memcpy(out[2].data(), shape, sizeof shape);
    ThreadPool::global().parallel_for(R, [&](int64_t r0, int64_t r1, int) {
      for (int64_t r = r0; r < r1; ++r)
        for (int64_t g = 0; g < G; ++g) {
          const float* x = v.data() + r * C + g * kInt4Group;
          float amax = 0.0f;
          for (int64_t k = 0; k < kInt4Group; ++k) amax = std::max(amax, std::fabs(x[k]));
          const uint16_t sb = float_to_bf16(amax > 0 ? amax / 7.0f : 1.0f);
          const float scale = bf16_to_float(sb);
          scales[r * G + g] = sb;
          for (int64_t k = 0; k < kInt4Group; ++k) {
            const int q = int(std::clamp(std::nearbyint(x[k] / scale), -8.0f, 7.0f));
            const int64_t col = g * kInt4Group + k;
            words[r * (C / 8) + col / 8] |= uint32_t(q + 8) << (4 * (col % 8));
          }
        }
    });
  } else {
    const int64_t R = s.rows, C = s.cols, br = (R + 127) / 128, bc = (C + 127) / 128;
    auto* scales = reinterpret_cast<float*>(out[1].data());
    uint8_t* bytes = out[0].data();
    ThreadPool::global().parallel_for(br, [&](int64_t b0, int64_t b1, int) {
      for (int64_t bi = b0; bi < b1; ++bi)
        for (int64_t bj = 0; bj < bc; ++bj) {
          float amax = 0.0f;
          for (int64_t r = bi * 128; r < std::min(R, bi * 128 + 128); ++r)
            for (int64_t k = bj * 128; k < std::min(C, bj * 128 + 128); ++k) amax = std::max(amax, std::fabs(v[size_t(r * C + k)]));
          float scale = amax > 0 ? amax / kE4M3Max : 1.0f;
          if (pow2) scale = std::exp2(std::ceil(std::log2(scale)));
          scales[size_t(bi * bc + bj)] = scale;
          for (int64_t r = bi * 128; r < std::min(R, bi * 128 + 128); ++r)
            for (int64_t k = bj * 128; k < std::min(C, bj * 128 + 128); ++k)
              bytes[size_t(r * C + k)] = float_to_e4m3(v[size_t(r * C + k)] / scale);
        }
    });
  }
}

struct PendingTensor {
  std::string name;
  DType dtype;
  std::vector<int64_t> shape;
  std::function<void(std::ofstream&)> write;
  uint64_t bytes;
};

// `wrote(bytes)` after each tensor's data is written.
void write_shard(const std::string& path, const std::vector<PendingTensor>& tensors,
                 const std::function<void(uint64_t)>& wrote) {
  json header = json::object();
  header["__metadata__"] = {{"format", "pt"}};
  uint64_t offset = 0;
  for (const auto& t : tensors) {
    header[t.name] = {{"dtype", std::string(dtype_name(t.dtype))}, {"shape", t.shape}, {"data_offsets", {offset, offset + t.bytes}}};
    offset += t.bytes;
  }
  std::string text = header.dump();
  while ((text.size() + 8) % 8) text.push_back(' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  if (!out) fail("cannot write {}", path);
  const uint64_t len = text.size();
  out.write(reinterpret_cast<const char*>(&len), 8);
  out.write(text.data(), std::streamsize(text.size()));
  for (const auto& t : tensors) {
    t.write(out);
    wrote(t.bytes);
  }
  if (!out) fail("error writing {}", path);
}

uint64_t tensor_seed(uint64_t seed, const std::string& name) {
  return seed * 0x9e3779b97f4a7c15ull ^ std::hash<std::string>{}(name);
}

// The config.json the family implies (see RandomFamily); `fp8` may be forced on (V3.1).
void apply_family(json& cfg, RandomFamily f, bool& fp8) {
  auto set_default = [&](const char* key, int64_t v) {
    if (!cfg.contains(key) || cfg[key].is_null()) cfg[key] = v;
  };
  switch (f) {
    case RandomFamily::AsConfig: break;
    case RandomFamily::V3:
    case RandomFamily::V31:
      cfg["architectures"] = {"DeepseekV3ForCausalLM"};
      cfg["model_type"] = "deepseek_v3";
      if (f == RandomFamily::V31) fp8 = true;
      break;
    case RandomFamily::V32:
      cfg["architectures"] = {"DeepseekV32ForCausalLM"};
      cfg["model_type"] = "deepseek_v32";
      set_default("index_n_heads", 64);
      set_default("index_head_dim", 128);
      set_default("index_topk", 2048);
      break;
    case RandomFamily::KimiK2:
      cfg["architectures"] = {"DeepseekV3ForCausalLM"};
      cfg["model_type"] = "kimi_k2";
      break;
  }
  cfg.erase("quantization_config");
  if (fp8) {
    cfg["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                                  {"weight_block_size", {128, 128}}};
    if (f == RandomFamily::V31 || f == RandomFamily::V32) cfg["quantization_config"]["scale_fmt"] = "ue8m0";
  } else if (f == RandomFamily::KimiK2) {
    // Kimi-K2-Thinking's quantization_config: INT4 routed experts, everything the ignore list names in BF16.
    cfg["quantization_config"] = json::parse(R"({
      "config_groups": {"group_0": {"input_activations": null, "output_activations": null, "targets": ["Linear"],
        "weights": {"actorder": null, "block_structure": null, "dynamic": false, "group_size": 32, "num_bits": 4,
                    "observer": "minmax", "observer_kwargs": {}, "strategy": "group", "symmetric": true,
                    "type": "int"}}},
      "format": "pack-quantized",
      "ignore": ["lm_head", "re:.*self_attn.*", "re:.*shared_experts.*", "re:.*mlp\\.(gate|up|gate_up|down)_proj.*"],
      "kv_cache_scheme": null, "quant_method": "compressed-tensors", "quantization_status": "compressed"})");
  }
}

// The config.json create_random_checkpoint writes for `path` (a config.json or a directory holding one): FP8 per
// `fp8` (which a family may force on) or the family's own quantisation.
json random_config_json(const std::string& path, bool& fp8, RandomFamily family) {
  const std::string file = fs::is_directory(path) ? (fs::path(path) / "config.json").string() : path;
  std::ifstream in(file);
  if (!in) fail("cannot open {}", file);
  json cfg;
  try {
    cfg = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", file, e.what());
  }
  if (family == RandomFamily::AsConfig) {
    cfg.erase("quantization_config");
    if (fp8)
      cfg["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                                    {"weight_block_size", {128, 128}}};
  } else {
    apply_family(cfg, family, fp8);
  }
  return cfg;
}

}  // namespace

RandomFamily parse_random_family(const std::string& name) {
  if (name.empty() || name == "config") return RandomFamily::AsConfig;
  if (name == "v3") return RandomFamily::V3;
  if (name == "v31") return RandomFamily::V31;
  if (name == "v32") return RandomFamily::V32;
  if (name == "kimi-k2") return RandomFamily::KimiK2;
  fail("unknown model family '{}' (supported: v3, v31, v32, kimi-k2)", name);
}

ModelConfig random_checkpoint_config(const std::string& config_path, bool fp8) {
  bool with_fp8 = fp8;
  return ModelConfig::from_json(random_config_json(config_path, with_fp8, RandomFamily::AsConfig), config_path);
}

struct RandomTensors::Impl {
  std::map<std::string, TensorSpec> specs;                       // by tensor name
  std::map<std::string, std::pair<std::string, size_t>> part_of;  // file tensor name -> (spec, its part)
  uint64_t seed;
  bool pow2 = false;  // ue8m0 (V3.1): FP8 block scales rounded to powers of two, as the files hold them
  std::mutex mu;
  std::map<std::string, std::vector<std::vector<uint8_t>>> made;  // node-based: addresses stay put

  const std::vector<std::vector<uint8_t>>& make(const std::string& name) {
    std::lock_guard lock(mu);
    auto it = made.find(name);
    if (it != made.end()) return it->second;
    const TensorSpec& s = specs.at(name);
    std::vector<float> values(size_t(s.rows * std::max<int64_t>(s.cols, 1)));
    fill_uniform(values, tensor_seed(seed, s.name), s.mean, s.stddev);
    if (s.identity)
      for (int64_t r = 0; r < std::min(s.rows, s.cols); ++r) values[size_t(r * s.cols + r)] += 1.0f;
    auto& parts = made[name];
    encode(s, values, pow2, parts);
    return parts;
  }
};

RandomTensors::RandomTensors(const ModelConfig& config, bool fp8, uint64_t seed, std::string label)
    : impl_(std::make_unique<Impl>()), label_(std::move(label)) {
  impl_->seed = seed;
  impl_->pow2 = config.ue8m0_scales;
  for (auto& s : tensor_specs(config, fp8, config.packed_int.has_value(), /*mtp_check=*/false)) {
    const std::vector<Part> parts = parts_of(s);
    for (size_t i = 0; i < parts.size(); ++i) impl_->part_of[parts[i].name] = {s.name, i};
    impl_->specs.emplace(s.name, s);
  }
}

RandomTensors::~RandomTensors() = default;

bool RandomTensors::has(const std::string& name) const { return impl_->part_of.count(name) > 0; }

std::vector<std::string> RandomTensors::names() const {
  std::vector<std::string> out;
  for (const auto& [n, p] : impl_->part_of) out.push_back(n);
  return out;
}

std::optional<TensorView> RandomTensors::find(const std::string& name) const {
  auto it = impl_->part_of.find(name);
  if (it == impl_->part_of.end()) return std::nullopt;
  const auto& [spec_name, index] = it->second;
  const Part part = parts_of(impl_->specs.at(spec_name))[index];
  const auto& bytes = impl_->make(spec_name)[index];
  TensorView v;
  v.data = const_cast<uint8_t*>(bytes.data());
  v.dtype = part.dtype;
  v.shape.rank = int(part.shape.size());
  for (size_t d = 0; d < part.shape.size(); ++d) v.shape.dims[d] = part.shape[d];
  return v;
}

TensorView RandomTensors::get(const std::string& name, const Shape& expected) const {
  auto v = find(name);
  if (!v) fail("{}: no tensor '{}' for this config", label_, name);
  MOE_CHECK(v->shape == expected, "{}: tensor '{}' is {}, expected {}", label_, name, v->shape.str(), expected.str());
  return *v;
}

void create_random_checkpoint(const RandomCheckpointOptions& o) {
  bool fp8 = o.fp8;
  json cfg = random_config_json(o.config_path, fp8, o.family);
  const ModelConfig c = ModelConfig::from_json(cfg, o.config_path);
  const bool int4 = c.packed_int.has_value();
  if (int4 && c.packed_int->group_size != kInt4Group) fail("create-random writes INT4 with group size {}", kInt4Group);
  fs::create_directories(o.out_dir);
  {
    std::ofstream out(fs::path(o.out_dir) / "config.json");
    out << cfg.dump(2) << "\n";
  }
  if (o.mtp_check && c.num_nextn_predict_layers < 1)
    fail("{}: the MTP check model needs num_nextn_predict_layers >= 1 in the config", o.config_path);
  const auto specs = tensor_specs(c, fp8, int4, o.mtp_check);
  // Group tensors into shards by size; each tensor's values are made when its shard is written.
  std::vector<std::vector<const TensorSpec*>> shards(1);
  uint64_t in_shard = 0, total = 0, done = 0;  // total: tensor data bytes of all shards, for o.progress
  for (const auto& s : specs) {
    uint64_t bytes = 0;
    for (const Part& part : parts_of(s)) bytes += part.bytes();
    total += bytes;
    if (in_shard > 0 && in_shard + bytes > uint64_t(o.shard_bytes)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&s);
    in_shard += bytes;
  }
  const bool pow2 = c.ue8m0_scales;
  json weight_map = json::object();
  for (size_t si = 0; si < shards.size(); ++si) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", si + 1, shards.size());
    std::vector<PendingTensor> pending;
    for (const TensorSpec* s : shards[si]) {
      const uint64_t seed = tensor_seed(o.seed, s->name);
      auto parts = std::make_shared<std::vector<std::vector<uint8_t>>>();
      auto materialise = [=] {
        if (!parts->empty()) return;
        std::vector<float> values(size_t(s->rows * std::max<int64_t>(s->cols, 1)));
        fill_uniform(values, seed, s->mean, s->stddev);
        if (s->identity)
          for (int64_t r = 0; r < std::min(s->rows, s->cols); ++r) values[size_t(r * s->cols + r)] += 1.0f;
        encode(*s, values, pow2, *parts);
      };
      const std::vector<Part> layout = parts_of(*s);
      for (size_t i = 0; i < layout.size(); ++i) {
        pending.push_back({layout[i].name, layout[i].dtype, layout[i].shape, [=](std::ofstream& out) {
                             materialise();
                             auto& b = (*parts)[i];
                             out.write(reinterpret_cast<const char*>(b.data()), std::streamsize(b.size()));
                             b.clear(), b.shrink_to_fit();
                           }, layout[i].bytes()});
        weight_map[layout[i].name] = file;
      }
    }
    write_shard((fs::path(o.out_dir) / file).string(), pending, [&](uint64_t bytes) {
      done = std::min(done + bytes, total);
      if (o.progress) o.progress(done, total);
    });
  }
  if (shards.size() > 1) {
    std::ofstream out(fs::path(o.out_dir) / "model.safetensors.index.json");
    out << json{{"metadata", json::object()}, {"weight_map", weight_map}}.dump(2) << "\n";
  }
  if (o.progress && done < total) o.progress(total, total);
}

}  // namespace moe
