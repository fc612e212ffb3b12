// Expert parallelism over NCCL on one GPU (issue 12): the tiny fixture models (BF16 and the FP8 twin) through
// ExpertParallel with a one-rank NcclCommunicator on the CUDA backend, so the rows stay on the device and
// travel through ncclSend/ncclRecv to the rank itself on the backend's stream (bind_stream), while the plan
// (counts, slot lists) is staged by the communicator. With and without redundant copies (one rank: 4 spare
// slots holding copies of experts 0..3), two-micro-batch overlap off and on, and the shared expert as a
// routed one in the decode steps (ExpertParallel::set_shared_as_routed). Skipped visibly without a GPU or
// without NCCL. On the FP8 twin also FP8 dispatch (E4M3 rows with 1x128 scales) against one GPU.
//
// Two references, each a prefill of reference case 1 (7 tokens) then 4 greedy decode steps (every row's
// logits):
//  - the same model on one GPU without EP (the same kernels; EP only regroups the routed rows and adds a
//  combine
//    with weight 1, which is exact, and sums the weighted rows in the same slot order): max |a-b| / max |b|
//    <= 1e-3, the bound of ExpertParallelCuda.TwoRanksMatchOneGpu (the grouped GEMMs may split K with
//    atomics, so an expert's rows grouped differently can round differently: F32 accumulation, ~1e-6 per
//    layer, grown by the layers that follow), and identical greedy tokens.
//  - the CPU backend in one process: the project's GPU fixture bounds (tests/cuda/test_cuda_model.cpp):
//  relative
//    L2 <= 1e-2 (BF16 latent cache and BF16 GEMM operands, a few 1e-3 measured on this prompt) and top-1
//    agreement on every row, a disagreement accepted only as a near-tie shown in numbers (the CPU's margin
//    between the two tokens under 3x the row's RMS error). The 7-token prompt is the one whose routing the
//    GPU does not flip against the CPU (test_cuda_model.cpp: flips hinge on 1e-4 router gaps in the longer
//    prompts).
// The figures are printed and recorded (RecordProperty) for docs/distributed.md.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>

#include "backend/backend.h"
#include "dist/communicator.h"
#include "engine/generator.h"
#include "ep/ep_test_util.h"
#include "model/deepseek_v3.h"
#include "model/expert_parallel.h"
#include "test_util.h"

namespace moe {
namespace {

using test::max_rel_diff;

struct ModelRun {
  std::vector<float> logits;  // [rows, V]: the prompt's rows, then one row per decode step
  std::vector<int32_t> greedy;
};

// Prefill of `tokens`, then `decode` greedy steps; with `follow`, the decode steps take follow's tokens instead of
// their own argmax (a reference on another backend sees the same inputs after a near-tie of the greedy choice).
ModelRun run_model(DeepseekV3& model, const std::vector<int32_t>& tokens, int decode,
                   const std::vector<int32_t>* follow = nullptr) {
  ModelRun r;
  const int64_t page = 16, T = int64_t(tokens.size()) + decode, V = model.config().vocab_size;
  LatentCache cache(model.config(), model.backend(), (T + page - 1) / page, page, model.cache_layers());
  std::vector<int32_t> pages;
  for (int64_t p = 0; p < cache.num_pages(); ++p) pages.push_back(int32_t(p));
  SequenceChunk chunk{tokens, 0, pages, true};
  for (int step = 0; step <= decode; ++step) {
    const ForwardOutput out = model.forward({chunk}, cache);
    std::vector<float> host(size_t(out.logits.numel()));
    model.backend().copy_to_host(out.logits, host.data());
    r.logits.insert(r.logits.end(), host.begin(), host.end());
    const float* last = host.data() + host.size() - size_t(V);
    const int32_t next = follow ? (*follow)[size_t(step)] : int32_t(std::max_element(last, last + V) - last);
    r.greedy.push_back(int32_t(std::max_element(last, last + V) - last));
    chunk = SequenceChunk{{next}, chunk.start_pos + int32_t(chunk.tokens.size()), pages, true};
  }
  return r;
}

double rel_l2(const std::vector<float>& a, const std::vector<float>& b) {
  double num = 0, den = 0;
  for (size_t i = 0; i < b.size(); ++i) {
    num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]);
    den += double(b[i]) * b[i];
  }
  return std::sqrt(num / den);
}

