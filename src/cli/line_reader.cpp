#include "cli/line_reader.h"

#include <unistd.h>

#include <cstdio>
#include <cstdlib>
#include <iostream>

#ifdef MOE_HAVE_LIBEDIT
#include <editline/readline.h>
#endif

namespace moe::cli {

LineReader::LineReader() {
#ifdef MOE_HAVE_LIBEDIT
  editing_ = isatty(STDIN_FILENO) && isatty(STDERR_FILENO);
  if (editing_) {
    rl_outstream = stderr;  // the prompt and the edited line go where the prompt always goes (stdout: replies)
    using_history();
  }
#endif
}

LineReader::~LineReader() {
#ifdef MOE_HAVE_LIBEDIT
  if (editing_) clear_history();
#endif
}

std::optional<std::string> LineReader::read(const char* prompt) {
#ifdef MOE_HAVE_LIBEDIT
  if (editing_) {
    char* line = readline(prompt);
    if (!line) return std::nullopt;
    std::string s(line);
    std::free(line);
    if (!s.empty()) add_history(s.c_str());
    return s;
  }
#endif
  std::fputs(prompt, stderr);
  std::string s;
  if (!std::getline(std::cin, s)) return std::nullopt;
  return s;
}

}  // namespace moe::cli
