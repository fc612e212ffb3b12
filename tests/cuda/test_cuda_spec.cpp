// MTP speculative decoding's fused greedy step on the GPU (StepExecutor::forward_speculative, captured as a
// graph): Backend::argmax_rows against the host's argmax (exact: the same comparisons on the same floats), and
// the scheduler's fused step against its host-decided path on the same GPU (the same verification step's
// kernels, so the same tokens exactly where no near-tie meets run-to-run variation: see check_model) and
// against decoding without speculation. Skipped without a GPU.
#include <gtest/gtest.h>

#include <cmath>
#include <filesystem>
#include <limits>
#include <random>

#include "backend/sampling.h"
#include "backend/spec_chain_cases.h"
#include "cuda_test_util.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"
#include "model/random_checkpoint.h"
#include "server/scheduler_util.h"
#include "test_util.h"

namespace moe::test {
namespace {

class CudaSpec : public GpuVsCpu {};

// Rows with exact ties (a coarse grid), a row of NaNs but one, an all-NaN row, and a limit below V.
TEST_F(CudaSpec, ArgmaxRowsIsTheHostArgmax) {
  std::normal_distribution<float> normal(0.0f, 3.0f);
  std::uniform_real_distribution<float> unit(0.0f, 1.0f);
  for (int64_t V : {int64_t(1000), int64_t(129280), int64_t(163840)}) {
    const int64_t R = 9;
    std::vector<float> x(size_t(R * V));
    for (auto& v : x) v = std::round(normal(rng_) * 4.0f) / 4.0f;  // many exact ties
    const float nan = std::numeric_limits<float>::quiet_NaN();
    for (int64_t i = 0; i < V; ++i) x[size_t(3 * V + i)] = i == V / 2 ? -5.0f : nan;
    for (int64_t i = 0; i < V; ++i) x[size_t(4 * V + i)] = nan;
    Tensor d = gpu_->alloc(DType::F32, {R, V});
    gpu_->copy_from_host(x.data(), d);
    for (int64_t limit : {int64_t(0), V - 7, V / 3}) {
      Tensor ids = gpu_->alloc(DType::I32, {R});
      gpu_->argmax_rows(d, limit, ids);
      std::vector<int32_t> got(static_cast<size_t>(R));
      gpu_->copy_to_host(ids, got.data());
      const int64_t n = limit > 0 ? limit : V;
      for (int64_t r = 0; r < R; ++r)
        ASSERT_EQ(got[size_t(r)], argmax(std::span<const float>(x).subspan(size_t(r * V), size_t(n))))
            << "V " << V << " limit " << limit << " row " << r;
    }
  }
}

// The chained-draft ops (kept_rows, chain_batch, index_rows) on the device, on the CPU test's cases.
TEST_F(CudaSpec, ChainOpsMatchTheirDefinitions) {
  for (uint32_t seed : {1u, 2u}) check_chain_ops(*gpu_, seed);
}

struct SpecRun {
  std::vector<Result> out;
  uint64_t drafted = 0, accepted = 0, fused = 0;
};

// Four concurrent greedy requests through the scheduler on the GPU (graphs on, as served).
SpecRun run(DeepseekV3& model, int32_t speculative, bool fused) {
  SchedulerOptions o;
  o.cache_tokens = 2048;
  o.page_size = 64;
  o.max_batch = 8;
  o.speculative = speculative;
  o.fused_speculation = fused;
  Scheduler sched(model, nullptr, o);
  auto sink = std::make_shared<EventSink>();
  const std::vector<std::vector<int32_t>> prompts = {{311, 811, 1336, 101, 151, 1684, 1100}, {5, 6, 7}, {77}, {900, 12}};
  for (size_t i = 0; i < prompts.size(); ++i) {
    GenerationRequest r;
    r.prompt = prompts[i];
    r.max_tokens = 24 + 5 * int32_t(i);
    r.ignore_eos = true;
    sched.submit(r, sink, int32_t(i));
  }
  SpecRun s;
  s.out = collect(*sink, prompts.size());
  s.drafted = sched.metrics().spec_drafted;
  s.accepted = sched.metrics().spec_accepted;
  s.fused = sched.metrics().spec_fused_steps;
  return s;
}

// The fused step against the host-decided one: identical tokens and drafts (the MTP module over the verified
// tokens in the step's graph drafts what the eager module drafts after it). Against no speculation the tokens
// may part only at a near-tie of the 1-row and 2-row kernels' rounding (bench/RESULTS.md): printed.
// `exact`: the host-decided run must give the fused run's tokens. Not on the fixture: its random weights put two
// tokens of reference case 1's second decode step within 8e-4 of each other (CPU logits 3.34960 vs 3.34883), and
// the GPU's own margin there is below its run-to-run variation (cause not isolated), so on an H200 (2026-12-02) the
// host-decided path agreed with the fused one in one run and took the other token in the next (as the CPU does);
// there the rejection path runs (its steps fused, the lengths checked, the counts printed).
void check_model(DeepseekV3& model, const char* name, double min_acceptance, bool exact, int32_t drafts = 1) {
  const SpecRun fused = run(model, drafts, true), host = run(model, drafts, false),
                plain = run(model, 0, true);
  // Each fused step yields up to drafts + 1 of the ~100 tokens the four requests generate (H200, 2026-12-05: 19
  // steps with 1 draft, 10 with 3 on the check model, every draft kept).
  EXPECT_GE(fused.fused * uint64_t(drafts + 1), 30u);
  EXPECT_EQ(host.fused, 0u);
  if (exact) {
    EXPECT_EQ(fused.drafted, host.drafted);
    EXPECT_EQ(fused.accepted, host.accepted);
  }
  int same_as_plain = 0, same_as_host = 0;
  for (size_t i = 0; i < fused.out.size(); ++i) {
    if (exact) { EXPECT_EQ(fused.out[i].tokens, host.out[i].tokens) << name << " request " << i; }
    EXPECT_EQ(fused.out[i].tokens.size(), host.out[i].tokens.size()) << name << " request " << i;
    same_as_host += fused.out[i].tokens == host.out[i].tokens;
    same_as_plain += fused.out[i].tokens == plain.out[i].tokens;
  }
  std::printf("%s: %d of %zu requests identical to the host-decided path\n", name, same_as_host, fused.out.size());
  const double acceptance = double(fused.accepted) / double(std::max<uint64_t>(fused.drafted, 1));
  std::printf(
      "%s, %d drafts: fused steps %llu, acceptance %.3f (%llu of %llu), %d of %zu requests identical to no "
      "speculation\n",
      name, drafts, (unsigned long long)fused.fused, acceptance, (unsigned long long)fused.accepted,
      (unsigned long long)fused.drafted, same_as_plain, fused.out.size());
  EXPECT_GE(acceptance, min_acceptance) << name;
}

TEST_F(CudaSpec, FusedStepAsHostDecidedOnTheFixture) {
  DeepseekV3 model(kTinyModel, *gpu_, {.load_mtp = true, .progress = {}});
  check_model(model, "fixture", 0.0, false);  // its random MTP module's drafts are rejected: the rejection path
}

TEST_F(CudaSpec, FusedStepAsHostDecidedOnTheCheckModel) {
  const std::string dir = temp_path("cuda-mtp-check");
  RandomCheckpointOptions o;
  o.config_path = kTinyModel + "/config.json";
  o.out_dir = dir;
  o.seed = 7;
  o.mtp_check = true;
  create_random_checkpoint(o);
  {
    DeepseekV3 model(dir, *gpu_, {.load_mtp = true, .progress = {}});
    check_model(model, "check model", 0.9, true);  // drafts the main model's token: the accept path
    check_model(model, "check model", 0.85, true, 3);  // and the chained drafts on the device
  }
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe::test
