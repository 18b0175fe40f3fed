#include "pyworkers/processes/asgi_child.hpp"

#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <charconv>
#include <cerrno>
#include <deque>
#include <cstring>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <unordered_map>

#include "pyworkers/apps/asgi_app.hpp"
#include "pyworkers/apps/python_app.hpp"
#include "pyworkers/embedding/quiet_thread.hpp"
#include "pyworkers/processes/frames.hpp"
#include "server/model/body_stream.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

namespace {

using namespace std::chrono_literals;
using frames::Kind;

constexpr auto kSuperviseEvery = 50ms;

// Set on the event loop's thread while it runs (Hooks::entered to leaving): what it posts
// there may wait for the loop's next flush (Hooks::idle).
thread_local bool on_loop_thread = false;

class AsgiChild {
 public:
  AsgiChild(int worker, int sock, PythonApp& app, const ServerConfig& config, int wake_fd,
            const volatile std::sig_atomic_t* sigterm)
      : worker_(worker), sock_(sock), wake_fd_(wake_fd), sigterm_(sigterm), app_(app), config_(config),
        outbox_(std::make_shared<frames::Outbox>(sock)), reader_(sock, limits(config)) {}

  int run();

 private:
  // The loop's view of the server's request: its owner, so that the answer goes
  // back as frames and "the client left" comes from the server.
  struct Remote final : JobOwner {
    Remote(AsgiChild& c, std::uint64_t i) : child(c), id(i) {}
    void job_done(std::uint64_t, HttpResponseData&& response) override { child.answer(id, std::move(response)); }
    bool client_gone() const override { return gone.load(); }
    AsgiChild& child;
    const std::uint64_t id;
    std::atomic<bool> gone{false};
  };
  // An answer whose body streams: its consumer end, read here and sent one
  // chunk frame per asgi_room.
  struct Stream {
    std::shared_ptr<BodyStream> consumer;
    bool credit = true;  // the server may take the next chunk
  };
  // A WebSocket: this side plays its connection towards the loop, and forwards
  // what the loop asks for as frames; the app's messages while fewer than
  // kWsWindow / 2 of their bytes wait for the server's asgi_room (frames.hpp).
  struct Socket {
    std::shared_ptr<WebSocketChannel> channel;
    std::deque<WebSocketChannel::Message> out;  // taken from the channel, not sent yet
    std::optional<std::pair<int, std::string>> close;  // the app's, after `out`
    std::size_t unacknowledged = 0;  // bytes sent that no asgi_room has counted yet
  };

  static frames::Limits limits(const ServerConfig& config) {
    frames::Limits out;
    out.max_body = config.http.max_body;
    return out;
  }
  bool start_loop();
  void wait_for_end();
  bool read_frames();
  bool on_frame(frames::Frame& frame);
  void server_gone();
  void submit(std::uint64_t id, std::chrono::microseconds left, std::size_t route, HttpRequestData&& request,
              bool websocket = false);
  void pump_socket(std::uint64_t id);
  std::shared_ptr<WebSocketChannel> channel(std::uint64_t id);
  void answer(std::uint64_t id, HttpResponseData&& response);
  void pump(std::uint64_t id);
  bool room(std::uint64_t id, std::string_view count);
  void gone(std::uint64_t id);
  void released(const Job& job);
  void begin_stop();
  void supervise();
  void interrupt_loop();
  void wake() {
    const std::uint64_t one = 1;
    (void)!::write(wake_fd_, &one, sizeof one);
  }

  const int worker_;
  const int sock_;
  const int wake_fd_;
  const volatile std::sig_atomic_t* const sigterm_;
  PythonApp& app_;
  const ServerConfig& config_;
  std::shared_ptr<frames::Outbox> outbox_;
  std::unique_ptr<AsgiLoop> loop_;
  frames::FrameReader reader_;  // the loop's thread only (read_frames), as is open_
  bool open_ = true;            // the server's end has not closed

