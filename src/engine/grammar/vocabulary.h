#pragma once
// The tokenizer's vocabulary as byte strings, arranged for computing token masks (constraint.h): a trie over the
// bytes of every ordinary token (walked with the matcher, pruning a branch at the first byte no thread takes),
// and the "plain" tokens (text that inside a JSON string only adds characters: no quote, backslash or control
// byte, whole UTF-8), which a string position allows by their length alone without walking them.
// Added tokens (special or not: DeepSeek's tool-call and FIM markers are added tokens) and tokens that decode to
// no bytes are never part of the tries: text cannot produce them; they are allowed only as token pieces.
// Built once per tokenizer (~129k tokens for DeepSeek-V3) and shared, immutable, between requests.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

namespace moe {
class Tokenizer;
}

namespace moe::grammar {

struct TokenTrie {
  struct Node {
    uint32_t first_child = 0, children = 0;  // children are nodes[first_child, first_child + children)
    uint32_t ids_begin = 0, ids_end = 0;     // ids[ids_begin, ids_end): the tokens whose bytes end here
    uint8_t byte = 0;
  };
  std::vector<Node> nodes;  // nodes[0]: the root (no byte)
  std::vector<int32_t> ids;
};

class Vocabulary {
 public:
  static std::shared_ptr<const Vocabulary> build(const Tokenizer& tokenizer);
  // bytes[id] of each token; excluded[id]: never produced by text (added tokens, empty ones).
  static std::shared_ptr<const Vocabulary> from_tokens(std::vector<std::string> bytes, std::vector<bool> excluded);

  int32_t size() const { return int32_t(bytes_.size()); }
  const std::string& bytes(int32_t id) const { return bytes_[size_t(id)]; }
  bool excluded(int32_t id) const { return excluded_[size_t(id)]; }

  const TokenTrie& all() const { return all_; }          // every ordinary token
  const TokenTrie& non_plain() const { return non_plain_; }  // the ordinary tokens that are not plain
  // Plain tokens by code point count, ascending; and all of them as a bit set (64 ids a word).
  const std::vector<std::pair<uint32_t, int32_t>>& plain_by_length() const { return plain_; }
  const std::vector<uint64_t>& plain_bits() const { return plain_bits_; }

 private:
  std::vector<std::string> bytes_;
  std::vector<bool> excluded_;
  TokenTrie all_, non_plain_;
  std::vector<std::pair<uint32_t, int32_t>> plain_;
  std::vector<uint64_t> plain_bits_;
};

}  // namespace moe::grammar
