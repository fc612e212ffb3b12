#include "tokenizer/added_tokens.h"

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/unicode.h"

namespace moe::tok {

void AddedVocabulary::Trie::insert(std::string_view pattern, int32_t token) {
  if (pattern.empty()) return;
  first_byte[static_cast<uint8_t>(pattern[0])] = true;
  int32_t node = 0;
  for (char c : pattern) {
    const auto byte = static_cast<uint8_t>(c);
    int32_t next = -1;
    for (const auto& [b, child] : nodes[node].children)
      if (b == byte) next = child;
    if (next < 0) {
      next = static_cast<int32_t>(nodes.size());
      nodes[node].children.push_back({byte, next});
      nodes.emplace_back();
    }
    node = next;
  }
  if (nodes[node].token < 0) nodes[node].token = token;  // first definition of a duplicate wins
}

std::pair<int32_t, size_t> AddedVocabulary::Trie::longest_at(std::string_view text, size_t pos) const {
  std::pair<int32_t, size_t> best{-1, 0};
  int32_t node = 0;
  for (size_t i = pos; i < text.size(); ++i) {
    const auto byte = static_cast<uint8_t>(text[i]);
    int32_t next = -1;
    for (const auto& [b, child] : nodes[node].children)
      if (b == byte) next = child;
    if (next < 0) break;
    node = next;
    if (nodes[node].token >= 0) best = {nodes[node].token, i + 1 - pos};
  }
  return best;
}

AddedVocabulary::AddedVocabulary(const nlohmann::json& added_tokens, const Normalizer* normalizer) {
  if (added_tokens.is_null()) return;
  if (!added_tokens.is_array()) fail("tokenizer.json: added_tokens must be an array");
  for (const auto& t : added_tokens) {
    AddedToken token;
    token.id = t.at("id").get<int32_t>();
    token.content = t.at("content").get<std::string>();
    token.single_word = t.value("single_word", false);
    token.lstrip = t.value("lstrip", false);
    token.rstrip = t.value("rstrip", false);
    token.normalized = t.value("normalized", true);
    token.special = t.value("special", false);
    if (token.id < 0) fail("tokenizer.json: added token '{}' has a negative id", token.content);
    by_id_[token.id] = tokens_.size();
    by_content_.emplace(token.content, tokens_.size());
    tokens_.push_back(std::move(token));
  }
  for (size_t i = 0; i < tokens_.size(); ++i) {
    const AddedToken& token = tokens_[i];
    if (!token.normalized) {
      raw_.insert(token.content, static_cast<int32_t>(i));
    } else {
      std::string pattern = token.content;
      if (normalizer) normalizer->normalize(pattern);
      normalized_.insert(pattern, static_cast<int32_t>(i));
    }
  }
}

const AddedToken* AddedVocabulary::by_id(int32_t id) const {
  const auto it = by_id_.find(id);
  return it == by_id_.end() ? nullptr : &tokens_[it->second];
}

const AddedToken* AddedVocabulary::by_content(std::string_view content) const {
  const auto it = by_content_.find(std::string(content));
  return it == by_content_.end() ? nullptr : &tokens_[it->second];
}

namespace {
bool ends_with_word_char(std::string_view text, size_t end) {
  return end > 0 && utf8::is_word_char(utf8::decode_at(text, utf8::previous_start(text, end)).code_point);
}
bool starts_with_word_char(std::string_view text, size_t start) {
  return start < text.size() && utf8::is_word_char(utf8::decode_at(text, start).code_point);
}
}  // namespace

std::vector<AddedVocabulary::Segment> AddedVocabulary::split(std::string_view text, bool normalized_kind) const {
  const Trie& trie = normalized_kind ? normalized_ : raw_;
  std::vector<Segment> segments;
  if (trie.nodes.size() == 1) {
    if (!text.empty()) segments.push_back({0, text.size(), -1});
    return segments;
  }
  size_t consumed = 0;  // end of the previous token (after any rstrip)
  size_t pos = 0;
  while (pos < text.size()) {
    if (!trie.first_byte[static_cast<uint8_t>(text[pos])]) {
      ++pos;
      continue;
    }
    const auto [index, length] = trie.longest_at(text, pos);
    if (index < 0) {
      ++pos;
      continue;
    }
    const AddedToken& token = tokens_[index];
    size_t start = pos, stop = pos + length;
    if (token.single_word && (ends_with_word_char(text, start) || starts_with_word_char(text, stop))) {
      // Not a whole word here: HF's matcher moves past this match (leftmost-longest, non-overlapping).
      pos = stop;
      continue;
    }
    if (token.lstrip) {
      while (start > consumed) {
        const size_t prev = utf8::previous_start(text, start);
        if (!utf8::is_whitespace(utf8::decode_at(text, prev).code_point)) break;
        start = prev;
      }
    }
    if (token.rstrip) {
      while (stop < text.size()) {
        const auto d = utf8::decode_at(text, stop);
        if (!utf8::is_whitespace(d.code_point)) break;
        stop += d.length;
      }
    }
    if (consumed < start) segments.push_back({consumed, start, -1});
    segments.push_back({start, stop, token.id});
    consumed = pos = stop;
  }
  if (consumed < text.size()) segments.push_back({consumed, text.size(), -1});
  return segments;
}

}  // namespace moe::tok
