#include "model/weights.h"

#include <fmt/format.h>

#include <algorithm>
#include <cstdlib>

#include "core/error.h"

namespace moe {

namespace {

class Loader {
 public:
  Loader(const TensorSource& ckpt, const ModelConfig& c, Backend& backend, const ProgressFn& progress, uint64_t total)
      : ckpt_(ckpt), c_(c), backend_(backend), progress_(progress), total_(total) {}

  // After every tensor handed over: `bytes` more done (capped at the total, which the caller estimated).
  void advance(uint64_t bytes) {
    done_ = std::min(done_ + bytes, total_);
    if (progress_) progress_(done_, total_);
  }
  void finish() {
    done_ = total_;
    if (progress_) progress_(done_, total_);
  }

  // A projection [rows, cols]: BF16/F16/F32, or F8_E4M3 with its weight_scale_inv blocks; a routed expert's
  // (`int4_ok`) also INT4 pack-quantized (name minus ".weight" plus ".weight_packed", ".weight_scale").
  Weight projection(const std::string& name, int64_t rows, int64_t cols, bool int4_ok = false) {
    const std::string base = name.substr(0, name.size() - std::string(".weight").size());
    if (ckpt_.has(base + ".weight_packed") && !ckpt_.has(name)) {
      if (!int4_ok)
        fail("{}: '{}.weight_packed': only the routed experts may be INT4 (pack-quantized); this tensor must be "
             "BF16 or FP8", ckpt_.file_of(base + ".weight_packed"), base);
      return packed_projection(base, rows, cols);
    }
    Weight w;
    w.w = ckpt_.get(name, Shape{rows, cols});
    check_float(name, w.w);
    if (w.w.dtype == DType::F8_E4M3) {
      const std::string scale_name = name + "_scale_inv";
      if (!ckpt_.has(scale_name))
        fail("{}: FP8 tensor '{}' has no '{}'", ckpt_.file_of(name), name, scale_name);
      const int64_t bn = c_.fp8_block_rows ? c_.fp8_block_rows : 128, bk = c_.fp8_block_cols ? c_.fp8_block_cols : 128;
      w.scale_inv = ckpt_.get(scale_name, Shape{(rows + bn - 1) / bn, (cols + bk - 1) / bk});
      if (w.scale_inv.dtype != DType::F32)
        fail("{}: '{}' must be F32, not {}", ckpt_.file_of(scale_name), scale_name, dtype_name(w.scale_inv.dtype));
      w.block_n = int32_t(bn);
      w.block_k = int32_t(bk);
      if (c_.ue8m0_scales) check_pow2_scales(scale_name, w.scale_inv);
      w.pow2_scales = c_.ue8m0_scales;
    }
    Weight up = backend_.upload_weight(w);
    advance(w.w.nbytes() + (w.scale_inv.empty() ? 0 : w.scale_inv.nbytes()));
    return up;
  }

  // A norm or other vector weight [n] (never FP8).
  Weight vector(const std::string& name, int64_t n) {
    Weight w;
    w.w = ckpt_.get(name, Shape{n});
    check_float(name, w.w);
    if (w.w.dtype == DType::F8_E4M3) fail("{}: '{}' must not be FP8", ckpt_.file_of(name), name);
    Weight up = backend_.upload_weight(w);
    advance(w.w.nbytes());
    return up;
  }

  MlpWeights mlp(const std::string& prefix, int64_t hidden, int64_t inner, bool routed_expert = false) {
    return MlpWeights{projection(prefix + ".gate_proj.weight", inner, hidden, routed_expert),
                      projection(prefix + ".up_proj.weight", inner, hidden, routed_expert),
                      projection(prefix + ".down_proj.weight", hidden, inner, routed_expert)};
  }

