// Fp8Experts (fp8_experts.h): the routed experts' grouped FP8 products on the inference engine's kernels.
#include "train/cuda/fp8_experts.h"

#include <algorithm>

#include "backend/cuda/cuda_ops.h"
#include "core/error.h"
#include "train/cuda/grouped_gemm.h"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

void check(cudaError_t e, const char* what) {
  MOE_CHECK(e == cudaSuccess, "cuda train (FP8 experts): {}: {}", what, cudaGetErrorString(e));
}

int64_t round4(int64_t v) { return (v + 3) / 4 * 4; }

enum Slot : size_t { kAq, kAs, kItems };  // scratch: the quantised operand, its scales, the work items

}  // namespace

Fp8Experts::Fp8Experts(cudaStream_t s) : stream_(s) {
  // The kernels' shared-memory opt-in, for the current device (the trainer's).
  moe::cuda::configure_grouped_gemm_fp8_kernels();
}

Fp8Experts::~Fp8Experts() {
  for (auto& [key, w] : layers_) {
    if (w.mem) cudaFree(w.mem);
    if (w.table) cudaFree(w.table);
  }
  for (Backward& b : bwd_) {
    if (b.w.mem) cudaFree(b.w.mem);
    if (b.w.table) cudaFree(b.w.table);
    if (b.ready) cudaEventDestroy(b.ready);
  }
  if (fork_) cudaEventDestroy(fork_);
  if (side_) cudaStreamDestroy(side_);
}

bool Fp8Experts::applies(int64_t D, int64_t F) {
  return D > 0 && F > 0 && D % 128 == 0 && F % 128 == 0 && grouped_gemm_wgmma_supported() &&
         moe::cuda::grouped_gemm_fp8_shape_ok(D, 2 * F) && moe::cuda::grouped_gemm_fp8_shape_ok(F, D);
}

void Fp8Experts::set_both_layers(int64_t n) {
  if (n < 0) n = -1;
  if (n == both_layers_) return;
  both_layers_ = n;
  // Every layer is laid out again at its next use, in the order of use.
  check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");
  if (side_) check(cudaStreamSynchronize(side_), "cudaStreamSynchronize");
  for (auto& [key, w] : layers_) {
    if (w.mem) check(cudaFree(w.mem), "cudaFree");
    if (w.table) check(cudaFree(w.table), "cudaFree");
  }
  layers_.clear();
  both_given_ = 0;
  for (Backward& b : bwd_) b.key = nullptr, b.pending = false;
}

namespace {

// A Weights allocation of `E` experts, each with `mats` matrices' bytes and `grids` scale values; table slots
// (matrix offset in bytes and grid offset in values within an expert, or -1: not kept) for the kSlots kinds.
template <typename W>
void allocate(W& w, int64_t E, int64_t mat_bytes, int64_t scale_floats, const int64_t (&mat_off)[5],
              const int64_t (&scale_off)[5], int slots) {
  if (w.mem) check(cudaFree(w.mem), "cudaFree");
  if (w.table) check(cudaFree(w.table), "cudaFree");
  w.mem = nullptr, w.table = nullptr;
  const size_t bytes = size_t(E * mat_bytes) + size_t(E * scale_floats) * sizeof(float);
  check(cudaMalloc(&w.mem, bytes), "cudaMalloc (FP8 expert weights)");
  check(cudaMalloc(reinterpret_cast<void**>(&w.table), size_t(E * 2 * slots) * sizeof(void*)),
        "cudaMalloc (FP8 expert table)");
  std::vector<void*> table(size_t(E * 2 * slots), nullptr);
  auto* mats = static_cast<uint8_t*>(w.mem);
  auto* scales = reinterpret_cast<float*>(mats + E * mat_bytes);
  for (int64_t e = 0; e < E; ++e)
    for (int s = 0; s < slots; ++s) {
      if (mat_off[s] < 0) continue;
      table[size_t(e * 2 * slots + s)] = mats + e * mat_bytes + mat_off[s];
      table[size_t(e * 2 * slots + slots + s)] = scales + e * scale_floats + scale_off[s];
    }
  check(cudaMemcpy(w.table, table.data(), table.size() * sizeof(void*), cudaMemcpyHostToDevice),
        "uploading the FP8 expert table");
}

}  // namespace

