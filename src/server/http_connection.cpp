#include "server/http_connection.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace moe::server {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

namespace {

thread_local int t_socket = -1;
thread_local HeaderFailure t_header_failure = HeaderFailure::none;

// Waits up to `timeout` for `events` on sock; false on timeout or error. POLLHUP/POLLERR count as ready: the read
// or write that follows reports them.
bool wait_for(int sock, short events, milliseconds timeout) {
  const auto end = Clock::now() + timeout;
  for (;;) {
    const auto left = std::chrono::duration_cast<milliseconds>(end - Clock::now());
    if (left.count() < 0) return false;
    pollfd p{sock, events, 0};
    const int r = ::poll(&p, 1, int(std::min<int64_t>(left.count(), 1 << 30)));
    if (r > 0) return true;
    if (r == 0) return false;
    if (errno != EINTR) return false;
  }
}

void address_of(int sock, bool peer, std::string& ip, int& port) {
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  if ((peer ? ::getpeername(sock, (sockaddr*)&a, &len) : ::getsockname(sock, (sockaddr*)&a, &len)) != 0) return;
  char buf[INET6_ADDRSTRLEN] = {};
  if (a.ss_family == AF_INET) {
    auto* s = (sockaddr_in*)&a;
    ::inet_ntop(AF_INET, &s->sin_addr, buf, sizeof(buf));
    port = ntohs(s->sin_port);
  } else if (a.ss_family == AF_INET6) {
    auto* s = (sockaddr_in6*)&a;
    ::inet_ntop(AF_INET6, &s->sin6_addr, buf, sizeof(buf));
    port = ntohs(s->sin6_port);
  }
  ip = buf;
}

// A buffered socket stream (httplib reads a request line and headers a byte at a time).
class ConnectionStream : public httplib::Stream {
 public:
  ConnectionStream(int sock, milliseconds read_timeout, milliseconds write_timeout, milliseconds body_timeout)
      : sock_(sock), read_timeout_(read_timeout), write_timeout_(write_timeout), body_timeout_(body_timeout) {}

  bool buffered() const { return off_ < len_; }

  // The next bytes are a request's line and headers, due by `deadline`.
  void begin_request(Clock::time_point deadline) {
    in_headers_ = true;
    deadline_ = deadline;
    header_bytes_ = header_lines_ = 0;
    tail_ = 0;
    failure_ = HeaderFailure::none;
  }
  HeaderFailure failure() const { return failure_; }

  bool is_readable() const override { return buffered() || wait_for(sock_, POLLIN, read_timeout_); }
  bool is_writable() const override { return wait_for(sock_, POLLOUT, write_timeout_); }

  ssize_t read(char* ptr, size_t size) override {
    if (failure_ != HeaderFailure::none) return -1;
    if (!buffered()) {
      milliseconds timeout = read_timeout_;
      if (in_headers_) {
        timeout = std::min(timeout, std::chrono::duration_cast<milliseconds>(deadline_ - Clock::now()));
        if (timeout.count() <= 0 || !wait_for(sock_, POLLIN, timeout)) {
          failure_ = t_header_failure = HeaderFailure::timeout;  // the deadline, or the read timeout before it
          return -1;
        }
      } else {
        // The body (the only thing read after the headers): due by body_deadline_, no pause over kBodyIdleTimeout.
        timeout = std::min({timeout, milliseconds(kBodyIdleTimeout),
                            std::chrono::duration_cast<milliseconds>(body_deadline_ - Clock::now())});
        if (timeout.count() <= 0 || !wait_for(sock_, POLLIN, timeout)) {
          failure_ = t_header_failure = HeaderFailure::body_timeout;
          return -1;
        }
      }
      ssize_t n;
      do n = ::recv(sock_, buf_, sizeof(buf_), 0);
      while (n < 0 && errno == EINTR);
      if (n <= 0) return n;
      off_ = 0;
      len_ = size_t(n);
    }
    size_t k = std::min(size, len_ - off_);
    if (in_headers_) {
      // Up to the blank line that ends the headers, counting bytes and lines (httplib reads them a byte at a time).
      for (size_t i = 0; i < k; ++i) {
        const char c = buf_[off_ + i];
        tail_ = (tail_ << 8) | uint8_t(c);
        if (c == '\n') ++header_lines_;
        if (++header_bytes_ > kMaxHeaderBytes || header_lines_ > kMaxHeaders + 1) {
          failure_ = t_header_failure = HeaderFailure::too_large;
          return -1;
        }
        if (tail_ == 0x0d0a0d0a) {  // "\r\n\r\n"
          in_headers_ = false;
          body_deadline_ = Clock::now() + body_timeout_;
          k = i + 1;
          break;
        }
      }
    }
    std::memcpy(ptr, buf_ + off_, k);
    off_ += k;
    return ssize_t(k);
  }

