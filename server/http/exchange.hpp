// One HTTP/1.1 exchange's decisions, as plain functions of bytes and state:
// where a request head ends and whether its bytes are acceptable, whether its
// framing (Content-Length / Transfer-Encoding) is unambiguous, what each parse
// error answers, where a request goes (a built-in answer or a Python route),
// and how a response becomes a Beast message. The session (http_server.cpp)
// calls them with sockets and timers around them; the request fuzz target
// (tests/fuzz/fuzz_request.cpp) calls the same functions on raw bytes.
//
// What a request may look like (RFC 9112), and what is refused:
//   - the head ends at the first empty line and is at most kHeaderLimit bytes
//     (431); every line ends with CRLF: a bare LF or CR is 400, and so is a
//     header line starting with whitespace (obsolete line folding). Empty lines
//     before the request line are skipped.
//   - Transfer-Encoding is accepted only as one field whose value is exactly
//     `chunked` (any case), on HTTP/1.1, without Content-Length: a coding the
//     server does not implement is 501, a list, a repeat, HTTP/1.0 or a
//     Content-Length beside it is 400.
//   - at most kMaxFields header fields (431), as gunicorn, Apache and Tomcat.
//   - Content-Length is one field of digits (a repeat, even of the same
//     value, or a list is 400); an HTTP/1.1 request has exactly one Host, and
//     Content-Type is not repeated (RFC 9110 5.3: one value; two are ambiguous).
//   - a chunked body's trailer fields are not passed on (neither ASGI nor WSGI
//     has a place for them; Beast's parser would add them to the headers), and
//     one that would frame, route or authenticate the request is 400.
// A refused request is answered and the connection then closed: what follows
// it on the wire cannot be trusted to start a new request (request smuggling).
#pragma once

#include <boost/beast/http.hpp>

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "server/model/executor.hpp"
#include "server/model/response.hpp"
#include "server/http/router.hpp"
#include "server/http/static_files.hpp"
#include "server/observation/metrics.hpp"

namespace gilgamesh::exchange {

namespace http = boost::beast::http;
using Request = http::request<http::string_body>;
using Parser = http::request_parser<http::string_body>;
using WireResponse = http::response<http::string_body>;

// Request line and headers, in bytes: --max-header-size's default.
inline constexpr std::size_t kHeaderLimit = HttpOptions::kDefaultMaxHeader;
// Header fields in one request head.
constexpr std::size_t kMaxFields = 100;

struct Limits {
  std::size_t header_limit = kHeaderLimit;
  std::size_t max_body = 1024 * 1024;
};

// A request answered without being routed; the connection closes after it.
struct Refusal {
  http::status status = http::status::bad_request;
  std::string message;
};

// Finds the end of a request head in the bytes received so far and refuses
// the line breaks Beast's parser would accept but a proxy in front may read
// differently. Scans each byte once however the head arrives.
class HeadScanner {
 public:
  explicit HeadScanner(std::size_t limit = kHeaderLimit) : limit_(limit) {}
  enum class Result { need_more, complete, refused };
  // `received`: every byte buffered for this request so far (a prefix that
  // grows between calls).
  Result scan(std::string_view received);
  // Empty lines before the request line (skipped, not parsed).
  std::size_t blank_prefix() const { return blank_prefix_; }
  // Once complete: where the head ends, after its empty line.
  std::size_t end() const { return end_; }
  // Once refused: the answer.
  const Refusal& refusal() const { return refusal_; }
  // True once a byte of the request line has arrived (not counting empty lines).
  bool started() const { return pos_ > blank_prefix_ || in_head_; }

