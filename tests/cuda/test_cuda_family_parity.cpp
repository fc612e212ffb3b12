// The family fixtures (tests/data/tiny-v31, tiny-kimi-k2: HF transformers 5.17 float64 references) on the GPU, each
// run twice as test_cuda_model.cpp does for V3 (its header gives the reasoning and the near-tie rule):
//   1. free routing (production): every expert choice that differs from the CPU's (which matches HF to 1e-6) is
//      printed with its margins; the first layer with differences must hold only near-ties;
//   2. routing forced to the CPU's expert ids (TraceBackend; the weights still from the GPU's own router logits):
//      relative L2 of the logits <= 1e-2 and top-1 >= 99 % (a miss only where HF's margin is under 3x the row's
//      RMS error), and the teacher-forced greedy steps (decode through the latent cache) pick HF's tokens.
// V3.1 runs in both forms: FP8 with ue8m0 scales as stored, and BF16 (the same values: an E4M3 value times a power
// of two is exact in BF16), which takes the BF16 kernels. Kimi-K2's experts stay INT4 on the GPU (W4A16 GEMV in
// decode); the test prints the experts' device bytes against BF16's.
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <map>
#include <memory>
#include <mutex>

#include "core/dtype.h"
#include "cuda_test_util.h"
#include "engine/page_allocator.h"
#include "io/checkpoint.h"
#include "io/safetensors.h"
#include "io/model_config.h"
#include "model/deepseek_v3.h"
#include "route_report.h"
#include "test_util.h"
#include "trace_backend.h"

namespace moe {
namespace {

using test::Record;
using test::TraceBackend;

// A checkpoint with its FP8 weights handed out as BF16 (w * scale_inv per 128x128 block), scales hidden.
class Bf16Source final : public TensorSource {
 public:
  explicit Bf16Source(const std::string& dir) : ckpt_(dir) {}
  const std::string& dir() const override { return ckpt_.dir(); }
  bool has(const std::string& name) const override { return ckpt_.has(name) && !is_scale(name); }
  TensorView get(const std::string& name, const Shape& shape) const override {
    const TensorView v = ckpt_.get(name, shape);
    return v.dtype == DType::F8_E4M3 ? dequantised(name, v) : v;
  }
  std::optional<TensorView> find(const std::string& name) const override {
    std::optional<TensorView> v = ckpt_.find(name);
    if (!v || is_scale(name)) return std::nullopt;
    return v->dtype == DType::F8_E4M3 ? dequantised(name, *v) : *v;
  }
  std::string file_of(const std::string& name) const override { return ckpt_.file_of(name); }
  std::vector<std::string> names() const override {
    std::vector<std::string> out;
    for (const std::string& n : ckpt_.names())
      if (!is_scale(n)) out.push_back(n);
    return out;
  }

