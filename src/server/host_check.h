#pragma once
// Which Host headers the server answers (DNS rebinding): a page on an attacker's domain whose name is made to
// resolve to this server's address reaches it same-origin, with its own name in the Host header. So a request is
// answered only when its Host names this server:
//  - a loopback name or address (localhost, *.localhost, 127.0.0.0/8, [::1]) always;
//  - a name or address listed in --allowed-hosts (exact, without the port; "*" allows any Host);
//  - bound to a loopback address: nothing else (a page cannot reach it through a name it controls);
//  - bound to another address: also any IP literal (a page can only send one that it connected to, so its origin
//    is this server's, and rebinding needs a DNS name), the bind address itself when it is a name, and any Host
//    when an API key is required (the key, which a page does not have, guards the API; /health, /metrics and
//    the chat page answer only to the names above).
// A request without a Host header (HTTP/1.0; browsers always send one) is answered.
#include <optional>
#include <string>
#include <vector>

namespace moe::server {

struct HostPolicy {
  std::string bind_host;                   // --host
  std::vector<std::string> allowed_hosts;  // --allowed-hosts
  bool api_key = false;                    // an API key is required on /v1/

  // Why a request with this Host header (and path) is refused, or nullopt when it is answered.
  std::optional<std::string> refusal(const std::string& host_header, const std::string& path) const;
};

// The host of a Host header value, lower case, without the port (an IPv6 literal keeps its brackets).
std::string host_part(const std::string& host_header);
// "localhost", "*.localhost", 127.0.0.0/8 or [::1], with or without a port.
bool host_is_loopback(const std::string& host_header);
// A loopback address or name to bind to (localhost, 127.x, ::1).
bool is_loopback_address(const std::string& bind_host);
// An IPv4 address or a bracketed IPv6 address, with or without a port.
bool host_is_ip_literal(const std::string& host_header);
// The Origin names the host of the Host header (http or https).
bool same_origin(const std::string& origin, const std::string& host_header);

}  // namespace moe::server
