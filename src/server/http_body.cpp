#include "server/http_body.h"

#include <charconv>
#include <chrono>
#include <memory>

#include "server/http_connection.h"

namespace moe::server {

ApiError body_too_large() {
  return ApiError(413, "The request body is larger than this server accepts", "", "request_too_large");
}

ApiError body_timeout() {
  return ApiError(408, "The request body did not arrive in time (a pause over " +
                           std::to_string(kBodyIdleTimeout.count()) + " s, or longer than --body-timeout in all)",
                  "", "request_timeout");
}

std::optional<ApiError> check_body_framing(const httplib::Request& req, size_t max_body_bytes,
                                           bool read_by_server) {
  const bool chunked = req.has_header("Transfer-Encoding");
  const bool has_length = req.has_header("Content-Length");
  // RFC 9112 6.3: an invalid Content-Length makes the framing unrecoverable (400, and the connection closed).
  // httplib takes the first of several (a client going by another waits for bytes that never come) and reads
  // "-5" through strtoull as 2^64 - 5; with Transfer-Encoding as well, the two framings disagree (request
  // smuggling).
  const size_t lengths = req.get_header_value_count("Content-Length");
  for (size_t i = 0; i < lengths; ++i) {
    const std::string v = req.get_header_value("Content-Length", i);
    const bool digits = !v.empty() && v.find_first_not_of("0123456789") == std::string::npos;
    if (!digits || v != req.get_header_value("Content-Length"))
      return ApiError(400, "The request has an invalid or conflicting Content-Length", "",
                      "invalid_content_length");
  }
  if (has_length && chunked)
    return ApiError(400, "The request has both a Content-Length and a Transfer-Encoding", "",
                    "invalid_content_length");
  // The methods httplib reads a body for (its expect_content(); DELETE only with a Content-Length).
  const std::string& m = req.method;
  const bool body_method =
      m == "POST" || m == "PUT" || m == "PATCH" || m == "PRI" || (m == "DELETE" && has_length);
  if (has_length && !read_by_server) {
    const std::string v = req.get_header_value("Content-Length");
    uint64_t n = 0;
    const auto [end, ec] = std::from_chars(v.data(), v.data() + v.size(), n);
    if (ec == std::errc::result_out_of_range || (ec == std::errc() && n > max_body_bytes))
      return body_too_large();
  }
  if (!body_method) return std::nullopt;
  if (!chunked && !has_length)  // httplib would read until the client closes
    return ApiError(411, "The request needs a Content-Length or Transfer-Encoding: chunked", "",
                    "length_required");
  if (!read_by_server && (chunked || req.has_header("Content-Encoding")))
    return ApiError(413, "Only a plain body with a Content-Length is accepted here", "", "request_too_large");
  if (read_by_server && req.is_multipart_form_data())
    return ApiError(415, "Send the request body as application/json", "", "unsupported_media_type");
  return std::nullopt;
}

std::string read_body(const httplib::ContentReader& reader, const httplib::Response& res,
                      size_t max_body_bytes) {
  std::string body;
  bool over = false;
  std::chrono::steady_clock::time_point over_since;
  const bool ok = reader([&](const char* data, size_t n) {
    if (over) return std::chrono::steady_clock::now() - over_since < kBodyLinger;  // drained, not kept
    if (n > max_body_bytes - body.size()) {
      over = true;
      over_since = std::chrono::steady_clock::now();
      body = std::string();
      return true;
    }
    body.append(data, n);
    return true;
  });
  if (over || res.status == 413) throw body_too_large();
  if (!ok && HttpServer::current_header_failure() == HeaderFailure::body_timeout) throw body_timeout();
  if (!ok) {
    const int status = res.status == 415 ? 415 : 400;
    throw ApiError(status, status == 415
                               ? "The request's Content-Encoding is not supported"
                               : "The request body could not be read (broken chunked framing or encoding)");
  }
  return body;
}

void send_error_and_close(httplib::Response& res, const ApiError& e) { send_error_and_close(res, e, e.to_json()); }

void send_error_and_close(httplib::Response& res, const ApiError& e, const nlohmann::json& body) {
  res.status = e.status;
  res.set_header("Connection", "close");
  auto text = std::make_shared<std::string>(body.dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
  res.set_content_provider(text->size(), "application/json",
                           [text](size_t offset, size_t length, httplib::DataSink& sink) {
                             sink.write(text->data() + offset, length);
                             return false;  // the answer is complete: close the connection
                           });
}

}  // namespace moe::server
