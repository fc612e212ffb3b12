#include "server/access_log.h"

#include <fmt/format.h>
#include <nlohmann/json.hpp>

namespace moe::server {

namespace {
thread_local AccessRecord t_record;
}

AccessRecord& current_access_record() { return t_record; }

void begin_access_record() {
  t_record = AccessRecord{};
  t_record.start = std::chrono::steady_clock::now();
}

std::string access_line(const httplib::Request& req, int status, const AccessRecord& r, bool with_prompt) {
  auto num = [](int64_t v) { return v < 0 ? std::string("-") : std::to_string(v); };
  const int64_t completion = r.completion_tokens ? r.completion_tokens() : -1;
  std::string latency = "-";
  if (r.start != std::chrono::steady_clock::time_point{})
    latency = fmt::format("{:.1f} ms", std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() -
                                                                                  r.start).count());
  // The method and path as sent, escaped: they are the client's bytes and must not break the line.
  const auto escape = [](const std::string& s) {
    return nlohmann::json(s).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  };
  std::string target = escape(req.method + " " + req.path);
  std::string line = fmt::format("moe serve: {}:{} {} {} prompt_tokens={} completion_tokens={} {}", req.remote_addr,
                                 req.remote_port, target, status, num(r.prompt_tokens), num(completion), latency);
  if (with_prompt && !r.prompt.empty()) line += " prompt=" + escape(r.prompt);
  return line + "\n";
}

}  // namespace moe::server
