// Fp8Gemms (fp8_gemm.h): quantise the operands (fp8_quant.cu) and run cuBLASLt's block-scaled FP8 GEMM
// (backend/cuda/gemm_fp8.h), whose view is out [T, N] = (x [T, K] * xs) (w [N, K] * ws)^T:
//   Fprop  T = n4, N = m, K = k      x = x_q (1x128),        w = W_q (128x128)
//   Dgrad  T = n4, N = k, K = m      x = dy_q (1x128),       w = W^T_q (128x128)
//   Wgrad  T = m,  N = k, K = n128   x = dy^T_q (1x128),     w = x^T_q (1x128 or 128x128)
#include "train/cuda/fp8_gemm.h"

#include "backend/cuda/gemm_fp8.h"
#include "core/error.h"
#include "train/cuda/kernels.h"

namespace moe::train::cuda {

namespace {

void check(cudaError_t e, const char* what) {
  MOE_CHECK(e == cudaSuccess, "cuda train (FP8 GEMM): {}: {}", what, cudaGetErrorString(e));
}

int64_t round_up(int64_t v, int64_t to) { return (v + to - 1) / to * to; }
int64_t blocks(int64_t v) { return (v + 127) / 128; }

// Scratch slots (an op's operands never share one).
enum Slot : size_t { kXq, kXs, kXt, kXts, kDyq, kDys, kDyt, kDyts, kOut };

void quantize(const Fp8QuantArgs& a, cudaStream_t s) {
  MOE_CHECK(fp8_quantize_args_ok(a),
            "FP8 quantiser: unsupported operand (rows {}, cols {}, ld {}, rows_out {}): cols and rows_out must be "
            "multiples of 16, the rows 16-byte aligned",
            a.rows, a.cols, a.ldx, a.rows_out);
  fp8_quantize(a, s);
  check(cudaGetLastError(), "fp8_quantize");
}

// Wgrad's x^T operand of x [n, k] (rows_out = n rounded up to 128, its K): codes [k, n128] and scales per
// 1x128 tile along the tokens ([n128 / 128, k]) or per 128x128 block ([ceil(k / 128), ld(n128)]).
int64_t xt_code_bytes(int64_t n, int64_t k) { return k * round_up(n, 128); }
int64_t xt_scale_floats(int64_t n, int64_t k, bool tile) {
  const int64_t n128 = round_up(n, 128);
  return tile ? n128 / 128 * k : blocks(k) * moe::cuda::fp8_scale_ld(n128);
}
void set_xt(Fp8QuantArgs& a, int64_t n, int64_t k, bool tile, uint8_t* qt, float* qts) {
  a.rows_out = round_up(n, 128);
  a.col_mode = tile ? 1 : 2;
  a.qt = qt, a.qts = qts;
  a.qts_ld = tile ? k : moe::cuda::fp8_scale_ld(a.rows_out);
}

}  // namespace

Fp8Gemms::Fp8Gemms(cudaStream_t s, Fp8Wgrad wgrad)
    : stream_(s), wgrad_(wgrad), gemm_(std::make_unique<moe::cuda::Fp8Gemm>(s)) {}

Fp8Gemms::~Fp8Gemms() {
  for (auto& [p, q] : weights_)
    for (void* b : {static_cast<void*>(q.q), static_cast<void*>(q.qt), static_cast<void*>(q.s),
                    static_cast<void*>(q.st)})
      if (b) cudaFree(b);
}

void Fp8Gemms::begin_pass(bool keep) {
  for (auto it = kept_.begin(); it != kept_.end();) {
    if (it->second.pass == pass_)
      ++it;
    else
      it = kept_.erase(it);  // (its DeviceScratch frees the buffers)
  }
  ++pass_, keep_xt_ = keep;
}

const Fp8Gemms::WeightQ& Fp8Gemms::weight(const float* w, int64_t m, int64_t k) {
  WeightQ& q = weights_[w];
  const int64_t s_elems = blocks(m) * moe::cuda::fp8_scale_ld(k), st_elems = blocks(k) * moe::cuda::fp8_scale_ld(m);
  if (q.m != m || q.k != k) {  // first use (or another parameter at this address after a re-bind)
    for (void* b : {static_cast<void*>(q.q), static_cast<void*>(q.qt), static_cast<void*>(q.s),
                    static_cast<void*>(q.st)})
      if (b) check(cudaFree(b), "cudaFree");
    q = WeightQ{};
    check(cudaMalloc(&q.q, size_t(m * k)), "cudaMalloc (FP8 weight)");
    check(cudaMalloc(&q.qt, size_t(m * k)), "cudaMalloc (FP8 weight, transposed)");
    check(cudaMalloc(&q.s, size_t(s_elems) * 4), "cudaMalloc (FP8 weight scales)");
    check(cudaMalloc(&q.st, size_t(st_elems) * 4), "cudaMalloc (FP8 weight scales)");
    // The scale grids' padding columns (ld rounds up to 4) are never used by the product; zero, not garbage.
    check(cudaMemsetAsync(q.s, 0, size_t(s_elems) * 4, stream_), "cudaMemsetAsync");
    check(cudaMemsetAsync(q.st, 0, size_t(st_elems) * 4, stream_), "cudaMemsetAsync");
    q.m = m, q.k = k;
  }
  if (q.version != version_) {
    Fp8QuantArgs a;
    a.x = w, a.rows = m, a.cols = k, a.ldx = k, a.rows_out = m;
    a.row_mode = 2, a.q = q.q, a.qs = q.s, a.qs_ld = moe::cuda::fp8_scale_ld(k);
    a.col_mode = 2, a.qt = q.qt, a.qts = q.st, a.qts_ld = moe::cuda::fp8_scale_ld(m);
    quantize(a, stream_);
    q.version = version_;
    ++counts_.weight_quantisations;
  }
  return q;
}

void Fp8Gemms::finish(float* out, const float* tmp, int64_t n, int64_t width, bool add) {
  if (add) {
    add_strided(out, width, tmp, width, width, n, stream_);
    check(cudaGetLastError(), "add_strided");
  } else {
    check(cudaMemcpyAsync(out, tmp, size_t(n * width) * 4, cudaMemcpyDeviceToDevice, stream_), "cudaMemcpyAsync");
  }
}

bool Fp8Gemms::fprop_ok(int64_t n, int64_t k, int64_t m) {
  return fprop_widths(k, m) && gemm_->supported(round_up(n, 4), m, k, false);
}

bool Fp8Gemms::dgrad_ok(int64_t n, int64_t k, int64_t m) {
  return dgrad_widths(k, m) && gemm_->supported(round_up(n, 4), k, m, false);
}

bool Fp8Gemms::wgrad_ok(int64_t n, int64_t k, int64_t m) {
  return wgrad_widths(k, m) && gemm_->supported(m, k, round_up(n, 128), false, wgrad_tile_tile(n, k, m));
}

bool Fp8Gemms::wgrad_tile_tile(int64_t n, int64_t k, int64_t m) {
  if (wgrad_ != Fp8Wgrad::Auto) return wgrad_ == Fp8Wgrad::TileTile;
  return gemm_->supported(m, k, round_up(n, 128), false, true);
}

void Fp8Gemms::fprop(float* y, const float* x, const float* w, int64_t n, int64_t k, int64_t m, bool same_x) {
  if (n == 0 || m == 0) return;
  MOE_CHECK(fprop_widths(k, m), "FP8 Fprop: k {} must be a multiple of 128 and m {} of 16", k, m);
  const WeightQ& wq = weight(w, m, k);
  const int64_t n4 = round_up(n, 4), n16 = round_up(n, 16);
  Fp8QuantArgs a;
  a.x = x, a.rows = n, a.cols = k, a.ldx = k, a.rows_out = n16;
  a.row_mode = 1;
  // Keeping x^T for the backward: rows_out (the codes' rows past n are zero) grows to n128 for the x^T tiles,
  // so the row codes' buffer takes n128 rows too (the product reads n4 of them).
  const bool keep = keep_xt_ && wgrad_widths(k, m) && !(same_x && held_x_.matches(x, n, k, false));
  const int64_t rows_q = keep ? round_up(n, 128) : n16;
  a.q = static_cast<uint8_t*>(scratch_.get(kXq, size_t(rows_q * k)));
  a.qs = static_cast<float*>(scratch_.get(kXs, size_t(blocks(k) * n4) * 4));
  a.qs_ld = n4;
  if (!keep && same_x && held_x_.matches(x, n, k, false)) {
    ++counts_.x_reuses;
  } else {
    if (keep) {
      const bool tile = wgrad_tile_tile(n, k, m);
      KeptXt& e = kept_[x];
      const size_t sb = size_t(xt_scale_floats(n, k, tile)) * 4;
      e.q = static_cast<uint8_t*>(e.mem.get(0, size_t(xt_code_bytes(n, k))));
      e.s = static_cast<float*>(e.mem.get(1, sb));
      set_xt(a, n, k, tile, e.q, e.s);
      if (!tile) check(cudaMemsetAsync(e.s, 0, sb, stream_), "cudaMemsetAsync");
      e.of = Held{x, n, k, tile}, e.pass = pass_;
    }
    quantize(a, stream_);
    held_x_ = Held{x, n, k, false};
  }
  moe::cuda::Fp8GemmArgs g;
  g.x = a.q, g.xs = a.qs, g.w = wq.q, g.ws = wq.s;
  g.out = n4 == n ? y : static_cast<float*>(scratch_.get(kOut, size_t(n4 * m) * 4));
  g.T = n4, g.N = m, g.K = k, g.ldo = m;
  gemm_->run(g);
  if (n4 != n) finish(y, static_cast<const float*>(g.out), n, m, false);
  counts_.fp8_flops += 2.0 * double(n) * double(k) * double(m);
}

void Fp8Gemms::backward(float* dx, float* dw, const float* dy, const float* x, const float* w, int64_t n,
                        int64_t k, int64_t m, bool add_dx, bool same_x) {
  if (n == 0 || m == 0 || (!dx && !dw)) return;
  MOE_CHECK(!dx || dgrad_widths(k, m), "FP8 Dgrad: m {} must be a multiple of 128 and k {} of 16", m, k);
  MOE_CHECK(!dw || wgrad_widths(k, m), "FP8 Wgrad: m {} and k {} must be multiples of 16", m, k);
  const int64_t n4 = round_up(n, 4), n128 = round_up(n, 128);
  // dy once: 1x128 tiles along m for Dgrad, 128x1 tiles (transposed) for Wgrad.
  Fp8QuantArgs d;
  d.x = dy, d.rows = n, d.cols = m, d.ldx = m, d.rows_out = dw ? n128 : round_up(n, 16);
  if (dx) {
    d.row_mode = 1;
    d.q = static_cast<uint8_t*>(scratch_.get(kDyq, size_t(d.rows_out * m)));
    d.qs = static_cast<float*>(scratch_.get(kDys, size_t(blocks(m) * n4) * 4));
    d.qs_ld = n4;
  }
  if (dw) {
    d.col_mode = 1;
    d.qt = static_cast<uint8_t*>(scratch_.get(kDyt, size_t(m * n128)));
    d.qts = static_cast<float*>(scratch_.get(kDyts, size_t(n128 / 128 * m) * 4));
    d.qts_ld = m;
  }
  quantize(d, stream_);
  if (dx) {
    const WeightQ& wq = weight(w, m, k);
    moe::cuda::Fp8GemmArgs g;
    g.x = d.q, g.xs = d.qs, g.w = wq.qt, g.ws = wq.st;
    g.out = n4 == n ? dx : static_cast<float*>(scratch_.get(kOut, size_t(n4 * k) * 4));
    g.T = n4, g.N = k, g.K = m, g.ldo = k;
    g.accumulate = add_dx && n4 == n;
    gemm_->run(g);
    if (n4 != n) finish(dx, static_cast<const float*>(g.out), n, k, add_dx);
    counts_.fp8_flops += 2.0 * double(n) * double(k) * double(m);
  }
  if (dw) {
    const bool tile = wgrad_tile_tile(n, k, m);
    Fp8QuantArgs a;
    a.x = x, a.rows = n, a.cols = k, a.ldx = k;
    const auto kept = kept_.find(x);
    if (kept != kept_.end() && kept->second.pass == pass_ && kept->second.of.matches(x, n, k, tile)) {
      set_xt(a, n, k, tile, kept->second.q, kept->second.s);  // the forward's x^T (begin_pass)
      ++counts_.kept_xt_reads;
    } else {
      const int64_t ts_elems = xt_scale_floats(n, k, tile);
      set_xt(a, n, k, tile, static_cast<uint8_t*>(scratch_.get(kXt, size_t(xt_code_bytes(n, k)))),
             static_cast<float*>(scratch_.get(kXts, size_t(ts_elems) * 4)));
      if (same_x && held_xt_.matches(x, n, k, tile)) {
        ++counts_.x_reuses;
      } else {
        if (!tile) check(cudaMemsetAsync(a.qts, 0, size_t(ts_elems) * 4, stream_), "cudaMemsetAsync");
        quantize(a, stream_);
        held_xt_ = Held{x, n, k, tile};
      }
    }
    moe::cuda::Fp8GemmArgs g;
    g.x = d.qt, g.xs = d.qts, g.w = a.qt, g.ws = a.qts, g.w_vec128 = tile;
    g.out = dw, g.T = m, g.N = k, g.K = n128, g.ldo = k, g.accumulate = true;
    gemm_->run(g);
    counts_.fp8_flops += 2.0 * double(n) * double(k) * double(m);
  }
}

}  // namespace moe::train::cuda
