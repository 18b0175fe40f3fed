// A request's head and body as the session reads them (server/http/exchange.hpp): the head
// scanner's field limit, and a chunked body's trailer fields, which Beast's parser adds to the
// request's header and drop_trailers takes out again.
#include <gtest/gtest.h>

#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "server/http/exchange.hpp"
#include "server/model/response.hpp"

namespace gilgamesh::exchange {
namespace {

using Fields = std::vector<std::pair<std::string, std::string>>;

Fields fields_of(const Request& r) {
  Fields out;
  for (const auto& f : r) out.emplace_back(std::string(f.name_string()), std::string(f.value()));
  return out;
}

// Parses `wire` (one whole chunked request) as the session does: the head, a copy of its
// header, then the body; returns drop_trailers' verdict and leaves the request in `out`.
std::optional<Refusal> read_chunked(const std::string& wire, Request& out) {
  HeadScanner scanner;
  EXPECT_EQ(scanner.scan(wire), HeadScanner::Result::complete);
  Parser parser;
  prepare(parser, Limits{});
  EXPECT_FALSE(parse_head(parser, std::string_view(wire).substr(0, scanner.end())));
  EXPECT_TRUE(parser.chunked());
  http::request_header<> head = parser.get().base();
  parser.eager(true);
  boost::system::error_code ec;
  const std::string body = wire.substr(scanner.end());
  parser.put(boost::asio::buffer(body), ec);
  EXPECT_FALSE(ec) << ec.message();
  EXPECT_TRUE(parser.is_done());
  auto refusal = drop_trailers(parser.get(), std::move(head));
  out = parser.release();
  return refusal;
}

constexpr const char* kHead = "POST /p HTTP/1.1\r\nHost: example.com\r\nX-A: 1\r\nTransfer-Encoding: chunked\r\nX-A: 2\r\n\r\n";

TEST(Trailers, AreDroppedAndTheHeaderIsAsSent) {
  Request r;
  EXPECT_FALSE(read_chunked(std::string(kHead) + "5\r\nhello\r\n0\r\nX-A: 3\r\nX-Request-Id: t\r\nX-Sum: 9\r\n\r\n", r));
  const Fields sent{{"Host", "example.com"}, {"X-A", "1"}, {"X-A", "2"}, {"Transfer-Encoding", "chunked"}};
  EXPECT_EQ(fields_of(r), sent);  // Beast keeps fields of one name together
  EXPECT_EQ(r.body(), "hello");
  EXPECT_EQ(r.target(), "/p");
  EXPECT_EQ(r.method(), http::verb::post);
}

TEST(Trailers, NoneLeavesTheRequestAlone) {
  Request r;
  EXPECT_FALSE(read_chunked(std::string(kHead) + "5\r\nhello\r\n0\r\n\r\n", r));
  EXPECT_EQ(fields_of(r).size(), 4u);
}

TEST(Trailers, ThatRouteOrAuthenticateAreRefused) {
  for (const char* field : {"Host: evil", "Authorization: Basic eA==", "TE: trailers", "Trailer: X-A"}) {
    Request r;
    auto refusal = read_chunked(std::string(kHead) + "5\r\nhello\r\n0\r\n" + field + "\r\n\r\n", r);
    ASSERT_TRUE(refusal) << field;
    EXPECT_EQ(refusal->status, http::status::bad_request);
    EXPECT_NE(refusal->message.find("trailer field"), std::string::npos) << refusal->message;
  }
}

TEST(Trailers, ARepeatOfAHeaderValueIsStillATrailer) {
  // The trailer "Host: example.com" repeats the head's field exactly: it is counted, not matched away twice.
  Request r;
  EXPECT_TRUE(read_chunked(std::string(kHead) + "5\r\nhello\r\n0\r\nHost: example.com\r\n\r\n", r));
}

std::string head_with(std::size_t fields) {
  std::string head = "GET / HTTP/1.1\r\nHost: h\r\n";
  for (std::size_t i = 1; i < fields; ++i) head += "X-F" + std::to_string(i) + ": v\r\n";
  return head + "\r\n";
}

TEST(HeadScanner, TakesAtMostKMaxFieldsFields) {
  HeadScanner ok;
  EXPECT_EQ(ok.scan(head_with(kMaxFields)), HeadScanner::Result::complete);
  HeadScanner over;
  EXPECT_EQ(over.scan(head_with(kMaxFields + 1)), HeadScanner::Result::refused);
  EXPECT_EQ(over.refusal().status, http::status::request_header_fields_too_large);
  EXPECT_EQ(over.refusal().message, "more than 100 header fields");
}

TEST(Framing, ContentTypeOnce) {
  Parser parser;
  prepare(parser, Limits{});
  const std::string head = "POST / HTTP/1.1\r\nHost: h\r\nContent-Type: a/b\r\nContent-Type: c/d\r\nContent-Length: 0\r\n\r\n";
  ASSERT_FALSE(parse_head(parser, head));
  auto refusal = framing_refusal(parser.get());
  ASSERT_TRUE(refusal);
  EXPECT_EQ(refusal->message, "Content-Type is repeated");
}

// RFC 6455 4.2.1's checks of an upgrade, before the app sees it (websocket_refusal).
Request upgrade(std::vector<std::pair<std::string, std::string>> fields) {
  Request r{http::verb::get, "/ws", 11};
  r.set(http::field::host, "h");
  r.set(http::field::upgrade, "websocket");
  r.set(http::field::connection, "Upgrade");
  for (const auto& [name, value] : fields) r.insert(name, value);
  return r;
}

int refused_with(std::vector<std::pair<std::string, std::string>> fields) {
  auto refusal = websocket_refusal(upgrade(std::move(fields)), "id");
  return refusal ? refusal->status : 0;
}

TEST(WebSocketHandshake, TakesOneKeyOf16BytesInBase64AndVersion13) {
  constexpr const char* kKey = "dGhlIHNhbXBsZSBub25jZQ==";
  EXPECT_EQ(refused_with({{"Sec-WebSocket-Key", kKey}, {"Sec-WebSocket-Version", "13"}}), 0);
  EXPECT_EQ(refused_with({{"Sec-WebSocket-Key", "AAAAAAAAAAAAAAAAAAAA+/=="}, {"Sec-WebSocket-Version", "13"}}), 0);
  for (const char* key : {"dGhlIHNhbXBsZSBub25jZQ", "dGhlIHNhbXBsZSBub25jZQ=", "dGhlIHNhbXBsZSBub25jZQ===",
                          "dGhlIHNhbXBsZSBub25jZ===", "dGhlIHNhbXBsZSBub25j-Q==", "dGhlIHNhbXBsZSBub25jZQ=A",
                          "dGhlIHNhbXBsZSBub25jZWFh", ""}) {
    EXPECT_EQ(refused_with({{"Sec-WebSocket-Key", key}, {"Sec-WebSocket-Version", "13"}}), 400) << key;
  }
  EXPECT_EQ(refused_with({{"Sec-WebSocket-Key", kKey}, {"Sec-WebSocket-Key", kKey}, {"Sec-WebSocket-Version", "13"}}), 400);
  EXPECT_EQ(refused_with({{"Sec-WebSocket-Version", "13"}}), 400);
  EXPECT_EQ(refused_with({{"Sec-WebSocket-Key", kKey}}), 400);
  EXPECT_EQ(refused_with({{"Sec-WebSocket-Key", kKey}, {"Sec-WebSocket-Version", "13"}, {"Sec-WebSocket-Version", "13"}}), 400);
  auto old = websocket_refusal(upgrade({{"Sec-WebSocket-Key", kKey}, {"Sec-WebSocket-Version", "8"}}), "id");
  ASSERT_TRUE(old);
  EXPECT_EQ(old->status, 426);
  ASSERT_EQ(old->headers.size(), 1u);
  EXPECT_EQ(old->headers[0].name, "Sec-WebSocket-Version");
  EXPECT_EQ(old->headers[0].value, "13");
}

}  // namespace
}  // namespace gilgamesh::exchange

