#pragma once
// Added (and special) tokens: matched in the text before pre-tokenization, longest match first, with HF's
// lstrip / rstrip / single_word rules. Tokens marked normalized=false are matched against the raw input; the others
// against the normalized text (their own content normalized the same way).
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

namespace moe::tok {

class Normalizer;

struct AddedToken {
  int32_t id = -1;
  std::string content;
  bool single_word = false, lstrip = false, rstrip = false, normalized = true, special = false;
};

class AddedVocabulary {
 public:
  AddedVocabulary() = default;
  AddedVocabulary(const nlohmann::json& added_tokens, const Normalizer* normalizer);

  struct Segment {
    size_t start, end;
    int32_t id;  // -1: ordinary text
  };
  // Splits `text` into ordinary text and added tokens of the given kind (see above), covering all of it.
  std::vector<Segment> split(std::string_view text, bool normalized_kind) const;

  const AddedToken* by_id(int32_t id) const;
  const AddedToken* by_content(std::string_view content) const;
  const std::vector<AddedToken>& tokens() const { return tokens_; }

 private:
  // Byte trie over token patterns; terminal nodes name the token index.
  struct Trie {
    struct Node {
      std::vector<std::pair<uint8_t, int32_t>> children;
      int32_t token = -1;
    };
    std::vector<Node> nodes{1};
    bool first_byte[256] = {};
    void insert(std::string_view pattern, int32_t token);
    // Longest pattern starting at text[pos]: (token index, length) or (-1, 0).
    std::pair<int32_t, size_t> longest_at(std::string_view text, size_t pos) const;
  };
  std::vector<AddedToken> tokens_;
  std::unordered_map<int32_t, size_t> by_id_;
  std::unordered_map<std::string, size_t> by_content_;  // the first token with that content
  Trie raw_, normalized_;
};

}  // namespace moe::tok