// Rows whose top-1 differs from the reference's and is not a near-tie (printed with their numbers).
int64_t unexplained_top1(const std::vector<float>& got, const std::vector<float>& ref, int64_t V,
                         const std::string& tag) {
  int64_t bad = 0;
  for (size_t t = 0; t * size_t(V) < ref.size(); ++t) {
    const float* g = got.data() + t * size_t(V);
    const float* f = ref.data() + t * size_t(V);
    const int64_t gi = std::max_element(g, g + V) - g, fi = std::max_element(f, f + V) - f;
    if (gi == fi) continue;
    double se = 0;
    for (int64_t v = 0; v < V; ++v) se += (double(g[v]) - f[v]) * (double(g[v]) - f[v]);
    const double rms = std::sqrt(se / double(V)), margin = double(f[fi]) - f[gi];
    const bool tie = margin <= 3.0 * rms;
    std::printf(
        "%s row %zu: EP picks %lld, CPU %lld; CPU logits %.5f vs %.5f (margin %.5f), row RMS error %.5f%s\n",
        tag.c_str(), t, (long long)gi, (long long)fi, f[fi], f[gi], margin, rms, tie ? " -> near-tie" : "");
    bad += !tie;
  }
  return bad;
}

class EpNccl : public ::testing::TestWithParam<std::string> {};

