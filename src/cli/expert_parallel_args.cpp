#include "cli/expert_parallel_args.h"

#include <cstdio>

#include "core/error.h"
#include "model/random_checkpoint.h"

namespace moe::cli {

void add_ep_options(CLI::App* cmd, EpArgs& args, bool serve) {
  cmd->add_option("--ep", args.ep,
                  "Expert parallelism over N ranks (routed experts spread over them; rank 0 writes the results): "
                  "started by hand the command starts its N ranks on this node (mpirun, or one per GPU with "
                  "--device cuda); on several nodes launch `mpirun -np N moe ... --ep N`")
      ->check(CLI::Range(1, 1 << 16));
  cmd->add_option("--gpus", args.gpus, "With --device cuda: one rank per GPU on this node, N GPUs (sets --ep N)")
      ->check(CLI::Range(1, 1 << 10));
  add_launch_options(cmd, args.launch);
  cmd->add_option("--redundant-experts", args.redundant_experts,
                  "With --ep: spare expert slots in all, holding copies of the hottest experts (EPLB); experts plus "
                  "this must be a multiple of --ep")
      ->check(CLI::Range(0, 1 << 20));
  cmd->add_flag("--dp-attention", args.dp_attention,
                "With --ep: data-parallel attention: each rank runs its own sequences (their latent cache only there) "
                "and only the MoE layers' tokens travel between ranks");
  cmd->add_flag("--two-micro-batch", args.tbo,
                "With --ep: two-micro-batch overlap: each MoE layer's tokens of a rank in two halves, one half's "
                "all-to-all in flight while the other's experts compute (same outputs)");
  cmd->add_option_function<std::string>(
         "--tbo", [&args](const std::string& v) { args.tbo = v == "on"; }, "With --ep: on|off, as --two-micro-batch")
      ->check(CLI::IsMember({"on", "off"}));
  cmd->add_flag("--ep-shared-routed", args.shared_routed,
                "With --ep: in decode steps the shared expert is one more routed expert (weight 1, copies on several "
                "ranks placed from its expected load) instead of running on every rank; --redundant-experts then "
                "counts spare slots beyond the routed experts plus the shared one");
  cmd->add_flag("--ep-fp8-dispatch", args.fp8_dispatch,
                "With --ep and FP8 experts: rows travel to their experts as E4M3 with 1x128 scales (about a quarter "
                "of the F32 bytes; outputs within E4M3 rounding)");
  cmd->add_flag(
      "--ep-all-reduce", args.all_reduce,
      "With --ep: each rank runs its experts' share of every token and one all-reduce sums the ranks' "
      "outputs (with --dp-attention: the ranks' rows all-gathered, the sums reduce-scattered back), "
      "nothing planned on the host, so GPU steps replay as CUDA graphs (sums in another F32 order than "
      "one process)");
  if (serve)
    cmd->add_option("--eplb-interval", args.eplb_interval,
                    "With --ep: recompute the expert placement from the observed load every N steps (0: never)")
        ->check(CLI::Range(int64_t(0), int64_t(1) << 40));
}

void add_random_weights_options(CLI::App* cmd, RandomWeightsArgs& args) {
  cmd->add_flag("--random-weights", args.enabled,
                "--model is a config.json: seeded random weights made in memory (as create-random writes them), no "
                "files; with --ep each rank makes only its experts");
  cmd->add_option("--random-dtype", args.dtype, "With --random-weights: bf16 or fp8")
      ->check(CLI::IsMember({"bf16", "fp8"}));
  cmd->add_option("--random-seed", args.seed, "With --random-weights: the seed (create-random's --seed)");
}

ModelConfig model_config(const std::string& model, const RandomWeightsArgs& random) {
  return random.enabled ? random_checkpoint_config(model, random.dtype == "fp8") : ModelConfig::load(model);
}

std::unique_ptr<DeepseekV3> open_model(const std::string& model, const RandomWeightsArgs& random, Backend& backend,
                                       const DeepseekV3::Options& options) {
  if (!random.enabled) return std::make_unique<DeepseekV3>(model, backend, options);
  const bool fp8 = random.dtype == "fp8";
  ModelConfig config = random_checkpoint_config(model, fp8);
  auto source = std::make_shared<RandomTensors>(config, fp8, random.seed, "random weights for " + model);
  DeepseekV3::Options o = options;
  o.progress = {};  // the progress counts bytes of every tensor up front, which would make them all
  return std::make_unique<DeepseekV3>(std::move(source), std::move(config), backend, o);
}

EpRuntime open_ep(const EpArgs& args_in, const ModelConfig& config, const std::string& device, bool count_load) {
  EpArgs args = args_in;
  const bool gpu = device.rfind("cuda", 0) == 0;
  if (args.gpus > 0) {
    if (!gpu) fail("--gpus {} needs --device cuda (one rank per GPU)", args.gpus);
    if (args.ep > 1 && args.ep != args.gpus) fail("--gpus {} and --ep {} disagree: one rank per GPU", args.gpus, args.ep);
    args.ep = args.gpus;
  }
  EpRuntime rt;
  std::vector<bool> moe_layers;
  for (int64_t i = 0; i <= config.num_hidden_layers; ++i)
    moe_layers.push_back(config.n_routed_experts > 0 && (i == config.num_hidden_layers || config.is_moe_layer(i)));
  // Counting copies each layer's choices to the host, which a captured step cannot do: not in the all-reduce
  // mode unless asked for (EPLB, serve's /metrics on the CPU).
  if (count_load || args.eplb_interval > 0 || (args.ep > 1 && !args.all_reduce)) rt.load = std::make_unique<ExpertLoadCounter>(moe_layers, int32_t(config.n_routed_experts));
  if (args.ep == 1) {
    if (args.redundant_experts > 0 || args.eplb_interval > 0 || args.dp_attention || args.tbo || args.shared_routed ||
        args.fp8_dispatch || args.all_reduce)
      fail("--redundant-experts, --eplb-interval, --dp-attention, --ep-shared-routed, --ep-fp8-dispatch, "
           "--ep-all-reduce and --tbo on need --ep N with N > 1 (expert parallelism)");
    return rt;
  }
  if (config.n_routed_experts == 0) fail("--ep {}: this model has no routed experts to spread", args.ep);
  if (args.shared_routed) {
    if (args.dp_attention) fail("--ep-shared-routed works in the replicated mode only, not with --dp-attention");
    if (args.eplb_interval > 0) fail("--ep-shared-routed does not work with --eplb-interval yet (EPLB counts routed experts only)");
    if (config.n_shared_experts != 1)
      fail("--ep-shared-routed needs a model with one shared expert of a routed expert's shape; this one has {}",
           config.n_shared_experts);
    if ((config.n_routed_experts + 1 + args.redundant_experts) % args.ep != 0)
      fail("--ep-shared-routed: {} routed experts, the shared one and {} redundant copies cannot be dealt evenly to {} "
           "ranks (choose --redundant-experts so that the sum is a multiple of --ep)",
           config.n_routed_experts, args.redundant_experts, args.ep);
  }
  if (args.all_reduce && (args.tbo || args.fp8_dispatch))
    fail(
        "--ep-all-reduce sends no all-to-all rows: not with --tbo on or --ep-fp8-dispatch (they shape those "
        "rows)");
  if (args.all_reduce && args.eplb_interval > 0)
    fail(
        "--ep-all-reduce does not work with --eplb-interval yet: a new placement reloads the experts, and "
        "the "
        "steps captured as CUDA graphs would keep reading the old ones");
  if (args.fp8_dispatch && config.fp8_block_rows == 0)
    fail("--ep-fp8-dispatch is for FP8 experts, and this model's weights are not FP8");
  launch_if_needed(args.launch, args.ep, gpu, fmt::format("--ep {}", args.ep));  // by hand: the ranks run, we end
  if (args.launch.rank >= 0) {  // a GPU rank of the launcher: NCCL through its rendezvous, on our one GPU
    dist::NcclOptions o;
    parse_rendezvous(args.launch.rendezvous, o.host, o.port);
    o.rank = args.launch.rank, o.size = args.launch.world, o.device = 0;
    rt.comm = dist::make_nccl_communicator(o);
  } else {
    if (!dist::have_mpi())
      fail("--ep {} needs MPI, and this build has none (install libopenmpi-dev and openmpi-bin, then rebuild)",
           args.ep);
    rt.comm = dist::make_mpi_communicator();
  }
  if (rt.comm->size() != args.ep)
    fail("--ep {} needs {} ranks but this job has {}: launch it as `mpirun -np {} moe ... --ep {}`", args.ep, args.ep,
         rt.comm->size(), args.ep, args.ep);
  const int32_t E = int32_t(config.n_routed_experts);
  rt.ep = std::make_unique<ExpertParallel>(
      *rt.comm,
      args.shared_routed ? ExpertPlacement::with_shared_expert(moe_layers, E, int32_t(config.num_experts_per_tok),
                                                               args.ep, args.redundant_experts)
                         : ExpertPlacement::initial(moe_layers, E, args.ep, args.redundant_experts),
      args.dp_attention ? ExpertParallel::Mode::data_parallel : ExpertParallel::Mode::replicated);
  rt.ep->set_two_micro_batch(args.tbo);
  rt.ep->set_shared_as_routed(args.shared_routed);
  rt.ep->set_fp8_dispatch(args.fp8_dispatch);
  rt.ep->set_all_reduce(args.all_reduce);
  if (rt.rank() != 0 && !std::freopen("/dev/null", "w", stdout)) fail("rank {}: cannot silence stdout", rt.rank());
  return rt;
}

}  // namespace moe::cli
