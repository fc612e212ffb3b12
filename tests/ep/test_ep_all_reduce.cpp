// Expert parallelism's all-reduce mode (ExpertParallel::set_all_reduce, `--ep-all-reduce`): every rank runs its
// own experts' share of every token (Backend::moe_local_choices turns the other ranks' choices into id -1 with
// weight 0, which moe_experts skips), rank layer mod R computes and adds the shared experts' output, and an
// all-reduce sums the ranks' partial outputs. Against one process the only change is the F32 summation order of a token's k expert terms
// (grouped by rank, then summed across ranks), about (k + 2) * 2^-24 relative per MoE layer, so the logits stay
// within the 1e-5 bound of the other EP modes and the greedy tokens agree. Every rank gets the same bits (the
// all-reduce's sum is the same on all ranks), so the replicated attention stays identical across ranks.
// CPU ranks are threads (thread_communicator.h); the CUDA tests are skipped visibly without a GPU.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <numeric>
#include <random>

#include "backend/backend.h"
#include "core/error.h"
#include "cuda/cuda_test_util.h"
#include "dist/communicator.h"
#include "engine/step_executor.h"
#include "ep/ep_test_util.h"
#include "ep/model_steps.h"
#include "ep/thread_communicator.h"
#include "model/deepseek_v3.h"
#include "model/expert_parallel.h"
#include "test_util.h"