  std::mutex mutex_;  // guards remotes_, streams_ and sockets_
  std::unordered_map<std::uint64_t, std::shared_ptr<Remote>> remotes_;
  std::unordered_map<std::uint64_t, Stream> streams_;
  std::unordered_map<std::uint64_t, Socket> sockets_;

  std::atomic<bool> stopping_{false};
  std::atomic<bool> stopped_{false};  // the loop has ended
  std::mutex stopper_mutex_;  // begin_stop() (the main thread's or the loop's) sets stopper_ under it
  std::thread stopper_;
  std::atomic<bool> supervising_{true};
  std::thread supervisor_;

  // The loop's thread, for interrupts: set while it exists.
  std::mutex target_mutex_;  // taken only while detached
  std::atomic<bool> interrupting_{false};
  unsigned long loop_thread_ = 0;
  bool loop_alive_ = false;
};

int AsgiChild::run() {
  if (!start_loop()) {
    outbox_->close();
    return 1;
  }
  outbox_->post(Kind::hello, std::to_string(getpid()));
  supervisor_ = quiet_thread([this] { supervise(); });
  wait_for_end();
  {
    std::lock_guard lock(stopper_mutex_);  // the loop's thread may still be assigning it
    if (stopper_.joinable()) stopper_.join();
  }
  supervising_ = false;
  supervisor_.join();
  outbox_->post(Kind::asgi_stopped, frames::tag(0));
  outbox_->close();
  return 0;
}

bool AsgiChild::start_loop() {
  AsgiLoop::Hooks hooks;
  hooks.entered = [this] {
    on_loop_thread = true;
    std::lock_guard lock(target_mutex_);
    loop_thread_ = PyThread_get_thread_ident();
    loop_alive_ = true;
  };
  hooks.leaving = [this] {
    on_loop_thread = false;
    outbox_->flush();
    std::lock_guard lock(target_mutex_);
    loop_alive_ = false;
  };
  hooks.idle = [this] { outbox_->flush(); };
  hooks.released = [this](const Job& job) { released(job); };
  hooks.read = [this] { return read_frames(); };
  hooks.read_fd = sock_;
  hooks.send_file = [this](const Job& job, HttpResponseData&& head, Fd&& fd, std::uint64_t length) {
    outbox_->post_with_fd(Kind::asgi_file, frames::tag(job.token, frames::encode_file_meta(head, 0, length)),
                          std::move(fd));
    return !job.client_gone();
  };
  loop_ = std::make_unique<AsgiLoop>(PyInterpreterState_Main(), app_, config_, std::move(hooks));
  try {
    // Its thread takes no signal either: SIGTERM is for the main thread's wait.
    SignalsBlocked blocked;
    loop_->start();
    return true;
  } catch (const std::exception& e) {
    spdlog::error("worker {}: {}", worker_, e.what());
    outbox_->post(Kind::refused, e.what());
    return false;
  }
}

// The main thread, until the loop has ended: SIGTERM begins the stop. The
// server's frames are the loop's to read (read_frames).
void AsgiChild::wait_for_end() {
  while (!stopped_) {
    if (*sigterm_) begin_stop();
    pollfd fd{wake_fd_, POLLIN, 0};
    if (poll(&fd, 1, -1) < 0 && errno != EINTR) break;
    if (fd.revents != 0) {
      std::uint64_t n;
      (void)!::read(wake_fd_, &n, sizeof n);
    }
  }
}

// On the loop's thread (Hooks::read), no Python lock held, whenever the socket is
// readable: the frames the server sent since the last look, handled in order; a
// request goes to the loop (submit), which begins it as soon as this returns.
// False once the server's end is gone (or broke the protocol): the loop stops
// watching the socket, and stops.
bool AsgiChild::read_frames() {
  if (!open_) return false;
  const frames::FrameReader::Drained d = reader_.drain([this](frames::Frame& f) { return on_frame(f); });
  if (d.broken.empty() && d.got.ok()) return true;
  if (!d.broken.empty()) {
    spdlog::error("worker {}: the server sent {}; stopping", worker_, d.broken);
  } else if (d.got.status != frames::ReadStatus::closed) {
    spdlog::error("worker {}: the server's socket failed ({}); stopping", worker_, d.got.describe());
  }
  server_gone();
  return false;
}

// The server is gone (or broke the protocol): nobody takes an answer now.
void AsgiChild::server_gone() {
  open_ = false;
  std::vector<std::shared_ptr<BodyStream>> cancelled;
  std::vector<std::shared_ptr<WebSocketChannel>> broken;
  {
    std::lock_guard lock(mutex_);
    for (auto& [id, r] : remotes_) r->gone = true;
    for (auto& [id, s] : streams_) cancelled.push_back(s.consumer);
    streams_.clear();
    for (auto& [id, w] : sockets_) broken.push_back(w.channel);
  }
  for (auto& c : cancelled) c->cancel();
  for (auto& b : broken) b->ended(WebSocketChannel::kAbnormal, "");
  begin_stop();
}

// False: the frame breaks the protocol.
bool AsgiChild::on_frame(frames::Frame& frame) {
  std::string_view meta = frame.meta;
  std::uint64_t id = 0;
  if (frame.kind == Kind::asgi_request || frame.kind == Kind::asgi_ws_connect) {
    std::chrono::microseconds left{};
    std::size_t route = 0;
    HttpRequestData request;
    if (!frames::decode_asgi_request(meta, id, left, route, request)) return false;
    request.body = std::move(frame.body);
    submit(id, left, route, std::move(request), frame.kind == Kind::asgi_ws_connect);
    return true;
  }
  if (!frames::untag(meta, id)) return false;
  switch (frame.kind) {
    case Kind::asgi_room: return room(id, meta);
    case Kind::asgi_gone: gone(id); return true;
    case Kind::asgi_stop: begin_stop(); return true;
    case Kind::asgi_ws_message: {
      if (meta != "t" && meta != "b") return false;
      if (auto c = channel(id)) c->received({meta == "t", std::move(frame.body)});
      return true;
    }
    case Kind::asgi_ws_closed: {
      int code = 0;
      std::string reason;
      if (!frames::decode_ws_close(meta, code, reason)) return false;
      if (auto c = channel(id)) c->ended(code, std::move(reason));
      return true;
    }
    default: return false;
  }
}

void AsgiChild::submit(std::uint64_t id, std::chrono::microseconds left, std::size_t route,
                       HttpRequestData&& request, bool websocket) {
  if (stopping_) {
    // Between the server's last request and its stop: it is answered, not lost.
    HttpResponseData response = make_error_response(503, "the worker is stopping; retry", request.request_id);
    outbox_->post(Kind::asgi_response, frames::tag(id, frames::encode_response_meta(response)),
                  std::move(response.body));
    outbox_->post(Kind::asgi_done, frames::tag(id));
    return;
  }
  auto remote = std::make_shared<Remote>(*this, id);
  {
    std::lock_guard lock(mutex_);
    remotes_[id] = remote;
  }
  Job job;
  job.request = std::move(request);
  job.route_index = route;
  job.queued_at = Clock::now();
  job.deadline = job.queued_at + left;
  job.owner = remote;
  job.token = id;
  if (websocket) {
    job.websocket = std::make_shared<WebSocketChannel>();
    {
      std::lock_guard lock(mutex_);
      sockets_[id].channel = job.websocket;
    }
    pump_socket(id);  // from now on the loop's calls wake it
  }
  loop_->submit(job);
}

std::shared_ptr<WebSocketChannel> AsgiChild::channel(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = sockets_.find(id);
  return it == sockets_.end() ? nullptr : it->second.channel;
}

// Forwards what the loop asked for on socket `id`: reads at once, messages while
// the window allows, the close after the last message. From any thread; the channel
// calls it again (from the loop's thread) when the loop asks for more.
void AsgiChild::pump_socket(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = sockets_.find(id);
  if (it == sockets_.end()) return;
  Socket& w = it->second;
  // The channel's messages are taken only once those taken before have all gone
  // out (so that its bound holds the app back); when they have, it is looked at
  // again, until it has none: an app whose send waits for room gets it.
  for (;;) {
    const bool with_messages = w.out.empty();
    WebSocketChannel::Work work = w.channel->take(with_messages, [this, id] { pump_socket(id); });
    if (work.reads > 0) outbox_->post(Kind::asgi_ws_more, frames::tag(id, std::to_string(work.reads)));
    const bool took = !work.messages.empty();
    for (auto& m : work.messages) w.out.push_back(std::move(m));
    if (work.close && !w.close) w.close = std::move(work.close);
    while (!w.out.empty() && w.unacknowledged < frames::kWsWindow / 2) {
      WebSocketChannel::Message& m = w.out.front();
      w.unacknowledged += m.data.size();
      outbox_->post(Kind::asgi_ws_send, frames::tag(id, m.text ? "t" : "b"), std::move(m.data));
      w.out.pop_front();
    }
    if ((with_messages && !took) || !w.out.empty()) break;
  }
  if (w.out.empty() && w.close) {
    outbox_->post(Kind::asgi_ws_close, frames::tag(id, frames::encode_ws_close(w.close->first, w.close->second)));
    w.close.reset();
  }
}

// From the loop's thread (no Python lock held): a whole answer, or a head whose
// body follows through its stream.
void AsgiChild::answer(std::uint64_t id, HttpResponseData&& response) {
  std::shared_ptr<BodyStream> consumer = std::move(response.stream);
  response.stream.reset();
  const Kind kind = consumer ? Kind::asgi_head : Kind::asgi_response;
  outbox_->post(kind, frames::tag(id, frames::encode_response_meta(response)), std::move(response.body));
  if (!consumer) return;
  {
    std::lock_guard lock(mutex_);
    streams_[id] = Stream{std::move(consumer)};
  }
  pump(id);
}

// Sends what the stream has queued as one chunk, when the server has room for
// it, and the end once the body is over. From any thread; `ready` calls it
// again from the loop's thread when there is something new.
void AsgiChild::pump(std::uint64_t id) {
  std::lock_guard lock(mutex_);
  auto it = streams_.find(id);
  if (it == streams_.end() || !it->second.credit) return;
  BodyStream::Taken taken = it->second.consumer->take([this, id] { pump(id); });
  std::string data;
  for (std::string& c : taken.chunks) data += c;
  if (!data.empty()) {
    outbox_->post(Kind::asgi_chunk, frames::tag(id), std::move(data));
    it->second.credit = false;
  }
  if (taken.state == BodyStream::State::more) return;
  if (taken.state != BodyStream::State::cancelled) {
    outbox_->post(Kind::asgi_end, frames::tag(id, taken.state == BodyStream::State::finished ? "1" : "0"));
  }
  streams_.erase(it);
}

// asgi_room: a streamed body's last chunk was taken, or `count` bytes of a
// WebSocket's messages were. False: a WebSocket's count is not a number.
bool AsgiChild::room(std::uint64_t id, std::string_view count) {
  bool socket = false;
  {
    std::lock_guard lock(mutex_);
    if (auto w = sockets_.find(id); w != sockets_.end()) {
      std::size_t taken = 0;
      const auto [end, ec] = std::from_chars(count.data(), count.data() + count.size(), taken);
      if (ec != std::errc() || end != count.data() + count.size()) return false;
      w->second.unacknowledged -= std::min(taken, w->second.unacknowledged);
      socket = true;
    } else {
      auto it = streams_.find(id);
      if (it == streams_.end()) return true;
      it->second.credit = true;
    }
  }
  if (socket) {
    pump_socket(id);
  } else {
    pump(id);
  }
  return true;
}

// The client left: the loop hears it from its supervise() (client_gone), and a
// body that streams stops at the app's next send.
void AsgiChild::gone(std::uint64_t id) {
  std::shared_ptr<BodyStream> consumer;
  {
    std::lock_guard lock(mutex_);
    if (auto it = remotes_.find(id); it != remotes_.end()) it->second->gone = true;
    if (auto it = streams_.find(id); it != streams_.end()) {
      consumer = std::move(it->second.consumer);
      streams_.erase(it);
    }
  }
  if (consumer) consumer->cancel();  // outside the lock: it may call pump()
}

// A request has left the loop: the server may give it another.
void AsgiChild::released(const Job& job) {
  {
    std::lock_guard lock(mutex_);
    remotes_.erase(job.token);
    if (auto w = sockets_.find(job.token); w != sockets_.end()) {
      // What the app sent last (and its close) goes out before the done.
      WebSocketChannel::Work last = w->second.channel->take(true, nullptr);
      for (auto& m : last.messages) w->second.out.push_back(std::move(m));
      if (last.close && !w->second.close) w->second.close = std::move(last.close);
      for (auto& m : w->second.out) {
        outbox_->post(Kind::asgi_ws_send, frames::tag(job.token, m.text ? "t" : "b"), std::move(m.data));
      }
      if (w->second.close) {
        outbox_->post(Kind::asgi_ws_close,
                      frames::tag(job.token, frames::encode_ws_close(w->second.close->first, w->second.close->second)));
      }
      sockets_.erase(w);
    }
  }
  // On the loop's thread it goes with the next frame or before the loop waits, whichever
  // comes first (Hooks::idle): most often with the next answer, in one write.
  if (on_loop_thread) {
    outbox_->post_later(Kind::asgi_done, frames::tag(job.token));
  } else {
    outbox_->post(Kind::asgi_done, frames::tag(job.token));
  }
}

// Once: the loop takes no more requests, finishes those it holds and ends.
void AsgiChild::begin_stop() {
  if (stopping_.exchange(true)) return;
  std::lock_guard lock(stopper_mutex_);
  stopper_ = quiet_thread([this] {
    loop_->stop();
    stopped_ = true;
    wake();
  });
}

void AsgiChild::supervise() {
  while (supervising_) {
    std::this_thread::sleep_for(kSuperviseEvery);
    const auto now = Clock::now();
    if (loop_->supervise(now)) interrupt_loop();
    if (loop_->stuck(now)) {
      spdlog::critical("worker {} (pid {}): the ASGI event loop is stuck past a request's deadline after every "
                       "interrupt (a handler blocked in C code, or one that swallows HandlerTimeout); the "
                       "process exits, and its requests are answered 502", worker_, getpid());
      spdlog::default_logger()->flush();
      _exit(3);
    }
  }
}

// HandlerTimeout in the loop's thread, as the in-process strategies raise it:
// from a helper thread, since attaching waits for the GIL that a loop blocked
// in C holds (the supervisor must stay free to see the loop stuck). One at a time.
void AsgiChild::interrupt_loop() {
  if (interrupting_.exchange(true)) return;
  spdlog::warn("worker {}: the ASGI event loop is still busy past a request's deadline; interrupting it",
               worker_);
  quiet_thread([this] {
    {
      std::lock_guard lock(target_mutex_);
      if (loop_alive_) {
        PyThreadState* ts = PyThreadState_New(PyInterpreterState_Main());
        PyEval_RestoreThread(ts);
        // Not between tasks: there it would lose the requests the loop had just taken.
        AsgiLoop::interrupt_task(loop_thread_, app_.handler_timeout_type());
        PyThreadState_Clear(ts);
        PyThreadState_DeleteCurrent();
      }
    }
    interrupting_ = false;
  }).detach();
}

}  // namespace

int serve_asgi_socket(int worker, int sock, PythonApp& app, const ServerConfig& config, int wake_fd,
                      const volatile std::sig_atomic_t* sigterm) {
  // Never deleted: an interrupting helper may still wait for the GIL when the
  // process leaves (with _exit, right after this returns).
  auto* child = new AsgiChild(worker, sock, app, config, wake_fd, sigterm);
  return child->run();
}

}  // namespace gilgamesh
