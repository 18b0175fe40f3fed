// `processes` as a Worker: one worker process, forked by the zygote with the
// app already imported, talking frames (frames.hpp) over one socketpair per
// lane (--threads N: N lanes, each one request then one response at a time,
// answered in any order across lanes). The server process never runs Python.
//
// A worker that dies costs only the requests it was running (502 each); the
// pool starts a new one in the slot. Closing its sockets tells a worker to leave.
//
// A request still running at its deadline:
//   - one lane: the process is killed (SIGKILL) at once: nothing else runs
//     there, and a new process is cheaper than waiting for an interrupt;
//   - several lanes: "interrupt" goes over the worker control socket, never
//     waiting, and the worker raises gilgamesh.HandlerTimeout in that lane's
//     thread only: the other lanes answer on. A handler that does not return
//     within the pool's grace (stuck in C) gets its worker abandoned, as the
//     in-process strategies' do (abandonable()): a fresh process takes the
//     slot at once, the old one takes no new request, and abandoned() kills it
//     as soon as none of its lanes runs a request whose deadline is still
//     ahead (those past it have had their 504 from the connection): no answer
//     is lost, and the stuck handler goes with its process.
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

#include "pyworkers/processes/frames.hpp"
#include "pyworkers/processes/process_start.hpp"
#include "server/model/response.hpp"
#include "pyworkers/pool/worker.hpp"
#include "pyworkers/processes/zygote.hpp"
#include "pyworkers/processes/zygote_client.hpp"

namespace gilgamesh {

namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr auto kHelloTimeout = 10s;    // for a new worker's first frame
constexpr auto kExitStatusWait = 2s;   // for the news of how a worker ended

// True once fd is readable or hung up, false after `timeout`.
bool wait_readable(int fd, milliseconds timeout) {
  const auto until = Clock::now() + timeout;
  for (;;) {
    pollfd p{fd, POLLIN, 0};
    const auto left = std::chrono::duration_cast<milliseconds>(until - Clock::now()).count();
    const int n = poll(&p, 1, static_cast<int>(std::max<long long>(left, 0)));
    if (n > 0) return true;
    if (n == 0) return false;
    if (errno != EINTR) return true;  // let the read report it
  }
}

}  // namespace

StartedProcess start_worker_process(ZygoteClient& zygote, int slot, milliseconds timeout) {
  ZygoteClient::Spawned spawned = zygote.spawn(slot);
  if (spawned.fds.empty()) throw StartupError(StartupError::Kind::worker, spawned.error);
  StartedProcess out{std::move(spawned.fds), spawned.pid};
  const int fd = out.fds[0];
  frames::Frame first;
  frames::ReadResult read{frames::ReadStatus::failed, ETIMEDOUT};
  frames::Limits limits;
  limits.max_meta = 64 * 1024;
  limits.max_body = 0;
  if (wait_readable(fd, timeout)) read = frames::read_frame(fd, first, limits);
  if (read.ok() && first.kind == frames::Kind::hello) return out;
  for (int f : out.fds) ::close(f);
  if (read.ok() && first.kind == frames::Kind::refused) throw StartupError(first.meta);
  const std::string how = zygote.exit_status(out.pid, kExitStatusWait);
  throw StartupError(StartupError::Kind::worker,
                     "worker process " + std::to_string(out.pid) +
                         (how.empty() ? " did not become ready: " + read.describe()
                                      : " " + how + " before it was ready"));
}

namespace {

class ProcessWorker final : public Worker {
 public:
  ProcessWorker(ZygoteClient& zygote, int slot, int threads)
      : zygote_(zygote), slot_(slot), lanes_(static_cast<std::size_t>(std::max(1, threads))) {}
  ~ProcessWorker() override { end(Clock::now()); }

  std::vector<RouteInfo> start() override {
    // Its first frame (on lane 0) says it is ready; a worker that dies first died at start-up.
    StartedProcess started = start_worker_process(zygote_, slot_, kHelloTimeout);
    std::lock_guard lock(mutex_);
    for (std::size_t i = 0; i < lanes_.size(); ++i) lanes_[i] = LaneState{.fd = started.fds[i]};
    control_fd_ = several_lanes() ? started.fds.back() : -1;
    pid_ = started.pid;
    killed_ = false;
    abandoned_ = false;
    return zygote_.routes();
  }

