#include "process_pool.hpp"

#include <poll.h>
#include <signal.h>
#include <spdlog/spdlog.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <optional>
#include <random>

#include "frames.hpp"
#include "zygote.hpp"
#include "response.hpp"

namespace gilgamesh {

namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr auto kIdleCheck = 250ms;       // how often an idle dispatcher looks at its worker
constexpr auto kSpawnTimeout = 10s;      // for the zygote to answer a spawn request
constexpr auto kHelloTimeout = 10s;      // for a new worker's first frame
constexpr auto kExitStatusWait = 2s;     // for the zygote's report of a worker's death
constexpr auto kZygoteStopTimeout = 8s;  // for the zygote to end its workers and exit
constexpr int kWorkerGraceMs = 500;      // for workers to leave on their own at stop
constexpr std::size_t kExitsKept = 1024;

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

// An idle worker never writes: anything readable means it exited (end of stream).
bool idle_worker_gone(int fd) {
  pollfd p{fd, POLLIN, 0};
  return poll(&p, 1, 0) > 0;
}

std::string worker_name(int index, pid_t pid) {
  return "worker " + std::to_string(index) + " (pid " + std::to_string(pid) + ")";
}

}  // namespace

ProcessPool::ProcessPool(const ExecutorConfig& config)
    : config_(config),
      queue_(config.max_queue),
      slots_(std::make_unique<Slot[]>(static_cast<std::size_t>(config.workers))) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    throw StartupError(std::string("cannot create the zygote's control socket: ") +
                       std::strerror(errno));
  }
  const pid_t server = getpid();
  std::fflush(nullptr);  // or the child would write what is buffered a second time
  spdlog::default_logger()->flush();
  const pid_t pid = fork();
  if (pid < 0) {
    const int e = errno;
    ::close(sv[0]);
    ::close(sv[1]);
    throw StartupError(std::string("cannot fork the zygote process: ") + std::strerror(e));
  }
  if (pid == 0) {
    ::close(sv[0]);
    run_zygote(config_, sv[1], server);
  }
  ::close(sv[1]);
  control_fd_ = sv[0];
  zygote_pid_ = pid;
  spdlog::debug("zygote process forked (pid {})", pid);
}

ProcessPool::~ProcessPool() {
  if (!stopped_) stop(Clock::now());
}

void ProcessPool::start() {
  read_start_messages();
  control_reader_ = std::thread([this] { control_reader_main(); });
  for (int i = 0; i < config_.workers; ++i) {
    slots_[static_cast<std::size_t>(i)].dispatcher = std::thread([this, i] { dispatcher_main(i); });
    ++dispatchers_;
  }
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return started_ >= config_.workers || !startup_error_.empty(); });
  if (!startup_error_.empty()) {
    std::string error = startup_error_;
    lock.unlock();
    stop(Clock::now());
    throw StartupError(error);
  }
}

// The zygote's routes and "ready", or why it could not load the app.
void ProcessPool::read_start_messages() {
  for (;;) {
    frames::ControlMessage message;
    std::string error;
    if (!frames::receive_control(control_fd_, message, &error)) {
      int status = 0;
      std::string how = "control socket: " + error;
      if (waitpid(zygote_pid_, &status, 0) == zygote_pid_) how = describe_wait_status(status);
      zygote_pid_ = -1;
      ::close(control_fd_);
      control_fd_ = -1;
      throw StartupError("the zygote process ended while importing app '" + config_.app + "': " + how);
    }
    if (message.fd >= 0) ::close(message.fd);
    const nlohmann::json& m = message.body;
    const std::string type = m.value("type", "");
    if (type == "route") {
      routes_.push_back({m.value("path", ""), m.value("methods", std::vector<std::string>{}),
                         m.value("doc", "")});
    } else if (type == "ready") {
      gil_enabled_ = m.value("gil_enabled", true);
      return;
    } else if (type == "failed") {
      end_zygote();
      throw StartupError(m.value("error", std::string("the zygote process could not load the app")));
    }
  }
}

