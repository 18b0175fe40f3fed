#include "server/http/http_server.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <boost/beast/websocket.hpp>
#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <limits>
#include <cstdio>
#include <cstring>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_set>
#include <variant>

#include "server/model/app_forks.hpp"
#include "server/model/response.hpp"
#include "server/http/asio_reactor.hpp"
#include "server/http/builtins.hpp"
#include "server/http/exchange.hpp"
#include "server/http/forwarded.hpp"
#include "server/observation/access_log.hpp"
#include "server/observation/dashboard.hpp"
#include "server/observation/events.hpp"
#include "server/http/router.hpp"
#include "server/observation/stats.hpp"

namespace gilgamesh {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
namespace websocket = beast::websocket;
using tcp = net::ip::tcp;
// Connections come over TCP or, with --uds, a UNIX socket: one stream type serves both.
using StreamProtocol = net::generic::stream_protocol;
using Socket = StreamProtocol::socket;
using Stream = beast::basic_stream<StreamProtocol, net::any_io_executor, beast::unlimited_rate_policy>;

namespace {

constexpr auto kWriteTimeout = std::chrono::seconds(60);  // a client that stops reading is dropped
constexpr std::size_t kReadSize = 16 * 1024;
// A lingering close: after the last response, stop sending and read (and
// drop) what the client still sends, so that closing the socket with unread
// bytes does not reset the connection before the client has read the
// response (a 413 sent while a body is still arriving).
constexpr auto kLingerTime = std::chrono::seconds(5);
constexpr std::size_t kLingerBytes = 8 * 1024 * 1024;
// Accept failing for want of descriptors or memory: retry after a pause that
// doubles up to the maximum, never in a busy loop.
constexpr auto kAcceptBackoffFirst = std::chrono::milliseconds(10);
constexpr auto kAcceptBackoffMax = std::chrono::milliseconds(250);
// A WebSocket's opening and closing handshakes (after the app accepted): a peer
// slower than this is dropped.
constexpr auto kWebSocketHandshakeTimeout = std::chrono::seconds(10);

// An endpoint's address and port; nothing for a UNIX socket's, which has neither.
std::optional<tcp::endpoint> ip_endpoint(const StreamProtocol::endpoint& e) {
  const int family = e.data()->sa_family;
  if ((family != AF_INET && family != AF_INET6) || e.size() > tcp::endpoint().capacity()) return std::nullopt;
  tcp::endpoint ip;
  std::memcpy(ip.data(), e.data(), e.size());
  ip.resize(e.size());
  return ip;
}

// The next layer of a WebSocket: the connection's stream, with a teardown that
// lingers. Beast's own (websocket/impl/teardown.hpp) reads once and closes: a client
// still sending (the rest of a message over --ws-max-message) then gets a reset
// instead of the close frame. This one stops sending, reads and drops what comes
// until the client closes, or kLingerTime or kLingerBytes, then closes the socket.
class LingeringStream {
 public:
  using executor_type = Stream::executor_type;
  explicit LingeringStream(Stream& stream) : stream_(stream) {}
  executor_type get_executor() { return stream_.get_executor(); }
  Stream& next_layer() { return stream_; }
  const Stream& next_layer() const { return stream_; }
  template <class Buffers, class Handler>
  auto async_read_some(const Buffers& buffers, Handler&& handler) {
    return stream_.async_read_some(buffers, std::forward<Handler>(handler));
  }
  template <class Buffers, class Handler>
  auto async_write_some(const Buffers& buffers, Handler&& handler) {
    return stream_.async_write_some(buffers, std::forward<Handler>(handler));
  }

 private:
  Stream& stream_;
};

template <class Handler>
struct LingeringTeardown {
  Stream& stream;
  Handler handler;
  std::unique_ptr<char[]> buffer;
  std::size_t lingered = 0;

  void read() {
    char* data = buffer.get();
    stream.async_read_some(net::buffer(data, kReadSize), std::move(*this));
  }
  void operator()(beast::error_code ec, std::size_t n) {
    lingered += n;
    if (!ec && lingered < kLingerBytes) return read();
    stream.close();
    std::move(handler)(beast::error_code{});
  }
};

// Found by Beast's websocket::stream (argument-dependent lookup) for its closes.
template <class Handler>
void async_teardown(beast::role_type, LingeringStream& s, Handler&& handler) {
  Stream& stream = s.next_layer();
  beast::error_code ignored;
  stream.socket().shutdown(Socket::shutdown_send, ignored);
  stream.expires_after(kLingerTime);
  LingeringTeardown<std::decay_t<Handler>>{stream, std::forward<Handler>(handler),
                                           std::make_unique<char[]>(kReadSize)}
      .read();
}

// Beast's string_view as fmt can print it: std::string_view with Boost 1.74
// (Debian 12), boost::core::string_view with Boost >= 1.81 (trixie, the image).
std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

}  // namespace

class Session;

struct HttpServer::Impl {
  Impl(const ServerConfig& c, Executor& e)
      : config(c),
        limits{c.http.max_header, c.http.max_body},
        trusted_proxies(forwarded::TrustedProxies::parse(c.http.forwarded_allow_ips)),
        statics(c.http.static_routes, c.http.static_mounts, c.http.static_expires, c.http.static_dir_to_file),
        executor(e),
        startup_router(std::vector<RouteInfo>{}, c.http.dashboard),
        started_at(std::chrono::steady_clock::now()),
        events(stats, [this] { return stats_json(view()).dump(-1, ' ', false, nlohmann::json::error_handler_t::replace); }),
        ioc(c.http.io_threads),
        acceptor(ioc),
        signals(net::make_strand(ioc), SIGINT, SIGTERM),
        shutdown_delay_timer(ioc),
        accept_retry_timer(ioc) {
    // Started under nohup, hangups stay ignored. (After a restart in place, the restart ignored
    // them: main.cpp's hold_hangups.)
    if (!hangups_ignored() || getenv(kRestartedVariable) != nullptr) signals.add(SIGHUP);
    ResponseDefaults defaults{c.http.server_header, {}};
    for (const std::string& text : c.http.headers) {
      std::string ignored;  // checked on the command line
      if (auto header = parse_default_header(text, ignored)) defaults.headers.push_back(std::move(*header));
    }
    set_response_defaults(std::move(defaults));
    if (!c.http.access_log) return;
    const bool theirs = !c.http.access_log_format.empty();
    access_format.emplace(theirs ? AccessLogFormat(c.http.access_log_format) : AccessLogFormat::standard());
    event_stream_format.emplace(theirs ? *access_format : AccessLogFormat::standard_event_stream());
  }

  void do_accept();
  void on_accept_error(beast::error_code ec);
  void on_signal(int signo);
  void on_restart_signal();
  void after_restart_check(const std::optional<StartupError>& refused);
  void begin_restart();
  void begin_drain();
  // Closes the listening socket, after telling app_forks (before its number is free for
  // another descriptor, which a copy the app forks would otherwise close).
  void close_listener();
  void for_each_session(void (Session::*action)());
  ServerView view() const {
    return ServerView{config, executor, stats, started_at, shutting_down.load(), routes_ready()};
  }
  // The full router once the workers are up; before that, only the built-ins.
  const Router& router() const {
    const Router* r = app_router.load(std::memory_order_acquire);
    return r ? *r : startup_router;
  }
  bool routes_ready() const { return app_router.load(std::memory_order_acquire) != nullptr; }

  ServerConfig config;
  exchange::Limits limits;
  forwarded::TrustedProxies trusted_proxies;  // --forwarded-allow-ips
  StaticFiles statics;                        // --static-path-mount's directories (maybe none)
  Executor& executor;
  Router startup_router;
  std::unique_ptr<Router> app_router_holder;
  std::atomic<const Router*> app_router{nullptr};
  ServerStats stats;
  // With --access-log: --access-log-format's line, else our own (one for GET /events).
  std::optional<AccessLogFormat> access_format;
  std::optional<AccessLogFormat> event_stream_format;
  std::chrono::steady_clock::time_point started_at;
  EventStreams events;  // GET /events; like the sessions below, outlives the io_context
  std::atomic<bool> shutting_down{false};  // a signal came: /readyz 503, no more keep-alive
  std::atomic<bool> draining{false};       // the listener is closed; connections finish
  // What the signals asked for so far; on `signals`' strand. checking: SIGHUP came and run()'s
  // thread checks the app (still serving); restarting: the drain of a restart in place, with
  // restart_fd kept; stopping: SIGTERM/SIGINT came (during a restart too).
  enum class Lifecycle { serving, checking, restarting, stopping } lifecycle = Lifecycle::serving;
  // While restarting: a copy of the listening socket for the server that replaces this one.
  int restart_fd = -1;
  const Terminals terminals = Terminals::now();  // a SIGHUP with one of them gone is a hangup's
  // What run()'s thread is asked to do while the I/O threads serve: wait for the drain
  // (drain_begun), or first check that the app loads before a restart (restart_check_asked).
  std::mutex main_mutex;
  std::condition_variable main_wake;
  bool drain_begun = false;
  bool restart_check_asked = false;
  std::function<std::optional<StartupError>()> restart_check;  // none: restart unchecked
  // Sessions unregister in their destructors, which may run while the
  // io_context below is destroyed: these members must outlive it.
  std::mutex sessions_mutex;
  std::unordered_set<Session*> sessions;

