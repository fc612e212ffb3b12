#pragma once
// How the server handles a connection, in place of httplib 0.11's own (Debian's shared library: its loop and socket
// stream cannot be configured further). An HttpServer is an httplib::Server whose process_and_close_socket reads
// requests through ConnectionStream, which
//  - knows its socket, so a handler waiting for the scheduler can see that the client went away (client_gone());
//  - stops waiting when the server stops (graceful shutdown: stop() ends idle and reading connections at once).
#include <httplib.h>

#include <atomic>
#include <chrono>
#include <mutex>
#include <set>
#include <string>

namespace moe::server {

// An idle keep-alive connection is closed after this long.
constexpr std::chrono::seconds kKeepAliveTimeout{5};

class HttpServer : public httplib::Server {
 public:
  // Stops accepting, wakes every connection waiting for input (its reads end, so it closes; handlers see
  // stopping() and cancel their work), then returns; listen_after_bind() returns once every connection ended.
  void shutdown();
  bool stopping() const { return stopping_.load(); }

  // On a thread serving a request: its socket (-1 elsewhere).
  static int current_socket();

 private:
  bool process_and_close_socket(socket_t sock) override;

  std::atomic<bool> stopping_{false};
  std::mutex mu_;
  std::set<int> open_;  // connections being served
};

// True when the peer closed the connection (EOF or an error; data still unread from it is not a close).
bool client_gone(int sock);

}  // namespace moe::server
