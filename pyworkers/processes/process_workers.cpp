// `processes` as a Worker: one worker process, forked by the zygote with the
// app already imported, talking frames (frames.hpp) over a socketpair, one
// request then one response. The server process never runs Python.
//
// A worker that dies costs only the request it was running (502); one still
// running at its deadline is killed (the pool then starts a new one in the
// slot). Closing its socket tells a worker to leave.
#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cerrno>

#include "pyworkers/processes/frames.hpp"
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

class ProcessWorker final : public Worker {
 public:
  ProcessWorker(ZygoteClient& zygote, int slot) : zygote_(zygote), slot_(slot) {}
  ~ProcessWorker() override { end(); }

  std::vector<RouteInfo> start() override {
    ZygoteClient::Spawned spawned = zygote_.spawn(slot_);
    if (spawned.fd < 0) throw StartupError(StartupError::Kind::worker, spawned.error);
    fd_ = spawned.fd;
    pid_ = spawned.pid;
    killed_ = false;
    // Its first frame says it is ready; a worker that dies first died at start-up.
    frames::Frame hello;
    frames::ReadResult read{frames::ReadStatus::failed, ETIMEDOUT};
    frames::Limits limits;
    limits.max_meta = 64;
    limits.max_body = 0;
    if (wait_readable(fd_, kHelloTimeout)) read = frames::read_frame(fd_, hello, limits);
    if (read.ok() && hello.kind == frames::Kind::hello) return zygote_.routes();
    const pid_t pid = pid_;
    end();
    const std::string how = zygote_.exit_status(pid, kExitStatusWait);
    throw StartupError(StartupError::Kind::worker,
                       "worker process " + std::to_string(pid) +
                           (how.empty() ? " did not become ready: " + read.describe()
                                        : " " + how + " before it was ready"));
  }

  HandleResult handle(const Job& job, std::uint64_t seq, int) override {
    HandleResult out;
    running_ = seq;
    const bool sent = frames::write_frame(fd_, frames::Kind::request,
                                          frames::encode_request_meta(job.route_index, job.request),
                                          job.request.body);
    frames::Frame reply;
    frames::ReadResult read{frames::ReadStatus::failed, EPIPE};
    if (sent) read = frames::read_frame(fd_, reply, frames::Limits{});
    running_ = 0;
    if (read.ok() && reply.kind == frames::Kind::response &&
        frames::decode_response_meta(reply.meta, out.response)) {
      out.response.body = std::move(reply.body);
      return out;
    }
    out.worker_lost = true;
    const std::string& id = job.request.request_id;
    if (killed_) {
      // The pool completes nothing for a job stopped at its deadline: the connection answers 504.
      out.response = make_error_response(503, "the worker process was killed", id);
      return out;
    }
    if (!sent) {
      // It left before it had the whole request, so no handler ran: the
      // request waits for the replacement.
      out.job_not_taken = true;
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

  InterruptAction interrupt(std::uint64_t seq) override {
    const pid_t pid = pid_;
    if (running_.load() != seq || pid <= 0) return InterruptAction::none;
    killed_ = true;
    ::kill(pid, SIGKILL);
    return InterruptAction::killed;
  }

  void end() override {
    // Closing its socket tells a live worker to exit cleanly.
    if (fd_ >= 0) ::close(fd_);
    fd_ = -1;
    pid_ = 0;
  }

  bool recyclable() const override { return true; }
  bool abandonable() const override { return false; }
  bool can_vanish_while_idle() const override { return true; }
  // An idle worker never writes: anything readable means it exited (end of stream).
  bool alive() override {
    pollfd p{fd_, POLLIN, 0};
    return fd_ >= 0 && poll(&p, 1, 0) == 0;
  }

  WorkerDescription describe() const override {
    WorkerDescription d;
    d.pid = pid_;
    return d;
  }

 private:
  ZygoteClient& zygote_;
  const int slot_;
  int fd_ = -1;
  std::atomic<pid_t> pid_{0};
  std::atomic<std::uint64_t> running_{0};
  std::atomic<bool> killed_{false};
};

class ProcessFactory final : public WorkerFactory {
 public:
  explicit ProcessFactory(const ServerConfig& config) : zygote_(config) {}

  void prepare() override { zygote_.start(); }
  std::unique_ptr<Worker> make(int slot) override { return std::make_unique<ProcessWorker>(zygote_, slot); }
  std::string python_version() const override { return embedded_python_version(); }
  PythonBuild python_build() const override { return embedded_python_build(); }
  StrategyTraits traits() const override {
    return {.owns_interpreters = true, .shares_app_object = false, .workers_are_processes = true};
  }
  bool gil_enabled() const override { return zygote_.gil_enabled(); }
  std::optional<std::string> unavailable() const override { return zygote_.unavailable(); }
  void stopping() override { zygote_.cancel_waits(); }
  void add_stats(PoolStats& out) const override {
    out.zygote_pid = zygote_.zygote_pid();
    out.zygote_restarts_total = zygote_.zygote_restarts();
  }
  void shutdown(bool) override { zygote_.stop(); }

 private:
  ZygoteClient zygote_;
};

}  // namespace

std::unique_ptr<WorkerFactory> make_process_factory(const ServerConfig& config) {
  return std::make_unique<ProcessFactory>(config);
}

}  // namespace gilgamesh
