// The per-device context of the CUDA backend (see cuda_context.h).
#include "backend/cuda/cuda_context.h"

#include <algorithm>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace moe::cuda {

namespace {

// cuBLAS's own recommendation for Hopper; a workspace set by the caller is what lets a GEMM be captured.
constexpr size_t kCublasWorkspaceBytes = size_t(32) << 20;

size_t round_block(size_t bytes) {
  const size_t g = bytes <= (size_t(1) << 20) ? 256 : bytes <= (size_t(64) << 20) ? (size_t(64) << 10) : (size_t(2) << 20);
  return (std::max<size_t>(bytes, 16) + g - 1) / g * g;
}

}  // namespace

DeviceGuard::DeviceGuard(int device) : device_(device) {
  check(cudaGetDevice(&previous_), "cudaGetDevice");
  if (previous_ != device_) check(cudaSetDevice(device_), "cudaSetDevice");
}

DeviceGuard::~DeviceGuard() {
  if (previous_ != device_) cudaSetDevice(previous_);
}

void* BlockCache::take(size_t bytes) {
  std::lock_guard<std::mutex> lock(mu_);
  auto it = free_.find(bytes);
  if (it == free_.end() || it->second.empty()) return nullptr;
  void* p = it->second.back();
  it->second.pop_back();
  return p;
}

void BlockCache::give(size_t bytes, void* p) {
  std::lock_guard<std::mutex> lock(mu_);
  free_[bytes].push_back(p);
}

void BlockCache::release_all() {
  std::lock_guard<std::mutex> lock(mu_);
  if (free_.empty()) return;
  DeviceGuard guard(device_);
  for (auto& [bytes, v] : free_)
    for (void* p : v) cudaFree(p);
  free_.clear();
}

CudaContext::CudaContext(int device, const CudaOptions& options)
    : device_(device), options_(options), blocks_(std::make_shared<BlockCache>(device)) {
  MOE_CHECK(options.mla_prefill_min_tokens >= 0, "CUDA options: mla_prefill_min_tokens must be >= 0");
  MOE_CHECK(options.mla_splits >= 0, "CUDA options: mla_splits must be >= 0");
  DeviceGuard guard(device_);
  cudaDeviceProp prop{};
  check(cudaGetDeviceProperties(&prop, device_), "cudaGetDeviceProperties");
  name_ = "cuda:" + std::to_string(device_) + " (" + prop.name + ")";
  sms_ = prop.multiProcessorCount;
  check(cudaStreamCreateWithFlags(&stream_, cudaStreamNonBlocking), "cudaStreamCreate");
  if (cublasCreate(&cublas_) != CUBLAS_STATUS_SUCCESS) fail("cublasCreate failed on {}", name_);
  cublasSetStream(cublas_, stream_);
  check(cudaMalloc(&cublas_workspace_, kCublasWorkspaceBytes), "cudaMalloc (cuBLAS workspace)");
  if (cublasSetWorkspace(cublas_, cublas_workspace_, kCublasWorkspaceBytes) != CUBLAS_STATUS_SUCCESS)
    fail("cublasSetWorkspace failed on {}", name_);
  configure_mla_attention_kernels();
  configure_grouped_gemm_kernels();
  configure_grouped_gemm_fp8_kernels();
  configure_mla_prefill_kernels();
}

CudaContext::~CudaContext() {
  DeviceGuard guard(device_);
  abort_capture();
  cudaStreamSynchronize(stream_);
  for (void* p : persistent_) cudaFree(p);
  blocks_->release_all();
  cublasDestroy(cublas_);
  cudaFree(cublas_workspace_);
  cudaStreamDestroy(stream_);
}

Tensor CudaContext::scratch(DType dtype, Shape shape) {
  TensorView v;
  v.dtype = dtype;
  v.shape = shape;
  v.device = Device::cuda(device_);
  const size_t bytes = round_block(v.nbytes());
  const std::shared_ptr<BlockCache>& pool = capture_pool_ ? capture_pool_ : blocks_;
  void* p = pool->take(bytes);
  if (!p && capture_pool_) p = blocks_->take(bytes);  // capturing: a free block moves to the capture's pool
  if (!p && cudaMalloc(&p, bytes) != cudaSuccess) {
    cudaGetLastError();  // out of memory: give the cached blocks back and try once more
    if (!capturing()) check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
    blocks_->release_all();
    check(cudaMalloc(&p, bytes), "cudaMalloc (scratch)");
  }
  v.data = p;
  std::shared_ptr<BlockCache> c = pool;
  return Tensor(v, std::shared_ptr<void>(p, [c, bytes](void* q) { c->give(bytes, q); }));
}

void* CudaContext::persistent(size_t bytes, const void* host_src) {
  void* p = nullptr;
  check(cudaMalloc(&p, std::max<size_t>(bytes, 16)), "cudaMalloc (persistent)");
  persistent_.push_back(p);
  if (host_src && bytes) check(cudaMemcpy(p, host_src, bytes, cudaMemcpyHostToDevice), "upload");
  return p;
}

void CudaContext::synchronize() {
  MOE_CHECK(!capturing(), "{}: a host synchronisation cannot be captured in a graph", name_);
  check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
}

void CudaContext::begin_capture() {
  MOE_CHECK(!capture_pool_, "begin_capture: a capture is already under way");
  capture_pool_ = std::make_shared<BlockCache>(device_);
  // Relaxed: scratch() may still cudaMalloc while capturing (no stream work, so nothing is lost).
  check(cudaStreamBeginCapture(stream_, cudaStreamCaptureModeRelaxed), "cudaStreamBeginCapture");
}

std::pair<cudaGraph_t, std::shared_ptr<BlockCache>> CudaContext::end_capture() {
  MOE_CHECK(capture_pool_ != nullptr, "end_capture without begin_capture");
  cudaGraph_t graph = nullptr;
  const cudaError_t e = cudaStreamEndCapture(stream_, &graph);
  std::shared_ptr<BlockCache> pool = std::move(capture_pool_);
  check(e, "cudaStreamEndCapture");
  return {graph, std::move(pool)};
}

void CudaContext::abort_capture() {
  if (!capture_pool_) return;
  cudaGraph_t graph = nullptr;
  cudaStreamEndCapture(stream_, &graph);
  if (graph) cudaGraphDestroy(graph);
  cudaGetLastError();
  capture_pool_.reset();
}

}  // namespace moe::cuda