namespace moe {
namespace {

using test::error_of;
using test::max_rel_diff;
using test::moe_layers;
using test::run_steps;
using test::Steps;

struct Param {
  std::string model;
  int ranks, redundant;
  bool shared;  // the shared expert as a routed one in decode steps
};

class AllReduceRanks : public ::testing::TestWithParam<Param> {};

TEST_P(AllReduceRanks, LogitsMatchOneProcess) {
  const Param p = GetParam();
  const std::vector<int32_t> prompt = test::load_reference_cases().at(2).input_ids;
  constexpr int kDecode = 6;
  const ModelConfig config = ModelConfig::load(p.model);
  const int32_t E = int32_t(config.n_routed_experts), K = int32_t(config.num_experts_per_tok);
  auto backend = make_cpu_backend();
  Steps single;
  {
    DeepseekV3 model(p.model, *backend);
    single = run_steps(model, prompt, kDecode);
  }
  std::vector<Steps> got(size_t(p.ranks));
  test::run_ranks(p.ranks, [&](dist::Communicator& comm) {
    auto b = make_cpu_backend({.threads = 1});
    ExpertPlacement placement = p.shared
                                    ? ExpertPlacement::with_shared_expert(moe_layers(config), E, K, p.ranks, p.redundant)
                                    : ExpertPlacement::initial(moe_layers(config), E, p.ranks, p.redundant);
    ExpertParallel ep(comm, std::move(placement));
    ep.set_shared_as_routed(p.shared);
    ep.set_all_reduce(true);
    DeepseekV3 model(p.model, *b, {.ep = &ep});
    got[size_t(comm.rank())] = run_steps(model, prompt, kDecode);
  });
  // The all-reduce's volume: per MoE layer of each step, 2 (R - 1) / R of the [T, D] F32 output.
  int64_t n_moe = 0;
  for (int64_t i = 0; i < config.num_hidden_layers; ++i) n_moe += config.is_moe_layer(i) ? 1 : 0;
  uint64_t want_bytes = 0;
  for (int64_t T : {int64_t(prompt.size()), int64_t(1)})
    want_bytes += uint64_t(n_moe) * (T == 1 ? kDecode : 1) *
                  (uint64_t(T * config.hidden_size) * sizeof(float) * 2 * uint64_t(p.ranks - 1) / uint64_t(p.ranks));
  for (int r = 0; r < p.ranks; ++r) {
    const double d = max_rel_diff(got[size_t(r)].logits, single.logits);
    std::printf("rank %d: all-reduce mode vs one process %.3e\n", r, d);
    RecordProperty("rank" + std::to_string(r) + ".max_rel", std::to_string(d));
    EXPECT_LE(d, 1e-5) << "rank " << r;
    EXPECT_EQ(got[size_t(r)].greedy, single.greedy) << "rank " << r;
    EXPECT_EQ(got[size_t(r)].logits, got[0].logits) << "rank " << r << ": the ranks' logits differ";
    EXPECT_EQ(got[size_t(r)].bytes, want_bytes) << "rank " << r;
  }
}

INSTANTIATE_TEST_SUITE_P(Ranks, AllReduceRanks,
                         ::testing::Values(Param{test::kTinyModel, 2, 0, false}, Param{test::kTinyModel, 4, 4, false},
                                           Param{test::kTinyModelFp8, 2, 2, false},
                                           Param{test::kTinyModel, 2, 1, true}),
                         [](const auto& info) {
                           const Param& p = info.param;
                           return std::string(p.model == test::kTinyModel ? "bf16" : "fp8") + "_np" +
                                  std::to_string(p.ranks) + "_redundant" + std::to_string(p.redundant) +
                                  (p.shared ? "_shared" : "");
                         });

// moe_local_choices over every rank's slot table: each choice is local on exactly one rank, the one holding copy
// t mod copies of its expert, at that copy's local slot, with its weight; elsewhere -1 with weight 0. An id -1 in
// (no expert) stays -1 on every rank.
TEST(AllReduceMode, LocalChoicesTakeEachChoiceOnce) {
  const ModelConfig config = ModelConfig::load(test::kTinyModel);
  const int32_t E = int32_t(config.n_routed_experts), R = 4;
  const ExpertPlacement placement = ExpertPlacement::initial(moe_layers(config), E, R, 12);  // 1-2 copies each
  const int64_t layer = 1, T = 9, K = config.num_experts_per_tok;
  ASSERT_FALSE(placement.layers[size_t(layer)].empty());
  std::mt19937_64 rng(test::time_seed("local choices"));
  Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
  for (int64_t a = 0; a < T * K; ++a) {
    ids.as<int32_t>()[a] = a % 7 == 3 ? -1 : int32_t(rng() % uint64_t(E));
    w.as<float>()[a] = float(rng() % 1000 + 1) / 1000.0f;
  }
  auto backend = make_cpu_backend({.threads = 1});
  std::vector<int> takers(size_t(T * K), 0);
  test::run_ranks(R, [&](dist::Communicator& comm) {
    ExpertParallel ep(comm, placement);
    ep.set_all_reduce(true);
    // The table through the public path: one MoE layer's choices, as run_all_reduce makes them.
    const LayerPlacement& P = placement.layers[size_t(layer)];
    int64_t L = 1;
    for (const auto& reps : P.replicas) L = std::lcm(L, int64_t(reps.size()));
    Tensor table = Tensor::host(DType::I32, {E, L});
    for (int32_t e = 0; e < E; ++e)
      for (int64_t c = 0; c < L; ++c) {
        const int32_t slot = P.replicas[size_t(e)][size_t(c) % P.replicas[size_t(e)].size()];
        table.as<int32_t>()[e * L + c] = slot / placement.slots_per_rank == comm.rank() ? slot % placement.slots_per_rank : -1;
      }
    Tensor lid = Tensor::host(DType::I32, {T, K}), lw = Tensor::host(DType::F32, {T, K});
    backend->moe_local_choices(ids, w, table, lid, lw);
    const std::vector<int32_t> local = placement.local_experts(size_t(layer), comm.rank());
    for (int64_t a = 0; a < T * K; ++a) {
      const int32_t s = lid.as<int32_t>()[a], e = ids.as<int32_t>()[a];
      if (e < 0) {
        EXPECT_EQ(s, -1) << "choice " << a;
        EXPECT_EQ(lw.as<float>()[a], 0.0f);
        continue;
      }
      const auto& reps = P.replicas[size_t(e)];
      const int32_t copy = reps[size_t(a / K) % reps.size()];
      if (s >= 0) {
        EXPECT_EQ(local[size_t(s)], e) << "choice " << a;
        EXPECT_EQ(copy, comm.rank() * placement.slots_per_rank + s) << "choice " << a;
        EXPECT_EQ(lw.as<float>()[a], w.as<float>()[a]);
        __atomic_add_fetch(&takers[size_t(a)], 1, __ATOMIC_RELAXED);
      } else {
        EXPECT_EQ(s, -1);
        EXPECT_EQ(lw.as<float>()[a], 0.0f);
        EXPECT_NE(copy / placement.slots_per_rank, comm.rank()) << "choice " << a;
      }
    }
  });
  for (int64_t a = 0; a < T * K; ++a) EXPECT_EQ(takers[size_t(a)], a % 7 == 3 ? 0 : 1) << "choice " << a;
}

// moe_experts with some choices -1 (weight 0) equals plus + the remaining choices' weighted expert outputs, each
// from the CPU's swiglu_mlp on its token alone. CPU: another F32 order of the same terms (1e-6 relative). CUDA at
// Moonlight's widths: 1 token (the fused GEMV over the ids with its combine: F32 x on the CUDA cores, 1e-4), 5
// (the plan's GEMV tiles on the tensor cores, x in BF16: 5e-3) and 80 (the grouped GEMM, BF16 operands: 1e-2),
// test::gemv_bound's reasoning.
void expect_skipped_choices(Backend& backend, const char* what, int64_t D, int64_t I, std::vector<int64_t> Ts) {
  std::mt19937_64 rng(test::time_seed(what));
  constexpr int64_t E = 8, K = 4;
  std::vector<Tensor> host_w;
  ExpertWeights experts, on_backend;
  for (int64_t e = 0; e < E; ++e) {
    MlpWeights m;
    for (Weight* w : {&m.gate, &m.up, &m.down}) {
      const bool down = w == &m.down;
      host_w.push_back(test::random_host(rng, DType::BF16, {down ? D : I, down ? I : D}, 1.0f / std::sqrt(float(D))));
      w->w = host_w.back().view();
    }
    experts.experts.push_back(m);
    on_backend.experts.push_back(
        MlpWeights{backend.upload_weight(m.gate), backend.upload_weight(m.up), backend.upload_weight(m.down)});
  }
  backend.prepare_experts(on_backend);
  auto cpu = make_cpu_backend({.threads = 2});
  for (int64_t T : Ts) {
    Tensor x = test::random_host(rng, DType::F32, {T, D}), plus = test::random_host(rng, DType::F32, {T, D});
    Tensor ids = Tensor::host(DType::I32, {T, K}), w = Tensor::host(DType::F32, {T, K});
    std::vector<double> ref(size_t(T * D));
    for (int64_t i = 0; i < T * D; ++i) ref[size_t(i)] = plus.as<float>()[i];
    for (int64_t a = 0; a < T * K; ++a) {
      const bool skip = a % 3 == 1 || a == 0;
      ids.as<int32_t>()[a] = skip ? -1 : int32_t((a * 5 + T) % E);
      w.as<float>()[a] = skip ? 0.0f : float(rng() % 1000 + 1) / 1000.0f;
      if (skip) continue;
      Tensor y = Tensor::host(DType::F32, {1, D});
      cpu->swiglu_mlp(x.view().slice_rows(a / K, 1), experts.experts[size_t(ids.as<int32_t>()[a])], y);
      for (int64_t d = 0; d < D; ++d) ref[size_t((a / K) * D + d)] += double(w.as<float>()[a]) * y.as<float>()[d];
    }
    Tensor gx = test::to_device(backend, x), gp = test::to_device(backend, plus), gi = test::to_device(backend, ids),
           gw = test::to_device(backend, w), out = backend.alloc(DType::F32, {T, D});
    backend.moe_experts(gx, on_backend, gi, gw, gp, out);
    const std::vector<float> got = test::to_host_f32(backend, out);
    double diff = 0, norm = 0;
    for (size_t i = 0; i < ref.size(); ++i) diff += std::pow(got[i] - ref[i], 2), norm += ref[i] * ref[i];
    const double bound = backend.device().is_host() ? 1e-6 : T == 1 ? 1e-4 : T <= 8 ? 5e-3 : 1e-2;
    std::printf("%s T=%lld: rel L2 %.3e (bound %.0e)\n", what, (long long)T, std::sqrt(diff / norm), bound);
    EXPECT_LE(std::sqrt(diff / norm), bound) << what << " T=" << T;
  }
}

TEST(AllReduceMode, MoeExpertsSkipsNoExpertChoicesCpu) {
  auto backend = make_cpu_backend({.threads = 2});
  expect_skipped_choices(*backend, "skipped choices cpu", 256, 128, {1, 3, 40});
}

TEST(AllReduceMode, MoeExpertsSkipsNoExpertChoicesCuda) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA device (or a build without CUDA)";
  auto backend = make_cuda_backend(0);
  expect_skipped_choices(*backend, "skipped choices cuda", 2048, 1408, {1, 5, 80});
}

// Two ranks as threads, each with its own CUDA backend on one GPU (the all-reduce staged through host memory,
// so the steps run eagerly), against one GPU: the decode steps take the fused single-token path with -1 ids.
// Bound as ExpertParallelCuda.TwoRanksMatchOneGpu (1e-3: kernels that may split K with atomics).
TEST(AllReduceMode, TwoRanksOnCudaMatchOneGpu) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA device (or a build without CUDA)";
  const std::vector<int32_t> prompt = test::load_reference_cases().at(1).input_ids;
  constexpr int kDecode = 4;
  for (const std::string& dir : {test::kTinyModel, test::kTinyModelFp8}) {
    const ModelConfig config = ModelConfig::load(dir);
    auto backend = make_cuda_backend(0);
    Steps single;
    {
      DeepseekV3 model(dir, *backend);
      single = run_steps(model, prompt, kDecode);
    }
    std::vector<Steps> got(2);
    test::run_ranks(2, [&](dist::Communicator& comm) {
      auto b = make_cuda_backend(cuda_device_count() > 1 ? comm.rank() : 0);
      ExpertParallel ep(comm, ExpertPlacement::initial(moe_layers(config), int32_t(config.n_routed_experts), 2, 2));
      ep.set_all_reduce(true);
      DeepseekV3 model(dir, *b, {.ep = &ep});
      got[size_t(comm.rank())] = run_steps(model, prompt, kDecode, /*graphs=*/true);
    });
    for (int r = 0; r < 2; ++r) {
      const double d = max_rel_diff(got[size_t(r)].logits, single.logits);
      std::printf("%s rank %d: all-reduce mode on CUDA vs one GPU %.3e\n", dir.c_str(), r, d);
      EXPECT_LE(d, 1e-3) << dir << " rank " << r;
      EXPECT_EQ(got[size_t(r)].greedy, single.greedy) << dir << " rank " << r;
    }
  }
}