const Fp8Experts::Weights& Fp8Experts::weights(const Layer& L) {
  MOE_CHECK(L.w.size() % 3 == 0 && !L.w.empty(),
            "FP8 experts: {} weight pointers, not gate, up, down per expert", L.w.size());
  MOE_CHECK(L.D % 128 == 0 && L.F % 128 == 0, "FP8 experts: widths D {} and F {} must be multiples of 128",
            L.D, L.F);
  const int64_t E = int64_t(L.w.size()) / 3, D = L.D, F = L.F, cells = (D / 128) * (F / 128);
  const auto [it, fresh] = layers_.try_emplace(L.key);
  Weights& W = it->second;
  if (fresh) {
    W.layouts = both_layers_ < 0 || both_given_ < both_layers_ ? Layouts::Both : Layouts::ForwardOnly;
    both_given_ += W.layouts == Layouts::Both;
  }
  const bool both = W.layouts == Layouts::Both;
  // Per expert: 3 D F bytes of forward matrices (gate, up, down) and 3 cells of scales; under Both 3 D F
  // bytes and 3 cells more (down^T, [gate^T | up^T]).
  const int64_t mat_bytes = (both ? 6 : 3) * D * F, scale_floats = (both ? 6 : 3) * cells;
  const int64_t mat_off[kSlots] = {0, F * D, 2 * F * D, both ? 3 * F * D : -1, both ? 4 * F * D : -1};
  const int64_t scale_off[kSlots] = {0, cells, 2 * cells, 3 * cells, 4 * cells};
  if (W.experts != E || W.D != D || W.F != F) {
    allocate(W, E, mat_bytes, scale_floats, mat_off, scale_off, kSlots);
    W.experts = E, W.D = D, W.F = F, W.version = -1;
  }
  if (W.version == version_) return W;
  auto* mats = static_cast<uint8_t*>(W.mem);
  auto* scales = reinterpret_cast<float*>(mats + E * mat_bytes);
  // One launch per matrix kind for all experts where the FP32 masters lie a constant stride apart (the
  // trainer's arena lays a layer's experts out one after another); else one launch per expert. A launch of
  // one expert's 11 x 16 tiles (train-mid) is 1.3 waves of an H100's SMs, mostly ramp and tail.
  const int64_t stride = E > 1 ? L.w[3] - L.w[0] : 0;
  bool uniform = stride >= 3 * D * F && stride % 4 == 0;  // apart and each 16-byte aligned
  for (int64_t e = 0; e < E && uniform; ++e)
    for (int64_t j = 0; j < 3; ++j)
      uniform = uniform && L.w[size_t(3 * e + j)] == L.w[size_t(j)] + e * stride;
  const int64_t launches = uniform ? 1 : E, batch = uniform ? E : 1;
  for (int64_t e = 0; e < launches; ++e) {
    uint8_t* m = mats + e * mat_bytes;
    float* s = scales + e * scale_floats;
    auto batched = [&](Fp8QuantArgs& a) {
      a.batch = int(batch), a.x_bstride = stride, a.q_bstride = mat_bytes, a.qs_bstride = scale_floats;
      if (a.col_mode) a.qt_bstride = mat_bytes, a.qts_bstride = scale_floats;
    };
    // gate and up [F, D]: 128x128 blocks as they are (Fprop), and under Both transposed into the left and
    // right halves of [W_gate^T | W_up^T] [D, 2F] (Dgrad of xs), whose scale grid [D / 128, 2F / 128] takes
    // gate's blocks in its first F / 128 columns.
    for (int j = 0; j < 2; ++j) {
      Fp8QuantArgs a;
      a.x = L.w[size_t(3 * e + j)], a.rows = F, a.cols = D, a.ldx = D, a.rows_out = F;
      a.row_mode = 2, a.q = m + mat_off[j], a.qs = s + scale_off[j], a.qs_ld = D / 128;
      if (both) {
        a.col_mode = 2, a.qt = m + mat_off[kGateUpT] + j * F, a.qt_ld = 2 * F;
        a.qts = s + scale_off[kGateUpT] + j * (F / 128), a.qts_ld = 2 * F / 128;
      }
      batched(a);
      MOE_CHECK(fp8_quantize_args_ok(a), "FP8 experts: the quantiser refuses expert {}'s weight {}", e, j);
      fp8_quantize(a, stream_);
    }
    // down [D, F] (Fprop of act) and under Both down^T [F, D] (Dgrad of dys).
    Fp8QuantArgs a;
    a.x = L.w[size_t(3 * e + 2)], a.rows = D, a.cols = F, a.ldx = F, a.rows_out = D;
    a.row_mode = 2, a.q = m + mat_off[kDown], a.qs = s + scale_off[kDown], a.qs_ld = F / 128;
    if (both) a.col_mode = 2, a.qt = m + mat_off[kDownT], a.qts = s + scale_off[kDownT], a.qts_ld = D / 128;
    batched(a);
    MOE_CHECK(fp8_quantize_args_ok(a), "FP8 experts: the quantiser refuses expert {}'s down projection", e);
    fp8_quantize(a, stream_);
    weight_quantisations_ += 3 * batch;
  }
  check(cudaGetLastError(), "fp8_quantize (expert weights)");
  W.version = version_;  // (a buffer's backward layouts of the previous version no longer match: resident)
  return W;
}

