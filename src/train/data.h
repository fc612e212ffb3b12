#pragma once
// The training data: token shards written by `moe tokenize-corpus`, their manifest, and the loader that packs
// documents into fixed-length sequences.
//
// Shard file (<split>-NNNNN.bin): the 8 bytes "MOETOK01", a little-endian uint64 token count N, then N
// little-endian int32 token ids. Every document is its tokens followed by one EOS, so a shard holds whole
// documents and its EOS count is its document count.
// manifest.json: {"format": "moe-tokens-1", "vocab_size": V, "eos_id": E, "tokenizer": "<dir it came from>",
//   "train": [{"file": "train-00000.bin", "tokens": N, "documents": D, "fnv1a64": "<16 hex digits>"}, ...],
//   "val": [...]}; the checksum is FNV-1a 64 over the shard's id bytes (after the 16-byte header).
// SFT data (tokenize-corpus --sft; the manifest has "sft": true): a shard's documents are conversations, which hold
// EOS inside (the chat template ends every assistant turn with it), so each shard has a mask file <shard>.mask:
// "MOEMSK01", uint64 N, then N bytes, bit 0 set where the token carries loss, bit 1 where a document starts; the
// shard entry's "mask_fnv1a64" is FNV-1a 64 over those N bytes.
#include <cstdint>
#include <string>
#include <vector>

#include <nlohmann/json.hpp>

namespace moe::train {

// A whole file's bytes; throws moe::Error "PATH: cannot open".
std::string read_file(const std::string& path);

struct CorpusOptions {
  std::string tokenizer_dir;
  std::string out_dir;
  bool sft = false;  // inputs are JSONL of {"messages": [...]}: chat-template rendered, loss on assistant turns
  double val_fraction = 0.0;  // documents d with floor((d+1) f) > floor(d f) go to validation (evenly spread)
  int64_t shard_tokens = int64_t(1) << 24;  // start a new shard after this many tokens
  int threads = 1;  // tokenizer threads (0: every core); the output is the same bytes for any number
  // Fill-in-the-middle (train/fim.h): each training document marked {"code": true} in a JSONL input is rearranged
  // into PSM form with probability fim_rate, drawn from (fim_seed, document index). Validation stays plain text.
  double fim_rate = 0.0;
  uint64_t fim_seed = 0;
};

struct CorpusStats {
  int64_t documents[2] = {0, 0}, tokens[2] = {0, 0}, shards[2] = {0, 0};  // [train, val]
  int64_t code_documents = 0, fim_documents = 0;  // training documents marked code; those rearranged by FIM
  int threads = 1;       // the pool's size
  double seconds = 0.0;  // reading, tokenizing and writing (the tokenizer's load not included)
};

// Each input file is one document, unless its name ends in .jsonl: then every non-empty line is a JSON object
// whose "text" string is a document (an optional boolean "code" marks source code, for --fim-rate). Errors name the file (and the line). Documents are tokenized on a pool of
// options.threads threads owned by the call, in batches, and written in input order: any thread count gives the
// same bytes and reports the same (first) bad input. Copies tokenizer.json and
// tokenizer_config.json next to the manifest so checkpoints can carry them.
CorpusStats tokenize_corpus(const std::vector<std::string>& files, const CorpusOptions& options);

uint64_t fnv1a64(const void* data, size_t bytes);

struct ShardInfo {
  std::string file;
  int64_t tokens = 0, documents = 0;
  uint64_t checksum = 0;
  uint64_t mask_checksum = 0;  // SFT only
};

struct Manifest {
  std::string dir;
  int64_t vocab_size = 0;
  int32_t eos_id = 0;
  std::vector<ShardInfo> train, val;
  bool sft = false;

  // Reads dir/manifest.json; errors name the manifest and the field.
  static Manifest load(const std::string& dir);
  // Reads one split's shards, checking each against the manifest (magic, size, token count, checksum, document
  // count, ids inside the vocabulary); errors name the shard. Returns the documents, each ending with EOS.
  // SFT data: masks (when given) receives each document's loss mask, read and checked from the mask files.
  std::vector<std::vector<int32_t>> read_split(const std::string& split,
                                               std::vector<std::vector<uint8_t>>* masks = nullptr) const;
};

void write_shard(const std::string& path, const std::vector<int32_t>& ids);

// Packs documents into sequences of `t` tokens: an epoch visits every document once in an order drawn from
// (seed, epoch), concatenating them (EOS-separated, attending across the boundary as the model trains) and
// cutting the stream into sequences; a document that does not fit continues in the next sequence, and the
// stream runs on into the next epoch. The position is (epoch, index in the epoch's order, offset in the
// document): saving it and constructing a loader at it continues the exact same stream.
class PackedLoader {
 public:
  struct Position {
    int64_t epoch = 0, doc = 0, offset = 0;
    friend bool operator==(const Position&, const Position&) = default;
  };
  // shuffle false: the documents in file order every epoch (validation).
  PackedLoader(std::vector<std::vector<int32_t>> docs, uint64_t seed, bool shuffle, Position at);
  PackedLoader(std::vector<std::vector<int32_t>> docs, uint64_t seed, bool shuffle = true)
      : PackedLoader(std::move(docs), seed, shuffle, Position{0, 0, 0}) {}
  // SFT: one loss mask per document (the same sizes), cut and packed along with the tokens.
  void set_masks(std::vector<std::vector<uint8_t>> masks);
  // The next b sequences of t tokens, [b, t] row-major; with masks set, mask receives theirs.
  std::vector<int32_t> next(int64_t b, int64_t t, std::vector<uint8_t>* mask = nullptr);
  const Position& position() const { return pos_; }
  uint64_t seed() const { return seed_; }
  int64_t total_tokens() const { return total_; }

 private:
  void make_order();
  std::vector<std::vector<int32_t>> docs_;
  std::vector<std::vector<uint8_t>> masks_;
  std::vector<int64_t> order_;
  uint64_t seed_;
  bool shuffle_;
  Position pos_;
  int64_t total_ = 0;
};

}  // namespace moe::train
