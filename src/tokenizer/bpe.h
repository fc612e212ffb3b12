#pragma once
// The BPE model of tokenizer.json: vocab, ranked merges, and the per-word merge loop (with a word cache).
#include <nlohmann/json_fwd.hpp>

#include <cstdint>
#include <mutex>
#include <optional>
#include <string>
#include <string_view>
#include <unordered_map>
#include <vector>

#include "tokenizer/components.h"

namespace moe::tok {

struct StringHash {
  using is_transparent = void;
  size_t operator()(std::string_view s) const { return std::hash<std::string_view>{}(s); }
};
template <typename V>
using StringMap = std::unordered_map<std::string, V, StringHash, std::equal_to<>>;

class Bpe : public Model {
 public:
  explicit Bpe(const nlohmann::json& model);  // throws moe::Error on a bad vocab or merge list

  // Appends the ids of one pre-tokenized word.
  void tokenize(std::string_view word, std::vector<int32_t>& out) const override;

  int32_t token_id(std::string_view token) const override;  // -1 if absent
  const std::string* token(int32_t id) const override;      // nullptr if absent
  int32_t id_limit() const override { return static_cast<int32_t>(tokens_.size()); }  // one past the highest id

 private:
  void merge_word(std::string_view word, std::vector<int32_t>& out) const;

  StringMap<int32_t> vocab_;
  std::vector<std::string> tokens_;  // by id; empty strings with present_ false for holes
  std::vector<bool> present_;
  struct Merge {
    int32_t rank, new_id;
  };
  std::unordered_map<uint64_t, Merge> merges_;  // key: left id << 32 | right id
  std::optional<int32_t> unk_id_;
  std::string continuing_subword_prefix_, end_of_word_suffix_;
  bool byte_fallback_ = false, fuse_unk_ = false, ignore_merges_ = false;

  mutable std::mutex cache_mutex_;
  mutable StringMap<std::vector<int32_t>> cache_;
};

}  // namespace moe::tok
