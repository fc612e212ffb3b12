// The distributed commands end to end: `mpirun -np 2 moe train-steps ... --dp 2 [--ep] [--zero K]` and
// `mpirun -np 2 moe train ... --dp 2 ...` against the same commands in one process: step lines within 1e-5
// relative, final parameters within 1e-5 relative L2 per tensor, also started by hand (no mpirun: the command
// launches its ranks) and with ZeRO-3; and --dp N under mpirun with another rank count is an error saying how to
// launch. Launched through tests/dist/mpirun.sh (MPIRUN_SH, MPIEXEC).
#include <gtest/gtest.h>

#include <array>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "io/safetensors.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

struct Result {
  int code = -1;
  std::string out;
};

Result shell(const std::string& cmd) {
  FILE* p = popen((cmd + " 2>&1").c_str(), "r");
  Result r;
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}
Result moe1(const std::string& args) { return shell(std::string(MOE_BINARY) + " " + args); }
Result moe_np(int np, const std::string& args) {
  return shell(std::string(MPIRUN_SH) + " " + MPIEXEC + " " + std::to_string(np) + " " + MOE_BINARY + " " + args);
}

std::vector<nlohmann::json> step_lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (line.rfind("{\"step\"", 0) == 0 && line.find("\"loss\"") != std::string::npos)
      out.push_back(nlohmann::json::parse(line));
  return out;
}

void compare_steps(const std::string& got, const std::string& want, const char* what, double tol = 1e-5) {
  const auto g = step_lines(got), w = step_lines(want);
  ASSERT_EQ(g.size(), w.size()) << what << ": step lines (rank 0 alone prints)\n" << got;
  ASSERT_FALSE(w.empty());
  for (size_t s = 0; s < w.size(); ++s)
    for (const char* key : {"loss", "main_ce", "mtp_ce", "grad_norm"}) {
      const double a = g[s][key].get<double>(), b = w[s][key].get<double>();
      EXPECT_LT(std::abs(a - b) / std::abs(b), tol) << what << " step " << s + 1 << " " << key;
    }
}

// Every tensor of `want` whose name starts with prefix is in `got` within 1e-5 relative L2.
void compare_tensors(const std::string& got_path, const std::string& want_path, const std::string& prefix,
                     const char* what) {
  SafetensorsFile got(got_path), want(want_path);
  size_t checked = 0;
  for (const auto& e : want.entries()) {
    if (e.name.rfind(prefix, 0) != 0) continue;
    const SafetensorsEntry* ge = got.find(e.name);
    ASSERT_NE(ge, nullptr) << what << ": " << e.name;
    const TensorView a = got.view(*ge), b = want.view(e);
    ASSERT_EQ(a.numel(), b.numel()) << e.name;
    ASSERT_EQ(a.dtype, DType::F32);
    double num = 0, den = 0;
    for (int64_t i = 0; i < b.numel(); ++i) {
      const double x = a.as<const float>()[i], y = b.as<const float>()[i];
      num += (x - y) * (x - y), den += y * y;
    }
    EXPECT_LT(den == 0 ? std::sqrt(num) : std::sqrt(num / den), 1e-5) << what << ": " << e.name;
    ++checked;
  }
  EXPECT_GT(checked, 20u) << what;
}

TEST(DistCli, TrainStepsOverTwoRanksMatchesOneProcess) {
  const std::string dir = test::temp_path("dist-cli-steps");
  fs::remove_all(dir);
  fs::create_directories(dir);
  const std::string base = "train-steps --model tests/data/tiny-train/model --spec tests/data/tiny-train/train.json";
  const Result one = moe1(base + " --out " + dir + "/one.safetensors");
  ASSERT_EQ(one.code, 0) << one.out;
  // The last two without mpirun: the command launches its two ranks itself (src/cli/launcher.h).
  for (const char* flags : {"--dp 2", "--dp 2 --zero 2", "--dp 2 --ep --zero 1", "--dp 2 --zero 3",
                            "--dp 2 --ep --zero 3"}) {
    const std::string out = dir + "/two.safetensors";
    const bool by_hand = std::string(flags).find("--zero 3") != std::string::npos;
    const Result two = by_hand ? moe1(base + " --out " + out + " " + flags) : moe_np(2, base + " --out " + out + " " + flags);
    ASSERT_EQ(two.code, 0) << flags << "\n" << two.out;
    compare_steps(two.out, one.out, flags);
    compare_tensors(out, dir + "/one.safetensors", "after3.", flags);
  }
}

