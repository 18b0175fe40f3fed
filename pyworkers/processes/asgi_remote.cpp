// `processes` serving an ASGI app: the server's side of one worker process
// whose event loop holds many requests at once (asgi_child.hpp is the other
// side; frames.hpp, "the ASGI socket", the wire between them).
//
// The worker pulls its jobs from the pool's queue as an in-process loop does,
// but on the thread that rings its doorbell (feed(): the I/O thread that pushed
// the job, or the reader once a request is done): each job gets an id, joins
// `held_` and goes out as an asgi_request frame, written by that thread when
// the socket takes it at once (else by the Outbox's thread). No thread of the
// pool stands between the connection and the process. The reader is the
// server's I/O threads (a Reactor watch: whichever finds the socket readable
// reads what it holds, and the answers it completes go to connections on that
// same thread without waking another), or a thread of the worker's own when
// the pool has no reactor and once end() begins. It completes jobs as
// their answers come back; a streamed body goes into a BodyStream with offer()
// (never blocking the reader, which serves every request of the process), and
// each chunk is acknowledged with asgi_room once the client's buffer has room,
// which is when the worker sends the next. A client that leaves is told to the
// worker (asgi_gone) by supervise() or by the stream. --worker-connections
// bounds the requests on the loop (the room feed() pulls for); the pool's
// queue and its 503 come after. Deadlines: the connection answers 504 itself, the worker's
// loop cancels the request's task, and a loop that stays stuck ends its process
// (asgi_child.cpp): the reader then answers what it held with 502, and the
// pool starts a new process. A WebSocket's upgrade request goes out as
// asgi_ws_connect; its socket stays here (the connection's), and its channel's
// traffic travels as asgi_ws_* frames: the loop's sends (acknowledged in bulk
// with asgi_room, frames.hpp's kWsWindow), its reads and its close one way, the
// client's messages and the socket's one end the other.
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <charconv>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <unordered_map>

#include "pyworkers/pool/worker.hpp"
#include "pyworkers/processes/frames.hpp"
#include "pyworkers/processes/process_start.hpp"
#include "pyworkers/processes/zygote_client.hpp"
#include "server/model/body_stream.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

namespace {

using namespace std::chrono_literals;
using frames::Kind;

constexpr auto kStartTimeout = 60s;         // the app's lifespan startup runs before `hello`
constexpr auto kClientCheckEvery = 250ms;
constexpr auto kExitStatusWait = 2s;
constexpr auto kLongestWait = std::chrono::hours(24 * 365);  // "no deadline", as a duration

class AsgiProcessWorker final : public Worker {
 public:
  AsgiProcessWorker(ZygoteClient& zygote, int slot, const ServerConfig& config, Reactor* reactor)
      : zygote_(zygote),
        slot_(slot),
        limit_(static_cast<std::size_t>(std::max(1, config.pool.worker_connections))),
        stop_wait_(std::chrono::duration_cast<std::chrono::milliseconds>(seconds_setting(config.http.graceful_timeout) + 1s)),
        reactor_(reactor) {}
  ~AsgiProcessWorker() override { end(Clock::now()); }

  std::vector<RouteInfo> start() override {
    StartedProcess started = start_worker_process(zygote_, slot_, kStartTimeout);
    for (std::size_t i = 1; i < started.fds.size(); ++i) ::close(started.fds[i]);
    std::lock_guard lock(mutex_);
    fd_ = started.fds[0];
    pid_ = started.pid;
    dead_ = false;
    stopping_ = false;
    loop_ended_ = false;
    outbox_ = std::make_shared<frames::Outbox>(fd_);
    frames_.emplace(fd_);
    if (reactor_) {
      try {
        watch_ = reactor_->watch(fd_, [this] { return read_from_watch(); });
      } catch (const std::exception& e) {
        spdlog::warn("worker {}: its socket is read by a thread of its own: the I/O threads cannot watch it ({})",
                     slot_, e.what());
      }
    }
    if (!watch_) {
      std::lock_guard finishing(finisher_mutex_);
      finisher_ = std::thread([this] { read_to_the_end(); });
    }
    return zygote_.routes();
  }

