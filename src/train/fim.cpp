#include "train/fim.h"

#include <algorithm>
#include <string>

#include "core/error.h"
#include "tokenizer/tokenizer.h"

namespace moe::train {

FimTokens FimTokens::from(const Tokenizer& tok, const std::string& dir) {
  FimTokens t;
  const char* names[3] = {"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"};
  int32_t* ids[3] = {&t.begin, &t.hole, &t.end};
  for (int k = 0; k < 3; ++k) {
    *ids[k] = tok.token_id(names[k]);
    MOE_CHECK(*ids[k] >= 0, "{}: the tokenizer has no {} token, which --fim-rate needs", dir, names[k]);
  }
  return t;
}

namespace {

// splitmix64's output function over a counter; the stream for a document is seeded by (seed, doc).
struct SplitMix {
  uint64_t state;
  uint64_t next() {
    uint64_t z = (state += 0x9e3779b97f4a7c15ull);
    z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
    z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
    return z ^ (z >> 31);
  }
  double uniform() { return double(next() >> 11) * 0x1.0p-53; }  // [0, 1), 53 random bits
};

}  // namespace

FimDraw fim_draw(uint64_t seed, int64_t doc, int64_t n, double rate) {
  SplitMix r{seed * 0xd1342543de82ef95ull ^ (uint64_t(doc) * 0x9e3779b97f4a7c15ull + 0x632be59bd9b4e019ull)};
  FimDraw d;
  d.apply = r.uniform() < rate;
  if (!d.apply) return d;
  const uint64_t m = uint64_t(n) + 1;  // cut points 0..n
  int64_t a = int64_t(r.next() % m), b = int64_t(r.next() % m);
  d.i = std::min(a, b);
  d.j = std::max(a, b);
  return d;
}

std::vector<int32_t> fim_apply(std::span<const int32_t> ids, const FimDraw& d, const FimTokens& t) {
  MOE_CHECK(0 <= d.i && d.i <= d.j && d.j <= int64_t(ids.size()), "fim: cut points {} <= {} outside [0, {}]", d.i,
            d.j, ids.size());
  std::vector<int32_t> out;
  out.reserve(ids.size() + 3);
  out.push_back(t.begin);
  out.insert(out.end(), ids.begin(), ids.begin() + d.i);  // prefix
  out.push_back(t.hole);
  out.insert(out.end(), ids.begin() + d.j, ids.end());  // suffix
  out.push_back(t.end);
  out.insert(out.end(), ids.begin() + d.i, ids.begin() + d.j);  // middle
  return out;
}

}  // namespace moe::train
