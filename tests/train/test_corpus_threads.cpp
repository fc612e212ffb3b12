// tokenize-corpus on several threads: the shards, masks, manifest and validation split are the same bytes for 1, 2
// and 3 threads (plain text files, a JSONL long enough to span several tokenizing batches, and SFT conversations),
// and bad input is still named by file and line: the first bad piece in input order, whatever the thread count.
#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>
#include <map>

#include <nlohmann/json.hpp>

#include "core/error.h"
#include "test_util.h"
#include "train/data.h"

namespace fs = std::filesystem;

namespace moe::train {
namespace {

std::string write_file(const std::string& path, const std::string& text) {
  std::ofstream(path, std::ios::binary) << text;
  return path;
}

// Every file of a directory, name -> bytes.
std::map<std::string, std::string> read_dir(const std::string& dir) {
  std::map<std::string, std::string> files;
  for (const auto& e : fs::directory_iterator(dir)) files[e.path().filename().string()] = read_file(e.path().string());
  return files;
}

// Varied documents (lengths 1..~60 words, digits, punctuation, non-ASCII) so no two batches look alike.
std::string document(int i) {
  static const char* const words[] = {"expert", "router", "latent", "attention", "token", "shard", "Ünïcode", "ß",
                                      "日本語", "gradient", "42", "loss,", "mask.", "(packed)", "\"quoted\"", "tab\t"};
  std::string s = "Document " + std::to_string(i) + ":";
  for (int k = 0; k < 1 + (i * 7919) % 60; ++k) s += std::string(" ") + words[(i * 31 + k * 17) % 16];
  return s;
}

std::map<std::string, std::string> run(const std::vector<std::string>& files, CorpusOptions o, int threads,
                                       const std::string& tag) {
  o.threads = threads;
  o.out_dir = test::temp_path(tag + "-t" + std::to_string(threads));
  fs::remove_all(o.out_dir);
  tokenize_corpus(files, o);
  return read_dir(o.out_dir);
}

std::string error_of(const std::vector<std::string>& files, CorpusOptions o, int threads) {
  o.threads = threads;
  o.out_dir = test::temp_path("corpus-mt-bad-t" + std::to_string(threads));
  try {
    tokenize_corpus(files, o);
  } catch (const Error& e) {
    return e.what();
  }
  return "(no error)";
}

TEST(CorpusThreads, PlainTextAndJsonlAreTheSameBytesForAnyThreadCount) {
  const std::string dir = test::temp_path("corpus-mt-in");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::vector<std::string> files;
  for (int i = 0; i < 40; ++i) files.push_back(write_file(dir + "/d" + std::to_string(i) + ".txt", document(i)));
  // 4500 lines (with blank ones): more than one batch of pieces (4096), so batches are stitched in order.
  std::string jl;
  for (int i = 0; i < 4500; ++i) {
    if (i % 97 == 5) jl += "\n";
    jl += nlohmann::json{{"text", document(1000 + i)}}.dump() + "\n";
  }
  files.push_back(write_file(dir + "/many.jsonl", jl));
  for (int i = 40; i < 60; ++i) files.push_back(write_file(dir + "/d" + std::to_string(i) + ".txt", document(i)));
  CorpusOptions o;
  o.tokenizer_dir = test::kTinyModel;
  o.val_fraction = 0.07;
  o.shard_tokens = 20000;
  const auto one = run(files, o, 1, "corpus-mt");
  ASSERT_GT(one.size(), 5u);  // several train shards, val shards, the manifest, the tokenizer files
  const nlohmann::json m = nlohmann::json::parse(one.at("manifest.json"));
  int64_t docs = 0;
  for (const char* split : {"train", "val"})
    for (const auto& s : m[split]) docs += s["documents"].get<int64_t>();
  EXPECT_EQ(docs, 4560);
  EXPECT_GT(m["train"].size(), 2u);
  EXPECT_GT(m["val"].size(), 0u);
  for (int threads : {2, 3}) {
    const auto many = run(files, o, threads, "corpus-mt");
    ASSERT_EQ(many.size(), one.size()) << threads;
    for (const auto& [name, bytes] : one) EXPECT_TRUE(many.at(name) == bytes) << name << " differs at " << threads;
  }
}

TEST(CorpusThreads, SftShardsAndMasksAreTheSameBytesForAnyThreadCount) {
  const std::string dir = test::temp_path("corpus-mt-sft-in");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string first, jl;  // first: the first 150 conversations; jl: all 300
  for (int i = 0; i < 300; ++i) {
    if (i == 150) first = jl;
    nlohmann::json msgs = nlohmann::json::array();
    for (int turn = 0; turn <= i % 3; ++turn) {
      msgs.push_back({{"role", "user"}, {"content", document(i * 3 + turn)}});
      msgs.push_back({{"role", "assistant"}, {"content", document(5000 + i * 3 + turn)}});
    }
    jl += nlohmann::json{{"messages", msgs}}.dump() + "\n";
  }
  const std::vector<std::string> files = {write_file(dir + "/a.jsonl", first),
                                          write_file(dir + "/b.jsonl", jl)};
  CorpusOptions o;
  o.tokenizer_dir = test::kTinyModel;
  o.sft = true;
  o.val_fraction = 0.1;
  o.shard_tokens = 10000;
  const auto one = run(files, o, 1, "corpus-mt-sft");
  ASSERT_TRUE(one.count("train-00000.bin.mask"));
  ASSERT_TRUE(one.count("train-00001.bin.mask"));
  ASSERT_TRUE(one.count("val-00000.bin.mask"));
  for (int threads : {2, 3}) {
    const auto many = run(files, o, threads, "corpus-mt-sft");
    ASSERT_EQ(many.size(), one.size()) << threads;
    for (const auto& [name, bytes] : one) EXPECT_TRUE(many.at(name) == bytes) << name << " differs at " << threads;
  }
}

TEST(CorpusThreads, TheFirstBadInputIsNamedWhateverTheThreadCount) {
  const std::string dir = test::temp_path("corpus-mt-bad-in");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::string jl;
  for (int i = 1; i <= 400; ++i)
    jl += i == 150 ? "{\"txt\": 1}\n" : i == 300 ? "{oops\n" : nlohmann::json{{"text", document(i)}}.dump() + "\n";
  const std::string bad = write_file(dir + "/bad.jsonl", jl);
  const std::string good = write_file(dir + "/good.txt", document(7));
  CorpusOptions o;
  o.tokenizer_dir = test::kTinyModel;
  for (int threads : {1, 2, 3}) {
    // Line 150 comes before line 300 and before the missing file that follows.
    const std::string e = error_of({good, bad, dir + "/missing.txt"}, o, threads);
    EXPECT_NE(e.find(bad + ":150: not a JSON object with a \"text\" string"), std::string::npos) << threads << e;
    // With the input before it good, a missing file is named.
    const std::string m = error_of({good, dir + "/missing.txt", bad}, o, threads);
    EXPECT_NE(m.find(dir + "/missing.txt: cannot open"), std::string::npos) << threads << m;
    // SFT: a line without "messages" is named by line.
    CorpusOptions s = o;
    s.sft = true;
    const std::string chats = write_file(dir + "/chats.jsonl",
                                         "{\"messages\": [{\"role\": \"user\", \"content\": \"hi\"}, {\"role\": "
                                         "\"assistant\", \"content\": \"hello\"}]}\n\n{\"msgs\": []}\n");
    const std::string x = error_of({chats}, s, threads);
    EXPECT_NE(x.find(chats + ":3: not a JSON object with \"messages\""), std::string::npos) << threads << x;
  }
  EXPECT_NE(error_of({good}, o, -1).find("--threads -1"), std::string::npos);
}

}  // namespace
}  // namespace moe::train