  HandleResult handle(const Job& job, std::uint64_t seq, int lane) override {
    HandleResult out;
    const std::string& id = job.request.request_id;
    LaneState& l = lanes_[static_cast<std::size_t>(lane)];
    {
      std::lock_guard lock(mutex_);
      if (killed_) {
        // Abandoned, and killed an instant before this lane took its job: no handler ran.
        out.worker_lost = true;
        out.job_not_taken = true;
        out.response = make_error_response(503, "the worker process was replaced; retry", id);
        return out;
      }
      l.number = ++l.sent;  // what the worker numbers this request, on this lane
      l.seq = seq;
      l.deadline = job.deadline;
    }
    l.passed.clear();  // descriptors the last answer came with and did not use: nobody's
    const bool sent = frames::write_frame(l.fd, frames::Kind::request,
                                          frames::encode_request_meta(job.route_index, job.request),
                                          job.request.body);
    frames::Frame reply;
    frames::ReadResult read{frames::ReadStatus::failed, EPIPE};
    if (sent) read = frames::read_frame_buffered(l.fd, reply, l.carry, {}, nullptr, &l.passed);
    bool streamed = false;
    if (read.ok() && reply.kind == frames::Kind::head) {
      streamed = true;
      if (!stream(job, l, reply, read)) out.worker_lost = true;  // the socket is no longer in step
    } else if (read.ok() && reply.kind == frames::Kind::file) {
      streamed = true;
      if (!send_file(job, l, reply)) {
        out.worker_lost = true;
        read = {frames::ReadStatus::invalid, 0};
      }
    }
    bool killed;
    {
      std::lock_guard lock(mutex_);
      l.seq = 0;
      killed = killed_;
    }
    lane_done_.notify_all();
    if (streamed && !out.worker_lost) return out;  // answered through job.sink
    if (read.ok() && reply.kind == frames::Kind::response &&
        frames::decode_response_meta(reply.meta, out.response)) {
      out.response.body = std::move(reply.body);
      return out;
    }
    out.worker_lost = true;
    if (killed) {
      // The pool completes nothing for a job stopped at its deadline: the connection answers 504.
      out.response = make_error_response(503, "the worker process was killed", id);
      return out;
    }
    if (!sent) {
      // It left before it had the whole request, so no handler ran: the
      // request waits for the replacement.
      out.job_not_taken = true;
      out.response = make_error_response(503, "the worker process was gone before it took the request", id);
      return out;
    }
    const std::string who = "worker " + std::to_string(slot_) + " (pid " + std::to_string(pid_) + ")";
    std::string what;
    if (read.status == frames::ReadStatus::invalid || read.ok()) {
      what = who + " sent a malformed response";
    } else {
      std::string how = zygote_.exit_status(pid_, kExitStatusWait);
      if (how.empty()) how = read.describe();
      what = who + " died while handling the request: " + how;
    }
    out.response = make_error_response(502, what, id);
    return out;
  }

  // From the supervisor: never waits (a short lock, a kill or a non-blocking send).
  InterruptAction interrupt(std::uint64_t seq) override {
    std::lock_guard lock(mutex_);
    const pid_t pid = pid_;
    if (pid <= 0 || killed_) return InterruptAction::none;
    for (std::size_t i = 0; i < lanes_.size(); ++i) {
      const LaneState& l = lanes_[i];
      if (l.seq != seq) continue;
      if (!several_lanes()) {
        killed_ = true;
        ::kill(pid, SIGKILL);
        return InterruptAction::killed;
      }
      // A full buffer means the worker's control thread is behind (waiting for a
      // GIL a handler holds): the pool repeats the interrupt within its grace.
      frames::send_worker_control(control_fd_, {frames::WorkerControlKind::interrupt,
                                                static_cast<std::uint32_t>(i), l.number});
      return InterruptAction::interrupted;
    }
    return InterruptAction::none;
  }

  // With the pool's lock for this worker held: never waits.
  void abandoned() override {
    std::lock_guard lock(mutex_);
    if (abandoned_ || pid_ <= 0) return;
    abandoned_ = true;
    const pid_t pid = pid_;
    watchdog_ = std::thread([this, pid] { kill_when_lanes_done(pid); });
  }

