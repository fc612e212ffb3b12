#include "train/params.h"
#include "train/device_step.h"

#include <fmt/format.h>

#include <cmath>

#include "core/error.h"
#include "core/thread_pool.h"
#include "io/checkpoint.h"

namespace moe::train {

namespace {

std::vector<float> to_f32(const TensorView& v, const std::string& name, const std::string& file) {
  std::vector<float> out(size_t(v.numel()));
  switch (v.dtype) {
    case DType::F32:
      for (int64_t i = 0; i < v.numel(); ++i) out[size_t(i)] = v.as<const float>()[i];
      break;
    case DType::BF16:
      for (int64_t i = 0; i < v.numel(); ++i) out[size_t(i)] = bf16_to_float(v.as<const uint16_t>()[i]);
      break;
    case DType::F16:
      for (int64_t i = 0; i < v.numel(); ++i) out[size_t(i)] = f16_to_float(v.as<const uint16_t>()[i]);
      break;
    default:
      fail("{}: tensor {} is {}; the trainer reads F32, BF16 or F16 checkpoints", file, name, dtype_name(v.dtype));
  }
  return out;
}

// Normal(0, std) values from splitmix64 + Box-Muller, seeded by (seed, name): the same on every platform.
std::vector<float> normal_values(size_t n, double stddev, uint64_t seed, const std::string& name) {
  uint64_t state = seed * 0x9e3779b97f4a7c15ull;
  for (unsigned char ch : name) state = (state ^ ch) * 0x100000001b3ull;
  auto next = [&] {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  };
  std::vector<float> out(n);
  for (size_t i = 0; i < n; i += 2) {
    const double u1 = (double(next() >> 11) + 1.0) * 0x1.0p-53, u2 = double(next() >> 11) * 0x1.0p-53;
    const double r = std::sqrt(-2.0 * std::log(u1)), a = 2.0 * 3.14159265358979323846 * u2;
    out[i] = float(stddev * r * std::cos(a));
    if (i + 1 < n) out[i + 1] = float(stddev * r * std::sin(a));
  }
  return out;
}

struct Loader {
  const Checkpoint* ck;  // null: a fresh initialisation
  TrainModel& m;
  uint64_t seed = 0;
  double init_std = 0.006;
  bool host_state = true;
  std::vector<Param*> drawn;  // fresh matrices, drawn after the structure is built (in parallel with a pool)

  Param* param(const std::string& name, Shape shape) {
    auto p = std::make_unique<Param>();
    p->name = name;
    p->shape = shape;
    if (ck) {
      MOE_CHECK(ck->has(name), "{}: the checkpoint has no tensor {}", ck->dir(), name);
      p->w = to_f32(ck->get(name, shape), name, ck->file_of(name));
    } else if (shape.rank >= 2) {
      drawn.push_back(p.get());
    } else {
      p->w.assign(size_t(shape.numel()), 1.f);  // RMSNorm weights start at one
    }
    if (host_state) {
      const size_t n = size_t(shape.numel());
      p->g.assign(n, 0.f);
      p->m.assign(n, 0.f);
      p->v.assign(n, 0.f);
    }
    p->decay = shape.rank >= 2;
    m.params.push_back(std::move(p));
    return m.params.back().get();
  }

  MlpParams mlp(const std::string& prefix, int64_t width) {
    const int64_t D = m.config.hidden_size;
    MlpParams p;
    p.width = width;
    p.gate = param(prefix + "gate_proj.weight", {width, D});
    p.up = param(prefix + "up_proj.weight", {width, D});
    p.down = param(prefix + "down_proj.weight", {D, width});
    return p;
  }