 private:
  static bool is_scale(const std::string& n) { return n.find("_scale_inv") != std::string::npos; }
  TensorView dequantised(const std::string& name, const TensorView& v) const {
    const std::lock_guard<std::mutex> lock(mu_);
    auto it = bf16_.find(name);
    if (it == bf16_.end()) {
      const TensorView s = *ckpt_.find(name + "_scale_inv");
      const int64_t R = v.shape[0], C = v.shape[1], kb = s.shape[1];
      std::vector<uint16_t> out(size_t(R * C));
      for (int64_t r = 0; r < R; ++r)
        for (int64_t c = 0; c < C; ++c)
          out[size_t(r * C + c)] = float_to_bf16(e4m3_to_float(static_cast<const uint8_t*>(v.data)[r * C + c]) *
                                                 s.as<const float>()[(r / 128) * kb + c / 128]);
      it = bf16_.emplace(name, std::move(out)).first;
    }
    TensorView o = v;
    o.data = it->second.data();
    o.dtype = DType::BF16;
    return o;
  }
  Checkpoint ckpt_;
  mutable std::mutex mu_;
  mutable std::map<std::string, std::vector<uint16_t>> bf16_;
};

struct Fixture {
  std::string name, model, data;
  bool bf16 = false;  // the FP8 checkpoint through Bf16Source
};

class CudaFamilyParity : public ::testing::Test {
 protected:
  void SetUp() override {
    MOE_REQUIRE_GPU();
    gpu_ = make_cuda_backend(0);
    cpu_ = make_cpu_backend();
    gpu_trace_ = std::make_unique<TraceBackend>(*gpu_);
    cpu_trace_ = std::make_unique<TraceBackend>(*cpu_);
  }
  static std::unique_ptr<DeepseekV3> load(const Fixture& f, Backend& b) {
    if (!f.bf16) return std::make_unique<DeepseekV3>(f.model, b);
    return std::make_unique<DeepseekV3>(std::make_shared<Bf16Source>(f.model), ModelConfig::load(f.model), b,
                                        DeepseekV3::Options{});
  }
  static std::vector<float> logits(DeepseekV3& model, const std::vector<int32_t>& tokens) {
    const int64_t T = int64_t(tokens.size()), page = 16;
    LatentCache cache(model.config(), model.backend(), pages_for(T, page), page, model.cache_layers());
    SequenceChunk chunk{tokens, 0, {}, true};
    for (int64_t p = 0; p < cache.num_pages(); ++p) chunk.pages.push_back(int32_t(p));
    return test::to_host_f32(model.backend(), model.forward({chunk}, cache).logits);
  }
  // rel L2 against HF and rows agreeing on top-1 (+ near-ties: HF's margin under 3x the row's RMS error).
  static std::pair<double, int64_t> against_hf(const std::vector<float>& got, const TensorView& ref,
                                               const std::string& tag) {
    const int64_t T = ref.shape[0], V = ref.shape[1];
    const double err = test::rel_l2(got.data(), ref.as<float>(), ref.numel());
    int64_t agree = 0, explained = 0;
    for (int64_t t = 0; t < T; ++t) {
      const float *g = got.data() + t * V, *f = ref.as<float>() + t * V;
      const int64_t gi = std::max_element(g, g + V) - g, fi = std::max_element(f, f + V) - f;
      if (gi == fi) {
        ++agree;
        continue;
      }
      double se = 0.0;
      for (int64_t v = 0; v < V; ++v) se += (double(g[v]) - f[v]) * (double(g[v]) - f[v]);
      const double rms = std::sqrt(se / double(V)), margin = double(f[fi]) - f[gi];
      explained += margin <= 3.0 * rms;
      std::printf("%s row %lld: ours %lld, HF %lld, HF margin %.5f, row RMS error %.5f%s\n", tag.c_str(),
                  (long long)t, (long long)gi, (long long)fi, margin, rms, margin <= 3.0 * rms ? " -> near-tie" : "");
    }
    std::printf("%s: rel L2 %.3e, top-1 %lld/%lld (+%lld near-ties)\n", tag.c_str(), err, (long long)agree,
                (long long)T, (long long)explained);
    return {err, agree + explained};
  }

  void check(const Fixture& f) {
    std::unique_ptr<DeepseekV3> gm = load(f, *gpu_trace_), cm = load(f, *cpu_trace_);
    report_expert_bytes(*gm, f.name);
    const SafetensorsFile ref(f.data + "/reference.safetensors");
    const auto cases = test::load_reference_cases(f.data + "/reference.json");
    ASSERT_FALSE(cases.empty());
    int64_t decisions = 0;
    int total_flips = 0;
    for (size_t i = 0; i < cases.size(); ++i) {
      const std::string tag = f.name + " case" + std::to_string(i);
      const int64_t T = int64_t(cases[i].input_ids.size());
      const SafetensorsEntry* e = ref.find("case" + std::to_string(i) + ".logits");
      ASSERT_NE(e, nullptr) << tag;
      const TensorView hf = ref.view(*e);
      cpu_trace_->log.clear();
      logits(*cm, cases[i].input_ids);
      const std::vector<Record> cpu_routes = TraceBackend::routes_of(cpu_trace_->log);
      for (const Record& r : cpu_routes) decisions += r.rows;
      gpu_trace_->log.clear();
      const std::vector<float> free_run = logits(*gm, cases[i].input_ids);
      int flips = 0;
      EXPECT_TRUE(test::routing_explained(gpu_trace_->log, cpu_routes, *cm, tag, &flips)) << tag;
      total_flips += flips;
      against_hf(free_run, hf, tag + " (free routing)");
      gpu_trace_->force_routing(&cpu_routes);
      const std::vector<float> forced = logits(*gm, cases[i].input_ids);
      gpu_trace_->force_routing(nullptr);
      const auto [err, ok] = against_hf(forced, hf, tag + " (CPU routing)");
      EXPECT_LE(err, 1e-2) << tag;
      EXPECT_GE(double(ok), 0.99 * double(T)) << tag;
    }
    std::printf("%s: %d of %lld (token, MoE layer) expert choices flipped under free routing (margins above)\n",
                f.name.c_str(), total_flips, (long long)decisions);
    greedy(*gm, *cm, cases, f.name);
  }

