// `moe tokenize-corpus` and `moe train`: a run from a fresh initialisation over tokenized text, checkpoints
// that `moe generate` loads, exact resume (N steps straight == N/2 + resume + N/2, losses compared exactly),
// a NaN loss stopping the run with the last good checkpoint kept, and bad input naming the file.
#include <gtest/gtest.h>
#include <sys/wait.h>

#include <array>
#include <cstring>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "run_moe.h"
#include "test_util.h"

namespace fs = std::filesystem;

namespace moe {
namespace {

using Result = test::MoeResult;


std::vector<nlohmann::json> json_lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  std::istringstream in(text);
  std::string line;
  while (std::getline(in, line))
    if (!line.empty() && line[0] == '{') out.push_back(nlohmann::json::parse(line));
  return out;
}

std::string read(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  return std::string(std::istreambuf_iterator<char>(in), {});
}

// A corpus of 20 short documents (tiny-dsv3's tokenizer), 20% held out, and tiny-train's model with the
// tokenizer's vocabulary of 2048.
class TrainCommand : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = new std::string(test::temp_path("train-cmd"));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_ + "/in");
    std::string files;
    const char* words[] = {"experts", "tokens", "attention", "latent", "router", "balance", "gradient", "loss"};
    for (int d = 0; d < 20; ++d) {
      std::string text;
      for (int w = 0; w < 6 + d % 5; ++w) text += std::string(words[(d * 3 + w * 5) % 8]) + (w % 3 == 2 ? ". " : " ");
      const std::string path = *dir_ + "/in/doc" + std::to_string(d) + ".txt";
      std::ofstream(path) << text;
      files += " " + path;
    }
    const Result r = test::run_moe("tokenize-corpus --tokenizer " + test::kTinyModel + " --out " + *dir_ +
                                   "/data --val-fraction 0.2 --threads 2" + files);
    ASSERT_EQ(r.code, 0) << r.out;
    ASSERT_NE(r.out.find("tokens in "), std::string::npos) << r.out;
    ASSERT_NE(r.out.find(" s on 2 threads: "), std::string::npos) << r.out;  // the rate line
    nlohmann::json cfg = nlohmann::json::parse(read("tests/data/tiny-train/model/config.json"));
    cfg["vocab_size"] = 2048;
    std::ofstream(*dir_ + "/config.json") << cfg.dump(1);
  }
  static void TearDownTestSuite() { delete dir_; }

  static std::string train_args(const std::string& out, const std::string& batch = " --batch 2") {
    return "train --config " + *dir_ + "/config.json --data " + *dir_ + "/data --out " + out + batch +
           " --steps 6 --seq-len 16 --lr 1e-2 --warmup 2 --min-lr 1e-3 --val-every 2 --save-every 2 --seed 3";
  }
  static std::string* dir_;
};
std::string* TrainCommand::dir_ = nullptr;

TEST_F(TrainCommand, ManifestDescribesTheSplit) {
  const nlohmann::json m = nlohmann::json::parse(read(*dir_ + "/data/manifest.json"));
  EXPECT_EQ(m["vocab_size"], 2048);
  EXPECT_EQ(m["eos_id"], 1);
  int64_t train_docs = 0, val_docs = 0;
  for (const auto& s : m["train"]) train_docs += s["documents"].get<int64_t>();
  for (const auto& s : m["val"]) val_docs += s["documents"].get<int64_t>();
  EXPECT_EQ(train_docs, 16);
  EXPECT_EQ(val_docs, 4);
}

std::vector<nlohmann::json> step_lines(const std::string& text) {
  std::vector<nlohmann::json> out;
  for (const auto& j : json_lines(text))
    if (j.contains("loss") || j.contains("val_loss")) out.push_back(j);
  return out;
}