namespace gilgamesh::exchange {
namespace {

// --no-server-header and --header's defaults, as to_wire() puts them on an answer.
TEST(ResponseDefaults, DefaultsGoOnEveryAnswerUnlessItNamesThemItself) {
  set_response_defaults({false, {{"X-Frame-Options", "DENY"}, {"Vary", "Cookie"}, {"Vary", "Accept"}}});
  ResponseContext context;
  context.request_id = "r1";
  std::string problem;
  HttpResponseData plain;
  plain.body = "x";
  WireResponse out = to_wire(std::move(plain), context, problem);
  EXPECT_TRUE(problem.empty()) << problem;
  EXPECT_EQ(out.count(http::field::server), 0u);
  EXPECT_EQ(out[http::field::x_frame_options], "DENY");
  EXPECT_EQ(out.count(http::field::vary), 2u);
  EXPECT_EQ(out["X-Request-Id"], "r1");

  HttpResponseData own;
  own.headers = {{"vary", "Origin"}, {"Vary", "Accept-Encoding"}, {"Server", "theirs"}};
  out = to_wire(std::move(own), context, problem);
  std::vector<std::string> vary;
  for (auto [it, end] = out.equal_range(http::field::vary); it != end; ++it) vary.emplace_back(it->value());
  EXPECT_EQ(vary, (std::vector<std::string>{"Origin", "Accept-Encoding"}));  // both defaults replaced, both kept
  EXPECT_EQ(out[http::field::server], "theirs");
  EXPECT_EQ(out[http::field::x_frame_options], "DENY");
  set_response_defaults({});
  out = to_wire(HttpResponseData{}, context, problem);
  EXPECT_EQ(out[http::field::server].substr(0, 10), "gilgamesh/");
  EXPECT_EQ(out.count(http::field::x_frame_options), 0u);
}

TEST(ResponseDefaults, ParsesNameColonValue) {
  std::string error;
  const auto h = parse_default_header("X-Frame-Options:  DENY ", error);
  ASSERT_TRUE(h);
  EXPECT_EQ(h->name, "X-Frame-Options");
  EXPECT_EQ(h->value, "DENY");
  EXPECT_TRUE(parse_default_header("X-Empty:", error));
  for (const char* bad : {"NoColon", ":x", "Bad Name:x", "X-A:b\nc", "date:x", "Transfer-Encoding:gzip", "server:x"}) {
    EXPECT_FALSE(parse_default_header(bad, error)) << bad;
    EXPECT_FALSE(error.empty());
  }
}

TEST(HeaderText, ImfDateAndTrimOws) {
  EXPECT_EQ(imf_date(784111777), "Sun, 06 Nov 1994 08:49:37 GMT");  // RFC 9110's example
  EXPECT_EQ(imf_date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
  EXPECT_EQ(trim_ows(" \t gzip \t"), "gzip");
  EXPECT_EQ(trim_ows("a b"), "a b");
  EXPECT_EQ(trim_ows(" \t "), "");
}

}  // namespace
}  // namespace gilgamesh::exchange