  // INT4 W4A16 (compressed-tensors pack-quantized; layout in backend.h's Weight): weight_packed I32
  // [rows, cols / 8], weight_scale BF16/F32 [rows, cols / group_size], weight_shape (optional) I32/I64 {rows, cols}.
  Weight packed_projection(const std::string& base, int64_t rows, int64_t cols) {
    const std::string packed = base + ".weight_packed", scale = base + ".weight_scale", shape = base + ".weight_shape";
    if (!c_.packed_int)
      fail("{}: tensor '{}' is pack-quantized INT4 but config.json has no compressed-tensors quantization_config",
           ckpt_.file_of(packed), packed);
    const int64_t g = c_.packed_int->group_size;
    if (cols % g)
      fail("{}: tensor '{}' has {} input columns, not a multiple of quantization_config group_size {}",
           ckpt_.file_of(packed), packed, cols, g);
    if (!ckpt_.has(scale)) fail("{}: INT4 tensor '{}' has no '{}'", ckpt_.file_of(packed), packed, scale);
    if (ckpt_.has(base + ".weight_zero_point"))
      fail("{}: '{}.weight_zero_point': asymmetric INT4 is not supported (symmetric only)", ckpt_.file_of(packed),
           base);
    Weight w;
    w.w = ckpt_.get(packed, Shape{rows, cols / 8});
    if (w.w.dtype != DType::I32)
      fail("{}: '{}' must be I32 (8 INT4 values per word), not {}", ckpt_.file_of(packed), packed,
           dtype_name(w.w.dtype));
    w.scale_inv = ckpt_.get(scale, Shape{rows, cols / g});
    if (w.scale_inv.dtype != DType::BF16 && w.scale_inv.dtype != DType::F32)
      fail("{}: '{}' must be BF16 or F32, not {}", ckpt_.file_of(scale), scale, dtype_name(w.scale_inv.dtype));
    if (auto sh = ckpt_.find(shape)) {
      int64_t v[2] = {-1, -1};
      if (sh->numel() == 2 && sh->dtype == DType::I64) v[0] = sh->as<const int64_t>()[0], v[1] = sh->as<const int64_t>()[1];
      if (sh->numel() == 2 && sh->dtype == DType::I32) v[0] = sh->as<const int32_t>()[0], v[1] = sh->as<const int32_t>()[1];
      if (v[0] != rows || v[1] != cols)
        fail("{}: '{}' must be the integers {{{}, {}}} (I32 or I64) that config.json implies", ckpt_.file_of(shape),
             shape, rows, cols);
    }
    w.group_size = int32_t(g);
    Weight up = backend_.upload_weight(w);
    advance(w.w.nbytes() + w.scale_inv.nbytes());
    return up;
  }

  IndexerWeights indexer(const std::string& p) {
    const IndexerConfig& ix = *c_.indexer;
    for (const char* t : {"wq_b.weight", "wk.weight", "k_norm.weight", "k_norm.bias", "weights_proj.weight"})
      if (!ckpt_.has(p + t))
        fail("{}: DeepseekV32ForCausalLM checkpoint is missing the indexer tensor '{}{}' (DeepSeek Sparse Attention "
             "needs wq_b, wk, k_norm and weights_proj in every layer)", ckpt_.dir(), p, t);
    IndexerWeights w;
    w.wq_b = projection(p + "wq_b.weight", ix.n_heads * ix.head_dim, c_.q_lora_rank);
    w.wk = projection(p + "wk.weight", ix.head_dim, c_.hidden_size);
    w.k_norm = vector(p + "k_norm.weight", ix.head_dim);
    w.k_norm_bias = vector(p + "k_norm.bias", ix.head_dim);
    w.weights_proj = projection(p + "weights_proj.weight", ix.n_heads, c_.hidden_size);
    return w;
  }

  ExpertWeights experts(int64_t layer, const std::vector<int32_t>& ids) {
    ExpertWeights out;
    out.experts.reserve(ids.size());
    for (int32_t e : ids) {
      // Id n_routed_experts: the shared expert as a routed one (ExpertPlacement::with_shared_expert), which needs
      // it to have a routed expert's shape (one shared expert: V3, R1, Kimi-K2).
      if (e == c_.n_routed_experts && c_.n_shared_experts == 1) {
        out.experts.push_back(mlp(fmt::format("model.layers.{}.mlp.shared_experts", layer), c_.hidden_size,
                                  c_.moe_intermediate_size));
        continue;
      }
      MOE_CHECK(e >= 0 && e < c_.n_routed_experts, "layer {}: no routed expert {} (of {}{})", layer, e,
                c_.n_routed_experts,
                e == c_.n_routed_experts ? fmt::format("; the shared expert as a routed one needs n_shared_experts = 1, "
                                                       "not {}", c_.n_shared_experts)
                                         : std::string());
      out.experts.push_back(
          mlp(fmt::format("model.layers.{}.mlp.experts.{}", layer, e), c_.hidden_size, c_.moe_intermediate_size, true));
    }
    backend_.prepare_experts(out);
    return out;
  }