// One rank over NCCL on the CUDA backend: nothing in the all-reduce mode's step needs the host, so the decode
// steps are captured (the NCCL all-reduce inside the graph; with data-parallel attention the all-gathers and
// the reduce-scatter) and replayed, with the logits of one GPU without EP (one rank: every choice local, the
// collectives of one rank leave their buffers as they are) within 1e-3.
TEST(AllReduceMode, OneNcclRankReplaysDecodeFromGraphs) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA device (or a build without CUDA)";
  if (!dist::have_nccl()) GTEST_SKIP() << "a CUDA build without NCCL";
  const std::vector<int32_t> prompt = test::load_reference_cases().at(1).input_ids;
  constexpr int kDecode = 6;
  for (const std::string& dir : {test::kTinyModel, test::kTinyModelFp8}) {
    const ModelConfig config = ModelConfig::load(dir);
    auto backend = make_cuda_backend(0);
    Steps single, ep_run;
    {
      DeepseekV3 model(dir, *backend);
      single = run_steps(model, prompt, kDecode, /*graphs=*/true);
    }
    dist::SingleCommunicator boot;
    auto nccl = dist::make_nccl_communicator({.device = 0, .bootstrap = &boot});
    for (const auto mode : {ExpertParallel::Mode::replicated, ExpertParallel::Mode::data_parallel}) {
      const char* name = mode == ExpertParallel::Mode::replicated ? "replicated" : "data-parallel";
      ExpertParallel ep(
          *nccl, ExpertPlacement::initial(moe_layers(config), int32_t(config.n_routed_experts), 1, 0), mode);
      ep.set_all_reduce(true);
      {
        DeepseekV3 model(dir, *backend, {.ep = &ep});
        ep_run = run_steps(model, prompt, kDecode, /*graphs=*/true);
      }
      const double d = max_rel_diff(ep_run.logits, single.logits);
      std::printf("%s: one NCCL rank, %s all-reduce mode vs one GPU %.3e, %lld of %d decode steps replayed\n",
                  dir.c_str(), name, d, (long long)ep_run.replays, kDecode);
      EXPECT_LE(d, 1e-3) << dir << " " << name;
      EXPECT_EQ(ep_run.greedy, single.greedy) << dir << " " << name;
      EXPECT_GE(ep_run.replays, kDecode - 2)
          << dir << " " << name << ": decode steps under EP were not replayed";
    }
  }
}

