#include "tokenizer/bpe_trainer.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <queue>
#include <vector>

#include "core/error.h"
#include "tokenizer/components.h"
#include "tokenizer/unicode.h"

namespace moe {

using nlohmann::json;

struct BpeTrainer::Pipeline {
  json spec;  // the template tokenizer.json
  std::unique_ptr<tok::Normalizer> normalizer;
  std::unique_ptr<tok::PreTokenizer> pre_tokenizer;
  json specials = json::array();  // the added tokens kept, in order
};

namespace {

// The byte-level pre-tokenizer's last step must be ByteLevel: then every pre-token is a string over the
// 256-character byte alphabet.
bool ends_in_byte_level(const json& pre) {
  if (!pre.is_object()) return false;
  const std::string type = pre.value("type", "");
  if (type == "ByteLevel") return true;
  if (type == "Sequence" && pre.contains("pretokenizers") && pre["pretokenizers"].is_array() &&
      !pre["pretokenizers"].empty())
    return ends_in_byte_level(pre["pretokenizers"].back());
  return false;
}

uint64_t pair_key(int32_t a, int32_t b) { return (uint64_t(uint32_t(a)) << 32) | uint32_t(b); }
int32_t left_of(uint64_t k) { return int32_t(k >> 32); }
int32_t right_of(uint64_t k) { return int32_t(k & 0xffffffffu); }

struct Word {
  std::vector<int32_t> syms;
  int64_t count;
};

}  // namespace

BpeTrainer::BpeTrainer(const std::string& template_json, BpeTrainerOptions options)
    : pipeline_(std::make_unique<Pipeline>()), options_(options) {
  Pipeline& p = *pipeline_;
  try {
    p.spec = json::parse(template_json);
  } catch (const json::exception& e) {
    fail("train-tokenizer: the template tokenizer.json is not valid JSON: {}", e.what());
  }
  MOE_CHECK(p.spec.is_object() && p.spec.contains("model") && p.spec["model"].is_object() &&
                p.spec["model"].value("type", "") == "BPE",
            "train-tokenizer: the template tokenizer.json needs a BPE model");
  MOE_CHECK(ends_in_byte_level(p.spec.value("pre_tokenizer", json())),
            "train-tokenizer: the template's pre_tokenizer must end in ByteLevel (a byte-level BPE)");
  MOE_CHECK(p.spec.value("decoder", json()).is_object() && p.spec["decoder"].value("type", "") == "ByteLevel",
            "train-tokenizer: the template's decoder must be ByteLevel");
  p.normalizer = tok::make_normalizer(p.spec.value("normalizer", json()));
  p.pre_tokenizer = tok::make_pre_tokenizer(p.spec["pre_tokenizer"]);
  // Special tokens: the template's, without DeepSeek's unused placeholders, plus the reasoning markers.
  std::vector<std::string> seen;
  if (p.spec.contains("added_tokens") && p.spec["added_tokens"].is_array())
    for (json t : p.spec["added_tokens"]) {
      MOE_CHECK(t.is_object() && t.contains("content") && t["content"].is_string(),
                "train-tokenizer: an added token of the template has no content");
      const std::string c = t["content"].get<std::string>();
      if (c.find("place\xe2\x96\x81holder") != std::string::npos) continue;  // "place▁holder"
      seen.push_back(c);
      p.specials.push_back(t);
    }
  for (const char* think : {"<think>", "</think>"})
    if (std::find(seen.begin(), seen.end(), think) == seen.end())
      p.specials.push_back({{"content", think}, {"single_word", false}, {"lstrip", false}, {"rstrip", false},
                            {"normalized", false}, {"special", false}});
  stats_.special_tokens = int32_t(p.specials.size());
  MOE_CHECK(options_.vocab_size >= stats_.special_tokens + 256,
            "train-tokenizer: --vocab-size {} is below the {} special tokens plus 256 byte tokens", options_.vocab_size,
            stats_.special_tokens);
  MOE_CHECK(options_.min_frequency >= 1, "train-tokenizer: --min-frequency must be at least 1");
}

BpeTrainer::~BpeTrainer() = default;

void BpeTrainer::add_document(std::string_view text) {
  std::string s(text);
  if (pipeline_->normalizer) pipeline_->normalizer->normalize(s);
  std::vector<tok::Piece> pieces;
  pieces.push_back({std::move(s), true});
  pipeline_->pre_tokenizer->split(pieces);
  for (tok::Piece& p : pieces) ++words_[p.text];
  stats_.documents++;
  stats_.pre_tokens += int64_t(pieces.size());
}

void BpeTrainer::add_pre_token(std::string_view byte_level, int64_t count) {
  MOE_CHECK(count > 0, "train-tokenizer: a pre-token count must be positive");
  words_[std::string(byte_level)] += count;
  stats_.pre_tokens += count;
}

std::string BpeTrainer::train() {
  const int32_t S = stats_.special_tokens;
  // Symbols: 0..255 the bytes; then one per merge. Token id = S + symbol.
  std::vector<std::string> sym;
  for (int b = 0; b < 256; ++b) sym.push_back(utf8::byte_to_utf8(uint8_t(b)));
  std::vector<Word> words;
  words.reserve(words_.size());
  for (const auto& [text, count] : words_) {
    Word w{{}, count};
    for (size_t i = 0; i < text.size();) {
      const utf8::Decoded d = utf8::decode_at(text, i);
      const int b = d.code_point == utf8::kInvalidCodePoint ? -1 : utf8::char_to_byte(d.code_point);
      MOE_CHECK(b >= 0, "train-tokenizer: a pre-token holds a character outside the byte-level alphabet");
      w.syms.push_back(b);
      i += size_t(d.length);
    }
    words.push_back(std::move(w));
  }
  // Process words in a fixed order (the map's order is not), so that pair_words lists are deterministic.
  std::sort(words.begin(), words.end(), [&](const Word& a, const Word& b) { return a.syms < b.syms; });
  stats_.distinct_words = int64_t(words.size());

  std::unordered_map<uint64_t, int64_t> counts;
  std::unordered_map<uint64_t, std::vector<int32_t>> where;  // words that held the pair (may be stale)
  for (int32_t wi = 0; wi < int32_t(words.size()); ++wi) {
    const Word& w = words[size_t(wi)];
    for (size_t i = 0; i + 1 < w.syms.size(); ++i) {
      const uint64_t k = pair_key(w.syms[i], w.syms[i + 1]);
      counts[k] += w.count;
      auto& list = where[k];
      if (list.empty() || list.back() != wi) list.push_back(wi);
    }
  }
  struct Entry {
    int64_t count;
    uint64_t key;
  };
  // Max-heap: higher count first; equal counts: smaller merged string, then smaller left part.
  auto worse = [&](const Entry& x, const Entry& y) {
    if (x.count != y.count) return x.count < y.count;
    const std::string mx = sym[size_t(left_of(x.key))] + sym[size_t(right_of(x.key))];
    const std::string my = sym[size_t(left_of(y.key))] + sym[size_t(right_of(y.key))];
    if (mx != my) return mx > my;
    return sym[size_t(left_of(x.key))] > sym[size_t(left_of(y.key))];
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(worse)> heap(worse);
  for (const auto& [k, c] : counts) heap.push({c, k});

  std::vector<std::pair<int32_t, int32_t>> merges;
  std::vector<int32_t> stamp(words.size(), -1);
  const int32_t max_merges = options_.vocab_size - S - 256;
  while (int32_t(merges.size()) < max_merges && !heap.empty()) {
    const Entry top = heap.top();
    heap.pop();
    const auto it = counts.find(top.key);
    if (it == counts.end() || it->second != top.count) continue;  // stale
    if (top.count < options_.min_frequency) break;
    const int32_t a = left_of(top.key), b = right_of(top.key), n = int32_t(sym.size());
    sym.push_back(sym[size_t(a)] + sym[size_t(b)]);
    merges.emplace_back(a, b);
    std::unordered_map<uint64_t, int64_t> delta;
    std::vector<int32_t> list = std::move(where[top.key]);
    where.erase(top.key);
    for (int32_t wi : list) {
      if (stamp[size_t(wi)] == n) continue;
      stamp[size_t(wi)] = n;
      Word& w = words[size_t(wi)];
      std::vector<int32_t> merged;
      merged.reserve(w.syms.size());
      bool changed = false;
      for (size_t i = 0; i < w.syms.size(); ++i) {
        if (i + 1 < w.syms.size() && w.syms[i] == a && w.syms[i + 1] == b) {
          merged.push_back(n);
          ++i;
          changed = true;
        } else {
          merged.push_back(w.syms[i]);
        }
      }
      if (!changed) continue;
      for (size_t i = 0; i + 1 < w.syms.size(); ++i) delta[pair_key(w.syms[i], w.syms[i + 1])] -= w.count;
      for (size_t i = 0; i + 1 < merged.size(); ++i) {
        const uint64_t k = pair_key(merged[i], merged[i + 1]);
        delta[k] += w.count;
        if (left_of(k) == n || right_of(k) == n) {
          auto& l = where[k];
          if (l.empty() || l.back() != wi) l.push_back(wi);
        }
      }
      w.syms = std::move(merged);
    }
    for (const auto& [k, d] : delta) {
      if (d == 0) continue;
      int64_t& c = counts[k];
      c += d;
      if (c <= 0) {
        counts.erase(k);
        where.erase(k);
      } else {
        heap.push({c, k});
      }
    }
  }
  stats_.merges = int32_t(merges.size());
  stats_.vocab_size = S + int32_t(sym.size());

  // tokenizer.json: the template with the trained model and the kept special tokens renumbered 0..S-1.
  json out = pipeline_->spec;
  json vocab = json::object();
  json added = json::array();
  for (int32_t i = 0; i < S; ++i) {
    json t = pipeline_->specials[size_t(i)];
    t["id"] = i;
    vocab[t["content"].get<std::string>()] = i;
    added.push_back(t);
  }
  for (size_t s = 0; s < sym.size(); ++s) {
    MOE_CHECK(!vocab.contains(sym[s]), "train-tokenizer: the learned token '{}' equals a special token", sym[s]);
    vocab[sym[s]] = S + int32_t(s);
  }
  json merge_list = json::array();
  for (const auto& [l, r] : merges) merge_list.push_back(sym[size_t(l)] + " " + sym[size_t(r)]);
  out["added_tokens"] = added;
  out["model"] = {{"type", "BPE"},           {"dropout", nullptr},        {"unk_token", nullptr},
                  {"continuing_subword_prefix", nullptr}, {"end_of_word_suffix", nullptr}, {"fuse_unk", false},
                  {"byte_fallback", false},  {"ignore_merges", false},    {"vocab", vocab},
                  {"merges", merge_list}};
  return out.dump(1);
}

}  // namespace moe
