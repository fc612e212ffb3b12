#pragma once
// Central finite differences against an op's backward, in the element type T the op runs in.
//
// The op is reduced to a scalar L = sum_i r_i y_i with random r (the backward gets dy = r), summed in double.
// Tolerance, derived rather than tuned: each output is rounded at most k times (relative u = eps_T / 2 each;
// the ops accumulate in double and round once per stage, k = 8 covers the longest chain here), so one evaluation
// of L is off by at most k u S, S = sum_i |r_i y_i|; the central difference divides two such errors by 2h:
// k u S / h. Its truncation error is h^2 / 6 |L'''|, and for inputs and weights of unit size L''' is a few
// times S at most: bound it by 6 S, giving h^2 S. With h = (k u)^(1/3) the two balance:
//   tol = k u S / h + h^2 S = 2 (k u)^(2/3) S    (float: ~1.2e-4 S; double: ~1.9e-10 S).
// The step actually taken is (x + h) - (x - h) as rounded in T. A check whose tolerance is not well below the
// gradients it checks would pass anything; that is asserted too.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <limits>
#include <random>
#include <string>
#include <vector>

namespace moe::train::test {

template <typename T>
using Inputs = std::vector<std::vector<T>>;

template <typename T>
std::vector<T> random_vector(std::mt19937& rng, size_t n, double scale = 1.0) {
  std::normal_distribution<double> nd(0.0, scale);
  std::vector<T> v(n);
  for (T& x : v) x = T(nd(rng));
  return v;
}

// forward(inputs) -> outputs; backward(inputs, dy) -> one gradient per input (same sizes), or empty vectors for
// inputs that get no gradient (ids, fixed choices). `max_coords` coordinates of each input are checked.
template <typename T>
void check_gradients(const std::string& what, Inputs<T> inputs,
                     const std::function<std::vector<T>(const Inputs<T>&)>& forward,
                     const std::function<Inputs<T>(const Inputs<T>&, const std::vector<T>&)>& backward,
                     int max_coords = 48, uint32_t seed = 7) {
  std::mt19937 rng(seed);
  const std::vector<T> y0 = forward(inputs);
  const std::vector<T> r = random_vector<T>(rng, y0.size());
  double S = 0;
  for (size_t i = 0; i < y0.size(); ++i) S += std::abs(double(r[i]) * double(y0[i]));
  const Inputs<T> grads = backward(inputs, r);
  ASSERT_EQ(grads.size(), inputs.size()) << what;
  const double ku = 8.0 * double(std::numeric_limits<T>::epsilon()) / 2.0;
  const double h = std::cbrt(ku);
  const double tol = 2.0 * std::pow(ku, 2.0 / 3.0) * S;
  auto L = [&](const Inputs<T>& in) {
    const std::vector<T> y = forward(in);
    double l = 0;
    for (size_t i = 0; i < y.size(); ++i) l += double(r[i]) * double(y[i]);
    return l;
  };
  for (size_t a = 0; a < inputs.size(); ++a) {
    if (grads[a].empty()) continue;
    ASSERT_EQ(grads[a].size(), inputs[a].size()) << what << " input " << a;
    const size_t n = inputs[a].size();
    const size_t stride = std::max<size_t>(1, n / size_t(max_coords));
    double max_grad = 0, max_err = 0;
    for (size_t i = 0; i < n; i += stride) {
      Inputs<T> p = inputs, m = inputs;
      p[a][i] = T(double(inputs[a][i]) + h);
      m[a][i] = T(double(inputs[a][i]) - h);
      const double step = double(p[a][i]) - double(m[a][i]);
      const double fd = (L(p) - L(m)) / step;
      max_grad = std::max(max_grad, std::abs(double(grads[a][i])));
      max_err = std::max(max_err, std::abs(fd - double(grads[a][i])));
      EXPECT_NEAR(double(grads[a][i]), fd, tol) << what << " input " << a << " coordinate " << i;
    }
    EXPECT_LT(tol, 1e-2 * max_grad) << what << " input " << a << ": the tolerance would not see a wrong gradient";
    ::testing::Test::RecordProperty(what + "_input" + std::to_string(a) + "_max_abs_err", std::to_string(max_err));
  }
}

}  // namespace moe::train::test