Fp8Experts::Backward* Fp8Experts::resident(const Layer& L, const Weights& W) {
  for (Backward& b : bwd_)
    if (b.key == L.key && b.w.version == W.version && b.w.experts == W.experts) return &b;
  return nullptr;
}

const Fp8Experts::Weights& Fp8Experts::backward_weights(const Layer& L) {
  const Weights& W = weights(L);
  if (W.layouts == Layouts::Both) return W;
  Backward* b = resident(L, W);
  if (!b) b = &make_backward(L, W, /*async=*/false);
  if (b->async) check(cudaStreamWaitEvent(stream_, b->ready, 0), "cudaStreamWaitEvent");
  b->async = false, b->pending = false, b->used = ++uses_;
  return b->w;
}

void Fp8Experts::prefetch_backward(const Layer& L) {
  if (!prefetch_) return;
  const Weights& W = weights(L);  // (quantised now on the trainer's stream if its version is new)
  if (W.layouts == Layouts::Both || resident(L, W)) return;
  if (awaited(bwd_[0]) && awaited(bwd_[1])) return;  // both hold layouts asked for and not yet read
  make_backward(L, W, /*async=*/true);
}

bool Fp8Experts::awaited(const Backward& b) const { return b.pending && b.w.version == version_; }

Fp8Experts::Backward& Fp8Experts::make_backward(const Layer& L, const Weights& W, bool async) {
  // The buffer to replace: not one a prefetch filled for a backward still to come, else the least recently
  // used.
  int v = bwd_[0].used <= bwd_[1].used ? 0 : 1;
  if (awaited(bwd_[v]) && !awaited(bwd_[1 - v])) v = 1 - v;
  Backward& b = bwd_[v];
  const int64_t E = W.experts, D = W.D, F = W.F, cells = (D / 128) * (F / 128);
  // Per expert: down^T [F, D] then [W_gate^T | W_up^T] [D, 2F] (3 D F bytes), their grids (1 + 2 cells).
  const int64_t mat_bytes = 3 * D * F, scale_floats = 3 * cells;
  cudaStream_t s = stream_;
  if (async) {
    if (!side_) {
      int least = 0, greatest = 0;  // (CUDA's priorities: a lower number is a higher priority)
      check(cudaDeviceGetStreamPriorityRange(&least, &greatest), "cudaDeviceGetStreamPriorityRange");
      check(cudaStreamCreateWithPriority(&side_, cudaStreamNonBlocking, least),
            "cudaStreamCreateWithPriority");
      check(cudaEventCreateWithFlags(&fork_, cudaEventDisableTiming), "cudaEventCreate");
    }
    if (!b.ready) check(cudaEventCreateWithFlags(&b.ready, cudaEventDisableTiming), "cudaEventCreate");
    // After everything queued so far: W's quantisation and the last products that read this buffer.
    check(cudaEventRecord(fork_, stream_), "cudaEventRecord");
    check(cudaStreamWaitEvent(side_, fork_, 0), "cudaStreamWaitEvent");
    s = side_;
  } else if (b.async) {  // the side stream may still be writing the layouts this replaces
    check(cudaStreamWaitEvent(stream_, b.ready, 0), "cudaStreamWaitEvent");
  }
  if (b.w.experts != E || b.w.D != D || b.w.F != F) {
    if (async)
      check(cudaStreamSynchronize(stream_), "cudaStreamSynchronize");  // (cudaFree is synchronous anyway)
    const int64_t mat_off[kSlots] = {-1, -1, -1, 0, F * D};
    const int64_t scale_off[kSlots] = {0, 0, 0, 0, cells};
    allocate(b.w, E, mat_bytes, scale_floats, mat_off, scale_off, kSlots);
    b.w.experts = E, b.w.D = D, b.w.F = F, b.w.layouts = Layouts::ForwardOnly;
  }
  const auto* fm = static_cast<const uint8_t*>(W.mem);
  const auto* fs = reinterpret_cast<const float*>(fm + E * 3 * D * F);  // ForwardOnly: 3 D F bytes an expert
  auto* bm = static_cast<uint8_t*>(b.w.mem);
  auto* bs = reinterpret_cast<float*>(bm + E * mat_bytes);
  auto transpose = [&](int64_t in_off, int64_t in_soff, int64_t rows, int64_t cols, int64_t out_off,
                       int64_t out_soff, int64_t out_ld) {
    Fp8TransposeArgs t;
    t.in = fm + in_off, t.in_scales = fs + in_soff, t.rows = rows, t.cols = cols;
    t.in_stride = 3 * D * F, t.in_sld = cols / 128, t.in_sstride = 3 * cells;
    t.out = bm + out_off, t.out_scales = bs + out_soff, t.out_ld = out_ld, t.out_stride = mat_bytes;
    t.out_sld = out_ld / 128, t.out_sstride = scale_floats, t.batch = E;
    MOE_CHECK(fp8_transpose_args_ok(t), "FP8 experts: the transpose refuses {} x {}", rows, cols);
    fp8_transpose(t, s);
  };
  transpose(2 * F * D, 2 * cells, D, F, 0, 0, D);                    // down [D, F] -> down^T [F, D]
  transpose(0, 0, F, D, F * D, cells, 2 * F);                        // gate -> the left half of [D, 2F]
  transpose(F * D, cells, F, D, F * D + F, cells + F / 128, 2 * F);  // up -> the right half
  check(cudaGetLastError(), "fp8_transpose (expert weights)");
  if (async) check(cudaEventRecord(b.ready, side_), "cudaEventRecord");
  b.key = L.key, b.w.version = W.version, b.async = async, b.pending = async, b.used = ++uses_;
  return b;
}

