#include "server/observation/events.hpp"

#include "server/model/response.hpp"

#include <boost/asio.hpp>
#include <boost/beast/core.hpp>
#include <boost/beast/http.hpp>
#include <spdlog/spdlog.h>

#include <array>
#include <chrono>
#include <ctime>
#include <memory>

namespace gilgamesh {

namespace net = boost::asio;
namespace beast = boost::beast;
namespace http = beast::http;
using Socket = net::generic::stream_protocol::socket;  // TCP, or a UNIX socket (--uds)

namespace {

constexpr auto kInterval = std::chrono::seconds(1);
constexpr auto kWriteTimeout = std::chrono::seconds(10);  // a client that stops reading is dropped
constexpr const char* kFirstEvent = "retry: 3000\n\n";
constexpr const char* kShutdownEvent = "event: shutdown\ndata: {}\n\n";

}  // namespace

// One open stream. Every handler runs on the socket's executor (a strand, or the one
// I/O thread), so its members need no lock.
class EventStream : public std::enable_shared_from_this<EventStream> {
 public:
  EventStream(Socket&& socket, EventStreams& owner, unsigned http_version, std::string request_id,
              EventStreams::AccessLine access_line)
      : stream_(std::move(socket)), timer_(stream_.get_executor()), owner_(owner), chunked_(http_version >= 11),
        request_id_(std::move(request_id)), access_line_(std::move(access_line)), started_(std::chrono::steady_clock::now()) {
    head_.version(http_version >= 11 ? 11 : 10);
    head_.result(http::status::ok);
    if (response_defaults().server_header) head_.set(http::field::server, "gilgamesh/" GILGAMESH_VERSION);
    head_.set(http::field::date, imf_date(std::time(nullptr)));
    for (const Header& h : response_defaults().headers) head_.insert(h.name, h.value);
    head_.set(http::field::content_type, "text/event-stream");
    head_.set(http::field::cache_control, "no-store");
    head_.set("X-Accel-Buffering", "no");  // nginx: pass each event on at once
    head_.set("X-Request-Id", request_id_);
    head_.keep_alive(false);  // the stream is the last thing on this connection
    if (chunked_) head_.chunked(true);
    owner_.stats_.connections_open.fetch_add(1, std::memory_order_relaxed);
    owner_.stats_.event_streams_open.fetch_add(1, std::memory_order_relaxed);
  }

  ~EventStream() {
    owner_.stats_.event_streams_open.fetch_sub(1, std::memory_order_relaxed);
    owner_.stats_.connections_open.fetch_sub(1, std::memory_order_relaxed);
    if (access_line_) spdlog::info("{}", access_line_(std::chrono::steady_clock::now() - started_, events_));
    owner_.remove(this);
  }

  void start() {
    net::dispatch(stream_.get_executor(), [self = shared_from_this()] { self->write_head(); });
  }

  void stop() {
    net::post(stream_.get_executor(), [weak = weak_from_this()] {
      if (auto self = weak.lock()) self->finish();
    });
  }

 private:
  void write_head() {
    stream_.expires_after(kWriteTimeout);
    http::async_write_header(stream_, serializer_, [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->close();
      self->watch_client();
      self->next_tick_ = std::chrono::steady_clock::now();
      self->send(kFirstEvent + self->event_text());
      self->schedule_tick();
    });
  }

  std::string event_text() { return "data: " + owner_.snapshot_() + "\n\n"; }

  // The client sends nothing on an event stream: any read that completes
  // means it closed the connection (or broke the protocol). Read on the
  // socket itself, so that the stream's write timeout does not apply.
  void watch_client() {
    stream_.socket().async_read_some(net::buffer(discard_), [self = shared_from_this()](beast::error_code ec, std::size_t) {
      if (ec) return self->close();
      self->watch_client();
    });
  }