void expect_same_lines(const std::vector<nlohmann::json>& got, const std::vector<nlohmann::json>& want) {
  ASSERT_EQ(got.size(), want.size());
  for (size_t i = 0; i < want.size(); ++i)
    for (const char* key : {"step", "loss", "main_ce", "mtp_ce", "seq_aux", "grad_norm", "clip_scale", "lr", "maxvio",
                            "val_loss", "val_main_ce", "val_mtp_ce", "val_maxvio", "val_maxvio_batch"})
      if (want[i].contains(key)) {
        EXPECT_EQ(got[i].at(key), want[i].at(key)) << "line " << i << " " << key;  // exact: the same doubles
      }
}

TEST_F(TrainCommand, ResumeContinuesBitForBit) {
  const std::string a = *dir_ + "/straight", b = *dir_ + "/split";
  const Result straight = test::run_moe(train_args(a));
  ASSERT_EQ(straight.code, 0) << straight.out;
  const Result first = test::run_moe(train_args(b) + " --stop-after 3");
  ASSERT_EQ(first.code, 0) << first.out;
  EXPECT_EQ(read(b + "/latest"), "step-00000003\n");
  // A crash while writing the next checkpoint leaves a partial temp dir; latest still names step 3.
  fs::create_directories(b + "/.tmp-step-00000004");
  std::ofstream(b + "/.tmp-step-00000004/model.safetensors") << "partial";
  const Result second = test::run_moe("train --resume " + b);
  ASSERT_EQ(second.code, 0) << second.out;

  const std::vector<nlohmann::json> want = step_lines(straight.out);
  std::vector<nlohmann::json> got = step_lines(first.out);
  const std::vector<nlohmann::json> rest = step_lines(second.out);
  got.insert(got.end(), rest.begin(), rest.end());
  ASSERT_EQ(want.size(), 9u);  // 6 steps, validation after 2, 4, 6
  expect_same_lines(got, want);
  // The loss went down and the final checkpoints are the same bytes.
  EXPECT_LT(want[7]["loss"].get<double>(), want[0]["loss"].get<double>());
  for (const char* f : {"model.safetensors", "optimizer.safetensors", "train_state.json"})
    EXPECT_TRUE(read(a + "/step-00000006/" + f) == read(b + "/step-00000006/" + f)) << f;
  EXPECT_FALSE(fs::exists(b + "/.tmp-step-00000004"));
  // Resuming an earlier checkpoint into the same directory replaces steps 4 and 6 (atomically) with the same bytes.
  const std::string before = read(a + "/step-00000006/model.safetensors");
  const Result again = test::run_moe("train --resume " + a + "/step-00000002");
  ASSERT_EQ(again.code, 0) << again.out;
  EXPECT_TRUE(read(a + "/step-00000006/model.safetensors") == before);
  EXPECT_EQ(read(a + "/latest"), "step-00000006\n");
  for (const auto& e : fs::directory_iterator(a)) EXPECT_EQ(e.path().filename().string().rfind(".tmp", 0), std::string::npos);

  // The checkpoint is a hub checkpoint: config.json, safetensors and the tokenizer; `moe generate` runs it.
  for (const char* f : {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"})
    EXPECT_TRUE(fs::exists(a + "/step-00000006/" + f)) << f;
  const Result gen = test::run_moe("generate --model " + a + "/step-00000006 --prompt \"experts route\" --max-new-tokens 4");
  EXPECT_EQ(gen.code, 0) << gen.out;
}

// With a BF16 model file the F32 masters travel in optimizer.safetensors, so resume is still exact.
TEST_F(TrainCommand, ResumeFromBf16CheckpointIsExact) {
  const std::string a = *dir_ + "/bf16-straight", b = *dir_ + "/bf16-split";
  const Result straight = test::run_moe(train_args(a) + " --save-dtype bf16");
  ASSERT_EQ(straight.code, 0) << straight.out;
  const Result first = test::run_moe(train_args(b) + " --save-dtype bf16 --stop-after 2");
  ASSERT_EQ(first.code, 0) << first.out;
  const Result second = test::run_moe("train --resume " + b + "/step-00000002");
  ASSERT_EQ(second.code, 0) << second.out;
  std::vector<nlohmann::json> got = step_lines(first.out);
  const std::vector<nlohmann::json> rest = step_lines(second.out);
  got.insert(got.end(), rest.begin(), rest.end());
  expect_same_lines(got, step_lines(straight.out));
  const nlohmann::json header = [&] {
    const std::string bytes = read(a + "/step-00000006/model.safetensors");
    uint64_t n = 0;
    std::memcpy(&n, bytes.data(), 8);
    return nlohmann::json::parse(bytes.substr(8, n));
  }();
  EXPECT_EQ(header["model.embed_tokens.weight"]["dtype"], "BF16");
  EXPECT_EQ(header["model.layers.1.mlp.gate.e_score_correction_bias"]["dtype"], "F32");
}

// --init takes a hub checkpoint (here one that train wrote) and trains on from its weights with fresh moments.
// --moments bf16 (DeepSeek-V3's BF16 AdamW moments): the recipe keeps it, so a resumed run repeats the straight
// one's lines exactly; the checkpoint's moments stay F32 tensors holding BF16 values (the low 16 bits zero, not
// all zero: the moments moved); a bad value is an error naming the flag.
TEST_F(TrainCommand, Bf16MomentsResumeExactlyAndAreStoredAsBf16Values) {
  const std::string a = *dir_ + "/m16-straight", b = *dir_ + "/m16-split";
  const Result straight = test::run_moe(train_args(a) + " --moments bf16");
  ASSERT_EQ(straight.code, 0) << straight.out;
  const Result first = test::run_moe(train_args(b) + " --moments bf16 --stop-after 2");
  ASSERT_EQ(first.code, 0) << first.out;
  const Result second = test::run_moe("train --resume " + b + "/step-00000002");
  ASSERT_EQ(second.code, 0) << second.out;
  std::vector<nlohmann::json> got = step_lines(first.out);
  const std::vector<nlohmann::json> rest = step_lines(second.out);
  got.insert(got.end(), rest.begin(), rest.end());
  expect_same_lines(got, step_lines(straight.out));
  const Result f32 = test::run_moe(train_args(*dir_ + "/m32"));  // the default: FP32 moments, other losses
  ASSERT_EQ(f32.code, 0) << f32.out;
  EXPECT_NE(step_lines(f32.out).back().dump(), step_lines(straight.out).back().dump());
  const std::string bytes = read(a + "/step-00000006/optimizer.safetensors");
  uint64_t n = 0;
  std::memcpy(&n, bytes.data(), 8);
  const nlohmann::json header = nlohmann::json::parse(bytes.substr(8, n));
  size_t moments = 0, nonzero = 0;
  for (const auto& [name, t] : header.items()) {
    if (name.rfind("m.", 0) != 0 && name.rfind("v.", 0) != 0) continue;
    ASSERT_EQ(t["dtype"], "F32") << name;
    const uint64_t lo = t["data_offsets"][0].get<uint64_t>(), hi = t["data_offsets"][1].get<uint64_t>();
    for (uint64_t o = lo; o < hi; o += 4) {
      uint32_t bits = 0;
      std::memcpy(&bits, bytes.data() + 8 + n + o, 4);
      ASSERT_EQ(bits & 0xffffu, 0u) << name << " at byte " << o << " is not a BF16 value";
      nonzero += bits != 0;
      ++moments;
    }
  }
  EXPECT_GT(moments, size_t(1000));
  EXPECT_GT(nonzero, moments / 2);
  const Result bad = test::run_moe(train_args(*dir_ + "/m-bad") + " --moments f16");
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("train: --moments is f32 or bf16, not f16"), std::string::npos) << bad.out;
}

TEST_F(TrainCommand, InitFromHubCheckpoint) {
  const std::string a = *dir_ + "/init-src", b = *dir_ + "/init-dst";
  Result r = test::run_moe(train_args(a) + " --stop-after 2");
  ASSERT_EQ(r.code, 0) << r.out;
  r = test::run_moe("train --init " + a + "/step-00000002 --data " + *dir_ + "/data --out " + b +
          " --steps 2 --seq-len 16 --batch 2 --lr 1e-3");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto lines = step_lines(r.out);
  ASSERT_EQ(lines.size(), 2u);
  const auto fresh = step_lines(test::run_moe(train_args(*dir_ + "/init-fresh") + " --stop-after 1").out);
  // Trained weights fit the data better than a fresh initialisation.
  EXPECT_LT(lines[0]["loss"].get<double>(), fresh[0]["loss"].get<double>());
  EXPECT_TRUE(fs::exists(b + "/step-00000002/tokenizer.json"));
}

// A process that dies while writing checkpoint 4 leaves checkpoint 2 as latest, intact: resuming it gives the
// straight run's losses.
TEST_F(TrainCommand, CrashWhileSavingKeepsThePreviousCheckpoint) {
  const std::string a = *dir_ + "/crash-straight", b = *dir_ + "/crash";
  const Result straight = test::run_moe(train_args(a));
  ASSERT_EQ(straight.code, 0) << straight.out;
  const Result crashed = test::run_moe(train_args(b) + " --fault-crash-save 4");
  EXPECT_EQ(crashed.code, 3) << crashed.out;
  EXPECT_EQ(read(b + "/latest"), "step-00000002\n");
  EXPECT_FALSE(fs::exists(b + "/step-00000004"));
  EXPECT_TRUE(fs::exists(b + "/.tmp-step-00000004/model.safetensors"));
  const Result resumed = test::run_moe("train --resume " + b);
  ASSERT_EQ(resumed.code, 0) << resumed.out;
  std::vector<nlohmann::json> got = step_lines(crashed.out), want = step_lines(straight.out);
  got.resize(3);  // steps 1, 2 and validation 2 (steps 3, 4 ran but their checkpoint died)
  const auto rest = step_lines(resumed.out);
  got.insert(got.end(), rest.begin(), rest.end());
  expect_same_lines(got, want);
  EXPECT_TRUE(read(a + "/step-00000006/model.safetensors") == read(b + "/step-00000006/model.safetensors"));
}

// --micro-batch 2 of --batch 4: two forward/backwards summed into one step, the same data in the same order as
// one batch of 4. The gradients differ only in float32 rounding (GradAccumulation.MicroBatchesEqualTheWholeBatch:
// ~1e-7 relative), which three AdamW steps at lr 1e-2 carry into the losses at well under 1e-5 relative.
TEST_F(TrainCommand, AccumulatedMicroBatchesEqualTheWholeBatch) {
  const std::string base = "train --config " + *dir_ + "/config.json --data " + *dir_ + "/data --steps 3 --seq-len 16 "
                           "--batch 4 --lr 1e-2 --seed 3 --out " + *dir_;
  const Result whole = test::run_moe(base + "/acc-whole");
  ASSERT_EQ(whole.code, 0) << whole.out;
  const Result acc = test::run_moe(base + "/acc-micro --micro-batch 2");
  ASSERT_EQ(acc.code, 0) << acc.out;
  const auto want = step_lines(whole.out), got = step_lines(acc.out);
  ASSERT_EQ(want.size(), 3u);
  ASSERT_EQ(got.size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    for (const char* key : {"loss", "main_ce", "mtp_ce", "grad_norm"}) {
      const double w = want[i][key].get<double>(), g = got[i][key].get<double>();
      EXPECT_NEAR(g, w, 1e-5 * std::abs(w)) << "step " << i + 1 << " " << key;
    }
    EXPECT_EQ(got[i]["batch"], 4);
    EXPECT_EQ(got[i]["maxvio"], want[i]["maxvio"]);  // summed loads: the same counts
  }
}

// The batch ramp: 2 sequences a step growing to 4 over the first 64 tokens (in micro-batches of 2): steps 1-2 at
// 2 (2 + floor(2 * 32 / 64) = 3 rounds down to 2), then 4. Resuming in the middle of the ramp replays it exactly.
TEST_F(TrainCommand, BatchRampGrowsAndResumesExactly) {
  const std::string args = " --batch 4 --micro-batch 2 --batch-ramp-start 2 --batch-ramp-tokens 64";
  const std::string a = *dir_ + "/ramp-straight", b = *dir_ + "/ramp-split";
  const Result straight = test::run_moe(train_args(a, args));
  ASSERT_EQ(straight.code, 0) << straight.out;
  std::vector<int64_t> batches, tokens;
  for (const auto& j : step_lines(straight.out))
    if (j.contains("batch")) batches.push_back(j["batch"]), tokens.push_back(j["tokens"]);
  EXPECT_EQ(batches, (std::vector<int64_t>{2, 2, 4, 4, 4, 4}));
  EXPECT_EQ(tokens, (std::vector<int64_t>{32, 64, 128, 192, 256, 320}));
  const Result first = test::run_moe(train_args(b, args) + " --stop-after 1");
  ASSERT_EQ(first.code, 0) << first.out;
  const Result second = test::run_moe("train --resume " + b);
  ASSERT_EQ(second.code, 0) << second.out;
  std::vector<nlohmann::json> got = step_lines(first.out);
  const auto rest = step_lines(second.out);
  got.insert(got.end(), rest.begin(), rest.end());
  expect_same_lines(got, step_lines(straight.out));
  // A ramp that the micro-batch does not divide is refused, naming the flags.
  const Result bad = test::run_moe(train_args(*dir_ + "/ramp-bad", " --batch 4 --micro-batch 2 --batch-ramp-start 3 "
                                   "--batch-ramp-tokens 64"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("--batch-ramp-start 3 must be in [1, --batch 4] and a multiple of --micro-batch 2"),
            std::string::npos) << bad.out;
}

// SFT end to end: conversations through tokenize-corpus --sft (manifest "sft", mask files) into moe train, whose
// loss (over the assistant turns only) falls on this repetitive data.
TEST_F(TrainCommand, SftDataTrainsOnTheAssistantTurns) {
  const std::string in = *dir_ + "/chats.jsonl";
  {
    std::ofstream f(in);
    for (int i = 0; i < 12; ++i)
      f << nlohmann::json{{"messages", {{{"role", "user"}, {"content", "Which expert routes token " + std::to_string(i) + "?"}},
                                        {{"role", "assistant"}, {"content", "The router picks experts by score."}}}}}
               .dump()
        << "\n";
  }
  Result r = test::run_moe("tokenize-corpus --sft --tokenizer " + test::kTinyModel + " --out " + *dir_ + "/sft " + in);
  ASSERT_EQ(r.code, 0) << r.out;
  EXPECT_TRUE(nlohmann::json::parse(read(*dir_ + "/sft/manifest.json"))["sft"].get<bool>());
  EXPECT_TRUE(fs::exists(*dir_ + "/sft/train-00000.bin.mask"));
  r = test::run_moe("train --config " + *dir_ + "/config.json --data " + *dir_ + "/sft --out " + *dir_ +
                    "/sft-run --steps 8 --seq-len 32 --batch 2 --lr 1e-2 --seed 3");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto lines = step_lines(r.out);
  ASSERT_EQ(lines.size(), 8u);
  EXPECT_LT(lines[7]["main_ce"].get<double>(), lines[0]["main_ce"].get<double>() - 1.0) << r.out;  // 7.6 -> 5.4 nats
  // Plain text is not SFT input: the file is named.
  r = test::run_moe("tokenize-corpus --sft --tokenizer " + test::kTinyModel + " --out " + *dir_ + "/sft-bad " + *dir_ +
                    "/in/doc0.txt");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(*dir_ + "/in/doc0.txt: --sft takes JSONL files"), std::string::npos) << r.out;
}

// The GEMMs and attention split outputs over threads, never a sum: 1 or 3 threads give the same bits.
TEST_F(TrainCommand, ThreadCountDoesNotChangeTheBits) {
  const std::string a = *dir_ + "/threads-1", b = *dir_ + "/threads-3";
  const Result one = test::run_moe(train_args(a) + " --threads 1 --stop-after 2");
  ASSERT_EQ(one.code, 0) << one.out;
  const Result three = test::run_moe(train_args(b) + " --threads 3 --stop-after 2");
  ASSERT_EQ(three.code, 0) << three.out;
  expect_same_lines(step_lines(three.out), step_lines(one.out));
  EXPECT_TRUE(read(a + "/step-00000002/model.safetensors") == read(b + "/step-00000002/model.safetensors"));
}

// train-bench reports one run's rates (what they are is bench/RESULTS.md's business, not a test's).
TEST(TrainBench, ReportsTokensPerSecondAndTheGemmFraction) {
  const Result r = test::run_moe("train-bench --config tests/data/tiny-train/model/config.json --seq-len 8 --batch 2 "
                                 "--steps 1 --threads 1");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto lines = json_lines(r.out);
  ASSERT_EQ(lines.size(), 1u) << r.out;
  const auto& j = lines[0];
  EXPECT_EQ(j["threads"], 1);
  EXPECT_EQ(j["tokens_per_step"], 16);
  for (const char* key : {"tokens_per_s", "flops_per_token", "train_gflops", "gemm_gflops", "fraction_of_gemm"})
    EXPECT_GT(j[key].get<double>(), 0) << key;
  EXPECT_NEAR(j["fraction_of_gemm"].get<double>(), j["train_gflops"].get<double>() / j["gemm_gflops"].get<double>(),
              1e-12);
  // Two micro-batches of one sequence accumulated into each optimiser step: the same tokens per step.
  const Result acc = test::run_moe("train-bench --config tests/data/tiny-train/model/config.json --seq-len 8 --batch 2 "
                                   "--micro-batch 1 --steps 1 --threads 1");
  ASSERT_EQ(acc.code, 0) << acc.out;
  EXPECT_EQ(json_lines(acc.out).at(0)["tokens_per_step"], 16);
  EXPECT_EQ(json_lines(acc.out).at(0)["micro_batches"], 2);
  EXPECT_EQ(j["micro_batches"], 1);
  const Result bad = test::run_moe("train-bench --config " + test::temp_path("no-such-config.json"));
  EXPECT_EQ(bad.code, 1);
  EXPECT_NE(bad.out.find("no-such-config.json: cannot open"), std::string::npos) << bad.out;
}

// The device-resident GPU step trains data-parallel (--dp N) but keeps whole tensors: --device cuda with --ep or
// --zero 1/2/3 is refused up front (before any rank starts or any GPU is looked for), naming what it runs with.
TEST(TrainDevice, CudaWithShardedStateOrExpertParallelismIsRefused) {
  for (const char* flags : {"--ep", "--dp 2 --ep", "--dp 2 --zero 1", "--zero 3"}) {
    const Result r = test::run_moe(std::string("train --device cuda ") + flags +
                                   " --config tests/data/tiny-train/model/config.json --data " +
                                   test::temp_path("no-data") + " --out " + test::temp_path("no-out"));
    EXPECT_EQ(r.code, 1) << flags;
    EXPECT_NE(r.out.find("with --zero 0 and without --ep"), std::string::npos) << flags << "\n" << r.out;
  }
}

// --check-finite is the CUDA trainer's: with the CPU trainer it is an error naming it, before any data is read.
TEST(TrainDevice, CheckFiniteOnTheCpuIsRefused) {
  const Result r = test::run_moe("train --device cpu --check-finite --config tests/data/tiny-train/model/config.json "
                                 "--data " + test::temp_path("no-data") + " --out " + test::temp_path("no-out"));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("--expert-gemm, --attention, --head, --fp8-expert-weights and --check-finite are for "
                       "--device cuda"),
            std::string::npos)
      << r.out;
}

