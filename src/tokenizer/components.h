#pragma once
// The stages of a Hugging Face tokenizer.json pipeline, built from their JSON descriptions:
//   text -> added-token split -> normalizer -> pre-tokenizer -> model (BPE) -> ids
//   ids -> tokens -> decoder -> text
// Internal to moe_tokenizer; the public face is tokenizer.h.
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

namespace moe::tok {

// A span of (normalized) text that the model will tokenize on its own. at_start: it begins at offset 0 of the
// original input (Metaspace's prepend_scheme "first" needs this).
struct Piece {
  std::string text;
  bool at_start = false;
};

// The model that turns one pre-tokenized piece into ids: tokenizer.json's BPE (bpe.h) or tiktoken's (tiktoken.h).
class Model {
 public:
  virtual ~Model() = default;
  virtual void tokenize(std::string_view word, std::vector<int32_t>& out) const = 0;  // appends the piece's ids
  virtual int32_t token_id(std::string_view token) const = 0;                        // -1 if absent
  virtual const std::string* token(int32_t id) const = 0;                            // nullptr if absent
  virtual int32_t id_limit() const = 0;                                              // one past the highest id
};

class Normalizer {
 public:
  virtual ~Normalizer() = default;
  virtual void normalize(std::string& text) const = 0;
};
// Null JSON gives nullptr (no normalization). Unsupported types are a moe::Error naming them.
std::unique_ptr<Normalizer> make_normalizer(const nlohmann::json& spec);

class PreTokenizer {
 public:
  virtual ~PreTokenizer() = default;
  virtual void split(std::vector<Piece>& pieces) const = 0;
};
std::unique_ptr<PreTokenizer> make_pre_tokenizer(const nlohmann::json& spec);

class Decoder {
 public:
  virtual ~Decoder() = default;
  // raw: keep bytes that are not valid UTF-8 as they are (streaming needs them) instead of replacing them.
  virtual void decode(std::vector<std::string>& tokens, bool raw) const = 0;
};
std::unique_ptr<Decoder> make_decoder(const nlohmann::json& spec);

enum class SplitBehavior { Removed, Isolated, MergedWithPrevious, MergedWithNext, Contiguous };
SplitBehavior parse_split_behavior(const std::string& name);

// A pattern match over a piece: [start, end) in bytes.
struct Span {
  size_t start, end;
};
// Splits `piece` around `matches` (sorted, non-overlapping) the way HF's NormalizedString::split does, appending the
// non-empty results to `out`.
void split_by_matches(const Piece& piece, const std::vector<Span>& matches, SplitBehavior behavior, bool invert,
                      std::vector<Piece>& out);

}  // namespace moe::tok