  // The process waits for its app's threads itself before it leaves (zygote.cpp).
  void end(Clock::time_point) override {
    {
      std::lock_guard lock(mutex_);
      stopping_watchdog_ = true;
    }
    lane_done_.notify_all();
    if (watchdog_.joinable()) watchdog_.join();
    std::lock_guard lock(mutex_);
    stopping_watchdog_ = false;
    // Closing its sockets tells a live worker to exit cleanly.
    for (LaneState& l : lanes_) {
      if (l.fd >= 0) ::close(l.fd);
      l.fd = -1;
    }
    if (control_fd_ >= 0) ::close(control_fd_);
    control_fd_ = -1;
    pid_ = 0;
  }

  bool recyclable() const override { return true; }
  // One lane: its process is killed instead. Several: see the top of this file.
  bool abandonable() const override { return several_lanes(); }
  bool can_vanish_while_idle() const override { return true; }
  // The worker never writes on its lane sockets unasked, nor ever on its control
  // socket: with one lane and that lane idle, or on the control socket, anything
  // readable means it exited (end of stream).
  bool alive() override {
    const int fd = several_lanes() ? control_fd_ : lanes_[0].fd;
    pollfd p{fd, POLLIN, 0};
    return fd >= 0 && poll(&p, 1, 0) == 0;
  }

  WorkerDescription describe() const override {
    WorkerDescription d;
    d.pid = pid_;
    return d;
  }

 private:
  struct LaneState {
    int fd = -1;                 // the server's end of the lane's socket
    std::uint64_t sent = 0;      // requests sent on this lane since start (its lane thread only)
    std::uint64_t number = 0;    // the running request's number on this lane
    std::uint64_t seq = 0;       // the pool's job running on it; 0: none
    Clock::time_point deadline;  // that job's
    std::string carry;           // bytes of the worker's next frame, read with the last one
    std::deque<Fd> passed;       // descriptors that came with them (a `file` frame's)
  };

  bool several_lanes() const { return lanes_.size() > 1; }

  // An answer that streams, from its head frame (in `frame`) to its end: the
  // head and each chunk go to job.sink, whose full buffer holds this thread
  // back, and the worker process with it (its socket fills). A client that
  // leaves is told to the worker (`cancel`), whose remaining frames are read
  // and dropped. False, with `read` saying why, when the worker broke off
  // (died, or sent something else): the body is then cut short.
  bool stream(const Job& job, LaneState& l, frames::Frame& frame, frames::ReadResult& read) {
    {
      std::lock_guard lock(mutex_);
      l.deadline = Clock::time_point::max();  // the head is out: no deadline bounds the body
    }
    HttpResponseData head;
    if (!frames::decode_response_meta(frame.meta, head)) {
      read = {frames::ReadStatus::invalid, 0};
      if (job.sink) job.sink->finish(false);
      return false;
    }
    bool taking = job.sink != nullptr && job.sink->open(std::move(head));
    bool told = false;
    for (;;) {
      if (!taking && !told) {
        told = frames::write_frame(l.fd, frames::Kind::cancel, {}, {});
        if (!told) break;
      }
      read = frames::read_frame_buffered(l.fd, frame, l.carry);
      if (!read.ok()) break;
      if (frame.kind == frames::Kind::chunk) {
        if (taking) taking = job.sink->push(frame.body);
        continue;
      }
      if (frame.kind == frames::Kind::end) {
        if (job.sink) job.sink->finish(frame.meta == "1");
        return true;
      }
      read = {frames::ReadStatus::invalid, 0};
      break;
    }
    if (job.sink) job.sink->finish(false);
    return false;
  }

  // A `file` frame: the head, and the descriptor that came with the frame, to job.sink, which
  // reads the file on the connection's thread. False: the frame is malformed or came
  // without its descriptor (the socket is no longer in step).
  bool send_file(const Job& job, LaneState& l, const frames::Frame& frame) {
    HttpResponseData head;
    std::uint64_t offset = 0, length = 0;
    if (!frames::decode_file_meta(frame.meta, head, offset, length) || !frame.body.empty() || l.passed.empty() ||
        job.sink == nullptr || !job.sink->takes_files()) {
      return false;
    }
    {
      std::lock_guard lock(mutex_);
      l.deadline = Clock::time_point::max();  // answered: the connection sends it
    }
    Fd file = std::move(l.passed.front());
    l.passed.pop_front();
    job.sink->open_file(std::move(head), std::move(file), offset, length);
    return true;
  }

