#pragma once
// The trained tensors of a DeepSeek-V3 model: F32 master copies of the checkpoint's tensors with their
// gradients and AdamW moments, under the checkpoint's names, grouped per layer like model/weights.h.
#include <memory>
#include <string>
#include <vector>

#include "core/tensor.h"
#include "io/model_config.h"

namespace moe {
class Checkpoint;
class ThreadPool;
}

namespace moe::train {

struct ExpertParallel;
class Compute;
class DeviceStep;

// Called around each use of a group of parameters by the passes of train/model.h, so that ZeRO-3
// (train/parallel.h) can gather a group just before it is used and free it after, and reduce-scatter its
// gradient as soon as that use's backward is done. `layer`: 0..L-1 the main layers, L the MTP module's layer;
// kEmbed the embedding (main and MTP lookups: each use bracketed on its own), kHead the output head (likewise),
// kGlobals the small tensors left (norms outside the layers, the MTP projection), held for the whole pass.
struct ParamHooks {
  static constexpr int kHead = -3, kEmbed = -2, kGlobals = -1;
  virtual ~ParamHooks() = default;
  virtual void before_forward(int layer) = 0;
  virtual void after_forward(int layer) = 0;    // kGlobals: at the end of a forward-only pass
  virtual void before_backward(int layer) = 0;  // never kGlobals (held since the forward)
  virtual void after_backward(int layer) = 0;   // kGlobals: at the end of the backward
};

struct Param {
  std::string name;  // the checkpoint's tensor name
  Shape shape;
  std::vector<float> w, g, m, v;  // value, gradient (accumulated), AdamW first and second moments
  bool decay = false;             // weight decay on tensors of rank >= 2 only (not norms, not biases)
  float* data() { return w.data(); }
  float* grad() { return g.data(); }
};

// e_score_correction_bias: moved by the balancing rule after each step, never by a gradient.
struct CorrectionBias {
  std::string name;
  std::vector<float> value;  // [E]
};

struct MlpParams {
  Param *gate = nullptr, *up = nullptr, *down = nullptr;  // [F, D], [F, D], [D, F]
  int64_t width = 0;                                      // F
  bool present() const { return gate != nullptr; }
};

struct AttnParams {
  Param *q_a = nullptr, *q_a_norm = nullptr, *q_b = nullptr;  // q_lora_rank > 0
  Param* q_proj = nullptr;                                    // q_lora_rank == 0
  Param *kv_a = nullptr, *kv_a_norm = nullptr, *kv_b = nullptr, *o_proj = nullptr;
};

struct LayerParams {
  Param *input_norm = nullptr, *post_norm = nullptr;
  AttnParams attn;
  bool is_moe = false;
  MlpParams dense;                // !is_moe
  Param* router = nullptr;        // mlp.gate.weight [E, D]
  CorrectionBias* bias = nullptr; // may be null (V2 checkpoints have none)
  std::vector<MlpParams> experts;
  MlpParams shared;               // not present when n_shared_experts == 0
  std::string gate_name;          // "model.layers.L.mlp.gate.weight": names the layer's loads
};

// The number of trained values TrainModel::init makes for config c (MTP module included; correction biases not),
// from the config alone: what a device checks before the host copies are made.
int64_t parameter_count(const ModelConfig& c);

struct TrainModel {
  ModelConfig config;
  std::vector<std::unique_ptr<Param>> params;  // every trained tensor (pointers below point into these)
  std::vector<std::unique_ptr<CorrectionBias>> biases;
  Param *embed = nullptr, *final_norm = nullptr, *head = nullptr;
  std::vector<LayerParams> layers;
  bool has_mtp = false;  // one MTP depth, stored as layer num_hidden_layers
  Param *enorm = nullptr, *hnorm = nullptr, *eh_proj = nullptr, *mtp_norm = nullptr;
  LayerParams mtp_layer;
  ThreadPool* pool = nullptr;  // threads for the GEMMs, owned by the caller (the trainer); null: one thread
  const ExpertParallel* ep = nullptr;  // experts sharded over ranks (train/parallel.h sets it); null: all here
  // The device the GEMMs, attention and cross-entropy run on (train/compute.h), owned by the caller; null: the
  // CPU ops on `pool`.
  Compute* compute = nullptr;
  ParamHooks* hooks = nullptr;  // owned by the caller (DistributedTraining); null: every parameter always here
  // A device that runs the whole step with everything resident there (train/device_step.h), owned by the caller;
  // when set, the step's functions hand their work to it and the host copies are synced by its pull/push.
  DeviceStep* device = nullptr;

  // Reads config.json and the checkpoint (BF16/F16/F32 tensors, converted to F32). The MTP module's copies of
  // embed_tokens and shared_head.head are not separate parameters: the main model's are shared.
  static TrainModel load(const std::string& dir);
  // A fresh model of `config` (`source` names it in errors): matrices Normal(0, init_std) drawn from (seed,
  // tensor name), RMSNorm weights 1, correction biases 0 (noaux_tc routers). `pool`: the tensors drawn in
  // parallel (the same values). host_state false: no host gradients or moments (a device keeps them: they are
  // zero there and pull() sizes the host copies), so a model whose 16 bytes a parameter exceed the host's memory
  // (issue 11's mid-size MoE: 162 GB) can still be trained on a device.
  static TrainModel init(const ModelConfig& config, const std::string& source, uint64_t seed, double init_std,
                         ThreadPool* pool = nullptr, bool host_state = true);
  Param* find(const std::string& name) const;
  void zero_grad();

 private:
  static TrainModel build(const ModelConfig& config, const std::string& source, const Checkpoint* ck,
                          uint64_t seed, double init_std, ThreadPool* pool = nullptr, bool host_state = true);
};

}  // namespace moe::train
