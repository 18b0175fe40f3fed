// The server's side of the zygote (zygote.hpp), for the `processes` strategy.
//
// The zygote is started by executing this binary again (posix_spawn of
// /proc/self/exe with --internal-zygote): the server is multi-threaded and must
// not fork Python itself. One thread of the client owns the zygote: it starts
// it, reads its control messages (routes, spawned workers, exits), reaps every
// child (the server is their subreaper, so workers outlive a zygote that dies
// and are still reaped), and starts a new zygote when one dies, backing off
// while new ones fail. Worker processes do not die with the zygote: a worker
// leaves when its socket to the server closes.
#pragma once

#include <sys/types.h>

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "server/model/executor.hpp"

namespace gilgamesh {

class ZygoteClient {
 public:
  explicit ZygoteClient(const ServerConfig& config);
  ~ZygoteClient();
  ZygoteClient(const ZygoteClient&) = delete;
  ZygoteClient& operator=(const ZygoteClient&) = delete;

  // Starts the zygote and waits until it has imported the app. Throws
  // StartupError with the zygote's reason.
  void start();
  // Valid after start().
  const std::vector<RouteInfo>& routes() const { return routes_; }
  bool gil_enabled() const { return gil_enabled_; }

  struct Spawned {
    // The server's ends of the worker's sockets (close-on-exec), owned by the
    // caller: one per lane (--threads), then the worker control socket when
    // there are several lanes (zygote.hpp). Empty on failure.
    std::vector<int> fds;
    pid_t pid = 0;
    std::string error;  // set when fds is empty
  };
  // A new worker process for `slot`. While a new zygote is being started this
  // waits for it (bounded); from any thread.
  Spawned spawn(int slot);
  // How process `pid` ended ("killed by signal 9 (SIGKILL)"), waiting up to
  // `timeout` for the news; empty if none came.
  std::string exit_status(pid_t pid, std::chrono::milliseconds timeout);
  // Why no worker can be started now (the zygote is gone), or nothing.
  std::optional<std::string> unavailable() const;
  pid_t zygote_pid() const { return zygote_pid_.load(); }
  std::uint64_t zygote_restarts() const { return restarts_.load(); }

  // The pool is stopping: waits in spawn() and exit_status() end now.
  void cancel_waits();
  // Has the zygote end every worker and exit; reaps it. Idempotent. The
  // workers get `worker_grace` to leave on their own (a worker waits for its
  // app's threads), then SIGTERM, then SIGKILL.
  void stop(std::chrono::milliseconds worker_grace = std::chrono::milliseconds(500));

 private:
  void thread_main();
  bool launch(std::string& error, std::string& detail);
  bool read_start_messages(std::string& error, std::string& detail);
  void on_message(std::vector<int>& fds, const nlohmann::json& message);
  void zygote_ended(int status);
  void reap_children();
  void record_exit(pid_t pid, std::string how);
  bool send(const nlohmann::json& message);

  const ServerConfig config_;
  std::vector<RouteInfo> routes_;
  bool gil_enabled_ = true;

  std::thread thread_;
  std::atomic<pid_t> zygote_pid_{-1};
  std::atomic<std::uint64_t> restarts_{0};
  int control_fd_ = -1;             // written under send_mutex_; replaced by the client thread
  std::mutex send_mutex_;

  mutable std::mutex mutex_;        // guards what follows
  std::condition_variable cv_;
  bool started_ = false;            // start() has its answer
  std::string start_error_, start_detail_;
  bool up_ = false;                 // a zygote is running and ready
  std::string down_reason_;         // why not, while it is being restarted
  bool cancel_ = false;
  bool stopping_ = false;
  std::uint64_t spawn_seq_ = 0;
  struct SpawnWait {
    std::uint64_t seq;
    int slot;
    bool answered = false;
    Spawned result;
  };
  std::deque<SpawnWait*> spawn_waits_;  // oldest first; the zygote answers in order
  std::deque<std::pair<pid_t, std::string>> exits_;
};

}  // namespace gilgamesh