  net::io_context ioc;
  AsioReactor reactor{ioc};  // the workers' sockets the I/O threads watch (Executor::use_reactor)
  net::basic_socket_acceptor<StreamProtocol> acceptor;
  bool unix_socket = false;  // --uds
  // An inherited socket (a --reload supervisor's, --bind fd://N): connections wait in its
  // backlog until the workers are ready, instead of a 503 "starting" for each request during
  // every restart.
  bool accept_when_ready = false;
  std::string bound_url;          // http://HOST:PORT (--host, or an inherited socket's own
                                  // address; [IPv6]) or unix:PATH
  unsigned short bound_port = 0;  // read once at bind: a signal may close the acceptor early
  SocketFile socket_file;  // --uds's, removed when the server ends
  net::signal_set signals;
  net::steady_timer shutdown_delay_timer;
  // Accept errors: the acceptor's chain only (one accept is pending at a time).
  net::steady_timer accept_retry_timer;
  std::chrono::milliseconds accept_backoff{0};
  std::chrono::steady_clock::time_point accept_error_logged_at{};
};

// One connection, the Beast advanced-server way. Its chain reads top to bottom:
//   next_request -> do_read -> on_read -> (head complete) on_head -> [read_body]
//   -> handle -> respond -> do_write -> on_write -> next_request
// with a Python job between handle and respond for a Python route. Read and
// parse errors all go through fail(); what the server refuses goes through
// refuse() and ends the connection with a lingering close. The decisions
// themselves (head rules, framing, routing, the wire form of a response) are
// exchange.hpp's, shared with the fuzz target. Every handler runs on the
// connection's executor: a strand with several I/O threads, the one I/O thread otherwise.
class Session final : public JobOwner, public std::enable_shared_from_this<Session> {
 public:
  Session(Socket&& socket, HttpServer::Impl& server)
      : stream_(std::move(socket)),
        server_(server),
        job_timer_(stream_.get_executor()),
        accepted_at_(std::chrono::steady_clock::now()),
        native_fd_(stream_.socket().native_handle()) {
    beast::error_code ec;
    if (auto remote = ip_endpoint(stream_.socket().remote_endpoint(ec)); remote && !ec) {
      peer_.remote_addr = remote->address().to_string();
      peer_.remote_port = remote->port();
    }
    if (auto local = ip_endpoint(stream_.socket().local_endpoint(ec)); local && !ec) {
      peer_.local_addr = local->address().to_string();
      peer_.local_port = local->port();
    }
    server_.stats.connections_accepted.fetch_add(1, std::memory_order_relaxed);
    server_.stats.connections_open.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(server_.sessions_mutex);
    server_.sessions.insert(this);
  }
  ~Session() {
    if (websocket_) websocket_->ended(WebSocketChannel::kAbnormal, "");  // said once; a no-op when it was
    if (ws_open_ && !ws_ended_) server_.stats.websockets_open.fetch_sub(1, std::memory_order_relaxed);
    server_.stats.connections_open.fetch_sub(1, std::memory_order_relaxed);
    std::lock_guard lock(server_.sessions_mutex);
    server_.sessions.erase(this);
  }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->next_request(); });
  }

  // Posted by the server on SIGTERM: idle keep-alive connections close now, busy ones after
  // their current response. A connection still waiting for its first request gets a moment for
  // it (kFirstRequestGrace), then closes: its client connected before the listener closed and
  // may have the request on its way, and unlike a request on a reused connection (RFC 9112
  // 9.3.1) one on a fresh connection is not retried by clients when the connection closes.
  void on_shutdown() {
    shutting_down_ = true;
    if (ws_open_) return ws_server_close(WebSocketChannel::kGoingAway);
    if (lingering_ || (idle_ && !first_request_)) return close();
    if (!idle_) return;
    job_timer_.expires_after(kFirstRequestGrace);
    job_timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec && self->idle_) self->close();
    });
  }

  net::any_io_executor executor() { return stream_.get_executor(); }

  // JobOwner, from a worker thread: hand the answer to the connection's executor. (In a copy
  // of the server the app forked, whose handler returned there too, that thread exits instead.)
  void job_done(std::uint64_t token, HttpResponseData&& r) override {
    app_forks::leave_if_forked();
    net::post(stream_.get_executor(), [self = shared_from_this(), token, r = std::move(r)]() mutable {
      self->on_job_done(token, std::move(r));
    });
  }

  // JobOwner, from a worker thread, for a job that waited in the queue: a peek
  // that finds end of stream (or a reset) means the client left. The socket is
  // not closed while a job is pending, so the descriptor is still this one's.
  bool client_gone() const override {
    char c;
    const ssize_t n = ::recv(native_fd_, &c, 1, MSG_PEEK | MSG_DONTWAIT);
    return n == 0 || (n < 0 && errno != EAGAIN && errno != EWOULDBLOCK && errno != EINTR);
  }

 private:
  using Clock = std::chrono::steady_clock;

  // A new request: its head may already be buffered (pipelining); else wait
  // for its first byte. The keep-alive timeout bounds that wait; the header
  // timeout counts once, from the first byte of the request (from the accept
  // for a connection's first request) to the end of its head.
  void next_request() {
    if (shutting_down_) return close();
    scanner_ = exchange::HeadScanner(server_.limits.header_limit);
    parser_.reset();
    request_ = {};
    context_ = {};
    route_index_ = kNoRoute;
    if (buffer_.size() > 0) {
      head_deadline_ = Clock::now() + seconds_setting(server_.config.http.header_timeout);
      stream_.expires_at(head_deadline_);
      return scan();
    }
    idle_ = true;
    if (first_request_) {
      head_deadline_ = accepted_at_ + seconds_setting(server_.config.http.header_timeout);
      stream_.expires_at(head_deadline_);
    } else {
      stream_.expires_after(seconds_setting(server_.config.http.keepalive_timeout));
    }
    do_read();
  }

  void do_read() {
    stream_.async_read_some(buffer_.prepare(kReadSize),
                            [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                              self->on_read(ec, n);
                            });
  }

  void on_read(beast::error_code ec, std::size_t n) {
    buffer_.commit(n);
    if (ec) return fail(ec);
    if (idle_) {
      idle_ = false;
      if (!first_request_) {
        head_deadline_ = Clock::now() + seconds_setting(server_.config.http.header_timeout);
        stream_.expires_at(head_deadline_);
      }
    }
    scan();
  }

  void scan() {
    const auto* data = static_cast<const char*>(buffer_.data().data());
    switch (scanner_.scan(std::string_view(data, buffer_.size()))) {
      case exchange::HeadScanner::Result::need_more:
        return do_read();  // same deadline
      case exchange::HeadScanner::Result::refused:
        return refuse(scanner_.refusal());
      case exchange::HeadScanner::Result::complete:
        return on_head();
    }
  }

  void on_head() {
    first_request_ = false;
    const auto* data = static_cast<const char*>(buffer_.data().data());
    parser_.emplace();
    exchange::prepare(*parser_, server_.limits);
    const std::string_view head(data + scanner_.blank_prefix(), scanner_.end() - scanner_.blank_prefix());
    const beast::error_code ec = exchange::parse_head(*parser_, head);
    // Only an ASGI app is promised its headers in wire order: nothing else pays the scan.
    header_order_.clear();
    if (!ec && server_.config.app.kind == AppKind::asgi) header_order_ = exchange::wire_order(head, parser_->get());
    buffer_.consume(scanner_.end());
    if (ec) return fail(ec);
    arrived_ = Clock::now();
    if (auto refusal = exchange::framing_refusal(parser_->get())) return refuse(*refusal);
    if (parser_->is_done()) return handle();
    // A chunked body may end in trailer fields, which the parser adds to the header: keep the header as sent.
    head_before_body_ = parser_->chunked() ? std::optional(parser_->get().base()) : std::nullopt;
    // curl and others wait for "100 Continue" before sending a large body.
    auto& req = parser_->get();
    if (beast::iequals(req[http::field::expect], "100-continue") && req.version() >= 11) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
      stream_.expires_after(kWriteTimeout);
      http::async_write(stream_, *cont, [self = shared_from_this(), cont](beast::error_code wec, std::size_t) {
        if (wec) return self->close();
        self->read_body();
      });
      return;
    }
    read_body();
  }

  void read_body() {
    // The body has its own deadline, counted from the end of the head.
    stream_.expires_after(seconds_setting(std::max(server_.config.http.header_timeout, 30.0)));
    http::async_read(stream_, buffer_, *parser_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->fail(ec);
      if (self->head_before_body_) {
        auto refusal = exchange::drop_trailers(self->parser_->get(), std::move(*self->head_before_body_));
        self->head_before_body_.reset();
        if (refusal) return self->refuse(*refusal);
      }
      self->handle();
    });
  }

  // The one place every read and parse error ends up: an answer the client
  // can read (then a lingering close), or a plain close when it left or was
  // too slow.
  void fail(beast::error_code ec) {
    std::optional<exchange::Refusal> refusal = exchange::refusal_for(ec, server_.limits);
    if (!refusal) return close();
    refuse(*refusal);
  }

  // Answers a request the server will not route, and ends the connection
  // after it: what follows on the wire cannot be trusted to be a request.
  void refuse(const exchange::Refusal& refusal) {
    first_request_ = false;
    context_.request_id = parser_ && parser_->is_header_done() ? exchange::request_id_for(parser_->get())
                                                               : exchange::new_request_id();
    context_.head = false;
    respond(make_error_response(static_cast<int>(refusal.status), refusal.message, context_.request_id), true);
  }

  void handle() {
    request_ = parser_->release();
    parser_.reset();
    context_.request_id = exchange::request_id_for(request_);
    context_.version = request_.version();
    context_.head = request_.method() == http::verb::head;
    context_.keep_alive = request_.keep_alive();
    std::variant<exchange::Answer, exchange::Dispatch, StaticRequest> decision;
    std::optional<HttpResponseData> file_answer;  // a static file's (it was read here)
    try {
      const ServerView view = server_.view();
      decision = exchange::route(request_, context_.request_id,
                                 exchange::RoutingState{server_.router(), view, server_.draining.load(),
                                                        &server_.statics});
      if (auto* file = std::get_if<StaticRequest>(&decision)) {
        file_answer = server_.statics.answer(*file, request_, context_.request_id);
      }
    } catch (const std::exception& e) {
      spdlog::error("request {}: answering {} {} failed: {}", context_.request_id, sv(request_.method_string()),
                    path_for_log(), e.what());
      return respond(make_error_response(500, "internal server error", context_.request_id), true);
    }
    if (file_answer) {
      if (file_answer->stream) return stream_answer(std::move(*file_answer));
      return respond(std::move(*file_answer), false);
    }
    if (auto* answer = std::get_if<exchange::Answer>(&decision)) {
      if (answer->event_stream) {
        if (shutting_down_) {
          return respond(make_error_response(503, "server is shutting down", context_.request_id), true);
        }
        // The stream takes the connection over; this session ends here.
        return server_.events.start(stream_.release_socket(), request_.version(), context_.request_id,
                                    event_stream_access_line());
      }
      return respond(std::move(answer->response), answer->close);
    }
    submit(std::get<exchange::Dispatch>(std::move(decision)));
  }

  void submit(exchange::Dispatch&& dispatch) {
    route_index_ = dispatch.route_index;
    Job job;
    job.route_index = dispatch.route_index;
    const auto deadline = arrived_ + seconds_setting(server_.config.http.request_timeout);
    job.deadline = deadline;
    job.request = exchange::job_request(request_, std::move(dispatch), context_.request_id, peer_, header_order_);
    forwarded::apply(job.request, server_.trusted_proxies, server_.unix_socket);
    if (server_.config.app.kind == AppKind::asgi && websocket::is_upgrade(request_)) {
      if (auto refusal = exchange::websocket_refusal(request_, context_.request_id)) {
        return respond(std::move(*refusal), true);  // the app never sees a handshake Beast would fail
      }
      // The handshake waits for the app; whatever else it answers ends the connection.
      websocket_ = std::make_shared<WebSocketChannel>();
      job.websocket = websocket_;
      context_.keep_alive = false;
    }
    const std::uint64_t token = ++job_token_;
    job.owner = shared_from_this();
    job.token = token;
    stream_.expires_never();  // the job deadline, not the socket, bounds the wait
    switch (server_.executor.submit(job)) {
      case SubmitResult::accepted:
        job_pending_ = true;
        job_timer_.expires_at(deadline);
        job_timer_.async_wait([self = shared_from_this(), token](beast::error_code ec) {
          if (!ec) self->on_job_deadline(token);
        });
        return;
      case SubmitResult::queue_full: {
        server_.stats.rejected_queue_full.fetch_add(1, std::memory_order_relaxed);
        HttpResponseData r = make_error_response(
            503, "server is at capacity (" + std::to_string(server_.config.pool.max_queue) + " requests queued); retry later",
            context_.request_id);
        r.headers.push_back({"Retry-After", "1"});
        return respond(std::move(r), false);
      }
      case SubmitResult::stopping: {
        HttpResponseData r = make_error_response(503, "server is shutting down", context_.request_id);
        r.headers.push_back({"Retry-After", "1"});
        return respond(std::move(r), true);
      }
    }
  }

  void on_job_done(std::uint64_t token, HttpResponseData&& r) {
    // Answered 504 already: a stream's head is dropped, and its producer told to stop.
    if (token != job_token_ || !job_pending_) return;
    job_pending_ = false;
    job_timer_.cancel();
    if (websocket_ && r.status == 101) return start_websocket(std::move(r));
    if (websocket_) websocket_->ended(WebSocketChannel::kAbnormal, "");  // refused, or a worker that answered it as HTTP
    if (r.stream) return stream_answer(std::move(r));
    respond(std::move(r), false);
  }

  // --- a WebSocket, once the app accepted it (the upgrade request was a Job like any) ---
  //   start_websocket -> on_ws_accept -> ws_work (what the loop asked for) -> ws_pump
  //   ws_pump -> ws_read -> on_ws_read -> ws_pump      one message per read the loop allowed
  //           -> ws_write -> on_ws_write -> ws_work    one message at a time, in order
  //           -> ws_close (the app's, after what it sent) -> ws_end
  // beside them the keepalive timer (ws_tick). ws_end tells the loop once how it ended.
  void start_websocket(HttpResponseData&& r) {
    if (server_.shutting_down || shutting_down_) {
      websocket_->ended(WebSocketChannel::kGoingAway, "");
      return respond(make_error_response(503, "server is shutting down", context_.request_id), true);
    }
    ws_.emplace(stream_);
    ws_->set_option(websocket::stream_base::timeout{kWebSocketHandshakeTimeout, websocket::stream_base::none(), false});
    ws_->read_message_max(server_.config.http.ws_max_message);
    ws_->auto_fragment(false);
    if (server_.config.http.ws_per_message_deflate && !asks_for_a_window_of_8(request_)) {
      ws_->set_option(per_message_deflate());
    }
    ws_->set_option(websocket::stream_base::decorator(
        [headers = std::move(r.headers), id = context_.request_id](websocket::response_type& res) {
          exchange::set_server_fields(res, id);
          exchange::put_answer_fields(res, headers);  // as in to_wire()
        }));
    ws_->control_callback([this](websocket::frame_type kind, beast::string_view) {
      if (kind == websocket::frame_type::pong) ws_pong_due_.reset();
    });
    stream_.expires_never();  // the WebSocket's own timeouts from here on
    record(101, 0, nullptr);
    ws_->async_accept(request_, [self = shared_from_this()](beast::error_code ec) { self->on_ws_accept(ec); });
  }

  // permessage-deflate, taken where the client offers it. The server compresses with a 4 KiB
  // window at zlib's default level and memory level 5 (the `websockets` package's defaults:
  // about 75 KiB more per compressing socket, measured; zlib's own need about 300). The client's window is
  // left at its choice: Beast declines an offer that does not let the server choose it
  // (a bare `permessage-deflate`, as Firefox sends) when asked for less than 15 bits.
  // Beast counts --ws-max-message against the inflated message.
  static websocket::permessage_deflate per_message_deflate() {
    websocket::permessage_deflate pmd;
    pmd.server_enable = true;
    pmd.server_max_window_bits = 12;
    pmd.client_max_window_bits = 15;
    pmd.compLevel = 6;
    pmd.memLevel = 5;
    return pmd;
  }

  // Beast answers the offer it takes (the first permessage-deflate) with server_max_window_bits=9
  // where it asked for 8 (zlib cannot make a window of 8 bits), which RFC 7692 7.1.2.1 forbids:
  // such an offer is declined, and the socket goes uncompressed.
  static bool asks_for_a_window_of_8(const exchange::Request& request) {
    const http::ext_list offers(request[http::field::sec_websocket_extensions]);
    for (const auto& offer : offers) {
      if (!beast::iequals(offer.first, "permessage-deflate")) continue;
      for (const auto& param : offer.second) {
        if (beast::iequals(param.first, "server_max_window_bits") && param.second == "8") return true;
      }
      return false;
    }
    return false;
  }

  void on_ws_accept(beast::error_code ec) {
    if (ec) {
      websocket_->ended(WebSocketChannel::kAbnormal, "");
      return close();
    }
    ws_open_ = true;
    server_.stats.websockets_open.fetch_add(1, std::memory_order_relaxed);
    ws_read_credit_ = 1;  // the first message is read without asking
    if (server_.config.http.ws_ping_interval > 0) {
      ping_timer_.emplace(stream_.get_executor());
      ws_next_ping_ = Clock::now() + seconds_setting(server_.config.http.ws_ping_interval);
      ws_schedule_tick();
    }
    if (shutting_down_) return ws_server_close(WebSocketChannel::kGoingAway);
    ws_work();
  }

  // Takes what the loop asked for: reads, and the next messages once the last are written.
  void ws_work() {
    if (ws_ended_) return;
    // The callback keeps the session while it waits for the loop (nothing else may).
    WebSocketChannel::Work work = websocket_->take(ws_out_.empty(), [self = shared_from_this(), executor = stream_.get_executor()] {
      net::post(executor, [self] { self->ws_work(); });
    });
    for (auto& m : work.messages) ws_out_.push_back(std::move(m));
    ws_read_credit_ += work.reads;
    if (work.close && !ws_close_) ws_close_ = std::move(work.close);
    ws_pump();
  }

  void ws_pump() {
    if (ws_ended_ || ws_closing_) return;
    if (!ws_reading_ && ws_read_credit_ > 0) ws_read();
    if (ws_writing_) return;
    if (!ws_out_.empty()) return ws_write();
    if (ws_close_) ws_close(ws_close_->first, ws_close_->second);
  }

  void ws_read() {
    ws_reading_ = true;
    ws_->async_read(ws_buffer_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_ws_read(ec);
    });
  }

  void on_ws_read(beast::error_code ec) {
    ws_reading_ = false;
    if (ws_ended_) return;
    if (ec) return ws_failed(ec);
    --ws_read_credit_;
    websocket_->received({ws_->got_text(), beast::buffers_to_string(ws_buffer_.data())});
    ws_buffer_.clear();
    ws_pump();
  }

  void ws_write() {
    ws_writing_ = true;
    ws_->text(ws_out_.front().text);
    ws_->async_write(net::buffer(ws_out_.front().data), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_ws_write(ec);
    });
  }

  void on_ws_write(beast::error_code ec) {
    ws_writing_ = false;
    if (ws_ended_) return;
    if (ec) return ws_failed(ec);
    ws_out_.pop_front();
    if (!ws_out_.empty()) return ws_pump();
    ws_work();
  }

  // The close handshake with `code`: the app's (after what it sent), or the server's.
  void ws_close(int code, const std::string& reason) {
    if (ws_closing_ || ws_ended_) return;
    ws_closing_ = true;
    websocket::close_reason cr;
    cr.code = static_cast<std::uint16_t>(code);
    cr.reason.assign(reason.data(), std::min(reason.size(), cr.reason.max_size()));  // the loop checked it
    ws_->async_close(cr, [self = shared_from_this(), code, reason](beast::error_code) { self->ws_end(code, reason); });
  }

  // The server closes (SIGTERM: 1001): the app hears it at once, the client gets the close frame.
  void ws_server_close(int code) {
    if (ws_ended_) return;
    websocket_->ended(code, "");
    ws_close(code, "");
  }

  // A read or write failed: the peer's close frame, one of Beast's own closes
  // (it sent the close frame already), or a broken connection.
  void ws_failed(beast::error_code ec) {
    if (ec == websocket::error::closed) {
      const websocket::close_reason& cr = ws_->reason();
      const int code = cr.code == websocket::close_code::none ? WebSocketChannel::kNoStatus : static_cast<int>(cr.code);
      return ws_end(code, std::string(cr.reason.data(), cr.reason.size()));
    }
    if (ec == websocket::error::message_too_big) return ws_end(1009, "");
    if (ec == websocket::error::bad_frame_payload) return ws_end(1007, "");
    if (ec == websocket::condition::protocol_violation) return ws_end(1002, "");
    ws_end(WebSocketChannel::kAbnormal, "");
  }

  // The socket is over: the loop is told (once), the connection closes.
  void ws_end(int code, const std::string& reason) {
    if (ws_ended_) return;
    ws_ended_ = true;
    server_.stats.websockets_open.fetch_sub(1, std::memory_order_relaxed);
    if (ping_timer_) ping_timer_->cancel();
    websocket_->ended(code, reason);
    ws_out_.clear();
    close();
  }

  // Keepalive: a ping every --ws-ping-interval; a peer whose pong has not come
  // --ws-ping-timeout after it is dropped. Pongs are read only while a read is
  // pending: while the app holds the reading back, the wait does not count.
  void ws_schedule_tick() {
    Clock::time_point at = ws_next_ping_;
    if (ws_pong_due_) at = std::min(at, *ws_pong_due_);
    ping_timer_->expires_at(at);
    ping_timer_->async_wait([self = shared_from_this()](beast::error_code ec) {
      if (!ec) self->ws_tick();
    });
  }

  void ws_tick() {
    if (ws_ended_ || ws_closing_) return;
    const auto now = Clock::now();
    const double timeout = server_.config.http.ws_ping_timeout;
    if (ws_pong_due_ && now >= *ws_pong_due_) {
      if (!ws_reading_) {
        ws_pong_due_ = now + seconds_setting(timeout);
      } else if (timeout > 0) {
        return ws_end(WebSocketChannel::kAbnormal, "");  // the peer stopped answering
      }
    }
    if (now >= ws_next_ping_) {
      ws_next_ping_ = now + seconds_setting(server_.config.http.ws_ping_interval);
      if (!ws_pong_due_ && !ws_pinging_) {
        ws_pinging_ = true;
        if (timeout > 0) ws_pong_due_ = now + seconds_setting(timeout);
        ws_->async_ping({}, [self = shared_from_this()](beast::error_code) { self->ws_pinging_ = false; });
      }
    }
    ws_schedule_tick();
  }

  // --- an answer that streams: the head, then each chunk as the handler makes it --------
  //   stream_answer -> (head written) pump -> [wait for the producer] -> write_chunks
  //   -> pump ... -> end_body -> on_write
  // The handler's thread is held back by the stream's bounded buffer; the connection
  // takes what is there whenever the last write is done.
  void stream_answer(HttpResponseData&& r) {
    if (server_.shutting_down || shutting_down_) context_.keep_alive = false;
    body_ = std::move(r.stream);
    std::string problem;
    std::optional<exchange::StreamHead> head = exchange::to_wire_head(std::move(r), context_, problem);
    if (!head) {
      body_.reset();  // the producer stops
      spdlog::error("request {}: the streamed response to {} {} breaks a rule and was not sent: {}; answered 500",
                    context_.request_id, sv(request_.method_string()), path_for_log(), problem);
      return respond(make_error_response(500, "internal server error", context_.request_id), true);
    }
    stream_head_ = std::make_unique<exchange::StreamHead>(std::move(*head));
    context_.keep_alive = stream_head_->message.keep_alive();
    body_sent_ = 0;
    record(stream_head_->message.result_int(), std::nullopt, &stream_head_->message);
    head_serializer_ = std::make_unique<http::response_serializer<http::empty_body>>(stream_head_->message);
    stream_.expires_after(kWriteTimeout);
    http::async_write_header(stream_, *head_serializer_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->close();
      if (self->stream_head_->framing == exchange::StreamHead::Framing::none) {
        self->body_.reset();  // HEAD, 204, 304: no body; the handler is told to stop
        return self->end_stream();
      }
      self->pump();
    });
  }

  void pump() {
    if (!body_) return;
    // The callback holds the session while it waits for the producer (nothing
    // else does then); the stream drops it once called, finished or cancelled.
    BodyStream::Taken taken = body_->take([self = shared_from_this(), executor = stream_.get_executor()] {
      net::post(executor, [self] { self->pump(); });
    });
    if (taken.chunks.empty()) {
      switch (taken.state) {
        case BodyStream::State::more:
          stream_.expires_never();  // the producer's pace is the handler's business
          return;
        case BodyStream::State::finished:
          return end_body();
        case BodyStream::State::failed:
        case BodyStream::State::cancelled:
          return close();  // logged where it failed; the client sees the body cut short
      }
    }
    write_chunks(std::move(taken));
  }

  void write_chunks(BodyStream::Taken&& taken) {
    using Framing = exchange::StreamHead::Framing;
    const bool chunked = stream_head_->framing == Framing::chunked;
    bool overrun = false;
    writing_ = std::move(taken.chunks);
    chunk_sizes_.clear();
    chunk_sizes_.reserve(writing_.size());  // never reallocated: buffers_ point into it
    buffers_.clear();
    for (const std::string& c : writing_) {
      std::size_t n = c.size();
      if (stream_head_->framing == Framing::length && n > stream_head_->length - body_sent_) {
        n = static_cast<std::size_t>(stream_head_->length - body_sent_);
        overrun = true;
      }
      if (n > 0) {
        if (chunked) {
          char size[24];
          const int len = std::snprintf(size, sizeof size, "%zx\r\n", n);
          chunk_sizes_.emplace_back(size, static_cast<std::size_t>(len));
          buffers_.push_back(net::buffer(chunk_sizes_.back()));
        }
        buffers_.push_back(net::buffer(c.data(), n));
        if (chunked) buffers_.push_back(net::buffer("\r\n", 2));
        body_sent_ += n;
      }
      if (overrun) break;
    }
    // The last chunks and the end together, when the producer is done already.
    const bool last = taken.state == BodyStream::State::finished && !overrun;
    const bool terminated = last && chunked;
    if (terminated) buffers_.push_back(net::buffer("0\r\n\r\n", 5));
    stream_.expires_after(kWriteTimeout);
    net::async_write(stream_, buffers_, [self = shared_from_this(), overrun, last, terminated,
                                         state = taken.state](beast::error_code ec, std::size_t) {
      self->writing_.clear();
      if (ec) return self->close();
      if (overrun) {
        spdlog::error("request {}: the handler for {} sent more than its Content-Length of {} bytes; "
                      "the rest was not sent and the connection is closed",
                      self->context_.request_id, self->path_for_log(), self->stream_head_->length);
        return self->close();
      }
      if (terminated) return self->end_stream();
      if (last) return self->end_body();
      if (state == BodyStream::State::failed || state == BodyStream::State::cancelled) return self->close();
      self->pump();
    });
  }

  // The producer finished: end the body as its framing says.
  void end_body() {
    using Framing = exchange::StreamHead::Framing;
    if (stream_head_->framing == Framing::length && body_sent_ < stream_head_->length) {
      spdlog::error("request {}: the handler for {} ended its body after {} bytes, short of its "
                    "Content-Length of {}; the connection is closed",
                    context_.request_id, path_for_log(), body_sent_,
                    stream_head_->length);
      return close();
    }
    if (stream_head_->framing == Framing::chunked) {
      stream_.expires_after(kWriteTimeout);
      net::async_write(stream_, net::buffer("0\r\n\r\n", 5), [self = shared_from_this()](beast::error_code ec, std::size_t) {
        if (ec) return self->close();
        self->end_stream();
      });
      return;
    }
    end_stream();
  }

  void end_stream() {
    body_.reset();
    head_serializer_.reset();
    stream_head_.reset();
    on_write({});
  }

  // The route's pattern as registered (for logs), else the decoded path.
  std::string path_for_log() const {
    if (route_index_ != kNoRoute && route_index_ < server_.executor.routes().size() && server_.routes_ready()) {
      return server_.executor.routes()[route_index_].path;
    }
    return std::string(request_.target().substr(0, 200));
  }

  void on_job_deadline(std::uint64_t token) {
    if (token != job_token_ || !job_pending_) return;
    job_pending_ = false;
    spdlog::warn("request {}: {} {} got no answer within {}; 504", context_.request_id, sv(request_.method_string()),
                 path_for_log(), fmt_seconds(server_.config.http.request_timeout));
    server_.stats.deadline_exceeded.fetch_add(1, std::memory_order_relaxed);
    respond(make_error_response(504, "handler did not answer within " + fmt_seconds(server_.config.http.request_timeout),
                                context_.request_id),
            false);
  }

  static std::string fmt_seconds(double s) {
    std::string out = std::to_string(s);
    out.erase(out.find_last_not_of('0') + 1);
    if (!out.empty() && out.back() == '.') out.pop_back();
    return out + " s";
  }

  // Every response goes out here, built where it was decided; `close` ends
  // the connection after it.
  void respond(HttpResponseData&& r, bool close) {
    if (std::string mismatch = exchange::length_mismatch(r, context_); !mismatch.empty()) {
      spdlog::error("request {}: the response to {} {} was not sent: {}; answered 500 and closed the connection",
                    context_.request_id, sv(request_.method_string()), path_for_log(), mismatch);
      r = make_error_response(500, "internal server error", context_.request_id);
      close = true;
    }
    if (close || server_.shutting_down || shutting_down_) context_.keep_alive = false;
    std::string problem;
    response_ = exchange::to_wire(std::move(r), context_, problem);
    if (!problem.empty()) {
      spdlog::error("request {}: the response to {} {} breaks a rule and was not sent: {}; answered 500",
                    context_.request_id, sv(request_.method_string()), path_for_log(), problem);
    }
    record(response_.result_int(), response_.body().size(), &response_);
    do_write();
  }

  // The access log's client: the forwarded one when a trusted proxy names it
  // (server/http/forwarded.hpp), as the app saw it; else the peer.
  struct LogClient {
    std::string address;           // --access-log-format's %(h)s
    std::string address_and_port;  // our own line's
  };

  // Counts the answer (status, route latency) and writes its access log line. `bytes`: the
  // body's, nullopt for one that streams; `response`: its head's fields, if it has any.
  void record(int code, std::optional<std::uint64_t> bytes, const http::fields* response) {
    const auto latency = Clock::now() - arrived_;
    server_.stats.record_status(code);
    if (route_index_ != kNoRoute) server_.stats.record_route(route_index_, code, latency);
    if (!server_.access_format) return;
    const LogClient client = client_for_log();
    AccessEntry entry = access_entry(client, context_.request_id, request_, latency);
    entry.status = code;
    entry.body_bytes = bytes;
    if (response != nullptr) entry.response_header = lookup_in(*response);
    spdlog::info("{}", server_.access_format->render(entry));
  }

  static AccessEntry::Lookup lookup_in(const http::fields& fields) {
    return [&fields](std::string_view name) -> std::optional<std::string_view> {
      const auto found = fields.find(name);
      if (found == fields.end()) return std::nullopt;
      return sv(found->value());
    };
  }

  // What an access line says of a request whatever its answer; it refers to `client`, `id`
  // and `request`.
  static AccessEntry access_entry(const LogClient& client, std::string_view id, const http::request_header<>& request,
                                  Clock::duration took) {
    AccessEntry entry;
    entry.client = client.address;
    entry.client_and_port = client.address_and_port;
    entry.request_id = id;
    entry.method = sv(request.method_string());
    entry.target = sv(request.target());
    entry.version = request.version();
    entry.took = std::chrono::duration_cast<std::chrono::nanoseconds>(took);
    entry.arrived = std::chrono::time_point_cast<std::chrono::system_clock::duration>(std::chrono::system_clock::now() -
                                                                                      entry.took);
    entry.request_header = lookup_in(request);
    return entry;
  }

  // The access log's line for GET /events, written when the stream ends; empty without the log.
  // What it needs of this session is copied: the stream outlives it.
  EventStreams::AccessLine event_stream_access_line() const {
    if (!server_.event_stream_format) return {};
    return [format = &*server_.event_stream_format, client = client_for_log(), id = context_.request_id,
            head = http::request_header<>(request_.base())](std::chrono::nanoseconds lasted, std::size_t events) {
      AccessEntry entry = access_entry(client, id, head, lasted);
      entry.status = 200;
      entry.events = events;
      return format->render(entry);
    };
  }

  // Built only with --access-log, from what forwarded::apply() reads.
  LogClient client_for_log() const {
    HttpRequestData forwarding;
    forwarding.remote_addr = peer_.remote_addr;
    forwarding.remote_port = peer_.remote_port;
    for (const auto& field : request_) {
      if (beast::iequals(field.name_string(), "x-forwarded-for") ||
          beast::iequals(field.name_string(), "x-forwarded-proto")) {
        forwarding.headers.push_back({std::string(field.name_string()), std::string(field.value())});
      }
    }
    forwarded::apply(forwarding, server_.trusted_proxies, server_.unix_socket);
    return {forwarded::client_text(forwarding.remote_addr, 0),
            forwarded::client_text(forwarding.remote_addr, forwarding.remote_port)};
  }

  void do_write() {
    stream_.expires_after(kWriteTimeout);
    http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_write(ec);
    });
  }

  void on_write(beast::error_code ec) {
    if (ec) return close();
    if (!context_.keep_alive) return linger();
    next_request();
  }

  // A lingering close (see kLingerTime): no more sending, read and drop what
  // still comes, close at end of stream or at the bounds.
  void linger() {
    if (shutting_down_) return close();
    lingering_ = true;
    beast::error_code ignored;
    stream_.socket().shutdown(Socket::shutdown_send, ignored);
    stream_.expires_after(kLingerTime);
    buffer_.clear();
    drain();
  }

  void drain() {
    stream_.async_read_some(buffer_.prepare(kReadSize), [self = shared_from_this()](beast::error_code ec, std::size_t n) {
      self->lingered_bytes_ += n;
      if (ec || self->lingered_bytes_ >= kLingerBytes) return self->close();
      self->drain();
    });
  }

  void close() {
    job_timer_.cancel();
    body_.reset();  // a handler still producing is told to stop
    beast::error_code ignored;
    stream_.socket().shutdown(Socket::shutdown_send, ignored);
    stream_.close();
  }

  static constexpr std::size_t kNoRoute = static_cast<std::size_t>(-1);
  static constexpr std::chrono::seconds kFirstRequestGrace{1};

  Stream stream_;
  HttpServer::Impl& server_;
  beast::flat_buffer buffer_;
  exchange::HeadScanner scanner_;
  std::optional<exchange::Parser> parser_;
  std::optional<http::request_header<>> head_before_body_;  // a chunked request's header, before its trailers
  std::vector<std::size_t> header_order_;  // exchange::wire_order() of the request's head
  exchange::Request request_;
  exchange::ResponseContext context_;
  exchange::WireResponse response_;
  // An answer that streams: the consumer's end of its body, its head and how much went out.
  std::shared_ptr<BodyStream> body_;
  std::unique_ptr<exchange::StreamHead> stream_head_;
  std::unique_ptr<http::response_serializer<http::empty_body>> head_serializer_;
  std::vector<std::string> writing_;      // the chunks being written
  std::vector<std::string> chunk_sizes_;  // their chunk-size lines
  std::vector<net::const_buffer> buffers_;
  std::uint64_t body_sent_ = 0;
  // A WebSocket: its channel to the app's loop (from the upgrade request on), then the
  // stream over this connection's socket and what it is doing.
  std::shared_ptr<WebSocketChannel> websocket_;
  std::optional<websocket::stream<LingeringStream>> ws_;
  beast::flat_buffer ws_buffer_;
  std::deque<WebSocketChannel::Message> ws_out_;  // taken from the channel, being written
  std::optional<std::pair<int, std::string>> ws_close_;  // the app's close, after ws_out_
  std::optional<net::steady_timer> ping_timer_;
  Clock::time_point ws_next_ping_;
  std::optional<Clock::time_point> ws_pong_due_;
  unsigned ws_read_credit_ = 0;
  bool ws_open_ = false, ws_reading_ = false, ws_writing_ = false, ws_pinging_ = false, ws_closing_ = false,
       ws_ended_ = false;
  exchange::Peer peer_;
  net::steady_timer job_timer_;
  const Clock::time_point accepted_at_;
  Clock::time_point head_deadline_;
  Clock::time_point arrived_ = Clock::now();
  std::size_t route_index_ = kNoRoute;
  std::uint64_t job_token_ = 0;
  std::size_t lingered_bytes_ = 0;
  bool job_pending_ = false;
  bool idle_ = false;
  bool lingering_ = false;
  bool first_request_ = true;
  bool shutting_down_ = false;
  const int native_fd_;
};

