// Training commands: train-steps (the check command of issue 10: a spec's steps on one batch, with every
// gradient of step 1, the expert loads and the parameters after the last step written out), tokenize-corpus
// (text -> token shards + manifest, train/data.h), train-tokenizer (train/tokenizer_training.h) and train
// (train/trainer.h).
#include <cstdio>
#include <memory>
#include <optional>

#include "cli/commands.h"
#include "cli/launcher.h"
#include "cli/train_device.h"
#include "core/error.h"
#include "dist/communicator.h"
#include "train/parallel.h"
#include "train/bench.h"
#include "train/data.h"
#include "train/tokenizer_training.h"
#include "train/train_steps.h"
#include "train/trainer.h"

namespace moe::cli {

namespace {

// --dp N, --ep, --zero K (docs/distributed.md): a job of N MPI ranks started by `mpirun -np N`.
struct ParallelFlags {
  int dp = 1;
  train::ParallelOptions options;
  LaunchArgs launch;  // started by hand: the command launches its ranks under mpirun (cli/launcher.h)
};

// --device, --gemm and the CUDA trainer's precision and kernel choices (train_device.h), for train and train-bench.
void add_train_device_flags(CLI::App* cmd, TrainDeviceOptions& o) {
  cmd->add_option("--device", o.device, "cpu or cuda: where the training step runs (cpu)");
  cmd->add_option("--gemm", o.gemm, "--device cuda's GEMM operands: bf16 (mixed precision), fp8 (DeepSeek-V3's E4M3 "
                  "scheme, docs/training.md) or fp32 (bf16)");
  cmd->add_option("--expert-gemm", o.expert_gemm, "--device cuda, bf16 and fp8: the routed experts' GEMMs grouped (one "
                  "grouped wgmma GEMM a product; under fp8 the forward and input-gradient products FP8, the weight "
                  "gradients BF16) or loop (one GEMM per expert and product, FP8 ones under fp8) (grouped)");
  cmd->add_option(
      "--fp8-expert-weights", o.fp8_expert_weights,
      "--device cuda --gemm fp8: the routed experts' E4M3 weights in both layouts, or only the forward one "
      "with the input-gradient layout transposed per layer in the backward, ahead of it on a side stream "
      "(half "
      "that memory: for models whose FP8 copies do not fit otherwise), or a number N: both layouts in the "
      "first "
      "N MoE layers, the forward one in the rest (both)");
  cmd->add_option("--attention", o.attention, "--device cuda: the attention's score and value GEMMs in fp32 (no TF32), "
                  "tf32 or bf16 (operands rounded to BF16, FP32 accumulation), or flash (fused kernels with bf16's "
                  "roundings: no [t, t] scores kept, the causal upper triangle skipped) (fp32)");
  cmd->add_option("--head", o.head, "--device cuda: the output heads' GEMMs with fp32 or bf16 operands (FP32 "
                  "accumulation; never FP8) (fp32)");
}

void add_parallel_flags(CLI::App* cmd, ParallelFlags& f) {
  cmd->add_option("--dp", f.dp, "data-parallel ranks: started by hand the command starts its N ranks on this node "
                  "(MPI ranks; with --device cuda one per GPU, NCCL); on several nodes launch `mpirun -np N moe ... "
                  "--dp N` (1)")
      ->check(CLI::PositiveNumber);
  add_launch_options(cmd, f.launch);
  cmd->add_flag("--ep", f.options.ep, "expert parallelism: the routed experts sharded over the --dp ranks");
  cmd->add_option("--zero", f.options.zero,
                  "0: plain data parallelism; 1: AdamW moments and update sharded over the ranks; 2: and the "
                  "gradients reduce-scattered; 3: and the parameters sharded between steps, gathered per layer "
                  "(0)")
      ->check(CLI::Range(0, 3));
}

// Null for one process; the job's communicator for --dp N, which must be the number of ranks started. Started by
// hand (not under mpirun), the process launches the N ranks instead and ends with their status: under mpirun, or
// with gpu (--device cuda) one process per GPU of this node, whose ranks talk NCCL through the launcher's
// rendezvous. Under mpirun the ranks talk MPI whatever the device (GPU ranks then reduce through host memory).
std::unique_ptr<dist::Communicator> job_communicator(const ParallelFlags& f, const char* command, bool gpu = false) {
  if (f.dp <= 1) return nullptr;
  launch_if_needed(f.launch, f.dp, gpu, fmt::format("{} --dp {}", command, f.dp));
  std::unique_ptr<dist::Communicator> c;
  if (f.launch.rank >= 0) {
    dist::NcclOptions o;
    parse_rendezvous(f.launch.rendezvous, o.host, o.port);
    o.rank = f.launch.rank, o.size = f.launch.world, o.device = 0;  // the launcher shows each rank its GPU alone
    c = dist::make_nccl_communicator(o);
  } else {
    c = dist::make_mpi_communicator();
  }
  MOE_CHECK(c->size() == f.dp, "{}: --dp {} runs as {} MPI ranks, but this job has {}: launch it with mpirun -np {} "
            "(docs/distributed.md)", command, f.dp, f.dp, c->size(), f.dp);
  return c;
}

// Which GPU of the node this process takes (TrainDeviceOptions::local_rank): mpirun's ranks of a node share its
// GPUs, one each by their local rank; one process, and each of the launcher's GPU ranks (shown its GPU alone), 0.
int gpu_local_rank(const ParallelFlags& f, const dist::Communicator* comm) {
  return comm && f.launch.rank < 0 && f.launch.ompi_local_rank > 0 ? int(f.launch.ompi_local_rank) : 0;
}

void run_train_steps_command(const std::string& model_dir, const std::string& spec_path, const std::string& out_path,
                             const ParallelFlags& flags) {
  const std::unique_ptr<dist::Communicator> comm = job_communicator(flags, "train-steps");  // first: may launch
  const train::TrainSpec spec = train::TrainSpec::load(spec_path);
  train::TrainModel model = train::TrainModel::load(model_dir);
  spec.check_model(model_dir, model.config);
  std::optional<train::DistributedTraining> dist;
  if (comm) dist.emplace(model, *comm, flags.options);
  const bool speaker = !comm || comm->rank() == 0;
  const train::TrainStepsResult result = train::run_train_steps(
      model, spec,
      [speaker](const train::StepReport& r) {
        if (!speaker) return;
        std::printf("%s\n", train::step_json(r).c_str());
        std::fflush(stdout);
      },
      dist ? &*dist : nullptr);
  if (speaker) train::write_train_steps(out_path, model, result, spec.steps);
  if (comm) comm->barrier();
}

}  // namespace

void register_train_commands(CLI::App& app) {
  {
    auto* cmd = app.add_subcommand("train-tokenizer",
                                   "Train a byte-level BPE tokenizer (DeepSeek-V3's pre-tokenizer and special tokens) "
                                   "on text files or JSONL with a \"text\" field per line");
    auto opts = std::make_shared<train::TokenizerTrainingOptions>();
    auto files = std::make_shared<std::vector<std::string>>();
    cmd->add_option("--template", opts->template_dir,
                    "tokenizer directory whose pipeline and special tokens the new one keeps")
        ->capture_default_str();
    cmd->add_option("--out", opts->out_dir, "output directory (tokenizer.json, tokenizer_config.json)")->required();
    cmd->add_option("--vocab-size", opts->bpe.vocab_size, "tokens in all: special + 256 bytes + merges")
        ->capture_default_str();
    cmd->add_option("--min-frequency", opts->bpe.min_frequency, "pairs seen fewer times are not merged")
        ->capture_default_str();
    cmd->add_option("files", *files, "input files (.jsonl: one {\"text\": ...} per line)")->required();
    cmd->callback([=] {
      const BpeTrainStats st = train::train_tokenizer(*files, *opts);
      std::printf("%lld documents, %lld pre-tokens (%lld distinct): %d special tokens + 256 bytes + %d merges = %d "
                  "tokens in %s\n",
                  (long long)st.documents, (long long)st.pre_tokens, (long long)st.distinct_words, st.special_tokens,
                  st.merges, st.vocab_size, opts->out_dir.c_str());
    });
  }
  {
    auto* cmd = app.add_subcommand("tokenize-corpus",
                                   "Tokenize text files (one document each, or JSONL with a \"text\" field per line) "
                                   "into token shards with a validation split and manifest.json");
    auto opts = std::make_shared<train::CorpusOptions>();
    auto files = std::make_shared<std::vector<std::string>>();
    cmd->add_option("--tokenizer", opts->tokenizer_dir, "directory with tokenizer.json (and tokenizer_config.json)")
        ->required();
    cmd->add_option("--out", opts->out_dir, "output directory")->required();
    cmd->add_flag("--sft", opts->sft,
                  "supervised fine-tuning data: JSONL of {\"messages\": [...]}, rendered with the tokenizer's chat "
                  "template; only the assistant turns carry loss");
    cmd->add_option("--val-fraction", opts->val_fraction, "fraction of documents held out for validation (0)");
    cmd->add_option("--shard-tokens", opts->shard_tokens, "tokens per shard before starting a new one (16M)");
    opts->threads = 0;
    cmd->add_option("--threads", opts->threads,
                    "tokenizer threads (0: every core; the output is the same bytes for any number)");
    cmd->add_option("--fim-rate", opts->fim_rate,
                    "fill-in-the-middle: the fraction of training documents marked {\"code\": true} rearranged "
                    "into DeepSeek-Coder's PSM form (0)");
    cmd->add_option("--fim-seed", opts->fim_seed, "seed of the FIM draws (which documents, where the cuts fall) (0)");
    cmd->add_option("files", *files, "input files (.jsonl: one {\"text\": ...} per line)")->required();
    cmd->callback([=] {
      const train::CorpusStats st = train::tokenize_corpus(*files, *opts);
      std::printf("train: %lld documents, %lld tokens, %lld shards; val: %lld documents, %lld tokens, %lld shards\n",
                  (long long)st.documents[0], (long long)st.tokens[0], (long long)st.shards[0],
                  (long long)st.documents[1], (long long)st.tokens[1], (long long)st.shards[1]);
      if (opts->fim_rate > 0)
        std::printf("fim: %lld of %lld training code documents in PSM form (rate %g, seed %llu)\n",
                    (long long)st.fim_documents, (long long)st.code_documents, opts->fim_rate,
                    (unsigned long long)opts->fim_seed);
      const double tokens = double(st.tokens[0] + st.tokens[1]);
      std::printf("%.0f tokens in %.2f s on %d threads: %.0f tokens/s (the tokenizer's load not counted)\n", tokens,
                  st.seconds, st.threads, st.seconds > 0 ? tokens / st.seconds : 0.0);
    });
  }
  {
    auto* cmd = app.add_subcommand("train", "Train a model (float32 masters; CPU, or --device cuda) on tokenize-corpus data; one JSON line per "
                                   "step; checkpoints in the hub layout plus the optimiser state; --resume continues "
                                   "exactly");
    auto run = std::make_shared<train::TrainRun>();
    auto& r = run->recipe;
    cmd->add_option("--config", run->config_path, "config.json: a fresh random initialisation");
    cmd->add_option("--init", run->init_dir, "start from this hub checkpoint");
    cmd->add_option("--resume", run->resume_dir, "continue from a checkpoint written by train (or its --out dir)");
    cmd->add_option("--data", run->data_dir, "tokenize-corpus output directory");
    cmd->add_option("--out", run->out_dir, "directory for checkpoints (step-NNNNNNNN/ and latest)");
    cmd->add_option("--steps", r.steps, "optimiser steps in all (100)");
    cmd->add_option("--seq-len", r.seq_len, "tokens per sequence (64)");
    cmd->add_option("--batch", r.batch, "sequences per optimiser step (4; the ramp's end)");
    cmd->add_option("--micro-batch", r.micro_batch,
                    "sequences per forward/backward; --batch / this are accumulated into one step (default --batch)");
    cmd->add_option("--batch-ramp-start", r.batch_ramp_start,
                    "sequences per step at the start; grows linearly to --batch over --batch-ramp-tokens (0: no ramp)");
    cmd->add_option("--batch-ramp-tokens", r.batch_ramp_tokens, "training tokens over which the batch ramps up");
    cmd->add_option("--lr", r.lr, "peak learning rate (1e-3)");
    cmd->add_option("--min-lr", r.min_lr, "learning rate at the end of the cosine decay (0)");
    cmd->add_option("--warmup", r.warmup, "linear warm-up steps (0)");
    cmd->add_option("--decay-start", r.decay_start, "constant rate until this step, then cosine (default: warm-up end)");
    cmd->add_option("--seed", r.seed, "initialisation and data-order seed (1)");
    cmd->add_option("--val-every", r.val_every, "validation loss every N steps (0: never)");
    cmd->add_option("--val-batches", r.val_batches, "micro-batches of validation data per evaluation (1)");
    cmd->add_option("--save-every", r.save_every, "checkpoint every N steps (0: only at the end)");
    cmd->add_option("--clip-norm", r.clip_norm, "global gradient-norm clip (1.0)");
    cmd->add_option("--weight-decay", r.weight_decay, "AdamW decoupled weight decay (0.1)");
    cmd->add_option("--beta1", r.beta1, "AdamW beta1 (0.9)");
    cmd->add_option("--beta2", r.beta2, "AdamW beta2 (0.95)");
    cmd->add_option("--mtp-lambda", r.mtp_lambda, "MTP loss weight (0.3)");
    cmd->add_option("--seq-aux-alpha", r.seq_aux_alpha, "sequence-wise balance loss weight (1e-4)");
    cmd->add_option("--bias-gamma", r.bias_gamma, "correction-bias update speed (1e-3)");
    cmd->add_option("--init-std", r.init_std, "std of the fresh initialisation's matrices (0.006, DeepSeek-V3's)");
    cmd->add_option("--save-dtype", r.save_dtype, "model file dtype: f32 or bf16 (masters then go with the optimiser)");
    cmd->add_option("--moments", r.moments, "AdamW moments: f32 or bf16 (DeepSeek-V3's; rounded to BF16 when stored, on "
                    "the CPU too; checkpoints keep F32 tensors) (f32)");
    cmd->add_option("--threads", run->threads, "threads for the GEMMs (0: every core; the results are the same bits)");
    auto dev_opts = std::make_shared<TrainDeviceOptions>();
    add_train_device_flags(cmd, *dev_opts);
    cmd->add_option("--stop-after", run->stop_after, "stop after this step with a checkpoint, as if interrupted");
    cmd->add_flag("--val-maxvio", run->device_val_maxvio,
                  "--device cuda: also report expert balance (val_maxvio) on validation batches (the CPU always does)");
    auto parallel = std::make_shared<ParallelFlags>();
    add_parallel_flags(cmd, *parallel);
    cmd->add_flag("--check-finite", dev_opts->check_finite,
                  "--device cuda: check every layer's activations and gradients for NaN or infinity each step and stop "
                  "naming the first tensor that has them (slower: one more sync per step)");
    cmd->add_option("--fault-nan-step", run->fault_nan_step, "testing: make this step's loss NaN")->group("");
    cmd->add_option("--fault-crash-save", run->fault_crash_save, "testing: die while writing this step's checkpoint")
        ->group("");
    cmd->callback([=] {
      for (const char* flag : {"--steps", "--seq-len", "--batch", "--micro-batch", "--batch-ramp-start",
                               "--batch-ramp-tokens", "--lr", "--min-lr", "--warmup", "--decay-start",
                               "--seed", "--val-every", "--val-batches", "--save-every", "--clip-norm",
                               "--weight-decay", "--beta1", "--beta2", "--mtp-lambda", "--seq-aux-alpha",
                               "--bias-gamma", "--init-std", "--save-dtype", "--moments"})
        if (cmd->count(flag) > 0) run->recipe_flags_given.push_back(flag);
      const bool gpu = dev_opts->device == "cuda";
      MOE_CHECK(!gpu || (parallel->options.zero == 0 && !parallel->options.ep),
                "train: --device cuda trains data-parallel (--dp N: one rank per GPU, gradients all-reduced on the "
                "GPUs) with --zero 0 and without --ep; sharded optimizer state and expert parallelism run on the CPU "
                "only");
      const std::unique_ptr<dist::Communicator> comm = job_communicator(*parallel, "train", gpu);
      run->comm = comm.get();
      run->parallel = parallel->options;
      dev_opts->local_rank = gpu_local_rank(*parallel, comm.get());
      const TrainDevice dev = make_train_device(*dev_opts);
      run->device = dev.step.get();
      train::run_training(*run, [](const std::string& line) {
        std::printf("%s\n", line.c_str());
        std::fflush(stdout);
      });
    });
  }
  {
    auto* cmd = app.add_subcommand("train-bench", "Training tokens/s on the CPU or --device cuda (a fresh model of --config, "
                                   "random tokens) and the fraction of the device's GEMM rate measured in the same run");
    auto o = std::make_shared<train::TrainBenchOptions>();
    cmd->add_option("--config", o->config_path, "config.json of the model to train")->required();
    cmd->add_option("--seq-len", o->seq_len, "tokens per sequence (64)");
    cmd->add_option("--batch", o->batch, "sequences per step (4)");
    cmd->add_option("--steps", o->steps, "timed steps after one warm-up step (3)");
    cmd->add_option("--threads", o->threads, "threads (0: every core)");
    auto dev_opts = std::make_shared<TrainDeviceOptions>();
    add_train_device_flags(cmd, *dev_opts);
    cmd->add_option("--moments", o->moments, "AdamW moments: f32 or bf16 (f32)");
    cmd->add_option("--micro-batch", o->micro_batch,
                    "sequences per forward/backward; --batch / this are accumulated into one optimiser step (default "
                    "--batch)");
    cmd->add_flag("--profile", o->profile, "--device cuda: the device time of each op class (GEMMs, attention, MoE "
                  "dispatch, elementwise, optimizer, host waits) over the timed steps");
    auto parallel = std::make_shared<ParallelFlags>();
    cmd->add_option("--dp", parallel->dp, "data-parallel ranks, each running --batch sequences a step (its own random "
                    "tokens), gradients all-reduced: started by hand the command starts its N ranks on this node (with "
                    "--device cuda one per GPU, NCCL); fraction_of_gemm is then per rank (1)")
        ->check(CLI::PositiveNumber);
    add_launch_options(cmd, parallel->launch);
    cmd->callback([=] {
      const std::unique_ptr<dist::Communicator> comm = job_communicator(*parallel, "train-bench",
                                                                        dev_opts->device == "cuda");
      dev_opts->local_rank = gpu_local_rank(*parallel, comm.get());
      o->comm = comm.get();
      const TrainDevice dev = make_train_device(*dev_opts);
      o->step = dev.step.get();
      o->log = [](const std::string& line) { std::fprintf(stderr, "%s\n", line.c_str()); };
      o->device = dev.name;
      o->device_gemm_gflops = dev.gemm_gflops;
      o->attention = dev_opts->attention == "flash"  ? train::PlanAttention::Flash
                     : dev_opts->attention == "bf16" ? train::PlanAttention::GemmBf16
                                                     : train::PlanAttention::Gemm;
      const int64_t both_layers = fp8_expert_both_layers(dev_opts->fp8_expert_weights);
      o->gemm = dev_opts->gemm != "fp8" ? train::PlanGemm::Bf16
                : both_layers >= 0      ? train::PlanGemm::Fp8ForwardExperts
                                        : train::PlanGemm::Fp8;
      o->fp8_expert_both_layers = std::max<int64_t>(both_layers, 0);
      const train::TrainBenchResult r = train::run_train_bench(*o);
      if (comm && comm->rank() != 0) return;  // rank 0 reports
      std::printf("%s\n", train::bench_json(r).c_str());
      if (dev.gemm_summary && !dev.gemm_summary().empty()) std::fprintf(stderr, "%s\n", dev.gemm_summary().c_str());
    });
  }
  auto* cmd = app.add_subcommand("train-steps",
                                 "Run a spec's training steps on one batch (CPU, float32) and write grad.<name> of "
                                 "step 1, load.<gate name> and after<N>.<name>; one JSON line per step");
  auto model = std::make_shared<std::string>(), spec = std::make_shared<std::string>(),
       out = std::make_shared<std::string>();
  cmd->add_option("--model", *model, "checkpoint directory (config.json + safetensors)")->required();
  cmd->add_option("--spec", *spec, "SPEC.json: config, hyper, batch (the format of tests/data/tiny-train/train.json)")
      ->required();
  cmd->add_option("--out", *out, "safetensors file to write (by rank 0; grad.* only where the ranks hold whole "
                 "gradients: not with --ep or --zero 2)")->required();
  auto parallel = std::make_shared<ParallelFlags>();
  add_parallel_flags(cmd, *parallel);
  cmd->callback([=] { run_train_steps_command(*model, *spec, *out, *parallel); });
}

}  // namespace moe::cli
