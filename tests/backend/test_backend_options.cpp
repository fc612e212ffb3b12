// Backend selection from outside text (the CLI's --device, --cuda-prefill and --cuda-mla-decode): good values and the errors for bad
// ones, which must name what was given.
#include <gtest/gtest.h>

#include <functional>
#include <string>

#include "backend/backend.h"
#include "core/error.h"

namespace moe {
namespace {

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(BackendOptions, DeviceNames) {
  EXPECT_EQ(Device::parse("cpu"), Device::host());
  EXPECT_EQ(Device::parse("cuda"), Device::cuda(0));
  EXPECT_EQ(Device::parse("cuda:3"), Device::cuda(3));
  EXPECT_EQ(Device::cuda(3).str(), "cuda:3");
  EXPECT_EQ(Device::host().str(), "cpu");
  for (const char* bad : {"gpu", "", "cuda:", "cuda:x", "cuda:1x", "cuda:-1", "cuda:123456", "CPU"}) {
    const std::string e = error_of([&] { Device::parse(bad); });
    EXPECT_NE(e.find(std::string("unknown device '") + bad + "'"), std::string::npos) << bad << ": " << e;
  }
}

TEST(BackendOptions, CudaPrefillNames) {
  EXPECT_EQ(parse_cuda_prefill("bf16"), CudaOptions::Prefill::Bf16);
  EXPECT_EQ(parse_cuda_prefill("split"), CudaOptions::Prefill::Split);
  EXPECT_EQ(parse_cuda_prefill("gemv"), CudaOptions::Prefill::Gemv);
  EXPECT_EQ(parse_cuda_prefill("fp8"), CudaOptions::Prefill::Fp8);
  EXPECT_NE(error_of([] { parse_cuda_prefill("fp4"); }).find("'fp4'"), std::string::npos);
}

TEST(BackendOptions, MlaDecodeKernelNames) {
  EXPECT_EQ(parse_mla_decode_kernel("auto"), MlaDecodeKernel::Auto);
  EXPECT_EQ(parse_mla_decode_kernel("mma"), MlaDecodeKernel::Mma);
  EXPECT_EQ(parse_mla_decode_kernel("wgmma"), MlaDecodeKernel::Wgmma);
  for (const char* bad : {"", "WGMMA", "wgmma ", "mma.sync"}) {
    const std::string e = error_of([&] { parse_mla_decode_kernel(bad); });
    EXPECT_NE(e.find(std::string("unknown MLA decode kernel '") + bad + "'"), std::string::npos) << bad << ": " << e;
  }
}

TEST(BackendOptions, CpuBackendFromOptions) {
  BackendOptions o;
  o.cpu.threads = 1;
  EXPECT_EQ(make_backend(o)->device(), Device::host());
  o.cpu.threads = -1;
  EXPECT_NE(error_of([&] { make_backend(o); }).find("threads"), std::string::npos);
}

}  // namespace
}  // namespace moe
