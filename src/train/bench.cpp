#include "train/bench.h"

#include <algorithm>
#include <chrono>
#include <optional>
#include <random>
#include <thread>

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include "backend/backend.h"
#include "core/error.h"
#include "core/thread_pool.h"
#include "dist/communicator.h"
#include "train/data.h"
#include "train/device_step.h"
#include "train/memory_plan.h"
#include "train/model.h"
#include "train/optimizer.h"
#include "train/parallel.h"

namespace moe::train {

namespace {

using Clock = std::chrono::steady_clock;
constexpr double kGiB = 1073741824.0;

double seconds_since(Clock::time_point t0) { return std::chrono::duration<double>(Clock::now() - t0).count(); }

// The CPU backend's F32 GEMM, x [256, 1024] W[1024, 1024]^T, repeated for about a second: 2 T N K flops a call.
double measure_gemm_gflops(int threads) {
  const int64_t T = 256, N = 1024, K = 1024;
  CpuOptions o;
  o.threads = threads;
  auto backend = make_cpu_backend(o);
  Tensor w = Tensor::host(DType::F32, {N, K}), x = Tensor::host(DType::F32, {T, K}), y = Tensor::host(DType::F32, {T, N});
  std::mt19937 rng(1);
  std::uniform_real_distribution<float> u(-1.f, 1.f);
  for (int64_t i = 0; i < w.numel(); ++i) w.as<float>()[i] = u(rng);
  for (int64_t i = 0; i < x.numel(); ++i) x.as<float>()[i] = u(rng);
  Weight weight;
  weight.w = w.view();
  backend->matmul(x.view(), weight, y.view());  // warm-up: pages touched, threads started
  int64_t calls = 0;
  const auto t0 = Clock::now();
  double secs = 0;
  while ((secs = seconds_since(t0)) < 1.0 || calls < 3) {
    backend->matmul(x.view(), weight, y.view());
    ++calls;
  }
  return 2.0 * double(T * N * K) * double(calls) / secs / 1e9;
}

}  // namespace

double train_flops_per_token(const ModelConfig& c, int64_t seq_len) {
  const double D = double(c.hidden_size), H = double(c.num_attention_heads), dq = double(c.qk_head_dim());
  const double r = double(c.kv_lora_rank), dr = double(c.qk_rope_head_dim), dn = double(c.qk_nope_head_dim);
  const double dv = double(c.v_head_dim), ctx = double(seq_len + 1) / 2.0;
  auto layer = [&](int64_t l) {
    double m = c.q_lora_rank > 0 ? D * double(c.q_lora_rank) + double(c.q_lora_rank) * H * dq : D * H * dq;
    m += D * (r + dr) + r * H * (dn + dv) + H * dv * D;
    m += H * (dq + dv) * ctx;  // scores and the weighted sum of values
    if (c.is_moe_layer(l)) {
      const double f = double(c.moe_intermediate_size);
      m += D * double(c.n_routed_experts) + 3.0 * D * f * double(c.num_experts_per_tok + c.n_shared_experts);
    } else {
      m += 3.0 * D * double(c.intermediate_size);
    }
    return m;
  };
  double macs = D * double(c.vocab_size);  // the head
  for (int64_t l = 0; l < c.num_hidden_layers; ++l) macs += layer(l);
  if (c.num_nextn_predict_layers > 0) macs += 2.0 * D * D + layer(c.num_hidden_layers) + D * double(c.vocab_size);
  return 6.0 * macs;
}

TrainBenchResult run_train_bench(const TrainBenchOptions& o) {
  MOE_CHECK(o.seq_len >= 3 && o.batch >= 1 && o.steps >= 1, "train-bench: --seq-len >= 3, --batch and --steps >= 1");
  const nlohmann::json cfg = [&] {
    try {
      return nlohmann::json::parse(read_file(o.config_path));
    } catch (const nlohmann::json::exception& e) {
      fail("{}: not valid JSON: {}", o.config_path, e.what());
    }
  }();
  const ModelConfig config = ModelConfig::from_json(cfg, o.config_path);
  MOE_CHECK(o.moments == "f32" || o.moments == "bf16", "train-bench: --moments is f32 or bf16, not {}", o.moments);
  const bool bf16_moments = o.moments == "bf16";
  const int64_t micro = o.micro_batch > 0 ? o.micro_batch : o.batch;
  MOE_CHECK(o.batch > 0 && o.seq_len > 0 && o.steps > 0, "train-bench: --batch, --seq-len and --steps must be positive");
  MOE_CHECK(micro <= o.batch && o.batch % micro == 0,
            "train-bench: --batch {} is not a multiple of --micro-batch {}", o.batch, micro);
  TrainBenchResult r;
  r.micro_batches = o.batch / micro;
  r.moments = o.moments;
  if (o.step) {
    const DeviceMemoryPlan plan = device_memory_plan(config, micro, o.seq_len, bf16_moments, o.attention,
                                                     o.gemm, o.fp8_expert_both_layers);
    r.plan_gib = plan.total() / kGiB, r.plan_params_gib = plan.arenas / kGiB;
    r.plan_activations_gib = (plan.activations + plan.temporaries) / kGiB;
    r.plan_weight_copies_gib = plan.weight_copies / kGiB;
    if (o.log)
      o.log(
          fmt::format("train-bench: memory plan for micro-batches of {} x {}: {:.2f} GiB (arenas {:.2f}, FP8 "
                      "weights {:.2f}, kept activations {:.2f}, backward temporaries {:.2f})",
                      micro, o.seq_len, r.plan_gib, r.plan_params_gib, plan.weight_copies / kGiB,
                      plan.activations / kGiB, plan.temporaries / kGiB));
    o.step->set_bf16_moments(bf16_moments);
    o.step->check_fits(parameter_count(config));  // before the host copies of a model that cannot fit
    // The device's GEMM rate before the model's arenas take its memory (its 8192^3 operands stay allocated).
    if (o.device_gemm_gflops) r.gemm_gflops = o.device_gemm_gflops();
  }
  r.threads = o.threads > 0 ? o.threads : int(std::max(1u, std::thread::hardware_concurrency()));
  ThreadPool pool(r.threads);
  // On a device the host keeps only the values (the device's arenas hold the rest): train-mid's 10 B parameters
  // would need 162 GB of host memory with gradients and moments.
  TrainModel model = TrainModel::init(config, o.config_path, 1, 0.02, &pool, /*host_state=*/o.step == nullptr);
  model.pool = &pool;
  model.device = o.step;
  r.device = o.device;

  std::optional<DistributedTraining> dp;
  if (o.comm) dp.emplace(model, *o.comm, ParallelOptions{});
  r.ranks = o.comm ? o.comm->size() : 1;
  std::mt19937 rng(3 + uint32_t(o.comm ? o.comm->rank() : 0));  // each rank its own tokens
  std::uniform_int_distribution<int32_t> id(1, int32_t(model.config.vocab_size) - 1);
  std::vector<int32_t> ids(size_t(micro * o.seq_len));
  const Objective obj;
  AdamW adamw;
  adamw.bf16_moments = bf16_moments;
  auto step = [&](int64_t s) {  // trainer.cpp's accumulated step: k micro-batches, the gradient sum / k, AdamW
    model.zero_grad();
    ExpertLoads loads;
    for (int64_t i = 0; i < r.micro_batches; ++i) {
      for (auto& x : ids) x = id(rng);
      ExpertLoads part;
      if (dp && i == r.micro_batches - 1) dp->before_last_pass();
      forward_backward(model, ids, micro, o.seq_len, obj, &part);
      add_loads(loads, part);
    }
    if (r.micro_batches > 1) scale_gradients(model, 1.0 / double(r.micro_batches));
    if (dp) {
      dp->reduce(LossParts{}, &loads);  // the gradients all-reduced and averaged, the loads summed
      dp->step(adamw, 1e-3, 1.0, s);
    } else {
      adamw_step(model, adamw, 1e-3, 1.0, s);
    }
    update_correction_biases(model, loads, 1e-3);
  };
  step(1);  // warm-up: allocations, first touches
  if (o.step) o.step->synchronize();  // a device's queue drained
  if (o.step && o.profile) o.step->set_profile(true);
  if (o.comm) o.comm->barrier();  // the ranks' clocks start together
  const auto t0 = Clock::now();
  for (int64_t s = 0; s < o.steps; ++s) step(s + 2);
  if (o.step) o.step->synchronize();  // the last step's AdamW finished before the clock stops (not a gradient norm:
                                      // a read of every gradient, ~9 ms at train-mid, that no step does)
  r.step_seconds = seconds_since(t0) / double(o.steps);
  if (o.step) {
    if (o.profile) {
      r.profile_ms = o.step->profile_ms();
      for (auto& [name, ms] : r.profile_ms) ms /= double(o.steps);
      o.step->set_profile(false);
    }
    const DeviceMemory mem = o.step->memory();
    r.free_before_gib = mem.free_before / kGiB, r.peak_used_gib = mem.peak_used / kGiB;
  }
  r.tokens_per_step = o.batch * o.seq_len * r.ranks;
  r.tokens_per_s = double(r.tokens_per_step) / r.step_seconds;
  r.flops_per_token = train_flops_per_token(model.config, o.seq_len);
  r.train_gflops = r.flops_per_token * r.tokens_per_s / 1e9;
  if (!o.step || !o.device_gemm_gflops) r.gemm_gflops = measure_gemm_gflops(r.threads);
  r.fraction = r.train_gflops / (double(r.ranks) * r.gemm_gflops);
  return r;
}

std::string bench_json(const TrainBenchResult& r) {
  nlohmann::ordered_json j{{"device", r.device},
                                {"threads", r.threads},
                                {"ranks", r.ranks},
                                {"tokens_per_step", r.tokens_per_step},
                                {"micro_batches", r.micro_batches},
                                {"step_s", r.step_seconds},
                                {"tokens_per_s", r.tokens_per_s},
                                {"flops_per_token", r.flops_per_token},
                                {"train_gflops", r.train_gflops},
                                {"gemm_gflops", r.gemm_gflops},
                                {"fraction_of_gemm", r.fraction},
                                {"moments", r.moments}};
  if (r.plan_gib > 0) {
    j["memory_plan_gib"] = r.plan_gib;
    j["memory_plan_arenas_gib"] = r.plan_params_gib;
    j["memory_plan_activations_gib"] = r.plan_activations_gib;
    j["memory_plan_fp8_weights_gib"] = r.plan_weight_copies_gib;
    j["memory_free_before_gib"] = r.free_before_gib;
    j["memory_peak_used_gib"] = r.peak_used_gib;
  }
  if (!r.profile_ms.empty()) {
    nlohmann::ordered_json p;
    for (const auto& [name, ms] : r.profile_ms) p[name] = ms;
    j["profile_ms_per_step"] = p;
  }
  return j.dump();
}

}  // namespace moe::train