void HttpServer::Impl::do_accept() {
  // With one I/O thread every handler already runs on it: a strand per connection would
  // only add a second queue (and a second post) to each completion from a worker.
  const net::any_io_executor connection_executor =
      config.http.io_threads == 1 ? net::any_io_executor(ioc.get_executor()) : net::any_io_executor(net::make_strand(ioc));
  acceptor.async_accept(connection_executor, [this](beast::error_code ec, Socket socket) {
    if (ec) return on_accept_error(ec);
    accept_backoff = {};
    beast::error_code ignored;
    if (stats.connections_open.load(std::memory_order_relaxed) >= static_cast<std::int64_t>(config.http.max_connections)) {
      // Past --max-connections: closed at once (the client sees the connection
      // end), counted in /stats and /metrics.
      stats.connections_rejected.fetch_add(1, std::memory_order_relaxed);
      socket.close(ignored);
      return do_accept();
    }
    if (!unix_socket) socket.set_option(tcp::no_delay(true), ignored);
    std::make_shared<Session>(std::move(socket), *this)->start();
    do_accept();
  });
}

// Out of file descriptors (EMFILE/ENFILE) or memory: the connection stays in
// the kernel's backlog. Retry after a pause that doubles up to a cap, so the
// acceptor never spins, and log at most every 10 s.
void HttpServer::Impl::on_accept_error(beast::error_code ec) {
  if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
  stats.accept_errors.fetch_add(1, std::memory_order_relaxed);
  accept_backoff = accept_backoff.count() == 0 ? kAcceptBackoffFirst : std::min(accept_backoff * 2, kAcceptBackoffMax);
  const auto now = std::chrono::steady_clock::now();
  if (accept_error_logged_at == std::chrono::steady_clock::time_point{} ||
      now - accept_error_logged_at > std::chrono::seconds(10)) {
    accept_error_logged_at = now;
    const bool out_of_fds = ec == net::error::no_descriptors || ec == boost::system::errc::too_many_files_open_in_system;
    spdlog::warn("accept failed: {} ({} connections open); retrying until it succeeds{}", ec.message(),
                 stats.connections_open.load(std::memory_order_relaxed),
                 out_of_fds ? "; raise the file descriptor limit (ulimit -n) or lower --max-connections" : "");
  }
  accept_retry_timer.expires_after(accept_backoff);
  accept_retry_timer.async_wait([this](beast::error_code e) {
    if (!e) do_accept();
  });
}

