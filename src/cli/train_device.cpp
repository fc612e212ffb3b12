#include "cli/train_device.h"

#include "core/error.h"
#ifdef MOE_HAVE_TRAIN_CUDA
#include "train/cuda/device_trainer.h"
#endif

namespace moe::cli {

TrainDevice make_train_device(const std::string& device, const std::string& gemm, const std::string& expert_gemm,
                              const std::string& attention, bool check_finite) {
  MOE_CHECK(attention == "fp32" || attention == "tf32", "--attention must be fp32 or tf32, not '{}'", attention);
  MOE_CHECK(gemm == "bf16" || gemm == "fp32" || gemm == "fp8", "--gemm must be bf16, fp8 or fp32, not '{}'", gemm);
  MOE_CHECK(expert_gemm == "grouped" || expert_gemm == "loop", "--expert-gemm must be grouped or loop, not '{}'",
            expert_gemm);
  if (device == "cpu") {
    TrainDevice d;
    d.name = "cpu";
    return d;
  }
  MOE_CHECK(device == "cuda", "--device must be cpu or cuda, not '{}'", device);
#ifdef MOE_HAVE_TRAIN_CUDA
  MOE_CHECK(train::cuda::DeviceTrainer::available(), "--device cuda: no CUDA device on this machine");
  using train::cuda::GemmPrecision;
  const GemmPrecision p = gemm == "bf16" ? GemmPrecision::Bf16 : gemm == "fp8" ? GemmPrecision::Fp8 : GemmPrecision::Fp32;
  auto c = std::make_unique<train::cuda::DeviceTrainer>(p);
  c->set_grouped_experts(expert_gemm == "grouped");
  c->set_attention_tf32(attention == "tf32");
  c->set_check_finite(check_finite);
  TrainDevice d;
  d.name = "cuda: " + c->device_name() + ", " + gemm + " GEMMs, device-resident step" +
           (gemm == "bf16" ? ", experts " + expert_gemm : "") + ", attention " + attention;
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
