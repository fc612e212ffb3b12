#pragma once
// Trains a byte-level BPE tokenizer (`moe train-tokenizer`): the project's own vocabulary for a model it trains.
//
// The trained tokenizer keeps everything of a template tokenizer.json except its model: normalizer, pre-tokenizer
// (which must end in ByteLevel, so pre-tokens are byte-level strings), post-processor, decoder and the template's
// special tokens (DeepSeek-V3's: BOS, EOS, pad, fill-in-the-middle, chat roles, tool calls; its placeholder tokens
// are dropped). Ids: the special tokens first (0, 1, 2, ... in the template's order, so BOS is 0 and EOS is 1 as in
// DeepSeek-V3), then the 256 byte symbols in byte order, then one token per merge.
//
// Training (the standard algorithm of Sennrich et al. as HF tokenizers' BpeTrainer runs it): documents are
// normalised and pre-tokenized, identical pre-tokens counted once with their frequency, each split into its
// byte symbols; then repeatedly the most frequent adjacent pair (over all words, weighted by frequency) becomes a
// new symbol, until the vocabulary has vocab_size tokens or no pair occurs min_frequency times. Equal counts go to
// the pair whose merged string is smaller (then the left part), so the result does not depend on hash order.
// Pair counts are kept incrementally (only the words that contain the merged pair are rescanned) and the best pair
// is taken from a max-heap with lazy deletion.
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <unordered_map>

namespace moe {

struct BpeTrainerOptions {
  int32_t vocab_size = 16384;  // all tokens: special + 256 bytes + merges
  int64_t min_frequency = 2;   // a pair seen fewer times is never merged
};

struct BpeTrainStats {
  int64_t documents = 0, pre_tokens = 0, distinct_words = 0;
  int32_t special_tokens = 0, merges = 0, vocab_size = 0;
};

class BpeTrainer {
 public:
  // template_json: the text of a byte-level tokenizer.json (errors name what is missing or unsupported).
  BpeTrainer(const std::string& template_json, BpeTrainerOptions options);
  ~BpeTrainer();
  BpeTrainer(const BpeTrainer&) = delete;
  BpeTrainer& operator=(const BpeTrainer&) = delete;

  void add_document(std::string_view text);
  // A pre-token already in byte-level characters (what the pre-tokenizer yields), `count` times: for callers that
  // count words themselves, and for tests of the merges alone.
  void add_pre_token(std::string_view byte_level, int64_t count = 1);
  // Runs the merges and returns the trained tokenizer.json text (the counted words are kept: train() may be
  // called again, e.g. with another vocabulary size).
  std::string train();
  const BpeTrainStats& stats() const { return stats_; }

 private:
  struct Pipeline;
  std::unique_ptr<Pipeline> pipeline_;
  BpeTrainerOptions options_;
  std::unordered_map<std::string, int64_t> words_;
  BpeTrainStats stats_;
};

}  // namespace moe
