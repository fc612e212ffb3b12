#pragma once
// The whole-step device seam (issue 11, v2): a device that keeps the parameters, gradients, AdamW moments and
// activations of a TrainModel resident in its own memory and runs the whole training step there. When
// TrainModel::device is set, forward_backward, forward_loss, TrainModel::zero_grad, scale_gradients,
// global_grad_norm and adamw_step hand their work to it, so the trainer loop, train-steps and train-bench are
// the CPU trainer's code unchanged. The host TrainModel stays the checkpoint's truth for what is read or written
// between steps: `pull` copies the device's state (values, gradients, moments) into it (before a checkpoint or a
// comparison), `push` copies it to the device (after the host changed it: a resume, a test's poisoning). The
// correction biases are host-owned (moved by update_correction_biases from the loads the step reports) and sent
// with every forward.
#include <cstdint>
#include <string>
#include <utility>
#include <vector>

#include "train/model.h"
#include "train/optimizer.h"

namespace moe::dist {
class Communicator;
}

namespace moe::train {

// What a step takes of the device's memory, from cudaMemGetInfo (bytes): free before the arenas were allocated,
// and the most in use since then (arenas, activations, workspaces), sampled at the step's host syncs.
struct DeviceMemory {
  double total = 0, free_before = 0, peak_used = 0;
};

class DeviceStep {
 public:
  virtual ~DeviceStep() = default;
  virtual LossParts forward_backward(TrainModel& m, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                                     const Objective& obj, ExpertLoads* loads, const std::vector<uint8_t>* mask) = 0;
  virtual LossParts forward_loss(TrainModel& m, const std::vector<int32_t>& ids, int64_t b, int64_t t,
                                 const Objective& obj, const std::vector<uint8_t>* mask) = 0;
  virtual void zero_grad(TrainModel& m) = 0;
  virtual void scale_gradients(TrainModel& m, double s) = 0;
  virtual double global_grad_norm(TrainModel& m) = 0;
  virtual StepStats adamw_step(TrainModel& m, const AdamW& opt, double lr, double clip_norm, int64_t step) = 0;
  virtual void pull(TrainModel& m) = 0;
  virtual void push(TrainModel& m) = 0;
  // Throws moe::Error, before anything is allocated, when `parameters` values with their gradients and two
  // moments (16 bytes each, 12 with BF16 moments) cannot fit in the device's free memory.
  virtual void check_fits(int64_t parameters) = 0;
  // How the device stores the AdamW moments (AdamW::bf16_moments): set before the first step; adamw_step checks
  // that its AdamW agrees.
  virtual void set_bf16_moments(bool bf16) = 0;
  virtual DeviceMemory memory() = 0;
  // Device time by op class (the class's name, milliseconds) since set_profile(true), which zeroes it.
  virtual void set_profile(bool on) = 0;
  virtual std::vector<std::pair<std::string, double>> profile_ms() = 0;
  // Waits until everything queued on the device has run (a benchmark's clock stops after it).
  virtual void synchronize() = 0;
  // Data parallelism (DistributedTraining, ZeRO-0): every gradient summed over the ranks of `comm`, in place on the
  // device. NCCL reduces the gradient arena where it lies, on the step's stream; other communicators (MPI, a test's
  // threads) reduce it through host memory in pieces. The caller scales by 1 / ranks.
  virtual void all_reduce_gradients(TrainModel& m, dist::Communicator& comm) = 0;
  // Overlap for the step's last micro-batch (NCCL only; other communicators: nothing): its backward all-reduces each
  // decoder layer's gradients over `comm` as soon as that layer's backward is done, on a side stream, while the
  // layers below it run; the all_reduce_gradients that follows reduces only the rest (embedding, heads, norms, the
  // MTP module) and makes the step's stream wait for every reduction. Every rank must make the same calls.
  virtual void reduce_during_next_backward(TrainModel& m, dist::Communicator& comm) = 0;
};

}  // namespace moe::train