TEST(AllReduceMode, RefusedWithTheAllToAllsOptions) {
  const ModelConfig config = ModelConfig::load(test::kTinyModel);
  dist::SingleCommunicator comm;
  ExpertParallel tbo(comm, ExpertPlacement::initial(moe_layers(config), 16, 1, 0));
  tbo.set_two_micro_batch(true);
  EXPECT_NE(error_of([&] { tbo.set_all_reduce(true); }).find("without two-micro-batch overlap"), std::string::npos);
  ExpertParallel fp8(comm, ExpertPlacement::initial(moe_layers(config), 16, 1, 0));
  fp8.set_fp8_dispatch(true);
  EXPECT_NE(error_of([&] { fp8.set_all_reduce(true); }).find("or FP8 dispatch"), std::string::npos);
}

// A data-parallel step's rows a rank must cover this rank's tokens: a step run without set_step_rows (or with
// too few) is refused by name, not read out of bounds.
TEST(AllReduceMode, DataParallelNeedsTheStepRows) {
  const ModelConfig config = ModelConfig::load(test::kTinyModel);
  dist::SingleCommunicator comm;
  ExpertParallel dp(comm,
                    ExpertPlacement::initial(moe_layers(config), int32_t(config.n_routed_experts), 1, 0),
                    ExpertParallel::Mode::data_parallel);
  dp.set_all_reduce(true);
  auto backend = make_cpu_backend({1});
  DeepseekV3 model(test::kTinyModel, *backend, {.ep = &dp});
  LatentCache cache(config, *backend, 4, 16, model.cache_layers());
  const std::vector<SequenceChunk> chunks{{{5, 6, 7}, 0, {0}, false}};
  EXPECT_NE(error_of([&] { model.forward(chunks, cache); }).find("(set_step_rows)"), std::string::npos);
  dp.set_step_rows(2);
  EXPECT_NE(error_of([&] { model.forward(chunks, cache); }).find("3 tokens on rank 0"), std::string::npos);
  dp.set_step_rows(3);
  EXPECT_NO_THROW(model.forward(chunks, cache));
}

}  // namespace
}  // namespace moe
