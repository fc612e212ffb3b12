#pragma once
// The access log: one line per request on stderr, written when its answer has been sent (streams: when they end):
//   moe serve: 127.0.0.1:51234 "POST /v1/chat/completions" 200 prompt_tokens=12 completion_tokens=40 812.4 ms
// Tokens are "-" for requests that generate nothing; the latency runs from the end of the request's headers to the
// end of its answer. The prompt text is logged (as a JSON string) only with --log-prompts: prompts are the users'
// data. The record is per thread: a connection's thread serves its request from routing to logging.
#include <httplib.h>

#include <chrono>
#include <functional>
#include <string>

namespace moe::server {

struct AccessRecord {
  std::chrono::steady_clock::time_point start{};
  int64_t prompt_tokens = -1;
  std::function<int64_t()> completion_tokens;  // read when the line is written (a stream's count grows until then)
  std::string prompt;                          // with --log-prompts only
};

// The record of the request being served on this thread; begin_access_record() clears it at routing.
AccessRecord& current_access_record();
void begin_access_record();

std::string access_line(const httplib::Request& req, int status, const AccessRecord& r, bool with_prompt);

}  // namespace moe::server
