// Cross-entropy fused with the softmax over the vocabulary. Per row: m = max, z = sum exp(l - m),
// loss = log z + m - l[target]; dl = dscale * (exp(l - m) / z - [v == target]). The row's logits are read in
// full before any is overwritten, so one [n, V] buffer serves both.
#include <algorithm>
#include <cmath>
#include <vector>

#include "train/ops.h"

namespace moe::train {

template <typename T>
double cross_entropy_fused(T* logits, const int32_t* targets, int64_t n, int64_t vocab, double dscale) {
  double total = 0;
  std::vector<double> e(static_cast<size_t>(vocab));
  for (int64_t i = 0; i < n; ++i) {
    T* l = logits + i * vocab;
    double m = double(l[0]);
    for (int64_t v = 1; v < vocab; ++v) m = std::max(m, double(l[v]));
    double z = 0;
    for (int64_t v = 0; v < vocab; ++v) z += (e[size_t(v)] = std::exp(double(l[v]) - m));
    const int32_t t = targets[i];
    if (t < 0) {  // no target (SFT: a token that carries no loss): no loss, no gradient
      std::fill(l, l + vocab, T(0));
      continue;
    }
    total += std::log(z) + m - double(l[t]);
    for (int64_t v = 0; v < vocab; ++v) l[v] = T(dscale * (e[size_t(v)] / z - (v == t ? 1.0 : 0.0)));
  }
  return total;
}

template double cross_entropy_fused<float>(float*, const int32_t*, int64_t, int64_t, double);
template double cross_entropy_fused<double>(double*, const int32_t*, int64_t, int64_t, double);

}  // namespace moe::train
