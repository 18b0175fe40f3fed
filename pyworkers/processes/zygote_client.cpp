#include "pyworkers/processes/zygote_client.hpp"

#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <spdlog/spdlog.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstring>
#include <filesystem>

#include "pyworkers/processes/frames.hpp"
#include "pyworkers/processes/zygote.hpp"

extern char** environ;

namespace gilgamesh {

namespace {

using namespace std::chrono_literals;
using std::chrono::milliseconds;

constexpr auto kSpawnTimeout = 10s;       // for the zygote to answer a spawn request
constexpr auto kZygoteUpTimeout = 10s;    // spawn() waits this long for a new zygote
constexpr auto kZygoteStopTimeout = 8s;   // past the workers' grace, for the zygote to end them and exit
constexpr auto kRestartBackoffMax = 10s;
constexpr std::size_t kExitsKept = 1024;

}  // namespace

ZygoteClient::ZygoteClient(const ServerConfig& config) : config_(config) {
  // Workers outlive a zygote that dies; they must still be reaped, by us.
  prctl(PR_SET_CHILD_SUBREAPER, 1);
}

ZygoteClient::~ZygoteClient() { stop(); }

void ZygoteClient::start() {
  thread_ = std::thread([this] { thread_main(); });
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return started_; });
  if (!start_error_.empty()) throw StartupError(start_error_, start_detail_);
}

// Spawns a zygote and reads its start messages. On the client thread only:
// the zygote dies with the thread that started it (PR_SET_PDEATHSIG).
bool ZygoteClient::launch(std::string& error, std::string& detail) {
  int sv[2];
  if (socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_CLOEXEC, 0, sv) < 0) {
    error = std::string("cannot create the zygote's control socket: ") + std::strerror(errno);
    return false;
  }
  // Its end becomes fd 3 in the zygote (dup2 clears close-on-exec there only).
  const int child_end = fcntl(sv[1], F_DUPFD_CLOEXEC, 10);
  ::close(sv[1]);
  std::error_code ec;
  const std::string exe = std::filesystem::read_symlink("/proc/self/exe", ec).string();
  const std::string payload =
      nlohmann::json{{"config", config_},
                     {"log_level", spdlog::level::to_string_view(spdlog::get_level()).data()}}
          .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  const std::string server_pid = std::to_string(getpid());
  const std::string fd_text = std::to_string(kZygoteControlFd);
  const char* argv[] = {exe.c_str(), kZygoteFlag, fd_text.c_str(), server_pid.c_str(), payload.c_str(),
                        nullptr};

  posix_spawn_file_actions_t actions;
  posix_spawn_file_actions_init(&actions);
  posix_spawn_file_actions_adddup2(&actions, child_end, kZygoteControlFd);
  // Nothing else of the server's crosses: its listening socket, held open by the zygote
  // and every worker it forks, would go on accepting connections that nobody serves
  // once the server closes it to drain; nor do client connections.
  posix_spawn_file_actions_addclosefrom_np(&actions, kZygoteControlFd + 1);
  posix_spawnattr_t attr;
  init_spawn_attributes(attr);
  // Every process of this server says whose it is (ps, tests, the app), from its
  // first environment on (/proc/PID/environ shows only that one).
  std::vector<std::string> env_text;
  for (char** e = environ; *e != nullptr; ++e) {
    if (std::strncmp(*e, "GILGAMESH_SERVER_PID=", 21) != 0) env_text.emplace_back(*e);
  }
  env_text.push_back("GILGAMESH_SERVER_PID=" + server_pid);
  std::vector<char*> envp;
  for (auto& e : env_text) envp.push_back(e.data());
  envp.push_back(nullptr);
  pid_t pid = 0;
  const int rc = ec ? ENOENT
                    : posix_spawn(&pid, exe.c_str(), &actions, &attr, const_cast<char* const*>(argv),
                                  envp.data());
  posix_spawn_file_actions_destroy(&actions);
  posix_spawnattr_destroy(&attr);
  ::close(child_end);
  if (rc != 0) {
    ::close(sv[0]);
    error = "cannot start the zygote process (" + exe + "): " + std::strerror(rc);
    return false;
  }
  {
    std::lock_guard lock(send_mutex_);
    control_fd_ = sv[0];
  }
  zygote_pid_ = pid;
  spdlog::debug("zygote process started (pid {})", pid);
  if (read_start_messages(error, detail)) return true;
  // It exits after saying why, or has died: reap it.
  int status = 0;
  if (waitpid(pid, &status, 0) == pid && error.empty()) error = describe_wait_status(status);
  {
    std::lock_guard lock(send_mutex_);
    ::close(control_fd_);
    control_fd_ = -1;
  }
  zygote_pid_ = -1;
  return false;
}

