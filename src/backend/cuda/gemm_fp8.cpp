// cuBLASLt block-scaled FP8 GEMMs (see gemm_fp8.h for the operands' layouts).
#include "backend/cuda/gemm_fp8.h"

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"

namespace moe::cuda {

namespace {

constexpr size_t kWorkspaceBytes = size_t(32) << 20;  // cuBLAS's recommendation for Hopper

void lt_check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) fail("cuBLASLt error {} in {}", int(s), what);
}

}  // namespace

// Descriptors of one shape, made once: the scale pointers are set per call (they are attributes of the
// operation descriptor, which is cheap to update).
struct Fp8Gemm::Plan {
  cublasLtMatmulDesc_t op = nullptr;
  cublasLtMatrixLayout_t a = nullptr, b = nullptr, d = nullptr;
  cublasLtMatmulAlgo_t algo{};
  bool found = false;
  int status = 0, results = 0;  // of the heuristic query, for the error message
  ~Plan() {
    if (d) cublasLtMatrixLayoutDestroy(d);
    if (b) cublasLtMatrixLayoutDestroy(b);
    if (a) cublasLtMatrixLayoutDestroy(a);
    if (op) cublasLtMatmulDescDestroy(op);
  }
};

Fp8Gemm::Fp8Gemm(cudaStream_t stream) : stream_(stream) {
  lt_check(cublasLtCreate(&lt_), "cublasLtCreate");
  check(cudaMalloc(&workspace_, kWorkspaceBytes), "cudaMalloc (cuBLASLt workspace)");
  check(cudaEventCreateWithFlags(&forked_, cudaEventDisableTiming), "cudaEventCreate");
  for (int i = 0; i < kLanes; ++i) {
    check(cudaStreamCreateWithFlags(&lanes_[i], cudaStreamNonBlocking), "cudaStreamCreate (FP8 GEMM lane)");
    check(cudaMalloc(&lane_ws_[i], kWorkspaceBytes), "cudaMalloc (cuBLASLt lane workspace)");
    check(cudaEventCreateWithFlags(&done_[i], cudaEventDisableTiming), "cudaEventCreate");
  }
}

void Fp8Gemm::fork() {
  check(cudaEventRecord(forked_, stream_), "cudaEventRecord (fork)");
  for (int i = 0; i < kLanes; ++i) check(cudaStreamWaitEvent(lanes_[i], forked_, 0), "cudaStreamWaitEvent (fork)");
}

void Fp8Gemm::join() {
  for (int i = 0; i < kLanes; ++i) {
    check(cudaEventRecord(done_[i], lanes_[i]), "cudaEventRecord (join)");
    check(cudaStreamWaitEvent(stream_, done_[i], 0), "cudaStreamWaitEvent (join)");
  }
}

Fp8Gemm::~Fp8Gemm() {
  for (auto& [k, p] : plans_) delete p;
  for (int i = 0; i < kLanes; ++i) {
    if (lanes_[i]) cudaStreamSynchronize(lanes_[i]);
    cudaStreamDestroy(lanes_[i]);
    cudaFree(lane_ws_[i]);
    cudaEventDestroy(done_[i]);
  }
  cudaEventDestroy(forked_);
  cudaFree(workspace_);
  cudaFree(tmp_);
  cublasLtDestroy(lt_);
}

