#include "http_server.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <atomic>
#include <ctime>
#include <future>
#include <mutex>
#include <optional>
#include <random>
#include <thread>
#include <unordered_set>

#include "../pyworkers/query.hpp"
#include "builtins.hpp"
#include "dashboard.hpp"
#include "events.hpp"
#include "router.hpp"
#include "stats.hpp"
#include "../pyworkers/response.hpp"

namespace gilgamesh {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using tcp = net::ip::tcp;

namespace {

constexpr std::size_t kHeaderLimit = 8 * 1024;
constexpr auto kWriteTimeout = std::chrono::seconds(60);  // a client that stops reading is dropped
constexpr const char* kServerName = "gilgamesh/" GILGAMESH_VERSION;

std::chrono::steady_clock::duration seconds(double s) {
  return std::chrono::duration_cast<std::chrono::steady_clock::duration>(std::chrono::duration<double>(s));
}

// RFC 9110 IMF-fixdate, formatted once per second per thread.
const std::string& http_date() {
  thread_local std::time_t cached_second = 0;
  thread_local std::string cached;
  std::time_t now = std::time(nullptr);
  if (now != cached_second) {
    std::tm tm{};
    gmtime_r(&now, &tm);
    char buf[64];
    std::strftime(buf, sizeof buf, "%a, %d %b %Y %H:%M:%S GMT", &tm);
    cached.assign(buf);
    cached_second = now;
  }
  return cached;
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

// Beast's string_view as fmt can print it: std::string_view with Boost 1.74
// (Debian 12), boost::core::string_view with Boost >= 1.81 (trixie, the image).
std::string_view sv(beast::string_view s) { return {s.data(), s.size()}; }

// A client's X-Request-Id is echoed if it is short and printable.
bool acceptable_request_id(beast::string_view id) {
  if (id.empty() || id.size() > 200) return false;
  for (char c : id) {
    if (c < 0x21 || c > 0x7e) return false;
  }
  return true;
}

}  // namespace

class Session;

struct HttpServer::Impl {
  Impl(const ServerConfig& c, Executor& e)
      : config(c),
        executor(e),
        startup_router(std::vector<RouteInfo>{}, c.dashboard),
        started_at(std::chrono::steady_clock::now()),
        events(stats, [this] { return stats_json(view()).dump(); }, c.access_log),
        ioc(c.io_threads),
        acceptor(ioc),
        signals(ioc, SIGINT, SIGTERM),
        shutdown_delay_timer(ioc) {}

  void do_accept();
  void on_signal(int signo);
  void begin_drain();
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
  Executor& executor;
  Router startup_router;
  std::unique_ptr<Router> app_router_holder;
  std::atomic<const Router*> app_router{nullptr};
  ServerStats stats;
  std::chrono::steady_clock::time_point started_at;
  EventStreams events;  // GET /events; like the sessions below, outlives the io_context
  std::atomic<bool> shutting_down{false};  // a signal came: /readyz 503, no more keep-alive
  std::atomic<bool> draining{false};       // the listener is closed; connections finish
  int signals_received = 0;                // on the signal handler's strand only
  std::promise<void> shutdown_requested;   // the drain begins
  // Sessions unregister in their destructors, which may run while the
  // io_context below is destroyed: these members must outlive it.
  std::mutex sessions_mutex;
  std::unordered_set<Session*> sessions;