void ProcessPool::control_reader_main() {
  std::string error;
  for (;;) {
    frames::ControlMessage message;
    if (!frames::receive_control(control_fd_, message, &error)) break;
    const nlohmann::json& m = message.body;
    const std::string type = m.value("type", "");
    const int worker = m.value("worker", -1);
    if (type == "spawned" || type == "spawn_failed") {
      std::lock_guard lock(mutex_);
      if (worker >= 0 && worker < config_.workers && slots_[static_cast<std::size_t>(worker)].spawn_waiting) {
        Slot& slot = slots_[static_cast<std::size_t>(worker)];
        slot.spawn_waiting = false;
        slot.spawn_answered = true;
        slot.spawned = {message.fd, m.value("pid", 0)};
        slot.spawn_error = m.value("error", type == "spawned" ? "no socket came with the answer" : "");
        message.fd = -1;
        cv_.notify_all();
      }
    } else if (type == "exited") {
      std::lock_guard lock(mutex_);
      exits_.emplace_back(m.value("pid", 0), m.value("status", ""));
      if (exits_.size() > kExitsKept) exits_.pop_front();
      cv_.notify_all();
    }
    // A worker nobody waits for any more sees end of stream, and exits.
    if (message.fd >= 0) ::close(message.fd);
  }
  int status = 0;
  std::string how = error;
  if (waitpid(zygote_pid_, &status, 0) == zygote_pid_) how = describe_wait_status(status);
  bool expected = false;
  {
    std::lock_guard lock(mutex_);
    zygote_gone_ = true;
    expected = stopping_;
    cv_.notify_all();
  }
  if (!expected) {
    spdlog::critical("the zygote process (pid {}) ended unexpectedly ({}): worker processes that "
                     "die can no longer be replaced; restart the server",
                     zygote_pid_.load(), how);
  }
}

unsigned ProcessPool::next_recycle_limit() {
  if (config_.max_requests == 0) return 0;
  if (config_.max_requests_jitter == 0) return config_.max_requests;
  thread_local std::mt19937 rng{std::random_device{}()};
  std::uniform_int_distribution<unsigned> jitter(0, config_.max_requests_jitter);
  return config_.max_requests + jitter(rng);
}

void ProcessPool::report_started(const std::string& error) {
  std::lock_guard lock(mutex_);
  if (!error.empty() && startup_error_.empty()) startup_error_ = error;
  ++started_;
  cv_.notify_all();
}

bool ProcessPool::send_to_zygote(const nlohmann::json& message) {
  std::lock_guard lock(control_send_mutex_);
  return control_fd_ >= 0 && frames::send_control(control_fd_, message);
}

std::string ProcessPool::wait_exit_status(pid_t pid, milliseconds timeout) {
  std::unique_lock lock(mutex_);
  std::string found;
  auto find = [&] {
    for (auto it = exits_.rbegin(); it != exits_.rend(); ++it) {
      if (it->first == pid) {
        found = it->second;
        return true;
      }
    }
    return false;
  };
  cv_.wait_for(lock, timeout, [&] { return find() || zygote_gone_ || hard_stop_; });
  return found;
}

void ProcessPool::wait_backoff(unsigned failures) {
  // 100 ms, 200 ms, ... up to 10 s while replacements keep dying at start-up.
  const auto delay = std::min<milliseconds>(100ms * (1u << std::min(failures - 1, 7u)), 10s);
  std::unique_lock lock(mutex_);
  cv_.wait_for(lock, delay, [&] { return stopping_.load() || hard_stop_.load(); });
}

