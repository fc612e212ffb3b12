#include "tokenizer/bpe.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

#include <queue>

#include "core/error.h"
#include "tokenizer/unicode.h"

namespace moe::tok {
namespace {
constexpr size_t kCacheCapacity = 200000;  // words; the cache is emptied when full
constexpr size_t kMaxCachedWordBytes = 256;
uint64_t pair_key(int32_t left, int32_t right) {
  return (static_cast<uint64_t>(static_cast<uint32_t>(left)) << 32) | static_cast<uint32_t>(right);
}
constexpr int64_t kMaxIdGap = int64_t(1) << 20;  // ids may skip at most this many past the vocabulary's size
}  // namespace

Bpe::Bpe(const nlohmann::json& model) {
  const auto& vocab = model.at("vocab");
  if (!vocab.is_object()) fail("tokenizer.json: model.vocab must be an object of token -> id");
  vocab_.reserve(vocab.size());
  int32_t max_id = -1;
  for (const auto& [token, id_json] : vocab.items()) {
    if (!id_json.is_number_integer() || id_json.get<int64_t>() < 0 || id_json.get<int64_t>() > INT32_MAX)
      fail("tokenizer.json: vocab entry '{}' has an invalid id {}", token, id_json.dump());
    const auto id = id_json.get<int32_t>();
    vocab_.emplace(token, id);
    max_id = std::max(max_id, id);
  }
  // Ids index a table, so they must be dense; a stray huge id would allocate gigabytes.
  if (int64_t(max_id) >= int64_t(vocab.size()) + kMaxIdGap)
    fail("tokenizer.json: vocab id {} is far past the vocabulary's {} entries (ids should run 0..{})", max_id,
         vocab.size(), int64_t(vocab.size()) - 1);
  tokens_.resize(max_id + 1);
  present_.resize(max_id + 1);
  for (const auto& [token, id] : vocab_) {
    tokens_[id] = token;
    present_[id] = true;
  }

  const auto string_or_empty = [&](const char* key) {
    return model.contains(key) && model[key].is_string() ? model[key].get<std::string>() : std::string();
  };
  continuing_subword_prefix_ = string_or_empty("continuing_subword_prefix");
  end_of_word_suffix_ = string_or_empty("end_of_word_suffix");
  const auto lookup = [&](const std::string& token, size_t rank) {
    const auto it = vocab_.find(token);
    if (it == vocab_.end())
      fail("tokenizer.json: merge #{} names token '{}' which is not in the vocabulary", rank, token);
    return it->second;
  };
  const auto& merges = model.contains("merges") ? model["merges"] : nlohmann::json::array();
  if (!merges.is_array()) fail("tokenizer.json: model.merges must be an array");
  merges_.reserve(merges.size());
  for (size_t rank = 0; rank < merges.size(); ++rank) {
    const auto& m = merges[rank];
    std::string left, right;
    if (m.is_string()) {
      const auto text = m.get<std::string>();
      const size_t space = text.find(' ');
      if (space == std::string::npos) fail("tokenizer.json: merge #{} '{}' is not two tokens separated by a space", rank, text);
      left = text.substr(0, space), right = text.substr(space + 1);
    } else if (m.is_array() && m.size() == 2 && m[0].is_string() && m[1].is_string()) {
      left = m[0].get<std::string>(), right = m[1].get<std::string>();
    } else {
      fail("tokenizer.json: merge #{} must be \"a b\" or [\"a\", \"b\"], got {}", rank, m.dump());
    }
    const int32_t left_id = lookup(left, rank), right_id = lookup(right, rank);
    // With a continuing-subword prefix the merged token drops the right side's prefix.
    std::string merged = left + (continuing_subword_prefix_.empty() || right.rfind(continuing_subword_prefix_, 0) != 0
                                     ? right
                                     : right.substr(continuing_subword_prefix_.size()));
    merges_.insert_or_assign(pair_key(left_id, right_id), Merge{static_cast<int32_t>(rank), lookup(merged, rank)});
  }

  if (model.contains("unk_token") && model["unk_token"].is_string()) {
    const auto unk = model["unk_token"].get<std::string>();
    const auto it = vocab_.find(unk);
    if (it == vocab_.end()) fail("tokenizer.json: unk_token '{}' is not in the vocabulary", unk);
    unk_id_ = it->second;
  }
  const auto flag = [&](const char* key) { return model.contains(key) && model[key].is_boolean() && model[key].get<bool>(); };
  byte_fallback_ = flag("byte_fallback");
  fuse_unk_ = flag("fuse_unk");
  ignore_merges_ = flag("ignore_merges");
  if (model.contains("dropout") && model["dropout"].is_number() && model["dropout"].get<double>() > 0)
    fail("tokenizer.json: BPE dropout is not supported (encoding must be deterministic)");
}

int32_t Bpe::token_id(std::string_view token) const {
  const auto it = vocab_.find(token);
  return it == vocab_.end() ? -1 : it->second;
}

const std::string* Bpe::token(int32_t id) const {
  if (id < 0 || id >= id_limit() || !present_[id]) return nullptr;
  return &tokens_[id];
}

void Bpe::tokenize(std::string_view word, std::vector<int32_t>& out) const {
  if (word.empty()) return;
  if (ignore_merges_) {
    const auto it = vocab_.find(word);
    if (it != vocab_.end()) {
      out.push_back(it->second);
      return;
    }
  }
  const bool cacheable = word.size() <= kMaxCachedWordBytes;
  if (cacheable) {
    std::unique_lock lock(cache_mutex_, std::try_to_lock);  // a busy cache is skipped, never waited on
    if (lock.owns_lock()) {
      const auto it = cache_.find(word);
      if (it != cache_.end()) {
        out.insert(out.end(), it->second.begin(), it->second.end());
        return;
      }
    }
  }
  const size_t mark = out.size();
  merge_word(word, out);
  if (cacheable) {
    std::unique_lock lock(cache_mutex_, std::try_to_lock);
    if (lock.owns_lock()) {
      if (cache_.size() >= kCacheCapacity) cache_.clear();
      cache_.emplace(std::string(word), std::vector<int32_t>(out.begin() + mark, out.end()));
    }
  }
}

void Bpe::merge_word(std::string_view word, std::vector<int32_t>& out) const {
  // Symbols form a doubly linked list; a merged-away symbol has id -1.
  struct Symbol {
    int32_t id, prev, next;
  };
  std::vector<Symbol> symbols;
  symbols.reserve(word.size());
  const auto add = [&](int32_t id) {
    const auto index = static_cast<int32_t>(symbols.size());
    symbols.push_back({id, index - 1, -1});
    if (index > 0) symbols[index - 1].next = index;
  };
  bool previous_was_unk = false;
  std::string scratch;
  for (size_t pos = 0; pos < word.size();) {
    const auto d = utf8::decode_at(word, pos);
    std::string_view piece = word.substr(pos, d.length);
    const bool first = pos == 0, last = pos + d.length == word.size();
    if ((!first && !continuing_subword_prefix_.empty()) || (last && !end_of_word_suffix_.empty())) {
      scratch.assign(first ? "" : continuing_subword_prefix_);
      scratch.append(piece);
      if (last) scratch += end_of_word_suffix_;
      piece = scratch;
    }
    pos += d.length;
    if (const auto it = vocab_.find(piece); it != vocab_.end()) {
      add(it->second);
      previous_was_unk = false;
      continue;
    }
    if (byte_fallback_) {
      std::vector<int32_t> bytes;
      for (char c : word.substr(pos - d.length, d.length)) {
        const int32_t id = token_id(fmt::format("<0x{:02X}>", static_cast<uint8_t>(c)));
        if (id < 0) break;
        bytes.push_back(id);
      }
      if (bytes.size() == static_cast<size_t>(d.length)) {
        for (int32_t id : bytes) add(id);
        previous_was_unk = false;
        continue;
      }
    }
    if (unk_id_) {
      if (!(fuse_unk_ && previous_was_unk)) add(*unk_id_);
      previous_was_unk = true;
    }
    // No unk token: HF drops the character.
  }

  struct Candidate {
    int32_t rank, pos, new_id;
    bool operator>(const Candidate& o) const { return rank != o.rank ? rank > o.rank : pos > o.pos; }
  };
  std::priority_queue<Candidate, std::vector<Candidate>, std::greater<>> queue;
  const auto consider = [&](int32_t left) {
    const int32_t right = symbols[left].next;
    if (right < 0) return;
    const auto it = merges_.find(pair_key(symbols[left].id, symbols[right].id));
    if (it != merges_.end()) queue.push({it->second.rank, left, it->second.new_id});
  };
  for (int32_t i = 0; i + 1 < static_cast<int32_t>(symbols.size()); ++i) consider(i);
  while (!queue.empty()) {
    const Candidate top = queue.top();
    queue.pop();
    Symbol& left = symbols[top.pos];
    if (left.id < 0 || left.next < 0) continue;
    // Stale entry: one side has changed since it was queued.
    const auto it = merges_.find(pair_key(left.id, symbols[left.next].id));
    if (it == merges_.end() || it->second.new_id != top.new_id) continue;
    Symbol& right = symbols[left.next];
    left.id = top.new_id;
    right.id = -1;
    left.next = right.next;
    if (right.next >= 0) symbols[right.next].prev = top.pos;
    if (left.prev >= 0) consider(left.prev);
    consider(top.pos);
  }
  for (const Symbol& s : symbols)
    if (s.id >= 0) out.push_back(s.id);
}

}  // namespace moe::tok