  // Decode steps through the latent cache, HF's continuation fed back (teacher forcing), the CPU's routing forced
  // on each step: every step's GPU argmax is HF's token, or a near-tie by the logits margin. The free-routing
  // run of the same steps is printed (its first differing step and the routing flips up to it).
  void greedy(DeepseekV3& gm, DeepseekV3& cm, const std::vector<test::ReferenceCase>& cases, const std::string& name) {
    const int64_t V = gm.config().vocab_size;
    for (const auto& c : cases) {
      const int64_t n = int64_t(c.greedy_continuation.size()), ctx = int64_t(c.input_ids.size()) + n + 1, page = 8;
      for (const bool forced : {false, true}) {
        const std::string tag = name + (forced ? " forced" : " free") + " greedy, prompt of " +
                                std::to_string(c.input_ids.size());
        LatentCache gc(gm.config(), *gpu_trace_, pages_for(ctx, page), page, gm.cache_layers());
        LatentCache cc(cm.config(), *cpu_trace_, pages_for(ctx, page), page, cm.cache_layers());
        SequenceChunk chunk{c.input_ids, 0, {}, false};
        for (int64_t p = 0; p < gc.num_pages(); ++p) chunk.pages.push_back(int32_t(p));
        int flips_total = 0, first_diff = -1;
        for (int64_t step = 0; step < n; ++step) {
          cpu_trace_->log.clear();
          gpu_trace_->log.clear();
          const std::vector<float> cl = test::to_host_f32(*cpu_, cm.forward({chunk}, cc).logits);
          const std::vector<Record> cpu_routes = TraceBackend::routes_of(cpu_trace_->log);
          if (forced) gpu_trace_->force_routing(&cpu_routes);
          const std::vector<float> gl = test::to_host_f32(*gpu_, gm.forward({chunk}, gc).logits);
          gpu_trace_->force_routing(nullptr);
          const int32_t g = int32_t(std::max_element(gl.begin(), gl.end()) - gl.begin());
          const int32_t want = c.greedy_continuation[size_t(step)];
          if (!forced) {
            int flips = 0;
            test::routing_explained(gpu_trace_->log, cpu_routes, cm, tag + " step " + std::to_string(step), &flips,
                                    flips_total > 0);
            flips_total += flips;
          }
          if (g != want) {
            double se = 0.0;
            for (int64_t v = 0; v < V; ++v)
              se += (double(gl[size_t(v)]) - cl[size_t(v)]) * (double(gl[size_t(v)]) - cl[size_t(v)]);
            const double rms = std::sqrt(se / double(V)), margin = double(cl[size_t(want)]) - cl[size_t(g)];
            std::printf("%s step %lld: GPU %d, HF %d; CPU margin %.5f, RMS error %.5f%s\n", tag.c_str(),
                        (long long)step, g, want, margin, rms, margin <= 3.0 * rms ? " -> near-tie" : "");
            if (forced) {
              EXPECT_LE(margin, 3.0 * rms) << tag << " step " << step;
            }
            if (first_diff < 0) first_diff = int(step);
          }
          chunk.start_pos += int32_t(chunk.tokens.size());
          chunk.tokens = {want};
        }
        std::printf("%s: %s HF's continuation%s; %d routing flips over the steps\n", tag.c_str(),
                    first_diff < 0 ? "every step picks" : "differs from", first_diff < 0 ? "" : " (see above)",
                    flips_total);
      }
    }
  }

  // Device bytes of the routed experts as held, and what BF16 copies would take.
  static void report_expert_bytes(const DeepseekV3& m, const std::string& name) {
    int64_t held = 0, bf16 = 0;
    bool int4 = false;
    for (const auto& l : m.weights().layers) {
      if (!l.is_moe) continue;
      for (const MlpWeights& e : l.experts.experts)
        for (const Weight* w : {&e.gate, &e.up, &e.down}) {
          held += int64_t(w->w.nbytes() + (w->scale_inv.empty() ? 0 : w->scale_inv.nbytes()));
          bf16 += w->rows() * w->cols() * 2;
          int4 = int4 || w->is_int4();
        }
    }
    std::printf("%s: routed experts on the device: %lld bytes as held (%s) vs %lld as BF16 (%.2fx)\n", name.c_str(),
                (long long)held, int4 ? "INT4 + group scales" : "as stored", (long long)bf16,
                double(bf16) / double(std::max<int64_t>(held, 1)));
  }

  std::unique_ptr<Backend> gpu_, cpu_;
  std::unique_ptr<TraceBackend> gpu_trace_, cpu_trace_;
};

TEST_F(CudaFamilyParity, V31Fp8AsStoredForcedRoutingMatchesHf) {
  check({"v31-fp8", "models/tiny-v31", "tests/data/tiny-v31", false});
}
TEST_F(CudaFamilyParity, V31Bf16ForcedRoutingMatchesHf) {
  check({"v31-bf16", "models/tiny-v31", "tests/data/tiny-v31", true});
}
TEST_F(CudaFamilyParity, KimiK2Int4ForcedRoutingMatchesHf) {
  {
    const DeepseekV3 m("models/tiny-kimi-k2", *gpu_);
    for (const auto& l : m.weights().layers)
      if (l.is_moe) {
        ASSERT_TRUE(l.experts.experts[0].gate.is_int4()) << "the GPU keeps Kimi's experts in INT4";
      }
  }
  check({"kimi-k2", "models/tiny-kimi-k2", "tests/data/tiny-kimi-k2", false});
}

}  // namespace
}  // namespace moe