  net::io_context ioc;
  tcp::acceptor acceptor;
  net::signal_set signals;
  net::steady_timer shutdown_delay_timer;
};

// One connection. Its async chain reads top to bottom:
// wait_for_request -> read_header -> read_body -> handle -> (Python job) -> write -> wait_for_request.
// Every handler runs on the connection's strand.
class Session final : public JobOwner, public std::enable_shared_from_this<Session> {
 public:
  Session(tcp::socket&& socket, HttpServer::Impl& server)
      : stream_(std::move(socket)),
        server_(server),
        job_timer_(stream_.get_executor()),
        native_fd_(stream_.socket().native_handle()) {
    beast::error_code ec;
    if (auto remote = stream_.socket().remote_endpoint(ec); !ec) {
      remote_addr_ = remote.address().to_string();
      remote_port_ = remote.port();
    }
    if (auto local = stream_.socket().local_endpoint(ec); !ec) {
      local_addr_ = local.address().to_string();
      local_port_ = local.port();
    }
    server_.stats.connections_accepted.fetch_add(1, std::memory_order_relaxed);
    server_.stats.connections_open.fetch_add(1, std::memory_order_relaxed);
    std::lock_guard lock(server_.sessions_mutex);
    server_.sessions.insert(this);
  }
  ~Session() {
    server_.stats.connections_open.fetch_sub(1, std::memory_order_relaxed);
    std::lock_guard lock(server_.sessions_mutex);
    server_.sessions.erase(this);
  }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->wait_for_request(); });
  }

  // Posted by the server on SIGTERM: idle connections close now, busy ones
  // after their current response.
  void on_shutdown() {
    shutting_down_ = true;
    if (idle_) close();
  }

  net::any_io_executor executor() { return stream_.get_executor(); }

  // JobOwner, from a worker thread: hand the answer to the connection's strand.
  void job_done(std::uint64_t token, HttpResponseData&& r) override {
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
  // Idle phase: wait for the first byte of the next request. The keep-alive
  // timeout applies here; a new connection gets the header timeout instead.
  void wait_for_request() {
    if (shutting_down_) return close();
    if (buffer_.size() > 0) return read_header();  // pipelined request already here
    idle_ = true;
    stream_.expires_after(seconds(first_request_ ? server_.config.header_timeout
                                                 : server_.config.keepalive_timeout));
    stream_.async_read_some(buffer_.prepare(16 * 1024),
                            [self = shared_from_this()](beast::error_code ec, std::size_t n) {
                              self->idle_ = false;
                              self->buffer_.commit(n);
                              if (ec) return self->close();
                              self->read_header();
                            });
  }

  void read_header() {
    first_request_ = false;
    request_ = {};  // error answers before handle() must not reuse the previous request
    head_ = false;
    parser_.emplace();
    parser_->header_limit(kHeaderLimit);
    parser_->body_limit(server_.config.max_body);
    stream_.expires_after(seconds(server_.config.header_timeout));
    http::async_read_header(stream_, buffer_, *parser_,
                            [self = shared_from_this()](beast::error_code ec, std::size_t) {
                              self->on_header(ec);
                            });
  }

  void on_header(beast::error_code ec) {
    if (ec) return on_read_error(ec);
    arrived_ = std::chrono::steady_clock::now();
    auto& req = parser_->get();
    if (parser_->is_done()) return handle();
    // curl and others wait for "100 Continue" before sending a large body.
    if (beast::iequals(req[http::field::expect], "100-continue") && req.version() >= 11) {
      auto cont = std::make_shared<http::response<http::empty_body>>(http::status::continue_, 11);
      stream_.expires_after(kWriteTimeout);
      http::async_write(stream_, *cont,
                        [self = shared_from_this(), cont](beast::error_code wec, std::size_t) {
                          if (wec) return self->close();
                          self->read_body();
                        });
      return;
    }
    read_body();
  }

  void read_body() {
    // The body shares the header deadline's length, counted from now.
    stream_.expires_after(seconds(std::max(server_.config.header_timeout, 30.0)));
    http::async_read(stream_, buffer_, *parser_,
                     [self = shared_from_this()](beast::error_code ec, std::size_t) {
                       if (ec) return self->on_read_error(ec);
                       self->handle();
                     });
  }

  // One place maps every read error to a status, or to a closed connection.
  void on_read_error(beast::error_code ec) {
    if (ec == http::error::end_of_stream || ec == beast::error::timeout ||
        ec == net::error::eof || ec == net::error::connection_reset ||
        ec == net::error::operation_aborted || ec == http::error::partial_message) {
      return close();  // the client left or was too slow
    }
    keep_alive_ = false;
    request_id_ = new_request_id();
    if (ec == http::error::header_limit) {
      return respond_error(http::status::request_header_fields_too_large,
                           "request line and headers exceed " + std::to_string(kHeaderLimit) + " bytes");
    }
    if (ec == http::error::body_limit) {
      return respond_error(http::status::payload_too_large,
                           "request body exceeds " + std::to_string(server_.config.max_body) + " bytes");
    }
    return respond_error(http::status::bad_request, "malformed request: " + ec.message());
  }

  void handle() {
    request_ = parser_->release();
    parser_.reset();
    auto rid = request_["X-Request-Id"];
    request_id_ = acceptable_request_id(rid) ? std::string(rid) : new_request_id();
    keep_alive_ = request_.keep_alive() && !shutting_down_;
    head_ = request_.method() == http::verb::head;

    beast::string_view target = request_.target();
    // absolute-form (proxies): keep only the path and query
    if (target.starts_with("http://") || target.starts_with("https://")) {
      auto slash = target.find('/', target.find("//") + 2);
      target = slash == beast::string_view::npos ? beast::string_view("/") : target.substr(slash);
    }
    if (target.empty() || target.front() != '/') {
      keep_alive_ = false;
      return respond_error(http::status::bad_request, "request target must be a path starting with '/'");
    }
    auto hash = target.find('#');
    if (hash != beast::string_view::npos) target = target.substr(0, hash);
    auto qmark = target.find('?');
    path_ = percent_decode(std::string_view(target.data(), std::min(qmark, target.size())), false);
    query_ = qmark == beast::string_view::npos ? std::string{} : std::string(target.substr(qmark + 1));

    RouteMatch match = server_.router().match(std::string_view(request_.method_string().data(),
                                                               request_.method_string().size()),
                                              path_);
    if (match.result == RouteMatch::Result::not_found) {
      if (!server_.routes_ready()) {
        extra_retry_after_ = true;
        return respond_error(http::status::service_unavailable, "server is starting; retry later");
      }
      return respond_error(http::status::not_found, "no route for " + path_);
    }
    if (match.result == RouteMatch::Result::method_not_allowed) {
      extra_allow_ = match.allow;
      return respond_error(http::status::method_not_allowed,
                           std::string(request_.method_string()) + " is not allowed on " + path_ +
                               "; allowed: " + match.allow);
    }
    switch (match.builtin) {
      case Builtin::healthz:
        if (server_.draining) {
          return respond_json(http::status::service_unavailable, R"({"status": "shutting_down"})");
        }
        return respond_json(http::status::ok, R"({"status": "ok"})");
      case Builtin::readyz: {
        // The pool is up a moment before the app's router is installed: not ready until both.
        const Readiness r = server_.shutting_down
                                ? Readiness{Readiness::State::stopping, "the server is shutting down"}
                            : !server_.routes_ready() ? Readiness{Readiness::State::starting, "workers are starting"}
                                                      : server_.executor.readiness();
        if (r.ready()) return respond_json(http::status::ok, R"({"status": "ready"})");
        extra_retry_after_ = true;
        return respond_json(http::status::service_unavailable,
                            nlohmann::json{{"status", Readiness::name(r.state)}, {"reason", r.reason}}
                                .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace));
      }
      case Builtin::stats:
        return respond_json(http::status::ok, stats_json(server_.view()).dump());
      case Builtin::metrics:
        return respond(http::status::ok, "text/plain; version=0.0.4; charset=utf-8", metrics_text(server_.view()));
      case Builtin::index:
        return respond_json(http::status::ok, index_json(server_.view()).dump());
      case Builtin::dashboard:
        return send(http::status::ok, "text/html; charset=utf-8", std::string(dashboard_page()), &dashboard_headers());
      case Builtin::events:
        if (server_.shutting_down || shutting_down_) {
          keep_alive_ = false;
          return respond_error(http::status::service_unavailable, "server is shutting down");
        }
        if (head_) return respond(http::status::ok, "text/event-stream", "");
        // The stream takes the connection over; this session ends here.
        return server_.events.start(stream_.release_socket(), request_.version(), request_id_);
      case Builtin::none:
        break;
    }
    submit_job(std::move(match), target);
  }

  void submit_job(RouteMatch&& match, beast::string_view target) {
    route_index_ = match.route_index;
    Job job;
    job.route_index = match.route_index;
    const auto deadline = arrived_ + seconds(server_.config.request_timeout);
    job.deadline = deadline;
    job.request.method = std::string(request_.method_string());
    job.request.path = path_;
    job.request.query_string = std::move(query_);
    job.request.request_id = request_id_;
    job.request.headers.reserve(16);
    for (const auto& field : request_) {
      job.request.headers.push_back({std::string(field.name_string()), std::string(field.value())});
    }
    job.request.body = std::move(request_.body());
    job.request.path_params = std::move(match.params);
    job.request.target = std::string(target);
    job.request.http_version = request_.version() == 10 ? "HTTP/1.0" : "HTTP/1.1";
    job.request.remote_addr = remote_addr_;
    job.request.remote_port = remote_port_;
    job.request.server_addr = local_addr_;
    job.request.server_port = local_port_;
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
      case SubmitResult::queue_full:
        server_.stats.rejected_queue_full.fetch_add(1, std::memory_order_relaxed);
        extra_retry_after_ = true;
        return respond_error(http::status::service_unavailable,
                             "server is at capacity (" + std::to_string(server_.config.max_queue) +
                                 " requests queued); retry later");
      case SubmitResult::stopping:
        keep_alive_ = false;
        extra_retry_after_ = true;
        return respond_error(http::status::service_unavailable, "server is shutting down");
    }
  }

  void on_job_done(std::uint64_t token, HttpResponseData&& r) {
    if (token != job_token_ || !job_pending_) return;  // answered 504 already
    job_pending_ = false;
    job_timer_.cancel();
    // The one place a handler's response is checked before it reaches the wire.
    if (std::string why = response_violation(r); !why.empty()) {
      spdlog::error("request {}: the handler for {} {} returned a response that cannot be sent: {}",
                    request_id_, sv(request_.method_string()), route_path(), why);
      return respond_error(http::status::internal_server_error, "internal server error");
    }
    send(static_cast<http::status>(r.status), std::move(r.content_type), std::move(r.body), &r.headers);
  }

  std::string route_path() const {
    return route_index_ < server_.executor.routes().size() ? server_.executor.routes()[route_index_].path
                                                           : path_;
  }

  void on_job_deadline(std::uint64_t token) {
    if (token != job_token_ || !job_pending_) return;
    job_pending_ = false;
    server_.stats.deadline_exceeded.fetch_add(1, std::memory_order_relaxed);
    spdlog::warn("request {}: {} {} got no answer within {}; 504", request_id_, sv(request_.method_string()),
                 route_path(), fmt_seconds(server_.config.request_timeout));
    respond_error(http::status::gateway_timeout,
                  "handler did not answer within " + fmt_seconds(server_.config.request_timeout));
  }

  static std::string fmt_seconds(double s) {
    std::string out = std::to_string(s);
    out.erase(out.find_last_not_of('0') + 1);
    if (!out.empty() && out.back() == '.') out.pop_back();
    return out + " s";
  }

  void respond_error(http::status status, const std::string& message) {
    HttpResponseData r = make_error_response(static_cast<int>(status), message, request_id_);
    send(status, std::move(r.content_type), std::move(r.body), nullptr);
  }

  void respond_json(http::status status, std::string body) {
    send(status, "application/json", std::move(body), nullptr);
  }

  void respond(http::status status, std::string content_type, std::string body) {
    send(status, std::move(content_type), std::move(body), nullptr);
  }

  void send(http::status status, std::string content_type, std::string body,
            const std::vector<Header>* handler_headers) {
    const int code = static_cast<int>(status);
    if (server_.shutting_down || shutting_down_) keep_alive_ = false;
    response_ = {};
    response_.version(request_.version() == 10 ? 10 : 11);
    response_.result(status);
    response_.set(http::field::server, kServerName);
    response_.set(http::field::date, http_date());
    if (!content_type.empty()) response_.set(http::field::content_type, content_type);
    response_.set("X-Request-Id", request_id_);
    if (!extra_allow_.empty()) response_.set(http::field::allow, extra_allow_);
    if (extra_retry_after_) response_.set(http::field::retry_after, "1");
    std::optional<std::uint64_t> head_length;  // a HEAD answer's own Content-Length (WSGI apps send one)
    if (handler_headers) {
      for (const auto& h : *handler_headers) {
        auto field = http::string_to_field(h.name);
        if (head_ && field == http::field::content_length && body.empty() && !h.value.empty() &&
            h.value.size() < 19 && h.value.find_first_not_of("0123456789") == std::string::npos) {
          head_length = std::stoull(h.value);
        }
        if (field == http::field::content_length || field == http::field::transfer_encoding ||
            field == http::field::connection || field == http::field::keep_alive) {
          continue;  // framing is the server's
        }
        if (field == http::field::server || field == http::field::date ||
            field == http::field::content_type) {
          response_.set(h.name, h.value);
        } else {
          response_.insert(h.name, h.value);
        }
      }
    }
    const bool bodiless = code == 204 || code == 304 || (code >= 100 && code < 200);
    if (!bodiless) response_.body() = std::move(body);
    response_.keep_alive(keep_alive_);
    response_.prepare_payload();
    if (head_) response_.body().clear();  // Content-Length stays that of the GET body
    if (head_length && !bodiless) response_.content_length(*head_length);

    const auto latency = std::chrono::steady_clock::now() - arrived_;
    server_.stats.record_status(code);
    if (route_index_ != kNoRoute) {
      server_.stats.record_route(route_index_, code, latency);
    }
    if (server_.config.access_log) {
      spdlog::info("{} {} {} {} {:.3f}ms {}", sv(request_.method_string()), sv(request_.target()), code,
                   response_.body().size(),
                   std::chrono::duration<double, std::milli>(latency).count(), request_id_);
    }
    extra_allow_.clear();
    extra_retry_after_ = false;
    route_index_ = kNoRoute;
    do_write();
  }

  void do_write() {
    stream_.expires_after(kWriteTimeout);
    http::async_write(stream_, response_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      self->on_write(ec);
    });
  }

  void on_write(beast::error_code ec) {
    if (ec) return close();
    if (!keep_alive_) return close();
    wait_for_request();
  }

  void close() {
    job_timer_.cancel();
    beast::error_code ignored;
    stream_.socket().shutdown(tcp::socket::shutdown_send, ignored);
    stream_.close();
  }

  static constexpr std::size_t kNoRoute = static_cast<std::size_t>(-1);

  beast::tcp_stream stream_;
  HttpServer::Impl& server_;
  beast::flat_buffer buffer_;
  std::optional<http::request_parser<http::string_body>> parser_;
  http::request<http::string_body> request_;
  http::response<http::string_body> response_;
  net::steady_timer job_timer_;
  std::chrono::steady_clock::time_point arrived_ = std::chrono::steady_clock::now();
  std::string request_id_;
  std::string remote_addr_;
  std::uint16_t remote_port_ = 0;
  std::string local_addr_;
  std::uint16_t local_port_ = 0;
  std::string path_;
  std::string query_;
  std::string extra_allow_;
  bool extra_retry_after_ = false;
  std::size_t route_index_ = kNoRoute;
  std::uint64_t job_token_ = 0;
  bool job_pending_ = false;
  bool keep_alive_ = true;
  bool head_ = false;
  bool idle_ = false;
  bool first_request_ = true;
  bool shutting_down_ = false;
  const int native_fd_;
};