// First SIGTERM/SIGINT: /readyz says 503 at once; the listener stays open for
// --shutdown-delay (a load balancer sees the replica leave before connections
// are refused), then the drain begins. A second signal ends the drain at once.
void HttpServer::Impl::on_signal(int signo) {
  auto wait_again = [this] {
    signals.async_wait([this](beast::error_code ec, int again) {
      if (!ec) on_signal(again);
    });
  };
  if (signo == SIGHUP && !Terminals::now().lost_since(terminals)) {
    on_restart_signal();
    return wait_again();
  }
  const char* name = signo == SIGTERM ? "SIGTERM" : signo == SIGINT ? "SIGINT" : "SIGHUP (the terminal hung up)";
  if (lifecycle == Lifecycle::restarting) {
    ::close(std::exchange(restart_fd, -1));  // no server follows: connections in the backlog are refused
    spdlog::info("received {} during the restart: stopping instead", name);
  } else if (lifecycle == Lifecycle::stopping) {
    // The operator wants it gone: no drain, no finalization. Sockets close with
    // the process; the zygote dies with it and idle workers leave on end of stream.
    spdlog::warn("received {} again: exiting now, without waiting for in-flight requests", name);
    spdlog::shutdown();
    std::fflush(nullptr);
    std::_Exit(1);
  }
  lifecycle = Lifecycle::stopping;
  shutting_down = true;
  spdlog::info("received {}, shutting down (shutdown delay {} s, graceful timeout {} s; send it again "
               "to stop at once)",
               name, config.http.shutdown_delay, config.http.graceful_timeout);
  wait_again();
  if (config.http.shutdown_delay <= 0 || !routes_ready()) return begin_drain();
  shutdown_delay_timer.expires_after(seconds_setting(config.http.shutdown_delay));
  shutdown_delay_timer.async_wait([this](beast::error_code ec) {
    if (!ec) begin_drain();
  });
}

