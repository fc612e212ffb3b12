#include "train/optimizer.h"

#include <cmath>

#include "core/dtype.h"
#include "core/error.h"
#include "train/device_step.h"

namespace moe::train {

double LrSchedule::at(int64_t step) const {
  if (warmup_steps > 0 && step <= warmup_steps) return lr * double(step) / double(warmup_steps);
  if (decay_end <= 0 || step <= decay_start) return lr;
  if (step >= decay_end) return min_lr;
  const double progress = double(step - decay_start) / double(decay_end - decay_start);
  return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(M_PI * progress));
}

void scale_gradients(TrainModel& m, double s) {
  if (m.device) return m.device->scale_gradients(m, s);
  for (auto& p : m.params)
    for (float& g : p->g) g = float(double(g) * s);
}

double global_grad_norm(const TrainModel& m) {
  if (m.device) return m.device->global_grad_norm(const_cast<TrainModel&>(m));
  double ss = 0;
  for (const auto& p : m.params)
    for (float g : p->g) ss += double(g) * double(g);
  return std::sqrt(ss);
}

StepStats adamw_step(TrainModel& m, const AdamW& opt, double lr, double clip_norm, int64_t step) {
  if (m.device) return m.device->adamw_step(m, opt, lr, clip_norm, step);
  StepStats st;
  st.lr = lr;
  st.grad_norm = global_grad_norm(m);
  MOE_CHECK(std::isfinite(st.grad_norm), "train: the gradient norm is {} at step {}", st.grad_norm, step);
  st.clip_scale = std::min(1.0, clip_norm / (st.grad_norm + 1e-6));
  for (auto& p : m.params)
    adamw_update(p->w.data(), p->g.data(), p->m.data(), p->v.data(), p->w.size(), p->decay, opt, lr, st.clip_scale, step);
  return st;
}

void adamw_update(float* w, const float* g, float* m, float* v, size_t n, bool decay_on, const AdamW& opt, double lr,
                  double clip_scale, int64_t step) {
  const double bc1 = 1.0 - std::pow(opt.beta1, double(step)), bc2 = 1.0 - std::pow(opt.beta2, double(step));
  const double decay = decay_on ? 1.0 - lr * opt.weight_decay : 1.0;
  for (size_t i = 0; i < n; ++i) {
    const double gi = double(g[i]) * clip_scale;
    double mi = opt.beta1 * double(m[i]) + (1.0 - opt.beta1) * gi;
    double vi = opt.beta2 * double(v[i]) + (1.0 - opt.beta2) * gi * gi;
    if (opt.bf16_moments) {  // stored as BF16 (via FP32, as a device computing in FP32 rounds them)
      mi = double(bf16_to_float(float_to_bf16(float(mi))));
      vi = double(bf16_to_float(float_to_bf16(float(vi))));
    }
    m[i] = float(mi);
    v[i] = float(vi);
    const double update = (mi / bc1) / (std::sqrt(vi / bc2) + opt.eps);
    w[i] = float(double(w[i]) * decay - lr * update);
  }
}

void update_correction_biases(TrainModel& m, const ExpertLoads& loads, double gamma) {
  auto update = [&](const LayerParams& L) {
    if (!L.is_moe || !L.bias) return;
    const auto it = loads.find(L.gate_name);
    if (it == loads.end()) return;
    const std::vector<int64_t>& load = it->second;
    double mean = 0;
    for (int64_t v : load) mean += double(v);
    mean /= double(load.size());
    for (size_t i = 0; i < load.size(); ++i) {
      const double d = mean - double(load[i]);
      const double sign = d > 0 ? 1.0 : (d < 0 ? -1.0 : 0.0);
      L.bias->value[i] = float(double(L.bias->value[i]) + gamma * sign);
    }
  };
  for (const LayerParams& L : m.layers) update(L);
  if (m.has_mtp) update(m.mtp_layer);
}

}  // namespace moe::train
