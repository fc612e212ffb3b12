// The CUDA backend: one device (its CudaContext: stream, cuBLAS, memory pool, options), F32 activations, a
// BF16 latent cache, weights kept as stored (BF16, FP8 with block scales, INT4 with group scales) in device memory.
// Kernels live one op per file (cuda_ops.h); this file plans shapes and picks the path:
//   matmul      <= 8 tokens: weight-streaming GEMV (gemv.cuh); more: cuBLAS BF16 GEMM (FP8 weights are
//               dequantised to a BF16 scratch copy first: the slot for an FP8xFP8 tensor-core kernel).
//   moe_experts device-side counting sort by expert; fewer than 32 rows per expert on average: one grouped-GEMV
//               launch for gate+up (SwiGLU fused) and one for down (INT4 experts: the W4A16 GEMV, moe_w4a16.cu);
//               more (prefill): the grouped wgmma GEMM (cuda_backend_prefill.cpp; INT4 experts dequantised to
//               BF16 per active expert, one cuBLAS GEMM each). Then a weighted combine in slot order.
//   mla_*       absorbed MLA: W_UK folded into the query, tensor-core split-KV attention over the paged cache;
//               the expanded form for long prefill chunks (cuda_backend_prefill.cpp).
#include "backend/cuda/cuda_backend.h"

#include <cstdlib>

#include "backend/cuda/gemm.h"
#include "core/dtype.h"
#include "core/error.h"

namespace moe {

using cuda::check;
using cuda::ref;
using cuda::tile_for;

namespace cuda {

void check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) fail("CUDA error in {}: {}", what, cudaGetErrorString(e));
}
void check_launch(const char* kernel) { check(cudaGetLastError(), kernel); }

}  // namespace cuda

CudaBackend::CudaBackend(int device, const CudaOptions& options) : ctx_(device, options) {
  const cuda::DeviceGuard guard(ctx_.device());
  const unsigned zero = 0;
  router_done_ = static_cast<unsigned*>(ctx_.persistent(sizeof(zero), &zero));
  const std::vector<unsigned> zeros(cuda::kGemvCombineColumns, 0u);
  combine_done_ = static_cast<unsigned*>(ctx_.persistent(zeros.size() * sizeof(unsigned), zeros.data()));
}

CudaBackend::~CudaBackend() = default;

Tensor CudaBackend::alloc(DType dtype, Shape shape) {
  const cuda::DeviceGuard guard(ctx_.device());
  Tensor t = scratch(dtype, shape);
  if (t.view().nbytes()) check(cudaMemsetAsync(t.data(), 0, t.view().nbytes(), stream_), "cudaMemsetAsync");
  return t;
}

void CudaBackend::copy_from_host(const void* src, const TensorView& dst) {
  const cuda::DeviceGuard guard(ctx_.device());
  // A captured copy would read `src` again at every replay, long after the caller has let it go.
  MOE_CHECK(!ctx_.capturing(), "copy_from_host cannot be captured in a graph");
  if (dst.nbytes())
    check(cudaMemcpyAsync(dst.data, src, dst.nbytes(), cudaMemcpyHostToDevice, stream_), "copy_from_host");
}

void CudaBackend::copy_to_host(const TensorView& src, void* dst) {
  const cuda::DeviceGuard guard(ctx_.device());
  if (src.nbytes())
    check(cudaMemcpyAsync(dst, src.data, src.nbytes(), cudaMemcpyDeviceToHost, stream_), "copy_to_host");
  synchronize();
}

void CudaBackend::copy(const TensorView& src, const TensorView& dst) {
  const cuda::DeviceGuard guard(ctx_.device());
  MOE_CHECK(src.nbytes() == dst.nbytes(), "copy: {} bytes into {}", src.nbytes(), dst.nbytes());
  if (src.nbytes())
    check(cudaMemcpyAsync(dst.data, src.data, src.nbytes(), cudaMemcpyDeviceToDevice, stream_), "copy");
}

Weight CudaBackend::upload_weight(const Weight& host) {
  const cuda::DeviceGuard guard(ctx_.device());
  // Kept as stored: BF16/F16/F32, FP8 with its block scales, or INT4 (W4A16: packed words and group scales,
  // 4.5 bits per weight with BF16 scales; only routed experts are INT4, read by moe_experts' W4A16 path).
  Weight w = host;
  w.w = upload_persistent(host.w);
  if (host.scale_inv.data) w.scale_inv = upload_persistent(host.scale_inv);
  return w;
}