// SIGHUP (gunicorn's and Granian's reload): the server starts again in this process, with the
// app's code as it is on disk now and the same listening socket, which stays open meanwhile:
// new connections wait in its backlog instead of being refused. The drain is SIGTERM's without
// --shutdown-delay (the socket never closes); main() then executes this binary again.
void HttpServer::Impl::on_restart_signal() {
  if (lifecycle != Lifecycle::serving) {
    spdlog::info("received SIGHUP while {}: ignored",
                 lifecycle == Lifecycle::checking     ? "checking the app for a restart"
                 : lifecycle == Lifecycle::restarting ? "restarting"
                                                      : "shutting down");
    return;
  }
  if (!restart_check) return begin_restart();
  // The check imports the app in a child process on run()'s thread; meanwhile this serves.
  lifecycle = Lifecycle::checking;
  spdlog::info("received SIGHUP: checking that the app as it is now loads before restarting in place");
  std::lock_guard lock(main_mutex);
  restart_check_asked = true;
  main_wake.notify_all();
}

void HttpServer::Impl::after_restart_check(const std::optional<StartupError>& refused) {
  if (lifecycle != Lifecycle::checking) return;  // SIGTERM/SIGINT came meanwhile
  lifecycle = Lifecycle::serving;
  if (refused) {
    spdlog::error("SIGHUP: not restarting, the app as it is now would not start: {}; still serving the app "
                  "loaded at start",
                  refused->what());
    if (!refused->detail().empty()) spdlog::error("{}", refused->detail());
    return;
  }
  begin_restart();
}

