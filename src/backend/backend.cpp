// Backend selection by name ("cpu", "cuda").
#include "backend/backend.h"

#include "core/error.h"

namespace moe {

#ifndef MOE_HAVE_CUDA
std::unique_ptr<Backend> make_cuda_backend(int) {
  fail("this build of moe has no CUDA backend (configure with nvcc available, -DMOE_CUDA=ON)");
}
bool cuda_backend_available() { return false; }
#endif

std::unique_ptr<Backend> make_backend(const std::string& device) {
  if (device == "cpu") return make_cpu_backend();
  if (device == "cuda") return make_cuda_backend(0);
  fail("unknown device '{}' (expected cpu or cuda)", device);
}

}  // namespace moe