 private:
  Result refuse(http::status status, std::string message);
  std::size_t limit_;
  std::size_t pos_ = 0;           // next byte to look at
  std::size_t blank_prefix_ = 0;
  std::size_t end_ = 0;
  bool in_head_ = false;          // past the empty lines before the request line
  bool line_start_ = true;        // pos_ begins a line
  bool first_line_ = true;        // that line is the request line
  std::size_t fields_ = 0;        // field lines ended so far
  Refusal refusal_;
};

// Sets the limits on a fresh parser: where the data enters.
void prepare(Parser& parser, const Limits& limits);

// Parses a complete head (as found by HeadScanner, without the blank prefix).
// Errors are Beast's (see refusal_for).
boost::system::error_code parse_head(Parser& parser, std::string_view head);

// Beast keeps fields of the same name together; the app sees them as they came
// (ASGI's headers are "in order"). The order of `request`'s fields (as iterated)
// that `head` sent them in, or nothing when that is the iteration's own order.
std::vector<std::size_t> wire_order(std::string_view head, const Request& request);

// The framing and Host rules Beast's parser leaves open (see the top of this
// file); nothing if the parsed head may be served.
std::optional<Refusal> framing_refusal(const Request& head);

// A chunked body's trailer section. Beast's parser adds its fields to the
// request's header (beside any of the same name), where the app would take them
// for headers. `head` is the header as the head gave it, kept before the body
// was read. Refuses a trailer field that frames, routes or authenticates the
// request (RFC 9110 6.5.1: Host, Content-Length, Transfer-Encoding, Trailer, TE,
// Authorization); otherwise puts `head` back: the trailers are dropped.
std::optional<Refusal> drop_trailers(Request& request, http::request_header<>&& head);

// The one place a read or parse error becomes an answer: a refusal, or
// nothing when the connection should just close (the client left, or was too
// slow to send its request).
std::optional<Refusal> refusal_for(boost::system::error_code ec, const Limits& limits);

using gilgamesh::trim_ows;  // server/model/response.hpp

// The request id: the client's X-Request-Id if it is short and printable, else a new one.
std::string request_id_for(const Request& request);
std::string new_request_id();

// What routing reads of the server.
struct RoutingState {
  const Router& router;
  const ServerView& view;  // the built-in endpoints' snapshot; view.executor answers /readyz
  bool draining = false;   // the listener has closed: /healthz answers 503
  const StaticFiles* statics = nullptr;  // --static-path-mount's directories, if any
};

// The server's own answer: a built-in endpoint, 404, 405 (with Allow), 503
// while starting (with Retry-After), 400 for a target that is not a path.
struct Answer {
  HttpResponseData response;
  bool close = false;  // the connection ends after it
  // GET /events: the session hands its socket to the event streams (events.hpp)
  // instead of writing `response`.
  bool event_stream = false;
};

// A request for a Python route.
struct Dispatch {
  std::size_t route_index = 0;
  std::vector<PathParam> params;
  std::string path;    // percent-decoded, without the query
  std::string query;   // raw, after '?'
  std::string target;  // as received, without '#...'
};

// Where a parsed request goes: the server's own answer, a Python route, or a file under a
// static mount (answered by StaticFiles::answer, which reads it). Pure: reads `state`,
// changes nothing.
std::variant<Answer, Dispatch, StaticRequest> route(const Request& request, const std::string& request_id,
                                     const RoutingState& state);

// Where a request came in, for the job (WSGI's environ).
struct Peer {
  std::string remote_addr;
  std::uint16_t remote_port = 0;
  std::string local_addr;
  std::uint16_t local_port = 0;
};

// The plain-data request a worker gets; takes the body out of `request`.
// `order`: wire_order()'s, for the headers.
HttpRequestData job_request(Request& request, Dispatch&& dispatch, const std::string& request_id,
                            const Peer& peer, const std::vector<std::size_t>& order = {});

// A WebSocket upgrade (an ASGI app's) that the app must not see, as RFC 6455 4.2.1 has a
// server refuse it: the answer (the JSON error, the connection to close), or nothing.
// One Sec-WebSocket-Key, base64 of 16 bytes, else 400; one Sec-WebSocket-Version, 13, else
// 426 with `Sec-WebSocket-Version: 13` (400 when it is missing or repeated).
std::optional<HttpResponseData> websocket_refusal(const Request& request, const std::string& request_id);

// The fields each of the server's answers carries: Server (unless --no-server-header), Date
// and X-Request-Id (set, not added), and --header's defaults. to_wire() sets them; so does the
// WebSocket handshake's 101.
void set_server_fields(http::fields& fields, const std::string& request_id);

// An answer's own fields, after set_server_fields(): framing fields are the server's and left
// out; its Server, Date and Content-Type replace the server's, and a field a --header default
// names replaces that default (all the answer's values of it kept); the rest are added.
void put_answer_fields(http::fields& fields, const std::vector<Header>& headers);

// What the response depends on besides itself.
struct ResponseContext {
  unsigned version = 11;   // the request's (10 or 11)
  bool head = false;       // a HEAD request: no body, the GET body's Content-Length
  bool keep_alive = false;
  std::string request_id;
};

// The one place a response becomes a Beast message, for the server's own
// answers and for a handler's alike. A response that breaks a rule of
// response_violation() (server/model/response.hpp), or that Beast refuses to
// hold, is replaced by a 500 error, and `problem` says why; nothing here
// throws (but std::bad_alloc). Server, Date, X-Request-Id and Content-Length
// are set here; Content-Length, Transfer-Encoding, Connection and Keep-Alive
// from `response` are dropped (framing is the server's).
WireResponse to_wire(HttpResponseData&& response, const ResponseContext& context, std::string& problem);

// Empty, or why the Content-Length a handler gave does not match the body it
// gave (answered 500, and the connection closed: the handler's idea of the
// body is not to be trusted).
std::string length_mismatch(const HttpResponseData& response, const ResponseContext& context);

// The head of an answer that streams (HttpResponseData::stream), and how its
// body is framed on the wire:
//   length   the handler gave a Content-Length: that many bytes, no more
//            (the rest is cut and the connection closed), no fewer (closed);
//   chunked  HTTP/1.1 without one: Transfer-Encoding: chunked;
//   close    HTTP/1.0 without one: the body ends where the connection does;
//   none     no body goes out (HEAD, 204, 304).
struct StreamHead {
  enum class Framing { length, chunked, close, none };
  http::response<http::empty_body> message;
  Framing framing = Framing::chunked;
  std::uint64_t length = 0;  // with Framing::length
};
// As to_wire(), for the head alone: nullopt, with `problem` set, when Beast
// refuses it (response_violation() was checked where the head was made).
std::optional<StreamHead> to_wire_head(HttpResponseData&& head, const ResponseContext& context,
                                       std::string& problem);

}  // namespace gilgamesh::exchange
