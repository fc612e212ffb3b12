// Expert parallelism on the CUDA backend: ranks as threads, each with its own CUDA context on GPU 0 (or GPU r
// when there are enough), the rows staged through host memory (the thread communicator is a host one), against
// the same model on one CUDA backend. Skipped visibly without a GPU. The CUDA kernels' rows per expert are the
// same as in one process, but a GEMM may split K with atomics, so we bound the relative difference at 1e-3 (BF16
// activations: 2^-8 per rounding) and record what it is; greedy tokens must agree.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>

#include "backend/backend.h"
#include "ep/thread_communicator.h"
#include "model/deepseek_v3.h"
#include "test_util.h"

namespace moe {
namespace {

std::vector<float> prefill_logits(DeepseekV3& model, const std::vector<int32_t>& tokens) {
  const int64_t page = 16, T = int64_t(tokens.size());
  LatentCache cache(model.config(), model.backend(), (T + page - 1) / page, page, model.cache_layers());
  SequenceChunk chunk{tokens, 0, {}, true};
  for (int64_t p = 0; p < cache.num_pages(); ++p) chunk.pages.push_back(int32_t(p));
  const ForwardOutput out = model.forward({chunk}, cache);
  std::vector<float> host(size_t(out.logits.numel()));
  model.backend().copy_to_host(out.logits, host.data());
  return host;
}

TEST(ExpertParallelCuda, TwoRanksMatchOneGpu) {
  if (!cuda_backend_available()) GTEST_SKIP() << "no CUDA device (or a build without CUDA)";
  const std::vector<int32_t> prompt = test::load_reference_cases().at(1).input_ids;
  const ModelConfig config = ModelConfig::load(test::kTinyModel);
  std::vector<bool> moe_layers;
  for (int64_t i = 0; i <= config.num_hidden_layers; ++i)
    moe_layers.push_back(i == config.num_hidden_layers || config.is_moe_layer(i));
  auto backend = make_cuda_backend(0);
  DeepseekV3 single(test::kTinyModel, *backend);
  const std::vector<float> want = prefill_logits(single, prompt);
  for (int redundant : {0, 2}) {
    std::vector<std::vector<float>> got(2);
    test::run_ranks(2, [&](dist::Communicator& comm) {
      auto b = make_cuda_backend(cuda_device_count() > 1 ? comm.rank() : 0);
      ExpertParallel ep(comm, ExpertPlacement::initial(moe_layers, int32_t(config.n_routed_experts), 2, redundant));
      DeepseekV3 model(test::kTinyModel, *b, {.ep = &ep});
      got[size_t(comm.rank())] = prefill_logits(model, prompt);
    });
    const int64_t V = config.vocab_size, T = int64_t(prompt.size());
    for (int r = 0; r < 2; ++r) {
      double scale = 0, diff = 0;
      for (size_t i = 0; i < want.size(); ++i) {
        scale = std::max(scale, std::fabs(double(want[i])));
        diff = std::max(diff, std::fabs(double(got[size_t(r)][i]) - double(want[i])));
      }
      EXPECT_LE(diff / scale, 1e-3) << "rank " << r << " redundant " << redundant;
      RecordProperty("rank" + std::to_string(r) + "_redundant" + std::to_string(redundant) + ".max_rel_diff",
                     std::to_string(diff / scale));
      for (int64_t t = 0; t < T; ++t) {
        const float* a = want.data() + t * V;
        const float* g = got[size_t(r)].data() + t * V;
        EXPECT_EQ(std::max_element(a, a + V) - a, std::max_element(g, g + V) - g) << "token " << t;
      }
    }
  }
}

}  // namespace
}  // namespace moe
