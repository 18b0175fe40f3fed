// What the HTTP layer and the workers both need to say about a response: the
// JSON error body, and the rules a handler's response must keep before any of
// it reaches the wire. Compiled into the HTTP layer; no Python here.
#pragma once

#include <ctime>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "server/model/executor.hpp"

namespace gilgamesh {

// Largest total size of the headers a handler may set (names + values).
constexpr std::size_t kMaxHandlerHeaderBytes = 64 * 1024;

// {"error": message, "request_id": id} as an HttpResponseData. Invalid UTF-8 in
// the message is replaced, never thrown on.
HttpResponseData make_error_response(int status, const std::string& message,
                                     const std::string& request_id);

// Empty if `response` may go on the wire as it is; else which rule it breaks:
// status outside 200..599, a header name that is not an RFC 9110 token, a header
// value or content type holding CR, LF, NUL or another control character (HTAB
// is allowed), or headers over kMaxHandlerHeaderBytes in total.
std::string response_violation(const HttpResponseData& response);

// What every answer carries besides its own fields, from the command line, as uvicorn's
// --no-server-header and --header: whether Server names gilgamesh, and default fields (an
// answer's own field of the same name replaces a default). Set once, before the server
// serves; read by every I/O thread after.
struct ResponseDefaults {
  bool server_header = true;
  std::vector<Header> headers;
};
void set_response_defaults(ResponseDefaults defaults);
const ResponseDefaults& response_defaults();

// One --header value, "Name: value" (the name an RFC 9110 token, the value trimmed and free of
// control characters, the name not one the server sets itself: Server, Date, X-Request-Id,
// Content-Type or a framing field); nothing, with `error` saying why, if it is not one.
std::optional<Header> parse_default_header(std::string_view text, std::string& error);

// RFC 9110 token characters (header names, methods).
bool is_token(std::string_view s);

// A header value's item without the optional white space (spaces, tabs) around it.
std::string_view trim_ows(std::string_view s);

// `t` as an RFC 9110 IMF-fixdate ("Sun, 06 Nov 1994 08:49:37 GMT"): Date, Last-Modified.
std::string imf_date(std::time_t t);

// `s` in single quotes for a message or log line, cut after `limit` bytes ("..."), with
// control bytes, bytes >= 0x7f, quotes and backslashes written as \xNN.
std::string log_quoted(std::string_view s, std::size_t limit = 80);

// `s` with every byte that is not part of a well-formed UTF-8 sequence
// (RFC 3629: no overlong forms, no surrogates, nothing past U+10FFFF)
// replaced by U+FFFD. What Python's surrogateescape makes of a lone surrogate
// comes out as U+FFFD.
std::string replace_invalid_utf8(std::string_view s);

}  // namespace gilgamesh