  ssize_t write(const char* ptr, size_t size) override {
    if (!is_writable()) return -1;
    ssize_t n;
    do n = ::send(sock_, ptr, size, MSG_NOSIGNAL);
    while (n < 0 && errno == EINTR);
    return n;
  }

  void get_remote_ip_and_port(std::string& ip, int& port) const override { address_of(sock_, true, ip, port); }
  void get_local_ip_and_port(std::string& ip, int& port) const override { address_of(sock_, false, ip, port); }
  socket_t socket() const override { return sock_; }

 private:
  int sock_;
  milliseconds read_timeout_, write_timeout_, body_timeout_;
  char buf_[4096];
  size_t off_ = 0, len_ = 0;
  bool in_headers_ = false;
  Clock::time_point deadline_, body_deadline_;
  size_t header_bytes_ = 0, header_lines_ = 0;
  uint32_t tail_ = 0;
  HeaderFailure failure_ = HeaderFailure::none;
};

// After an answer given with the request unread: sends FIN, then reads and drops what the client still sends, for
// at most kLinger, so that closing does not reset the connection (a client still writing would lose the answer).
void linger_close(int sock) {
  constexpr milliseconds kLinger{2000};
  ::shutdown(sock, SHUT_WR);
  const auto end = Clock::now() + kLinger;
  char buf[16384];
  while (Clock::now() < end && wait_for(sock, POLLIN, std::chrono::duration_cast<milliseconds>(end - Clock::now())))
    if (::recv(sock, buf, sizeof(buf), 0) <= 0) break;
}

}  // namespace

bool client_gone(int sock) {
  pollfd p{sock, short(POLLIN | POLLRDHUP), 0};
  if (::poll(&p, 1, 0) <= 0) return false;
  if (p.revents & (POLLERR | POLLHUP | POLLNVAL)) return true;
  char c;
  const ssize_t n = ::recv(sock, &c, 1, MSG_PEEK | MSG_DONTWAIT);
  return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
}

int HttpServer::current_socket() { return t_socket; }
HeaderFailure HttpServer::current_header_failure() { return t_header_failure; }

HttpServer::HttpServer(size_t max_threads) {
  new_task_queue = [max_threads] { return new ElasticThreadPool(max_threads); };
}

void HttpServer::shutdown() {
  {
    std::lock_guard lock(mu_);
    stopping_ = true;
    // Reads on every connection now end at once (EOF); answers can still be written.
    for (int fd : open_) ::shutdown(fd, SHUT_RD);
  }
  stop();  // closes the listening socket; listen_after_bind() joins the connections' threads and returns
}

bool HttpServer::process_and_close_socket(socket_t sock) {
  bool registered = false;
  {
    std::lock_guard lock(mu_);
    if (!stopping_ || released_) registered = open_.insert(sock).second;
  }
  bool ret = false;
  if (registered) {
    auto ms = [](time_t s, time_t us) { return milliseconds(int64_t(s) * 1000 + int64_t(us) / 1000); };
    ConnectionStream strm(sock, ms(read_timeout_sec_, read_timeout_usec_), ms(write_timeout_sec_, write_timeout_usec_),
                          body_timeout_);
    t_socket = sock;
    // A registered connection's first request is always answered (with Connection: close when stopping): one
    // accepted in the moment the listener was released (release_listener) is not dropped. In a shutdown, its
    // reads end at once (shutdown() stops them), so it closes without waiting.
    bool first = true;
    for (size_t count = keep_alive_max_count_; count > 0 && (first || !stopping_); --count) {
      first = false;
      // The next request's first byte (already here when pipelined); an idle connection is closed.
      if (!strm.buffered() && !wait_for(sock, POLLIN, kKeepAliveTimeout)) break;
      strm.begin_request(Clock::now() + kHeaderTimeout);
      t_header_failure = HeaderFailure::none;
      bool closed = false;
      ret = process_request(strm, count == 1 || stopping_, closed, nullptr);
      if (strm.failure() != HeaderFailure::none) {
        linger_close(sock);
        break;
      }
      if (!ret || closed) break;
    }
    t_socket = -1;
    t_header_failure = HeaderFailure::none;
    std::lock_guard lock(mu_);
    open_.erase(sock);
  }
  ::shutdown(sock, SHUT_RDWR);
  ::close(sock);
  return ret;
}

