#pragma once
// The check command's driver (`moe train-steps`): a spec in the format of tests/data/tiny-train/train.json
// (config, hyper-parameters, one batch, a number of steps), run for its steps on a model, with what the
// command writes: grad.<name> of step 1, load.<gate name> of step 1, after<N>.<name> after the last step.
#include <functional>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

#include "train/model.h"
#include "train/optimizer.h"

namespace moe::train {

struct TrainSpec {
  std::string path;        // for error messages
  nlohmann::json config;   // the spec's "config" (checked against the model's config.json), may be empty
  Objective objective;
  AdamW adamw;
  LrSchedule schedule;
  double clip_norm = 1.0, bias_gamma = 1e-3;
  int64_t steps = 1;
  std::vector<int32_t> ids;  // [b, t]
  int64_t b = 0, t = 0;

  // Errors name the file and the field: missing file, bad JSON, a ragged or empty batch, bad hyper-parameters.
  static TrainSpec load(const std::string& path);
  // Every key of the spec's config that the model's config.json also has must agree; ids must be in the
  // vocabulary. `model_dir` names config.json in errors.
  void check_model(const std::string& model_dir, const ModelConfig& config) const;
};

struct StepReport {
  int64_t step = 0;
  LossParts parts;
  StepStats stats;
};

struct TrainStepsResult {
  std::vector<StepReport> steps;
  std::vector<std::pair<std::string, std::vector<float>>> step1_grads;  // (param name, gradient)
  ExpertLoads step1_loads;
};

class DistributedTraining;

// Runs the spec's steps: forward_backward, clip + AdamW, correction-bias update; on_step is called after each.
// With dist (train/parallel.h), the spec's batch is split over its ranks and the steps are distributed; the
// step-1 gradients are recorded only where every rank holds them whole (plain data parallelism, ZeRO-1), and the
// model is gathered onto every rank at the end.
TrainStepsResult run_train_steps(TrainModel& model, const TrainSpec& spec,
                                 const std::function<void(const StepReport&)>& on_step = {},
                                 DistributedTraining* dist = nullptr);
// Writes grad.<name>, load.<gate name> (F32 counts) and after<steps>.<name> (parameters and correction biases).
void write_train_steps(const std::string& path, const TrainModel& model, const TrainStepsResult& result,
                       int64_t steps);
// {"step":..,"loss":..,"main_ce":..,"mtp_ce":..,"seq_aux":..,"grad_norm":..,"clip_scale":..,"lr":..}
std::string step_json(const StepReport& r);

}  // namespace moe::train
