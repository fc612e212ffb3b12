#pragma once
// What answers on the server's port while the model loads: `moe serve` listens at once, so clients (and the chat
// page) can tell "loading" from "down". GET /health is a 503 {"status":"loading","progress":0.42} (progress 0..1);
// the chat page's files are served (it shows its loading state); every other request is a 503 `model_loading`.
// The Host rule of the real server applies (host_check.h). When the model is ready, release() hands the listening
// socket to the Server (Server::adopt): connections arriving meanwhile wait in the backlog, none is refused.
#include <atomic>
#include <memory>
#include <string>
#include <thread>

#include "server/host_check.h"
#include "server/http_connection.h"

namespace moe::server {

class LoadingServer {
 public:
  LoadingServer(HostPolicy hosts, std::string model_name);
  ~LoadingServer();
  int bind(const std::string& host, int port);  // returns the bound port; throws moe::Error; then serves
  void set_progress(double p) { progress_ = p; }
  int release();  // stops answering (after the requests being served) and returns the listening socket

 private:
  HostPolicy hosts_;
  std::string model_name_;
  std::atomic<double> progress_{0.0};
  HttpServer http_{64};
  std::thread serving_;
};

}  // namespace moe::server
