#pragma once
// How the server handles a connection, in place of httplib 0.11's own (Debian's shared library: its loop and socket
// stream cannot be configured further). An HttpServer is an httplib::Server whose process_and_close_socket reads
// requests through ConnectionStream, which
//  - knows its socket, so a handler waiting for the scheduler can see that the client went away (client_gone());
//  - gives a request's line and headers a deadline in all (kHeaderTimeout from its first byte) and bounds their
//    size and count (kMaxHeaderBytes, kMaxHeaders), where httplib waits up to the read timeout for each byte and
//    takes any number of headers (slowloris: a byte every few seconds held a worker for ever; a million headers
//    were read and kept);
//  - gives a request's body a deadline in all (body_timeout from the end of its headers, --body-timeout) and each
//    read of it at most kBodyIdleTimeout, where httplib waits up to the read timeout (30 s) for each byte: a body
//    trickled a byte at a time, or never sent after its headers, held a connection and its thread for ever;
//  - stops waiting when the server stops (graceful shutdown: stop() ends idle and reading connections at once).
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <set>
#include <string>

namespace moe::server {

// Pending connections the kernel completes before the server accepts them (a burst of clients connecting at once).
constexpr int kListenBacklog = 1024;

// A request's line and headers must arrive within this time of its first byte (408 past it).
constexpr std::chrono::seconds kHeaderTimeout{10};
// A request line and headers larger than this, or with more header lines, are a 431.
constexpr size_t kMaxHeaderBytes = 64 * 1024;
constexpr size_t kMaxHeaders = 100;
// A request's body must arrive within body_timeout (default kBodyTimeout) of the end of its headers, with no
// pause longer than kBodyIdleTimeout (408 past either).
constexpr std::chrono::seconds kBodyTimeout{60};
constexpr std::chrono::seconds kBodyIdleTimeout{10};
// An idle keep-alive connection is closed after this long.
constexpr std::chrono::seconds kKeepAliveTimeout{5};

// Why a request's line and headers, or its body, could not be read (the error handler answers with it).
enum class HeaderFailure { none, timeout, too_large, body_timeout };

class HttpServer : public httplib::Server {
 public:
  // Connections are served by up to max_threads threads, started as connections arrive (idle ones wait for the
  // next): a slow client holds one for at most kKeepAliveTimeout + kHeaderTimeout before its request is complete,
  // so slow clients cannot take them all unless they open max_threads connections within that time.
  explicit HttpServer(size_t max_threads);

  // Stops accepting, wakes every connection waiting for input (its reads end, so it closes; handlers see
  // stopping() and cancel their work), then returns; listen_after_bind() returns once every connection ended.
  void shutdown();
  bool stopping() const { return stopping_.load(); }
  // Set before listening.
  void set_body_timeout(std::chrono::milliseconds t) { body_timeout_ = t; }
  std::chrono::milliseconds body_timeout() const { return body_timeout_; }

  // Hands the listening socket on (a server that answered while the model loaded, to the real one): the socket
  // stays open and listening; listen_after_bind() returns once the connections being served have ended.
  int release_listener();
  // Listens on a socket another HttpServer released (instead of binding); then listen_after_bind().
  void adopt_listener(int fd);

  // On a thread serving a request: its socket (-1 elsewhere), and why its headers could not be read.
  static int current_socket();
  static HeaderFailure current_header_failure();

 private:
  bool process_and_close_socket(socket_t sock) override;

  std::atomic<bool> stopping_{false};
  std::atomic<bool> released_{false};  // release_listener(): a connection accepted after it gets one answer
  std::chrono::milliseconds body_timeout_{kBodyTimeout};
  std::mutex mu_;
  std::set<int> open_;  // connections being served
};

// Binds host:port (0: any free port) exclusively and listens with a backlog of kListenBacklog; returns the port.
// Throws moe::Error naming the address and why ("address already in use (is another server running ...)").
int listen_on(HttpServer& http, const std::string& host, int port);

// True when the peer closed the connection (EOF or an error; data still unread from it is not a close).
bool client_gone(int sock);

// A task queue that starts a thread for a task when none is idle, up to max_threads (then tasks wait); a thread
// idle for a minute ends. (httplib's ThreadPool has a fixed number: each open connection holds one.)
class ElasticThreadPool : public httplib::TaskQueue {
 public:
  explicit ElasticThreadPool(size_t max_threads) : max_(max_threads) {}
  ~ElasticThreadPool() override { shutdown(); }
  void enqueue(std::function<void()> fn) override;
  void shutdown() override;  // runs what is queued, then waits for every thread to end

 private:
  void worker();
  const size_t max_;
  std::mutex mu_;
  std::condition_variable cv_, ended_;
  std::deque<std::function<void()>> jobs_;
  size_t threads_ = 0, idle_ = 0;
  bool shutdown_ = false;
};

}  // namespace moe::server
