// The data pipeline: tokenize_corpus (shards, split, manifest), the packing loader (seeded order, exact resume)
// and every kind of bad input ending in an error that names the file.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "tokenizer/tokenizer.h"
#include "train/data.h"

namespace fs = std::filesystem;

namespace moe::train {
namespace {

const std::vector<std::string> kDocs = {
    "The quick brown fox jumps over the lazy dog.",
    "Mixture-of-experts models route each token to a few experts.",
    "Multi-head latent attention compresses the key-value cache.",
    "A fourth document, somewhat longer than the others, so that packing has to split it across sequences.",
    "Five.",
    "Six documents in all, one of them in a JSONL file.",
};

std::string write_file(const std::string& dir, const std::string& name, const std::string& text) {
  const std::string path = dir + "/" + name;
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// A corpus of kDocs: five plain files and the sixth as a JSONL line (with a blank line).
std::string make_corpus(const std::string& tag, double val_fraction, int64_t shard_tokens = 1 << 20) {
  const std::string dir = test::temp_path(tag);
  fs::remove_all(dir);
  fs::create_directories(dir + "/in");
  std::vector<std::string> files;
  for (size_t i = 0; i + 1 < kDocs.size(); ++i) files.push_back(write_file(dir + "/in", "d" + std::to_string(i) + ".txt", kDocs[i]));
  files.push_back(write_file(dir + "/in", "rest.jsonl", nlohmann::json{{"text", kDocs.back()}}.dump() + "\n\n"));
  CorpusOptions o;
  o.tokenizer_dir = test::kTinyModel;
  o.out_dir = dir + "/data";
  o.val_fraction = val_fraction;
  o.shard_tokens = shard_tokens;
  tokenize_corpus(files, o);
  return dir + "/data";
}

template <typename F>
std::string error_of(F&& f) {
  try {
    f();
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(Data, TokenizeCorpusWritesShardsAndManifest) {
  const std::string data = make_corpus("corpus1", 1.0 / 3.0, 40);
  const Manifest m = Manifest::load(data);
  const Tokenizer tok = Tokenizer::load(test::kTinyModel);
  EXPECT_EQ(m.vocab_size, tok.vocab_size());
  EXPECT_EQ(m.eos_id, *tok.eos_id());
  EXPECT_GT(m.train.size(), 1u);  // 40-token shards
  int64_t docs = 0;
  for (const auto& s : m.train) docs += s.documents;
  for (const auto& s : m.val) docs += s.documents;
  EXPECT_EQ(docs, 6);
  // floor((d+1)/3) > floor(d/3) for d = 2, 5: documents 2 and 5 are held out.
  const auto train = m.read_split("train"), val = m.read_split("val");
  ASSERT_EQ(train.size(), 4u);
  ASSERT_EQ(val.size(), 2u);
  auto expect_doc = [&](const std::vector<int32_t>& got, const std::string& text) {
    std::vector<int32_t> want = tok.encode(text, false);
    want.push_back(*tok.eos_id());
    EXPECT_EQ(got, want) << text;
  };
  expect_doc(train[0], kDocs[0]);
  expect_doc(train[1], kDocs[1]);
  expect_doc(train[2], kDocs[3]);
  expect_doc(train[3], kDocs[4]);
  expect_doc(val[0], kDocs[2]);
  expect_doc(val[1], kDocs[5]);
  EXPECT_TRUE(fs::exists(data + "/tokenizer.json"));
}

TEST(Data, LoaderPacksInASeededOrderAndResumes) {
  const Manifest m = Manifest::load(make_corpus("corpus2", 0));
  const auto docs = m.read_split("train");
  int64_t total = 0;
  for (const auto& d : docs) total += int64_t(d.size());
  // One epoch read as sequences is a permutation of the documents, concatenated.
  PackedLoader a(docs, 7);
  const std::vector<int32_t> epoch = a.next(1, total);
  EXPECT_EQ(a.position(), (PackedLoader::Position{1, 0, 0}));
  std::vector<int32_t> sorted_epoch = epoch, sorted_all;
  for (const auto& d : docs) sorted_all.insert(sorted_all.end(), d.begin(), d.end());
  std::sort(sorted_epoch.begin(), sorted_epoch.end());
  std::sort(sorted_all.begin(), sorted_all.end());
  EXPECT_EQ(sorted_epoch, sorted_all);
  // The same seed gives the same stream; another seed another order.
  PackedLoader b(docs, 7), c(docs, 8);
  EXPECT_EQ(b.next(1, total), epoch);
  EXPECT_NE(c.next(1, total), epoch);
  // Reading 3 x [2, 16] straight equals reading one batch, saving the position and resuming there twice,
  // across the epoch boundary.
  PackedLoader straight(docs, 3);
  std::vector<std::vector<int32_t>> want;
  for (int i = 0; i < 12; ++i) want.push_back(straight.next(2, 16));
  PackedLoader first(docs, 3);
  std::vector<std::vector<int32_t>> got{first.next(2, 16)};
  PackedLoader::Position pos = first.position();
  for (int i = 1; i < 12; ++i) {
    PackedLoader resumed(docs, 3, true, pos);
    got.push_back(resumed.next(2, 16));
    pos = resumed.position();
  }
  EXPECT_EQ(got, want);
  EXPECT_GE(pos.epoch, 1);
}

TEST(Data, BadInputNamesTheFile) {
  const std::string data = make_corpus("corpus3", 0, 30);
  const Manifest m = Manifest::load(data);
  const std::string shard = data + "/" + m.train[0].file;
  const std::string good = [&] {
    std::ifstream in(shard, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(in), {});
  }();
  auto restore = [&] { std::ofstream(shard, std::ios::binary) << good; };

  // A corrupt token (checksum).
  std::string bad = good;
  bad[20] ^= 1;
  std::ofstream(shard, std::ios::binary) << bad;
  EXPECT_NE(error_of([&] { m.read_split("train"); }).find(shard + ": checksum"), std::string::npos);
  // Truncated.
  std::ofstream(shard, std::ios::binary) << good.substr(0, good.size() - 2);
  EXPECT_NE(error_of([&] { m.read_split("train"); }).find(shard + ": corrupt"), std::string::npos);
  // Bad magic.
  bad = good;
  bad[0] = 'X';
  std::ofstream(shard, std::ios::binary) << bad;
  EXPECT_NE(error_of([&] { m.read_split("train"); }).find(shard + ": not a token shard"), std::string::npos);
  // Missing.
  fs::remove(shard);
  EXPECT_NE(error_of([&] { m.read_split("train"); }).find(shard + ": missing"), std::string::npos);
  restore();
  EXPECT_NO_THROW(m.read_split("train"));

  // A manifest that disagrees with its shards: token count, document count, checksum.
  Manifest wrong = m;
  wrong.train[0].tokens += 1;
  EXPECT_NE(error_of([&] { wrong.read_split("train"); }).find("manifest.json says"), std::string::npos);
  wrong = m;
  wrong.train[0].documents += 1;
  EXPECT_NE(error_of([&] { wrong.read_split("train"); }).find("documents but"), std::string::npos);
  wrong = m;
  wrong.train[0].checksum ^= 1;
  EXPECT_NE(error_of([&] { wrong.read_split("train"); }).find(shard + ": checksum"), std::string::npos);

  // The manifest itself: missing, not JSON, a shard entry without its fields.
  const std::string manifest = data + "/manifest.json";
  const nlohmann::json j = nlohmann::json::parse(std::ifstream(manifest));
  std::ofstream(manifest) << "{not json";
  EXPECT_NE(error_of([&] { Manifest::load(data); }).find(manifest + ": not valid JSON"), std::string::npos);
  // A format of the wrong type (a fuzzer's find: it escaped as nlohmann's type_error, not as moe::Error).
  for (const char* bad : {R"({"format": []})", R"({"format": 1})", R"({"format": "moe-tokens-2"})", "[]"}) {
    std::ofstream(manifest) << bad;
    EXPECT_NE(error_of([&] { Manifest::load(data); }).find(manifest + ": not a moe-tokens-1 manifest"),
              std::string::npos)
        << bad;
  }
  nlohmann::json k = j;
  k["train"][0].erase("fnv1a64");
  std::ofstream(manifest) << k.dump();
  EXPECT_NE(error_of([&] { Manifest::load(data); }).find(manifest + ": train[0] needs"), std::string::npos);
  fs::remove(manifest);
  EXPECT_NE(error_of([&] { Manifest::load(data); }).find(manifest + ": cannot open"), std::string::npos);

  // Input files: missing, a JSONL line that is not JSON or has no text.
  CorpusOptions o;
  o.tokenizer_dir = test::kTinyModel;
  o.out_dir = test::temp_path("corpus3-out");
  EXPECT_NE(error_of([&] { tokenize_corpus({"/nonexistent/x.txt"}, o); }).find("/nonexistent/x.txt: cannot open"),
            std::string::npos);
  const std::string jl = write_file(::testing::TempDir(), "bad-corpus.jsonl", "{\"text\": \"ok\"}\n{\"txt\": 1}\n");
  EXPECT_NE(error_of([&] { tokenize_corpus({jl}, o); }).find(jl + ":2: not a JSON object"), std::string::npos);
  write_file(::testing::TempDir(), "bad-corpus.jsonl", "{oops\n");
  EXPECT_NE(error_of([&] { tokenize_corpus({jl}, o); }).find(jl + ":1: not valid JSON"), std::string::npos);
}

}  // namespace
}  // namespace moe::train