bool ZygoteClient::read_start_messages(std::string& error, std::string& detail) {
  std::vector<RouteInfo> routes;
  for (;;) {
    frames::ControlMessage message;
    std::string read_error;
    if (!frames::receive_control(control_fd_, message, &read_error)) {
      error = "the zygote process ended while importing app '" + config_.app.target + "'";
      return false;
    }
    message.close_fds();
    const nlohmann::json& m = message.body;
    const std::string type = m.value("type", "");
    if (type == "route") {
      routes.push_back({m.value("path", ""), m.value("methods", std::vector<std::string>{}),
                        m.value("doc", "")});
    } else if (type == "ready") {
      gil_enabled_ = m.value("gil_enabled", true);
      if (routes_.empty()) {
        routes_ = std::move(routes);
      } else if (routes.size() != routes_.size() ||
                 !std::equal(routes.begin(), routes.end(), routes_.begin(), [](const auto& a, const auto& b) {
                   return a.path == b.path && a.methods == b.methods;
                 })) {
        send({{"type", "stop"}, {"grace_ms", 0}});
        error = "the new zygote process loaded different routes than at start-up";
        return false;
      }
      return true;
    } else if (type == "failed") {
      error = m.value("error", std::string("the zygote process could not load the app"));
      detail = m.value("detail", std::string());
      return false;
    }
  }
}

void ZygoteClient::thread_main() {
  {
    std::string error, detail;
    const bool ok = launch(error, detail);
    std::lock_guard lock(mutex_);
    started_ = true;
    up_ = ok;
    start_error_ = ok ? std::string() : error;
    start_detail_ = detail;
    cv_.notify_all();
    if (!ok) return;
  }
  for (;;) {
    pollfd p{control_fd_, POLLIN, 0};
    const int n = poll(&p, 1, 100);
    if (n > 0) {
      frames::ControlMessage message;
      if (frames::receive_control(control_fd_, message)) {
        on_message(message.fds, message.body);
        message.close_fds();
      } else {
        // End of stream: the zygote is gone (told to stop, or it died).
        int status = 0;
        const pid_t pid = zygote_pid_;
        const bool reaped = waitpid(pid, &status, 0) == pid;
        {
          std::lock_guard lock(send_mutex_);
          ::close(control_fd_);
          control_fd_ = -1;
        }
        zygote_pid_ = -1;
        bool stopping;
        {
          std::lock_guard lock(mutex_);
          stopping = stopping_;
        }
        if (stopping) break;
        zygote_ended(reaped ? status : -1);
        unsigned failures = 0;
        for (;;) {
          std::string error, detail;
          if (launch(error, detail)) {
            ++restarts_;
            spdlog::warn("a new zygote process is ready (pid {})", zygote_pid_.load());
            std::lock_guard lock(mutex_);
            up_ = true;
            down_reason_.clear();
            cv_.notify_all();
            break;
          }
          ++failures;
          const auto delay = std::min<milliseconds>(100ms * (1u << std::min(failures, 7u)), kRestartBackoffMax);
          spdlog::error("a new zygote process failed to start ({}); retry {} in {} ms", error, failures,
                        delay.count());
          std::unique_lock lock(mutex_);
          down_reason_ = "the zygote process died and a new one failed to start: " + error;
          if (cv_.wait_for(lock, delay, [&] { return stopping_; })) break;
        }
        if (control_fd_ < 0) break;  // stopping while restarting
      }
    } else if (n < 0 && errno != EINTR) {
      spdlog::critical("zygote control socket: poll: {}", std::strerror(errno));
      break;
    }
    reap_children();
  }
  reap_children();
}

void ZygoteClient::zygote_ended(int status) {
  const std::string how = status < 0 ? "it was reaped elsewhere" : describe_wait_status(status);
  spdlog::critical("the zygote process ended unexpectedly ({}); starting a new one (workers "
                   "already running keep serving)",
                   how);
  std::lock_guard lock(mutex_);
  up_ = false;
  down_reason_ = "the zygote process died (" + how + "); a new one is starting";
  // Spawn requests in flight died with it.
  for (SpawnWait* w : spawn_waits_) {
    if (w->answered) continue;
    w->answered = true;
    w->result.error = "the zygote process died";
  }
  spawn_waits_.clear();
  cv_.notify_all();
}

