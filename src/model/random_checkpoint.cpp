#include "model/random_checkpoint.h"

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
  DType dtype;
  float mean, stddev;
  bool identity = false;  // plus 1 on the diagonal (the check model's eh_proj)
};

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

std::vector<TensorSpec> tensor_specs(const ModelConfig& c, bool fp8, bool mtp_check) {
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
  auto mlp = [&](const std::string& p, int64_t inner) {
    matrix(p + ".gate_proj.weight", inner, c.hidden_size, proj);
    matrix(p + ".up_proj.weight", inner, c.hidden_size, proj);
    matrix(p + ".down_proj.weight", c.hidden_size, inner, proj);
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
    if (!c.is_moe_layer(i) && i < c.num_hidden_layers) {
      mlp(p + "mlp", c.intermediate_size);
      return;
    }
    matrix(p + "mlp.gate.weight", c.n_routed_experts, D);
    if (c.topk_method == TopkMethod::NoauxTc)
      specs.push_back({p + "mlp.gate.e_score_correction_bias", c.n_routed_experts, 0, DType::F32, 0.0f, 0.02f});
    for (int64_t e = 0; e < c.n_routed_experts; ++e) mlp(p + "mlp.experts." + std::to_string(e), c.moe_intermediate_size);
    if (c.n_shared_experts > 0) mlp(p + "mlp.shared_experts", c.moe_intermediate_size * c.n_shared_experts);
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

// The bytes of one tensor (and, for FP8, of its scale_inv) from F32 values.
void encode(const TensorSpec& s, const std::vector<float>& v, std::vector<uint8_t>& bytes, std::vector<float>& scales) {
  const int64_t n = int64_t(v.size());
  if (s.dtype == DType::F32) {
    bytes.resize(size_t(n) * 4);
    std::memcpy(bytes.data(), v.data(), bytes.size());
  } else if (s.dtype == DType::BF16) {
    bytes.resize(size_t(n) * 2);
    auto* out = reinterpret_cast<uint16_t*>(bytes.data());
    for (int64_t i = 0; i < n; ++i) out[i] = float_to_bf16(v[size_t(i)]);
  } else {  // FP8 with one scale per 128x128 block: scale = max|w| / 448
    const int64_t R = s.rows, C = s.cols, br = (R + 127) / 128, bc = (C + 127) / 128;
    scales.assign(size_t(br * bc), 0.0f);
    bytes.resize(size_t(n));
    ThreadPool::global().parallel_for(br, [&](int64_t b0, int64_t b1, int) {
      for (int64_t bi = b0; bi < b1; ++bi)
        for (int64_t bj = 0; bj < bc; ++bj) {
          float amax = 0.0f;
          for (int64_t r = bi * 128; r < std::min(R, bi * 128 + 128); ++r)
            for (int64_t k = bj * 128; k < std::min(C, bj * 128 + 128); ++k) amax = std::max(amax, std::fabs(v[size_t(r * C + k)]));
          const float scale = amax > 0 ? amax / kE4M3Max : 1.0f;
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

}  // namespace

void create_random_checkpoint(const RandomCheckpointOptions& o) {
  std::ifstream in(o.config_path);
  if (!in) fail("cannot open {}", o.config_path);
  json cfg;
  try {
    cfg = json::parse(in);
  } catch (const json::exception& e) {
    fail("{}: not valid JSON: {}", o.config_path, e.what());
  }
  if (o.fp8) {
    cfg["quantization_config"] = {{"activation_scheme", "dynamic"}, {"fmt", "e4m3"}, {"quant_method", "fp8"},
                                  {"weight_block_size", {128, 128}}};
  } else {
    cfg.erase("quantization_config");
  }
  const ModelConfig c = ModelConfig::from_json(cfg, o.config_path);
  fs::create_directories(o.out_dir);
  {
    std::ofstream out(fs::path(o.out_dir) / "config.json");
    out << cfg.dump(2) << "\n";
  }
  if (o.mtp_check && c.num_nextn_predict_layers < 1)
    fail("{}: the MTP check model needs num_nextn_predict_layers >= 1 in the config", o.config_path);
  const auto specs = tensor_specs(c, o.fp8, o.mtp_check);
  // Group tensors into shards by size; each tensor's values are made when its shard is written.
  std::vector<std::vector<const TensorSpec*>> shards(1);
  uint64_t in_shard = 0, total = 0, done = 0;  // total: tensor data bytes of all shards, for o.progress
  for (const auto& s : specs) {
    const uint64_t bytes = uint64_t(s.rows) * uint64_t(std::max<int64_t>(s.cols, 1)) * dtype_size(s.dtype);
    total += bytes + (s.dtype == DType::F8_E4M3 ? uint64_t((s.rows + 127) / 128 * ((s.cols + 127) / 128) * 4) : 0);
    if (in_shard > 0 && in_shard + bytes > uint64_t(o.shard_bytes)) {
      shards.emplace_back();
      in_shard = 0;
    }
    shards.back().push_back(&s);
    in_shard += bytes;
  }
  json weight_map = json::object();
  for (size_t si = 0; si < shards.size(); ++si) {
    const std::string file = shards.size() == 1 ? "model.safetensors"
                                                : fmt::format("model-{:05d}-of-{:05d}.safetensors", si + 1, shards.size());
    std::vector<PendingTensor> pending;
    for (const TensorSpec* s : shards[si]) {
      const uint64_t tensor_seed = o.seed * 0x9e3779b97f4a7c15ull ^ std::hash<std::string>{}(s->name);
      auto values = std::make_shared<std::vector<float>>();
      auto bytes = std::make_shared<std::vector<uint8_t>>();
      auto scales = std::make_shared<std::vector<float>>();
      auto materialise = [=] {
        if (!bytes->empty()) return;
        values->resize(size_t(s->rows * std::max<int64_t>(s->cols, 1)));
        fill_uniform(*values, tensor_seed, s->mean, s->stddev);
        if (s->identity)
          for (int64_t r = 0; r < std::min(s->rows, s->cols); ++r) (*values)[size_t(r * s->cols + r)] += 1.0f;
        encode(*s, *values, *bytes, *scales);
        values->clear();
        values->shrink_to_fit();
      };
      std::vector<int64_t> shape = s->cols ? std::vector<int64_t>{s->rows, s->cols} : std::vector<int64_t>{s->rows};
      const uint64_t nbytes = uint64_t(s->rows) * uint64_t(std::max<int64_t>(s->cols, 1)) * dtype_size(s->dtype);
      pending.push_back({s->name, s->dtype, shape, [=](std::ofstream& out) {
                           materialise();
                           out.write(reinterpret_cast<const char*>(bytes->data()), std::streamsize(bytes->size()));
                           if (s->dtype != DType::F8_E4M3) bytes->clear(), bytes->shrink_to_fit();
                         }, nbytes});
      weight_map[s->name] = file;
      if (s->dtype == DType::F8_E4M3) {
        const int64_t br = (s->rows + 127) / 128, bc = (s->cols + 127) / 128;
        pending.push_back({s->name + "_scale_inv", DType::F32, {br, bc}, [=](std::ofstream& out) {
                             materialise();
                             out.write(reinterpret_cast<const char*>(scales->data()), std::streamsize(scales->size() * 4));
                             bytes->clear(), bytes->shrink_to_fit();
                           }, uint64_t(br * bc * 4)});
        weight_map[s->name + "_scale_inv"] = file;
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
