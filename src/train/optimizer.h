#pragma once
// One optimiser step (MODEL.md): global-norm clipping, AdamW with bias-corrected moments and decoupled weight
// decay (tensors of rank >= 2 only), the learning-rate schedule, and the auxiliary-loss-free balancing rule
// that moves each MoE layer's correction bias after the step.
#include <cstdint>

#include "train/model.h"
#include "train/params.h"

namespace moe::train {

struct AdamW {
  double beta1 = 0.9, beta2 = 0.95, eps = 1e-8, weight_decay = 0.1;
  // DeepSeek-V3 keeps the moments in BF16: each new m and v is rounded to BF16 (nearest even) when stored and the
  // update uses the stored values. The host keeps them in its float vectors (BF16-representable values, so a
  // checkpoint's F32 moments hold them exactly); a device may store them in 2 bytes (12 bytes a parameter with
  // FP32 values and gradients instead of 16).
  bool bf16_moments = false;
};

// Learning rate at step s (1-based):
//   warm-up: lr * s / warmup_steps for s <= warmup_steps;
//   then constant until decay_start, then cosine from lr down to min_lr at decay_end (and min_lr after).
// decay_start == warmup_steps gives warm-up + cosine; decay_start > warmup_steps gives DeepSeek's
// constant-then-cosine; decay_end == 0 (the default) means no decay: a constant rate after warm-up.
struct LrSchedule {
  double lr = 1e-3, min_lr = 0;
  int64_t warmup_steps = 0, decay_start = 0, decay_end = 0;
  double at(int64_t step) const;
};

struct StepStats {
  double grad_norm = 0, clip_scale = 1, lr = 0;
};

// Every gradient times s (gradient accumulation: the sum of k equal micro-batches' mean-loss gradients / k is the
// whole batch's).
void scale_gradients(TrainModel& m, double s);
// sqrt(sum of every gradient squared), in double.
double global_grad_norm(const TrainModel& m);
// Scales the gradients by min(1, clip_norm / (norm + 1e-6)) and applies AdamW step `step` (1-based) at `lr`.
StepStats adamw_step(TrainModel& m, const AdamW& opt, double lr, double clip_norm, int64_t step);
// The AdamW update of n elements (a whole tensor or a ZeRO shard of one): g is clipped by clip_scale, m and v
// are updated, w decays (when decay) and moves. adamw_step applies this to every parameter.
void adamw_update(float* w, const float* g, float* m, float* v, size_t n, bool decay, const AdamW& opt, double lr,
                  double clip_scale, int64_t step);
// e_score_correction_bias_i += gamma * sign(mean(load) - load_i) for every MoE layer whose load is given.
void update_correction_biases(TrainModel& m, const ExpertLoads& loads, double gamma);

}  // namespace moe::train
