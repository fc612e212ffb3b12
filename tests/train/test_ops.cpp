// Finite-difference checks of every backward op of the trainer, in float and in double (fd_check.h derives the
// tolerances). Inputs are random and non-zero; shapes are small but not square, so a transposed index fails.
#include <gtest/gtest.h>

#include "fd_check.h"
#include "model/rope.h"
#include "train/ops.h"

namespace moe::train::test {
namespace {

template <typename T>
class Ops : public ::testing::Test {};
using Types = ::testing::Types<float, double>;
TYPED_TEST_SUITE(Ops, Types);

TYPED_TEST(Ops, Embedding) {
  using T = TypeParam;
  std::mt19937 rng(1);
  const std::vector<int32_t> ids = {3, 1, 3, 0, 4};  // token 3 twice: its gradient rows add up
  const int64_t d = 6, vocab = 5;
  check_gradients<T>(
      "embedding", {random_vector<T>(rng, size_t(vocab * d))},
      [&](const Inputs<T>& in) {
        std::vector<T> y(ids.size() * size_t(d));
        embedding_forward(y.data(), ids.data(), int64_t(ids.size()), in[0].data(), d);
        return y;
      },
      [&](const Inputs<T>& in, const std::vector<T>& dy) {
        Inputs<T> g = {std::vector<T>(in[0].size())};
        embedding_backward(g[0].data(), ids.data(), int64_t(ids.size()), dy.data(), d);
        return g;
      });
}

TYPED_TEST(Ops, RmsNorm) {
  using T = TypeParam;
  std::mt19937 rng(2);
  const int64_t n = 3, d = 7;
  std::vector<T> w = random_vector<T>(rng, size_t(d), 0.1);
  for (T& v : w) v += T(1);
  check_gradients<T>(
      "rmsnorm", {random_vector<T>(rng, size_t(n * d)), w},
      [&](const Inputs<T>& in) {
        std::vector<T> y(size_t(n * d)), rstd(static_cast<size_t>(n));
        rmsnorm_forward(y.data(), rstd.data(), in[0].data(), in[1].data(), n, d, 1e-6);
        return y;
      },
      [&](const Inputs<T>& in, const std::vector<T>& dy) {
        std::vector<T> y(size_t(n * d)), rstd(static_cast<size_t>(n));
        rmsnorm_forward(y.data(), rstd.data(), in[0].data(), in[1].data(), n, d, 1e-6);
        Inputs<T> g = {std::vector<T>(in[0].size()), std::vector<T>(in[1].size())};
        rmsnorm_backward(g[0].data(), g[1].data(), dy.data(), in[0].data(), in[1].data(), rstd.data(), n, d);
        return g;
      });
}

TYPED_TEST(Ops, Matmul) {
  using T = TypeParam;
  std::mt19937 rng(3);
  const int64_t n = 4, k = 6, m = 5;
  check_gradients<T>(
      "matmul", {random_vector<T>(rng, size_t(n * k)), random_vector<T>(rng, size_t(m * k), 0.4)},
      [&](const Inputs<T>& in) {
        std::vector<T> y(size_t(n * m));
        matmul_forward(y.data(), in[0].data(), in[1].data(), n, k, m);
        return y;
      },
      [&](const Inputs<T>& in, const std::vector<T>& dy) {
        Inputs<T> g = {std::vector<T>(in[0].size()), std::vector<T>(in[1].size())};
        matmul_backward(g[0].data(), g[1].data(), dy.data(), in[0].data(), in[1].data(), n, k, m);
        return g;
      });
}

TYPED_TEST(Ops, RopeWithYarn) {
  using T = TypeParam;
  std::mt19937 rng(4);
  ModelConfig c;
  c.qk_nope_head_dim = 4;
  c.qk_rope_head_dim = 8;
  c.yarn = YarnConfig{};
  c.yarn->factor = 40;
  c.yarn->mscale = 0.707;  // attn_factor != 1, so the scaling is checked too
  c.yarn->mscale_all_dim = 1.0;
  const RopeParams rope = make_rope_params(c);
  ASSERT_NE(rope.attn_factor, 1.0);
  const int64_t n = 3, heads = 2, hd = 12, off = 4;
  const std::vector<int32_t> pos = {0, 5, 1000};
  check_gradients<T>(
      "rope", {random_vector<T>(rng, size_t(n * heads * hd))},
      [&](const Inputs<T>& in) {
        std::vector<T> y = in[0];
        rope_forward(y.data(), n, heads, hd, off, pos.data(), rope);
        return y;
      },
      [&](const Inputs<T>& in, const std::vector<T>& dy) {
        Inputs<T> g = {dy};
        rope_backward(g[0].data(), n, heads, hd, off, pos.data(), rope);
        return g;
      });
}

TYPED_TEST(Ops, MlaAttentionCausal) {
  using T = TypeParam;
  std::mt19937 rng(5);
  MlaDims d;
  d.t = 5, d.heads = 2, d.dn = 3, d.dr = 4, d.dv = 2, d.scale = 0.4;
  auto fwd = [&](const Inputs<T>& in, std::vector<T>& probs) {
    std::vector<T> out(size_t(d.t * d.heads * d.dv));
    probs.assign(size_t(d.heads * d.t * d.t), T(0));
    mla_attention_forward(out.data(), probs.data(), in[0].data(), in[1].data(), in[2].data(), d);
    return out;
  };
  check_gradients<T>(
      "mla_attention",
      {random_vector<T>(rng, size_t(d.t * d.heads * (d.dn + d.dr))),
       random_vector<T>(rng, size_t(d.t * d.heads * (d.dn + d.dv))), random_vector<T>(rng, size_t(d.t * d.dr))},
      [&](const Inputs<T>& in) {
        std::vector<T> probs;
        return fwd(in, probs);
      },
      [&](const Inputs<T>& in, const std::vector<T>& dy) {
        std::vector<T> probs;
        fwd(in, probs);
        Inputs<T> g = {std::vector<T>(in[0].size()), std::vector<T>(in[1].size()), std::vector<T>(in[2].size())};
        mla_attention_backward(g[0].data(), g[1].data(), g[2].data(), dy.data(), probs.data(), in[0].data(),
                               in[1].data(), in[2].data(), d);
        return g;
      },
      64);
}

TYPED_TEST(Ops, MlaAttentionIsCausal) {
  using T = TypeParam;
  std::mt19937 rng(6);
  MlaDims d;
  d.t = 4, d.heads = 1, d.dn = 2, d.dr = 2, d.dv = 2, d.scale = 0.7;
  std::vector<T> q = random_vector<T>(rng, 16), kv = random_vector<T>(rng, 16), kr = random_vector<T>(rng, 8);
  std::vector<T> out(8), out2(8), probs(16);
  mla_attention_forward(out.data(), probs.data(), q.data(), kv.data(), kr.data(), d);
  kv[3 * 4 + 2] += T(5);  // the last token's value: only the last query may see it
  kr[3 * 2] += T(5);
  mla_attention_forward(out2.data(), probs.data(), q.data(), kv.data(), kr.data(), d);
  for (int i = 0; i < 6; ++i) EXPECT_EQ(out[size_t(i)], out2[size_t(i)]) << i;
  EXPECT_NE(out[6], out2[6]);
}

TYPED_TEST(Ops, Swiglu) {
  using T = TypeParam;
  std::mt19937 rng(7);
  const int64_t n = 20;
  check_gradients<T>(
      "swiglu", {random_vector<T>(rng, size_t(n), 1.5), random_vector<T>(rng, size_t(n))},
      [&](const Inputs<T>& in) {
        std::vector<T> y(static_cast<size_t>(n));
        swiglu_forward(y.data(), in[0].data(), in[1].data(), n);
        return y;
      },
      [&](const Inputs<T>& in, const std::vector<T>& dy) {
        Inputs<T> g = {std::vector<T>(size_t(n)), std::vector<T>(size_t(n))};
        swiglu_backward(g[0].data(), g[1].data(), dy.data(), in[0].data(), in[1].data(), n);
        return g;
      });
}

// The router's weights and the balance loss as functions of the logits, with the choice held fixed (asserted
// unchanged under every perturbation: the choice is piecewise constant and has no gradient).
template <typename T>
void check_router(const RouterConfig& c, uint32_t seed, bool with_bias) {
  std::mt19937 rng(seed);
  const int64_t b = 2, t = 5, n = b * t, E = c.experts, K = c.top_k;
  std::vector<float> bias(static_cast<size_t>(E));
  for (float& v : bias) v = with_bias ? float(std::uniform_real_distribution<double>(-0.05, 0.05)(rng)) : 0.f;
  const double alpha = 0.3;  // large, so the balance term is not lost next to the weights in L
  Routing<T> r0;
  const std::vector<T> logits = random_vector<T>(rng, size_t(n * E));
  router_forward(r0, logits.data(), bias.data(), n, c);
  auto fwd = [&](const Inputs<T>& in) {
    Routing<T> r;
    router_forward(r, in[0].data(), bias.data(), n, c);
    EXPECT_EQ(r.chosen, r0.chosen) << "the perturbation changed the choice";
    std::vector<T> y = r.weights;
    y.push_back(T(balance_loss_forward(r, b, t, c, alpha)));
    return y;
  };
  check_gradients<T>(
      "router", {logits}, fwd,
      [&](const Inputs<T>& in, const std::vector<T>& dy) {
        Routing<T> r;
        router_forward(r, in[0].data(), bias.data(), n, c);
        std::vector<T> ds(size_t(n * E)), dl(size_t(n * E));
        router_weights_backward(ds.data(), dy.data(), r, n, c);
        balance_loss_backward(ds.data(), r, b, t, c, alpha, double(dy[size_t(n * K)]));
        router_scores_backward(dl.data(), ds.data(), r, n, c);
        return Inputs<T>{dl};
      },
      80);
}

TYPED_TEST(Ops, RouterSigmoidNoauxTc) {
  RouterConfig c;
  c.experts = 8, c.top_k = 2, c.n_group = 2, c.topk_group = 1, c.scaling = 2.5;
  check_router<TypeParam>(c, 8, true);
}

TYPED_TEST(Ops, RouterSoftmaxGroupLimited) {
  RouterConfig c;
  c.experts = 6, c.top_k = 2, c.n_group = 3, c.topk_group = 2, c.scaling = 1.5;
  c.scoring = ScoringFunc::Softmax;
  c.method = TopkMethod::GroupLimitedGreedy;
  c.norm_topk_prob = false;
  check_router<TypeParam>(c, 9, false);
}

TEST(Router, GroupLimitAndBiasOnlyChoose) {
  // Two groups of 4; the bias lifts expert 5 into the chosen set, but its weight comes from its own score.
  RouterConfig c;
  c.experts = 8, c.top_k = 2, c.n_group = 2, c.topk_group = 1, c.scaling = 2.0;
  const std::vector<double> logits = {2.0, 1.9, -3, -3, 1.0, 0.5, 1.2, -3};
  const std::vector<float> bias = {0, 0, 0, 0, 0, 0.5f, 0, 0};
  Routing<double> r;
  router_forward(r, logits.data(), bias.data(), 1, c);
  // group 0: two best 0.881 + 0.870; group 1: 0.769 + (0.622 + 0.5) -> group 1 wins; top-2 there: 5, 6.
  EXPECT_EQ(r.chosen, (std::vector<int32_t>{5, 6}));
  const double s5 = 1 / (1 + std::exp(-0.5)), s6 = 1 / (1 + std::exp(-1.2));
  EXPECT_NEAR(r.weights[0], 2.0 * s5 / (s5 + s6 + 1e-20), 1e-15);
  EXPECT_NEAR(r.weights[1], 2.0 * s6 / (s5 + s6 + 1e-20), 1e-15);
}

TYPED_TEST(Ops, CrossEntropyFused) {
  using T = TypeParam;
  std::mt19937 rng(10);
  const int64_t n = 3, vocab = 11;
  const std::vector<int32_t> targets = {4, 0, 10};
  check_gradients<T>(
      "cross_entropy", {random_vector<T>(rng, size_t(n * vocab), 2.0)},
      [&](const Inputs<T>& in) {
        std::vector<T> l = in[0];
        return std::vector<T>{T(cross_entropy_fused(l.data(), targets.data(), n, vocab, 1.0))};
      },
      [&](const Inputs<T>& in, const std::vector<T>& dy) {
        std::vector<T> l = in[0];
        cross_entropy_fused(l.data(), targets.data(), n, vocab, double(dy[0]));
        return Inputs<T>{l};
      });
}

}  // namespace
}  // namespace moe::train::test