// The plan's five arrays in one device block (in the order of DeviceBatch's views), filled by update_batch.
DeviceBatch CudaBackend::upload_batch(const BatchPlan& plan) {
  const cuda::DeviceGuard guard(ctx_.device());
  DeviceBatch b;
  b.plan = &plan;
  const int64_t sizes[5] = {int64_t(plan.positions.size()), int64_t(plan.token_seq.size()),
                            int64_t(plan.slots.size()), int64_t(plan.seq_lens.size()),
                            int64_t(plan.block_table.size())};
  Tensor all =
      scratch(DType::I32, Shape{std::max<int64_t>(sizes[0] + sizes[1] + sizes[2] + sizes[3] + sizes[4], 1)});
  TensorView* views[5] = {&b.positions, &b.token_seq, &b.slots, &b.seq_lens, &b.block_table};
  int64_t off = 0;
  for (int i = 0; i < 5; ++i) {
    TensorView v;
    v.data = all.as<int32_t>() + off;
    v.dtype = DType::I32;
    v.shape = Shape{sizes[i]};
    v.device = device();
    *views[i] = v;
    off += sizes[i];
  }
  b.storage.push_back(all);
  update_batch(plan, b);
  return b;
}

void CudaBackend::update_batch(const BatchPlan& plan, DeviceBatch& batch) {
  const cuda::DeviceGuard guard(ctx_.device());
  const std::vector<int32_t>* parts[5] = {&plan.positions, &plan.token_seq, &plan.slots, &plan.seq_lens,
                                          &plan.block_table};
  const TensorView* views[5] = {&batch.positions, &batch.token_seq, &batch.slots, &batch.seq_lens,
                                &batch.block_table};
  std::vector<int32_t> packed;
  for (int i = 0; i < 5; ++i) {
    MOE_CHECK(int64_t(parts[i]->size()) == views[i]->numel(),
              "update_batch: the plan's sizes differ from the batch's");
    packed.insert(packed.end(), parts[i]->begin(), parts[i]->end());
  }
  MOE_CHECK(!batch.storage.empty(), "update_batch: the batch was not uploaded by this backend");
  MOE_CHECK(!ctx_.capturing(), "update_batch cannot be captured in a graph");
  if (!packed.empty())
    check(cudaMemcpyAsync(batch.storage[0].data(), packed.data(), packed.size() * 4, cudaMemcpyHostToDevice,
                          stream_),
          "update_batch");
}

void CudaBackend::embedding(const Weight& table, const TensorView& ids, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  cuda::embedding(ref(table), ids.as<const int32_t>(), ids.numel(), out.as<float>(), stream_);
}

void CudaBackend::rms_norm(const TensorView& x, const Weight& w, float eps, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  MOE_CHECK(w.w.numel() == x.row_size(), "rms_norm: weight has {} elements for rows of {}", w.w.numel(),
            x.row_size());
  cuda::rms_norm(x.as<const float>(), ref(w), eps, x.rows(), x.row_size(), out.as<float>(), stream_);
}

void CudaBackend::matmul(const TensorView& x, const Weight& w, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = x.rows(), K = x.row_size(), N = w.rows();
  MOE_CHECK(x.dtype == DType::F32 && out.dtype == DType::F32, "matmul: CUDA activations must be F32");
  MOE_CHECK(w.cols() == K, "matmul: x has {} columns but the weight has {}", K, w.cols());
  MOE_CHECK(out.rows() == T && out.row_size() == N, "matmul: out is {} but should be [{}, {}]",
            out.shape.str(), T, N);
  MOE_CHECK(!w.is_int4(), "matmul: INT4 weights are read only by the routed experts (moe_experts) on CUDA");
  if (T == 0) return;
  if (!use_gemm(T, w)) {
    cuda::GemvParams p = dense_gemv(w, x.as<const float>(), K, out.as<float>(), N, T);
    cuda::gemv(p, tile_for(T), stream_);
    return;
  }
  gemm(x.as<const float>(), w, out.as<float>(), T);
}

