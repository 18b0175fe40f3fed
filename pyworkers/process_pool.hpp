// `processes`: N worker processes, each with its own interpreter, forked from
// a single-threaded zygote (zygote.hpp) that imported the app once. The server
// process never initializes Python.
//
// One dispatcher thread per worker takes Jobs from the shared bounded queue,
// writes the request frame to its worker's socket and waits for the response
// frame (frames.hpp). A worker that dies costs only the request it was
// running (502); the dispatcher has the zygote fork a replacement, backing off
// while replacements die at start-up. --max-requests recycles a worker between
// requests; stop() drains, answers the rest 503 and ends every process.
#pragma once

#include "executor.hpp"
#include "job_queue.hpp"

#include <sys/types.h>

#include <atomic>
#include <condition_variable>
#include <deque>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <utility>
#include <vector>

namespace gilgamesh {

class ProcessPool final : public Executor {
 public:
  // Forks the zygote, which starts importing the app at once. Call before the
  // process has any other thread. Throws StartupError.
  explicit ProcessPool(const ExecutorConfig& config);
  ~ProcessPool() override;

  void start() override;
  const std::vector<RouteInfo>& routes() const override { return routes_; }
  SubmitResult submit(Job& job) override { return queue_.push(job); }
  bool stop(Clock::time_point deadline) override;
  ExecutorInfo info() const override;
  nlohmann::json stats() const override;

 private:
  // The server's end of one live worker process.
  struct WorkerLink {
    int fd = -1;
    pid_t pid = 0;
  };

  struct Slot {
    std::thread dispatcher;
    std::mutex fd_mutex;  // guards fd: stop() may shut it down under the dispatcher
    int fd = -1;
    std::atomic<pid_t> pid{0};
    std::atomic<std::uint64_t> requests{0};
    std::atomic<std::uint64_t> restarts{0};
    std::atomic<std::uint64_t> recycles{0};
    std::atomic<bool> busy{false};
    // The zygote's answer to this slot's spawn request; guarded by ProcessPool::mutex_.
    bool spawn_waiting = false;
    bool spawn_answered = false;
    WorkerLink spawned;
    std::string spawn_error;
  };

  void read_start_messages();
  void control_reader_main();
  void dispatcher_main(int index);
  bool launch_worker(int index, WorkerLink& worker, std::string& error);
  void retire_worker(int index, WorkerLink& worker);
  std::string wait_exit_status(pid_t pid, std::chrono::milliseconds timeout);
  bool send_to_zygote(const nlohmann::json& message);
  void wait_backoff(unsigned failures);
  void report_started(const std::string& error);
  unsigned next_recycle_limit();
  void end_zygote();

  ExecutorConfig config_;
  JobQueue queue_;
  std::unique_ptr<Slot[]> slots_;
  std::vector<RouteInfo> routes_;
  bool gil_enabled_ = true;
  std::atomic<int> busy_{0};

  std::atomic<pid_t> zygote_pid_{-1};
  int control_fd_ = -1;
  std::mutex control_send_mutex_;
  std::thread control_reader_;

  // Guards what the control reader hands the dispatchers, and the lifecycle.
  mutable std::mutex mutex_;
  std::condition_variable cv_;
  std::deque<std::pair<pid_t, std::string>> exits_;  // recent worker exits: pid, how
  bool zygote_gone_ = false;    // the control reader saw the zygote end (and reaped it)
  std::atomic<bool> stopping_{false};   // stop() began: no replacements, no back-off waits
  std::atomic<bool> hard_stop_{false};  // stop()'s deadline passed: dispatchers give up at once
  int dispatchers_ = 0;         // dispatcher threads started
  int started_ = 0;             // dispatchers whose first worker came up (or failed)
  int exited_ = 0;              // dispatchers that returned
  std::string startup_error_;
  bool stopped_ = false;        // stop() ran (called from one thread: main)
};

std::unique_ptr<Executor> make_process_executor(const ExecutorConfig& config);

}  // namespace gilgamesh
