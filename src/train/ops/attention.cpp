// MLA attention in the expanded (non-absorbed) form, one sequence, causal. Training keeps k_nope and v per head
// (kv_b_proj's output) rather than the latent: the absorbed form saves cache memory at decode, which training
// does not have, and the expanded form's backward is plain attention's.
// Backward per head and query i, with P the kept probabilities:
//   dP_ij = dout_i . v_j,   dv_j += P_ij dout_i,   dS_ij = P_ij (dP_ij - sum_j' P_ij' dP_ij')
//   dq_i += scale sum_j dS_ij k_j,   dk_j += scale dS_ij q_i   (k = [k_nope_j,h ; k_rope_j], k_rope shared)
#include <cmath>
#include <vector>

#include "train/ops.h"

namespace moe::train {

template <typename T>
void mla_attention_forward(T* out, T* probs, const T* q, const T* kv, const T* k_rope, const MlaDims& d) {
  const int64_t dq = d.dn + d.dr, dkv = d.dn + d.dv;
  std::vector<double> s(size_t(d.t));
  for (int64_t h = 0; h < d.heads; ++h)
    for (int64_t i = 0; i < d.t; ++i) {
      const T* qi = q + (i * d.heads + h) * dq;
      double mx = -INFINITY;
      for (int64_t j = 0; j <= i; ++j) {
        const T* kj = kv + (j * d.heads + h) * dkv;
        const T* rj = k_rope + j * d.dr;
        double acc = 0;
        for (int64_t l = 0; l < d.dn; ++l) acc += double(qi[l]) * double(kj[l]);
        for (int64_t l = 0; l < d.dr; ++l) acc += double(qi[d.dn + l]) * double(rj[l]);
        s[size_t(j)] = acc * d.scale;
        mx = std::max(mx, s[size_t(j)]);
      }
      double z = 0;
      for (int64_t j = 0; j <= i; ++j) z += (s[size_t(j)] = std::exp(s[size_t(j)] - mx));
      T* p = probs + (h * d.t + i) * d.t;
      for (int64_t j = 0; j < d.t; ++j) p[j] = j <= i ? T(s[size_t(j)] / z) : T(0);
      T* oi = out + (i * d.heads + h) * d.dv;
      for (int64_t l = 0; l < d.dv; ++l) {
        double acc = 0;
        for (int64_t j = 0; j <= i; ++j) acc += (s[size_t(j)] / z) * double(kv[(j * d.heads + h) * dkv + d.dn + l]);
        oi[l] = T(acc);
      }
    }
}

template <typename T>
void mla_attention_backward(T* dq, T* dkv, T* dk_rope, const T* dout, const T* probs, const T* q, const T* kv,
                            const T* k_rope, const MlaDims& d) {
  const int64_t dq_w = d.dn + d.dr, dkv_w = d.dn + d.dv;
  std::vector<double> ds(size_t(d.t));
  for (int64_t h = 0; h < d.heads; ++h)
    for (int64_t i = 0; i < d.t; ++i) {
      const T* p = probs + (h * d.t + i) * d.t;
      const T* doi = dout + (i * d.heads + h) * d.dv;
      const T* qi = q + (i * d.heads + h) * dq_w;
      double pdp = 0;
      for (int64_t j = 0; j <= i; ++j) {
        const T* vj = kv + (j * d.heads + h) * dkv_w + d.dn;
        double dp = 0;
        for (int64_t l = 0; l < d.dv; ++l) dp += double(doi[l]) * double(vj[l]);
        ds[size_t(j)] = dp;
        pdp += double(p[j]) * dp;
        T* dvj = dkv + (j * d.heads + h) * dkv_w + d.dn;
        for (int64_t l = 0; l < d.dv; ++l) dvj[l] += T(double(p[j]) * double(doi[l]));
      }
      for (int64_t j = 0; j <= i; ++j) ds[size_t(j)] = double(p[j]) * (ds[size_t(j)] - pdp) * d.scale;
      T* dqi = dq + (i * d.heads + h) * dq_w;
      for (int64_t l = 0; l < d.dn; ++l) {
        double acc = 0;
        for (int64_t j = 0; j <= i; ++j) acc += ds[size_t(j)] * double(kv[(j * d.heads + h) * dkv_w + l]);
        dqi[l] += T(acc);
      }
      for (int64_t l = 0; l < d.dr; ++l) {
        double acc = 0;
        for (int64_t j = 0; j <= i; ++j) acc += ds[size_t(j)] * double(k_rope[j * d.dr + l]);
        dqi[d.dn + l] += T(acc);
      }
      for (int64_t j = 0; j <= i; ++j) {
        T* dkj = dkv + (j * d.heads + h) * dkv_w;
        T* drj = dk_rope + j * d.dr;
        for (int64_t l = 0; l < d.dn; ++l) dkj[l] += T(ds[size_t(j)] * double(qi[l]));
        for (int64_t l = 0; l < d.dr; ++l) drj[l] += T(ds[size_t(j)] * double(qi[d.dn + l]));
      }
    }
}

#define INSTANTIATE(T)                                                                                    \
  template void mla_attention_forward<T>(T*, T*, const T*, const T*, const T*, const MlaDims&);         \
  template void mla_attention_backward<T>(T*, T*, T*, const T*, const T*, const T*, const T*, const T*, \
                                          const MlaDims&);
INSTANTIATE(float)
INSTANTIATE(double)

}  // namespace moe::train
