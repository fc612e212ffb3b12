#include "server/host_check.h"

#include <arpa/inet.h>

#include <cctype>

namespace moe::server {

namespace {

std::string lower(std::string s) {
  for (auto& c : s) c = char(std::tolower((unsigned char)c));
  return s;
}

bool ipv4(const std::string& h) {
  in_addr a{};
  return ::inet_pton(AF_INET, h.c_str(), &a) == 1;
}

bool ipv4_loopback(const std::string& h) { return h.rfind("127.", 0) == 0 && ipv4(h); }

// "[v6]" -> true when v6 is an IPv6 address.
bool ipv6_bracketed(const std::string& h) {
  if (h.size() < 3 || h.front() != '[' || h.back() != ']') return false;
  in6_addr a{};
  return ::inet_pton(AF_INET6, h.substr(1, h.size() - 2).c_str(), &a) == 1;
}

}  // namespace

std::string host_part(const std::string& host_header) {
  const std::string h = lower(host_header);
  if (!h.empty() && h[0] == '[') return h.substr(0, h.find(']') == std::string::npos ? h.size() : h.find(']') + 1);
  return h.substr(0, h.find(':'));
}

bool host_is_loopback(const std::string& host_header) {
  const std::string h = host_part(host_header);
  const std::string suffix = ".localhost";
  return h == "localhost" ||
         (h.size() > suffix.size() && h.compare(h.size() - suffix.size(), suffix.size(), suffix) == 0) ||
         ipv4_loopback(h) || h == "[::1]";
}

bool is_loopback_address(const std::string& bind_host) {
  const std::string h = lower(bind_host);
  return h == "localhost" || ipv4_loopback(h) || h == "::1" || h == "[::1]";
}

bool host_is_ip_literal(const std::string& host_header) {
  const std::string h = host_part(host_header);
  return ipv4(h) || ipv6_bracketed(h);
}

bool same_origin(const std::string& origin, const std::string& host_header) {
  const std::string o = lower(origin), h = lower(host_header);
  return !h.empty() && (o == "http://" + h || o == "https://" + h);
}

std::optional<std::string> HostPolicy::refusal(const std::string& host_header, const std::string& path) const {
  const std::string h = host_part(host_header);
  if (host_is_loopback(host_header)) return std::nullopt;
  for (const auto& a : allowed_hosts)
    if (a == "*" || host_part(a) == h) return std::nullopt;
  if (is_loopback_address(bind_host))
    return "The Host header names another server: bound to a loopback address, this server answers to localhost, "
           "127.0.0.1 and [::1] only (add names with --allowed-hosts)";
  if (host_is_ip_literal(host_header) || (!h.empty() && h == host_part(bind_host))) return std::nullopt;
  if (api_key && path.rfind("/v1/", 0) == 0) return std::nullopt;
  return "The Host header '" + h + "' is not a name of this server: it answers to IP addresses, loopback names, " +
         "its --host and the names in --allowed-hosts" + (api_key ? std::string(" (any name on /v1/, with the key)") : "");
}

}  // namespace moe::server