void HttpServer::Impl::do_accept() {
  acceptor.async_accept(net::make_strand(ioc), [this](beast::error_code ec, tcp::socket socket) {
    if (ec) {
      if (ec == net::error::operation_aborted || !acceptor.is_open()) return;
      // Out of file descriptors and the like: log, back off briefly, keep serving.
      spdlog::warn("accept failed: {}", ec.message());
      auto timer = std::make_shared<net::steady_timer>(ioc, std::chrono::milliseconds(50));
      timer->async_wait([this, timer](beast::error_code) { do_accept(); });
      return;
    }
    beast::error_code ignored;
    socket.set_option(tcp::no_delay(true), ignored);
    std::make_shared<Session>(std::move(socket), *this)->start();
    do_accept();
  });
}

// First SIGTERM/SIGINT: /readyz says 503 at once; the listener stays open for
// --shutdown-delay (a load balancer sees the replica leave before connections
// are refused), then the drain begins. A second signal ends the drain at once.
void HttpServer::Impl::on_signal(int signo) {
  const char* name = signo == SIGTERM ? "SIGTERM" : "SIGINT";
  if (++signals_received > 1) {
    // The operator wants it gone: no drain, no finalization. Sockets close with
    // the process; the zygote dies with it and idle workers leave on end of stream.
    spdlog::warn("received {} again: exiting now, without waiting for in-flight requests", name);
    spdlog::shutdown();
    std::fflush(nullptr);
    std::_Exit(1);
  }
  shutting_down = true;
  spdlog::info("received {}, shutting down (shutdown delay {} s, graceful timeout {} s; send it again "
               "to stop at once)",
               name, config.shutdown_delay, config.graceful_timeout);
  signals.async_wait([this](beast::error_code ec, int again) {
    if (!ec) on_signal(again);
  });
  if (config.shutdown_delay <= 0 || !routes_ready()) return begin_drain();
  shutdown_delay_timer.expires_after(seconds(config.shutdown_delay));
  shutdown_delay_timer.async_wait([this](beast::error_code ec) {
    if (!ec) begin_drain();
  });
}