// --device names the trainer's device; a wrong one is an error naming the flag (train and train-bench share it).
TEST(TrainBench, DeviceFlagErrorsNameTheFlag) {
  const std::string base = "train-bench --config tests/data/tiny-train/model/config.json --seq-len 8 --batch 2 --steps 1";
  const Result bogus = test::run_moe(base + " --device tpu");
  EXPECT_EQ(bogus.code, 1);
  EXPECT_NE(bogus.out.find("--device must be cpu or cuda, not 'tpu'"), std::string::npos) << bogus.out;
  const Result gemm = test::run_moe(base + " --device cuda --gemm fp16");
  EXPECT_EQ(gemm.code, 1);
  EXPECT_NE(gemm.out.find("--gemm must be bf16, fp8 or fp32, not 'fp16'"), std::string::npos) << gemm.out;
  const Result moments = test::run_moe(base + " --moments fp8");
  EXPECT_EQ(moments.code, 1);
  EXPECT_NE(moments.out.find("train-bench: --moments is f32 or bf16, not fp8"), std::string::npos) << moments.out;
  const Result experts = test::run_moe(base + " --device cuda --expert-gemm batched");
  EXPECT_EQ(experts.code, 1);
  EXPECT_NE(experts.out.find("--expert-gemm must be grouped or loop, not 'batched'"), std::string::npos) << experts.out;
  const Result attention = test::run_moe(base + " --device cuda --attention fp16");
  EXPECT_EQ(attention.code, 1);
  EXPECT_NE(attention.out.find("--attention must be fp32, tf32, bf16 or flash, not 'fp16'"), std::string::npos)
      << attention.out;
  const Result head = test::run_moe(base + " --device cuda --head fp8");
  EXPECT_EQ(head.code, 1);
  EXPECT_NE(head.out.find("--head must be fp32 or bf16, not 'fp8'"), std::string::npos) << head.out;
  for (const char* bad : {"backward", "-2", "3x", "1.5"}) {
    const Result layouts = test::run_moe(base + " --device cuda --gemm fp8 --fp8-expert-weights " + bad);
    EXPECT_EQ(layouts.code, 1) << bad;
    EXPECT_NE(
        layouts.out.find(std::string("--fp8-expert-weights must be both, forward or a number of layers (0 or "
                                     "more), not '") +
                         bad + "'"),
        std::string::npos)
        << layouts.out;
  }
  // The CUDA trainer's choices with the CPU trainer: refused, not silently ignored.
  for (const char* flag : {"--attention bf16", "--attention flash", "--head bf16", "--expert-gemm grouped",
                           "--fp8-expert-weights forward", "--fp8-expert-weights 3"}) {
    const Result r = test::run_moe(base + " --device cpu " + flag);
    EXPECT_EQ(r.code, 1) << flag;
    EXPECT_NE(r.out.find("--expert-gemm, --attention, --head, --fp8-expert-weights and --check-finite are "
                         "for --device cuda"),
              std::string::npos)
        << flag << ": " << r.out;
  }
  const Result micro = test::run_moe(base + " --micro-batch 3");
  EXPECT_EQ(micro.code, 1);
  EXPECT_NE(micro.out.find("train-bench: --batch 2 is not a multiple of --micro-batch 3"), std::string::npos)
      << micro.out;
  const Result cpu = test::run_moe(base + " --device cpu --threads 1 --moments bf16");
  ASSERT_EQ(cpu.code, 0) << cpu.out;
  EXPECT_EQ(json_lines(cpu.out).at(0)["moments"], "bf16");
  EXPECT_EQ(json_lines(cpu.out).at(0)["device"], "cpu");
  // cuda: without CUDA in the build or a GPU in the machine, a clear error; with both, a run on the GPU.
  const Result cuda = test::run_moe(base + " --device cuda");
  if (cuda.code != 0)
    EXPECT_NE(cuda.out.find("--device cuda: "), std::string::npos) << cuda.out;
  else
    EXPECT_EQ(json_lines(cuda.out).at(0)["device"].get<std::string>().rfind("cuda: ", 0), 0u) << cuda.out;
}