  // Not called: the worker pulls its jobs (doorbell()); no lane hands it one.
  HandleResult handle(const Job& job, std::uint64_t, int) override {
    HandleResult out;
    out.worker_lost = true;
    out.job_not_taken = true;
    out.response = make_error_response(503, "the worker process takes no request from a lane",
                                       job.request.request_id);
    return out;
  }

  std::function<void()> doorbell() override { return [this] { feed(); }; }
  bool pulls_when_rung() const override { return true; }
  void pull_from(JobSource* source) override {
    {
      std::lock_guard lock(pull_mutex_);
      source_ = source;
    }
    if (source) feed();  // what is queued already; then it parks
  }

  int held() const override {
    std::lock_guard lock(mutex_);
    return static_cast<int>(on_loop_);
  }

  // Clients that left, told to the worker's loop. Never blocks. A stuck loop
  // is the worker process's own business (it exits: asgi_child.cpp).
  bool supervise(Clock::time_point now) override {
    std::vector<std::uint64_t> gone;
    std::shared_ptr<frames::Outbox> outbox;
    {
      std::lock_guard lock(mutex_);
      if (now < next_client_check_ || !outbox_) return false;
      next_client_check_ = now + kClientCheckEvery;
      outbox = outbox_;
      for (auto& [id, h] : held_) {
        if (h.answered || h.gone_told || !h.job.client_gone()) continue;
        h.gone_told = true;
        gone.push_back(id);
      }
    }
    for (std::uint64_t id : gone) outbox->post(Kind::asgi_gone, frames::tag(id));
    return false;
  }

  InterruptAction interrupt(std::uint64_t) override { return InterruptAction::none; }

  // The loop finishes what it holds, runs the lifespan shutdown and the process
  // exits (after the app's own threads, zygote.cpp); past the graceful timeout
  // it is killed. Its last frames are read by a thread of this worker's own, not
  // by the I/O threads, which may have stopped already.
  void end(Clock::time_point) override {
    std::shared_ptr<frames::Outbox> outbox;
    pid_t pid;
    {
      std::lock_guard lock(mutex_);
      if (!outbox_) return;
      outbox = outbox_;
      stopping_ = true;
      outbox->post(Kind::asgi_stop, frames::tag(0));
    }
    if (watch_) watch_->cancel();
    {
      std::lock_guard finishing(finisher_mutex_);
      if (!finisher_.joinable()) finisher_ = std::thread([this] { read_to_the_end(); });
    }
    {
      std::unique_lock lock(mutex_);
      pid = pid_;
      if (!cv_.wait_for(lock, stop_wait_, [&] { return dead_; })) {
        if (loop_ended_) {
          spdlog::warn("worker {} (pid {}): its event loop has ended, but thread(s) the app started still run "
                       "past the graceful timeout; killing it", slot_, pid);
        } else {
          spdlog::warn("worker {} (pid {}): its event loop did not finish within the graceful timeout; killing it",
                       slot_, pid);
        }
        ::kill(pid, SIGKILL);
      }
    }
    {
      std::lock_guard finishing(finisher_mutex_);
      finisher_.join();
    }
    watch_.reset();
    frames_.reset();
    outbox->close();
    std::lock_guard lock(mutex_);
    outbox_.reset();
    ::close(fd_);
    fd_ = -1;
    pid_ = 0;
  }

  bool recyclable() const override { return true; }
  bool abandonable() const override { return false; }
  bool can_vanish_while_idle() const override { return true; }
  bool alive() override {
    std::lock_guard lock(mutex_);
    return outbox_ && !dead_;
  }

  WorkerDescription describe() const override {
    WorkerDescription d;
    d.pid = pid_;
    return d;
  }

 private:
  // A WebSocket's acknowledgements to the worker (frames.hpp, kWsWindow): the bytes
  // of the app's messages that its channel took since the last asgi_room, and whether
  // the channel said it is full (then its room callback acknowledges them, once the
  // client has read). Shared with that callback, which runs on the connection's thread.
  struct WsAcks {
    std::mutex mutex;
    std::size_t unacked = 0;
    bool full = false;
    std::uint64_t rooms = 0;  // room callbacks run so far
  };

  // A request the worker's loop holds, from send_request() to its asgi_done (and to
  // the end of its streamed body).
  struct Held {
    Job job;  // until it is answered
    bool answered = false;
    bool on_loop = true;
    bool gone_told = false;
    std::shared_ptr<BodyStream> producer;  // while its body streams
    std::shared_ptr<WebSocketChannel> websocket;  // a WebSocket's, while on the loop
    std::shared_ptr<WsAcks> acks;                 // and what its app's messages await
  };

