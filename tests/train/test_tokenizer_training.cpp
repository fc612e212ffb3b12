// `moe train-tokenizer` (tokenizer/bpe_trainer.h, train/tokenizer_training.h): the incremental BPE trainer
// against a naive reference (every pair recounted from scratch each round, the same tie rule) on seeded word
// counts; the written tokenizer loads, keeps DeepSeek's special tokens (BOS 0, EOS 1, FIM, roles, <think>),
// round-trips text exactly (seen, unseen, invalid UTF-8), compresses its corpus, and is deterministic; bad input
// is refused with errors that name it.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>
#include <random>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "tokenizer/bpe_trainer.h"
#include "tokenizer/tokenizer.h"
#include "tokenizer/unicode.h"
#include "train/data.h"
#include "train/tokenizer_training.h"

namespace moe {
namespace {

const std::string kTemplateDir = "models/deepseek-v3-tokenizer";
constexpr int kSpecials = 20;  // DeepSeek-V3's added tokens without the placeholders (18) + <think>, </think>

std::string template_json() { return train::read_file(kTemplateDir + "/tokenizer.json"); }

// Seeded documents over a small word list with punctuation, digits, newlines and non-ASCII text.
std::vector<std::string> corpus(int docs, uint64_t seed) {
  const std::vector<std::string> words = {"the",     "model",     "expert", "router", "token", "latent", "attention",
                                          "cache",   "weight",    "train",  "loss",   "of",    "and",    "a",
                                          "\xc3\xbc" "berall", "\xe6\x97\xa5\xe6\x9c\xac", "42", "2026", "x_1", "(y)"};
  std::mt19937_64 rng(seed);
  std::vector<std::string> out;
  for (int d = 0; d < docs; ++d) {
    std::string s;
    const int n = 5 + int(rng() % 30);
    for (int i = 0; i < n; ++i) {
      s += words[rng() % words.size()];
      s += (rng() % 9 == 0) ? ".\n" : (rng() % 7 == 0) ? ", " : " ";
    }
    out.push_back(s);
  }
  return out;
}

// Seeded byte-level words: strings over a few byte symbols with Zipf-like counts (many ties among small counts).
std::map<std::string, int64_t> random_words(uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::map<std::string, int64_t> out;
  const std::string alphabet = "abcdeg";
  for (int i = 0; i < 400; ++i) {
    std::string w = utf8::byte_to_utf8(' ');  // the byte-level space marker, as most pre-tokens begin
    const int len = 1 + int(rng() % 8);
    for (int k = 0; k < len; ++k) w += alphabet[rng() % alphabet.size()];
    out[w] += 1 + int64_t(200 / (1 + i % 50));
  }
  return out;
}

// The reference merges: recount every adjacent pair each round, take the highest count; ties: the smaller merged
// string, then the smaller left part.
std::vector<std::string> naive_merges(const std::map<std::string, int64_t>& words, int rounds, int64_t min_freq) {
  std::vector<std::pair<std::vector<std::string>, int64_t>> ws;
  for (const auto& [w, c] : words) {
    std::vector<std::string> syms;
    for (size_t i = 0; i < w.size();) {
      const utf8::Decoded d = utf8::decode_at(w, i);
      syms.push_back(w.substr(i, size_t(d.length)));
      i += size_t(d.length);
    }
    ws.emplace_back(syms, c);
  }
  std::vector<std::string> merges;
  for (int r = 0; r < rounds; ++r) {
    std::map<std::pair<std::string, std::string>, int64_t> counts;
    for (const auto& [syms, c] : ws)
      for (size_t i = 0; i + 1 < syms.size(); ++i) counts[{syms[i], syms[i + 1]}] += c;
    std::pair<std::string, std::string> best;
    int64_t best_count = 0;
    for (const auto& [p, c] : counts) {
      const std::string m = p.first + p.second, bm = best.first + best.second;
      if (c > best_count || (c == best_count && (m < bm || (m == bm && p.first < best.first)))) {
        best = p;
        best_count = c;
      }
    }
    if (best_count < min_freq || best_count == 0) break;
    merges.push_back(best.first + " " + best.second);
    for (auto& [syms, c] : ws) {
      std::vector<std::string> m;
      for (size_t i = 0; i < syms.size(); ++i) {
        if (i + 1 < syms.size() && syms[i] == best.first && syms[i + 1] == best.second) {
          m.push_back(best.first + best.second);
          ++i;
        } else {
          m.push_back(syms[i]);
        }
      }
      syms = std::move(m);
    }
  }
  return merges;
}

TEST(TokenizerTraining, MergesMatchTheNaiveReference) {
  for (uint64_t seed : {1u, 2u, 3u}) {
    const auto words = random_words(seed);
    for (int64_t min_freq : {1, 40}) {
      BpeTrainerOptions o;
      o.vocab_size = kSpecials + 256 + 120;
      o.min_frequency = min_freq;
      BpeTrainer trainer(template_json(), o);
      for (const auto& [w, c] : words) trainer.add_pre_token(w, c);
      const nlohmann::json out = nlohmann::json::parse(trainer.train());
      const auto got = out["model"]["merges"].get<std::vector<std::string>>();
      const auto want = naive_merges(words, 120, min_freq);
      EXPECT_EQ(got, want) << "seed " << seed << " min_frequency " << min_freq;
      EXPECT_EQ(trainer.stats().merges, int32_t(want.size()));
    }
  }
}

TEST(TokenizerTraining, WritesALoadableDeepSeekStyleTokenizer) {
  const auto docs = corpus(400, 11);
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "moe-test-train-tokenizer";
  std::filesystem::remove_all(dir);
  std::filesystem::create_directories(dir / "out");
  {
    std::ofstream jsonl(dir / "docs.jsonl");
    for (size_t i = 0; i + 1 < docs.size(); ++i) jsonl << nlohmann::json{{"text", docs[i]}}.dump() << "\n";
    std::ofstream(dir / "last.txt") << docs.back();
  }
  train::TokenizerTrainingOptions o;
  o.template_dir = kTemplateDir;
  o.out_dir = (dir / "out").string();
  o.bpe.vocab_size = 600;
  const BpeTrainStats st = train::train_tokenizer({(dir / "docs.jsonl").string(), (dir / "last.txt").string()}, o);
  EXPECT_EQ(st.documents, 400);
  EXPECT_EQ(st.special_tokens, kSpecials);
  // The corpus has only 20 distinct words: the merges run out (no pair left twice) before 600 tokens.
  EXPECT_EQ(st.vocab_size, kSpecials + 256 + st.merges);
  EXPECT_LE(st.vocab_size, 600);
  EXPECT_GT(st.merges, 50);

  const Tokenizer tok = Tokenizer::load(o.out_dir);
  EXPECT_EQ(tok.vocab_size(), st.vocab_size);
  EXPECT_EQ(tok.token_id("<\xef\xbd\x9c" "begin\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"), 0);
  EXPECT_EQ(tok.token_id("<\xef\xbd\x9c" "end\xe2\x96\x81of\xe2\x96\x81sentence\xef\xbd\x9c>"), 1);
  EXPECT_EQ(tok.bos_id(), 0);
  EXPECT_EQ(tok.eos_id(), 1);
  for (const char* t : {"<\xef\xbd\x9c" "fim\xe2\x96\x81hole\xef\xbd\x9c>", "<\xef\xbd\x9c" "User\xef\xbd\x9c>",
                        "<think>", "</think>"})
    EXPECT_GE(tok.token_id(t), 2) << t;
  EXPECT_TRUE(tok.has_chat_template());
  int64_t bytes = 0, tokens = 0;
  for (const auto& d : docs) {
    const auto ids = tok.encode(d);
    EXPECT_EQ(tok.decode(ids), d);
    bytes += int64_t(d.size());
    tokens += int64_t(ids.size());
  }
  std::printf("trained vocabulary 600: %lld bytes -> %lld tokens (%.2f bytes/token)\n", (long long)bytes,
              (long long)tokens, double(bytes) / double(tokens));
  EXPECT_GT(double(bytes) / double(tokens), 2.5);  // common words become single tokens
  EXPECT_EQ(tok.encode(" attention").size(), 1u);
  const std::vector<std::string> unseen_texts = {"Zebra quux \xf0\x9f\x98\x80 \t\t 12345", "bad \xff\xfe bytes"};
  for (const std::string& unseen : unseen_texts)
    EXPECT_EQ(tok.decode_bytes(tok.encode(unseen)), unseen);
  const std::string special = "<\xef\xbd\x9c" "User\xef\xbd\x9c>the model";
  EXPECT_EQ(tok.encode(special).front(), tok.token_id("<\xef\xbd\x9c" "User\xef\xbd\x9c>"));

  const nlohmann::json config = nlohmann::json::parse(train::read_file(o.out_dir + "/tokenizer_config.json"));
  EXPECT_EQ(config["tokenizer_class"], "PreTrainedTokenizerFast");
  EXPECT_FALSE(config.contains("added_tokens_decoder"));

  // Deterministic: the same input gives the same bytes.
  const std::string first = train::read_file(o.out_dir + "/tokenizer.json");
  train::train_tokenizer({(dir / "docs.jsonl").string(), (dir / "last.txt").string()}, o);
  EXPECT_EQ(train::read_file(o.out_dir + "/tokenizer.json"), first);
  std::filesystem::remove_all(dir);
}

std::string error_of(const std::function<void()>& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

TEST(TokenizerTraining, BadInputIsRefusedByName) {
  BpeTrainerOptions small;
  small.vocab_size = 100;
  EXPECT_NE(error_of([&] { BpeTrainer t(template_json(), small); }).find("--vocab-size 100"), std::string::npos);
  EXPECT_NE(error_of([] { BpeTrainer t("{not json", {}); }).find("not valid JSON"), std::string::npos);
  nlohmann::json meta = nlohmann::json::parse(template_json());
  meta["pre_tokenizer"] = {{"type", "Metaspace"}, {"replacement", "\xe2\x96\x81"}, {"prepend_scheme", "always"},
                           {"split", true}};
  EXPECT_NE(error_of([&] { BpeTrainer t(meta.dump(), {}); }).find("must end in ByteLevel"), std::string::npos);

  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "moe-test-train-tokenizer-bad";
  std::filesystem::create_directories(dir);
  std::ofstream(dir / "bad.jsonl") << "{\"text\": \"fine\"}\n{\"txt\": 3}\n";
  train::TokenizerTrainingOptions o;
  o.template_dir = kTemplateDir;
  o.out_dir = (dir / "out").string();
  o.bpe.vocab_size = 400;
  const std::string e = error_of([&] { train::train_tokenizer({(dir / "bad.jsonl").string()}, o); });
  EXPECT_NE(e.find("bad.jsonl:2"), std::string::npos) << e;
  EXPECT_NE(error_of([&] { train::train_tokenizer({(dir / "missing.txt").string()}, o); }).find("missing.txt"),
            std::string::npos);
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe
