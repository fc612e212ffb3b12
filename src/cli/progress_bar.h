#pragma once
// A progress report on stderr for loading and writing checkpoints (a moe::ProgressFn's receiver).
// On a terminal: one line redrawn in place at most once per 1/1000 of the total,
//   "loading model/  42% [############                ] 1.23 GiB of 2.93 GiB"
// and ended with a newline at 100 %. Not on a terminal (a log, a pipe): a line at each 25 % passed,
//   "loading model/: 25% (750.00 MiB of 2.93 GiB)"
// so a log gets at most four lines.
#include <cstdint>
#include <cstdio>
#include <string>

#include "core/progress.h"

namespace moe::cli {

class ProgressBar {
 public:
  ProgressBar(std::string label, std::FILE* out, bool terminal) : label_(std::move(label)), out_(out), terminal_(terminal) {}
  // For stderr, a terminal or not (isatty).
  static ProgressBar on_stderr(std::string label);

  void update(uint64_t done, uint64_t total);
  // A ProgressFn drawing on this bar (which must outlive it).
  ProgressFn fn() {
    return [this](uint64_t done, uint64_t total) { update(done, total); };
  }

 private:
  std::string label_;
  std::FILE* out_;
  bool terminal_;
  int shown_ = -1;  // terminal: the permille last drawn; otherwise: the quarters (0..4) already printed
  bool ended_ = false;
};

std::string progress_bytes(uint64_t n);  // 1.23 GiB, 750.00 MiB, 12 B

}  // namespace moe::cli
