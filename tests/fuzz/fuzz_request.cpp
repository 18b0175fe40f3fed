// Fuzz target 1: raw request bytes -> the response bytes, through what the
// session (server/http/http_server.cpp) runs on a connection: the head scanner,
// Beast's parser with the server's limits, the framing rules, the router (the
// built-ins and Python-like routes), a trivial in-process executor, and the
// one place a response becomes wire bytes. Pipelined requests are served in
// order until one closes the connection, as the session does.
//
// The "handler" echoes what the request asks for, so the fuzzer also drives
// the response rules: /echo?status=N&ct=TYPE&h-NAME=VALUE answers status N
// (any integer), content type TYPE and header NAME: VALUE, all percent-decoded
// (CR, LF and NUL included).
//
// Checked on every input: nothing throws; no trailer field reaches the request's
// header; each response on the wire is exactly
// one well-formed HTTP/1.1 message (re-parsed with Beast), with a status in
// 100..599 (so a handler's CR/LF can never split it).
#include <boost/beast/http.hpp>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "server/model/query.hpp"
#include "server/model/response.hpp"
#include "server/http/exchange.hpp"
#include "server/observation/stats.hpp"

namespace {

using namespace gilgamesh;
namespace http = boost::beast::http;

[[noreturn]] void fail(const char* what, std::string_view detail) {
  std::fprintf(stderr, "fuzz_request: %s: %.*s\n", what, static_cast<int>(detail.size()), detail.data());
  std::abort();
}

// Answers inline, on the submitting thread: the echo handler above.
class EchoExecutor final : public Executor {
 public:
  EchoExecutor()
      : routes_{{"/echo", {"GET", "POST", "HEAD"}, "echo"},
                {"/items/<int:id>", {"GET", "DELETE"}, "item"},
                {"/files/<path:rest>", {"GET"}, "files"},
                {"/\xff\xfe-not-utf8", {"GET"}, "doc \xed\xa0\x80 lone surrogate"}} {}
  void start() override {}
  const std::vector<RouteInfo>& routes() const override { return routes_; }
  SubmitResult submit(Job& job) override {
    HttpResponseData r;
    r.body = job.request.body;
    for (auto& [key, value] : parse_query(job.request.query_string)) {
      if (key == "status") {
        r.status = std::atoi(value.c_str());
      } else if (key == "ct") {
        r.content_type = value;
      } else if (key.starts_with("h-")) {
        r.headers.push_back({key.substr(2), value});
      }
    }
    for (const PathParam& p : job.request.path_params) r.body += p.value;
    job.complete(std::move(r));
    return SubmitResult::accepted;
  }
  bool stop(Clock::time_point) override { return true; }
  ExecutorInfo info() const override { return {Strategy::threads, 1, "3.13", PythonBuild::standard, true, ""}; }
  PoolStats stats() const override { return {}; }
  Readiness readiness() const override { return {Readiness::State::ready, ""}; }