void HttpServer::Impl::begin_drain() {
  if (draining.exchange(true)) return;
  beast::error_code ignored;
  acceptor.close(ignored);
  events.shutdown();
  {
    std::lock_guard lock(sessions_mutex);
    for (Session* s : sessions) {
      std::weak_ptr<Session> weak = s->weak_from_this();
      net::post(s->executor(), [weak] {
        if (auto live = weak.lock()) live->on_shutdown();
      });
    }
  }
  shutdown_requested.set_value();
}

HttpServer::HttpServer(const ServerConfig& config, Executor& executor)
    : impl_(std::make_unique<Impl>(config, executor)) {
  auto& a = impl_->acceptor;
  const std::string where = config.host + ":" + std::to_string(config.port);
  beast::error_code ec;
  const auto address = net::ip::make_address(config.host, ec);
  if (ec) throw ListenError("cannot listen on " + where + ": '" + config.host + "' is not an IP address");
  tcp::endpoint endpoint(address, config.port);
  a.open(endpoint.protocol(), ec);
  if (!ec) a.set_option(net::socket_base::reuse_address(true), ec);
  if (!ec) a.bind(endpoint, ec);
  if (!ec) a.listen(net::socket_base::max_listen_connections, ec);
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
}

HttpServer::~HttpServer() = default;

