#include "cli/train_device.h"

#include <charconv>

#include "core/error.h"
#ifdef MOE_HAVE_TRAIN_CUDA
#include "train/cuda/device_trainer.h"
#endif

namespace moe::cli {

int64_t fp8_expert_both_layers(const std::string& v) {
  if (v.empty() || v == "both") return -1;
  if (v == "forward") return 0;
  int64_t n = 0;
  const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
  MOE_CHECK(ec == std::errc() && end == v.data() + v.size() && n >= 0,
            "--fp8-expert-weights must be both, forward or a number of layers (0 or more), not '{}'", v);
  return n;
}

TrainDevice make_train_device(const TrainDeviceOptions& given) {
  if (given.device == "cpu") {
    MOE_CHECK(
        given.expert_gemm.empty() && given.attention.empty() && given.head.empty() && !given.check_finite &&
            given.fp8_expert_weights.empty(),
        "--expert-gemm, --attention, --head, --fp8-expert-weights and --check-finite are for --device "
        "cuda (the CPU trainer runs its GEMMs in FP32 with BF16-rounded operands where the recipe says)");
  }
  TrainDeviceOptions o = given;
  if (o.expert_gemm.empty()) o.expert_gemm = "grouped";
  if (o.attention.empty()) o.attention = "fp32";
  if (o.head.empty()) o.head = "fp32";
  const int64_t both_layers = fp8_expert_both_layers(o.fp8_expert_weights);
  MOE_CHECK(o.attention == "fp32" || o.attention == "tf32" || o.attention == "bf16" || o.attention == "flash",
            "--attention must be fp32, tf32, bf16 or flash, not '{}'", o.attention);
  MOE_CHECK(o.head == "fp32" || o.head == "bf16", "--head must be fp32 or bf16, not '{}'", o.head);
  MOE_CHECK(o.gemm == "bf16" || o.gemm == "fp32" || o.gemm == "fp8", "--gemm must be bf16, fp8 or fp32, not '{}'",
            o.gemm);
  MOE_CHECK(o.expert_gemm == "grouped" || o.expert_gemm == "loop", "--expert-gemm must be grouped or loop, not '{}'",
            o.expert_gemm);
  if (o.device == "cpu") {
    TrainDevice d;
    d.name = "cpu";
    return d;
  }
  MOE_CHECK(o.device == "cuda", "--device must be cpu or cuda, not '{}'", o.device);
#ifdef MOE_HAVE_TRAIN_CUDA
  MOE_CHECK(train::cuda::DeviceTrainer::available(), "--device cuda: no CUDA device on this machine");
  using train::cuda::AttnPrecision;
  using train::cuda::GemmPrecision;
  const GemmPrecision p =
      o.gemm == "bf16" ? GemmPrecision::Bf16 : o.gemm == "fp8" ? GemmPrecision::Fp8 : GemmPrecision::Fp32;
  const int gpu = o.local_rank % train::cuda::DeviceTrainer::device_count();
  auto c = std::make_unique<train::cuda::DeviceTrainer>(p, gpu);
  c->set_grouped_experts(o.expert_gemm == "grouped");
  c->set_attention(o.attention == "tf32"   ? AttnPrecision::Tf32
                   : o.attention == "bf16"  ? AttnPrecision::Bf16
                   : o.attention == "flash" ? AttnPrecision::Flash
                                            : AttnPrecision::Fp32);
  c->set_head_fp32(o.head == "fp32");
  c->set_check_finite(o.check_finite);
  c->set_fp8_expert_both_layers(both_layers);
  TrainDevice d;
  d.name = "cuda" + (gpu ? ":" + std::to_string(gpu) : std::string()) + ": " + c->device_name() + ", " + o.gemm + " GEMMs, device-resident step" +
           (o.gemm == "bf16" ? ", experts " + o.expert_gemm : "") + ", attention " + o.attention + ", head " + o.head;
  train::cuda::DeviceTrainer* raw = c.get();
  d.gemm_gflops = [raw] { return raw->measure_bf16_gemm_gflops(); };
  d.gemm_summary = [raw] { return raw->gemm_summary(); };
  d.step = std::move(c);
  return d;
#else
  fail("--device cuda: this build of moe has no CUDA (configure with -DMOE_CUDA=ON on a machine with nvcc)");
#endif
}

}  // namespace moe::cli