  LayerParams layer(int64_t li, bool is_moe) {
    const ModelConfig& c = m.config;
    const int64_t D = c.hidden_size, H = c.num_attention_heads, dq = c.qk_head_dim();
    const std::string pre = fmt::format("model.layers.{}.", li);
    LayerParams L;
    L.input_norm = param(pre + "input_layernorm.weight", {D});
    L.post_norm = param(pre + "post_attention_layernorm.weight", {D});
    AttnParams& a = L.attn;
    if (c.q_lora_rank > 0) {
      a.q_a = param(pre + "self_attn.q_a_proj.weight", {c.q_lora_rank, D});
      a.q_a_norm = param(pre + "self_attn.q_a_layernorm.weight", {c.q_lora_rank});
      a.q_b = param(pre + "self_attn.q_b_proj.weight", {H * dq, c.q_lora_rank});
    } else {
      a.q_proj = param(pre + "self_attn.q_proj.weight", {H * dq, D});
    }
    a.kv_a = param(pre + "self_attn.kv_a_proj_with_mqa.weight", {c.kv_lora_rank + c.qk_rope_head_dim, D});
    a.kv_a_norm = param(pre + "self_attn.kv_a_layernorm.weight", {c.kv_lora_rank});
    a.kv_b = param(pre + "self_attn.kv_b_proj.weight", {H * (c.qk_nope_head_dim + c.v_head_dim), c.kv_lora_rank});
    a.o_proj = param(pre + "self_attn.o_proj.weight", {D, H * c.v_head_dim});
    L.is_moe = is_moe;
    if (!is_moe) {
      L.dense = mlp(pre + "mlp.", c.intermediate_size);
      return L;
    }
    L.gate_name = pre + "mlp.gate.weight";
    L.router = param(L.gate_name, {c.n_routed_experts, D});
    const std::string bias_name = pre + "mlp.gate.e_score_correction_bias";
    if (ck ? ck->has(bias_name) : c.topk_method == TopkMethod::NoauxTc) {
      auto b = std::make_unique<CorrectionBias>();
      b->name = bias_name;
      b->value = ck ? to_f32(ck->get(bias_name, {c.n_routed_experts}), bias_name, ck->file_of(bias_name))
                    : std::vector<float>(size_t(c.n_routed_experts), 0.f);
      m.biases.push_back(std::move(b));
      L.bias = m.biases.back().get();
    }
    for (int64_t e = 0; e < c.n_routed_experts; ++e)
      L.experts.push_back(mlp(fmt::format("{}mlp.experts.{}.", pre, e), c.moe_intermediate_size));
    if (c.n_shared_experts > 0) L.shared = mlp(pre + "mlp.shared_experts.", c.moe_intermediate_size * c.n_shared_experts);
    return L;
  }
};

}  // namespace

TrainModel TrainModel::load(const std::string& dir) {
  Checkpoint ck(dir);
  return build(ModelConfig::load(dir), dir + "/config.json", &ck, 0, 0);
}

TrainModel TrainModel::init(const ModelConfig& config, const std::string& source, uint64_t seed, double init_std,
                            ThreadPool* pool, bool host_state) {
  return build(config, source, nullptr, seed, init_std, pool, host_state);
}

TrainModel TrainModel::build(const ModelConfig& config, const std::string& source, const Checkpoint* ck, uint64_t seed,
                             double init_std, ThreadPool* pool, bool host_state) {
  TrainModel m;
  m.config = config;
  const ModelConfig& c = m.config;
  const std::string& dir = source;
  MOE_CHECK(!c.tie_word_embeddings, "{}: tied embeddings are not supported by the trainer", dir);
  MOE_CHECK(c.fp8_block_rows == 0, "{}: the trainer reads BF16/F32 checkpoints, not FP8", dir);
  MOE_CHECK(c.num_nextn_predict_layers <= 1, "{}: the trainer has one MTP depth, not {}", dir,
            c.num_nextn_predict_layers);
  Loader ld{ck, m, seed, init_std, host_state, {}};
  const int64_t D = c.hidden_size;
  m.embed = ld.param("model.embed_tokens.weight", {c.vocab_size, D});
  for (int64_t li = 0; li < c.num_hidden_layers; ++li) m.layers.push_back(ld.layer(li, c.is_moe_layer(li)));
  m.final_norm = ld.param("model.norm.weight", {D});
  m.head = ld.param("lm_head.weight", {c.vocab_size, D});
  if (c.num_nextn_predict_layers == 1) {
    const int64_t L = c.num_hidden_layers;
    const std::string pre = fmt::format("model.layers.{}.", L);
    m.has_mtp = true;
    m.enorm = ld.param(pre + "enorm.weight", {D});
    m.hnorm = ld.param(pre + "hnorm.weight", {D});
    m.eh_proj = ld.param(pre + "eh_proj.weight", {D, 2 * D});
    m.mtp_norm = ld.param(pre + "shared_head.norm.weight", {D});
    m.mtp_layer = ld.layer(L, c.is_moe_layer(L));
  }
  auto draw = [&](int64_t i) {
    Param* p = ld.drawn[size_t(i)];
    p->w = normal_values(size_t(p->shape.numel()), init_std, seed, p->name);
  };
  const int64_t count = int64_t(ld.drawn.size());
  if (pool)
    pool->parallel_for(count, [&](int64_t lo, int64_t hi, int) {
      for (int64_t i = lo; i < hi; ++i) draw(i);
    });
  else
    for (int64_t i = 0; i < count; ++i) draw(i);
  return m;
}

Param* TrainModel::find(const std::string& name) const {
  for (const auto& p : params)
    if (p->name == name) return p.get();
  return nullptr;
}

int64_t parameter_count(const ModelConfig& c) {
  const int64_t D = c.hidden_size, H = c.num_attention_heads, dq = c.qk_nope_head_dim + c.qk_rope_head_dim,
                r = c.kv_lora_rank, dr = c.qk_rope_head_dim, ql = c.q_lora_rank;
  auto layer = [&](int64_t l) {
    int64_t n = 2 * D;  // the two norms
    n += ql > 0 ? D * ql + ql + ql * H * dq : D * H * dq;
    n += D * (r + dr) + r + r * H * (c.qk_nope_head_dim + c.v_head_dim) + H * c.v_head_dim * D;
    if (c.is_moe_layer(l))
      n += c.n_routed_experts * D + 3 * D * c.moe_intermediate_size * (c.n_routed_experts + c.n_shared_experts);
    else
      n += 3 * D * c.intermediate_size;
    return n;
  };
  int64_t n = 2 * c.vocab_size * D + D;  // embedding, head, final norm
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) n += layer(l);
  if (c.num_nextn_predict_layers > 0) n += 3 * D + 2 * D * D + layer(c.num_hidden_layers);
  return n;
}

void TrainModel::zero_grad() {
  if (device) return device->zero_grad(*this);
  for (auto& p : params) std::fill(p->g.begin(), p->g.end(), 0.f);
}

}  // namespace moe::train
