#pragma once
// `moe chat`'s input: on a terminal (stdin a tty, built with libedit) lines are read with editing and an
// in-memory history (up/down recall earlier lines); otherwise (a pipe, a file) plain lines with the prompt on
// stderr. Ctrl-D (end of input) gives nullopt; Ctrl-C at the prompt ends the program (SIGINT's default).
#include <optional>
#include <string>

namespace moe::cli {

class LineReader {
 public:
  LineReader();
  ~LineReader();
  LineReader(const LineReader&) = delete;
  LineReader& operator=(const LineReader&) = delete;

  std::optional<std::string> read(const char* prompt);
  bool editing() const { return editing_; }

 private:
  bool editing_ = false;
};

}  // namespace moe::cli
