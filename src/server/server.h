#pragma once
// The OpenAI-compatible HTTP server (cpp-httplib): /v1/chat/completions, /v1/completions, /v1/models,
// /v1/feedback, /health, /metrics and the chat page at /. Generation goes through the shared Scheduler.
#include <atomic>
#include <memory>
#include <string>
#include <vector>

#include "engine/scheduler.h"
#include "server/feedback_store.h"
#include "server/host_check.h"
#include "server/reasoning.h"
#include "tokenizer/tokenizer.h"

namespace httplib {
class Server;
}

namespace moe::server {

struct ServerOptions {
  std::string host = "127.0.0.1";
  int port = 8000;  // 0: any free port (the bound port is printed and returned by bind())
  std::string api_key;  // empty: no key needed
  std::string model_name = "model";
  size_t max_body_bytes = 4 << 20;
  int32_t default_max_tokens = 2048;
  ReasoningMode reasoning = ReasoningMode::auto_detect;
  bool ignore_eos = false;  // never stop at EOS (benchmarks and tests with random-weight models)
  // Origins (scheme://host[:port]) whose pages may call the API from a browser (CORS); "*" any. Empty: same origin
  // only. Requests from other origins are refused (403), as are requests whose Host is not a loopback name while
  // the server is bound to loopback (DNS rebinding), and JSON endpoints' bodies of any other Content-Type (415:
  // text/plain and forms are what a page can send cross-site without a preflight).
  std::vector<std::string> allowed_origins;
  // Host names (without the port) answered besides loopback names, IP addresses and --host; "*" any. See
  // host_check.h for the whole rule (DNS rebinding).
  std::vector<std::string> allowed_hosts;
  // A request body must arrive within this many seconds of its headers (408 and the connection closed past it).
  int body_timeout_s = 60;
  bool access_log = true;    // one line per request on stderr (access_log.h)
  bool log_prompts = false;  // with the prompt text in it
  int http_threads = 2048;  // most connections served at once (threads start as needed; streams hold theirs)
  // The sampling of a request that leaves a parameter out: greedy with no penalties, or the served model's
  // generation_config.json (`moe serve --generation-config auto`, the default).
  SamplingParams default_sampling;
};

class Server {
 public:
  Server(Scheduler& scheduler, const Tokenizer& tokenizer, FeedbackStore* feedback, ServerOptions options);
  ~Server();
  int bind();   // returns the bound port; throws moe::Error
  int adopt(int listen_fd);  // listens on a socket a LoadingServer released (instead of bind())
  void serve();  // blocks until stop() (and until every connection has ended)
  // Graceful shutdown: stops accepting, ends idle connections, and cancels in-flight requests (non-streamed ones
  // are answered 503, streams end); serve() then returns within about one scheduler step.
  void stop();

  std::string metrics_text() const;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

// Constant-time comparison of an Authorization header value with "Bearer <key>".
bool authorized(const std::string& header_value, const std::string& api_key);

}  // namespace moe::server