// A corpus of 16 short documents tokenized into dir/data, and the tiny-train model's config with a vocabulary of
// 2048 at dir/config.json.
void make_corpus(const std::string& dir) {
  fs::remove_all(dir);
  fs::create_directories(dir + "/in");
  std::string files;
  const char* words[] = {"experts", "tokens", "attention", "latent", "router", "balance", "gradient", "loss"};
  for (int d = 0; d < 16; ++d) {
    std::string text;
    for (int w = 0; w < 6 + d % 5; ++w) text += std::string(words[(d * 3 + w * 5) % 8]) + (w % 3 == 2 ? ". " : " ");
    const std::string path = dir + "/in/doc" + std::to_string(d) + ".txt";
    std::ofstream(path) << text;
    files += " " + path;
  }
  const Result tok = moe1("tokenize-corpus --tokenizer " + test::kTinyModel + " --out " + dir + "/data" + files);
  ASSERT_EQ(tok.code, 0) << tok.out;
  std::ifstream cin("tests/data/tiny-train/model/config.json");
  nlohmann::json cfg = nlohmann::json::parse(cin);
  cfg["vocab_size"] = 2048;
  std::ofstream(dir + "/config.json") << cfg.dump(1);
}

TEST(DistCli, TrainOverTwoRanksMatchesOneProcess) {
  const std::string dir = test::temp_path("dist-cli-train");
  ASSERT_NO_FATAL_FAILURE(make_corpus(dir));
  const std::string base = "train --config " + dir + "/config.json --data " + dir + "/data --steps 3 --seq-len 12 "
                           "--batch 4 --micro-batch 2 --lr 1e-2 --seed 5 --threads 1";
  const Result one = moe1(base + " --out " + dir + "/one");
  ASSERT_EQ(one.code, 0) << one.out;
  const Result two = moe_np(2, base + " --out " + dir + "/two --dp 2 --ep --zero 2");
  ASSERT_EQ(two.code, 0) << two.out;
  compare_steps(two.out, one.out, "train --dp 2 --ep --zero 2");
  // By hand (no mpirun: the command launches its ranks), ZeRO-3 with gradient accumulation (2 micro-batches).
  const Result hand = moe1(base + " --out " + dir + "/hand --dp 2 --zero 3");
  ASSERT_EQ(hand.code, 0) << hand.out;
  compare_steps(hand.out, one.out, "train --dp 2 --zero 3 by hand");
  compare_tensors(dir + "/hand/step-00000003/model.safetensors", dir + "/one/step-00000003/model.safetensors", "",
                  "model (ZeRO-3, by hand)");
  compare_tensors(dir + "/hand/step-00000003/optimizer.safetensors", dir + "/one/step-00000003/optimizer.safetensors",
                  "v.", "second moments gathered from the ZeRO-3 shards");
  const auto lines = step_lines(two.out);
  ASSERT_FALSE(lines.empty());
  EXPECT_GT(lines[0].value("ep_bytes", int64_t(0)), 0) << "each step reports the all-to-all bytes";
  EXPECT_GE(lines[0].value("ep_max_ranks_per_token", 0), 1);
  compare_tensors(dir + "/two/step-00000003/model.safetensors", dir + "/one/step-00000003/model.safetensors", "",
                  "model");
  compare_tensors(dir + "/two/step-00000003/optimizer.safetensors", dir + "/one/step-00000003/optimizer.safetensors",
                  "m.", "first moments gathered from the shards");
  // A micro-batch that does not split over the ranks is refused, naming the flags.
  const Result odd = moe_np(2, "train --config " + dir + "/config.json --data " + dir + "/data --steps 1 --seq-len 12 "
                            "--batch 3 --out " + dir + "/odd --dp 2");
  EXPECT_NE(odd.code, 0);
  EXPECT_NE(odd.out.find("does not split over 2 data-parallel ranks"), std::string::npos) << odd.out;
}