Fp8Gemm::Plan* Fp8Gemm::plan_for(int64_t T, int64_t N, int64_t K, int64_t ldo, bool out_bf16, bool accumulate,
                                 bool w_vec128, const float* ws, const float* xs) {
  const auto key = std::make_tuple(T, N, K, ldo, out_bf16, accumulate, w_vec128);
  auto it = plans_.find(key);
  if (it != plans_.end()) return it->second;
  // The heuristic refuses block scale modes without their scale pointers: any 16-byte aligned device pointers
  // do for the query (each run sets the real ones).
  MOE_CHECK(ws && xs, "FP8 GEMM plan: the scale pointers are needed for cuBLASLt's heuristic");
  auto* p = new Plan;
  plans_[key] = p;
  lt_check(cublasLtMatmulDescCreate(&p->op, CUBLAS_COMPUTE_32F, CUDA_R_32F), "cublasLtMatmulDescCreate");
  const cublasOperation_t ta = CUBLAS_OP_T, tb = CUBLAS_OP_N;
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSA, &ta, sizeof(ta)), "TRANSA");
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_TRANSB, &tb, sizeof(tb)), "TRANSB");
  const int32_t amode = w_vec128 ? CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F : CUBLASLT_MATMUL_MATRIX_SCALE_BLK128x128_32F,
                bmode = CUBLASLT_MATMUL_MATRIX_SCALE_VEC128_32F;
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_MODE, &amode, sizeof(amode)),
           "A_SCALE_MODE");
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_MODE, &bmode, sizeof(bmode)),
           "B_SCALE_MODE");
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &ws, sizeof(ws)), "A_SCALE_POINTER");
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &xs, sizeof(xs)), "B_SCALE_POINTER");
  const cudaDataType_t dt = out_bf16 ? CUDA_R_16BF : CUDA_R_32F;
  lt_check(cublasLtMatrixLayoutCreate(&p->a, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(N), K), "layout A");
  lt_check(cublasLtMatrixLayoutCreate(&p->b, CUDA_R_8F_E4M3, uint64_t(K), uint64_t(T), K), "layout B");
  lt_check(cublasLtMatrixLayoutCreate(&p->d, dt, uint64_t(N), uint64_t(T), ldo), "layout D");
  const Key bucket = std::make_tuple((T + 63) / 64 * 64, N, K, ldo, out_bf16, accumulate, w_vec128);
  auto known = algos_.find(bucket);
  if (known != algos_.end()) {
    cublasLtMatmulHeuristicResult_t chk{};
    if (cublasLtMatmulAlgoCheck(lt_, p->op, p->a, p->b, p->d, p->d, &known->second, &chk) == CUBLAS_STATUS_SUCCESS &&
        chk.workspaceSize <= kWorkspaceBytes) {
      p->algo = known->second;
      p->found = true;
      return p;
    }
  }
  cublasLtMatmulPreference_t pref = nullptr;
  lt_check(cublasLtMatmulPreferenceCreate(&pref), "cublasLtMatmulPreferenceCreate");
  const uint64_t ws_bytes = kWorkspaceBytes;
  cublasLtMatmulPreferenceSetAttribute(pref, CUBLASLT_MATMUL_PREF_MAX_WORKSPACE_BYTES, &ws_bytes, sizeof(ws_bytes));
  cublasLtMatmulHeuristicResult_t res{};
  int n = 0;
  const cublasStatus_t s = cublasLtMatmulAlgoGetHeuristic(lt_, p->op, p->a, p->b, p->d, p->d, pref, 1, &res, &n);
  cublasLtMatmulPreferenceDestroy(pref);
  p->found = s == CUBLAS_STATUS_SUCCESS && n > 0;
  p->status = int(s);
  p->results = n;
  if (p->found) {
    p->algo = res.algo;
    algos_[bucket] = res.algo;
  }
  return p;
}

bool Fp8Gemm::supported(int64_t T, int64_t N, int64_t K, bool out_bf16, bool w_vec128) {
  return fp8_gemm_shape_ok(N, K) && T % 4 == 0 &&
         plan_for(T, N, K, N, out_bf16, false, w_vec128, static_cast<const float*>(workspace_),
                  static_cast<const float*>(workspace_))->found;
}

void Fp8Gemm::run(const Fp8GemmArgs& g, int lane) {
  if (g.T == 0) return;
  MOE_CHECK(fp8_gemm_shape_ok(g.N, g.K) && g.T % 4 == 0,
            "FP8 GEMM: T {} must be a multiple of 4, N {} of 16 and K {} of 128", g.T, g.N, g.K);
  Plan* p = plan_for(g.T, g.N, g.K, g.ldo, g.out_bf16, g.accumulate, g.w_vec128, g.ws, g.xs);
  if (!p->found && !g.out_bf16 && !g.accumulate && lane < 0 &&
      plan_for(g.T, g.N, g.K, g.N, true, false, g.w_vec128, g.ws, g.xs)->found) {
    // BF16 output into tmp_, widened into out.
    const size_t n = size_t(g.T * g.N);
    if (n > tmp_elems_) {
      check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
      cudaFree(tmp_);
      tmp_ = nullptr;
      check(cudaMalloc(&tmp_, n * 2), "cudaMalloc (FP8 GEMM BF16 output)");
      tmp_elems_ = n;
    }
    Fp8GemmArgs b = g;
    b.out = tmp_;
    b.out_bf16 = true;
    b.ldo = g.N;
    run(b);
    bf16_rows_to_f32(tmp_, g.T, g.N, static_cast<float*>(g.out), g.ldo, stream_);
    ++fallbacks_;
    return;
  }
  MOE_CHECK(p->found,
            "FP8 GEMM: cuBLASLt has no block-scaled algorithm for T {} N {} K {} ({} out, w scaled per {}; heuristic "
            "status {}, {} results)",
            g.T, g.N, g.K, g.out_bf16 ? "BF16" : "F32", g.w_vec128 ? "1x128 tile" : "128x128 block", p->status,
            p->results);
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_A_SCALE_POINTER, &g.ws, sizeof(g.ws)),
           "A_SCALE_POINTER");
  lt_check(cublasLtMatmulDescSetAttribute(p->op, CUBLASLT_MATMUL_DESC_B_SCALE_POINTER, &g.xs, sizeof(g.xs)),
           "B_SCALE_POINTER");
  const float alpha = 1.0f, beta = g.accumulate ? 1.0f : 0.0f;
  const cudaStream_t s = lane < 0 ? stream_ : lanes_[lane % kLanes];
  void* ws = lane < 0 ? workspace_ : lane_ws_[lane % kLanes];
  lt_check(cublasLtMatmul(lt_, p->op, &alpha, g.w, p->a, g.x, p->b, &beta, g.out, p->d, g.out, p->d, &p->algo, ws,
                          kWorkspaceBytes, s),
           "cublasLtMatmul (FP8 block-scaled)");
}

}  // namespace moe::cuda