  void schedule_tick() {
    next_tick_ += kInterval;
    const auto now = std::chrono::steady_clock::now();
    if (next_tick_ < now) next_tick_ = now + kInterval;  // fell behind (a stalled thread): no burst
    timer_.expires_at(next_tick_);
    timer_.async_wait([self = shared_from_this()](beast::error_code ec) {
      if (ec || self->closed_ || self->ending_) return;
      if (!self->writing_) self->send(self->event_text());  // else: a slow reader; skip this second
      self->schedule_tick();
    });
  }

  void send(std::string text) {
    pending_ = std::move(text);
    writing_ = true;
    ++events_;
    stream_.expires_after(kWriteTimeout);
    auto done = [self = shared_from_this()](beast::error_code ec, std::size_t) { self->on_written(ec); };
    if (chunked_) {
      net::async_write(stream_, http::make_chunk(net::buffer(pending_)), std::move(done));
    } else {
      net::async_write(stream_, net::buffer(pending_), std::move(done));
    }
  }

  void on_written(beast::error_code ec) {
    writing_ = false;
    if (ec) return close();
    if (ending_) finish();
  }

  // Shutdown: the last event and (chunked) the last chunk, then close. Waits
  // for an event being written to finish first.
  void finish() {
    ending_ = true;
    timer_.cancel();
    if (closed_ || writing_ || finished_) return;
    finished_ = true;
    if (!serializer_.is_header_done()) return close();  // still writing the head: nothing to end
    pending_ = kShutdownEvent;
    stream_.expires_after(kWriteTimeout);
    auto done = [self = shared_from_this()](beast::error_code, std::size_t) { self->close(); };
    if (chunked_) {
      net::async_write(stream_, beast::buffers_cat(http::make_chunk(net::buffer(pending_)), http::make_chunk_last()),
                       std::move(done));
    } else {
      net::async_write(stream_, net::buffer(pending_), std::move(done));
    }
  }

  void close() {
    if (closed_) return;
    closed_ = true;
    timer_.cancel();
    beast::error_code ignored;
    stream_.socket().shutdown(Socket::shutdown_both, ignored);
    stream_.close();
  }

  beast::basic_stream<net::generic::stream_protocol, net::any_io_executor, beast::unlimited_rate_policy> stream_;
  net::steady_timer timer_;
  EventStreams& owner_;
  http::response<http::empty_body> head_;
  http::response_serializer<http::empty_body> serializer_{head_};
  std::array<char, 512> discard_{};
  std::string pending_;  // the event being written
  const bool chunked_;
  const std::string request_id_;
  const EventStreams::AccessLine access_line_;
  const std::chrono::steady_clock::time_point started_;
  std::chrono::steady_clock::time_point next_tick_;
  std::uint64_t events_ = 0;
  bool writing_ = false;
  bool ending_ = false;
  bool finished_ = false;
  bool closed_ = false;
};

EventStreams::EventStreams(ServerStats& stats, std::function<std::string()> snapshot)
    : stats_(stats), snapshot_(std::move(snapshot)) {}

void EventStreams::start(Socket socket, unsigned http_version, std::string request_id, AccessLine access_line) {
  std::shared_ptr<EventStream> stream;
  {
    std::lock_guard lock(mutex_);
    if (stopped_) {
      beast::error_code ignored;
      socket.shutdown(Socket::shutdown_both, ignored);
      socket.close(ignored);
      return;
    }
    stream = std::make_shared<EventStream>(std::move(socket), *this, http_version, std::move(request_id),
                                           std::move(access_line));
    streams_.insert(stream.get());
  }
  stats_.record_status(200);
  stream->start();
}

void EventStreams::shutdown() {
  std::lock_guard lock(mutex_);
  stopped_ = true;
  for (EventStream* s : streams_) s->stop();
}

std::size_t EventStreams::open() const {
  std::lock_guard lock(mutex_);
  return streams_.size();
}

void EventStreams::remove(EventStream* stream) {
  std::lock_guard lock(mutex_);
  streams_.erase(stream);
}

}  // namespace gilgamesh
