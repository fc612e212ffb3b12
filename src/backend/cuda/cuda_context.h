#pragma once
// One CUDA device's state, owned by one CudaBackend: the device index, its stream, the cuBLAS handle with a
// workspace of its own (so that cuBLAS never allocates while a step is being captured as a graph), the
// memory pool, the kernel attributes set for this device, and the backend's options. Nothing of it is
// process-wide: two backends (two contexts) live in one process, on two devices or on the same one.
//
// Launchers (cuda_ops.h) stay plain functions of their parameters and a stream: the stream names the device
// the work runs on, the SM count and split choices come in their parameters, and kernel attributes are set
// per device here. That keeps them capturable and callable from the bench/gpu sandboxes.
//
// Memory: alloc() and the ops' scratch draw from a host-side caching allocator (BlockCache): a freed block
// goes to a free list keyed by its size and is handed to the next request of that size without any CUDA
// call. That is safe because every use of the memory is enqueued on the context's one stream, so work
// enqueued later runs after the work that used the block before; host reads synchronise. During a capture,
// scratch comes from the capture's own pool, whose blocks stay reserved for the graph (its replays write
// them) until the graph and its tensors are gone.
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <memory>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "backend/backend_options.h"
#include "core/tensor.h"

namespace moe::cuda {

// Makes `device` current for the guard's lifetime (every CudaBackend entry point holds one).
class DeviceGuard {
 public:
  explicit DeviceGuard(int device);
  ~DeviceGuard();
  DeviceGuard(const DeviceGuard&) = delete;
  DeviceGuard& operator=(const DeviceGuard&) = delete;

 private:
  int previous_ = -1, device_;
};

// Freed device blocks by size. Shared with the Tensors' deleters, so a Tensor that outlives the context
// still has somewhere to return its block (the deleters make no CUDA call).
class BlockCache {
 public:
  explicit BlockCache(int device) : device_(device) {}
  ~BlockCache() { release_all(); }
  void* take(size_t bytes);
  void give(size_t bytes, void* p);
  void release_all();  // cudaFree of every cached block; the caller has synchronised the stream

 private:
  int device_;
  std::mutex mu_;
  std::unordered_map<size_t, std::vector<void*>> free_;
};

class CudaContext {
 public:
  CudaContext(int device, const CudaOptions& options);
  ~CudaContext();
  CudaContext(const CudaContext&) = delete;
  CudaContext& operator=(const CudaContext&) = delete;

  int device() const { return device_; }
  const std::string& name() const { return name_; }  // "cuda:0 (NVIDIA H200)"
  int sms() const { return sms_; }
  const CudaOptions& options() const { return options_; }
  cudaStream_t stream() const { return stream_; }
  cublasHandle_t cublas() const { return cublas_; }

  // Uninitialised device memory [shape] from the pool (the capture's pool while capturing).
  Tensor scratch(DType dtype, Shape shape);
  // Device memory that lives as long as the context (weights, tables); synchronous upload of `bytes`.
  void* persistent(size_t bytes, const void* host_src = nullptr);
  void synchronize();  // the stream; refused while capturing

  // Graph capture of the stream (CudaBackend::begin_capture / end_capture).
  bool capturing() const { return capture_pool_ != nullptr; }
  void begin_capture();
  // Ends the capture: the graph and the pool its memory came from (the graph keeps it).
  std::pair<cudaGraph_t, std::shared_ptr<BlockCache>> end_capture();
  void abort_capture();

 private:
  int device_;
  CudaOptions options_;
  std::string name_;
  int sms_ = 132;
  cudaStream_t stream_ = nullptr;
  cublasHandle_t cublas_ = nullptr;
  void* cublas_workspace_ = nullptr;
  std::vector<void*> persistent_;
  std::shared_ptr<BlockCache> blocks_, capture_pool_;
};

}  // namespace moe::cuda