int32_t Fp8Experts::upload_items(const Layer& L) {
  const std::vector<int64_t>& off = *L.offsets;
  // The products of a layer's forward (and of its backward) share one routing: the items already on the
  // device serve them (only this function writes that buffer).
  if (off == items_offsets_) return n_items_;
  items_offsets_ = off;
  items_.clear();
  for (size_t e = 0; e + 1 < off.size(); ++e)
    for (int64_t b = off[e]; b < off[e + 1]; b += 128)
      items_.insert(items_.end(), {int32_t(e), int32_t(b), int32_t(std::min<int64_t>(128, off[e + 1] - b))});
  n_items_ = int32_t(items_.size() / 3);
  if (n_items_ == 0) return 0;
  void* dev = scratch_.get(kItems, items_.size() * sizeof(int32_t));
  // Pageable source: staged when cudaMemcpyAsync returns (items_ may be refilled); stream order keeps the
  // device copy until this call's kernels have read it.
  check(cudaMemcpyAsync(dev, items_.data(), items_.size() * sizeof(int32_t), cudaMemcpyHostToDevice, stream_),
        "uploading the FP8 expert work items");
  return n_items_;
}

// A product's quantisations ask for the same sizes, so a scratch buffer is never reallocated between them and
// the product (and a reallocation's cudaFree waits for the device: no queued kernel loses its operand).
void Fp8Experts::quantize(const uint16_t* a, int64_t nk, int64_t k, int64_t lda, int64_t col) {
  moe::cuda::Fp8QuantParams p;
  p.x_bf16 = a, p.ldx = k, p.M = nk, p.K = k;
  p.q = static_cast<uint8_t*>(scratch_.get(kAq, size_t(nk * lda))) + col;
  p.ldq = lda;
  p.scales = static_cast<float*>(scratch_.get(kAs, size_t(lda / 128 * round4(nk)) * sizeof(float))) +
             (col / 128) * round4(nk);
  moe::cuda::quantize_fp8(p, stream_);
}

