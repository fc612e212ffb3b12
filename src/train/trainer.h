#pragma once
// `moe train`: a training run over tokenize-corpus data, from a fresh initialisation or a hub checkpoint, with
// validation, checkpoints in the hub layout plus the optimiser state, exact resume, and a stop on a non-finite
// loss. See docs/training.md.
#include <cstdint>
#include <functional>
#include <string>
#include <vector>

#include "train/model.h"
#include "train/optimizer.h"
#include "train/parallel.h"

namespace moe::train {

struct TrainRecipe {
  int64_t steps = 100, seq_len = 64, batch = 4;
  int64_t micro_batch = 0;  // sequences per forward/backward (0: batch); batch / micro_batch are accumulated
  int64_t batch_ramp_start = 0, batch_ramp_tokens = 0;  // the batch grows from this over the first tokens (0: none)
  double lr = 1e-3, min_lr = 0;
  int64_t warmup = 0;
  int64_t decay_start = -1;  // -1: cosine right after warm-up; larger: constant until then (DeepSeek's schedule)
  uint64_t seed = 1;
  int64_t val_every = 0, val_batches = 1, save_every = 0;
  double clip_norm = 1.0, weight_decay = 0.1, beta1 = 0.9, beta2 = 0.95, adam_eps = 1e-8;
  double mtp_lambda = 0.3, seq_aux_alpha = 1e-4, bias_gamma = 1e-3;
  double init_std = 0.006;
  std::string save_dtype = "f32";  // the model file's dtype: f32 or bf16 (F32 masters go to optimizer.safetensors)
  std::string moments = "f32";     // AdamW moments: f32 or bf16 (AdamW::bf16_moments; the checkpoint stays F32)
};

struct TrainRun {
  std::string config_path;  // fresh initialisation from this config.json, or
  std::string init_dir;     // a hub checkpoint
  std::string resume_dir;   // a checkpoint written by train (or an --out directory: its `latest`)
  std::string data_dir, out_dir;
  TrainRecipe recipe;
  int threads = 0;  // GEMM threads (0: the machine's cores); any number gives the same bits
  DeviceStep* device = nullptr;  // a device that runs the whole step (train/device_step.h); with comm: this rank's
  int64_t stop_after = 0;      // stop (with a checkpoint) after this step, as if interrupted; 0: run to the end
  // Validation MaxVio with a device step (--val-maxvio): the device's forward alone reports no expert loads, so its
  // validation batches then run through forward_backward (gradients dropped). Opt-in for that backward's cost (it
  // ran on an H200 in docs/reproductions.md's runs); on the CPU the forward reports them and validation always
  // carries val_maxvio.
  bool device_val_maxvio = false;
  int64_t fault_nan_step = 0;  // testing: poison the weights before this step, so its loss is NaN
  int64_t fault_crash_save = 0;  // testing: _exit(3) in the middle of writing this step's checkpoint
  // With resume_dir: recipe flags the user gave. Only --steps may change (extending or shortening the run, which
  // changes the schedule's cosine); any other is an error, since the checkpoint's recipe is what continues.
  std::vector<std::string> recipe_flags_given;
  // Distributed (docs/distributed.md): the ranks of this job (null: one process) and what is sharded. Every rank
  // reads the same data stream and takes its block of each micro-batch (a multiple of the ranks); rank 0 alone
  // prints and writes checkpoints, after the model and optimizer state are gathered onto every rank.
  dist::Communicator* comm = nullptr;
  ParallelOptions parallel;
};

// Runs the whole thing, printing one JSON line per step and per validation to `out`. Throws moe::Error on a
// non-finite loss, naming the step and the last good checkpoint.
void run_training(TrainRun run, const std::function<void(const std::string&)>& out);

// Writes model (config.json, model.safetensors, tokenizer files from tokenizer_dir when present) to dir:
// the hub layout `moe generate` and DeepseekV3 load. dtype "f32" or "bf16"; correction biases stay F32.
void write_hub_checkpoint(const TrainModel& model, const std::string& config_json, const std::string& tokenizer_dir,
                          const std::string& dir, const std::string& dtype);

}  // namespace moe::train
