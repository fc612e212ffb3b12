// Backend selection: a device and the options of the backend that runs on it.
#include "backend/backend.h"

#include "core/error.h"

namespace moe {

#ifndef MOE_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int, const CudaOptions&) {
  fail("this build of moe has no CUDA backend (configure with nvcc available, -DMOE_CUDA=ON)");
}
bool cuda_backend_available() { return false; }
int cuda_device_count() { return 0; }
#endif

CudaOptions::Prefill parse_cuda_prefill(const std::string& name) {
  if (name == "bf16") return CudaOptions::Prefill::Bf16;
  if (name == "split") return CudaOptions::Prefill::Split;
  if (name == "gemv") return CudaOptions::Prefill::Gemv;
  if (name == "fp8") return CudaOptions::Prefill::Fp8;
  fail("unknown CUDA prefill precision '{}' (expected bf16, split, gemv or fp8)", name);
}

MlaDecodeKernel parse_mla_decode_kernel(const std::string& name) {
  if (name == "auto") return MlaDecodeKernel::Auto;
  if (name == "mma") return MlaDecodeKernel::Mma;
  if (name == "wgmma") return MlaDecodeKernel::Wgmma;
  fail("unknown MLA decode kernel '{}' (expected auto, mma or wgmma)", name);
}

std::unique_ptr<Backend> make_backend(const BackendOptions& options) {
  if (options.device.is_host()) return make_cpu_backend(options.cpu);
  return make_cuda_backend(options.device.index, options.cuda);
}

std::unique_ptr<Backend> make_backend(const std::string& device) {
  BackendOptions options;
  options.device = Device::parse(device);
  return make_backend(options);
}

}  // namespace moe