TEST_P(EpNccl, OneRankMatchesCpuAndOneGpu) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA (Hopper) GPU present";
  if (!dist::have_nccl()) GTEST_SKIP() << "a CUDA build without NCCL";
  const std::string dir = GetParam();
  const std::vector<int32_t> prompt = test::load_reference_cases().at(1).input_ids;
  constexpr int kDecode = 4;
  const ModelConfig config = ModelConfig::load(dir);
  const int64_t V = config.vocab_size;
  std::vector<bool> moe_layers;
  for (int64_t i = 0; i <= config.num_hidden_layers; ++i)
    moe_layers.push_back(i == config.num_hidden_layers || config.is_moe_layer(i));

  // The CPU reference decodes the one-GPU run's tokens: on tiny-dsv3 (BF16) the second decode step is a near-tie
  // (CPU logits 3.34960 vs 3.34883 for tokens 202 and 1197, 2026-12-02), after which free greedy runs see
  // different inputs and their logits cannot be compared.
  auto gpu = make_cuda_backend(0);
  ModelRun gpu_run;
  {
    DeepseekV3 model(dir, *gpu);
    gpu_run = run_model(model, prompt, kDecode);
  }
  auto cpu = make_cpu_backend();
  ModelRun cpu_run;
  {
    DeepseekV3 model(dir, *cpu);
    cpu_run = run_model(model, prompt, kDecode, &gpu_run.greedy);
  }
  {  // The one-GPU reference row by row against the CPU (prompt rows, then decode rows): where they part, if anywhere.
    std::string rows;
    for (size_t t = 0; (t + 1) * size_t(V) <= cpu_run.logits.size(); ++t) {
      const std::vector<float> g(gpu_run.logits.begin() + long(t * size_t(V)), gpu_run.logits.begin() + long((t + 1) * size_t(V)));
      const std::vector<float> c(cpu_run.logits.begin() + long(t * size_t(V)), cpu_run.logits.begin() + long((t + 1) * size_t(V)));
      char buf[32];
      std::snprintf(buf, sizeof buf, " %.1e", rel_l2(g, c));
      rows += buf;
    }
    std::printf("%s one GPU vs CPU, rel L2 by row (%zu prompt, %d decode):%s\n", dir.c_str(), prompt.size(), kDecode,
                rows.c_str());
  }
  // One rank, bootstrapped through a SingleCommunicator (its broadcast of the ncclUniqueId is a no-op).
  dist::SingleCommunicator single;
  auto nccl = dist::make_nccl_communicator({.device = 0, .bootstrap = &single});
  ASSERT_EQ(nccl->size(), 1);
  const std::string model_tag = dir.substr(dir.rfind('/') + 1);
  struct Config {
    int redundant;
    bool tbo, shared;
  };
  const int32_t E = int32_t(config.n_routed_experts), K = int32_t(config.num_experts_per_tok);
  for (const Config c : {Config{0, false, false}, Config{0, true, false}, Config{4, false, false},
                         Config{4, true, false}, Config{0, false, true}, Config{3, true, true}}) {
    const std::string tag = model_tag + " redundant" + std::to_string(c.redundant) + (c.tbo ? " tbo" : "") +
                            (c.shared ? " shared-routed" : "");
    ExpertParallel ep(*nccl, c.shared ? ExpertPlacement::with_shared_expert(moe_layers, E, K, 1, c.redundant)
                                      : ExpertPlacement::initial(moe_layers, E, 1, c.redundant));
    ep.set_two_micro_batch(c.tbo);
    ep.set_shared_as_routed(c.shared);
    ModelRun got;
    {
      DeepseekV3 model(dir, *gpu, {.ep = &ep});
      got = run_model(model, prompt, kDecode);
    }
    EXPECT_EQ(nccl->stream(), gpu->native_stream()) << tag << ": NCCL is not on the backend's stream";
    EXPECT_GT(ep.bytes_sent(), 0u) << tag;
    ASSERT_EQ(got.logits.size(), cpu_run.logits.size()) << tag;
    const double vs_gpu = max_rel_diff(got.logits, gpu_run.logits);
    const double l2_gpu = rel_l2(got.logits, gpu_run.logits);
    const double l2_cpu = rel_l2(got.logits, cpu_run.logits),
                 gpu_cpu = rel_l2(gpu_run.logits, cpu_run.logits);
    std::printf(
        "%s: vs one GPU max rel %.3e, rel L2 %.3e; vs CPU rel L2 %.3e (one GPU vs CPU %.3e); %llu bytes "
        "sent\n",
        tag.c_str(), vs_gpu, l2_gpu, l2_cpu, gpu_cpu, (unsigned long long)ep.bytes_sent());
    RecordProperty(tag + ".vs_gpu_max_rel", std::to_string(vs_gpu));
    RecordProperty(tag + ".vs_cpu_rel_l2", std::to_string(l2_cpu));
    EXPECT_LE(vs_gpu, 1e-3) << tag;
    EXPECT_EQ(got.greedy, gpu_run.greedy) << tag;
    EXPECT_LE(l2_cpu, 1e-2) << tag;
    EXPECT_EQ(unexplained_top1(got.logits, cpu_run.logits, V, tag), 0) << tag;
  }
  // FP8 dispatch (FP8 experts only): against one GPU within the E4M3 activation bound of test_fp8_dispatch.cpp
  // (sqrt(18) * 2^-4 / sqrt(3) relative L2, the W8A8 bound of test_cuda_model.cpp), fewer bytes than F32 rows.
  if (config.fp8_block_rows > 0) {
    uint64_t f32_bytes = 0;
    for (bool fp8 : {false, true}) {
      ExpertParallel ep(*nccl, ExpertPlacement::initial(moe_layers, E, 1, 0));
      ep.set_fp8_dispatch(fp8);
      ModelRun got;
      {
        DeepseekV3 model(dir, *gpu, {.ep = &ep});
        got = run_model(model, prompt, kDecode);
      }
      if (!fp8) {
        f32_bytes = ep.bytes_sent();
        continue;
      }
      const double l2 = rel_l2(got.logits, gpu_run.logits), bound = std::sqrt(18.0) * std::ldexp(1.0, -4) / std::sqrt(3.0);
      std::printf("%s fp8-dispatch: vs one GPU rel L2 %.3e (bound %.3e); %llu bytes sent (F32 rows: %llu)\n",
                  model_tag.c_str(), l2, bound, (unsigned long long)ep.bytes_sent(), (unsigned long long)f32_bytes);
      EXPECT_LE(l2, bound);
      EXPECT_LT(ep.bytes_sent(), f32_bytes);
    }
  }
}

INSTANTIATE_TEST_SUITE_P(Models, EpNccl, ::testing::Values(test::kTinyModel, test::kTinyModelFp8),
                         [](const auto& info) { return info.param == test::kTinyModel ? "bf16" : "fp8"; });

}  // namespace
}  // namespace moe
