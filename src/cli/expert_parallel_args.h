#pragma once
// --ep N and its companions on the commands that run the model (logits, generate, serve, bench): the job's ranks
// (MPI, launched by `mpirun -np N`), the expert placement and the model's ExpertParallel. With --ep 1 (the
// default) nothing changes and MPI is not touched.
#include <CLI/CLI.hpp>
#include <cstdint>
#include <memory>
#include <string>

#include "cli/launcher.h"
#include "dist/communicator.h"
#include "model/deepseek_v3.h"

namespace moe::cli {

struct EpArgs {
  int32_t ep = 1;                 // --ep: ranks the routed experts are spread over (= mpirun -np)
  int32_t redundant_experts = 0;  // --redundant-experts: spare slots in all (E + this must divide by --ep)
  int64_t eplb_interval = 0;      // --eplb-interval (serve): rebalance every this many steps, 0 never
  bool dp_attention = false;      // --dp-attention: each rank its own sequences (engine/dp_attention.h)
  bool tbo = false;               // --two-micro-batch / --tbo on|off: ExpertParallel::set_two_micro_batch
  bool shared_routed = false;     // --ep-shared-routed: ExpertParallel::set_shared_as_routed
  bool fp8_dispatch = false;      // --ep-fp8-dispatch: ExpertParallel::set_fp8_dispatch
  bool all_reduce = false;        // --ep-all-reduce: ExpertParallel::set_all_reduce
  int32_t gpus = 0;               // --gpus N: with --device cuda, one rank per GPU (= --ep N)
  LaunchArgs launch;              // started by hand: the command launches its ranks (cli/launcher.h)
};
void add_ep_options(CLI::App* cmd, EpArgs& args, bool serve = false);

struct EpRuntime {
  std::unique_ptr<dist::Communicator> comm;  // null with --ep 1
  std::unique_ptr<ExpertParallel> ep;
  std::unique_ptr<ExpertLoadCounter> load;   // with --ep > 1 or when asked (serve's /metrics)
  int rank() const { return comm ? comm->rank() : 0; }
  bool root() const { return rank() == 0; }
  // The model options' ep / load.
  void apply(DeepseekV3::Options& o) const {
    o.ep = ep.get();
    o.load = load.get();
  }
};
// --random-weights: --model names a config.json (or a directory with one) and the weights are made in memory,
// seeded, as `moe create-random` would write them (each rank only its experts): full-size shapes without files.
struct RandomWeightsArgs {
  bool enabled = false;
  std::string dtype = "bf16";  // --random-dtype bf16|fp8
  uint64_t seed = 1;           // --random-seed
};
void add_random_weights_options(CLI::App* cmd, RandomWeightsArgs& args);
ModelConfig model_config(const std::string& model, const RandomWeightsArgs& random);
std::unique_ptr<DeepseekV3> open_model(const std::string& model, const RandomWeightsArgs& random, Backend& backend,
                                       const DeepseekV3::Options& options);

// With --ep N > 1: in a process started by hand, launches the job's N ranks and throws JobDone when they are done
// (cli/launcher.h); in a rank, starts MPI (or NCCL, a GPU rank of the launcher) and checks that the job has N
// ranks; on ranks other than 0 stdout goes to /dev/null (rank 0 prints the results). `device`: --device (cuda
// ranks are launched one per GPU). `count_load`: count tokens per expert even with --ep 1.
EpRuntime open_ep(const EpArgs& args, const ModelConfig& config, const std::string& device = "cpu",
                  bool count_load = false);

}  // namespace moe::cli
