// Fill-in-the-middle (train/fim.h) and tokenize-corpus --fim-rate: the PSM layout on a known document, every token
// of the original exactly once, the rate over many documents, determinism, code-only and training-only, errors.
#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"
#include "train/fim.h"

namespace fs = std::filesystem;

namespace moe::train {
namespace {

const FimTokens kT{9001, 9002, 9003};  // begin, hole, end: ids no document below uses

TEST(Fim, PsmLayoutOnAKnownDocument) {
  const std::vector<int32_t> doc = {10, 11, 12, 13, 14, 15, 16};
  FimDraw d;
  d.apply = true;
  d.i = 2;
  d.j = 5;
  // prefix [10 11], middle [12 13 14], suffix [15 16]
  EXPECT_EQ(fim_apply(doc, d, kT), (std::vector<int32_t>{9001, 10, 11, 9002, 15, 16, 9003, 12, 13, 14}));
  d.i = d.j = 0;  // empty prefix and middle
  EXPECT_EQ(fim_apply(doc, d, kT), (std::vector<int32_t>{9001, 9002, 10, 11, 12, 13, 14, 15, 16, 9003}));
  d.i = 0;
  d.j = 7;  // the whole document is the middle
  EXPECT_EQ(fim_apply(doc, d, kT), (std::vector<int32_t>{9001, 9002, 9003, 10, 11, 12, 13, 14, 15, 16}));
  d.j = 8;
  EXPECT_THROW(fim_apply(doc, d, kT), Error);
}

TEST(Fim, EveryTokenExactlyOnceAndTheRateHolds) {
  // 4000 documents of distinct ids: the output is the input's multiset plus the three markers, the three runs
  // are contiguous pieces of the original, and the fraction rearranged is the rate within 4 binomial sigmas.
  const double rate = 0.5;
  const int n_docs = 4000;
  int applied = 0;
  std::map<int64_t, int> cut_hist;
  for (int doc = 0; doc < n_docs; ++doc) {
    const int64_t n = 1 + doc % 37;
    std::vector<int32_t> ids(static_cast<size_t>(n));
    for (int64_t k = 0; k < n; ++k) ids[size_t(k)] = int32_t(100 + k);
    const FimDraw d = fim_draw(7, doc, n, rate);
    if (!d.apply) continue;
    ++applied;
    ASSERT_LE(0, d.i);
    ASSERT_LE(d.i, d.j);
    ASSERT_LE(d.j, n);
    std::vector<int32_t> out = fim_apply(ids, d, kT);
    ASSERT_EQ(out.size(), ids.size() + 3);
    ASSERT_EQ(out[0], kT.begin);
    std::vector<int32_t> body;
    for (int32_t t : out)
      if (t < 9000) body.push_back(t);
    std::vector<int32_t> sorted = body;
    std::sort(sorted.begin(), sorted.end());
    ASSERT_EQ(sorted, ids) << "doc " << doc;  // every token exactly once
    // prefix + middle + suffix, read back from the layout, is the original
    const auto hole = std::find(out.begin(), out.end(), kT.hole), end = std::find(out.begin(), out.end(), kT.end);
    std::vector<int32_t> back(out.begin() + 1, hole);
    back.insert(back.end(), end + 1, out.end());
    back.insert(back.end(), hole + 1, end);
    ASSERT_EQ(back, ids) << "doc " << doc;
    if (n == 36) cut_hist[d.i]++;
  }
  const double sigma = std::sqrt(n_docs * rate * (1 - rate));
  EXPECT_NEAR(applied, n_docs * rate, 4 * sigma);
  EXPECT_GT(cut_hist.size(), 10u);  // the cut points vary
  // rate 0 and 1 are exact
  for (int doc = 0; doc < 100; ++doc) {
    EXPECT_FALSE(fim_draw(7, doc, 10, 0.0).apply);
    EXPECT_TRUE(fim_draw(7, doc, 10, 1.0).apply);
  }
}

TEST(Fim, DrawsAreAFunctionOfSeedAndDocument) {
  int differ = 0;
  for (int doc = 0; doc < 200; ++doc) {
    const FimDraw a = fim_draw(3, doc, 50, 0.5), b = fim_draw(3, doc, 50, 0.5), c = fim_draw(4, doc, 50, 0.5);
    EXPECT_EQ(a.apply, b.apply);
    EXPECT_EQ(a.i, b.i);
    EXPECT_EQ(a.j, b.j);
    differ += (a.apply != c.apply || a.i != c.i || a.j != c.j);
  }
  EXPECT_GT(differ, 50);  // another seed, other draws
}

constexpr double kVal = 0.15;  // held out: documents 6, 13, 19, ...: both code and prose
bool held_out(int d) { return int64_t(double(d + 1) * kVal) > int64_t(double(d) * kVal); }
int64_t train_code() {
  int64_t n = 0;
  for (int d = 0; d < 200; d += 2) n += !held_out(d);
  return n;
}

// A JSONL corpus of 200 documents, every other one marked code, through tokenize_corpus with FIM.
struct FimCorpus {
  std::string dir, jsonl;
  std::vector<std::string> texts;
  explicit FimCorpus(const std::string& tag) {
    dir = test::temp_path(tag);
    fs::remove_all(dir);
    fs::create_directories(dir);
    jsonl = dir + "/in.jsonl";
    std::ofstream out(jsonl);
    for (int d = 0; d < 200; ++d) {
      texts.push_back("def f" + std::to_string(d) + "(x):\n    return x * " + std::to_string(d) + " + 1\n");
      out << nlohmann::json{{"text", texts.back()}, {"code", d % 2 == 0}}.dump() << "\n";
    }
  }
  std::string run(const std::string& name, double rate, uint64_t seed, int threads) const {
    CorpusOptions o;
    o.tokenizer_dir = test::kTinyModel;
    o.out_dir = dir + "/" + name;
    o.val_fraction = kVal;
    o.fim_rate = rate;
    o.fim_seed = seed;
    o.threads = threads;
    const CorpusStats st = tokenize_corpus({jsonl}, o);
    EXPECT_EQ(st.code_documents, train_code());
    return o.out_dir;
  }
};

TEST(Fim, TokenizeCorpusRearrangesOnlyTrainingCode) {
  const FimCorpus c("fim_corpus");
  const Tokenizer tok = Tokenizer::load(test::kTinyModel);
  const FimTokens t = FimTokens::from(tok, test::kTinyModel);
  const std::string out = c.run("a", 0.5, 11, 1);
  const Manifest m = Manifest::load(out);
  const auto train = m.read_split("train"), val = m.read_split("val");
  ASSERT_EQ(train.size(), 170u);
  ASSERT_EQ(val.size(), 30u);
  int val_code = 0;
  for (int d = 0; d < 200; d += 2) val_code += held_out(d);
  ASSERT_GT(val_code, 5);  // held-out code documents exist, and none of them is rearranged:
  for (const auto& d : val) EXPECT_EQ(std::count(d.begin(), d.end(), t.begin), 0);
  // Training documents in input order: document index k over all inputs, skipping the validation ones.
  int fim_docs = 0, k = 0;
  for (int d = 0; d < 200; ++d) {
    if (held_out(d)) continue;
    const auto& ids = train[size_t(k++)];
    std::vector<int32_t> plain = tok.encode(c.texts[size_t(d)], false);
    const bool is_fim = ids[0] == t.begin;
    if (d % 2 == 1) {
      EXPECT_FALSE(is_fim) << "prose document " << d;
      continue;
    }
    const FimDraw draw = fim_draw(11, d, int64_t(plain.size()), 0.5);
    EXPECT_EQ(is_fim, draw.apply) << "document " << d;
    std::vector<int32_t> want = draw.apply ? fim_apply(plain, draw, t) : plain;
    want.push_back(*tok.eos_id());
    EXPECT_EQ(ids, want) << "document " << d;
    fim_docs += is_fim;
  }
  const auto j = nlohmann::json::parse(std::ifstream(out + "/manifest.json"));
  EXPECT_EQ(j["fim"]["fim_documents"], fim_docs);
  EXPECT_EQ(j["fim"]["code_documents"], train_code());
  EXPECT_GT(fim_docs, 20);
  EXPECT_LT(fim_docs, 70);
}

TEST(Fim, TokenizeCorpusIsDeterministicAcrossThreads) {
  const FimCorpus c("fim_det");
  const std::string a = c.run("a", 0.5, 5, 1), b = c.run("b", 0.5, 5, 2), other = c.run("c", 0.5, 6, 1);
  auto bytes = [](const std::string& p) { return read_file(p); };
  EXPECT_EQ(bytes(a + "/train-00000.bin"), bytes(b + "/train-00000.bin"));
  EXPECT_NE(bytes(a + "/train-00000.bin"), bytes(other + "/train-00000.bin"));
}

TEST(Fim, BadOptionsNameTheProblem) {
  const FimCorpus c("fim_bad");
  auto error_of = [&](auto&& f) -> std::string {
    try {
      f();
    } catch (const Error& e) {
      return e.what();
    }
    return "(no error)";
  };
  CorpusOptions o;
  o.tokenizer_dir = test::kTinyModel;
  o.out_dir = c.dir + "/bad";
  o.fim_rate = 1.5;
  EXPECT_NE(error_of([&] { tokenize_corpus({c.jsonl}, o); }).find("--fim-rate 1.5 is not in [0, 1]"), std::string::npos);
  o.fim_rate = 0.5;
  o.sft = true;
  EXPECT_NE(error_of([&] { tokenize_corpus({c.jsonl}, o); }).find("not --sft"), std::string::npos);
  o.sft = false;
  std::ofstream(c.dir + "/badcode.jsonl") << R"({"text": "x = 1", "code": "yes"})" << "\n";
  const std::string e = error_of([&] { tokenize_corpus({c.dir + "/badcode.jsonl"}, o); });
  EXPECT_NE(e.find("badcode.jsonl:1: \"code\" must be true or false"), std::string::npos) << e;
  // a tokenizer without the FIM tokens
  fs::create_directories(c.dir + "/nofim");
  auto j = nlohmann::json::parse(std::ifstream(std::string(test::kTinyModel) + "/tokenizer.json"));
  nlohmann::json kept = nlohmann::json::array();
  for (auto& a : j["added_tokens"])
    if (a["content"].get<std::string>().find("fim") == std::string::npos) kept.push_back(a);
  j["added_tokens"] = kept;
  for (const char* name : {"<｜fim▁begin｜>", "<｜fim▁hole｜>", "<｜fim▁end｜>"}) j["model"]["vocab"].erase(name);
  std::ofstream(c.dir + "/nofim/tokenizer.json") << j.dump();
  fs::copy_file(std::string(test::kTinyModel) + "/tokenizer_config.json", c.dir + "/nofim/tokenizer_config.json");
  o.tokenizer_dir = c.dir + "/nofim";
  const std::string e2 = error_of([&] { tokenize_corpus({c.jsonl}, o); });
  EXPECT_NE(e2.find("has no <｜fim▁begin｜> token, which --fim-rate needs"), std::string::npos) << e2;
}

}  // namespace
}  // namespace moe::train
