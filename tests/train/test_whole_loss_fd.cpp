// The whole objective's gradient (main CE + lambda MTP CE + balance loss, through every layer, the MTP module and
// the shared embedding/head) against finite differences of the loss along a few directions through all the
// parameters at once, on a fresh random model and random token ids: what the per-op checks (test_ops.cpp) cannot
// see, i.e. how the ops are wired together.
//
// For a direction u over every parameter (|u| = 1) and step h, w+ = fl(w + h u), w- = fl(w - h u) (rounded to
// float32 as the model holds them) and the error e(h) = [L(w+) - L(w-)] - g . (w+ - w-), which uses the step
// actually taken. Taylor: e(h) = 2 h delta + c h^3 + rounding, where delta is the gradient's error along u and
// c = L'''_u / 3 the truncation from the loss's curvature. Two steps, h and 2h, eliminate the curvature term
// (Richardson): delta = (8 e(h) - e(2h)) / (12 h). Each L carries float32 rounding eps_L = k u_f (|L| + 1) with
// u_f = 2^-24 and k = 32 (the float32 stages from a weight to the loss, ~30), so delta's own error is at most
// (8 * 2 + 2) eps_L / (12 h) = 1.5 eps_L / h: the tolerance. It is asserted to be under 1% of |g . u|, so a
// wrongly wired gradient (a missing or doubled contribution of that size) fails.
// The loss is only piecewise smooth: top-k routing switches where two experts' scores cross, and a step across
// a switch jumps. h = 1e-3 (|u| = 1 over ~100k weights) moves no token's choice here (at 1e-2 some do, and the
// difference is the jump, not the gradient); the expert loads at w+- are asserted equal to those at w.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include <nlohmann/json.hpp>

#include "train/data.h"
#include "train/model.h"

namespace moe::train {
namespace {

void check_whole_loss(const nlohmann::json& changes, const Objective obj, double h) {
  auto cfg_json = nlohmann::json::parse(read_file("tests/data/tiny-train/model/config.json"));
  cfg_json.update(changes);
  const ModelConfig config = ModelConfig::from_json(cfg_json, "tiny-train config.json");
  TrainModel model = TrainModel::init(config, "tiny-train config.json", 21, 0.05);
  const int64_t b = 2, t = 10;
  std::mt19937 rng(5);
  std::uniform_int_distribution<int32_t> id(0, int32_t(config.vocab_size) - 1);
  std::vector<int32_t> ids(size_t(b * t));
  for (auto& x : ids) x = id(rng);
  model.zero_grad();
  ExpertLoads loads0;
  const LossParts at = forward_backward(model, ids, b, t, obj, &loads0);
  std::vector<std::vector<float>> w0;
  for (const auto& p : model.params) w0.push_back(p->w);

  const double eps_L = 32.0 * std::ldexp(1.0, -24) * (std::abs(at.loss) + 1.0);
  const double tol = 1.5 * eps_L / h;
  std::normal_distribution<double> nd(0.0, 1.0);
  for (int dir = 0; dir < 3; ++dir) {
    // u_i = g_i (1 + r_i), r_i ~ N(0, 1): along the gradient on average, every coordinate weighted differently.
    std::vector<std::vector<double>> u;
    double norm = 0;
    for (const auto& p : model.params) {
      u.emplace_back(p->g.size());
      for (size_t i = 0; i < p->g.size(); ++i) {
        u.back()[i] = double(p->g[i]) * (1.0 + nd(rng));
        norm += u.back()[i] * u.back()[i];
      }
    }
    norm = std::sqrt(norm);
    auto error = [&](double step) {
      double predicted = 0;
      auto loss_at = [&](double sign) {
        for (size_t k = 0; k < model.params.size(); ++k)
          for (size_t i = 0; i < u[k].size(); ++i)
            model.params[k]->w[i] = float(double(w0[k][i]) + sign * step * u[k][i] / norm);
        const std::vector<std::vector<float>> g = [&] {
          std::vector<std::vector<float>> out;
          for (const auto& p : model.params) out.push_back(p->g);
          return out;
        }();
        ExpertLoads loads;
        const double l = forward_backward(model, ids, b, t, obj, &loads).loss;  // for the loads; g restored below
        EXPECT_EQ(loads, loads0) << "a step of " << step << " changed the routing";
        for (size_t k = 0; k < model.params.size(); ++k) model.params[k]->g = g[k];
        return l;
      };
      const double lp = loss_at(+1);
      std::vector<std::vector<float>> wp;
      for (const auto& p : model.params) wp.push_back(p->w);
      const double lm = loss_at(-1);
      for (size_t k = 0; k < model.params.size(); ++k)
        for (size_t i = 0; i < u[k].size(); ++i)
          predicted += double(model.params[k]->g[i]) * (double(wp[k][i]) - double(model.params[k]->w[i]));
      return std::pair{(lp - lm) - predicted, predicted / (2 * step)};
    };
    const auto [e1, slope] = error(h);
    const auto [e2, slope2] = error(2 * h);
    const double delta = (8 * e1 - e2) / (12 * h);
    EXPECT_LT(std::abs(delta), tol) << "direction " << dir << ": slope " << slope;
    EXPECT_LT(tol, 1e-2 * std::abs(slope)) << "direction " << dir << ": the tolerance would not see a wrong gradient";
    std::printf("direction %d: slope g.u %.6g, gradient error along u %.3g (tolerance %.3g), curvature term %.3g\n",
                dir, slope, delta, tol, (e2 - 2 * e1) / 6);
    (void)slope2;
  }
  for (size_t k = 0; k < model.params.size(); ++k) model.params[k]->w = w0[k];
}

// Every layer dense, the MTP module's too: nothing can switch.
TEST(WholeLossFd, DenseModelWithMtp) {
  check_whole_loss({{"first_k_dense_replace", 3}}, Objective{0.3, 0.0}, 1e-3);
}
// MoE layers (main and MTP) with the balance loss.
TEST(WholeLossFd, MoeModelWithMtpAndBalanceLoss) {
  check_whole_loss(nlohmann::json::object(), Objective{0.3, 1e-2}, 1e-3);
}

}  // namespace
}  // namespace moe::train