int listen_on(HttpServer& http, const std::string& host, int port_wanted) {
  // httplib listens with a backlog of 5 (CPPHTTPLIB_LISTEN_BACKLOG, compiled into Debian's shared library): a burst
  // of connects past it waits for SYN retransmits, a second and more apart. Listening again on the bound socket
  // sets the backlog (the kernel caps it at net.core.somaxconn); the socket is the last one the options hook saw.
  int listen_fd = -1;
  // httplib's default options add SO_REUSEPORT, with which a second server binds the same busy port and the
  // kernel splits connections between them: only SO_REUSEADDR (restarts while old connections are in TIME_WAIT).
  http.set_socket_options([&listen_fd](socket_t sock) {
    int yes = 1;
    ::setsockopt(sock, SOL_SOCKET, SO_REUSEADDR, &yes, sizeof(yes));
    listen_fd = sock;
  });
  int port = port_wanted;
  errno = 0;
  if (port == 0) port = http.bind_to_any_port(host);
  else if (!http.bind_to_port(host, port)) port = -1;
  if (port <= 0) {
    const int err = errno;
    fail("cannot listen on {}:{}: {}", host, port_wanted,
         err == EADDRINUSE ? "address already in use (is another server running on this port?)"
         : err ? std::strerror(err)
               : "the address could not be resolved or bound");
  }
  MOE_CHECK(listen_fd >= 0 && ::listen(listen_fd, kListenBacklog) == 0, "cannot listen on {}:{} with a backlog of {}",
            host, port, kListenBacklog);
  return port;
}

void HttpServer::adopt_listener(int fd) { svr_sock_ = fd; }

int HttpServer::release_listener() {
  const int fd = svr_sock_.exchange(INVALID_SOCKET);
  {
    std::lock_guard lock(mu_);
    released_ = true;
    stopping_ = true;
    // The connections being served are not cut short: each ends after the request it is reading or answering
    // (a client's request that had arrived, or was arriving, when the listener was released would otherwise go
    // unanswered); an idle keep-alive one ends within kKeepAliveTimeout. LoadingServer serves one request per
    // connection, so there none is idle.
  }
  // listen_after_bind() is blocked in accept() on fd: one connection to ourselves wakes it, and it returns, as the
  // socket it listens on is now INVALID_SOCKET. Connections arriving meanwhile wait in the backlog for the next
  // server. The wake-up connection goes to loopback when bound to a wildcard address.
  sockaddr_storage a{};
  socklen_t len = sizeof(a);
  if (fd >= 0 && ::getsockname(fd, (sockaddr*)&a, &len) == 0) {
    if (a.ss_family == AF_INET && ((sockaddr_in*)&a)->sin_addr.s_addr == htonl(INADDR_ANY))
      ((sockaddr_in*)&a)->sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (a.ss_family == AF_INET6 && IN6_IS_ADDR_UNSPECIFIED(&((sockaddr_in6*)&a)->sin6_addr))
      ((sockaddr_in6*)&a)->sin6_addr = in6addr_loopback;
    const int w = ::socket(a.ss_family, SOCK_STREAM, 0);
    if (w >= 0) {
      ::connect(w, (sockaddr*)&a, len);
      ::close(w);
    }
  }
  return fd;
}

// ---- ElasticThreadPool ----

void ElasticThreadPool::enqueue(std::function<void()> fn) {
  std::lock_guard lock(mu_);
  jobs_.push_back(std::move(fn));
  if (idle_ < jobs_.size() && threads_ < max_) {
    ++threads_;
    std::thread([this] { worker(); }).detach();
  } else {
    cv_.notify_one();
  }
}

void ElasticThreadPool::worker() {
  std::unique_lock lock(mu_);
  for (;;) {
    ++idle_;
    const bool woke = cv_.wait_for(lock, std::chrono::minutes(1), [&] { return !jobs_.empty() || shutdown_; });
    --idle_;
    if (jobs_.empty() && (shutdown_ || !woke)) break;
    auto fn = std::move(jobs_.front());
    jobs_.pop_front();
    lock.unlock();
    fn();
    lock.lock();
  }
  if (--threads_ == 0) ended_.notify_all();
}

void ElasticThreadPool::shutdown() {
  std::unique_lock lock(mu_);
  shutdown_ = true;
  cv_.notify_all();
  ended_.wait(lock, [&] { return threads_ == 0; });
}

}  // namespace moe::server
