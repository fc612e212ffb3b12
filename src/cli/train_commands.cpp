// Training commands: train-steps (the check command of issue 10: a spec's steps on one batch, with every
// gradient of step 1, the expert loads and the parameters after the last step written out).
#include <cstdio>
#include <memory>

#include "cli/commands.h"
#include "core/error.h"
#include "train/train_steps.h"

namespace moe::cli {

namespace {

void run_train_steps_command(const std::string& model_dir, const std::string& spec_path, const std::string& out_path) {
  const train::TrainSpec spec = train::TrainSpec::load(spec_path);
  train::TrainModel model = train::TrainModel::load(model_dir);
  spec.check_model(model_dir, model.config);
  const train::TrainStepsResult result = train::run_train_steps(model, spec, [](const train::StepReport& r) {
    std::printf("%s\n", train::step_json(r).c_str());
    std::fflush(stdout);
  });
  train::write_train_steps(out_path, model, result, spec.steps);
}

}  // namespace

void register_train_commands(CLI::App& app) {
  auto* cmd = app.add_subcommand("train-steps",
                                 "Run a spec's training steps on one batch (CPU, float32) and write grad.<name> of "
                                 "step 1, load.<gate name> and after<N>.<name>; one JSON line per step");
  auto model = std::make_shared<std::string>(), spec = std::make_shared<std::string>(),
       out = std::make_shared<std::string>();
  cmd->add_option("--model", *model, "checkpoint directory (config.json + safetensors)")->required();
  cmd->add_option("--spec", *spec, "SPEC.json: config, hyper, batch (the format of tests/data/tiny-train/train.json)")
      ->required();
  cmd->add_option("--out", *out, "safetensors file to write")->required();
  cmd->callback([=] { run_train_steps_command(*model, *spec, *out); });
}

}  // namespace moe::cli
