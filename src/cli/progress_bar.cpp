#include "cli/progress_bar.h"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

namespace moe::cli {

std::string progress_bytes(uint64_t n) {
  if (n < 1024) return fmt::format("{} B", n);
  const char* units[] = {"KiB", "MiB", "GiB", "TiB"};
  double v = double(n) / 1024;
  int u = 0;
  while (v >= 1024 && u < 3) v /= 1024, ++u;
  return fmt::format("{:.2f} {}", v, units[u]);
}

ProgressBar ProgressBar::on_stderr(std::string label) {
  return ProgressBar(std::move(label), stderr, isatty(fileno(stderr)) != 0);
}

void ProgressBar::update(uint64_t done, uint64_t total) {
  if (ended_) return;
  done = std::min(done, total);
  // An empty operation (total 0) is complete.
  const double frac = total ? double(done) / double(total) : 1.0;
  if (terminal_) {
    const int permille = int(frac * 1000);
    if (permille == shown_ && done != total) return;
    shown_ = permille;
    constexpr int kWidth = 30;
    const int filled = int(frac * kWidth);
    std::fprintf(out_, "\r%s %3d%% [%s%s] %s of %s\x1b[K", label_.c_str(), permille / 10, std::string(size_t(filled), '#').c_str(),
                 std::string(size_t(kWidth - filled), ' ').c_str(), progress_bytes(done).c_str(),
                 progress_bytes(total).c_str());
    if (done == total) {
      std::fputc('\n', out_);
      ended_ = true;
    }
  } else {
    const int quarters = done == total ? 4 : int(frac * 4);
    if (quarters <= std::max(shown_, 0)) return;
    shown_ = quarters;
    std::fprintf(out_, "%s: %d%% (%s of %s)\n", label_.c_str(), quarters * 25, progress_bytes(done).c_str(),
                 progress_bytes(total).c_str());
    ended_ = quarters == 4;
  }
  std::fflush(out_);
}

}  // namespace moe::cli
