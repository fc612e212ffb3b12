// The one-command launcher (src/cli/launcher.h) on CPU ranks: `moe logits --ep 2` started by hand gives the
// logits of `mpirun -np 2 moe logits --ep 2` and of one process (bit for bit: the same ranks, the same sums) and
// `moe generate --ep 2` the same printed tokens; `moe serve --ep 2` by hand answers a request like one process
// and stops cleanly on SIGTERM and on SIGINT (every rank gone); rank 1 killed mid-run stops the job within
// seconds with an error naming the rank; `--device cuda --ep 2` in a build without NCCL says so; a missing mpirun
// names its package; and the launcher's two parsers' errors. (`moe train` and `moe train-steps --dp 2` by hand:
// test_dist_cli.)
#include <gtest/gtest.h>

#include <dirent.h>
#include <httplib.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <thread>

#include "cli/launcher.h"
#include "cli/run_moe.h"
#include "core/error.h"
#include "io/safetensors.h"
#include "test_util.h"

namespace moe {
namespace {

using clock_type = std::chrono::steady_clock;

std::vector<float> read_logits(const std::string& path) {
  SafetensorsFile f(path);
  const SafetensorsEntry* e = f.find("logits");
  if (!e) return {};
  const TensorView v = f.view(*e);
  return {v.as<const float>(), v.as<const float>() + v.numel()};
}

test::MoeResult run_mpi(int np, const std::string& args) {
  const std::string cmd = std::string(MPIRUN_SH) + " " + MPIEXEC + " " + std::to_string(np) + " " + MOE_BINARY + " " +
                          args + " 2>&1";
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

TEST(Launcher, LogitsAndGenerateByHandMatchMpirunAndOneProcess) {
  const std::string dir = test::temp_path("launcher-logits");
  std::filesystem::create_directories(dir);
  const std::string common = "logits --model " + test::kTinyModel + " --tokens 5,17,300,42,9,1000,3 --threads 1";
  auto r = test::run_moe(common + " --out " + dir + "/one.safetensors");
  ASSERT_EQ(r.code, 0) << r.out;
  r = run_mpi(2, common + " --ep 2 --out " + dir + "/mpirun.safetensors");
  ASSERT_EQ(r.code, 0) << r.out;
  const auto t0 = clock_type::now();
  r = test::run_moe(common + " --ep 2 --out " + dir + "/hand.safetensors");  // no mpirun: the command launches it
  ASSERT_EQ(r.code, 0) << r.out;
  const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
  const std::vector<float> one = read_logits(dir + "/one.safetensors");
  ASSERT_FALSE(one.empty());
  EXPECT_EQ(read_logits(dir + "/mpirun.safetensors"), one);
  EXPECT_EQ(read_logits(dir + "/hand.safetensors"), one);
  std::printf("moe logits --ep 2 by hand: %.2f s\n", seconds);
  // generate: only rank 0's stdout comes through, the same greedy tokens.
  const std::string gen = "generate --model " + test::kTinyModel + " --tokens 5,17,300 --max-new-tokens 6 --threads 1";
  const auto g1 = test::run_moe(gen, /*with_stderr=*/false), g2 = test::run_moe(gen + " --ep 2", false);
  ASSERT_EQ(g1.code, 0);
  ASSERT_EQ(g2.code, 0);
  EXPECT_FALSE(g1.out.empty());
  EXPECT_EQ(g2.out, g1.out);
  std::filesystem::remove_all(dir);
}

// A command started in the background with its own pid (no shell in between), output to a log file.
class Background {
 public:
  explicit Background(const std::vector<std::string>& args) : log_(test::temp_path("launcher" + std::to_string(++n_) + ".log")) {
    pid_ = fork();
    if (pid_ == 0) {
      std::freopen(log_.c_str(), "w", stdout);
      dup2(fileno(stdout), 2);
      std::vector<char*> av;
      for (const auto& a : args) av.push_back(const_cast<char*>(a.c_str()));
      av.push_back(nullptr);
      execv(av[0], av.data());
      _exit(127);
    }
  }
  ~Background() {
    if (pid_ > 0 && !status_) {
      kill(pid_, SIGKILL);
      waitpid(pid_, nullptr, 0);
    }
    std::remove(log_.c_str());
  }
  pid_t pid() const { return pid_; }
  std::string log() const {
    std::ifstream f(log_);
    return {std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>()};
  }
  int wait_ready() const {  // the port once `moe serve` is ready, 0 after 60 s
    const std::regex listening("listening on http://[^:]+:([0-9]+)");
    for (int i = 0; i < 600; ++i) {
      const std::string text = log();
      std::smatch m;
      if (text.find("ready:") != std::string::npos && std::regex_search(text, m, listening)) return std::stoi(m[1]);
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
    return 0;
  }
  // The exit status once the process ended, within `limit` seconds (nullopt: still running).
  std::optional<int> wait(double limit) {
    const auto end = clock_type::now() + std::chrono::duration<double>(limit);
    while (!status_ && clock_type::now() < end) {
      int st = 0;
      if (waitpid(pid_, &st, WNOHANG) == pid_) status_ = st;
      else std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return status_;
  }

 private:
  static inline int n_ = 0;
  std::string log_;
  pid_t pid_ = -1;
  std::optional<int> status_;
};

// `moe serve --ep 2` by hand; the API key marks its processes' command lines (find_rank).
std::vector<std::string> serve_args(const std::string& key) {
  return {MOE_BINARY, "serve", "--model", test::kTinyModel, "--port", "0", "--threads", "1", "--no-access-log",
          "--ignore-eos", "--ep", "2", "--api-key", key};
}

std::string complete(int port, const std::string& key) {
  httplib::Client c("127.0.0.1", port);
  c.set_read_timeout(120);
  const nlohmann::json body = {{"prompt", "The capital of France"}, {"max_tokens", 8}, {"temperature", 0}};
  auto r = c.Post("/v1/completions", {{"Authorization", "Bearer " + key}}, body.dump(), "application/json");
  if (!r || r->status != 200) return "<error " + (r ? std::to_string(r->status) + " " + r->body : "no answer") + ">";
  return nlohmann::json::parse(r->body)["choices"][0]["text"].get<std::string>();
}

// The pid of the process whose command line holds `marker` and whose environment says it is MPI rank `rank`.
pid_t find_rank(const std::string& marker, int rank) {
  const std::string want = "OMPI_COMM_WORLD_RANK=" + std::to_string(rank);
  DIR* d = opendir("/proc");
  pid_t found = -1;
  while (dirent* e = d ? readdir(d) : nullptr) {
    const std::string name = e->d_name;
    if (name.find_first_not_of("0123456789") != std::string::npos) continue;
    auto slurp = [&](const char* what) {
      std::ifstream f("/proc/" + name + "/" + what, std::ios::binary);
      return std::string(std::istreambuf_iterator<char>(f), std::istreambuf_iterator<char>());
    };
    const std::string cmd = slurp("cmdline");
    if (cmd.find(marker) == std::string::npos) continue;
    const std::string env = slurp("environ");
    if (env.find(want + '\0') != std::string::npos) found = std::stoi(name);
  }
  if (d) closedir(d);
  return found;
}

TEST(Launcher, ServeByHandAnswersAndStopsOnSigterm) {
  std::string want;
  {
    Background one({MOE_BINARY, "serve", "--model", test::kTinyModel, "--port", "0", "--threads", "1",
                    "--no-access-log", "--ignore-eos", "--api-key", "launcher-one"});
    const int port = one.wait_ready();
    ASSERT_NE(port, 0) << one.log();
    want = complete(port, "launcher-one");
    kill(one.pid(), SIGTERM);
    ASSERT_TRUE(one.wait(20)) << one.log();
  }
  Background job(serve_args("launcher-sigterm"));
  const int port = job.wait_ready();
  ASSERT_NE(port, 0) << job.log();
  EXPECT_EQ(complete(port, "launcher-sigterm"), want);
  EXPECT_EQ(want.find("<error"), std::string::npos) << want;
  EXPECT_GT(find_rank("launcher-sigterm", 1), 0) << "rank 1 runs as its own process";
  const auto t0 = clock_type::now();
  kill(job.pid(), SIGTERM);  // to the launcher alone: it passes the signal to the ranks
  const auto status = job.wait(20);
  ASSERT_TRUE(status) << "the job did not stop within 20 s of SIGTERM\n" << job.log();
  const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "status " << *status << "\n" << job.log();
  EXPECT_EQ(find_rank("launcher-sigterm", 0), -1);
  EXPECT_EQ(find_rank("launcher-sigterm", 1), -1);
  std::printf("serve --ep 2 by hand stopped %.2f s after SIGTERM\n", seconds);
}

// Ctrl-C at a terminal: the launcher alone gets SIGINT (its ranks run in their own process group) and passes it
// to rank 0, which stops serving and tells rank 1 to stop: the job ends with status 0 and no rank left.
TEST(Launcher, SigintStopsEveryRank) {
  Background job(serve_args("launcher-sigint"));
  ASSERT_NE(job.wait_ready(), 0) << job.log();
  ASSERT_GT(find_rank("launcher-sigint", 1), 0);
  kill(job.pid(), SIGINT);
  const auto status = job.wait(20);
  ASSERT_TRUE(status) << "the job did not stop within 20 s of SIGINT\n" << job.log();
  EXPECT_TRUE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << "status " << *status << "\n" << job.log();
  EXPECT_EQ(find_rank("launcher-sigint", 0), -1);
  EXPECT_EQ(find_rank("launcher-sigint", 1), -1);
}

TEST(Launcher, KilledRankStopsTheJobNamingIt) {
  Background job(serve_args("launcher-kill"));
  ASSERT_NE(job.wait_ready(), 0) << job.log();
  const pid_t rank1 = find_rank("launcher-kill", 1);
  ASSERT_GT(rank1, 0) << "rank 1's process (OMPI_COMM_WORLD_RANK=1)";
  const auto t0 = clock_type::now();
  kill(rank1, SIGKILL);
  const auto status = job.wait(30);
  ASSERT_TRUE(status) << "the job still runs 30 s after rank 1 died\n" << job.log();
  const double seconds = std::chrono::duration<double>(clock_type::now() - t0).count();
  EXPECT_FALSE(WIFEXITED(*status) && WEXITSTATUS(*status) == 0) << job.log();
  const std::string log = job.log();
  EXPECT_NE(log.find("rank 1"), std::string::npos) << log;
  EXPECT_NE(log.find("moe: error: the job stopped"), std::string::npos) << log;
  EXPECT_EQ(find_rank("launcher-kill", 0), -1) << "rank 0 was stopped too";
  EXPECT_LT(seconds, 15.0);
  std::printf("rank 1 killed: the job ended %.2f s later\n", seconds);
}

TEST(Launcher, MissingMpirunNamesThePackage) {
  const auto r = test::run_moe("logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --ep 2 "
                               "--mpirun /nonexistent/bin/mpirun");
  EXPECT_NE(r.code, 0);
  EXPECT_NE(r.out.find("--mpirun /nonexistent/bin/mpirun is not an executable file"), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("openmpi-bin"), std::string::npos) << r.out;
}

TEST(Launcher, CudaRanksNeedNccl) {
  const auto r = test::run_moe("logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --device cuda "
                               "--ep 2");
  EXPECT_NE(r.code, 0);
#ifndef MOE_HAVE_NCCL
  EXPECT_NE(r.out.find("no NCCL"), std::string::npos) << r.out;
#endif
  const auto g = test::run_moe("logits --model " + test::kTinyModel + " --tokens 1,2 --out /dev/null --gpus 2");
  EXPECT_NE(g.code, 0);
  EXPECT_NE(g.out.find("--gpus 2 needs --device cuda"), std::string::npos) << g.out;
}

TEST(Launcher, ParsersNameWhatIsWrong) {
  std::string host;
  int port = 0;
  cli::parse_rendezvous("127.0.0.1:29500", host, port);
  EXPECT_EQ(host, "127.0.0.1");
  EXPECT_EQ(port, 29500);
  cli::parse_rendezvous("::1:80", host, port);
  EXPECT_EQ(host, "::1");
  EXPECT_EQ(port, 80);
  const std::pair<const char*, const char*> bad[] = {{"localhost", "expected host:port"},
                                                     {":80", "expected host:port"},
                                                     {"h:", "expected host:port"},
                                                     {"h:8x", "is not a number"},
                                                     {"h:123456", "is not a number"},
                                                     {"h:0", "outside 1..65535"},
                                                     {"h:70000", "outside 1..65535"}};
  for (const auto& [text, message] : bad) {
    try {
      cli::parse_rendezvous(text, host, port);
      ADD_FAILURE() << text << " was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find(message), std::string::npos) << text << ": " << e.what();
    }
  }
  EXPECT_EQ(cli::parse_visible_gpus("0,3,GPU-5f2c"), (std::vector<std::string>{"0", "3", "GPU-5f2c"}));
  for (const char* text : {"", "0,,1", "0,", "0 ,1"}) {
    try {
      cli::parse_visible_gpus(text);
      ADD_FAILURE() << "'" << text << "' was accepted";
    } catch (const Error& e) {
      EXPECT_NE(std::string(e.what()).find("not a GPU index or UUID"), std::string::npos) << e.what();
    }
  }
}

}  // namespace
}  // namespace moe
