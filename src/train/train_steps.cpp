#include "train/train_steps.h"
#include "train/device_step.h"

#include <fmt/format.h>

#include <cmath>
#include <fstream>

#include "core/error.h"
#include "io/safetensors.h"
#include "train/parallel.h"

namespace moe::train {

namespace {
double number(const nlohmann::json& obj, const char* key, double fallback, const std::string& path) {
  if (!obj.contains(key)) return fallback;
  MOE_CHECK(obj[key].is_number(), "{}: hyper.{} is not a number", path, key);
  return obj[key].get<double>();
}
}  // namespace

TrainSpec TrainSpec::load(const std::string& path) {
  std::ifstream in(path);
  MOE_CHECK(in.good(), "{}: cannot open the spec", path);
  nlohmann::json j;
  try {
    j = nlohmann::json::parse(in);
  } catch (const nlohmann::json::exception& e) {
    fail("{}: not valid JSON: {}", path, e.what());
  }
  MOE_CHECK(j.is_object(), "{}: the spec is not a JSON object", path);
  TrainSpec s;
  s.path = path;
  if (j.contains("config")) {
    MOE_CHECK(j["config"].is_object(), "{}: config is not an object", path);
    s.config = j["config"];
  }
  MOE_CHECK(j.contains("hyper") && j["hyper"].is_object(), "{}: no hyper object", path);
  const nlohmann::json& h = j["hyper"];
  s.objective.mtp_lambda = number(h, "mtp_lambda", 0.3, path);
  s.objective.seq_aux_alpha = number(h, "seq_aux_alpha", 1e-4, path);
  s.bias_gamma = number(h, "bias_gamma", 1e-3, path);
  s.adamw.beta1 = number(h, "beta1", 0.9, path);
  s.adamw.beta2 = number(h, "beta2", 0.95, path);
  s.adamw.eps = number(h, "adam_eps", 1e-8, path);
  s.adamw.weight_decay = number(h, "weight_decay", 0.1, path);
  s.clip_norm = number(h, "clip_norm", 1.0, path);
  MOE_CHECK(h.contains("lr"), "{}: hyper.lr is missing", path);
  s.schedule.lr = number(h, "lr", 0, path);
  s.schedule.min_lr = number(h, "min_lr", 0, path);
  s.schedule.warmup_steps = int64_t(number(h, "warmup_steps", 0, path));
  s.schedule.decay_start = int64_t(number(h, "decay_start", double(s.schedule.warmup_steps), path));
  s.schedule.decay_end = int64_t(number(h, "decay_end", 0, path));
  s.steps = int64_t(number(h, "steps", 1, path));
  MOE_CHECK(s.steps >= 1, "{}: hyper.steps is {}; at least one step", path, s.steps);
  MOE_CHECK(s.schedule.lr > 0 && s.clip_norm > 0 && s.adamw.beta1 >= 0 && s.adamw.beta1 < 1 && s.adamw.beta2 >= 0 &&
                s.adamw.beta2 < 1,
            "{}: hyper has an out-of-range lr, clip_norm or beta", path);

  MOE_CHECK(j.contains("batch") && j["batch"].is_array() && !j["batch"].empty(), "{}: batch is missing or empty", path);
  const nlohmann::json& batch = j["batch"];
  s.b = int64_t(batch.size());
  for (size_t r = 0; r < batch.size(); ++r) {
    MOE_CHECK(batch[r].is_array() && !batch[r].empty(), "{}: batch[{}] is not a non-empty array of token ids", path, r);
    if (r == 0) s.t = int64_t(batch[0].size());
    MOE_CHECK(int64_t(batch[r].size()) == s.t, "{}: batch[{}] has {} tokens but batch[0] has {}: sequences must have "
              "one length", path, r, batch[r].size(), s.t);
    for (const auto& id : batch[r]) {
      MOE_CHECK(id.is_number_integer(), "{}: batch[{}] holds a value that is not a token id", path, r);
      s.ids.push_back(id.get<int32_t>());
    }
  }
  return s;
}

void TrainSpec::check_model(const std::string& model_dir, const ModelConfig& c) const {
  const std::string cfg_path = model_dir + "/config.json";
  std::ifstream in(cfg_path);
  MOE_CHECK(in.good(), "{}: cannot open", cfg_path);
  const nlohmann::json model_cfg = nlohmann::json::parse(in, nullptr, false);
  for (const auto& [key, value] : config.items()) {
    if (!model_cfg.is_object() || !model_cfg.contains(key)) continue;
    const nlohmann::json& mv = model_cfg[key];
    const bool same = (value.is_number() && mv.is_number()) ? value.get<double>() == mv.get<double>() : value == mv;
    MOE_CHECK(same, "{}: config.{} is {} but {} has {}", path, key, value.dump(), cfg_path, mv.dump());
  }
  for (size_t i = 0; i < ids.size(); ++i)
    MOE_CHECK(ids[i] >= 0 && ids[i] < c.vocab_size, "{}: batch[{}][{}] = {} is outside the vocabulary of {} ({})",
              path, int64_t(i) / t, int64_t(i) % t, ids[i], cfg_path, c.vocab_size);
  MOE_CHECK(t >= (c.num_nextn_predict_layers > 0 ? 3 : 2), "{}: sequences of {} tokens are too short for the objective",
            path, t);
}

TrainStepsResult run_train_steps(TrainModel& model, const TrainSpec& spec,
                                 const std::function<void(const StepReport&)>& on_step, DistributedTraining* dist) {
  TrainStepsResult res;
  for (int64_t step = 1; step <= spec.steps; ++step) {
    model.zero_grad();
    ExpertLoads loads;
    StepReport rep;
    rep.step = step;
    rep.parts = dist ? dist->forward_backward(spec.ids, spec.b, spec.t, spec.objective, &loads)
                     : forward_backward(model, spec.ids, spec.b, spec.t, spec.objective, &loads);
    if (step == 1 && model.device) model.device->pull(model);  // the step-1 gradients, read below
    if (step == 1 && (!dist || dist->whole_gradients()))
      for (const auto& p : model.params) res.step1_grads.emplace_back(p->name, p->g);
    if (step == 1) res.step1_loads = loads;
    MOE_CHECK(std::isfinite(rep.parts.loss), "train: the loss is {} at step {}", rep.parts.loss, step);
    rep.stats = dist ? dist->step(spec.adamw, spec.schedule.at(step), spec.clip_norm, step)
                     : adamw_step(model, spec.adamw, spec.schedule.at(step), spec.clip_norm, step);
    update_correction_biases(model, loads, spec.bias_gamma);
    res.steps.push_back(rep);
    if (on_step) on_step(rep);
  }
  if (dist) dist->gather_model();
  if (model.device) model.device->pull(model);  // the parameters after the last step
  return res;
}

void write_train_steps(const std::string& path, const TrainModel& model, const TrainStepsResult& result,
                       int64_t steps) {
  std::vector<std::vector<float>> storage;  // the load counts as F32
  std::vector<NamedTensor> out;
  auto view = [](const float* data, Shape shape) {
    TensorView v;
    v.data = const_cast<float*>(data);
    v.dtype = DType::F32;
    v.shape = shape;
    return v;
  };
  for (size_t i = 0; i < result.step1_grads.size(); ++i)
    out.push_back({"grad." + result.step1_grads[i].first, view(result.step1_grads[i].second.data(), model.params[i]->shape)});
  storage.reserve(result.step1_loads.size());
  for (const auto& [gate, load] : result.step1_loads) {
    storage.emplace_back(load.begin(), load.end());
    out.push_back({"load." + gate, view(storage.back().data(), {int64_t(load.size())})});
  }
  const std::string after = fmt::format("after{}.", steps);
  for (const auto& p : model.params) out.push_back({after + p->name, view(p->w.data(), p->shape)});
  for (const auto& b : model.biases) out.push_back({after + b->name, view(b->value.data(), {int64_t(b->value.size())})});
  write_safetensors(path, out);
}

std::string step_json(const StepReport& r) {
  nlohmann::ordered_json j = {{"step", r.step},           {"loss", r.parts.loss},
                      {"main_ce", r.parts.main_ce}, {"mtp_ce", r.parts.mtp_ce},
                      {"seq_aux", r.parts.seq_aux}, {"grad_norm", r.stats.grad_norm},
                      {"clip_scale", r.stats.clip_scale}, {"lr", r.stats.lr}};
  return j.dump();
}

}  // namespace moe::train