bool ProcessPool::launch_worker(int index, WorkerLink& worker, std::string& error) {
  Slot& slot = slots_[static_cast<std::size_t>(index)];
  {
    std::lock_guard lock(mutex_);
    if (zygote_gone_) {
      error = "the zygote process is gone";
      return false;
    }
    slot.spawn_waiting = true;
    slot.spawn_answered = false;
    slot.spawned = {};
    slot.spawn_error.clear();
  }
  if (!send_to_zygote({{"type", "spawn"}, {"worker", index}})) {
    std::lock_guard lock(mutex_);
    slot.spawn_waiting = false;
    error = std::string("cannot reach the zygote process: ") + std::strerror(errno);
    return false;
  }
  WorkerLink fresh;
  {
    std::unique_lock lock(mutex_);
    cv_.wait_for(lock, kSpawnTimeout,
                 [&] { return slot.spawn_answered || zygote_gone_ || hard_stop_.load(); });
    if (!slot.spawn_answered) {
      slot.spawn_waiting = false;
      error = zygote_gone_ ? "the zygote process is gone"
              : hard_stop_ ? "the server is shutting down"
                           : "the zygote process did not answer";
      return false;
    }
    fresh = std::exchange(slot.spawned, {});
    if (fresh.fd < 0) {
      error = slot.spawn_error;
      return false;
    }
  }
  {
    // stop() sets hard_stop_ before it shuts the slots' sockets down, under fd_mutex.
    std::lock_guard lock(slot.fd_mutex);
    if (hard_stop_) {
      ::close(fresh.fd);
      error = "the server is shutting down";
      return false;
    }
    slot.fd = fresh.fd;
  }
  slot.pid = fresh.pid;
  worker = fresh;

  // Its first frame says it is ready; a worker that dies first died at start-up.
  frames::Frame hello;
  frames::ReadResult read{frames::ReadStatus::failed, ETIMEDOUT};
  frames::Limits limits;
  limits.max_meta = 64;
  limits.max_body = 0;
  if (wait_readable(fresh.fd, kHelloTimeout)) read = frames::read_frame(fresh.fd, hello, limits);
  if (read.ok() && hello.kind == frames::Kind::hello) return true;
  const std::string how = hard_stop_ ? "" : wait_exit_status(fresh.pid, kExitStatusWait);
  error = "worker process " + std::to_string(fresh.pid) +
          (how.empty() ? " did not become ready: " + read.describe() : " " + how + " before it was ready");
  retire_worker(index, worker);
  return false;
}

void ProcessPool::retire_worker(int index, WorkerLink& worker) {
  if (worker.fd < 0) return;
  Slot& slot = slots_[static_cast<std::size_t>(index)];
  {
    // Closing its socket tells a live worker to exit cleanly.
    std::lock_guard lock(slot.fd_mutex);
    ::close(worker.fd);
    slot.fd = -1;
  }
  slot.pid = 0;
  worker = {};
}