// Both projections in one GEMV launch when both stream (few tokens) with the same dtype and blocks; on the GEMM
// path their shared input converted once.
void CudaBackend::matmul_pair(const TensorView& x, const Weight& wa, const TensorView& out_a,
                              const Weight& wb, const TensorView& out_b) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = x.rows(), K = x.row_size();
  const bool one_launch = T > 0 && !wa.is_int4() && !use_gemm(T, wa) && !use_gemm(T, wb) && wa.w.dtype == wb.w.dtype &&
                          wa.block_n == wb.block_n && wa.block_k == wb.block_k && x.dtype == DType::F32;
  const bool both_gemm = T > 0 && x.dtype == DType::F32 && use_gemm(T, wa) && use_gemm(T, wb);
  if (!one_launch && !both_gemm) return Backend::matmul_pair(x, wa, out_a, wb, out_b);
  MOE_CHECK(wa.cols() == K && wb.cols() == K, "matmul_pair: x has {} columns but the weights have {} and {}",
            K, wa.cols(), wb.cols());
  MOE_CHECK(out_a.rows() == T && out_a.row_size() == wa.rows() && out_b.rows() == T &&
                out_b.row_size() == wb.rows(),
            "matmul_pair: outputs {} and {} for {} tokens and weights of {} and {} rows", out_a.shape.str(),
            out_b.shape.str(), T, wa.rows(), wb.rows());
  if (both_gemm) {  // x rounded to BF16 (bf16 / split) or quantised to E4M3 (fp8) once for both
    if (fp8_gemm_ok(wa) && fp8_gemm_ok(wb) && wa.pow2_scales == wb.pow2_scales) {
      const Fp8Activations xq = quantize_activations(x.as<const float>(), K, T, K, wa.pow2_scales);
      gemm_fp8(xq, wa, out_a.as<float>());
      gemm_fp8(xq, wb, out_b.as<float>());
    } else if (!fp8_gemm_ok(wa) && !fp8_gemm_ok(wb)) {
      const Bf16Activations xa = round_activations(x.as<const float>(), T, K);
      gemm_rounded(xa.hi_data(), xa.lo_data(), wa, out_a.as<float>(), T);
      gemm_rounded(xa.hi_data(), xa.lo_data(), wb, out_b.as<float>(), T);
    } else {
      Backend::matmul_pair(x, wa, out_a, wb, out_b);
    }
    return;
  }
  cuda::GemvParams p = dense_gemv(wa, x.as<const float>(), K, out_a.as<float>(), wa.rows(), T);
  p.second.w = wb.w.data;
  p.second.s = wb.is_fp8() ? wb.scale_inv.as<const float>() : nullptr;
  p.second.N = wb.rows();
  p.second.out = out_b.as<float>();
  p.second.out_stride = wb.rows();
  cuda::gemv(p, tile_for(T), stream_);
}

void CudaBackend::add(const TensorView& a, const TensorView& b, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  MOE_CHECK(a.numel() == b.numel() && a.numel() == out.numel(), "add: shapes differ");
  cuda::add(a.as<const float>(), b.as<const float>(), out.as<float>(), a.numel(), stream_);
}

void CudaBackend::add_rms_norm(const TensorView& h, const TensorView& y, const Weight& w, float eps,
                               const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  MOE_CHECK(h.numel() == y.numel() && h.numel() == out.numel(), "add_rms_norm: shapes differ");
  MOE_CHECK(w.w.numel() == h.row_size(), "add_rms_norm: weight has {} elements for rows of {}", w.w.numel(),
            h.row_size());
  cuda::add_rms_norm(h.as<float>(), y.as<const float>(), ref(w), eps, h.rows(), h.row_size(), out.as<float>(),
                     stream_);
}

void CudaBackend::concat_cols(const TensorView& a, const TensorView& b, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = a.rows(), da = a.row_size(), db = b.row_size();
  if (T == 0) return;
  check(cudaMemcpy2DAsync(out.data, size_t(da + db) * 4, a.data, size_t(da) * 4, size_t(da) * 4, size_t(T),
                          cudaMemcpyDeviceToDevice, stream_),
        "concat_cols");
  check(cudaMemcpy2DAsync(out.as<float>() + da, size_t(da + db) * 4, b.data, size_t(db) * 4, size_t(db) * 4,
                          size_t(T), cudaMemcpyDeviceToDevice, stream_),
        "concat_cols");
}

void CudaBackend::gather_rows(const TensorView& x, const std::vector<int32_t>& rows, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  if (rows.empty()) return;
  for (int32_t r : rows) MOE_CHECK(r >= 0 && r < x.rows(), "gather_rows: row {} of {}", r, x.rows());
  Tensor idx = scratch(DType::I32, Shape{int64_t(rows.size())});
  copy_from_host(rows.data(), idx);
  cuda::gather_rows(x.as<const float>(), idx.as<const int32_t>(), int64_t(rows.size()), x.row_size(),
                    out.as<float>(), stream_);
}

void CudaBackend::swiglu_mlp(const TensorView& x, const MlpWeights& mlp, const TensorView& out) {
  const cuda::DeviceGuard guard(ctx_.device());
  const int64_t T = x.rows(), D = x.row_size(), I = mlp.gate.rows();
  if (T == 0) return;
  if (swiglu_gemm_ok(T, mlp)) return swiglu_gemm(x, mlp, out);  // many tokens: cuda_backend_prefill.cpp
  Tensor h = scratch(DType::F32, {T, I});
  cuda::GemvParams p = dense_gemv(mlp.gate, x.as<const float>(), D, h.as<float>(), I, T);
  p.w[1] = mlp.up.w.data;
  p.s[1] = mlp.up.is_fp8() ? mlp.up.scale_inv.as<const float>() : nullptr;
  p.swiglu = true;
  cuda::gemv(p, tile_for(T), stream_);
  matmul(h, mlp.down, out);
}

