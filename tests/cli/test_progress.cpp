// Progress on stderr while checkpoints load and random ones are written: the bar on a terminal (ProgressBar
// with terminal=true into a file), and through a pipe (the `moe` binary) at most a line per 25 %, whose byte
// totals must match the tensor data in the safetensors file (counted from its header length, not the parser).
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <regex>
#include <string>

#include "cli/progress_bar.h"
#include "run_moe.h"
#include "test_util.h"

namespace fs = std::filesystem;
using moe::cli::ProgressBar;
using moe::cli::progress_bytes;

namespace {

std::string drawn(bool terminal, const std::vector<std::pair<uint64_t, uint64_t>>& calls) {
  std::FILE* f = std::tmpfile();
  ProgressBar bar("loading m", f, terminal);
  for (auto [d, t] : calls) bar.update(d, t);
  std::string s(size_t(std::ftell(f)), '\0');
  std::rewind(f);
  s.resize(std::fread(s.data(), 1, s.size(), f));
  std::fclose(f);
  return s;
}

size_t count(const std::string& s, const std::string& what) {
  size_t n = 0;
  for (size_t p = s.find(what); p != std::string::npos; p = s.find(what, p + 1)) ++n;
  return n;
}

// Bytes of tensor data in a safetensors file: its size less the 8-byte length and the JSON header.
uint64_t data_bytes(const std::string& path) {
  std::ifstream f(path, std::ios::binary);
  uint64_t header = 0;
  f.read(reinterpret_cast<char*>(&header), 8);
  return fs::file_size(path) - 8 - header;
}

}  // namespace

TEST(Progress, BytesAreReadable) {
  EXPECT_EQ(progress_bytes(12), "12 B");
  EXPECT_EQ(progress_bytes(1536), "1.50 KiB");
  EXPECT_EQ(progress_bytes(uint64_t(3) << 30), "3.00 GiB");
}

TEST(Progress, TerminalRedrawsOneLineAndEndsIt) {
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  const uint64_t total = 1 << 20;
  for (uint64_t d = 0; d <= total; d += 64) calls.push_back({d, total});  // 16385 calls
  const std::string s = drawn(true, calls);
  EXPECT_EQ(count(s, "\n"), 1u) << "one line, ended once";
  EXPECT_EQ(s.back(), '\n');
  EXPECT_LE(count(s, "\r"), 1001u) << "redrawn at most once per permille";
  EXPECT_GE(count(s, "\r"), 100u);
  EXPECT_NE(s.find(" 42% [############"), std::string::npos);
  EXPECT_NE(s.find("100% [" + std::string(30, '#') + "] 1.00 MiB of 1.00 MiB"), std::string::npos) << s;
  // Calls after the end draw nothing.
  calls.push_back({total, total});
  EXPECT_EQ(drawn(true, calls), s);
}

TEST(Progress, PipeGetsALinePerQuarterAtMost) {
  std::vector<std::pair<uint64_t, uint64_t>> calls;
  for (uint64_t d = 0; d <= 1000; ++d) calls.push_back({d, 1000});
  EXPECT_EQ(drawn(false, calls),
            "loading m: 25% (250 B of 1000 B)\nloading m: 50% (500 B of 1000 B)\n"
            "loading m: 75% (750 B of 1000 B)\nloading m: 100% (1000 B of 1000 B)\n");
  // A jump over several quarters gives one line; an empty operation is complete.
  EXPECT_EQ(drawn(false, {{10, 100}, {90, 100}, {100, 100}}), "loading m: 75% (90 B of 100 B)\nloading m: 100% (100 B of 100 B)\n");
  EXPECT_EQ(drawn(false, {{0, 0}}), "loading m: 100% (0 B of 0 B)\n");
}

TEST(Progress, CreateRandomAndLoadingReportEveryByte) {
  const std::string dir = moe::test::temp_path("progress");
  fs::remove_all(dir);
  fs::create_directories(dir);
  std::ofstream(dir + "/shape.json") << R"({"architectures":["DeepseekV3ForCausalLM"],"vocab_size":300,"hidden_size":128,
    "intermediate_size":256,"moe_intermediate_size":64,"num_hidden_layers":2,"num_attention_heads":4,
    "n_shared_experts":1,"n_routed_experts":8,"routed_scaling_factor":2.5,"kv_lora_rank":64,"q_lora_rank":96,
    "qk_rope_head_dim":16,"v_head_dim":32,"qk_nope_head_dim":32,"n_group":2,"topk_group":1,"num_experts_per_tok":2,
    "first_k_dense_replace":1,"norm_topk_prob":true,"scoring_func":"sigmoid","topk_method":"noaux_tc",
    "num_nextn_predict_layers":1,"rms_norm_eps":1e-6,"rope_theta":10000.0,"max_position_embeddings":4096})";
  const std::string m = dir + "/m";
  const auto w = moe::test::run_moe("create-random --dtype fp8 --config " + dir + "/shape.json --out " + m);
  ASSERT_EQ(w.code, 0) << w.out;
  const uint64_t all = data_bytes(m + "/model.safetensors");
  const std::string a = progress_bytes(all);
  for (int q : {25, 50, 75}) EXPECT_EQ(count(w.out, "writing " + m + ": " + std::to_string(q) + "% ("), 1u) << w.out;
  EXPECT_EQ(count(w.out, "writing " + m + ": 100% (" + a + " of " + a + ")\n"), 1u) << w.out;
  EXPECT_EQ(count(w.out, "\n"), 4u) << w.out;

  // With the MTP layer (logits --mtp) the load hands over every byte; without it (generate), all but the MTP
  // layer's, which is less than all.
  const auto l = moe::test::run_moe("logits --mtp --model " + m + " --tokens 1,2,3 --out " + dir + "/l.st");
  ASSERT_EQ(l.code, 0) << l.out;
  EXPECT_EQ(count(l.out, "loading " + m + ": 100% (" + a + " of " + a + ")\n"), 1u) << l.out;
  EXPECT_LE(count(l.out, "loading " + m + ": "), 4u) << l.out;
  const auto g = moe::test::run_moe("generate --model " + m + " --tokens 1,2,3 --max-new-tokens 1");
  ASSERT_EQ(g.code, 0) << g.out;
  std::smatch s;
  ASSERT_TRUE(std::regex_search(g.out, s, std::regex("loading .*: 100% \\((.*) of (.*)\\)\n"))) << g.out;
  EXPECT_EQ(s[1].str(), s[2].str());
  EXPECT_NE(s[1].str(), a) << "the MTP layer is not loaded by generate";
  fs::remove_all(dir);
}