  DecoderLayerWeights decoder_layer(int64_t i, bool is_moe, const ExpertSelection& select = {}) {
    const std::string p = fmt::format("model.layers.{}.", i);
    const int64_t D = c_.hidden_size, H = c_.num_attention_heads;
    DecoderLayerWeights l;
    l.input_norm = vector(p + "input_layernorm.weight", D);
    l.post_attention_norm = vector(p + "post_attention_layernorm.weight", D);
    auto& a = l.attn;
    if (c_.q_lora_rank > 0) {
      a.q_a = projection(p + "self_attn.q_a_proj.weight", c_.q_lora_rank, D);
      a.q_a_norm = vector(p + "self_attn.q_a_layernorm.weight", c_.q_lora_rank);
      a.q_b = projection(p + "self_attn.q_b_proj.weight", H * c_.qk_head_dim(), c_.q_lora_rank);
    } else {
      a.q_proj = projection(p + "self_attn.q_proj.weight", H * c_.qk_head_dim(), D);
    }
    a.kv_a = projection(p + "self_attn.kv_a_proj_with_mqa.weight", c_.cache_width(), D);
    a.kv_a_norm = vector(p + "self_attn.kv_a_layernorm.weight", c_.kv_lora_rank);
    a.kv_b = projection(p + "self_attn.kv_b_proj.weight", H * (c_.qk_nope_head_dim + c_.v_head_dim), c_.kv_lora_rank);
    a.o_proj = projection(p + "self_attn.o_proj.weight", D, H * c_.v_head_dim);
    if (c_.indexer) a.indexer = indexer(p + "self_attn.indexer.");
    l.is_moe = is_moe;
    if (!is_moe) {
      l.dense = mlp(p + "mlp", D, c_.intermediate_size);
      return l;
    }
    const int64_t E = c_.n_routed_experts;
    l.router = projection(p + "mlp.gate.weight", E, D);
    if (l.router.is_fp8()) fail("{}: the router '{}mlp.gate.weight' must not be FP8", ckpt_.file_of(p + "mlp.gate.weight"), p);
    const std::string bias_name = p + "mlp.gate.e_score_correction_bias";
    if (c_.topk_method == TopkMethod::NoauxTc) {
      const TensorView bias = ckpt_.get(bias_name, Shape{E});
      check_float(bias_name, bias);
      std::vector<float> host(static_cast<size_t>(E));
      for (int64_t e = 0; e < E; ++e) {
        switch (bias.dtype) {
          case DType::F32: host[size_t(e)] = bias.as<const float>()[e]; break;
          case DType::BF16: host[size_t(e)] = bf16_to_float(bias.as<const uint16_t>()[e]); break;
          case DType::F16: host[size_t(e)] = f16_to_float(bias.as<const uint16_t>()[e]); break;
          default: fail("{}: '{}' has unsupported dtype {}", ckpt_.file_of(bias_name), bias_name, dtype_name(bias.dtype));
        }
      }
      l.correction_bias = backend_.alloc(DType::F32, Shape{E});
      backend_.copy_from_host(host.data(), l.correction_bias);
    }
    std::vector<int32_t> ids;
    if (select) {
      ids = select(i);
    } else {
      for (int32_t e = 0; e < int32_t(E); ++e) ids.push_back(e);
    }
    l.experts = experts(i, ids);
    if (c_.n_shared_experts > 0) {
      l.shared_experts = mlp(p + "mlp.shared_experts", D, c_.moe_intermediate_size * c_.n_shared_experts);
      // All routed experts here (no expert parallelism): the backend may run the shared ones among them.
      if (!select) backend_.prepare_shared_experts(l.experts, *l.shared_experts);
    }
    return l;
  }

 private:
  // scale_fmt ue8m0: every block scale a positive power of two (F32 with a zero mantissa, normal exponent).
  void check_pow2_scales(const std::string& name, const TensorView& s) {
    const uint32_t* bits = s.as<const uint32_t>();
    for (int64_t i = 0; i < s.numel(); ++i) {
      const uint32_t b = bits[i], exponent = (b >> 23) & 0xffu;
      if ((b & 0x807fffffu) != 0 || exponent == 0 || exponent == 0xffu)
        fail("{}: '{}' element {} is {}, not a power of two as quantization_config.scale_fmt 'ue8m0' requires",
             ckpt_.file_of(name), name, i, s.as<const float>()[i]);
    }
  }

  void check_float(const std::string& name, const TensorView& v) {
    if (v.dtype != DType::BF16 && v.dtype != DType::F16 && v.dtype != DType::F32 && v.dtype != DType::F8_E4M3)
      fail("{}: tensor '{}' has dtype {}, expected BF16, F16, F32 or F8_E4M3", ckpt_.file_of(name), name,
           dtype_name(v.dtype));
    if (v.dtype == DType::F8_E4M3 && c_.fp8_block_rows == 0)
      fail("{}: tensor '{}' is F8_E4M3 but config.json has no quantization_config", ckpt_.file_of(name), name);
  }

