#include "backend/sampling.h"

#include <algorithm>
#include <cmath>
#include <limits>

namespace moe {

namespace {

// A sampling candidate: its id, logit and weight exp((logit - max) / temperature).
struct Entry {
  int32_t id;
  float logit;
  double weight;
};

// Higher logit first, ties to the lower id: the order top-k and top-p count in.
bool higher(const Entry& a, const Entry& b) {
  return a.logit > b.logit || (a.logit == b.logit && a.id < b.id);
}

// Smallest m >= 1 such that the m highest of e[b, end) weigh at least `target`; moves them to e[b, b + m).
// A weighted quickselect: each round partitions the undecided range at its middle (nth_element) and keeps the
// half the boundary lies in, so the whole costs O(n) rather than a sort's O(n log n).
size_t quickselect_nucleus(std::vector<Entry>& e, size_t b, size_t end, double target) {
  size_t lo = b, hi = end;  // boundary in (lo, hi]; e[b, lo) are the highest and weigh `acc` < target
  double acc = 0.0;
  while (hi - lo > 1) {
    const size_t mid = lo + (hi - lo) / 2;
    std::nth_element(e.begin() + std::ptrdiff_t(lo), e.begin() + std::ptrdiff_t(mid),
                     e.begin() + std::ptrdiff_t(hi), higher);
    double s = acc;
    for (size_t i = lo; i < mid; ++i) s += e[i].weight;
    if (s >= target) {
      hi = mid;
    } else {
      acc = s;
      lo = mid;
    }
  }
  return hi - b;
}

// Top-p: the smallest m >= 1 such that the m highest entries weigh at least `target`; moves them to the
// front. Entries are first binned by x = (max - logit) / temperature (weight = e^-x) in bins of 1/64, which
// orders bins as the logits (rounding is monotone); whole bins above the boundary are in, the ones below out,
// and only the boundary bin is ordered exactly. One pass instead of log2(n) partitions of a vocabulary.
size_t nucleus(std::vector<Entry>& e, double target, float mx, float temperature) {
  constexpr int kPerUnit = 64, kBins = 64 * kPerUnit;  // x past 64 (weight < 1.6e-28) shares the last bin
  const auto bin = [&](const Entry& c) {
    const float x = (mx - c.logit) / temperature * float(kPerUnit);
    return x < float(kBins - 1) ? int(x) : kBins - 1;
  };
  std::vector<double> weight(kBins, 0.0);
  for (const auto& c : e) weight[size_t(bin(c))] += c.weight;
  double before = 0.0;
  int boundary = 0;
  while (boundary < kBins && before + weight[size_t(boundary)] < target) before += weight[size_t(boundary++)];
  if (boundary == kBins) return e.size();  // rounding kept the total just under target: all of them
  const auto above = std::partition(e.begin(), e.end(), [&](const Entry& c) { return bin(c) < boundary; });
  const auto at = std::partition(above, e.end(), [&](const Entry& c) { return bin(c) == boundary; });
  const size_t first = size_t(above - e.begin());
  return first + quickselect_nucleus(e, first, size_t(at - e.begin()), target - before);
}

// The candidates of sampling_candidates() (see sampler.h), as entries in `e`.
void select_candidates(std::span<const float> logits, const SamplingParams& p, std::vector<Entry>& e) {
  e.clear();
  // -inf (masked) and NaN logits can never be drawn. mx: the largest logit, whose weight is exp(0) = 1.
  const float none = -std::numeric_limits<float>::infinity();
  float mx = none;
  if (p.temperature > 0.0f && p.top_k > 0 && size_t(p.top_k) < logits.size()) {
    for (int32_t id : top_ids(logits, size_t(p.top_k)))  // largest first
      if (logits[size_t(id)] > none) e.push_back({id, logits[size_t(id)], 0.0});
    if (!e.empty()) mx = e.front().logit;
  } else if (p.temperature > 0.0f) {
    e.reserve(logits.size());
    for (size_t i = 0; i < logits.size(); ++i)
      if (logits[i] > none) {
        e.push_back({int32_t(i), logits[i], 0.0});
        mx = std::max(mx, logits[i]);
      }
  }
  if (e.empty()) {  // greedy, or no finite logit to weigh
    const int32_t best = argmax(logits);
    e.push_back({best, logits.empty() ? 0.0f : logits[size_t(best)], 1.0});
    return;
  }
  double total = 0.0;
  for (auto& c : e) total += (c.weight = std::exp(double(c.logit - mx) / p.temperature));
  if (p.min_p > 0.0f) {  // the largest weight is exp(0) = 1, so min_p of it is min_p itself
    const double floor = std::min(double(p.min_p), 1.0);
    std::erase_if(e, [&](const Entry& c) { return c.weight < floor; });
  }
  if (p.top_p < 1.0f) e.resize(nucleus(e, double(p.top_p) * total, mx, p.temperature));
}

}  // namespace

int32_t argmax(std::span<const float> v) {
  // Two passes that vectorise: the largest value over 16 independent lanes (a NaN compares false and is
  // passed over), then the first index holding it, a block of 16 at a time.
  constexpr size_t kLanes = 16;
  const size_t n = v.size();
  float lane[kLanes];
  std::fill(lane, lane + kLanes, -std::numeric_limits<float>::infinity());
  size_t i = 0;
  for (; i + kLanes <= n; i += kLanes)
    for (size_t j = 0; j < kLanes; ++j) lane[j] = v[i + j] > lane[j] ? v[i + j] : lane[j];
  float mx = -std::numeric_limits<float>::infinity();
  for (; i < n; ++i) mx = v[i] > mx ? v[i] : mx;
  for (float m : lane) mx = m > mx ? m : mx;
  for (size_t b = 0; b < n; b += kLanes) {
    const size_t e = std::min(n, b + kLanes);
    bool hit = false;
    for (size_t k = b; k < e; ++k) hit |= v[k] == mx;
    if (hit)
      for (size_t k = b; k < e; ++k)
        if (v[k] == mx) return int32_t(k);
  }
  return 0;  // every logit NaN, or none
}

std::vector<int32_t> top_ids(std::span<const float> values, size_t k) {
  // A heap ordered by `higher` keeps its lowest entry at the front; ids arrive in ascending order, so an equal
  // value never displaces an earlier one.
  std::vector<Entry> heap;
  heap.reserve(std::min(k, values.size()));
  float lowest = 0.0f;  // the heap's front value once it holds k
  for (size_t i = 0; i < values.size() && k > 0; ++i) {
    const float v = values[i];
    if (heap.size() < k) {
      if (std::isnan(v)) continue;
      heap.push_back({int32_t(i), v, 0.0});
      std::push_heap(heap.begin(), heap.end(), higher);
    } else if (v > lowest) {  // false for NaN
      std::pop_heap(heap.begin(), heap.end(), higher);
      heap.back() = {int32_t(i), v, 0.0};
      std::push_heap(heap.begin(), heap.end(), higher);
    } else {
      continue;
    }
    if (heap.size() == k) lowest = heap.front().logit;
  }
  std::sort_heap(heap.begin(), heap.end(), higher);  // ascending under `higher`: largest first
  std::vector<int32_t> ids(heap.size());
  for (size_t i = 0; i < heap.size(); ++i) ids[i] = heap[i].id;
  return ids;
}

void sampling_candidates(std::span<const float> logits, const SamplingParams& params,
                         SamplingCandidates& out) {
  std::vector<Entry> e;
  select_candidates(logits, params, e);
  out.ids.resize(e.size());
  out.weights.resize(e.size());
  for (size_t i = 0; i < e.size(); ++i) {
    out.ids[i] = e[i].id;
    out.weights[i] = e[i].weight;
  }
}

void apply_penalties(std::span<float> logits, const SamplingParams& p, std::span<const int32_t> prompt,
                     std::span<const int32_t> output) {
  const auto in_row = [&](int32_t t) { return t >= 0 && size_t(t) < logits.size(); };
  if (p.repetition_penalty != 1.0f) {  // once per distinct token seen in the prompt or the output
    std::vector<uint8_t> seen(logits.size(), 0);
    for (auto tokens : {prompt, output})
      for (int32_t t : tokens)
        if (in_row(t) && !seen[size_t(t)]) {
          seen[size_t(t)] = 1;
          float& l = logits[size_t(t)];
          l = l > 0 ? l / p.repetition_penalty : l * p.repetition_penalty;
        }
  }
  if (p.frequency_penalty != 0.0f || p.presence_penalty != 0.0f) {  // by each output token's count
    std::vector<int32_t> sorted;
    for (int32_t t : output)
      if (in_row(t)) sorted.push_back(t);
    std::sort(sorted.begin(), sorted.end());
    for (size_t i = 0; i < sorted.size();) {
      size_t j = i;
      while (j < sorted.size() && sorted[j] == sorted[i]) ++j;
      // One fused multiply-add, whatever the compiler's contraction setting: the device computes the same.
      logits[size_t(sorted[i])] -= std::fma(p.frequency_penalty, float(j - i), p.presence_penalty);
      i = j;
    }
  }
}

std::vector<float> log_softmax(std::span<const float> logits) {
  const float mx = logits.empty() ? 0.0f : logits[size_t(argmax(logits))];
  double sum = 0.0;
  for (float l : logits) sum += std::exp(double(l - mx));
  const float lse = mx + float(std::log(sum));
  std::vector<float> out(logits.size());
  for (size_t i = 0; i < logits.size(); ++i) out[i] = logits[i] - lse;
  return out;
}

int32_t sample_logits(std::span<float> logits, const SamplingParams& params, std::span<const int32_t> prompt,
                      std::span<const int32_t> output, double u) {
  for (auto [id, bias] : params.logit_bias)
    if (id >= 0 && size_t(id) < logits.size()) logits[size_t(id)] += bias;
  apply_penalties(logits, params, prompt, output);
  if (params.temperature <= 0.0f) return argmax(logits);
  thread_local std::vector<Entry> e;  // up to a vocabulary of entries: reused, not reallocated per token
  select_candidates(logits, params, e);
  if (e.size() == 1) return e.front().id;
  // The draw walks the candidates in ascending id order (the order the device op sums them in), whatever
  // order the selection left them in: a flag per vocabulary entry when there are many, a sort when few.
  thread_local std::vector<double> weight_of;
  if (e.size() * 16 < logits.size()) {
    std::sort(e.begin(), e.end(), [](const Entry& a, const Entry& b) { return a.id < b.id; });
  } else {
    weight_of.assign(logits.size(), -1.0);
    for (const auto& c : e) weight_of[size_t(c.id)] = c.weight;
    size_t n = 0;
    for (size_t i = 0; i < weight_of.size(); ++i)
      if (weight_of[i] >= 0.0) e[n++] = {int32_t(i), logits[i], weight_of[i]};
  }
  double total = 0.0;
  for (const auto& c : e) total += c.weight;
  const double x = u * total;
  double cum = 0.0;
  for (const auto& c : e)
    if (x < (cum += c.weight)) return c.id;
  for (size_t i = e.size(); i-- > 0;)  // x rounded past the sum: the last entry that can be drawn
    if (e[i].weight > 0.0) return e[i].id;
  return e.front().id;
}

SampleResult sample_row_host(std::span<float> logits, const SampleRow& row) {
  const float none = -std::numeric_limits<float>::infinity();
  for (size_t i = size_t(std::clamp<int64_t>(row.vocab_limit, 0, int64_t(logits.size()))); i < logits.size(); ++i)
    logits[i] = none;
  std::vector<float> lp;  // the model's distribution, before the mask, penalties and temperature
  if (row.top_logprobs >= 0) lp = log_softmax(logits);
  if (!row.allowed.empty())
    for (size_t i = 0; i < logits.size(); ++i)
      if (!allowed_bit(row.allowed, int64_t(i))) logits[i] = none;
  SampleResult r;
  r.token = sample_logits(logits, *row.params, row.prompt, row.output, row.u);
  if (row.top_logprobs >= 0) {
    r.logprob = lp[size_t(r.token)];
    for (int32_t id : top_ids(lp, size_t(row.top_logprobs))) r.top.emplace_back(id, lp[size_t(id)]);
  }
  return r;
}

}  // namespace moe
