// libFuzzer target: the HTTP request path end to end. Each input is the bytes one client sends on one connection
// (request lines, headers, Content-Length/chunked/gzip bodies, pipelined requests) to the real Server on the tiny
// model (models/tiny-dsv3; run from the repository root, as scripts/fuzz.sh does), so inputs reach the framing
// checks, the body reader, the cross-site checks, routing, the JSON parsers, the chat template, the scheduler and
// the answer writers. Nothing may crash, trip the sanitizers or hang: the server must close every connection
// within kBound of the client's last byte, and anything it sends must start as an HTTP/1.1 answer.
// The client half-closes after its input (so the server sees the end of the request): a non-streamed generation
// then sees its client gone and is cancelled (the 499 path); a streamed one runs to its end (--max-context 48).
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <chrono>
#include <csignal>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <string>
#include <thread>

#include "backend/backend.h"
#include "engine/scheduler.h"
#include "model/deepseek_v3.h"
#include "server/server.h"
#include "tokenizer/tokenizer.h"

using namespace moe;

namespace {

constexpr auto kBound = std::chrono::seconds(30);  // past the 10 s header and 2 s drain deadlines

struct Fixture {
  std::unique_ptr<Backend> backend = make_cpu_backend({1});
  DeepseekV3 model{"models/tiny-dsv3", *backend};
  Tokenizer tok = Tokenizer::load("models/tiny-dsv3");
  Scheduler sched{model, &tok, [] {
                    SchedulerOptions o;
                    o.cache_tokens = 1024;
                    o.max_context = 48;
                    o.max_step_tokens = 64;
                    return o;
                  }()};
  server::Server srv{sched, tok, nullptr, [] {
                       server::ServerOptions o;
                       o.port = 0;
                       o.max_body_bytes = 64 << 10;
                       o.default_max_tokens = 4;
                       o.body_timeout_s = 5;
                       o.http_threads = 64;
                       return o;
                     }()};
  int port = srv.bind();
  std::thread serving{[this] { srv.serve(); }};
};

Fixture& fixture() {
  static Fixture* f = [] {
    std::signal(SIGPIPE, SIG_IGN);
    auto* made = new Fixture;
    // libFuzzer ends with exit(): stop the server and the scheduler before static objects are destroyed.
    std::atexit([] {
      f->srv.stop();
      f->serving.join();
      delete f;
    });
    return made;
  }();
  return *f;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  Fixture& f = fixture();
  const int sock = ::socket(AF_INET, SOCK_STREAM, 0);
  if (sock < 0) std::abort();
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_port = htons(uint16_t(f.port));
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(sock, (sockaddr*)&addr, sizeof(addr)) != 0) std::abort();  // the server stopped accepting
  // Send and read at once (an answer can fill the socket buffers before the input is all sent).
  std::string answer;
  size_t sent = 0;
  bool half_closed = false;
  const auto deadline = std::chrono::steady_clock::now() + kBound;
  for (;;) {
    if (sent == size && !half_closed) {
      ::shutdown(sock, SHUT_WR);
      half_closed = true;
    }
    pollfd p{sock, short(POLLIN | (half_closed ? 0 : POLLOUT)), 0};
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - std::chrono::steady_clock::now());
    if (left.count() <= 0) {
      std::fprintf(stderr, "fuzz_http_request: the server held the connection past %lld s\n",
                   (long long)kBound.count());
      std::abort();
    }
    if (::poll(&p, 1, int(left.count())) <= 0) continue;
    if (p.revents & POLLOUT) {
      const ssize_t n = ::send(sock, data + sent, size - sent, MSG_NOSIGNAL);
      if (n > 0) sent += size_t(n);
      else if (n < 0) sent = size;  // the server closed its end: the rest is not read
    }
    if (p.revents & (POLLIN | POLLHUP | POLLERR)) {
      char buf[65536];
      const ssize_t n = ::recv(sock, buf, sizeof(buf), 0);
      if (n <= 0) break;  // closed (or reset) by the server
      if (answer.size() < 16) answer.append(buf, size_t(n));
    }
  }
  ::close(sock);
  if (!answer.empty() && answer.rfind("HTTP/1.1 ", 0) != 0) {
    std::fprintf(stderr, "fuzz_http_request: not an HTTP answer: %.64s\n", answer.c_str());
    std::abort();
  }
  return 0;
}