 private:
  std::vector<RouteInfo> routes_;
};

struct Owner final : JobOwner {
  HttpResponseData response;
  bool done = false;
  void job_done(std::uint64_t, HttpResponseData&& r) override {
    response = std::move(r);
    done = true;
  }
  bool client_gone() const override { return false; }
};

struct World {
  ServerConfig config;
  EchoExecutor executor;
  ServerStats stats;
  Router router{executor.routes()};
  exchange::Limits limits{exchange::kHeaderLimit, 4096};
  World() { stats.init_routes(executor.routes().size()); }
};

using Fields = std::vector<std::pair<std::string, std::string>>;

template <class Message>
Fields fields_of(const Message& m) {
  Fields out;
  for (const auto& f : m) {
    std::string_view v = f.value();  // a parser drops the whitespace around a value
    while (!v.empty() && (v.front() == ' ' || v.front() == '\t')) v.remove_prefix(1);
    while (!v.empty() && (v.back() == ' ' || v.back() == '\t')) v.remove_suffix(1);
    out.emplace_back(std::string(f.name_string()), std::string(v));
  }
  return out;
}

// The wire bytes must be one whole response and nothing else, whose header
// fields are exactly those the server set (a CR or LF let through would show
// as a field more, or a different value).
void check_wire(const std::string& wire, bool head_request, const Fields& sent) {
  http::response_parser<http::string_body> parser;
  parser.eager(true);
  parser.body_limit(1 << 20);
  if (head_request) parser.skip(true);
  boost::system::error_code ec;
  const std::size_t used = parser.put(boost::asio::buffer(wire), ec);
  if (ec || !parser.is_done()) fail("a response that is not one whole HTTP message", wire);
  if (used != wire.size()) fail("bytes after the response (response splitting)", wire);
  const unsigned status = parser.get().result_int();
  if (status < 100 || status > 599) fail("a status outside 100..599", wire);
  if (fields_of(parser.get()) != sent) fail("header fields on the wire differ from those set", wire);
}

void send(exchange::WireResponse&& response, bool head_request, std::string& wire_out) {
  const Fields sent = fields_of(response);
  std::ostringstream os;
  os << response;
  const std::string wire = os.str();
  check_wire(wire, head_request, sent);
  wire_out += wire;
}

std::string answer_refusal(const exchange::Refusal& refusal) {
  exchange::ResponseContext context;
  context.request_id = exchange::new_request_id();
  std::string problem;
  std::string wire;
  send(exchange::to_wire(make_error_response(static_cast<int>(refusal.status), refusal.message, context.request_id),
                         context, problem),
       false, wire);
  if (!problem.empty()) fail("the server's own refusal broke a response rule", problem);
  return wire;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static World world;
  std::string_view rest(reinterpret_cast<const char*>(data), size);
  std::string wire;
  for (int served = 0; served < 16; ++served) {
    // The head arrives in pieces (as from a socket): the scanner must decide
    // the same whatever the split.
    exchange::HeadScanner scanner(world.limits.header_limit);
    exchange::HeadScanner::Result r = exchange::HeadScanner::Result::need_more;
    const std::size_t step = 1 + (size % 97);
    for (std::size_t n = std::min(step, rest.size());; n = std::min(n + step, rest.size())) {
      r = scanner.scan(rest.substr(0, n));
      if (r != exchange::HeadScanner::Result::need_more || n == rest.size()) break;
    }
    if (r == exchange::HeadScanner::Result::need_more) return 0;  // the client stops sending
    if (r == exchange::HeadScanner::Result::refused) {
      wire += answer_refusal(scanner.refusal());
      return 0;
    }
    exchange::Parser parser;
    exchange::prepare(parser, world.limits);
    const std::string_view head = rest.substr(scanner.blank_prefix(), scanner.end() - scanner.blank_prefix());
    auto ec = exchange::parse_head(parser, head);
    std::vector<std::size_t> order;
    if (!ec) order = exchange::wire_order(head, parser.get());
    rest.remove_prefix(scanner.end());
    if (ec) {
      if (auto refusal = exchange::refusal_for(ec, world.limits)) wire += answer_refusal(*refusal);
      return 0;
    }
    if (!order.empty()) {  // a permutation of the parsed fields, each index once
      std::vector<bool> seen(order.size(), false);
      std::size_t fields = 0;
      for (const auto& f : parser.get()) (void)f, ++fields;
      if (order.size() != fields) fail("wire_order is not a permutation of the fields", "");
      for (std::size_t i : order) {
        if (i >= seen.size() || seen[i]) fail("wire_order is not a permutation of the fields", "");
        seen[i] = true;
      }
    }
    if (auto refusal = exchange::framing_refusal(parser.get())) {
      wire += answer_refusal(*refusal);
      return 0;
    }
    // A chunked body's trailer fields must not reach the header the app sees (drop_trailers).
    std::optional<http::request_header<>> head_fields;
    if (parser.chunked()) head_fields = parser.get().base();
    // The body, from what follows the head; the end of the input is the client leaving.
    parser.eager(true);
    while (!parser.is_done()) {
      std::size_t used = 0;
      if (!rest.empty()) {
        used = parser.put(boost::asio::buffer(rest.data(), rest.size()), ec);
        rest.remove_prefix(used);
        if (ec == http::error::need_more) ec = {};
      }
      if (!ec && !parser.is_done() && used == 0) {
        parser.put_eof(ec);
        if (!ec && !parser.is_done()) ec = http::error::partial_message;
      }
      if (ec) {
        if (auto refusal = exchange::refusal_for(ec, world.limits)) wire += answer_refusal(*refusal);
        return 0;
      }
    }
    if (head_fields) {
      const Fields sent = fields_of(*head_fields);
      if (auto refusal = exchange::drop_trailers(parser.get(), std::move(*head_fields))) {
        wire += answer_refusal(*refusal);
        return 0;
      }
      if (fields_of(parser.get()) != sent) fail("a trailer field reached the request's header", "");
    }
    exchange::Request request = parser.release();
    exchange::ResponseContext context;
    context.request_id = exchange::request_id_for(request);
    context.version = request.version();
    context.head = request.method() == http::verb::head;
    context.keep_alive = request.keep_alive();
    const ServerView view{world.config, world.executor, world.stats, std::chrono::steady_clock::now(), false, true};
    auto decision = exchange::route(request, context.request_id, exchange::RoutingState{world.router, view, false});
    HttpResponseData response;
    bool close = false;
    if (auto* answer = std::get_if<exchange::Answer>(&decision)) {
      response = std::move(answer->response);
      close = answer->close || answer->event_stream;
    } else {
      auto& dispatch = std::get<exchange::Dispatch>(decision);
      Job job;
      job.route_index = dispatch.route_index;
      auto owner = std::make_shared<Owner>();
      job.owner = owner;
      job.request = exchange::job_request(request, std::move(dispatch), context.request_id, exchange::Peer{}, order);
      world.executor.submit(job);
      if (!owner->done) fail("the executor did not answer", "");
      response = std::move(owner->response);
    }
    if (close) context.keep_alive = false;
    std::string problem;
    send(exchange::to_wire(std::move(response), context, problem), context.head, wire);
    if (!context.keep_alive) return 0;
  }
  return 0;
}