void ZygoteClient::on_message(std::vector<int>& fds, const nlohmann::json& m) {
  const std::string type = m.value("type", "");
  if (type == "spawned" || type == "spawn_failed") {
    const int slot = m.value("worker", -1);
    std::lock_guard lock(mutex_);
    auto it = std::find_if(spawn_waits_.begin(), spawn_waits_.end(),
                           [&](SpawnWait* w) { return w->slot == slot && !w->answered; });
    if (it != spawn_waits_.end()) {
      SpawnWait* w = *it;
      spawn_waits_.erase(it);
      w->answered = true;
      w->result.pid = m.value("pid", 0);
      const int lanes = m.value("lanes", 1);
      const std::size_t expected = static_cast<std::size_t>(lanes) + (lanes > 1 ? 1 : 0);
      if (type == "spawn_failed") {
        w->result.error = m.value("error", std::string("spawn failed"));
      } else if (lanes != std::max(1, config_.pool.threads) || fds.size() != expected) {
        w->result.error = "the zygote's answer came with " + std::to_string(fds.size()) +
                          " socket(s) for " + std::to_string(lanes) + " lane(s); expected " +
                          std::to_string(std::max(1, config_.pool.threads)) + " lane(s)";
      } else {
        w->result.fds = std::move(fds);
        fds.clear();
      }
      cv_.notify_all();
    }
  } else if (type == "exited") {
    record_exit(m.value("pid", 0), m.value("status", ""));
  }
  // A worker nobody waits for any more sees end of stream, and exits (the caller closes them).
}

void ZygoteClient::record_exit(pid_t pid, std::string how) {
  std::lock_guard lock(mutex_);
  exits_.emplace_back(pid, std::move(how));
  if (exits_.size() > kExitsKept) exits_.pop_front();
  cv_.notify_all();
}

// Workers orphaned by a zygote that died are our children now (subreaper),
// and so are whatever processes a handler started and left behind.
void ZygoteClient::reap_children() {
  for (;;) {
    int status = 0;
    const pid_t zygote = zygote_pid_;
    // Never the zygote itself: its end is read from the control socket first.
    siginfo_t info{};
    if (waitid(P_ALL, 0, &info, WEXITED | WNOHANG | WNOWAIT) < 0 || info.si_pid == 0) return;
    if (info.si_pid == zygote) return;
    const pid_t pid = waitpid(info.si_pid, &status, WNOHANG);
    if (pid <= 0) return;
    record_exit(pid, describe_wait_status(status));
  }
}

bool ZygoteClient::send(const nlohmann::json& message) {
  std::lock_guard lock(send_mutex_);
  return control_fd_ >= 0 && frames::send_control(control_fd_, message);
}

ZygoteClient::Spawned ZygoteClient::spawn(int slot) {
  SpawnWait wait{0, slot};
  {
    std::unique_lock lock(mutex_);
    if (!cv_.wait_for(lock, kZygoteUpTimeout, [&] { return up_ || cancel_; }) || cancel_) {
      return {{}, 0, cancel_ ? "the server is shutting down" : down_reason_};
    }
    wait.seq = ++spawn_seq_;
    spawn_waits_.push_back(&wait);
  }
  if (!send({{"type", "spawn"}, {"worker", slot}})) {
    std::lock_guard lock(mutex_);
    std::erase(spawn_waits_, &wait);
    return {{}, 0, std::string("cannot reach the zygote process: ") + std::strerror(errno)};
  }
  std::unique_lock lock(mutex_);
  cv_.wait_for(lock, kSpawnTimeout, [&] { return wait.answered || cancel_; });
  if (!wait.answered) {
    std::erase(spawn_waits_, &wait);
    return {{}, 0, cancel_ ? "the server is shutting down" : "the zygote process did not answer"};
  }
  return wait.result;
}

std::string ZygoteClient::exit_status(pid_t pid, milliseconds timeout) {
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
  cv_.wait_for(lock, timeout, [&] { return find() || cancel_; });
  return found;
}

std::optional<std::string> ZygoteClient::unavailable() const {
  std::lock_guard lock(mutex_);
  if (up_ || !started_) return std::nullopt;
  return down_reason_.empty() ? std::string("the zygote process is not running") : down_reason_;
}

void ZygoteClient::cancel_waits() {
  std::lock_guard lock(mutex_);
  cancel_ = true;
  cv_.notify_all();
}

void ZygoteClient::stop(milliseconds worker_grace) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return;
    stopping_ = true;
    cancel_ = true;
    cv_.notify_all();
  }
  if (!thread_.joinable()) return;
  send({{"type", "stop"}, {"grace_ms", worker_grace.count()}});
  // The client thread ends once the zygote has exited; a zygote that does not
  // is killed (its workers are ended by closing their sockets, by the pool).
  const auto until = Clock::now() + worker_grace + kZygoteStopTimeout;
  while (zygote_pid_.load() > 0 && Clock::now() < until) std::this_thread::sleep_for(10ms);
  if (const pid_t pid = zygote_pid_.load(); pid > 0) {
    spdlog::warn("the zygote process (pid {}) did not stop in time; killing it", pid);
    ::kill(pid, SIGKILL);
  }
  thread_.join();
  // Orphaned workers leave once their sockets are closed; reap them (bounded).
  const auto reap_until = Clock::now() + 2s;
  for (;;) {
    int status = 0;
    const pid_t pid = waitpid(-1, &status, WNOHANG);
    if (pid < 0) break;  // no child left
    if (pid == 0) {
      if (Clock::now() >= reap_until) break;
      std::this_thread::sleep_for(10ms);
    }
  }
}

}  // namespace gilgamesh