// Two MPI ranks sharing one GPU (their gradients all-reduced through host memory) against one process on it, with
// the same sequences: the reference accumulates 4 micro-batches of one sequence, each rank 2 of them (sequences r
// and r + 2), so only the order of the FP32 gradient additions differs, and the BF16 roundings of weights a few
// ulps apart after it (a flipped rounding moves one of ~10^5 weights by 2^-8 of itself): 1e-4 relative on the
// step lines. Skips visibly without a GPU.
TEST(DistCli, CudaTrainOverTwoMpiRanksOnOneGpuMatchesOneProcess) {
  const std::string dir = test::temp_path("dist-cli-cuda");
  ASSERT_NO_FATAL_FAILURE(make_corpus(dir));
  const std::string base = "train --device cuda --config " + dir + "/config.json --data " + dir + "/data --steps 3 "
                           "--seq-len 12 --batch 4 --lr 1e-2 --seed 5";
  const Result one = moe1(base + " --micro-batch 1 --out " + dir + "/one");
  if (one.code != 0 && (one.out.find("no CUDA device") != std::string::npos ||
                        one.out.find("has no CUDA") != std::string::npos))
    GTEST_SKIP() << "no GPU: " << one.out;
  ASSERT_EQ(one.code, 0) << one.out;
  const Result two = moe_np(2, base + " --micro-batch 2 --out " + dir + "/two --dp 2");
  ASSERT_EQ(two.code, 0) << two.out;
  compare_steps(two.out, one.out, "train --device cuda --dp 2 (mpirun, one GPU)", 1e-4);
}

// `moe bench --ep 2` started by hand (the command launches its MPI ranks): rank 0 alone prints the sweep,
// each decode point with the tokens/s per rank, the bytes rank 0 sent a step (rows leave it: not zero) and
// the synchronised pass's split of the MoE layers' time; the same with the all-reduce exchange (its
// synchronised pass runs the steps eagerly, since a graph replay would skip the timers), and with
// data-parallel attention under either exchange (batch 1: rank 1 idle; batch 3: two sequences and one).
TEST(DistCli, BenchOverTwoRanksReportsTheExchange) {
  for (const std::string exchange :
       {"", " --ep-all-reduce", " --dp-attention", " --dp-attention --ep-all-reduce"}) {
    const Result r = moe1("bench --model " + test::kTinyModel +
                          " --ep 2 --batch 1,3 --context 20 --prompt-tokens 8 "
                          "--steps 3 --threads 1" +
                          exchange);
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_NE(r.out.find("expert parallelism: 2 ranks over mpi"), std::string::npos) << r.out;
    EXPECT_EQ(r.out.find("the all-reduce exchange") != std::string::npos,
              exchange.find("--ep-all-reduce") != std::string::npos)
        << r.out;
    EXPECT_EQ(r.out.find("data-parallel attention: each rank its own sequences") != std::string::npos,
              exchange.find("--dp-attention") != std::string::npos)
        << r.out;
    for (const char* point : {"decode: batch 1 context 20", "decode: batch 3 context 20"}) {
      const size_t at = r.out.find(point);
      ASSERT_NE(at, std::string::npos) << point << "\n" << r.out;
      const size_t line = r.out.find("expert parallelism: ", at);
      ASSERT_NE(line, std::string::npos) << r.out;
      const std::string ep = r.out.substr(line, r.out.find('\n', line) - line);
      EXPECT_NE(ep.find("tokens/s per rank"), std::string::npos) << ep;
      EXPECT_EQ(ep.find("sent 0 B"), std::string::npos) << ep;
      EXPECT_NE(ep.find("of which exchange"), std::string::npos) << ep;
    }
    size_t models = 0;
    for (size_t at = 0; (at = r.out.find("model: ", at)) != std::string::npos; ++at) ++models;
    EXPECT_EQ(models, 1u) << "rank 0 alone prints\n" << r.out;
  }
}

TEST(DistCli, DpUnderTooFewRanksSaysHowToLaunch) {
  const Result r = moe_np(1, "train-steps --model tests/data/tiny-train/model --spec tests/data/tiny-train/train.json "
                          "--out " + test::temp_path("dist-cli-x.safetensors") + " --dp 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("launch it with mpirun -np 2"), std::string::npos) << r.out;
}

}  // namespace
}  // namespace moe
