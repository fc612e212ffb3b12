#pragma once
// The `moe` binary built with the tests (MOE_BINARY), run through the shell from the repository root.
#include <sys/wait.h>

#include <array>
#include <cstdio>
#include <string>

namespace moe::test {

struct MoeResult {
  int code;         // exit status (-1 when the process did not exit normally)
  std::string out;  // stdout, and stderr unless left out
};

inline MoeResult run_moe(const std::string& args, bool with_stderr = true) {
  const std::string cmd = std::string(MOE_BINARY) + " " + args + (with_stderr ? " 2>&1" : " 2>/dev/null");
  FILE* p = popen(cmd.c_str(), "r");
  MoeResult r{-1, ""};
  if (!p) return r;
  std::array<char, 4096> buf;
  size_t n;
  while ((n = fread(buf.data(), 1, buf.size(), p)) > 0) r.out.append(buf.data(), n);
  const int status = pclose(p);
  r.code = WIFEXITED(status) ? WEXITSTATUS(status) : -1;
  return r;
}

}  // namespace moe::test