void Fp8Experts::gemm(const Layer& L, const Weights& W, int slot, int64_t n, int64_t k, float* out) {
  const int64_t nk = L.offsets->back();
  moe::cuda::GroupedGemmFp8Params p;
  p.items = static_cast<const int32_t*>(scratch_.get(kItems, 0));
  p.M = int32_t(nk), p.K = int32_t(k), p.N = int32_t(n);
  p.a = static_cast<const uint8_t*>(scratch_.get(kAq, 0)), p.lda = k;
  p.as = static_cast<const float*>(scratch_.get(kAs, 0)), p.ld_as = round4(nk);
  p.wtab = const_cast<const void* const*>(W.table), p.wstride = 2 * kSlots;
  p.wslot[0] = p.wslot[1] = slot;
  p.sslot[0] = p.sslot[1] = kSlots + slot;
  p.y = out, p.ldy = n;
  p.cta_rows = 128;
  moe::cuda::grouped_gemm_fp8(p, n_items_, stream_);
  fp8_flops_ += 2.0 * double(nk) * double(k) * double(n);
}

void Fp8Experts::forward_gate_up(const Layer& L, const uint16_t* xs, float* gate, float* up) {
  const int64_t nk = L.offsets->back();
  if (nk == 0 || upload_items(L) == 0) return;
  quantize(xs, nk, L.D, L.D, 0);
  const Weights& W = weights(L);
  gemm(L, W, kGate, L.F, L.D, gate);
  gemm(L, W, kUp, L.F, L.D, up);
}

void Fp8Experts::forward_down(const Layer& L, const uint16_t* act, float* eout) {
  const int64_t nk = L.offsets->back();
  if (nk == 0 || upload_items(L) == 0) return;
  quantize(act, nk, L.F, L.F, 0);
  gemm(L, weights(L), kDown, L.D, L.F, eout);
}

void Fp8Experts::backward_dact(const Layer& L, const uint16_t* dys, float* dact) {
  const int64_t nk = L.offsets->back();
  if (nk == 0 || upload_items(L) == 0) return;
  quantize(dys, nk, L.D, L.D, 0);
  gemm(L, backward_weights(L), kDownT, L.F, L.D, dact);
}

void Fp8Experts::backward_dxs(const Layer& L, const uint16_t* dgate, const uint16_t* dup, float* dxs) {
  const int64_t nk = L.offsets->back();
  if (nk == 0 || upload_items(L) == 0) return;
  quantize(dgate, nk, L.F, 2 * L.F, 0);
  quantize(dup, nk, L.F, 2 * L.F, L.F);
  gemm(L, backward_weights(L), kGateUpT, L.D, 2 * L.F, dxs);
}

}  // namespace moe::train::cuda
