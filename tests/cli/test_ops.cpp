// Operations of the `moe` program: --version and the defaults every --help shows.
#include <CLI/Version.hpp>
#include <gtest/gtest.h>
#include <httplib.h>
#include <nlohmann/json.hpp>

#include <regex>
#include <string>

#include "cli/run_moe.h"

using moe::test::run_moe;

namespace {
std::string git_head() {
  FILE* p = popen("git rev-parse --short=12 HEAD 2>/dev/null", "r");
  if (!p) return "";
  char buf[64] = {};
  const size_t n = fread(buf, 1, sizeof(buf) - 1, p);
  pclose(p);
  std::string s(buf, n);
  while (!s.empty() && (s.back() == '\n' || s.back() == '\r')) s.pop_back();
  return s;
}
}  // namespace

TEST(CliOps, VersionNamesTheCommitAndTheLibraries) {
  const auto r = run_moe("--version");
  ASSERT_EQ(r.code, 0) << r.out;
  std::smatch m;
  ASSERT_TRUE(std::regex_search(r.out, m, std::regex(R"(^moe \d+\.\d+\.\d+ \(commit ([0-9a-f]{12}(-dirty)?|unknown)\))")))
      << r.out;
  // Built from this checkout: the commit is its HEAD (the build refreshes it; "-dirty" with local changes).
  if (const std::string head = git_head(); !head.empty()) {
    EXPECT_EQ(m[1].str().substr(0, 12), head) << r.out;
  }
  EXPECT_NE(r.out.find(std::string("cpp-httplib ") + CPPHTTPLIB_VERSION), std::string::npos) << r.out;
  EXPECT_NE(r.out.find(std::string("CLI11 ") + CLI11_VERSION), std::string::npos) << r.out;
  EXPECT_NE(r.out.find("nlohmann/json " + std::to_string(NLOHMANN_JSON_VERSION_MAJOR) + "." +
                       std::to_string(NLOHMANN_JSON_VERSION_MINOR) + "." + std::to_string(NLOHMANN_JSON_VERSION_PATCH)),
            std::string::npos)
      << r.out;
  EXPECT_NE(r.out.find("CUDA"), std::string::npos) << r.out;
}

TEST(CliOps, HelpShowsDefaultsAndEnvironmentVariables) {
  const auto serve = run_moe("serve --help");
  ASSERT_EQ(serve.code, 0) << serve.out;
  for (const char* want : {"--port INT=8000", "--host TEXT=127.0.0.1", "--max-body-bytes UINT=4194304",
                           "--body-timeout INT:INT in [1 - 3600]=60", "--max-batch INT=64", "(Env:MOE_PORT)",
                           "(Env:MOE_MAX_BODY_BYTES)", "(Env:MOE_ALLOWED_HOSTS)", "(Env:MOE_API_KEY)"})
    EXPECT_NE(serve.out.find(want), std::string::npos) << want << "\n" << serve.out;
  // bench-serve reads the key from the same variable (through CLI11, not getenv).
  const auto bench = run_moe("bench-serve --help");
  ASSERT_EQ(bench.code, 0) << bench.out;
  EXPECT_TRUE(std::regex_search(bench.out, std::regex(R"(--api-key TEXT[^\n]*\(Env:MOE_API_KEY\))"))) << bench.out;
  // Other commands show theirs too (captured for every option of every subcommand).
  const auto gen = run_moe("generate --help");
  ASSERT_EQ(gen.code, 0) << gen.out;
  EXPECT_TRUE(std::regex_search(gen.out, std::regex(R"(--\S+ (INT|UINT|FLOAT|TEXT)=\S+)"))) << gen.out;
}