void HttpServer::Impl::begin_restart() {
  restart_fd = fcntl(acceptor.native_handle(), F_DUPFD_CLOEXEC, 0);
  if (restart_fd < 0) {
    spdlog::error("received SIGHUP: cannot keep the listening socket for a restart ({}); still serving",
                  std::strerror(errno));
    return;
  }
  lifecycle = Lifecycle::restarting;
  shutting_down = true;
  spdlog::info("received SIGHUP: restarting in place (pid {}): draining in-flight requests (graceful timeout {} s), "
               "then starting again on the same socket; new connections wait for it",
               getpid(), config.http.graceful_timeout);
  begin_drain();
}

void HttpServer::Impl::close_listener() {
  app_forks::set_listener(-1);
  beast::error_code ignored;
  acceptor.close(ignored);
}

void HttpServer::Impl::begin_drain() {
  if (draining.exchange(true)) return;
  close_listener();
  accept_retry_timer.cancel();
  events.shutdown();
  for_each_session(&Session::on_shutdown);
  std::lock_guard lock(main_mutex);
  drain_begun = true;
  main_wake.notify_all();
}

// Posts `action` to every open session, on its own executor.
void HttpServer::Impl::for_each_session(void (Session::*action)()) {
  std::lock_guard lock(sessions_mutex);
  for (Session* s : sessions) {
    std::weak_ptr<Session> weak = s->weak_from_this();
    net::post(s->executor(), [weak, action] {
      if (auto live = weak.lock()) ((*live).*action)();
    });
  }
}