TEST_F(TrainCommand, NanLossStopsKeepingTheLastGoodCheckpoint) {
  const std::string c = *dir_ + "/nan";
  const Result r = test::run_moe(train_args(c) + " --fault-nan-step 3");
  EXPECT_EQ(r.code, 1) << r.out;
  EXPECT_NE(r.out.find("moe: error: train: the loss is nan at step 3; stopped without updating. The last good "
                       "checkpoint is " + c + "/step-00000002"),
            std::string::npos)
      << r.out;
  EXPECT_EQ(read(c + "/latest"), "step-00000002\n");
  EXPECT_FALSE(fs::exists(c + "/step-00000003"));
  // ... and that checkpoint resumes.
  const Result resumed = test::run_moe("train --resume " + c + "/step-00000002 --out " + c);
  EXPECT_EQ(resumed.code, 0) << resumed.out;
}

TEST_F(TrainCommand, BadInputNamesTheFile) {
  Result r = test::run_moe("train --resume " + *dir_ + "/nowhere");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(*dir_ + "/nowhere: not a training checkpoint"), std::string::npos) << r.out;
  r = test::run_moe("train --config " + *dir_ + "/config.json --data " + *dir_ + "/in --out " + *dir_ + "/bad");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(*dir_ + "/in/manifest.json: cannot open"), std::string::npos) << r.out;
  r = test::run_moe("train --config tests/data/tiny-train/model/config.json --data " + *dir_ + "/data --out " + *dir_ + "/bad");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("is larger than the model's vocab_size (512)"), std::string::npos) << r.out;
  // A run to misuse: a fresh run into its --out, recipe flags on resume, data changed under it.
  const std::string run = *dir_ + "/misuse";
  r = test::run_moe(train_args(run) + " --stop-after 1");
  ASSERT_EQ(r.code, 0) << r.out;
  r = test::run_moe(train_args(run));
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(run + ": already holds a run (latest); continue it with --resume"), std::string::npos) << r.out;
  r = test::run_moe("train --resume " + run + " --lr 1");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find("train: --lr cannot change on --resume: the recipe is " + run + "/step-00000001/train_state.json"),
            std::string::npos) << r.out;
  fs::copy(*dir_ + "/data", *dir_ + "/data2");
  std::ofstream(*dir_ + "/data2/manifest.json", std::ios::app) << "\n";
  r = test::run_moe("train --resume " + run + " --data " + *dir_ + "/data2");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(*dir_ + "/data2/manifest.json: the data changed since the checkpoint"), std::string::npos)
      << r.out;
  r = test::run_moe("train --resume " + run + " --steps 2");  // --steps may change: the run is extended or shortened
  EXPECT_EQ(r.code, 0) << r.out;
  EXPECT_EQ(step_lines(r.out).size(), 2u);  // step 2 and its validation

  // A config the trainer cannot train names the config; a shard that disagrees with its manifest names the shard.
  nlohmann::json tied = nlohmann::json::parse(read(*dir_ + "/config.json"));
  tied["tie_word_embeddings"] = true;
  std::ofstream(*dir_ + "/tied.json") << tied.dump();
  r = test::run_moe("train --config " + *dir_ + "/tied.json --data " + *dir_ + "/data --out " + *dir_ + "/tied");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(*dir_ + "/tied.json: tied embeddings are not supported by the trainer"), std::string::npos)
      << r.out;
  fs::copy(*dir_ + "/data", *dir_ + "/data-cut");
  fs::resize_file(*dir_ + "/data-cut/train-00000.bin", fs::file_size(*dir_ + "/data-cut/train-00000.bin") - 4);
  r = test::run_moe("train --config " + *dir_ + "/config.json --data " + *dir_ + "/data-cut --out " + *dir_ + "/cut");
  EXPECT_EQ(r.code, 1);
  EXPECT_NE(r.out.find(*dir_ + "/data-cut/train-00000.bin: corrupt"), std::string::npos) << r.out;

  for (const char* threads : {"1", "3"}) {
    r = test::run_moe("tokenize-corpus --threads " + std::string(threads) + " --tokenizer " + test::kTinyModel +
                      " --out " + *dir_ + "/bad " + *dir_ + "/missing.txt");
    EXPECT_EQ(r.code, 1);
    EXPECT_NE(r.out.find(*dir_ + "/missing.txt: cannot open"), std::string::npos) << r.out;
  }
}

}  // namespace
}  // namespace moe