  // The abandoned worker's end: killed once none of its lanes runs a request
  // whose deadline is ahead. Its lanes' handle() then return (the stuck one too).
  void kill_when_lanes_done(pid_t pid) {
    std::unique_lock lock(mutex_);
    for (;;) {
      if (stopping_watchdog_ || killed_) return;
      const auto now = Clock::now();
      std::optional<Clock::time_point> wait_until;
      int waiting = 0;
      for (const LaneState& l : lanes_) {
        if (l.seq == 0 || l.deadline <= now) continue;
        ++waiting;
        wait_until = std::max(wait_until.value_or(l.deadline), l.deadline);
      }
      if (!wait_until) break;
      spdlog::debug("worker {} (pid {}, abandoned): waiting for {} request(s) on its other threads", slot_,
                    pid, waiting);
      lane_done_.wait_until(lock, *wait_until);
    }
    killed_ = true;
    ::kill(pid, SIGKILL);
    spdlog::warn("worker {}: killed its abandoned process {} (a handler stuck past its deadline), "
                 "now that its other threads have answered", slot_, pid);
  }

  ZygoteClient& zygote_;
  const int slot_;
  std::vector<LaneState> lanes_;  // fd and sent: set by start() before the lanes run
  int control_fd_ = -1;           // several lanes: the worker control socket

  mutable std::mutex mutex_;      // guards the lanes' number, seq, deadline, and what follows
  std::condition_variable lane_done_;
  std::atomic<pid_t> pid_{0};
  bool killed_ = false;
  bool abandoned_ = false;
  bool stopping_watchdog_ = false;
  std::thread watchdog_;          // abandoned(): kill_when_lanes_done
};

class ProcessFactory final : public WorkerFactory {
 public:
  explicit ProcessFactory(const ServerConfig& config)
      : config_(config), threads_(config.pool.threads), asgi_(config.app.kind == AppKind::asgi), zygote_(config) {}

  void prepare() override { zygote_.start(); }
  std::unique_ptr<Worker> make(int slot) override {
    if (asgi_) return make_asgi_process_worker(zygote_, slot, config_, reactor_.load());
    return std::make_unique<ProcessWorker>(zygote_, slot, threads_);
  }
  std::string python_version() const override { return embedded_python_version(); }
  PythonBuild python_build() const override { return embedded_python_build(); }
  StrategyTraits traits() const override {
    return {.owns_interpreters = true, .shares_app_object = false, .workers_are_processes = true};
  }
  bool gil_enabled() const override { return zygote_.gil_enabled(); }
  std::optional<std::string> unavailable() const override { return zygote_.unavailable(); }
  void stopping() override { zygote_.cancel_waits(); }
  void use_reactor(Reactor* reactor) override { reactor_.store(reactor); }
  void add_stats(PoolStats& out) const override {
    out.zygote_pid = zygote_.zygote_pid();
    out.zygote_restarts_total = zygote_.zygote_restarts();
  }
  // A worker process waits for its app's threads before it leaves (up to
  // --graceful-timeout, zygote.cpp): the zygote gives them what is left of it.
  // The server's own process never finalizes a Python it does not run.
  bool shutdown(bool, Clock::time_point deadline) override {
    constexpr auto kLeastGrace = std::chrono::milliseconds(500);
    zygote_.stop(std::max(kLeastGrace, std::chrono::duration_cast<std::chrono::milliseconds>(deadline - Clock::now())));
    return true;
  }

 private:
  const ServerConfig config_;
  const int threads_;
  const bool asgi_;
  ZygoteClient zygote_;
  std::atomic<Reactor*> reactor_{nullptr};  // for the ASGI workers' sockets
};

}  // namespace

std::unique_ptr<WorkerFactory> make_process_factory(const ServerConfig& config) {
  return std::make_unique<ProcessFactory>(config);
}

}  // namespace gilgamesh
