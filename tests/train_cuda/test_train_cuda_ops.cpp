// Each CUDA op of the trainer against its CPU twin (train/ops.h) on random data at real widths (Moonlight /
// DeepSeek-V3 head dims, hidden 2048, sequences of 256).
// Tolerances:
//  - BF16 GEMMs: each operand is rounded once to BF16 (unit roundoff u = 2^-9), so every product carries a
//    relative error of about u sqrt(2/3) (two independent uniform roundings); a sum of independent random terms
//    keeps that relative L2 (no sqrt(K) growth: the errors are as random as the terms): ~1.6e-3, checked <= 1e-2.
//  - FP32 ops: sums of at most a few thousand FP32 terms (u = 2^-24, random-walk growth sqrt(K) ~ 45) against
//    double sums: ~1e-6, checked <= 1e-5.
#include <algorithm>
#include <memory>
#include <thread>

#include "core/dtype.h"
#include "core/thread_pool.h"
#include "train/compute.h"
#include "train/cuda/kernels.h"
#include "train/optimizer.h"
#include "train_cuda/util.h"

namespace moe::train::test {
namespace {

using cuda::CudaCompute;
using cuda::GemmPrecision;

ThreadPool& pool() {
  static ThreadPool p(int(std::max(1u, std::thread::hardware_concurrency())));
  return p;
}

// The row-major GEMM entry points (y = x W^T, dx += dy W, dW += dy^T x) against the CPU op; BF16 operands are
// rounded once here, as the device step rounds them.
void check_matmul(GemmPrecision precision, double tol) {
  const int64_t n = 256, k = 2048, m = 1536;
  const auto x = randn(size_t(n * k), 1), w = randn(size_t(m * k), 2, 0.02), dy = randn(size_t(n * m), 3);
  const auto dx0 = randn(size_t(n * k), 4), dw0 = randn(size_t(m * k), 5);  // the backward adds into these
  std::vector<float> y_c(size_t(n * m));
  matmul_forward(y_c.data(), x.data(), w.data(), n, k, m, &pool());
  auto dx_c = dx0, dw_c = dw0;
  matmul_backward(dx_c.data(), dw_c.data(), dy.data(), x.data(), w.data(), n, k, m, &pool());
  CudaCompute gpu(precision);
  DeviceArray<float> gx(x), gw(w), gdy(dy), gy(randn(y_c.size(), 6)), gdx(dx0), gdw(dw0);
  DeviceArray<uint16_t> bx(std::vector<uint16_t>(x.size())), bw(std::vector<uint16_t>(w.size())),
      bdy(std::vector<uint16_t>(dy.size()));
  auto op = [&](DeviceArray<float>& f, DeviceArray<uint16_t>& b, int64_t count) -> const void* {
    if (precision == GemmPrecision::Fp32) return f.get();
    cuda::to_bf16(b.get(), f.get(), count, gpu.stream());
    return b.get();
  };
  const void *ox = op(gx, bx, n * k), *ow = op(gw, bw, m * k), *ody = op(gdy, bdy, n * m);
  gpu.gemm_nt(precision, gy.get(), ox, ow, n, k, m, 0.0f);
  gpu.gemm_nn(precision, gdx.get(), ody, ow, n, k, m, 1.0f);
  gpu.gemm_tn(precision, gdw.get(), ody, ox, n, k, m, 1.0f);
  gpu.sync();
  const double ey = rel_l2(gy.host(), y_c), edx = rel_l2(minus(gdx.host(), dx0), minus(dx_c, dx0)),
               edw = rel_l2(minus(gdw.host(), dw0), minus(dw_c, dw0));
  std::printf("matmul %s: y %.3g dx %.3g dW %.3g (tolerance %.0e)\n", precision == GemmPrecision::Fp32 ? "fp32" : "bf16",
              ey, edx, edw, tol);
  EXPECT_LT(ey, tol);
  EXPECT_LT(edx, tol);
  EXPECT_LT(edw, tol);
}

TEST(CudaTrainOps, MatmulBf16MatchesCpu) {
  SKIP_WITHOUT_GPU();
  check_matmul(GemmPrecision::Bf16, 1e-2);
}

TEST(CudaTrainOps, MatmulFp32MatchesCpu) {
  SKIP_WITHOUT_GPU();
  check_matmul(GemmPrecision::Fp32, 1e-5);
}

// Both kernels: float4 rows (V % 4 == 0) and scalar ones.
TEST(CudaTrainOps, CrossEntropyMatchesCpu) {
  SKIP_WITHOUT_GPU();
  for (const int64_t V : {int64_t(32000), int64_t(32001)}) {
    const int64_t n = 256;
    const auto logits = randn(size_t(n * V), 21, 2.0);
    std::vector<int32_t> targets(static_cast<size_t>(n));
    std::mt19937 g(22);
    for (auto& t : targets) t = int32_t(g() % uint32_t(V));
    targets[7] = -1;  // a row without a target
    targets[9] = int32_t(V - 1);  // the last value of a row (the scalar tail of the float4 pass when V % 4 != 0)
    auto l_c = logits;
    const double loss_c = cross_entropy_fused(l_c.data(), targets.data(), n, V, 1.0 / 255);
    DeviceArray<float> gl(logits), gloss(randn(size_t(n), 23));
    DeviceArray<int32_t> gt(targets);
    cuda::cross_entropy(gl.get(), gloss.get(), gt.get(), n, V, float(1.0 / 255), nullptr);
    const std::vector<float> l_g = gl.host(), rows = gloss.host();
    double loss_g = 0;  // in row order, in double, as the CPU op sums
    for (float v : rows) loss_g += double(v);
    std::printf("cross-entropy (V %lld): loss %.9g vs %.9g, dlogits %.3g\n", (long long)V, loss_g, loss_c,
                rel_l2(l_g, l_c));
    EXPECT_LT(std::abs(loss_g - loss_c) / std::abs(loss_c), 1e-5);
    EXPECT_LT(rel_l2(l_g, l_c), 1e-5);
    for (int64_t v = 0; v < V; ++v) ASSERT_EQ(l_g[size_t(7 * V + v)], 0.0f);
    // The BF16 form (a BF16 head's backward operand): the FP32 gradient's bits rounded to nearest even, the logits
    // left as they were, the same losses.
    DeviceArray<float> gl2(logits), gloss2(randn(size_t(n), 24));
    DeviceArray<uint16_t> gb(std::vector<uint16_t>(size_t(n * V), uint16_t(0x7FC0)));  // NaNs: unwritten fails
    cuda::cross_entropy(gl2.get(), gloss2.get(), gt.get(), n, V, float(1.0 / 255), nullptr, gb.get());
    const std::vector<uint16_t> b_g = gb.host();
    const std::vector<float> l2 = gl2.host();
    size_t mismatched = 0;
    for (size_t i = 0; i < b_g.size(); ++i) mismatched += b_g[i] != float_to_bf16(l_g[i]);
    EXPECT_EQ(mismatched, 0u) << "of " << b_g.size() << " BF16 gradients";
    EXPECT_EQ(l2, logits);
    EXPECT_EQ(gloss2.host(), rows);
  }
}

TEST(CudaTrainOps, RmsNormForwardBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 256, d = 2048;
  const auto x = randn(size_t(n * d), 31, 3.0), w = randn(size_t(d), 32), dy = randn(size_t(n * d), 33);
  const auto dx0 = randn(size_t(n * d), 34), dw0 = randn(size_t(d), 35);
  std::vector<float> y_c(size_t(n * d)), r_c(static_cast<size_t>(n));
  rmsnorm_forward(y_c.data(), r_c.data(), x.data(), w.data(), n, d, 1e-6);
  auto dx_c = dx0, dw_c = dw0;
  rmsnorm_backward(dx_c.data(), dw_c.data(), dy.data(), x.data(), w.data(), r_c.data(), n, d);
  // Outputs start as random values, not the expected ones: a kernel that wrote nothing fails.
  DeviceArray<float> gx(x), gw(w), gdy(dy), gy(randn(y_c.size(), 36)), gr(randn(r_c.size(), 37)), gdx(dx0), gdw(dw0);
  cuda::rmsnorm_forward(gy.get(), gr.get(), gx.get(), gw.get(), n, d, 1e-6f, nullptr);
  const auto r_g = gr.host();
  {  // the BF16 output (for GEMM-only readers), alone and beside the FP32 one: the FP32 values' bits rounded
    const std::vector<float> y_g = gy.host();
    DeviceArray<uint16_t> yb(std::vector<uint16_t>(y_g.size(), uint16_t(0x7FC0))), yb2(yb.host());
    DeviceArray<float> gy2(randn(y_c.size(), 38)), gr2(randn(r_c.size(), 39));
    cuda::rmsnorm_forward(nullptr, gr2.get(), gx.get(), gw.get(), n, d, 1e-6f, nullptr, yb.get());
    cuda::rmsnorm_forward(gy2.get(), gr2.get(), gx.get(), gw.get(), n, d, 1e-6f, nullptr, yb2.get());
    const std::vector<uint16_t> b1 = yb.host(), b2 = yb2.host();
    size_t mismatched = 0;
    for (size_t i = 0; i < y_g.size(); ++i) mismatched += (b1[i] != float_to_bf16(y_g[i])) + (b2[i] != b1[i]);
    EXPECT_EQ(mismatched, 0u);
    EXPECT_EQ(gy2.host(), y_g);
    EXPECT_EQ(gr2.host(), r_g);
  }
  cuda::rmsnorm_backward(gdx.get(), gdw.get(), gdy.get(), gx.get(), gw.get(), gr.get(), n, d, nullptr);
  const double e[] = {rel_l2(gy.host(), y_c), rel_l2(r_g, r_c), rel_l2(minus(gdx.host(), dx0), minus(dx_c, dx0)),
                      rel_l2(minus(gdw.host(), dw0), minus(dw_c, dw0))};
  std::printf("rmsnorm: y %.3g rstd %.3g dx %.3g dw %.3g\n", e[0], e[1], e[2], e[3]);
  for (double v : e) EXPECT_LT(v, 1e-5);
}

TEST(CudaTrainOps, SwigluForwardBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t count = 256 * 1408;
  const auto gate = randn(size_t(count), 41, 2.0), up = randn(size_t(count), 42), dout = randn(size_t(count), 43);
  const auto dg0 = randn(size_t(count), 44), du0 = randn(size_t(count), 45);
  std::vector<float> out_c(static_cast<size_t>(count));
  swiglu_forward(out_c.data(), gate.data(), up.data(), count);
  auto dg_c = dg0, du_c = du0;
  swiglu_backward(dg_c.data(), du_c.data(), dout.data(), gate.data(), up.data(), count);
  DeviceArray<float> gg(gate), gu(up), gd(dout), go(randn(out_c.size(), 46)), gdg(dg0), gdu(du0);
  cuda::swiglu_forward(go.get(), gg.get(), gu.get(), count, nullptr);
  cuda::swiglu_backward(gdg.get(), gdu.get(), gd.get(), gg.get(), gu.get(), count, nullptr);
  const double e[] = {rel_l2(go.host(), out_c), rel_l2(minus(gdg.host(), dg0), minus(dg_c, dg0)),
                      rel_l2(minus(gdu.host(), du0), minus(du_c, du0))};
  std::printf("swiglu: out %.3g dgate %.3g dup %.3g\n", e[0], e[1], e[2]);
  for (double v : e) EXPECT_LT(v, 1e-5);
  // Without accumulate the backward writes what it would have added (over buffers holding other values).
  DeviceArray<float> wdg(dg0), wdu(du0);
  cuda::swiglu_backward(wdg.get(), wdu.get(), gd.get(), gg.get(), gu.get(), count, nullptr, /*accumulate=*/false);
  EXPECT_LT(rel_l2(wdg.host(), minus(dg_c, dg0)), 1e-5);
  EXPECT_LT(rel_l2(wdu.host(), minus(du_c, du0)), 1e-5);
}

TEST(CudaTrainOps, RopeForwardBackwardMatchesCpu) {
  SKIP_WITHOUT_GPU();
  const int64_t n = 256, heads = 16, hd = 192, off = 128, half = 32;
  RopeParams rope;
  for (int64_t p = 0; p < half; ++p) rope.inv_freq.push_back(std::pow(10000.0, -2.0 * double(p) / 64.0));
  rope.attn_factor = 0.93;
  std::vector<int32_t> pos(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) pos[size_t(i)] = int32_t((i * 37) % 4096);  // long-context angles too
  const auto x = randn(size_t(n * heads * hd), 51);
  auto f_c = x, b_c = x;
  rope_forward(f_c.data(), n, heads, hd, off, pos.data(), rope);
  rope_backward(b_c.data(), n, heads, hd, off, pos.data(), rope);
  DeviceArray<float> gf(x), gb(x);
  DeviceArray<double> ginv(rope.inv_freq);
  DeviceArray<int32_t> gpos(pos);
  cuda::rope_rotate(gf.get(), n, heads, hd, off, gpos.get(), ginv.get(), half, float(rope.attn_factor), 1.0f, nullptr);
  cuda::rope_rotate(gb.get(), n, heads, hd, off, gpos.get(), ginv.get(), half, float(rope.attn_factor), -1.0f,
                    nullptr);
  const double ef = rel_l2(gf.host(), f_c), eb = rel_l2(gb.host(), b_c);
  std::printf("rope: forward %.3g backward %.3g\n", ef, eb);
  EXPECT_LT(ef, 1e-5);
  EXPECT_LT(eb, 1e-5);
}

TEST(CudaTrainOps, EmbeddingForwardBackwardMatchesCpuExactly) {
  SKIP_WITHOUT_GPU();
  const int64_t V = 1000, d = 2048, n = 256;
  const auto table = randn(size_t(V * d), 61), dout = randn(size_t(n * d), 62), dt0 = randn(size_t(V * d), 63);
  std::vector<int32_t> ids(static_cast<size_t>(n));
  for (int64_t i = 0; i < n; ++i) ids[size_t(i)] = int32_t((i * 7919) % 97);  // repeated ids: the scatter adds
  std::vector<float> out_c(size_t(n * d));
  embedding_forward(out_c.data(), ids.data(), n, table.data(), d);
  auto dt_c = dt0;
  embedding_backward(dt_c.data(), ids.data(), n, dout.data(), d);
  DeviceArray<float> gt(table), go(randn(out_c.size(), 64)), gd(dout), gdt(dt0);
  DeviceArray<int32_t> gids(ids);
  cuda::embedding_forward(go.get(), gids.get(), n, gt.get(), d, nullptr);
  cuda::embedding_backward(gdt.get(), gids.get(), n, gd.get(), d, nullptr);
  EXPECT_EQ(go.host(), out_c);
  EXPECT_EQ(gdt.host(), dt_c);  // the same float additions in the same order
}

TEST(CudaTrainOps, AdamWMatchesCpuStep) {
  SKIP_WITHOUT_GPU();
  TrainModel model;
  auto p = std::make_unique<Param>();
  p->name.assign(1, 'w');  // (not = "w": g++ 12 warns -Wrestrict on that inlined copy, a false positive)
  const size_t count = 1 << 20;
  p->w = randn(count, 71, 0.02), p->g = randn(count, 72, 1e-3), p->m = randn(count, 73, 1e-3);
  p->v = randn(count, 74, 1e-3);
  for (float& v : p->v) v = v * v;  // second moments are non-negative
  p->decay = true;
  model.params.push_back(std::move(p));
  const Param& P = *model.params[0];
  const std::vector<float> w0 = P.w;
  DeviceArray<float> gw(P.w), gg(P.g), gm(P.m), gv(P.v);
  const AdamW opt;
  const double lr = 3e-3;
  const int64_t step = 5;
  const StepStats st = adamw_step(model, opt, lr, 0.5, step);  // clips: the norm is ~1
  ASSERT_LT(st.clip_scale, 1.0);
  cuda::AdamWArgs a;
  a.clip = float(st.clip_scale), a.lr = float(lr), a.beta1 = float(opt.beta1), a.beta2 = float(opt.beta2);
  a.eps = float(opt.eps), a.decay = float(1.0 - lr * opt.weight_decay);
  a.bc1 = float(1.0 - std::pow(opt.beta1, double(step))), a.bc2 = float(1.0 - std::pow(opt.beta2, double(step)));
  cuda::adamw_update(gw.get(), gg.get(), gm.get(), gv.get(), int64_t(count), a, nullptr);
  const double e[] = {rel_l2(minus(gw.host(), w0), minus(P.w, w0)), rel_l2(gm.host(), P.m), rel_l2(gv.host(), P.v)};
  std::printf("adamw: update %.3g m %.3g v %.3g\n", e[0], e[1], e[2]);
  for (double v : e) EXPECT_LT(v, 1e-5);
}

}  // namespace
}  // namespace moe::train::test
