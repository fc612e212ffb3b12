// Two CUDA backends (two contexts: streams, cuBLAS handles, memory pools, kernel attributes, options) in one
// process, on two devices where the machine has two, on the same device otherwise: both run the fixture model,
// interleaved step by step, and each must give exactly what a backend alone gives. A context that leaked state
// into the other (a current device left set, an attribute set on one device only, a shared pool, options
// read from the process) shows up as an error or a difference.
#include <gtest/gtest.h>

#include <algorithm>

#include "cuda_test_util.h"
#include "engine/step_executor.h"
#include "model/deepseek_v3.h"
#include "test_util.h"

namespace moe {
namespace {

struct StepLogits {
  std::vector<std::vector<float>> logits;  // prefill, then each decode step
};

// A prompt of 40 tokens (expanded MLA prefill, many-token GEMMs), then greedy decode steps (graphs).
class ModelRun {
 public:
  ModelRun(const std::string& dir, Backend& b, const std::vector<int32_t>& prompt)
      : backend_(b), model_(dir, b), executor_(model_), cache_(model_.config(), b, 32, 4, model_.cache_layers()) {
    chunk_.tokens = prompt;
    for (int32_t p = 0; p < 32; ++p) chunk_.pages.push_back(p);
  }
  void step() {
    ForwardOutput out = executor_.forward({chunk_}, cache_);
    run.logits.push_back(test::to_host_f32(backend_, out.logits));
    const std::vector<float>& l = run.logits.back();
    chunk_.start_pos += int32_t(chunk_.tokens.size());
    chunk_.tokens = {int32_t(std::max_element(l.begin(), l.end()) - l.begin())};
  }
  const StepExecutor& executor() const { return executor_; }
  StepLogits run;

 private:
  Backend& backend_;
  DeepseekV3 model_;
  StepExecutor executor_;
  LatentCache cache_;
  SequenceChunk chunk_;
};

TEST(CudaContext, TwoBackendsInOneProcessRunTheModel) {
  MOE_REQUIRE_GPU();
  const int devices = cuda_device_count();
  const int second = devices > 1 ? 1 : 0;
  std::printf("devices: %d; the second context is on device %d\n", devices, second);
  std::mt19937_64 rng(test::time_seed("two contexts"));
  std::vector<int32_t> prompt;
  for (int i = 0; i < 40; ++i) prompt.push_back(int32_t(rng() % 1000));
  constexpr int kSteps = 12;

  // Alone: one backend on device 0.
  StepLogits alone;
  {
    auto b = make_cuda_backend(0);
    ModelRun r(test::kTinyModel, *b, prompt);
    for (int i = 0; i < kSteps; ++i) r.step();
    alone = r.run;
  }
  // Together: device 0 and `second`, the second one with graphs off (options are per backend), interleaved.
  auto a = make_cuda_backend(0);
  CudaOptions no_graphs;
  no_graphs.graphs = false;
  auto b = make_cuda_backend(second, no_graphs);
  EXPECT_EQ(a->device(), Device::cuda(0));
  EXPECT_EQ(b->device(), Device::cuda(second));
  ModelRun ra(test::kTinyModel, *a, prompt), rb(test::kTinyModel, *b, prompt);
  for (int i = 0; i < kSteps; ++i) {
    ra.step();
    rb.step();
  }
  EXPECT_GT(ra.executor().stats().replays, 0);
  EXPECT_EQ(rb.executor().stats().captures, 0);
  ASSERT_EQ(ra.run.logits.size(), alone.logits.size());
  for (size_t i = 0; i < alone.logits.size(); ++i) {
    // Same device kind, same kernels and launch shapes: bit for bit.
    EXPECT_EQ(ra.run.logits[i], alone.logits[i]) << "step " << i << " on the first context";
    EXPECT_EQ(rb.run.logits[i], alone.logits[i]) << "step " << i << " on the second context";
  }
}

TEST(CudaContext, DeviceIndexIsChecked) {
  MOE_REQUIRE_GPU();
  EXPECT_THROW(make_cuda_backend(cuda_device_count()), Error);
  EXPECT_THROW(make_cuda_backend(-1), Error);
  EXPECT_EQ(make_backend("cuda:0")->device(), Device::cuda(0));
}

}  // namespace
}  // namespace moe
