// Bisection of the GPU's whole-model error against the CPU backend (F32 activations and cache, within ~1e-6 of
// HF's float64 logits): a Backend decorator records the output of every op of a forward pass on both
// backends, and the two traces are compared op by op, with the expert choices of every MoE layer compared
// token by token. Run for the fixture's long prompts (33 and 100 tokens, the ones that take the prefill GEMM
// path) in the three prefill modes of the CUDA backend (MOE_CUDA_PREFILL: bf16, the default, one rounded
// BF16 GEMM; split, near-F32 GEMMs from BF16 hi + lo halves; gemv, the F32 decode GEMV for every token count),
// and in bf16 with the opt-in prefill kernels (MOE_CUDA_PREFILL_KERNELS=1; the 100-token prompt then takes
// the expanded-form MLA). The printout is the evidence for the finding
// (docs/gpu.md): with the CPU's expert choices forced, every mode tracks the CPU within the BF16 budget;
// free-running, near-tied routing decisions flip.
#include <algorithm>
#include <cstdlib>
#include <set>

#include "cuda_test_util.h"
#include "engine/page_allocator.h"
#include "io/safetensors.h"
#include "model/deepseek_v3.h"
#include "test_util.h"
#include "trace_backend.h"

namespace moe {
namespace {

using test::Record;
using test::TraceBackend;

struct Run {
  std::vector<Record> log;
  std::vector<float> logits;
};

// One forward pass of the prompt with every op recorded; routing forced to `routes` when given.
Run traced_forward(Backend& inner, const std::string& model_dir, const std::vector<int32_t>& tokens,
                   const std::vector<Record>* routes = nullptr) {
  Run run;
  TraceBackend tb(inner, true);
  DeepseekV3 model(model_dir, tb);
  tb.log.clear();
  tb.force_routing(routes);
  const int64_t T = int64_t(tokens.size()), page = 16;
  LatentCache cache(model.config(), tb, pages_for(T, page), page, model.cache_layers());
  SequenceChunk chunk{tokens, 0, {}, true};
  for (int64_t p = 0; p < cache.num_pages(); ++p) chunk.pages.push_back(int32_t(p));
  ForwardOutput out = model.forward({chunk}, cache);
  run.logits = test::to_host_f32(inner, out.logits);
  run.log = std::move(tb.log);
  return run;
}

double sigmoid(double x) { return 1.0 / (1.0 + std::exp(-x)); }

struct Summary {
  double logits_vs_cpu = 0.0, logits_vs_hf = 0.0, max_op_vs_cpu = 0.0;
  int route_mismatches = 0;  // tokens whose expert set differs from the CPU's, over all MoE layers
};

// Prints the trace comparison; returns the summary.
Summary compare(const Run& gpu, const Run& cpu, const DeepseekV3& cpu_model, const std::vector<float>& hf,
                const std::string& label) {
  Summary sum;
  EXPECT_EQ(gpu.log.size(), cpu.log.size()) << label;
  std::vector<int64_t> moe_layers;
  for (size_t l = 0; l < cpu_model.weights().layers.size(); ++l)
    if (cpu_model.weights().layers[l].is_moe) moe_layers.push_back(int64_t(l));
  int route_index = 0, layer = -1, first_big = -1;
  std::string line;
  for (size_t i = 0; i < std::min(gpu.log.size(), cpu.log.size()); ++i) {
    const Record &g = gpu.log[i], &c = cpu.log[i];
    if (g.op == "mla_attention") ++layer;  // ops after a layer's attention belong to that layer
    if (g.op == "moe_route") {
      const int64_t T = g.rows, K = g.cols;
      const Record& gl = g;  // router logits [T, E] with the ids
      const Record& cl = c;
      const int64_t E = c.E;
      const int64_t L = moe_layers[size_t(route_index++)];
      const TensorView bias = cpu_model.weights().layers[size_t(L)].correction_bias.view();
      int mism = 0;
      for (int64_t t = 0; t < T; ++t) {
        std::set<int32_t> a(g.ids.begin() + t * K, g.ids.begin() + (t + 1) * K),
            b(c.ids.begin() + t * K, c.ids.begin() + (t + 1) * K);
        if (a == b) continue;
        ++mism;
        if (mism > 3) continue;
        std::printf("  [%s] layer %lld token %lld: GPU experts", label.c_str(), static_cast<long long>(L),
                    static_cast<long long>(t));
        for (int32_t e : a) std::printf(" %d", e);
        std::printf(", CPU");
        for (int32_t e : b) std::printf(" %d", e);
        std::printf("; choice scores sigmoid(logit)+bias, CPU logits / GPU logits:");
        for (int32_t e = 0; e < E; ++e) {
          if (a.count(e) == b.count(e)) continue;
          const double bb = bias.data ? double(bias.as<const float>()[e]) : 0.0;
          std::printf(" e%d %.6f / %.6f", e, sigmoid(cl.f[size_t(t * E + e)]) + bb, sigmoid(gl.f[size_t(t * E + e)]) + bb);
        }
        std::printf("\n");
      }
      std::printf("  [%s] layer %lld routing: %d of %lld tokens choose a different expert set than the CPU\n",
                  label.c_str(), static_cast<long long>(L), mism, static_cast<long long>(T));
      sum.route_mismatches += mism;
      continue;
    }
    EXPECT_EQ(g.f.size(), c.f.size()) << label << " op " << i << " " << g.op;
    if (g.f.size() != c.f.size()) break;
    const double err = test::rel_l2(g.f.data(), c.f.data(), int64_t(c.f.size()));
    if (err > 1e-2 && first_big < 0) first_big = int(i);
    sum.max_op_vs_cpu = std::max(sum.max_op_vs_cpu, err);
    if (g.op == "add" || g.op == "mla_attention" || g.op == "moe_experts")
      std::printf("  [%s] layer %d op %3zu %-13s [%lld x %lld] rel L2 vs CPU %.3e\n", label.c_str(), layer, i,
                  g.op.c_str(), static_cast<long long>(g.rows), static_cast<long long>(g.cols), err);
  }
  if (first_big >= 0)
    std::printf("  [%s] first op above 1e-2 vs CPU: %d (%s)\n", label.c_str(), first_big, gpu.log[size_t(first_big)].op.c_str());
  sum.logits_vs_cpu = test::rel_l2(gpu.logits.data(), cpu.logits.data(), int64_t(cpu.logits.size()));
  sum.logits_vs_hf = test::rel_l2(gpu.logits.data(), hf.data(), int64_t(hf.size()));
  std::printf("  [%s] logits: rel L2 vs CPU %.3e, vs HF %.3e; CPU vs HF %.3e; routing mismatches %d\n", label.c_str(),
              sum.logits_vs_cpu, sum.logits_vs_hf,
              test::rel_l2(cpu.logits.data(), hf.data(), int64_t(hf.size())), sum.route_mismatches);
  return sum;
}

void trace_model(const std::string& model_dir, const std::string& ref_suffix) {
  MOE_REQUIRE_GPU();
  SafetensorsFile reference(test::kReferenceTensors);
  auto cpu = make_cpu_backend();
  DeepseekV3 cpu_model(model_dir, *cpu);
  const auto cases = test::load_reference_cases();
  for (size_t ci = 2; ci < cases.size(); ++ci) {
    const auto& tokens = cases[ci].input_ids;
    const SafetensorsEntry* e = reference.find("case" + std::to_string(ci) + "." + ref_suffix);
    ASSERT_NE(e, nullptr);
    const TensorView rv = reference.view(*e);
    const std::vector<float> hf(rv.as<const float>(), rv.as<const float>() + rv.numel());
    const Run cpu_run = traced_forward(*cpu, model_dir, tokens);
    const std::vector<Record> cpu_routes = TraceBackend::routes_of(cpu_run.log);
    // "kernels": bf16 with the expanded MLA taking every prompt (no cost test), so the 100-token prompt goes
    // through it; the other modes keep the default choice.
    for (const char* mode : {"split", "bf16", "gemv", "kernels"}) {
      const bool kernels = std::string(mode) == "kernels";
      CudaOptions o;
      o.prefill = parse_cuda_prefill(kernels ? "bf16" : mode);
      if (kernels) {
        o.mla_prefill_min_tokens = 1;
        o.mla_prefill_always = true;
      }
      auto gpu = make_cuda_backend(0, o);
      const std::string label = model_dir.substr(model_dir.rfind('/') + 1) + " case" + std::to_string(ci) + " (" +
                                std::to_string(tokens.size()) + " tokens) " + mode;
      compare(traced_forward(*gpu, model_dir, tokens), cpu_run, cpu_model, hf, label + " free");
      // With the CPU's expert choices, no op may drift from the CPU by more than the BF16 budget: a bug in
      // a prefill kernel (masking, offsets, gathers) would show here, routing flips cannot.
      const Summary s =
          compare(traced_forward(*gpu, model_dir, tokens, &cpu_routes), cpu_run, cpu_model, hf, label + " CPU routing");
      // bf16 (one rounding of x and of dequantised FP8 weights per GEMM) is the one mode that can exceed 1e-2
      // at a single op (1.1e-2 at the FP8 model's last attention, measured): its bound is the logits'.
      if (std::string(mode) != "bf16" && !kernels) {
        EXPECT_LE(s.max_op_vs_cpu, 1e-2) << label;
      }
      EXPECT_LE(s.logits_vs_cpu, 1e-2) << label;
      EXPECT_LE(s.logits_vs_hf, 1e-2) << label;
    }
  }
}

TEST(CudaTrace, Bf16PrefillAgainstCpu) { trace_model(test::kTinyModel, "logits"); }
TEST(CudaTrace, Fp8PrefillAgainstCpu) { trace_model(test::kTinyModelFp8, "fp8_logits"); }

}  // namespace
}  // namespace moe
