#include "server/http/exchange.hpp"

#include <boost/asio/buffer.hpp>
#include <boost/asio/error.hpp>
#include <boost/beast/core/string.hpp>
#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <ctime>
#include <random>

#include "server/http/builtins.hpp"
#include "server/model/query.hpp"
#include "server/model/response.hpp"

namespace gilgamesh::exchange {

namespace beast = boost::beast;

namespace {

constexpr const char* kServerName = "gilgamesh/" GILGAMESH_VERSION;

// RFC 9110 IMF-fixdate, formatted once per second per thread.
const std::string& http_date() {
  thread_local std::time_t cached_second = 0;
  thread_local std::string cached;
  std::time_t now = std::time(nullptr);
  if (now != cached_second) {
    cached = imf_date(now);
    cached_second = now;
  }
  return cached;
}

bool acceptable_request_id(std::string_view id) {
  if (id.empty() || id.size() > 200) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

Refusal bad_request(std::string message) { return {http::status::bad_request, std::move(message)}; }

Answer error_answer(http::status status, const std::string& message, const std::string& request_id) {
  return Answer{make_error_response(static_cast<int>(status), message, request_id), false};
}

// The Content-Length a handler gave, when it is one decimal number.
std::optional<std::uint64_t> given_length(const std::vector<Header>& headers) {
  for (const Header& h : headers) {
    if (!beast::iequals(h.name, "content-length")) continue;
    if (h.value.empty() || h.value.size() > 18 || h.value.find_first_not_of("0123456789") != std::string::npos) {
      return std::nullopt;
    }
    return std::stoull(h.value);
  }
  return std::nullopt;
}

WireResponse build(HttpResponseData&& r, const ResponseContext& c) {
  WireResponse out;
  out.version(c.version == 10 ? 10 : 11);
  out.result(static_cast<unsigned>(r.status));
  set_server_fields(out, c.request_id);
  if (!r.content_type.empty()) out.set(http::field::content_type, r.content_type);
  std::optional<std::uint64_t> head_length;  // a HEAD answer's own Content-Length (WSGI apps send one)
  for (const Header& h : r.headers) {
    if (c.head && r.body.empty() && http::string_to_field(h.name) == http::field::content_length &&
        !h.value.empty() && h.value.size() < 19 && h.value.find_first_not_of("0123456789") == std::string::npos) {
      head_length = std::stoull(h.value);
    }
  }
  put_answer_fields(out, r.headers);
  const int code = r.status;
  const bool bodiless = code == 204 || code == 304 || (code >= 100 && code < 200);
  if (!bodiless) out.body() = std::move(r.body);
  out.keep_alive(c.keep_alive);
  out.prepare_payload();
  if (c.head) out.body().clear();  // Content-Length stays that of the GET body
  if (head_length && !bodiless) out.content_length(*head_length);
  return out;
}

}  // namespace

void set_server_fields(http::fields& fields, const std::string& request_id) {
  const ResponseDefaults& defaults = response_defaults();
  if (defaults.server_header) fields.set(http::field::server, kServerName);
  fields.set(http::field::date, http_date());
  fields.set("X-Request-Id", request_id);
  for (const Header& h : defaults.headers) fields.insert(h.name, h.value);
}

void put_answer_fields(http::fields& fields, const std::vector<Header>& headers) {
  const std::vector<Header>& defaults = response_defaults().headers;
  std::vector<std::string_view> replaced;  // defaults this answer names itself
  for (const Header& h : headers) {
    const http::field field = http::string_to_field(h.name);
    if (field == http::field::content_length || field == http::field::transfer_encoding ||
        field == http::field::connection || field == http::field::keep_alive) {
      continue;  // framing is the server's
    }
    if (field == http::field::server || field == http::field::date || field == http::field::content_type) {
      fields.set(h.name, h.value);
      continue;
    }
    const bool a_default = std::any_of(defaults.begin(), defaults.end(),
                                       [&](const Header& d) { return boost::beast::iequals(d.name, h.name); });
    if (a_default && std::none_of(replaced.begin(), replaced.end(),
                                  [&](std::string_view n) { return boost::beast::iequals(n, h.name); })) {
      fields.erase(h.name);
      replaced.push_back(h.name);
    }
    fields.insert(h.name, h.value);
  }
}

std::optional<HttpResponseData> websocket_refusal(const Request& request, const std::string& request_id) {
  auto refuse = [&](int status, const std::string& why) {
    HttpResponseData r = make_error_response(status, "WebSocket handshake: " + why, request_id);
    if (status == 426) r.headers.push_back({"Sec-WebSocket-Version", "13"});
    return std::optional<HttpResponseData>(std::move(r));
  };
  const auto versions = request.count(http::field::sec_websocket_version);
  if (versions != 1) {
    return refuse(400, versions == 0 ? "no Sec-WebSocket-Version" : "Sec-WebSocket-Version is repeated");
  }
  if (request[http::field::sec_websocket_version] != "13") {
    return refuse(426, "Sec-WebSocket-Version must be 13");
  }
  const auto keys = request.count(http::field::sec_websocket_key);
  if (keys != 1) return refuse(400, keys == 0 ? "no Sec-WebSocket-Key" : "Sec-WebSocket-Key is repeated");
  // Base64 of 16 bytes: 22 characters of the alphabet, then "==".
  const std::string_view key = request[http::field::sec_websocket_key];
  const bool base64_of_16 = key.size() == 24 && key.substr(22) == "==" &&
                            std::all_of(key.begin(), key.begin() + 22, [](char c) {
                              return std::isalnum(static_cast<unsigned char>(c)) || c == '+' || c == '/';
                            });
  if (!base64_of_16) return refuse(400, "Sec-WebSocket-Key is not 16 bytes in base64");
  return std::nullopt;
}

// --- the head -----------------------------------------------------------------

HeadScanner::Result HeadScanner::refuse(http::status status, std::string message) {
  refusal_ = Refusal{status, std::move(message)};
  return Result::refused;
}

HeadScanner::Result HeadScanner::scan(std::string_view in) {
  while (pos_ < in.size()) {
    const char c = in[pos_];
    if (!in_head_) {
      // RFC 9112 2.2: empty lines before the request line are ignored.
      if (c == '\r') {
        if (pos_ + 1 >= in.size()) return Result::need_more;
        if (in[pos_ + 1] != '\n') return refuse(http::status::bad_request, "bare CR in the request head");
        pos_ += 2;
        blank_prefix_ = pos_;
        if (blank_prefix_ > limit_) {
          return refuse(http::status::bad_request, "too many empty lines before the request line");
        }
        continue;
      }
      if (c == '\n') return refuse(http::status::bad_request, "line ending without CR in the request head");
      in_head_ = true;
    }
    if (pos_ - blank_prefix_ >= limit_) {
      return refuse(http::status::request_header_fields_too_large,
                    "request line and headers exceed " + std::to_string(limit_) + " bytes");
    }
    if (line_start_ && !first_line_ && (c == ' ' || c == '\t')) {
      return refuse(http::status::bad_request,
                    "a header line starts with whitespace (obsolete line folding is not accepted)");
    }
    if (c == '\r') {
      if (pos_ + 1 >= in.size()) return Result::need_more;
      if (in[pos_ + 1] != '\n') return refuse(http::status::bad_request, "bare CR in the request head");
      if (line_start_ && !first_line_) {
        end_ = pos_ + 2;
        pos_ = end_;
        return Result::complete;
      }
      if (!first_line_ && ++fields_ > kMaxFields) {
        return refuse(http::status::request_header_fields_too_large,
                      "more than " + std::to_string(kMaxFields) + " header fields");
      }
      pos_ += 2;
      line_start_ = true;
      first_line_ = false;
      continue;
    }
    if (c == '\n') return refuse(http::status::bad_request, "line ending without CR in the request head");
    line_start_ = false;
    ++pos_;
  }
  return Result::need_more;
}

void prepare(Parser& parser, const Limits& limits) {
  parser.header_limit(static_cast<std::uint32_t>(limits.header_limit));
  parser.body_limit(limits.max_body);
}

boost::system::error_code parse_head(Parser& parser, std::string_view head) {
  boost::system::error_code ec;
  parser.put(boost::asio::buffer(head.data(), head.size()), ec);
  if (!ec && !parser.is_header_done()) ec = http::error::need_more;
  return ec;
}

namespace {

// Calls `f(name)` for each field line of `head`, in order, while it returns true.
template <typename F>
void each_sent_name(std::string_view head, F&& f) {
  for (std::size_t at = head.find('\n'); at != std::string_view::npos;) {
    const std::size_t end = head.find('\n', at + 1);
    if (end == std::string_view::npos) return;
    std::string_view line = head.substr(at + 1, end - at - 1);
    at = end;
    if (!line.empty() && line.back() == '\r') line.remove_suffix(1);
    if (line.empty()) return;
    const std::size_t colon = line.find(':');
    if (colon != std::string_view::npos && !f(line.substr(0, colon))) return;
  }
}

}  // namespace

std::vector<std::size_t> wire_order(std::string_view head, const Request& request) {
  // The common case, without allocating: the fields come out as they were sent.
  auto it = request.begin();
  bool same = true;
  each_sent_name(head, [&](std::string_view name) {
    same = it != request.end() && beast::iequals(it->name_string(), name);
    if (same) ++it;
    return same;
  });
  if (same && it == request.end()) return {};
  std::vector<std::string_view> kept;
  for (const auto& field : request) kept.push_back(field.name_string());
  std::vector<std::size_t> order;
  std::vector<bool> taken(kept.size(), false);
  bool matched = true;
  each_sent_name(head, [&](std::string_view name) {
    std::size_t j = 0;
    while (j < kept.size() && (taken[j] || !beast::iequals(kept[j], name))) ++j;
    matched = j < kept.size();
    if (matched) {
      taken[j] = true;
      order.push_back(j);
    }
    return matched;
  });
  if (!matched || order.size() != kept.size()) return {};
  return order;
}

std::optional<Refusal> framing_refusal(const Request& head) {
  std::size_t te_count = 0, cl_count = 0, host_count = 0, type_count = 0;
  std::string_view te, cl;
  for (const auto& f : head) {
    switch (f.name()) {
      case http::field::transfer_encoding: ++te_count; te = f.value(); break;
      case http::field::content_length: ++cl_count; cl = f.value(); break;
      case http::field::host: ++host_count; break;
      case http::field::content_type: ++type_count; break;
      default: break;
    }
  }
  if (te_count > 0) {
    if (head.version() < 11) return bad_request("Transfer-Encoding is not allowed in an HTTP/1.0 request");
    if (cl_count > 0) return bad_request("Transfer-Encoding and Content-Length together are ambiguous");
    if (te_count > 1) return bad_request("Transfer-Encoding is repeated");
    std::vector<std::string_view> codings;
    for (std::string_view rest = te;;) {
      const auto comma = rest.find(',');
      codings.push_back(trim_ows(rest.substr(0, comma)));
      if (comma == std::string_view::npos) break;
      rest.remove_prefix(comma + 1);
    }
    if (codings.size() > 1) {
      return bad_request("Transfer-Encoding must be exactly 'chunked', got " + log_quoted(te, 60));
    }
    if (!beast::iequals(codings[0], "chunked")) {
      const std::string_view name = codings[0].substr(0, codings[0].find(';'));
      if (!is_token(trim_ows(name))) return bad_request("Transfer-Encoding " + log_quoted(te, 60) + " is malformed");
      return Refusal{http::status::not_implemented,
                     "transfer coding " + log_quoted(te, 60) + " is not supported; send the body with "
                     "Content-Length or Transfer-Encoding: chunked"};
    }
  }
  if (cl_count > 1) return bad_request("Content-Length is repeated");
  if (cl_count == 1 && (cl.empty() || cl.find_first_not_of("0123456789") != std::string_view::npos)) {
    return bad_request("Content-Length must be a number, got " + log_quoted(cl, 60));
  }
  if (host_count > 1) return bad_request("Host is repeated");
  if (host_count == 0 && head.version() >= 11) return bad_request("an HTTP/1.1 request needs a Host header");
  if (type_count > 1) return bad_request("Content-Type is repeated");
  return std::nullopt;
}

std::optional<Refusal> drop_trailers(Request& request, http::request_header<>&& head) {
  std::size_t in_head = 0, now = 0;
  for (auto it = head.begin(); it != head.end(); ++it) ++in_head;
  for (auto it = request.begin(); it != request.end(); ++it) ++now;
  if (now == in_head) return std::nullopt;  // no trailer fields (the common case)
  // The fields the head did not send, by name and value.
  std::vector<std::pair<std::string_view, std::string_view>> sent;
  sent.reserve(in_head);
  for (const auto& f : head) sent.emplace_back(f.name_string(), f.value());
  std::optional<Refusal> refusal;
  for (const auto& f : request) {
    auto match = std::find_if(sent.begin(), sent.end(), [&](const auto& s) {
      return s.first == f.name_string() && s.second == f.value();
    });
    if (match != sent.end()) {
      sent.erase(match);
      continue;
    }
    switch (f.name()) {
      case http::field::host:
      case http::field::content_length:
      case http::field::transfer_encoding:
      case http::field::trailer:
      case http::field::te:
      case http::field::authorization:
        refusal = bad_request("trailer field " + log_quoted(f.name_string(), 60) +
                              " is not allowed (it would frame, route or authenticate the request)");
        break;
      default:
        break;
    }
    if (refusal) break;
  }
  request.base() = std::move(head);
  return refusal;
}

std::optional<Refusal> refusal_for(boost::system::error_code ec, const Limits& limits) {
  static const auto& http_errors = make_error_code(http::error::need_more).category();
  if (ec.category() != http_errors) return std::nullopt;  // the socket: reset, timeout, closed
  switch (static_cast<http::error>(ec.value())) {
    case http::error::end_of_stream:
    case http::error::partial_message:
      return std::nullopt;  // the client left
    case http::error::header_limit:
      return Refusal{http::status::request_header_fields_too_large,
                     "request line and headers exceed " + std::to_string(limits.header_limit) + " bytes"};
    case http::error::body_limit:
      return Refusal{http::status::payload_too_large,
                     "request body exceeds " + std::to_string(limits.max_body) + " bytes"};
    case http::error::bad_content_length:
    case http::error::multiple_content_length:
      return bad_request("Content-Length is malformed, repeated or beside Transfer-Encoding");
    case http::error::bad_transfer_encoding:
      return bad_request("Transfer-Encoding is repeated or beside Content-Length");
    case http::error::bad_chunk:
    case http::error::bad_chunk_extension:
      return bad_request("malformed chunked body: " + ec.message());
    default:
      return bad_request("malformed request: " + ec.message());
  }
}

std::string new_request_id() {
  thread_local std::mt19937_64 rng{std::random_device{}() ^ (static_cast<std::uint64_t>(getpid()) << 32)};
  static constexpr char kHex[] = "0123456789abcdef";
  std::uint64_t a = rng(), b = rng();
  std::string id(32, '0');
  for (int i = 0; i < 16; ++i) {
    id[static_cast<std::size_t>(i)] = kHex[(a >> (i * 4)) & 0xf];
    id[static_cast<std::size_t>(16 + i)] = kHex[(b >> (i * 4)) & 0xf];
  }
  return id;
}

std::string request_id_for(const Request& request) {
  auto rid = request["X-Request-Id"];
  return acceptable_request_id(rid) ? std::string(rid) : new_request_id();
}

// --- routing ------------------------------------------------------------------

std::variant<Answer, Dispatch, StaticRequest> route(const Request& request, const std::string& request_id,
                                                    const RoutingState& state) {
  std::string_view target = request.target();
  // absolute-form (proxies): keep only the path and query
  if (target.starts_with("http://") || target.starts_with("https://")) {
    const auto slash = target.find('/', target.find("//") + 2);
    target = slash == std::string_view::npos ? std::string_view("/") : target.substr(slash);
  }
  if (target.empty() || target.front() != '/') {
    Answer a = error_answer(http::status::bad_request, "request target must be a path starting with '/'",
                            request_id);
    a.close = true;
    return a;
  }
  if (const auto hash = target.find('#'); hash != std::string_view::npos) target = target.substr(0, hash);
  const auto qmark = target.find('?');
  if (state.statics != nullptr) {
    const std::string_view query = qmark == std::string_view::npos ? std::string_view{} : target.substr(qmark + 1);
    if (auto file = state.statics->match(target.substr(0, std::min(qmark, target.size())), query)) {
      return std::move(*file);
    }
  }
  Dispatch d;
  d.path = percent_decode(target.substr(0, std::min(qmark, target.size())), false);
  if (qmark != std::string_view::npos) d.query = std::string(target.substr(qmark + 1));

  const std::string_view method = request.method_string();
  RouteMatch match = state.router.match(method, d.path);
  if (match.result == RouteMatch::Result::not_found) {
    if (!state.view.routes_ready) {
      Answer a = error_answer(http::status::service_unavailable, "server is starting; retry later", request_id);
      a.response.headers.push_back({"Retry-After", "1"});
      return a;
    }
    return error_answer(http::status::not_found, "no route for " + d.path, request_id);
  }
  if (match.result == RouteMatch::Result::method_not_allowed) {
    Answer a = error_answer(http::status::method_not_allowed,
                            std::string(method) + " is not allowed on " + d.path + "; allowed: " + match.allow,
                            request_id);
    a.response.headers.push_back({"Allow", match.allow});
    return a;
  }
  if (match.builtin != Builtin::none) {
    return builtin_answer(match.builtin, state.view, state.draining, request.method() == http::verb::head,
                          request_id);
  }
  d.route_index = match.route_index;
  d.params = std::move(match.params);
  d.target = std::string(target);
  return d;
}

HttpRequestData job_request(Request& request, Dispatch&& d, const std::string& request_id, const Peer& peer,
                            const std::vector<std::size_t>& order) {
  HttpRequestData out;
  out.method = std::string(request.method_string());
  out.path = std::move(d.path);
  out.query_string = std::move(d.query);
  out.request_id = request_id;
  out.headers.reserve(16);
  for (const auto& field : request) {
    out.headers.push_back({std::string(field.name_string()), std::string(field.value())});
  }
  if (!order.empty()) {
    std::vector<Header> as_sent;
    as_sent.reserve(order.size());
    for (std::size_t i : order) as_sent.push_back(std::move(out.headers[i]));
    out.headers = std::move(as_sent);
  }
  out.body = std::move(request.body());
  out.path_params = std::move(d.params);
  out.target = std::move(d.target);
  out.http_version = request.version() == 10 ? "HTTP/1.0" : "HTTP/1.1";
  out.remote_addr = peer.remote_addr;
  out.remote_port = peer.remote_port;
  out.server_addr = peer.local_addr;
  out.server_port = peer.local_port;
  return out;
}

// --- the response ---------------------------------------------------------------

WireResponse to_wire(HttpResponseData&& response, const ResponseContext& context, std::string& problem) {
  problem = response_violation(response);
  if (problem.empty()) {
    try {
      return build(std::move(response), context);
    } catch (const std::bad_alloc&) {
      throw;
    } catch (const std::exception& e) {
      problem = std::string("the server could not put it on the wire: ") + e.what();
    }
  }
  return build(make_error_response(500, "internal server error", context.request_id), context);
}

std::string length_mismatch(const HttpResponseData& response, const ResponseContext& context) {
  if (context.head && response.body.empty()) return {};  // a HEAD answer's length is the GET body's
  const auto length = given_length(response.headers);
  if (!length || *length == response.body.size()) return {};
  return "its Content-Length says " + std::to_string(*length) + " bytes, its body has " +
         std::to_string(response.body.size());
}

std::optional<StreamHead> to_wire_head(HttpResponseData&& head, const ResponseContext& context,
                                       std::string& problem) {
  const std::optional<std::uint64_t> length = given_length(head.headers);
  const int code = head.status;
  const bool bodiless = code == 204 || code == 304 || (code >= 100 && code < 200);
  head.body.clear();
  head.stream.reset();
  StreamHead out;
  try {
    WireResponse whole = build(std::move(head), context);
    out.message = http::response<http::empty_body>(std::move(whole.base()));
    out.message.erase(http::field::content_length);
  } catch (const std::bad_alloc&) {
    throw;
  } catch (const std::exception& e) {
    problem = std::string("the server could not put it on the wire: ") + e.what();
    return std::nullopt;
  }
  if (length && !bodiless) {
    out.framing = StreamHead::Framing::length;
    out.length = *length;
    out.message.content_length(*length);
  } else if (context.version >= 11 && !bodiless) {
    out.framing = StreamHead::Framing::chunked;
    out.message.chunked(true);
  } else if (!bodiless) {
    out.framing = StreamHead::Framing::close;
    out.message.keep_alive(false);
  }
  if (context.head || bodiless) out.framing = StreamHead::Framing::none;
  return out;
}

}  // namespace gilgamesh::exchange