namespace {
// --uds PATH: a UNIX socket there, connectable by every user (0666, as uvicorn makes it; the
// folder's permissions restrict who reaches it). A socket file left by a server that is gone
// (nothing accepts on it) is replaced; one a server still listens on, or a file that is not a
// socket, is refused.
int listen_unix(const std::string& path, int backlog, const std::string& where) {
  auto fail = [&where](const std::string& why) { return ListenError("cannot listen on " + where + ": " + why); };
  sockaddr_un address{};
  address.sun_family = AF_UNIX;
  if (path.size() >= sizeof address.sun_path) {
    throw fail("the path is longer than " + std::to_string(sizeof address.sun_path - 1) + " bytes");
  }
  std::memcpy(address.sun_path, path.data(), path.size());
  const auto* as_sockaddr = reinterpret_cast<const sockaddr*>(&address);
  struct stat st {};
  if (lstat(path.c_str(), &st) == 0) {
    if (!S_ISSOCK(st.st_mode)) throw fail("a file that is not a socket is there");
    const int probe = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const bool live = probe >= 0 && connect(probe, as_sockaddr, sizeof address) == 0;
    if (probe >= 0) ::close(probe);
    if (live) throw ListenError(where + " is already in use (is another server running there?)");
    if (unlink(path.c_str()) != 0) throw fail(std::string("cannot remove the stale socket file: ") + std::strerror(errno));
  }
  const int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) throw fail(std::strerror(errno));
  if (bind(fd, as_sockaddr, sizeof address) != 0 || chmod(path.c_str(), 0666) != 0 || listen(fd, backlog) != 0) {
    const int error = errno;
    ::close(fd);
    throw fail(std::string(std::strerror(error)) + (error == EACCES ? " (may this user create files in that folder?)" : ""));
  }
  return fd;
}

// Where --host/--port or --uds say to listen, for messages: HOST:PORT or unix:PATH.
std::string describe_listen(const HttpOptions& http) {
  return http.uds.empty() ? http.host + ":" + std::to_string(http.port) : "unix:" + http.uds;
}
}  // namespace

OwnListener listen_socket(const HttpOptions& http) {
  const std::string where = describe_listen(http);
  const int backlog = http.backlog > 0 ? http.backlog : SOMAXCONN;
  if (!http.uds.empty()) return {listen_unix(http.uds, backlog, where), SocketFile(http.uds)};
  beast::error_code ec;
  net::io_context ioc(1);
  // An empty name would resolve to every interface: refused, not widened.
  if (http.host.empty()) throw ListenError("cannot listen on " + where + ": --host is empty (0.0.0.0 for every IPv4 interface)");
  auto address = net::ip::make_address(http.host, ec);
  if (ec) {  // a name (localhost): its first IPv4 address, as uvicorn binds it, else its first
    tcp::resolver resolver(ioc);
    const auto found = resolver.resolve(http.host, "", tcp::resolver::passive | tcp::resolver::numeric_service, ec);
    if (ec || found.empty()) {
      throw ListenError("cannot listen on " + where + ": '" + http.host + "' is not an IP address" +
                        (ec ? " and does not resolve (" + ec.message() + ")" : ""));
    }
    address = found.begin()->endpoint().address();
    for (const auto& entry : found) {
      if (entry.endpoint().address().is_v4()) {
        address = entry.endpoint().address();
        break;
      }
    }
  }
  tcp::acceptor a(ioc);
  tcp::endpoint endpoint(address, http.port);
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(backlog, ec);
  if (ec == net::error::address_in_use) {
    throw ListenError(where + " is already in use (is another server running there?)");
  }
  if (ec == boost::system::errc::address_not_available) {
    throw ListenError("cannot listen on " + where + ": no network interface has that address");
  }
  if (ec == net::error::access_denied) {
    throw ListenError("cannot listen on " + where + ": permission denied (ports below 1024 need privileges)");
  }
  if (ec) throw ListenError("cannot listen on " + where + ": " + ec.message());
  const int fd = a.release(ec);
  if (ec) throw ListenError("cannot listen on " + where + ": " + ec.message());
  return {fd, {}};
}

int adopt_listener(int fd, const std::string& what) {
  int listening = 0;
  int type = 0;
  socklen_t size = sizeof listening;
  socklen_t type_size = sizeof type;
  sockaddr_storage address{};
  socklen_t address_size = sizeof address;
  if (fd < 0 || getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &size) != 0 || !listening ||
      getsockopt(fd, SOL_SOCKET, SO_TYPE, &type, &type_size) != 0 || type != SOCK_STREAM ||
      getsockname(fd, reinterpret_cast<sockaddr*>(&address), &address_size) != 0 ||
      (address.ss_family != AF_INET && address.ss_family != AF_INET6 && address.ss_family != AF_UNIX)) {
    throw ListenError(what + " is not a listening TCP or UNIX stream socket");
  }
  fcntl(fd, F_SETFD, fcntl(fd, F_GETFD) | FD_CLOEXEC);
  return fd;
}