  // One job to the process: false, untouched, when the process is gone.
  bool send_request(Job& job) {
    std::string meta, body;
    Kind kind = Kind::asgi_request;
    std::shared_ptr<frames::Outbox> outbox;
    {
      std::lock_guard lock(mutex_);
      if (dead_ || stopping_ || !outbox_) return false;
      outbox = outbox_;
      const std::uint64_t id = ++next_id_;
      const auto left = std::chrono::duration_cast<std::chrono::microseconds>(
          std::clamp<Clock::duration>(job.deadline - Clock::now(), Clock::duration::zero(), kLongestWait));
      meta = frames::encode_asgi_request(id, left, job.route_index, job.request);
      body = std::move(job.request.body);
      Held& h = held_[id];
      h.job = std::move(job);
      h.job.sink = nullptr;
      h.websocket = h.job.websocket;
      if (h.websocket) {  // what the connection says goes to the worker's loop
        h.acks = std::make_shared<WsAcks>();
        h.websocket->attach_loop([weak = std::weak_ptr<frames::Outbox>(outbox), id](WebSocketChannel::Event&& e) {
          auto o = weak.lock();
          if (!o) return;
          if (e.ended) {
            o->post(Kind::asgi_ws_closed, frames::tag(id, frames::encode_ws_close(e.code, e.reason)));
          } else {
            o->post(Kind::asgi_ws_message, frames::tag(id, e.message.text ? "t" : "b"), std::move(e.message.data));
          }
        });
      }
      kind = h.websocket ? Kind::asgi_ws_connect : Kind::asgi_request;
      ++on_loop_;
    }
    outbox->post(kind, std::move(meta), std::move(body));
    return true;
  }

  // Takes what the queue has for the process, as much as its loop has room for,
  // and sends it; parks the worker when there is none (the next push rings it).
  // From the thread that rings the doorbell, the reader (a request done: room
  // again) and lane 0 (attached). Never blocks: a thread that finds another
  // feeding leaves it one more round.
  void feed() {
    feed_again_.store(true);
    while (feed_again_.load()) {
      std::unique_lock lock(pull_mutex_, std::try_to_lock);
      if (!lock.owns_lock()) return;
      feed_again_.store(false);
      if (source_) feed_locked();
    }
  }
  void feed_locked() {
    std::vector<Job>& jobs = pulled_;  // kept between feeds: no allocation per request
    for (;;) {
      std::size_t room;
      {
        std::lock_guard lock(mutex_);
        const bool open = !dead_ && !stopping_ && outbox_;
        room = open && on_loop_ < limit_ ? limit_ - on_loop_ : 0;
      }
      if (room == 0) {  // full (done() feeds again), or gone (the pool starts a new process): not rung
        source_->unpark();
        return;
      }
      jobs.clear();
      source_->pull(jobs, room, true);
      if (jobs.empty()) return;  // parked
      for (Job& job : jobs) {
        if (!send_request(job)) source_->carry(std::move(job));  // the process ended meanwhile
      }
    }
  }

  bool read_frames(std::string& why);
  bool read_from_watch();
  void read_to_the_end();
  bool on_frame(frames::Frame& frame);
  std::optional<Job> take_to_answer(std::uint64_t id, std::shared_ptr<BodyStream> producer);
  void deliver(std::uint64_t id, HttpResponseData&& response, std::shared_ptr<BodyStream> producer = nullptr);
  void deliver_file(std::uint64_t id, HttpResponseData&& head, Fd&& file, std::uint64_t offset, std::uint64_t length);
  void chunk(std::uint64_t id, std::string&& data);
  void end_body(std::uint64_t id, bool ok);
  void done(std::uint64_t id);
  void lost(const std::string& why);
  std::shared_ptr<WebSocketChannel> channel(std::uint64_t id) {
    std::lock_guard lock(mutex_);
    auto it = held_.find(id);
    return it == held_.end() ? nullptr : it->second.websocket;
  }
  void ws_send(std::uint64_t id, bool text, std::string&& data);
  // With mutex_: forgets `it` once nothing more can come for it.
  void forget_if_over(std::unordered_map<std::uint64_t, Held>::iterator it) {
    if (!it->second.on_loop && !it->second.producer) held_.erase(it);
  }

