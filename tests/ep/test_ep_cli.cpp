// `mpirun -np N moe logits|generate ... --ep N` on CPU ranks against the same command in one process: logits
// bit-identical without redundant experts (see test_expert_parallel.cpp for why), within 1e-5 relative with them,
// greedy continuations identical; and the errors for a wrong launch. Launched through tests/dist/mpirun.sh (the
// dist tests' flags: oversubscribe, shared memory only, root only when root).
#include <gtest/gtest.h>

#include <httplib.h>
#include <signal.h>
#include <unistd.h>

#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>
#include <tuple>

#include "cli/run_moe.h"
#include "ep/ep_test_util.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace moe {
namespace {

using test::max_rel_diff;

test::MoeResult run_mpi(int np, const std::string& args, bool with_stderr = true) {
  const std::string cmd = std::string(MOE_MPIRUN) + " " + std::to_string(np) + " " + MOE_BINARY + " " + args +
                          (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  test::MoeResult r{-1, ""};
  if (!p) return r;
  char buf[4096];
  size_t n;
  while ((n = fread(buf, 1, sizeof buf, p)) > 0) r.out.append(buf, n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

std::vector<float> read_logits(const std::string& path) {
  SafetensorsFile f(path);
  const SafetensorsEntry* e = f.find("logits");
  if (!e) return {};
  const TensorView v = f.view(*e);
  return {v.as<const float>(), v.as<const float>() + v.numel()};
}

std::string prompt_ids() {
  const std::vector<int32_t> ids = test::load_reference_cases().at(1).input_ids;  // a copy: the cases are temporary
  std::string s;
  for (int32_t t : ids) s += (s.empty() ? "" : ",") + std::to_string(t);
  return s;
}

struct Case {
  std::string model;
  int np, redundant;
  bool tbo = false;
  bool all_reduce = false;  // --ep-all-reduce
};
class EpCli : public ::testing::TestWithParam<Case> {};

TEST_P(EpCli, LogitsAndGreedyMatchOneProcess) {
  const Case c = GetParam();
  const std::string tokens = prompt_ids(), one = test::temp_path("one.safetensors"),
                    many = test::temp_path("many.safetensors");
  const std::string common = "--model " + c.model + " --tokens " + tokens + " --threads 1";
  auto r = test::run_moe("logits " + common + " --out " + one);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::string ep = " --ep " + std::to_string(c.np) + " --redundant-experts " + std::to_string(c.redundant);
  r = run_mpi(c.np, "logits " + common + " --out " + many + ep);
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<float> a = read_logits(many), b = read_logits(one);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_FALSE(a.empty());
  const double rel = max_rel_diff(a, b);
  if (c.redundant == 0)
    EXPECT_EQ(rel, 0.0);
  else
    EXPECT_LE(rel, 1e-5);
  RecordProperty("max_rel_diff", std::to_string(rel));

  const std::string gen = "generate " + common + " --max-new-tokens 8";
  const auto g1 = test::run_moe(gen, /*with_stderr=*/false);
  ASSERT_EQ(g1.code, 0);
  const auto gn = run_mpi(c.np, gen + ep, /*with_stderr=*/false);
  ASSERT_EQ(gn.code, 0) << gn.out;
  EXPECT_EQ(gn.out, g1.out) << "only rank 0 prints, the same tokens";
  std::remove(one.c_str());
  std::remove(many.c_str());
}

// Replicated expert parallelism runs the MTP drafting passes on every rank alike (same generation), so `generate
// --speculative` works with --ep: the same tokens as one process. (`serve --speculative --ep` is refused: the
// followers replay only the main model's steps; docs/distributed.md.)
TEST(EpCliSpeculative, GenerateReplicatedMatchesOneProcess) {
  const std::string gen = "generate --model " + test::kTinyModel + " --tokens " + prompt_ids() +
                          " --threads 1 --max-new-tokens 8 --speculative";
  const auto one = test::run_moe(gen, /*with_stderr=*/false);
  ASSERT_EQ(one.code, 0) << one.out;
  const auto two = run_mpi(2, gen + " --ep 2", /*with_stderr=*/false);
  ASSERT_EQ(two.code, 0) << two.out;
  EXPECT_EQ(two.out, one.out);
  EXPECT_FALSE(one.out.empty());
}

// --ep-shared-routed: the shared expert as a routed one in decode steps (its copies on every rank here), so
// `generate`'s steps after the prefill take it; the printed tokens equal one process's (the logits move by F32
// summation order only: test_shared_routed.cpp).
TEST(EpCliShared, GenerateMatchesOneProcess) {
  for (auto [model, np, redundant] : {std::tuple{test::kTinyModel, 2, 1}, std::tuple{test::kTinyModelFp8, 4, 3}}) {
    const std::string gen = "generate --model " + model + " --tokens " + prompt_ids() + " --threads 1 --max-new-tokens 8";
    const auto one = test::run_moe(gen, /*with_stderr=*/false);
    ASSERT_EQ(one.code, 0) << one.out;
    const auto many = run_mpi(np, gen + " --ep " + std::to_string(np) + " --ep-shared-routed --redundant-experts " +
                                      std::to_string(redundant),
                              /*with_stderr=*/false);
    ASSERT_EQ(many.code, 0) << many.out;
    EXPECT_EQ(many.out, one.out) << model << ", " << np << " ranks";
    EXPECT_FALSE(one.out.empty());
  }
}

// --ep-all-reduce: each rank its experts' share of every token, summed by one all-reduce a layer; logits within
// the 1e-5 of the other modes (F32 summation order only: test_ep_all_reduce.cpp), generate's tokens identical.
TEST(EpCliAllReduce, LogitsAndGenerateMatchOneProcess) {
  const std::string tokens = prompt_ids(), one = test::temp_path("ar-one.safetensors"),
                    many = test::temp_path("ar-many.safetensors");
  for (auto [model, np, redundant] : {std::tuple{test::kTinyModel, 2, 0}, std::tuple{test::kTinyModelFp8, 4, 4}}) {
    const std::string common = "--model " + model + " --tokens " + tokens + " --threads 1";
    auto r = test::run_moe("logits " + common + " --out " + one);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string ep = " --ep " + std::to_string(np) + " --ep-all-reduce --redundant-experts " +
                           std::to_string(redundant);
    r = run_mpi(np, "logits " + common + " --out " + many + ep);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<float> a = read_logits(many), b = read_logits(one);
    ASSERT_EQ(a.size(), b.size());
    ASSERT_FALSE(a.empty());
    EXPECT_LE(max_rel_diff(a, b), 1e-5) << model << ", " << np << " ranks";
    const std::string gen = "generate " + common + " --max-new-tokens 8";
    const auto g1 = test::run_moe(gen, /*with_stderr=*/false);
    ASSERT_EQ(g1.code, 0);
    const auto gn = run_mpi(np, gen + ep, /*with_stderr=*/false);
    ASSERT_EQ(gn.code, 0) << gn.out;
    EXPECT_EQ(gn.out, g1.out) << model << ", " << np << " ranks";
  }
  std::remove(one.c_str());
  std::remove(many.c_str());
}

// --ep-fp8-dispatch on the FP8 fixture: logits within the E4M3 bound of test_fp8_dispatch.cpp (relative L2 <=
// sqrt(18) * 2^-4 / sqrt(3)) of one process.
TEST(EpCliFp8Dispatch, LogitsWithinE4m3Bound) {
  const std::string one = test::temp_path("fp8d-one.safetensors"), many = test::temp_path("fp8d-many.safetensors");
  const std::string common = "logits --model " + test::kTinyModelFp8 + " --tokens " + prompt_ids() + " --threads 1";
  auto r = test::run_moe(common + " --out " + one);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_mpi(2, common + " --out " + many + " --ep 2 --ep-fp8-dispatch");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<float> a = read_logits(many), b = read_logits(one);
  ASSERT_EQ(a.size(), b.size());
  double num = 0, den = 0;
  for (size_t i = 0; i < a.size(); ++i) num += (double(a[i]) - b[i]) * (double(a[i]) - b[i]), den += double(b[i]) * b[i];
  const double l2 = std::sqrt(num / den);
  RecordProperty("rel_l2", std::to_string(l2));
  EXPECT_LE(l2, std::sqrt(18.0) * std::ldexp(1.0, -4) / std::sqrt(3.0));
  EXPECT_GT(l2, 0.0) << "FP8 dispatch changed nothing: was it used?";
  std::remove(one.c_str());
  std::remove(many.c_str());
}

INSTANTIATE_TEST_SUITE_P(Mpi, EpCli,
                         ::testing::Values(Case{test::kTinyModel, 2, 0}, Case{test::kTinyModel, 4, 4},
                                           Case{test::kTinyModelFp8, 2, 2}, Case{test::kTinyModelFp8, 4, 0}),
                         [](const auto& info) {
                           return std::string(info.param.model == test::kTinyModel ? "bf16" : "fp8") + "_np" +
                                  std::to_string(info.param.np) + "_redundant" + std::to_string(info.param.redundant);
                         });

// Data-parallel attention: a batch of three sequences of different lengths (`--tokens` with ';'), each on the
// least loaded rank (2 ranks: one and two sequences; 4 ranks: one rank owns none), against the same batch in one
// process. Each rank's dense matmuls see its own row count, which can change the CPU's code path: 1e-5 relative
// (test_dp_attention.cpp); the recorded max_rel_diff says whether it was bitwise.
class DpCli : public ::testing::TestWithParam<Case> {};

TEST_P(DpCli, BatchLogitsMatchOneProcess) {
  const Case c = GetParam();
  const std::vector<int32_t> ids = test::load_reference_cases().at(2).input_ids;
  std::string tokens;
  size_t at = 0;
  for (size_t len : {13, 4, 9}) {
    if (!tokens.empty()) tokens += ";";
    for (size_t i = 0; i < len; ++i, ++at) tokens += (i ? "," : "") + std::to_string(ids[at % ids.size()]);
  }
  const std::string one = test::temp_path("dp_one.safetensors"), many = test::temp_path("dp_many.safetensors");
  const std::string common = "--model " + c.model + " --tokens '" + tokens + "' --threads 1";
  auto r = test::run_moe("logits " + common + " --out " + one);
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_mpi(c.np, "logits " + common + " --out " + many + " --ep " + std::to_string(c.np) +
                        " --dp-attention" + " --redundant-experts " + std::to_string(c.redundant) +
                        (c.tbo ? " --tbo on" : "") + (c.all_reduce ? " --ep-all-reduce" : ""));
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<float> a = read_logits(many), b = read_logits(one);
  ASSERT_EQ(a.size(), b.size());
  ASSERT_EQ(b.size() % 26, 0u);  // 13 + 4 + 9 rows
  const double rel = max_rel_diff(a, b);
  EXPECT_LE(rel, 1e-5);
  RecordProperty("max_rel_diff", std::to_string(rel));
  std::remove(one.c_str());
  std::remove(many.c_str());
}

INSTANTIATE_TEST_SUITE_P(Mpi, DpCli,
                         ::testing::Values(Case{test::kTinyModel, 2, 0}, Case{test::kTinyModel, 4, 4},
                                           Case{test::kTinyModelFp8, 2, 2}, Case{test::kTinyModelFp8, 4, 0},
                                           Case{test::kTinyModel, 2, 0, true},
                                           Case{test::kTinyModelFp8, 4, 4, true},
                                           Case{test::kTinyModel, 4, 4, false, true},
                                           Case{test::kTinyModelFp8, 2, 2, false, true}),
                         [](const auto& info) {
                           return std::string(info.param.model == test::kTinyModel ? "bf16" : "fp8") + "_np" +
                                  std::to_string(info.param.np) + "_redundant" +
                                  std::to_string(info.param.redundant) + (info.param.tbo ? "_tbo" : "") +
                                  (info.param.all_reduce ? "_allreduce" : "");
                         });

// Two-micro-batch overlap on MPI ranks (MPI_Ialltoallv): the step time with it on and off (recorded, not asserted:
// the shared CI VM's timing is noise-prone), and the same logits either way. Four 48-token sequences over 2 ranks,
// the step repeated 8 times (`moe logits --repeat`), medians.
TEST(DpTbo, StepTimeOnAndOff) {
  const std::vector<int32_t> ids = test::load_reference_cases().at(2).input_ids;
  std::string tokens;
  for (int s = 0; s < 4; ++s) {
    if (!tokens.empty()) tokens += ";";
    for (size_t i = 0; i < 48; ++i) tokens += (i ? "," : "") + std::to_string(ids[(i * 7 + size_t(s)) % ids.size()]);
  }
  std::map<std::string, double> median;
  std::map<std::string, std::vector<float>> logits;
  for (const std::string tbo : {"off", "on"}) {
    const std::string out = test::temp_path("tbo_" + tbo + ".safetensors");
    const auto r = run_mpi(2, "logits --model " + test::kTinyModel + " --tokens '" + tokens + "' --threads 1 --out " +
                                  out + " --ep 2 --dp-attention --repeat 8 --tbo " + tbo);
    ASSERT_EQ(r.code, 0) << r.out;
    std::smatch m;
    ASSERT_TRUE(std::regex_search(r.out, m, std::regex("step time: median ([0-9.]+) ms"))) << r.out;
    median[tbo] = std::stod(m[1]);
    logits[tbo] = read_logits(out);
    std::remove(out.c_str());
  }
  ASSERT_FALSE(logits["on"].empty());
  ASSERT_EQ(logits["on"].size(), logits["off"].size());
  const double rel = max_rel_diff(logits["on"], logits["off"]);
  EXPECT_LE(rel, 1e-5);
  RecordProperty("tbo_on_vs_off_max_rel_diff", std::to_string(rel));
  RecordProperty("step_ms_tbo_off", std::to_string(median["off"]));
  RecordProperty("step_ms_tbo_on", std::to_string(median["on"]));
  std::printf("two-micro-batch: step %.3f ms off, %.3f ms on (2 ranks, 192 tokens); on vs off max rel diff %.3g\n",
              median["off"], median["on"], rel);
}

// A `moe serve` started in the background (through the shell, its output in a log file), stopped with SIGTERM.
class BackgroundServer {
 public:
  explicit BackgroundServer(const std::string& command) : log_(test::temp_path("serve" + std::to_string(++n_) + ".log")) {
    const std::string sh = "sh -c 'exec " + command + " >" + log_ + " 2>&1' & echo $!";
    FILE* p = popen(sh.c_str(), "r");
    if (p && fscanf(p, "%d", &pid_) != 1) pid_ = 0;
    if (p) pclose(p);
  }
  ~BackgroundServer() {
    if (pid_ > 0) kill(pid_, SIGTERM);
    for (int i = 0; i < 100 && pid_ > 0 && kill(pid_, 0) == 0; ++i)
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    std::remove(log_.c_str());
  }
  // The port once the server says it is ready (0 after 60 s).
  int wait_ready() {
    const std::regex listening("listening on http://[^:]+:([0-9]+)");
    for (int i = 0; i < 600; ++i) {
      const std::string text = log();
      std::smatch m;
      if (text.find("ready:") != std::string::npos && std::regex_search(text, m, listening)) return std::stoi(m[1]);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return 0;
  }
  std::string log() const {
    std::ifstream f(log_);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }

 private:
  static inline int n_ = 0;
  std::string log_;
  int pid_ = 0;
};

// Greedy completions from a server: the text of each prompt, one request at a time and then all at once.
std::vector<std::string> complete(int port, const std::vector<std::string>& prompts) {
  std::vector<std::string> out(prompts.size());
  auto one = [&](size_t i) {
    httplib::Client c("127.0.0.1", port);
    c.set_read_timeout(120);
    const nlohmann::json body = {{"prompt", prompts[i]}, {"max_tokens", 12}, {"temperature", 0}};
    auto r = c.Post("/v1/completions", body.dump(), "application/json");
    out[i] = r && r->status == 200 ? nlohmann::json::parse(r->body)["choices"][0]["text"].get<std::string>()
                                   : "<error " + (r ? std::to_string(r->status) + " " + r->body : "no answer") + ">";
  };
  std::vector<std::thread> threads;
  for (size_t i = 0; i < prompts.size(); ++i) threads.emplace_back(one, i);  // batched by the scheduler
  for (auto& t : threads) t.join();
  return out;
}

TEST(EpServe, AnswersLikeOneRank) {
  const std::vector<std::string> prompts = {"Hello, my name is", "The capital of France", "1, 2, 3,"};
  const std::string serve = std::string(MOE_BINARY) + " serve --model " + test::kTinyModel +
                            " --port 0 --threads 1 --no-access-log --ignore-eos";
  std::vector<std::string> want, got, got_dp, got_ar, got_dp_ar;
  std::string metrics, metrics_dp;
  {
    BackgroundServer one(serve);
    const int port = one.wait_ready();
    ASSERT_NE(port, 0) << one.log();
    want = complete(port, prompts);
  }
  {
    BackgroundServer many(std::string(MOE_MPIRUN) + " 2 " + serve + " --ep 2 --redundant-experts 2 --eplb-interval 4");
    const int port = many.wait_ready();
    ASSERT_NE(port, 0) << many.log();
    got = complete(port, prompts);
    httplib::Client c("127.0.0.1", port);
    auto r = c.Get("/metrics");
    ASSERT_TRUE(r);
    metrics = r->body;
  }
  {
    // Data-parallel attention: the three requests spread over the two ranks' caches.
    BackgroundServer many(std::string(MOE_MPIRUN) + " 2 " + serve +
                          " --ep 2 --dp-attention --redundant-experts 2 --eplb-interval 4");
    const int port = many.wait_ready();
    ASSERT_NE(port, 0) << many.log();
    got_dp = complete(port, prompts);
    httplib::Client c("127.0.0.1", port);
    auto r = c.Get("/metrics");
    ASSERT_TRUE(r);
    metrics_dp = r->body;
  }
  {
    // The all-reduce exchange (no EPLB with it), copies on the ranks.
    BackgroundServer many(std::string(MOE_MPIRUN) + " 2 " + serve + " --ep 2 --ep-all-reduce --redundant-experts 2");
    const int port = many.wait_ready();
    ASSERT_NE(port, 0) << many.log();
    got_ar = complete(port, prompts);
  }
  {
    // The all-reduce exchange with data-parallel attention: rows all-gathered, sums reduce-scattered.
    BackgroundServer many(std::string(MOE_MPIRUN) + " 2 " + serve + " --ep 2 --dp-attention --ep-all-reduce");
    const int port = many.wait_ready();
    ASSERT_NE(port, 0) << many.log();
    got_dp_ar = complete(port, prompts);
  }
  EXPECT_EQ(metrics_dp.find("moe_eplb_rebalances_total 0"), std::string::npos) << "EPLB ran every 4 steps";
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(got[i], want[i]) << prompts[i];
    EXPECT_EQ(got_dp[i], want[i]) << prompts[i] << " (--dp-attention)";
    EXPECT_EQ(got_ar[i], want[i]) << prompts[i] << " (--ep-all-reduce)";
    EXPECT_EQ(got_dp_ar[i], want[i]) << prompts[i] << " (--dp-attention --ep-all-reduce)";
    EXPECT_EQ(want[i].find("<error"), std::string::npos) << want[i];
  }
  EXPECT_NE(metrics.find("moe_ep_ranks 2"), std::string::npos) << metrics;
  EXPECT_NE(metrics.find("moe_expert_tokens_total{layer=\"1\",expert=\"0\"}"), std::string::npos);
  EXPECT_EQ(metrics.find("moe_eplb_rebalances_total 0"), std::string::npos) << "EPLB ran every 4 steps";
}

TEST(EpCliErrors, WrongLaunch) {
  // (By hand, without mpirun, `--ep 2` launches its ranks: tests/dist/test_launcher.cpp.)
  auto r = run_mpi(1, "logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --ep 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("launch it as `mpirun -np 2"), std::string::npos) << r.out;
  r = run_mpi(2, "logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --ep 2 --redundant-experts 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("multiple of the rank count"), std::string::npos) << r.out;
  r = test::run_moe("logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --redundant-experts 2");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("need --ep N"), std::string::npos) << r.out;
  r = test::run_moe("logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --dp-attention");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--tbo on need --ep N"), std::string::npos) << r.out;
  r = test::run_moe("logits --model " + test::kTinyModel + " --tokens '1,2;;3' --out /dev/null");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("sequence 2 is empty"), std::string::npos) << r.out;
  r = test::run_moe("logits --model " + test::kTinyModel + " --tokens '1,2;x' --out /dev/null");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("'x' is not a token id"), std::string::npos) << r.out;
  r = run_mpi(2, "generate --model " + test::kTinyModel + " --tokens 1,2 --ep 2 --dp-attention");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("generate runs one"), std::string::npos) << r.out;
  r = run_mpi(2, "logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --ep 2 --ep-shared-routed "
                 "--dp-attention --redundant-experts 1");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--ep-shared-routed works in the replicated mode only"), std::string::npos) << r.out;
  r = run_mpi(2, "logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --ep 2 --ep-shared-routed");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("cannot be dealt evenly to 2 ranks"), std::string::npos) << r.out;
  r = run_mpi(2, "logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --ep 2 --ep-fp8-dispatch");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--ep-fp8-dispatch is for FP8 experts"), std::string::npos) << r.out;
  r = run_mpi(2, "logits --model " + test::kTinyModel +
                     " --tokens 1,2 --out /dev/null --ep 2 --ep-all-reduce "
                     "--tbo on");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--ep-all-reduce sends no all-to-all rows"), std::string::npos) << r.out;
}

// `serve --ep-all-reduce --eplb-interval N` would rebalance under captured steps: refused, naming why.
TEST(EpCliErrors, AllReduceWithEplbRefused) {
  const auto r =
      run_mpi(2, "serve --model " + test::kTinyModel + " --port 0 --ep 2 --ep-all-reduce --eplb-interval 4");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--ep-all-reduce does not work with --eplb-interval yet"), std::string::npos) << r.out;
}

// `moe serve --random-weights` (issue 13's full-size load test: no files to load): the same greedy completions as
// serving create-random's checkpoint of the same seed, also over two ranks; without --tokenizer it says what to give.
TEST(RandomWeights, ServeAnswersLikeTheWrittenCheckpoint) {
  const std::string dir = test::temp_path("random_serve"), config = test::kTinyModel + "/config.json";
  auto r = test::run_moe("create-random --config " + config + " --out " + dir + " --seed 7");
  ASSERT_EQ(r.code, 0) << r.out;
  const std::vector<std::string> prompts = {"Hello, my name is", "1, 2, 3,"};
  const std::string common = " --tokenizer " + test::kTinyModel + " --port 0 --threads 1 --no-access-log --ignore-eos";
  std::vector<std::string> want, got;
  {
    BackgroundServer disk(std::string(MOE_BINARY) + " serve --model " + dir + common);
    const int port = disk.wait_ready();
    ASSERT_NE(port, 0) << disk.log();
    want = complete(port, prompts);
  }
  {
    BackgroundServer mem(std::string(MOE_MPIRUN) + " 2 " + MOE_BINARY + " serve --model " + config +
                         " --random-weights --random-seed 7 --ep 2" + common);
    const int port = mem.wait_ready();
    ASSERT_NE(port, 0) << mem.log();
    got = complete(port, prompts);
    httplib::Client c("127.0.0.1", port);
    auto m = c.Get("/v1/models");
    ASSERT_TRUE(m);
    EXPECT_NE(m->body.find("\"random-config\""), std::string::npos) << m->body;
  }
  for (size_t i = 0; i < prompts.size(); ++i) {
    EXPECT_EQ(got[i], want[i]) << prompts[i];
    EXPECT_EQ(want[i].find("<error"), std::string::npos) << want[i];
  }
  r = test::run_moe("serve --model " + config + " --random-weights --port 0");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("give --tokenizer DIR"), std::string::npos) << r.out;
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace moe

namespace moe {
namespace {

// --random-weights makes in memory exactly what create-random writes: the logits from the config alone equal those
// of the written checkpoint (bit for bit: same generator, same encoding, same model), BF16 and FP8, one process and
// --ep 2 (each rank making only its experts).
TEST(RandomWeights, SameLogitsAsCreateRandom) {
  for (const std::string dtype : {"bf16", "fp8"}) {
    const std::string dir = test::temp_path("random_" + dtype), disk = dir + "/disk.safetensors",
                      mem = dir + "/mem.safetensors", mem2 = dir + "/mem2.safetensors";
    const std::string config = test::kTinyModel + "/config.json";
    auto r = test::run_moe("create-random --config " + config + " --out " + dir + " --dtype " + dtype + " --seed 7");
    ASSERT_EQ(r.code, 0) << r.out;
    const std::string common = " --tokens 5,17,300,42,9,1000 --threads 1";
    r = test::run_moe("logits --model " + dir + common + " --out " + disk);
    ASSERT_EQ(r.code, 0) << r.out;
    r = test::run_moe("logits --model " + config + " --random-weights --random-dtype " + dtype + " --random-seed 7" +
                      common + " --out " + mem);
    ASSERT_EQ(r.code, 0) << r.out;
    const std::vector<float> a = read_logits(disk), b = read_logits(mem);
    ASSERT_FALSE(a.empty());
    EXPECT_EQ(a, b) << dtype;
    r = run_mpi(2, "logits --model " + config + " --random-weights --random-dtype " + dtype + " --random-seed 7" +
                       common + " --out " + mem2 + " --ep 2");
    ASSERT_EQ(r.code, 0) << r.out;
    EXPECT_EQ(read_logits(mem2), a) << dtype << " --ep 2";
    r = test::run_moe("logits --model " + config + " --random-weights --random-seed 8" + common + " --out " + mem2);
    ASSERT_EQ(r.code, 0) << r.out;
    if (dtype == "bf16") { EXPECT_NE(read_logits(mem2), a) << "another seed, other weights"; }
    std::filesystem::remove_all(dir);
  }
}

}  // namespace
}  // namespace moe
