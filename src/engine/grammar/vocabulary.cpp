#include "engine/grammar/vocabulary.h"

#include <algorithm>

#include "tokenizer/tokenizer.h"

namespace moe::grammar {

namespace {

// Code points of s if it is plain string content (see vocabulary.h), else -1.
int64_t plain_length(const std::string& s) {
  int64_t n = 0;
  for (size_t i = 0; i < s.size();) {
    const auto b = uint8_t(s[i]);
    if (b < 0x20 || b == '"' || b == '\\') return -1;
    int need = 0;
    uint8_t lo = 0x80, hi = 0xBF;
    if (b < 0x80) need = 0;
    else if (b >= 0xC2 && b <= 0xDF) need = 1;
    else if (b == 0xE0) need = 2, lo = 0xA0;
    else if (b == 0xED) need = 2, hi = 0x9F;
    else if (b >= 0xE1 && b <= 0xEF) need = 2;
    else if (b == 0xF0) need = 3, lo = 0x90;
    else if (b >= 0xF1 && b <= 0xF3) need = 3;
    else if (b == 0xF4) need = 3, hi = 0x8F;
    else return -1;
    ++i;
    for (int k = 0; k < need; ++k, ++i) {
      if (i >= s.size()) return -1;
      const auto c = uint8_t(s[i]);
      if (c < lo || c > hi) return -1;
      lo = 0x80;
      hi = 0xBF;
    }
    ++n;
  }
  return n;
}

// Lays out the trie of the tokens ids[lo, hi) (sorted by bytes), all sharing their first `depth` bytes, under
// node `at`; children of a node are contiguous.
void fill(TokenTrie& t, const std::vector<std::string>& bytes, const std::vector<int32_t>& sorted, size_t at,
          size_t lo, size_t hi, size_t depth) {
  size_t i = lo;
  t.nodes[at].ids_begin = uint32_t(t.ids.size());
  while (i < hi && bytes[size_t(sorted[i])].size() == depth) t.ids.push_back(sorted[i++]);
  t.nodes[at].ids_end = uint32_t(t.ids.size());
  std::vector<std::pair<size_t, size_t>> groups;
  while (i < hi) {
    const char c = bytes[size_t(sorted[i])][depth];
    size_t j = i;
    while (j < hi && bytes[size_t(sorted[j])][depth] == c) ++j;
    groups.emplace_back(i, j);
    i = j;
  }
  const size_t first = t.nodes.size();
  t.nodes[at].first_child = uint32_t(first);
  t.nodes[at].children = uint32_t(groups.size());
  for (const auto& [a, b] : groups) {
    TokenTrie::Node n;
    n.byte = uint8_t(bytes[size_t(sorted[a])][depth]);
    t.nodes.push_back(n);
  }
  for (size_t g = 0; g < groups.size(); ++g)
    fill(t, bytes, sorted, first + g, groups[g].first, groups[g].second, depth + 1);
}

TokenTrie make_trie(const std::vector<std::string>& bytes, std::vector<int32_t> ids) {
  std::sort(ids.begin(), ids.end(), [&](int32_t a, int32_t b) { return bytes[size_t(a)] < bytes[size_t(b)]; });
  TokenTrie t;
  t.nodes.emplace_back();
  fill(t, bytes, ids, 0, 0, ids.size(), 0);
  return t;
}

}  // namespace

std::shared_ptr<const Vocabulary> Vocabulary::build(const Tokenizer& tokenizer) {
  const int32_t n = tokenizer.vocab_size();
  std::vector<std::string> bytes(static_cast<size_t>(n));
  std::vector<bool> excluded(static_cast<size_t>(n), false);
  for (int32_t id = 0; id < n; ++id) {
    if (tokenizer.is_added(id)) {
      excluded[size_t(id)] = true;
      continue;
    }
    try {
      const int32_t one[1] = {id};
      bytes[size_t(id)] = tokenizer.decode_bytes(one);
    } catch (const std::exception&) {  // an id that names no token (a gap in the vocabulary)
      excluded[size_t(id)] = true;
    }
  }
  return from_tokens(std::move(bytes), std::move(excluded));
}

std::shared_ptr<const Vocabulary> Vocabulary::from_tokens(std::vector<std::string> bytes, std::vector<bool> excluded) {
  auto v = std::make_shared<Vocabulary>();
  excluded.resize(bytes.size(), true);
  std::vector<int32_t> all, non_plain;
  v->plain_bits_.assign((bytes.size() + 63) / 64, 0);
  for (size_t id = 0; id < bytes.size(); ++id) {
    if (bytes[id].empty()) excluded[id] = true;
    if (excluded[id]) continue;
    all.push_back(int32_t(id));
    const int64_t len = plain_length(bytes[id]);
    if (len < 0) {
      non_plain.push_back(int32_t(id));
    } else {
      v->plain_.emplace_back(uint32_t(len), int32_t(id));
      v->plain_bits_[id / 64] |= uint64_t(1) << (id % 64);
    }
  }
  std::sort(v->plain_.begin(), v->plain_.end());
  v->all_ = make_trie(bytes, std::move(all));
  v->non_plain_ = make_trie(bytes, std::move(non_plain));
  v->bytes_ = std::move(bytes);
  v->excluded_ = std::move(excluded);
  return v;
}

}  // namespace moe::grammar
