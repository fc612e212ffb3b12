#include "server/loading_server.h"

#include <nlohmann/json.hpp>

#include <algorithm>
#include <cmath>

#include "server/web_assets.h"

namespace moe::server {

namespace {

void send_json(httplib::Response& res, int status, const nlohmann::json& j) {
  res.status = status;
  res.set_content(j.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace), "application/json");
}

nlohmann::json error_json(const std::string& message, const char* code) {
  return {{"error", {{"message", message}, {"type", "server_error"}, {"param", nullptr}, {"code", code}}}};
}

}  // namespace

LoadingServer::LoadingServer(HostPolicy hosts, std::string model_name)
    : hosts_(std::move(hosts)), model_name_(std::move(model_name)) {
  http_.set_read_timeout(30, 0);
  http_.set_write_timeout(30, 0);
  http_.set_payload_max_length(0);  // no body is read: every request but the page's GETs is a 503
  // One request per connection, every answer with Connection: close (httplib adds it): no connection outlives its
  // answer, so none is open across the hand-over to the real server (release) but those whose one request is
  // being read or answered, and those are answered. A client's next request takes a new connection, which waits in
  // the backlog for the real server when it comes in the hand-over.
  http_.set_keep_alive_max_count(1);
  http_.set_pre_routing_handler([this](const httplib::Request& req, httplib::Response& res) {
    if (req.has_header("Host"))
      if (auto why = hosts_.refusal(req.get_header_value("Host"), req.path)) {
        send_json(res, 403, error_json(*why, "host_not_allowed"));
        return httplib::Server::HandlerResponse::Handled;
      }
    if (req.method == "GET" && req.path == "/health") {
      // Rounded to 1e-3 and below 1 while loading: "progress":1 would read as done.
      const double p = std::clamp(std::floor(progress_.load() * 1000) / 1000, 0.0, 0.999);
      send_json(res, 503, {{"status", "loading"}, {"progress", p}, {"model", model_name_}});
      res.set_header("Retry-After", "1");
      return httplib::Server::HandlerResponse::Handled;
    }
    auto asset = [&](std::string_view body, const char* type) {
      res.set_content(body.data(), body.size(), type);
      res.set_header("Cache-Control", "no-cache");
      return httplib::Server::HandlerResponse::Handled;
    };
    if (req.method == "GET" && req.path == "/") return asset(web::index_html(), "text/html; charset=utf-8");
    if (req.method == "GET" && req.path == "/app.js") return asset(web::app_js(), "text/javascript; charset=utf-8");
    if (req.method == "GET" && req.path == "/style.css") return asset(web::style_css(), "text/css; charset=utf-8");
    send_json(res, 503, error_json("The model is still loading; GET /health says when it is ready", "model_loading"));
    res.set_header("Retry-After", "1");  // (a body, if any, is left unread: the connection closes)
    return httplib::Server::HandlerResponse::Handled;
  });
}

LoadingServer::~LoadingServer() {
  if (serving_.joinable()) {
    http_.shutdown();
    serving_.join();
  }
}

int LoadingServer::bind(const std::string& host, int port) {
  const int bound = listen_on(http_, host, port);
  serving_ = std::thread([this] { http_.listen_after_bind(); });
  return bound;
}

int LoadingServer::release() {
  const int fd = http_.release_listener();
  if (serving_.joinable()) serving_.join();
  return fd;
}

}  // namespace moe::server