  ZygoteClient& zygote_;
  const int slot_;
  const std::size_t limit_;
  const std::chrono::milliseconds stop_wait_;
  Reactor* const reactor_;  // null: finisher_ reads the socket from the start
  int fd_ = -1;  // set by start(), closed by end(); the reader's and the outbox's meanwhile
  // The socket's reader: the watch's callback on an I/O thread, then (once the watch
  // is cancelled or has seen the end) finisher_, one at a time.
  std::optional<frames::FrameReader> frames_;
  std::unique_ptr<Reactor::Watch> watch_;
  std::mutex finisher_mutex_;  // finisher_ is started (by the watch or end()) and joined under it
  std::thread finisher_;       // reads to the end, then lost()

  std::mutex pull_mutex_;  // held while feeding; guards source_ and pulled_
  JobSource* source_ = nullptr;
  std::vector<Job> pulled_;  // feed_locked()'s, emptied before each pull
  std::atomic<bool> feed_again_{false};

  mutable std::mutex mutex_;  // guards what follows
  std::condition_variable cv_;
  std::shared_ptr<frames::Outbox> outbox_;
  std::atomic<pid_t> pid_{0};
  std::unordered_map<std::uint64_t, Held> held_;
  std::size_t on_loop_ = 0;
  std::uint64_t next_id_ = 0;
  bool dead_ = false;      // the process has ended (or broke the protocol)
  bool stopping_ = false;  // end() has asked it to finish
  bool loop_ended_ = false;  // it said its loop has ended (asgi_stopped): only the app's threads are left
  Clock::time_point next_client_check_{};
};

// What the socket holds now (at most 1 MiB of it: a large answer comes over several
// calls, and the I/O thread serves its connections between them), frame by frame.
// False when nothing more will come: the process closed its end (`why` empty), the
// socket failed, or the process broke the protocol (then it is killed).
bool AsgiProcessWorker::read_frames(std::string& why) {
  const frames::FrameReader::Drained d = frames_->drain([this](frames::Frame& f) { return on_frame(f); });
  if (!d.broken.empty()) {
    why = "sent " + d.broken;
    ::kill(pid_, SIGKILL);
    return false;
  }
  if (d.got.ok()) return true;
  if (d.got.status != frames::ReadStatus::closed) why = d.got.describe();
  return false;
}

// The watch's callback, on an I/O thread. At the end, lost() (which waits for the
// process's exit status) goes to a thread of its own.
bool AsgiProcessWorker::read_from_watch() {
  std::string why;
  if (read_frames(why)) return true;
  std::lock_guard finishing(finisher_mutex_);
  finisher_ = std::thread([this, why = std::move(why)] { lost(why); });
  return false;
}

// Without a reactor, or from end() on: blocks on the socket until its end.
void AsgiProcessWorker::read_to_the_end() {
  std::string why;
  while (read_frames(why)) {
    pollfd p{fd_, POLLIN, 0};
    while (::poll(&p, 1, -1) < 0 && errno == EINTR) {
    }
  }
  lost(why);
}

// False: the frame breaks the protocol.
bool AsgiProcessWorker::on_frame(frames::Frame& frame) {
  std::string_view meta = frame.meta;
  std::uint64_t id = 0;
  if (!frames::untag(meta, id)) return false;
  switch (frame.kind) {
    case Kind::asgi_response:
    case Kind::asgi_head: {
      HttpResponseData response;
      if (!frames::decode_response_meta(meta, response)) return false;
      if (frame.kind == Kind::asgi_response) {
        response.body = std::move(frame.body);
        deliver(id, std::move(response));
        return true;
      }
      BodyStream::Ends ends = BodyStream::make();
      response.stream = std::move(ends.consumer);
      deliver(id, std::move(response), std::move(ends.producer));
      return true;
    }
    case Kind::asgi_file: {
      HttpResponseData head;
      std::uint64_t offset = 0, length = 0;
      Fd file = frames_->take_passed();
      if (!frames::decode_file_meta(meta, head, offset, length) || !frame.body.empty() || file.fd < 0) return false;
      deliver_file(id, std::move(head), std::move(file), offset, length);
      return true;
    }
    case Kind::asgi_chunk: chunk(id, std::move(frame.body)); return true;
    case Kind::asgi_end: end_body(id, meta == "1"); return true;
    case Kind::asgi_done: done(id); return true;
    case Kind::asgi_stopped: {
      std::lock_guard lock(mutex_);
      loop_ended_ = true;
      return true;
    }
    case Kind::asgi_ws_send:
      if (meta != "t" && meta != "b") return false;
      ws_send(id, meta == "t", std::move(frame.body));
      return true;
    case Kind::asgi_ws_more: {
      unsigned reads = 0;
      const auto [end, ec] = std::from_chars(meta.data(), meta.data() + meta.size(), reads);
      if (ec != std::errc() || end != meta.data() + meta.size() || reads > 1000000) return false;
      if (auto c = channel(id)) {
        for (unsigned i = 0; i < reads; ++i) c->more();
      }
      return true;
    }
    case Kind::asgi_ws_close: {
      int code = 0;
      std::string reason;
      if (!frames::decode_ws_close(meta, code, reason)) return false;
      if (auto c = channel(id)) c->close(code, std::move(reason));
      return true;
    }
    default: return false;
  }
}

std::optional<Job> AsgiProcessWorker::take_to_answer(std::uint64_t id, std::shared_ptr<BodyStream> producer) {
  std::lock_guard lock(mutex_);
  auto it = held_.find(id);
  if (it == held_.end() || it->second.answered) return std::nullopt;
  it->second.answered = true;
  it->second.producer = std::move(producer);
  return std::move(it->second.job);
}

void AsgiProcessWorker::deliver(std::uint64_t id, HttpResponseData&& response, std::shared_ptr<BodyStream> producer) {
  std::optional<Job> job = take_to_answer(id, std::move(producer));
  // A connection gone already drops the consumer's end: the next chunk's offer says so.
  if (job) job->complete(std::move(response));
}

// An asgi_file frame: the connection reads the file (file_body.hpp), the first chunks here.
void AsgiProcessWorker::deliver_file(std::uint64_t id, HttpResponseData&& head, Fd&& file, std::uint64_t offset,
                                     std::uint64_t length) {
  std::optional<Job> job = take_to_answer(id, nullptr);
  if (!job) return;  // the descriptor closes here
  head.stream = stream_file(std::move(file), offset, length, [rid = job->request.request_id](std::uint64_t at) {
    spdlog::error("request {}: the file the ASGI app sent (http.response.pathsend) ended or could not be read "
                  "at byte {}; the connection is closed with the body cut short",
                  rid, at);
  });
  job->complete(std::move(head));
}

void AsgiProcessWorker::chunk(std::uint64_t id, std::string&& data) {
  std::shared_ptr<BodyStream> producer;
  std::shared_ptr<frames::Outbox> outbox;
  {
    std::lock_guard lock(mutex_);
    auto it = held_.find(id);
    if (it == held_.end() || !it->second.producer) return;
    producer = it->second.producer;
    outbox = outbox_;
  }
  std::weak_ptr<frames::Outbox> weak = outbox;
  const BodyStream::Offer offered = producer->offer(std::move(data), [weak, id] {
    if (auto o = weak.lock()) o->post(Kind::asgi_room, frames::tag(id));
  });
  if (offered == BodyStream::Offer::taken) {
    outbox->post(Kind::asgi_room, frames::tag(id));
  } else if (offered == BodyStream::Offer::cancelled) {
    {
      std::lock_guard lock(mutex_);
      auto it = held_.find(id);
      if (it != held_.end()) {
        it->second.producer.reset();
        forget_if_over(it);
      }
    }
    outbox->post(Kind::asgi_gone, frames::tag(id));
  }
}

// One message from the app, into the connection's channel. Its bytes are acknowledged
// to the worker in bulk: once half the window is taken, or, when the channel is full,
// once the client has read (the room callback), so that a slow client stops the app's
// sends within a window. A closed channel acknowledges at once: the worker learns of
// the end from asgi_ws_closed, and must not wait meanwhile.
void AsgiProcessWorker::ws_send(std::uint64_t id, bool text, std::string&& data) {
  std::shared_ptr<WebSocketChannel> websocket;
  std::shared_ptr<WsAcks> acks;
  std::shared_ptr<frames::Outbox> outbox;
  {
    std::lock_guard lock(mutex_);
    auto it = held_.find(id);
    if (it == held_.end() || !it->second.websocket) return;
    websocket = it->second.websocket;
    acks = it->second.acks;
    outbox = outbox_;
  }
  std::uint64_t rooms_before;
  {
    std::lock_guard lock(acks->mutex);
    acks->unacked += data.size();  // before the send: a room callback that runs at once counts it
    rooms_before = acks->rooms;
  }
  std::weak_ptr<frames::Outbox> weak = outbox;
  const WebSocketChannel::Offer offered = websocket->send({text, std::move(data)}, [weak, id, acks] {
    std::size_t taken;
    {
      std::lock_guard lock(acks->mutex);
      ++acks->rooms;
      acks->full = false;
      taken = std::exchange(acks->unacked, 0);
    }
    if (auto o = weak.lock()) o->post(Kind::asgi_room, frames::tag(id, std::to_string(taken)));
  });
  std::optional<std::size_t> taken;
  {
    std::lock_guard lock(acks->mutex);
    if (offered == WebSocketChannel::Offer::full) {
      if (acks->rooms == rooms_before) acks->full = true;  // else its room callback has run already
    } else if (offered == WebSocketChannel::Offer::closed ||
               (!acks->full && acks->unacked >= frames::kWsWindow / 2)) {
      taken = std::exchange(acks->unacked, 0);
    }
  }
  if (taken) outbox->post(Kind::asgi_room, frames::tag(id, std::to_string(*taken)));
}

void AsgiProcessWorker::end_body(std::uint64_t id, bool ok) {
  std::shared_ptr<BodyStream> producer;
  {
    std::lock_guard lock(mutex_);
    auto it = held_.find(id);
    if (it == held_.end()) return;
    producer = std::move(it->second.producer);
    forget_if_over(it);
  }
  if (producer) producer->finish(ok);
}

// The request has left the loop. One the loop never answered was cancelled at
// its deadline: its connection has answered 504.
void AsgiProcessWorker::done(std::uint64_t id) {
  Job unanswered;
  {
    std::lock_guard lock(mutex_);
    auto it = held_.find(id);
    if (it == held_.end() || !it->second.on_loop) return;
    it->second.on_loop = false;
    --on_loop_;
    unanswered = std::move(it->second.job);
    forget_if_over(it);
  }
  cv_.notify_all();
  feed();  // room for one more; and the queue learns the room it has
}

// The process has ended (or must: it broke the protocol). What it held and had
// not answered is answered 502; bodies it was streaming are cut short.
void AsgiProcessWorker::lost(const std::string& why) {
  std::vector<Job> orphans;
  std::vector<std::shared_ptr<BodyStream>> streams;
  bool expected;
  pid_t pid;
  {
    std::lock_guard lock(mutex_);
    dead_ = true;
    expected = stopping_;
    pid = pid_;
    for (auto& [id, h] : held_) {
      if (!h.answered) orphans.push_back(std::move(h.job));
      if (h.producer) streams.push_back(std::move(h.producer));
      if (h.websocket) h.websocket->close(WebSocketChannel::kInternalError, "");  // its app is gone
    }
    held_.clear();
    on_loop_ = 0;
  }
  cv_.notify_all();
  feed();  // no longer parked: a push rings a live worker
  for (auto& s : streams) s->finish(false);
  if (orphans.empty() && streams.empty() && why.empty()) return;
  std::string how = zygote_.exit_status(pid, kExitStatusWait);
  if (how.empty()) how = why.empty() ? "closed its socket" : why;
  const std::string what =
      "worker " + std::to_string(slot_) + " (pid " + std::to_string(pid) + ") " + how;
  if (!expected || !orphans.empty()) {
    spdlog::error("{} while its event loop held {} request(s); they are answered 502", what,
                  orphans.size() + streams.size());
  }
  for (Job& job : orphans) {
    job.complete(make_error_response(502, what + " while handling the request", job.request.request_id));
  }
}

}  // namespace

std::unique_ptr<Worker> make_asgi_process_worker(ZygoteClient& zygote, int slot, const ServerConfig& config,
                                                 Reactor* reactor) {
  return std::make_unique<AsgiProcessWorker>(zygote, slot, config, reactor);
}

}  // namespace gilgamesh