unsigned short HttpServer::port() const { return impl_->acceptor.local_endpoint().port(); }

HttpServer::Outcome HttpServer::run() {
  Impl& s = *impl_;
  s.signals.async_wait([&s](beast::error_code ec, int signo) {
    if (!ec) s.on_signal(signo);
  });
  s.do_accept();
  // Completions of Python jobs arrive by post(): keep run() going even when
  // no socket operation is pending (during shutdown, say).
  auto keep_running = net::make_work_guard(s.ioc);
  std::vector<std::thread> io_threads;
  for (int i = 0; i < s.config.io_threads; ++i) io_threads.emplace_back([&s] { s.ioc.run(); });
  auto stop_io = [&] {
    net::post(s.ioc, [&s] {
      beast::error_code ignored;
      s.acceptor.close(ignored);
    });
    keep_running.reset();
    s.ioc.stop();
    for (auto& t : io_threads) t.join();
  };

  // The workers start while the listener already answers: /healthz 200,
  // /readyz 503 "starting", Python routes 503 until the workers are up.
  spdlog::info("listening on http://{}:{}; starting {} {} workers for {}", s.config.host, port(),
               s.config.workers, s.config.strategy, s.config.app);
  try {
    const auto t0 = std::chrono::steady_clock::now();
    s.executor.start();
    const ExecutorInfo info = s.executor.info();
    spdlog::info("{} workers ready in {:.0f} ms ({} build, Python {}, GIL {})", info.workers,
                 std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count(),
                 info.build, info.python_version, info.gil_enabled ? "enabled" : "disabled");
    s.app_router_holder = std::make_unique<Router>(s.executor.routes(), s.config.dashboard);
  } catch (...) {
    stop_io();
    throw;
  }
  s.stats.init_routes(s.executor.routes().size());
  s.app_router.store(s.app_router_holder.get(), std::memory_order_release);
  spdlog::info("serving {} on http://{}:{} (strategy {}, {} workers, {} I/O threads)", s.config.app,
               s.config.host, port(), s.config.strategy, s.config.workers, s.config.io_threads);

  s.shutdown_requested.get_future().wait();
  const auto deadline = std::chrono::steady_clock::now() + seconds(s.config.graceful_timeout);
  auto sessions_left = [&s] {
    std::lock_guard lock(s.sessions_mutex);
    return s.sessions.size() + s.events.open();
  };
  while (sessions_left() > 0 && std::chrono::steady_clock::now() < deadline) {
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  const bool clean = s.executor.stop(deadline);
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
