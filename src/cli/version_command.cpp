// `moe --version`: the version, the commit built from, and the versions of the libraries that shape behaviour
// (the CUDA runtime, driver, cuBLAS and cuBLASLt where built with CUDA; nlohmann/json, cpp-httplib, CLI11).
#include <fmt/format.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include "cli/commands.h"
#include "git_commit.h"

#ifdef MOE_HAVE_CUDA
#include <cublasLt.h>
#include <cublas_api.h>
#include <cuda_runtime_api.h>
#endif

namespace moe::cli {

namespace {

std::string cuda_versions() {
#ifdef MOE_HAVE_CUDA
  // 12040 -> 12.4
  auto v = [](int n) { return n > 0 ? fmt::format("{}.{}", n / 1000, (n % 1000) / 10) : std::string("none"); };
  int runtime = 0, driver = 0, major = 0, minor = 0, patch = 0;
  cudaRuntimeGetVersion(&runtime);
  cudaDriverGetVersion(&driver);  // 0 without a driver: built with CUDA, run on a machine without a GPU
  cublasGetProperty(MAJOR_VERSION, &major);
  cublasGetProperty(MINOR_VERSION, &minor);
  cublasGetProperty(PATCH_LEVEL, &patch);
  const size_t lt = cublasLtGetVersion();
  return fmt::format("CUDA runtime {}, driver {}, cuBLAS {}.{}.{}, cuBLASLt {}.{}.{}", v(runtime), v(driver), major,
                     minor, patch, lt / 10000, (lt / 100) % 100, lt % 100);
#else
  return "CUDA: not built with CUDA (CPU backend only)";
#endif
}

}  // namespace

std::string version_text() {
  return fmt::format("moe {} (commit {})\n{}\nnlohmann/json {}.{}.{}, cpp-httplib {}, CLI11 {}", MOE_VERSION,
                     MOE_GIT_COMMIT, cuda_versions(), NLOHMANN_JSON_VERSION_MAJOR, NLOHMANN_JSON_VERSION_MINOR,
                     NLOHMANN_JSON_VERSION_PATCH, CPPHTTPLIB_VERSION, CLI11_VERSION);
}

}  // namespace moe::cli