// A captured step: the instantiated graph and the pool holding the memory its kernels use.
class CudaBackend::Graph final : public CapturedWork {
 public:
  Graph(cudaGraphExec_t exec, std::shared_ptr<cuda::BlockCache> pool, cudaStream_t stream, int device)
      : exec_(exec), pool_(std::move(pool)), stream_(stream), device_(device) {}
  ~Graph() override {
    const cuda::DeviceGuard guard(device_);
    cudaStreamSynchronize(stream_);  // a replay may still be running on the pool's memory
    cudaGraphExecDestroy(exec_);
  }
  cudaGraphExec_t exec() const { return exec_; }

 private:
  cudaGraphExec_t exec_;
  std::shared_ptr<cuda::BlockCache> pool_;
  cudaStream_t stream_;
  int device_;
};

void CudaBackend::begin_capture() {
  const cuda::DeviceGuard guard(ctx_.device());
  ctx_.begin_capture();
}

std::shared_ptr<CapturedWork> CudaBackend::end_capture() {
  const cuda::DeviceGuard guard(ctx_.device());
  auto [graph, pool] = ctx_.end_capture();
  cudaGraphExec_t exec = nullptr;
  const cudaError_t ie = cudaGraphInstantiateWithFlags(&exec, graph, 0);
  cudaGraphDestroy(graph);
  check(ie, "cudaGraphInstantiate");
  return std::make_shared<Graph>(exec, std::move(pool), stream_, ctx_.device());
}

void CudaBackend::abort_capture() {
  const cuda::DeviceGuard guard(ctx_.device());
  ctx_.abort_capture();
}

void CudaBackend::replay(const CapturedWork& work) {
  const cuda::DeviceGuard guard(ctx_.device());
  const auto* g = dynamic_cast<const Graph*>(&work);
  MOE_CHECK(g != nullptr, "replay: not a graph captured by this backend");
  check(cudaGraphLaunch(g->exec(), stream_), "cudaGraphLaunch");
}

TensorView CudaBackend::upload_persistent(const TensorView& host) {
  TensorView v = host;
  v.device = device();
  v.data = ctx_.persistent(host.nbytes(), host.data);
  return v;
}

const double* CudaBackend::inv_freq(const RopeParams& rope) {
  const std::vector<double>& f = rope.inv_freq;
  std::string key(reinterpret_cast<const char*>(f.data()), f.size() * sizeof(double));
  auto it = rope_tables_.find(key);
  if (it != rope_tables_.end()) return it->second;
  MOE_CHECK(!ctx_.capturing(), "the rope table of a new RopeParams cannot be uploaded inside a capture");
  void* p = ctx_.persistent(f.size() * sizeof(double), f.data());
  return rope_tables_[key] = static_cast<const double*>(p);
}

cuda::GemvParams CudaBackend::dense_gemv(const Weight& w, const float* x, int64_t x_stride, float* out,
                                         int64_t out_stride, int64_t T) {
  cuda::GemvParams p;
  p.wdtype = w.w.dtype;
  p.w[0] = w.w.data;
  p.s[0] = w.is_fp8() ? w.scale_inv.as<const float>() : nullptr;
  p.N = w.rows();
  p.K = w.cols();
  p.block_n = w.block_n;
  p.block_k = w.block_k;
  p.x = x;
  p.x_stride = x_stride;
  p.out = out;
  p.out_stride = out_stride;
  p.T = int32_t(T);
  return p;
}

int cuda_device_count() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess) {
    cudaGetLastError();
    return 0;
  }
  return count;
}

std::unique_ptr<Backend> make_cuda_backend(int device_index, const CudaOptions& options) {
  const int count = cuda_device_count();
  if (count == 0) fail("no CUDA device is present");
  MOE_CHECK(device_index >= 0 && device_index < count, "there is no CUDA device {} (this machine has {})",
            device_index, count);
  cudaDeviceProp prop{};
  cuda::check(cudaGetDeviceProperties(&prop, device_index), "cudaGetDeviceProperties");
  MOE_CHECK(prop.major == 9, "the CUDA backend is built for Hopper (sm_90a); device {} ({}) is sm_{}{}",
            device_index, prop.name, prop.major, prop.minor);
  return std::make_unique<CudaBackend>(device_index, options);
}

bool cuda_backend_available() {
  if (cuda_device_count() == 0) return false;
  cudaDeviceProp prop{};
  return cudaGetDeviceProperties(&prop, 0) == cudaSuccess && prop.major == 9;
}

}  // namespace moe