void ProcessPool::dispatcher_main(int index) {
  Slot& slot = slots_[static_cast<std::size_t>(index)];
  WorkerLink worker;
  std::optional<Job> pending;  // taken from the queue, not yet answered
  bool reported = false;
  unsigned start_failures = 0;
  unsigned recycle_limit = 0;
  std::uint64_t served = 0;
  const frames::Limits response_limits;

  auto answer = [&](HttpResponseData&& response) {
    ++slot.requests;
    Job job = std::move(*pending);
    pending.reset();
    job.complete(std::move(response));
  };
  auto replace = [&](const std::string& why) {
    spdlog::warn("{} {}; replacing it", worker_name(index, worker.pid), why);
    retire_worker(index, worker);
    ++slot.restarts;
  };

  while (!hard_stop_) {
    if (worker.fd < 0) {
      if (stopping_ && !pending && queue_.depth() == 0) break;  // no replacement needed to drain
      std::string error;
      if (launch_worker(index, worker, error)) {
        start_failures = 0;
        served = 0;
        recycle_limit = next_recycle_limit();
        if (!reported) report_started({});
        reported = true;
        spdlog::debug("worker {} ready (pid {})", index, worker.pid);
        continue;
      }
      if (!reported) {
        report_started("worker " + std::to_string(index) + " failed to start: " + error);
        break;
      }
      if (hard_stop_ || stopping_) break;
      bool zygote_gone;
      {
        std::lock_guard lock(mutex_);
        zygote_gone = zygote_gone_;
      }
      if (zygote_gone) {
        // Nothing can fork a worker any more: answer rather than let requests time out.
        for (;;) {
          if (!pending) pending = queue_.pop_until(Clock::now() + kIdleCheck);
          if (pending) {
            answer(make_error_response(503, "no worker process available (the zygote process is gone)",
                                       pending->request.request_id));
          } else if (queue_.closed() || hard_stop_) {
            break;
          }
        }
        break;
      }
      ++start_failures;
      spdlog::error("worker {}: replacement failed to start ({}); retry {} after back-off", index,
                    error, start_failures);
      wait_backoff(start_failures);
      continue;
    }

    if (!pending) {
      pending = queue_.pop_until(Clock::now() + kIdleCheck);
      if (!pending) {
        if (queue_.closed()) break;  // closed and drained
        if (idle_worker_gone(worker.fd)) {
          replace("exited while idle (" + wait_exit_status(worker.pid, kExitStatusWait) + ")");
        }
        continue;
      }
    }
    if (Clock::now() >= pending->deadline) {
      answer(make_error_response(504, "request waited past its deadline in the queue",
                                 pending->request.request_id));
      continue;
    }
    if (idle_worker_gone(worker.fd)) {
      // It died before this request reached it: the request waits for the replacement.
      replace("exited while idle (" + wait_exit_status(worker.pid, kExitStatusWait) + ")");
      continue;
    }

    slot.busy = true;
    ++busy_;
    const bool sent = frames::write_frame(worker.fd, frames::Kind::request,
                                          frames::encode_request_meta(pending->route_index, pending->request),
                                          pending->request.body);
    frames::Frame reply;
    frames::ReadResult read{frames::ReadStatus::failed, EPIPE};
    if (sent) read = frames::read_frame(worker.fd, reply, response_limits);
    --busy_;
    slot.busy = false;

    HttpResponseData response;
    if (read.ok() && reply.kind == frames::Kind::response &&
        frames::decode_response_meta(reply.meta, response)) {
      response.body = std::move(reply.body);
      answer(std::move(response));
      if (recycle_limit != 0 && ++served >= recycle_limit) {
        spdlog::info("{}: recycling after {} requests", worker_name(index, worker.pid), served);
        retire_worker(index, worker);
        ++slot.restarts;
        ++slot.recycles;
      }
      continue;
    }
    if (hard_stop_) break;  // stop() cut the socket: `pending` is answered 503 below
    if (!sent) {
      // The worker left before it had the whole request, so no handler ran:
      // the request goes to the replacement.
      replace("exited before it took request " + pending->request.request_id + " (" +
              wait_exit_status(worker.pid, kExitStatusWait) + ")");
      continue;
    }
    std::string what;
    if (read.status == frames::ReadStatus::invalid || read.ok()) {
      what = worker_name(index, worker.pid) + " sent a malformed response";
    } else {
      std::string how = wait_exit_status(worker.pid, kExitStatusWait);
      if (how.empty()) how = read.describe();
      what = worker_name(index, worker.pid) + " died while handling the request: " + how;
    }
    spdlog::error("{} ({} {}, request {})", what, pending->request.method, pending->request.path,
                  pending->request.request_id);
    answer(make_error_response(502, what, pending->request.request_id));
    replace("failed");
  }

  if (pending) {
    answer(make_error_response(503, "server is shutting down", pending->request.request_id));
  }
  retire_worker(index, worker);
  if (!reported) report_started("worker " + std::to_string(index) + ": the server is shutting down");
  std::lock_guard lock(mutex_);
  ++exited_;
  cv_.notify_all();
}