std::optional<int> take_inherited_listener() {
  const char* value = getenv(kListenFdVariable);
  if (value == nullptr) return std::nullopt;
  const std::string text = value;
  unsetenv(kListenFdVariable);
  const auto fd = whole_integer(text);
  const bool usable = fd && *fd >= 0 && *fd <= std::numeric_limits<int>::max();
  return adopt_listener(usable ? static_cast<int>(*fd) : -1, std::string(kListenFdVariable) + "=" + text);
}

Terminals Terminals::now() {
  Terminals t;
  for (int fd = 0; fd < 3; ++fd) t.tty[static_cast<std::size_t>(fd)] = isatty(fd) == 1;
  return t;
}

bool Terminals::lost_since(const Terminals& before) const {
  for (std::size_t i = 0; i < tty.size(); ++i) {
    if (before.tty[i] && !tty[i]) return true;
  }
  return false;
}

bool hangups_ignored() {
  struct sigaction hup {};
  return sigaction(SIGHUP, nullptr, &hup) == 0 && hup.sa_handler == SIG_IGN;
}

SocketFile take_inherited_socket_file() {
  const char* value = getenv(kListenFileVariable);
  if (value == nullptr) return {};
  SocketFile file(value);
  unsetenv(kListenFileVariable);
  return file;
}

namespace {
// The listening socket's protocol and where it is, as a URL for the log: http://HOST:PORT
// ([IPv6]) or unix:PATH.
struct Bound {
  StreamProtocol protocol{AF_INET, IPPROTO_TCP};
  std::string url;
  unsigned short port = 0;
};

Bound bound(int fd, const HttpOptions& http, bool inherited) {
  sockaddr_storage address{};
  socklen_t size = sizeof address;
  if (getsockname(fd, reinterpret_cast<sockaddr*>(&address), &size) != 0) return {};
  if (address.ss_family == AF_UNIX) {
    const auto& un = reinterpret_cast<const sockaddr_un&>(address);
    const std::size_t length = size > offsetof(sockaddr_un, sun_path) ? size - offsetof(sockaddr_un, sun_path) : 0;
    return {StreamProtocol(AF_UNIX, 0), "unix:" + std::string(un.sun_path, strnlen(un.sun_path, length)), 0};
  }
  tcp::endpoint local;
  std::memcpy(local.data(), &address, std::min<std::size_t>(size, local.capacity()));
  local.resize(std::min<std::size_t>(size, local.capacity()));
  std::string host = inherited ? local.address().to_string() : http.host;
  if (host.find(':') != std::string::npos) host = "[" + host + "]";  // a URL's
  return {StreamProtocol(address.ss_family, IPPROTO_TCP), "http://" + host + ":" + std::to_string(local.port()),
          local.port()};
}
}  // namespace

HttpServer::HttpServer(const ServerConfig& config, Executor& executor, std::optional<int> listener, SocketFile file)
    : impl_(std::make_unique<Impl>(config, executor)) {
  impl_->socket_file = std::move(file);
  auto& a = impl_->acceptor;
  const std::string where = listener ? "the inherited socket (descriptor " + std::to_string(*listener) + ")"
                                     : describe_listen(config.http);
  int fd = listener.value_or(-1);
  if (!listener) {
    OwnListener own = listen_socket(config.http);
    fd = own.fd;
    impl_->socket_file = std::move(own.file);
  }
  const Bound b = bound(fd, config.http, listener.has_value());
  beast::error_code ec;
  a.assign(b.protocol, fd, ec);
  impl_->unix_socket = b.protocol.family() == AF_UNIX;
  impl_->bound_url = b.url;
  impl_->bound_port = b.port;
  impl_->accept_when_ready = listener.has_value();
  if (ec) {
    if (!a.is_open()) ::close(fd);
    throw ListenError("cannot listen on " + where + ": " + ec.message());
  }
  app_forks::set_listener(a.native_handle());  // a copy the app forks closes it
}

HttpServer::~HttpServer() = default;

SocketFile::~SocketFile() {
  if (!path_.empty() && getpid() == owner_) unlink(path_.c_str());
}

SocketFile& SocketFile::operator=(SocketFile&& other) noexcept {
  if (this != &other) {
    SocketFile gone(std::move(*this));  // removes what this held
    path_ = std::exchange(other.path_, {});
    owner_ = other.owner_;
  }
  return *this;
}

unsigned short HttpServer::port() const { return impl_->bound_port; }

void HttpServer::check_before_restart(std::function<std::optional<StartupError>()> check) {
  impl_->restart_check = std::move(check);
}

std::optional<Restart> HttpServer::restart() {
  if (impl_->restart_fd < 0) return std::nullopt;
  return Restart{std::exchange(impl_->restart_fd, -1), impl_->socket_file.release()};
}

HttpServer::Outcome HttpServer::run() {
  Impl& s = *impl_;
  s.signals.async_wait([&s](beast::error_code ec, int signo) {
    if (!ec) s.on_signal(signo);
  });
  if (!s.accept_when_ready) s.do_accept();
  // Completions of Python jobs arrive by post(): keep run() going even when
  // no socket operation is pending (during shutdown, say).
  auto keep_running = net::make_work_guard(s.ioc);
  std::vector<std::thread> io_threads;
  for (int i = 0; i < s.config.http.io_threads; ++i) {
    io_threads.emplace_back([&s] {
      // Nothing a client or a handler sends may end the process: an exception
      // that escapes a completion handler (its connection is then dropped) is
      // logged and the thread goes on serving.
      for (;;) {
        try {
          s.ioc.run();
          return;
        } catch (const std::exception& e) {
          spdlog::error("I/O thread: a connection failed and was dropped: {}", e.what());
        }
      }
    });
  }
  auto stop_io = [&] {
    net::post(s.ioc, [&s] { s.close_listener(); });
    keep_running.reset();
    s.ioc.stop();
    for (auto& t : io_threads) t.join();
  };

  // The workers start while the listener already answers: /healthz 200,
  // /readyz 503 "starting", Python routes 503 until the workers are up. (Under --reload the
  // connections wait until they are.)
  spdlog::info("listening on {}{}; starting {} {} workers for {}", s.bound_url,
               s.accept_when_ready ? " (an inherited socket: accepting once they are ready)" : "",
               s.config.pool.workers, strategy_name(s.executor.info().strategy), s.config.app.target);
  try {
    const auto t0 = std::chrono::steady_clock::now();
    s.executor.use_reactor(&s.reactor);
    s.executor.start();
    const ExecutorInfo info = s.executor.info();
    spdlog::info("{} workers ready in {:.0f} ms ({} build, Python {}, GIL {})", info.workers,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
                 python_build_name(info.build), info.python_version, info.gil_enabled ? "enabled" : "disabled");
    s.app_router_holder = std::make_unique<Router>(s.executor.routes(), s.config.http.dashboard);
  } catch (...) {
    stop_io();
    throw;
  }
  s.stats.init_routes(s.executor.routes().size());
  s.app_router.store(s.app_router_holder.get(), std::memory_order_release);
  if (s.accept_when_ready) net::post(s.ioc, [&s] { s.do_accept(); });
  spdlog::info("serving {} on {} (strategy {}, {} workers, {} I/O threads)", s.config.app.target, s.bound_url,
               strategy_name(s.executor.info().strategy), s.config.pool.workers, s.config.http.io_threads);

  for (std::unique_lock lock(s.main_mutex);;) {
    s.main_wake.wait(lock, [&s] { return s.drain_begun || s.restart_check_asked; });
    if (s.drain_begun) break;
    s.restart_check_asked = false;
    lock.unlock();
    std::optional<StartupError> refused;
    try {
      refused = s.restart_check();
    } catch (const std::exception& e) {
      refused = StartupError(std::string("the check itself failed: ") + e.what());
    }
    net::post(s.signals.get_executor(), [&s, refused = std::move(refused)] { s.after_restart_check(refused); });
    lock.lock();
  }
  const auto deadline = std::chrono::steady_clock::now() + seconds_setting(s.config.http.graceful_timeout);
  auto sessions_left = [&s] {
    std::lock_guard lock(s.sessions_mutex);
    return s.sessions.size() + s.events.open();
  };
  while (sessions_left() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const bool clean = s.executor.stop(deadline);
  s.executor.use_reactor(nullptr);
  // Responses the executor just answered (503 for what it could not run) still need writing.
  const auto write_deadline = std::chrono::steady_clock::now() + std::chrono::seconds(1);
  while (sessions_left() > 0 && std::chrono::steady_clock::now() < write_deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  stop_io();
  spdlog::info("stopped");
  return clean ? Outcome::stopped : Outcome::handlers_left_running;
}

}  // namespace gilgamesh