  const TensorSource& ckpt_;
  const ModelConfig& c_;
  Backend& backend_;
  const ProgressFn& progress_;
  const uint64_t total_;
  uint64_t done_ = 0;
};

// Bytes of the tensors a load hands the backend: every tensor of the checkpoint, less the MTP layers'
// (model.layers.N.* with N >= num_hidden_layers) when they are not loaded.
uint64_t bytes_to_load(const TensorSource& ckpt, const ModelConfig& c, bool with_mtp) {
  uint64_t total = 0;
  const std::string prefix = "model.layers.";
  for (const std::string& name : ckpt.names()) {
    if (!with_mtp && name.rfind(prefix, 0) == 0) {
      const int64_t layer = std::atoll(name.c_str() + prefix.size());
      if (layer >= c.num_hidden_layers) continue;
    }
    if (auto v = ckpt.find(name)) total += v->nbytes();
  }
  return total;
}

}  // namespace

ModelWeights ModelWeights::load(const TensorSource& ckpt, const ModelConfig& c, Backend& backend, bool with_mtp,
                                const ProgressFn& progress, const ExpertSelection& experts) {
  const uint64_t total = progress ? bytes_to_load(ckpt, c, with_mtp) : 0;
  Loader load(ckpt, c, backend, progress, total);
  ModelWeights m;
  m.embed = load.projection("model.embed_tokens.weight", c.vocab_size, c.hidden_size);
  m.final_norm = load.vector("model.norm.weight", c.hidden_size);
  if (ckpt.has("lm_head.weight") || !c.tie_word_embeddings)
    m.lm_head = load.projection("lm_head.weight", c.vocab_size, c.hidden_size);
  else
    m.lm_head = m.embed;
  for (int64_t i = 0; i < c.num_hidden_layers; ++i) m.layers.push_back(load.decoder_layer(i, c.is_moe_layer(i), experts));
  const int64_t L = c.num_hidden_layers;
  if (with_mtp && c.num_nextn_predict_layers > 0 && ckpt.has(fmt::format("model.layers.{}.eh_proj.weight", L))) {
    MtpWeights mtp;
    const std::string p = fmt::format("model.layers.{}.", L);
    mtp.enorm = load.vector(p + "enorm.weight", c.hidden_size);
    mtp.hnorm = load.vector(p + "hnorm.weight", c.hidden_size);
    mtp.eh_proj = load.projection(p + "eh_proj.weight", c.hidden_size, 2 * c.hidden_size);
    mtp.shared_head_norm = load.vector(p + "shared_head.norm.weight", c.hidden_size);
    mtp.head = ckpt.has(p + "shared_head.head.weight")
                   ? load.projection(p + "shared_head.head.weight", c.vocab_size, c.hidden_size)
                   : m.lm_head;
    mtp.layer = load.decoder_layer(L, c.n_routed_experts > 0, experts);
    m.mtp = std::move(mtp);
  }
  load.finish();
  return m;
}

ExpertWeights load_experts(const TensorSource& ckpt, const ModelConfig& config, Backend& backend, int64_t layer,
                           const std::vector<int32_t>& ids) {
  const ProgressFn none;  // Loader keeps a reference
  Loader load(ckpt, config, backend, none, 0);
  return load.experts(layer, ids);
}

ModelStats compute_stats(const Checkpoint& ckpt, const ModelConfig& c) {
  ModelStats s;
  const std::string mtp_prefix = fmt::format("model.layers.{}.", c.num_hidden_layers);
  int64_t expert_params = 0, expert_bytes = 0;  // of one routed expert
  for (const auto& name : ckpt.names()) {
    const TensorView v = *ckpt.find(name);
    const auto ends = [&](const char* suffix) {
      const std::string sfx(suffix);
      return name.size() >= sfx.size() && name.compare(name.size() - sfx.size(), sfx.size(), sfx) == 0;
    };
    // Parameters: an INT4 word holds 8; scales and shapes are not parameters (their bytes still count).
    const bool aux = ends(".weight_scale") || ends(".weight_shape") || name.find("_scale_inv") != std::string::npos;
    const int64_t n = aux ? 0 : v.numel() * (ends(".weight_packed") ? 8 : 1), b = int64_t(v.nbytes());
    if (name.rfind(mtp_prefix, 0) == 0) {
      s.mtp_params += n;
      continue;
    }
    s.total_params += n;
    s.weight_bytes += b;
    if (name.find(".mlp.experts.0.") != std::string::npos) {
      expert_params += n;
      expert_bytes += b;
    }
  }
  // expert_params and expert_bytes summed experts.0 over every MoE layer: one expert per layer.
  const int64_t idle = c.n_routed_experts - c.num_experts_per_tok;
  s.active_params = s.total_params - idle * expert_params;
  const int64_t embed_bytes = int64_t(ckpt.get("model.embed_tokens.weight").nbytes());
  s.active_weight_bytes = s.weight_bytes - idle * expert_bytes - embed_bytes;
  return s;
}

}  // namespace moe
