// Data-parallel training on the device (DistributedTraining over DeviceTrainer, ZeRO-0: the gradient arena
// all-reduced, every rank's AdamW on the whole model).
//  - Two ranks as threads of this process, each with its own DeviceTrainer on GPU 0 and a ThreadCommunicator
//    (tests/ep/thread_communicator.h, a host communicator: the arena goes through all_reduce_gradients' host
//    pieces, made small here so that it takes many), against one DeviceTrainer that accumulates the same two halves
//    of each batch as two micro-batches. The MFU settings (grouped experts, flash attention, BF16 head, BF16
//    moments), train-small, fresh random tokens seeded from the clock (printed), three steps.
//    Why the bounds: rank r's pass is the reference's micro-batch r (same weights, ids and kernels), so their
//    gradients are the same bits; the reference adds micro-batch 2's terms into micro-batch 1's one product at a
//    time where the ranks add whole gradients, which only reorders FP32 additions of tensors that take several
//    terms a pass (the head from both heads, norms, embeddings): a few ulps (kGradUlps: 1e-6 relative L2). Step 1's
//    losses are the same two numbers averaged (1e-12). Later steps start from weights a few ulps apart; that moves
//    a loss by far less than 1e-6 unless a token's top-k sits on a near-tie and changes expert (~1e-4 relative of
//    the mean loss for one token of 512, as test_train_cuda_device.cpp measured): kLaterSteps 5e-4, and the
//    weights after three steps within 1e-3 relative L2 when no top-k changed (every later loss within kNoFlip 1e-6).
//    When one did (a later loss further apart), the changed token's terms differ in every gradient it reaches: its
//    experts' and router's, and through the attention its sequence's in every layer below, the embedding rows
//    included; Adam normalises each value's update (m^/sqrt(v^)), so a value whose gradient changes sign moves by
//    up to ~0.64 lr at step 3 ((0.1 / 0.271) / sqrt(0.001 / 0.003), a first nonzero gradient), i.e. up to
//    0.64 lr / 0.02 (the weights' initial RMS) = 3.2e-2 relative L2: kFlipWeights 5e-2 (seen on an H200 on seeds with
//    such a change: 2.2e-3 in the embedding, 3.1e-3 to 4.4e-3 in routers and experts; 4.1e-4 on seeds without).
//    The two ranks end with the same weights bit for bit.
//  - NCCL (when the build has it), one rank: the arena reduced in place on the step's stream keeps its values, and
//    so does the overlapped form (each layer's range reduced on a side stream during the backward, the rest after).
#include <gtest/gtest.h>

#include <chrono>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>

#include "core/thread_pool.h"
#include "dist/communicator.h"
#include "ep/thread_communicator.h"
#include "train/cuda/device_trainer.h"
#include "train/optimizer.h"
#include "train/parallel.h"
#include "train_cuda/util.h"

