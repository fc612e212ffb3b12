#pragma once
// Request bodies under a size limit whatever their framing, and answers that close the connection.
//
// httplib 0.11 (Debian's shared library) checks set_payload_max_length only against a Content-Length, and
// then reads and drops that many bytes, however many; a chunked, gzip-encoded or unframed (read-to-EOF) body
// is read whole into memory. So: the POST routes read their body themselves through read_body (which keeps at
// most the limit, counting decoded bytes, and drains the rest only briefly); for any other request, whose
// body httplib reads itself, the pre-routing handler (check_body_framing) refuses before reading anything a
// body it could not bound; and an answer given with part of the body unread closes the connection
// (send_error_and_close), since the rest would otherwise be parsed as the next request.
#include <httplib.h>

#include <chrono>
#include <optional>
#include <string>

#include "server/api.h"

namespace moe::server {

// Called before the body is read. `read_by_server`: the request goes to a route that reads its body through
// read_body; httplib reads any other body itself, so only a Content-Length body is accepted there.
std::optional<ApiError> check_body_framing(const httplib::Request& req, size_t max_body_bytes,
                                           bool read_by_server);

// Past the limit, read_body keeps reading (and dropping) the body for this long, so that a client still
// sending it can finish and read the 413: closing a socket with unread input resets the connection, and a
// client that is still writing then often loses the answer. A body that goes on longer is cut off.
constexpr std::chrono::seconds kBodyLinger{2};

// The body, at most max_body_bytes after decoding (whatever the Content-Length says: httplib's own check is
// disabled, as it reads and drops a too-long body to its end, however long). Throws ApiError 413 past the
// limit, 408 when the body did not arrive in time (ConnectionStream's body deadline), 400 (or httplib's status) when the framing or encoding is broken; the connection must then be
// closed, as the rest of the body may be unread.
std::string read_body(const httplib::ContentReader& reader, const httplib::Response& res,
                      size_t max_body_bytes);

// Answers with `e` and closes the connection once the answer is written (httplib closes a connection whose
// content provider fails, so the provider writes the whole answer, then fails). The error handler leaves a
// response with a Connection header alone.
void send_error_and_close(httplib::Response& res, const ApiError& e);
// The same with the body in another API's error shape (Anthropic's on /v1/messages); e gives the status.
void send_error_and_close(httplib::Response& res, const ApiError& e, const nlohmann::json& body);

ApiError body_too_large();
ApiError body_timeout();

}  // namespace moe::server