bool ProcessPool::stop(Clock::time_point deadline) {
  if (stopped_) return true;
  stopped_ = true;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
    cv_.notify_all();
  }
  queue_.close();
  auto all_exited = [&] { return exited_ >= dispatchers_; };
  std::unique_lock lock(mutex_);
  bool done = cv_.wait_until(lock, deadline, all_exited);
  lock.unlock();
  // What the workers could not take before the deadline is answered, not lost.
  for (Job& job : queue_.take_all()) {
    job.complete(make_error_response(503, "server is shutting down", job.request.request_id));
  }
  if (!done) {
    lock.lock();
    // The queue is empty now; give the running handlers a moment to return.
    done = cv_.wait_for(lock, 200ms, all_exited);
    if (!done) {
      hard_stop_ = true;
      cv_.notify_all();
    }
    lock.unlock();
  }
  if (!done) {
    spdlog::warn("{} request(s) still running in worker processes at the graceful deadline; "
                 "answering them 503 and ending their workers",
                 busy_.load());
    for (int i = 0; i < config_.workers; ++i) {
      Slot& slot = slots_[static_cast<std::size_t>(i)];
      std::lock_guard fd_lock(slot.fd_mutex);
      if (slot.fd >= 0) ::shutdown(slot.fd, SHUT_RDWR);
    }
  }
  for (int i = 0; i < config_.workers; ++i) {
    Slot& slot = slots_[static_cast<std::size_t>(i)];
    if (slot.dispatcher.joinable()) slot.dispatcher.join();
  }
  end_zygote();
  return true;
}

// Has the zygote end every worker and exit, and reaps it. The parent of the
// zygote is this process, so no process of the server is left afterwards.
void ProcessPool::end_zygote() {
  const pid_t pid = zygote_pid_;
  if (pid <= 0) return;
  {
    std::lock_guard lock(mutex_);
    stopping_ = true;
  }
  send_to_zygote({{"type", "stop"}, {"grace_ms", kWorkerGraceMs}});
  bool ended = false;
  if (control_reader_.joinable()) {
    std::unique_lock lock(mutex_);
    ended = cv_.wait_for(lock, kZygoteStopTimeout, [&] { return zygote_gone_; });
  } else {
    const auto until = Clock::now() + kZygoteStopTimeout;
    while (!ended && Clock::now() < until) {
      ended = waitpid(pid, nullptr, WNOHANG) == pid;
      if (!ended) std::this_thread::sleep_for(10ms);
    }
  }
  if (!ended) {
    // Not reaped yet, so the pid is still the zygote's. Its workers die with it.
    spdlog::warn("the zygote process (pid {}) did not stop in time; killing it", pid);
    ::kill(pid, SIGKILL);
  }
  if (control_reader_.joinable()) {
    control_reader_.join();  // it reaps the zygote
  } else if (!ended) {
    waitpid(pid, nullptr, 0);
  }
  ::close(control_fd_);
  control_fd_ = -1;
  zygote_pid_ = -1;
}

ExecutorInfo ProcessPool::info() const {
  return ExecutorInfo{"processes", config_.workers, embedded_python_version(), embedded_python_build(),
                      gil_enabled_};
}

nlohmann::json ProcessPool::stats() const {
  nlohmann::json details = nlohmann::json::array();
  nlohmann::json pids = nlohmann::json::array();
  std::uint64_t restarts = 0;
  for (int i = 0; i < config_.workers; ++i) {
    const Slot& s = slots_[static_cast<std::size_t>(i)];
    const pid_t pid = s.pid.load();
    details.push_back({{"worker", i},
                       {"pid", pid},
                       {"requests", s.requests.load()},
                       {"restarts", s.restarts.load()},
                       {"recycles", s.recycles.load()},
                       {"busy", s.busy.load()}});
    if (pid > 0) pids.push_back(pid);
    restarts += s.restarts.load();
  }
  return {{"queue_depth", queue_.depth()},
          {"max_queue", config_.max_queue},
          {"busy_workers", busy_.load()},
          {"worker_restarts", restarts},
          {"worker_pids", std::move(pids)},
          {"zygote_pid", zygote_pid_.load()},
          {"worker_details", std::move(details)}};
}

std::unique_ptr<Executor> make_process_executor(const ExecutorConfig& config) {
  return std::make_unique<ProcessPool>(config);
}

}  // namespace gilgamesh