namespace moe::train::test {
namespace {

using cuda::DeviceTrainer;
using cuda::GemmPrecision;

constexpr double kGradUlps = 1e-6, kFirstStep = 1e-12, kLaterSteps = 5e-4, kNoFlip = 1e-6, kWeights = 1e-3,
                 kFlipWeights = 5e-2;
const std::string kConfig = "bench/configs/train-small.json";

std::unique_ptr<DeviceTrainer> fast_trainer() {
  auto g = std::make_unique<DeviceTrainer>(GemmPrecision::Bf16);
  g->set_bf16_moments(true);
  g->set_grouped_experts(true);
  g->set_attention(cuda::AttnPrecision::Flash);
  g->set_head_fp32(false);
  g->set_host_reduce_piece(100003);  // a prime: many pieces, the last one short
  return g;
}

using Tensors = std::vector<std::pair<std::string, std::vector<float>>>;
struct DpRun {
  std::vector<double> losses;
  Tensors grads1, weights;  // the averaged gradients of step 1, the weights after the last step
  std::string error;
};

Tensors grads_of(const TrainModel& m) {
  Tensors t;
  for (const auto& p : m.params) t.emplace_back(p->name, p->g);
  return t;
}
Tensors weights_of(const TrainModel& m) {
  Tensors t;
  for (const auto& p : m.params) t.emplace_back(p->name, p->w);
  return t;
}

// Per tensor: relative L2 of got against want; the worst, and its name.
// The worst relative L2 over the tensors, and its name.
std::pair<double, std::string> worst_rel(const Tensors& got, const Tensors& want) {
  EXPECT_EQ(got.size(), want.size());
  std::pair<double, std::string> w{0.0, ""};
  for (size_t i = 0; i < std::min(got.size(), want.size()); ++i) {
    EXPECT_EQ(got[i].first, want[i].first);
    const double e = rel_l2(got[i].second, want[i].second);
    if (e > w.first || std::isnan(e)) w = {e, got[i].first};
  }
  return w;
}


struct DpSetup {
  ModelConfig cfg = load_config(kConfig);
  int64_t b = 4, t = 128, steps = 3;
  uint64_t seed = uint64_t(std::chrono::system_clock::now().time_since_epoch().count());
  std::vector<std::vector<int32_t>> batches;
  Objective obj{0.3, 1e-3};
  AdamW adamw;
  DpSetup() {
    adamw.bf16_moments = true;
    for (int64_t s = 0; s < steps; ++s) batches.push_back(random_ids(cfg.vocab_size, b * t, seed + uint64_t(s)));
  }
};

// One GPU, each batch as two micro-batches of b / 2 sequences (the trainer's accumulation).
DpRun one_gpu(const DpSetup& S) {
  DpRun r;
  ThreadPool pool(2);
  auto gpu = fast_trainer();
  TrainModel m = TrainModel::init(S.cfg, kConfig, S.seed, 0.02);
  m.device = gpu.get(), m.pool = &pool;
  const int64_t half = S.b / 2;
  for (int64_t s = 1; s <= S.steps; ++s) {
    m.zero_grad();
    ExpertLoads loads;
    double loss = 0;
    for (int64_t k = 0; k < 2; ++k) {
      const auto& ids = S.batches[size_t(s - 1)];
      const std::vector<int32_t> mine(ids.begin() + k * half * S.t, ids.begin() + (k + 1) * half * S.t);
      ExpertLoads part;
      loss += forward_backward(m, mine, half, S.t, S.obj, &part).loss / 2.0;
      add_loads(loads, part);
    }
    scale_gradients(m, 0.5);
    if (s == 1) gpu->pull(m), r.grads1 = grads_of(m);
    r.losses.push_back(loss);
    adamw_step(m, S.adamw, 1e-3, 1.0, s);
    update_correction_biases(m, loads, 1e-3);
  }
  gpu->pull(m);
  r.weights = weights_of(m);
  return r;
}

// Rank `rank` of a data-parallel job over comm: DistributedTraining's step, as `moe train --dp` runs it.
DpRun dp_rank(const DpSetup& S, dist::Communicator& comm) {
  DpRun r;
  ThreadPool pool(1);
  auto gpu = fast_trainer();
  TrainModel m = TrainModel::init(S.cfg, kConfig, S.seed, 0.02);
  m.device = gpu.get(), m.pool = &pool;
  DistributedTraining dt(m, comm, ParallelOptions{});
  for (int64_t s = 1; s <= S.steps; ++s) {
    ExpertLoads loads;
    r.losses.push_back(dt.forward_backward(S.batches[size_t(s - 1)], S.b, S.t, S.obj, &loads).loss);
    if (s == 1) gpu->pull(m), r.grads1 = grads_of(m);
    dt.step(S.adamw, 1e-3, 1.0, s);
    update_correction_biases(m, loads, 1e-3);
  }
  gpu->pull(m);
  r.weights = weights_of(m);
  return r;
}

TEST(CudaDataParallel, TwoRanksMatchOneGpuAccumulatingTheSameHalves) {
  SKIP_WITHOUT_GPU();
  const DpSetup S;
  std::printf("seed %llu\n", static_cast<unsigned long long>(S.seed));
  const DpRun ref = one_gpu(S);
  moe::test::ThreadGroup group(2);
  DpRun ranks[2];
  std::vector<std::thread> threads;
  for (int r = 0; r < 2; ++r)
    threads.emplace_back([&, r] {
      moe::test::ThreadCommunicator comm(group, r);
      try {
        ranks[r] = dp_rank(S, comm);
      } catch (const std::exception& e) {
        ranks[r].error = e.what();
      }
    });
  for (auto& th : threads) th.join();
  for (const DpRun& r : ranks) ASSERT_EQ(r.error, "");

  const auto [g_err, g_name] = worst_rel(ranks[0].grads1, ref.grads1);
  EXPECT_LT(g_err, kGradUlps) << g_name;
  std::printf("step-1 averaged gradients: worst relative L2 %.3g (%s) over %zu tensors\n", g_err, g_name.c_str(),
              ref.grads1.size());
  bool flipped = false;  // a top-k changed in a later step (see the header)
  for (int64_t s = 0; s < S.steps; ++s) {
    const double rel = std::abs(ranks[0].losses[size_t(s)] - ref.losses[size_t(s)]) / std::abs(ref.losses[size_t(s)]);
    flipped = flipped || rel > kNoFlip;
    EXPECT_LT(rel, s == 0 ? kFirstStep : kLaterSteps) << "step " << s + 1;
    EXPECT_EQ(ranks[0].losses[size_t(s)], ranks[1].losses[size_t(s)]) << "step " << s + 1;
    std::printf("step %lld: loss %.12g (2 ranks) %.12g (1 GPU, 2 micro-batches): relative %.3g\n",
                static_cast<long long>(s + 1), ranks[0].losses[size_t(s)], ref.losses[size_t(s)], rel);
  }
  const auto [w_err, w_name] = worst_rel(ranks[0].weights, ref.weights);
  EXPECT_LT(w_err, flipped ? kFlipWeights : kWeights) << w_name;
  std::printf("weights after %lld steps: worst relative L2 %.3g (%s; %s)\n", static_cast<long long>(S.steps), w_err,
              w_name.c_str(), flipped ? "a top-k changed in a later step" : "no top-k changed");
  for (size_t i = 0; i < ranks[0].weights.size(); ++i)
    EXPECT_EQ(ranks[0].weights[i].second, ranks[1].weights[i].second) << ranks[0].weights[i].first;
}

TEST(CudaDataParallel, NcclOneRankKeepsTheGradients) {
  SKIP_WITHOUT_GPU();
  if (!dist::have_nccl()) GTEST_SKIP() << "this build has no NCCL";
  const DpSetup S;
  dist::SingleCommunicator single;
  dist::NcclOptions o;
  o.bootstrap = &single;
  const std::unique_ptr<dist::Communicator> nccl = dist::make_nccl_communicator(o);
  ThreadPool pool(2);
  auto gpu = fast_trainer();
  TrainModel m = TrainModel::init(S.cfg, kConfig, S.seed, 0.02);
  m.device = gpu.get(), m.pool = &pool;
  m.zero_grad();
  ExpertLoads loads;
  forward_backward(m, S.batches[0], S.b, S.t, S.obj, &loads);
  gpu->pull(m);
  const Tensors before = grads_of(m);
  gpu->all_reduce_gradients(m, *nccl);
  gpu->pull(m);
  const Tensors after = grads_of(m);
  ASSERT_EQ(before.size(), after.size());
  double norm = 0;
  for (size_t i = 0; i < before.size(); ++i) {
    EXPECT_EQ(after[i].second, before[i].second) << before[i].first;
    for (float g : before[i].second) norm += double(g) * g;
  }
  EXPECT_GT(norm, 0.0);  // gradients, not zeros
  // The overlapped form: each layer reduced on the side stream during the backward, the rest after it; the step's
  // stream waits for them (a missing wait would let pull read half-reduced values only with two ranks, but a
  // reduction issued on a range the backward has not finished would show here as a different gradient).
  m.zero_grad();
  void* const own_stream = nccl->stream();
  gpu->reduce_during_next_backward(m, *nccl);
  EXPECT_NE(nccl->stream(), own_stream);  // the side stream while the step's reductions are in flight
  forward_backward(m, S.batches[0], S.b, S.t, S.obj, &loads);
  gpu->all_reduce_gradients(m, *nccl);
  gpu->pull(m);
  const Tensors overlapped = grads_of(m);
  for (size_t i = 0; i < before.size(); ++i) EXPECT_EQ(overlapped[i].second, before[i].second) << before[i].first;
  EXPECT_EQ(nccl->stream(), own_stream);  // given back
}

}  // namespace
}  // namespace moe::train::test
