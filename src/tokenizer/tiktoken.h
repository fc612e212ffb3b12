#pragma once
// tiktoken-style BPE (Kimi-K2's `tiktoken.model`): a rank per token byte string, one line each,
// `base64(token bytes) rank`; a token's id is its rank. A pre-token is encoded as tiktoken does: taken whole when it
// is a token, otherwise split into bytes that are merged pairwise, always the adjacent pair whose concatenation has
// the lowest rank first, until no adjacent pair is a token.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "tokenizer/bpe.h"
#include "tokenizer/components.h"

namespace moe::tok {

class Tiktoken : public Model {
 public:
  // `text`: the file's contents; `source` names it in errors, which give the line: malformed base64, a missing or
  // non-numeric rank, a duplicate rank or token, ranks that are not 0..N-1, a single byte without a token.
  Tiktoken(std::string_view text, const std::string& source);

  void tokenize(std::string_view word, std::vector<int32_t>& out) const override;
  int32_t token_id(std::string_view token) const override;
  const std::string* token(int32_t id) const override;
  int32_t id_limit() const override { return int32_t(tokens_.size()); }

 private:
  int32_t rank(std::string_view bytes) const;  // -1 if not a token
  StringMap<int32_t> ranks_;
  std::vector<std::string> tokens_;  // by rank
};

// Kimi-K2's pre-tokenizer (pat_str of its tokenization_kimi.py), with its class intersections ([A&&[^B]]), which
// PCRE2 lacks, written as (?:(?!B)[A]).
std::string kimi_pattern();
// The decoder of a byte-level vocabulary whose tokens are already raw bytes: tokens are concatenated as they are.
std::unique_ptr<Decoder> make_raw_bytes_decoder();

}  // namespace moe::tok
