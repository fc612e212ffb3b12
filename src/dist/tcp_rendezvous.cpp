// Wire format, after a peer connects: peer -> rank 0: "MOE1" + its rank (int32, little-endian host order);
// rank 0 -> peer: the blob's length (uint32) + the blob.
#include "dist/tcp_rendezvous.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cstring>
#include <thread>

#include "core/error.h"

namespace moe::dist {

namespace {

using Clock = std::chrono::steady_clock;

struct Fd {
  int fd = -1;
  explicit Fd(int f) : fd(f) {}
  Fd(const Fd&) = delete;
  Fd& operator=(const Fd&) = delete;
  ~Fd() {
    if (fd >= 0) ::close(fd);
  }
};

// Waits until fd is readable (or writable) or the deadline passes.
void wait_fd(int fd, short events, Clock::time_point deadline, const std::string& what) {
  for (;;) {
    const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now()).count();
    MOE_CHECK(left > 0, "dist: rendezvous timed out {}", what);
    pollfd p{fd, events, 0};
    const int rc = ::poll(&p, 1, int(std::min<long long>(left, 1000)));
    if (rc > 0) return;
    MOE_CHECK(rc == 0 || errno == EINTR, "dist: rendezvous poll failed {}: {}", what, std::strerror(errno));
  }
}

void send_all(int fd, const void* data, size_t n, Clock::time_point deadline, const std::string& what) {
  const char* p = static_cast<const char*>(data);
  while (n > 0) {
    wait_fd(fd, POLLOUT, deadline, what);
    const ssize_t k = ::send(fd, p, n, MSG_NOSIGNAL);
    MOE_CHECK(k > 0 || errno == EINTR || errno == EAGAIN, "dist: rendezvous send failed {}: {}", what,
              std::strerror(errno));
    if (k > 0) p += k, n -= size_t(k);
  }
}

void recv_all(int fd, void* data, size_t n, Clock::time_point deadline, const std::string& what) {
  char* p = static_cast<char*>(data);
  while (n > 0) {
    wait_fd(fd, POLLIN, deadline, what);
    const ssize_t k = ::recv(fd, p, n, 0);
    MOE_CHECK(k != 0, "dist: rendezvous connection closed {}", what);
    MOE_CHECK(k > 0 || errno == EINTR || errno == EAGAIN, "dist: rendezvous receive failed {}: {}", what,
              std::strerror(errno));
    if (k > 0) p += k, n -= size_t(k);
  }
}

sockaddr_storage resolve(const Rendezvous& r, socklen_t* len) {
  addrinfo hints{};
  hints.ai_family = AF_UNSPEC;
  hints.ai_socktype = SOCK_STREAM;
  addrinfo* res = nullptr;
  const std::string port = std::to_string(r.port);
  const int rc = ::getaddrinfo(r.host.c_str(), port.c_str(), &hints, &res);
  MOE_CHECK(rc == 0 && res, "dist: rendezvous host {}:{} does not resolve: {}", r.host, r.port, ::gai_strerror(rc));
  sockaddr_storage out{};
  std::memcpy(&out, res->ai_addr, res->ai_addrlen);
  *len = res->ai_addrlen;
  ::freeaddrinfo(res);
  return out;
}

std::vector<uint8_t> serve(const Rendezvous& r, const std::vector<uint8_t>& blob, Clock::time_point deadline) {
  socklen_t len = 0;
  const sockaddr_storage addr = resolve(r, &len);
  Fd s(::socket(addr.ss_family, SOCK_STREAM, 0));
  MOE_CHECK(s.fd >= 0, "dist: rendezvous socket: {}", std::strerror(errno));
  const int one = 1;
  ::setsockopt(s.fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
  MOE_CHECK(::bind(s.fd, reinterpret_cast<const sockaddr*>(&addr), len) == 0,
            "dist: rank 0 cannot listen on {}:{} for the rendezvous: {}", r.host, r.port, std::strerror(errno));
  MOE_CHECK(::listen(s.fd, r.size) == 0, "dist: rendezvous listen on {}:{}: {}", r.host, r.port, std::strerror(errno));
  std::vector<bool> seen(size_t(r.size), false);
  seen[0] = true;
  const uint32_t n = uint32_t(blob.size());
  for (int joined = 1; joined < r.size; ++joined) {
    wait_fd(s.fd, POLLIN, deadline,
            fmt::format("on {}:{} with {} of {} ranks joined", r.host, r.port, joined, r.size));
    Fd c(::accept(s.fd, nullptr, nullptr));
    MOE_CHECK(c.fd >= 0, "dist: rendezvous accept: {}", std::strerror(errno));
    char hello[8];
    recv_all(c.fd, hello, sizeof hello, deadline, "reading a peer's hello");
    MOE_CHECK(std::memcmp(hello, "MOE1", 4) == 0, "dist: rendezvous on {}:{}: a peer that is not a moe rank connected",
              r.host, r.port);
    int32_t peer = 0;
    std::memcpy(&peer, hello + 4, 4);
    MOE_CHECK(peer >= 1 && peer < r.size, "dist: rendezvous: a peer claims rank {} of {}", peer, r.size);
    MOE_CHECK(!seen[size_t(peer)], "dist: rendezvous: two peers claim rank {}", peer);
    seen[size_t(peer)] = true;
    send_all(c.fd, &n, 4, deadline, fmt::format("to rank {}", peer));
    send_all(c.fd, blob.data(), blob.size(), deadline, fmt::format("to rank {}", peer));
  }
  return blob;
}

std::vector<uint8_t> join(const Rendezvous& r, Clock::time_point deadline) {
  socklen_t len = 0;
  const sockaddr_storage addr = resolve(r, &len);
  for (;;) {
    Fd s(::socket(addr.ss_family, SOCK_STREAM, 0));
    MOE_CHECK(s.fd >= 0, "dist: rendezvous socket: {}", std::strerror(errno));
    if (::connect(s.fd, reinterpret_cast<const sockaddr*>(&addr), len) == 0) {
      char hello[8] = {'M', 'O', 'E', '1'};
      const int32_t me = r.rank;
      std::memcpy(hello + 4, &me, 4);
      const std::string what = fmt::format("talking to rank 0 at {}:{}", r.host, r.port);
      send_all(s.fd, hello, sizeof hello, deadline, what);
      uint32_t n = 0;
      recv_all(s.fd, &n, 4, deadline, what);
      MOE_CHECK(n <= (1u << 20), "dist: rendezvous: rank 0 announced a blob of {} bytes", n);
      std::vector<uint8_t> blob(n);
      recv_all(s.fd, blob.data(), n, deadline, what);
      return blob;
    }
    MOE_CHECK(Clock::now() < deadline, "dist: rank {} could not reach rank 0 at {}:{} within {} s: {}", r.rank, r.host,
              r.port, r.timeout_s, std::strerror(errno));
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
}

}  // namespace

std::vector<uint8_t> rendezvous_share(const Rendezvous& r, const std::vector<uint8_t>& blob) {
  MOE_CHECK(r.size >= 1 && r.rank >= 0 && r.rank < r.size, "dist: rendezvous rank {} of {} is out of range", r.rank,
            r.size);
  MOE_CHECK(r.port > 0 && r.port < 65536, "dist: rendezvous port {} is out of range", r.port);
  if (r.size == 1) return blob;
  const auto deadline = Clock::now() + std::chrono::seconds(r.timeout_s);
  return r.rank == 0 ? serve(r, blob, deadline) : join(r, deadline);
}

}  // namespace moe::dist
