#pragma once
// Fill-in-the-middle at document level, DeepSeek-Coder's PSM form: a code document's tokens d are cut at two
// points i <= j drawn uniformly from [0, n] into prefix d[0,i), middle d[i,j), suffix d[j,n) and rearranged as
//   <｜fim▁begin｜> prefix <｜fim▁hole｜> suffix <｜fim▁end｜> middle
// so the model learns to write a missing middle given what comes before and after it. The cut is at token
// boundaries (every token of the document appears exactly once, in three runs), which is what inference sees
// when a client tokenizes prefix and suffix apart at token-aligned points.
//
// Which documents and where: a pure function of (seed, document index), splitmix64, so tokenize-corpus writes
// the same bytes for any thread count and on every platform.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

namespace moe {
class Tokenizer;
}

namespace moe::train {

struct FimTokens {
  int32_t begin = -1, hole = -1, end = -1;
  // The tokenizer's <｜fim▁begin｜>, <｜fim▁hole｜>, <｜fim▁end｜>; throws moe::Error naming the missing token and
  // `dir` (the tokenizer directory) when one is absent.
  static FimTokens from(const Tokenizer& tok, const std::string& dir);
};

struct FimDraw {
  bool apply = false;
  int64_t i = 0, j = 0;  // 0 <= i <= j <= n
};

// Whether document `doc` (its index over all inputs) of n tokens is rearranged (probability `rate`) and where.
FimDraw fim_draw(uint64_t seed, int64_t doc, int64_t n, double rate);

// The PSM rearrangement of `ids` (the document without its EOS) at the draw's cut points.
std::vector<int32_t> fim_apply(std::span<const int32_t> ids, const FimDraw& draw, const FimTokens& t);

}  // namespace moe::train
