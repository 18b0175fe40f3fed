// The one Executor: a bounded queue in front of N worker slots, for every
// strategy (the gunicorn Arbiter/Worker split). The pool owns, once:
//   - the bounded queue (503 when full) and the start-up barrier;
//   - the deadline check before a job runs (504), and dropping jobs whose
//     client has gone;
//   - busy / request / recycle accounting and recycling after --max-requests
//     (+ jitter);
//   - a supervisor that stops handlers still running at their deadline:
//     interrupt (an exception raised in the handler's thread, or the worker
//     process killed), then, if the handler is stuck in C, abandon its thread
//     and start a fresh worker in the slot (at most max_abandoned at a time);
//   - replacement of a worker that died, with back-off while replacements fail;
//   - drain on stop (queued jobs past the deadline get 503), readiness, stats.
// A strategy only implements Worker and WorkerFactory (worker.hpp).
//
// Jobs leave the queue two ways: a lane pops one and runs it (or hands it to its
// worker's event loop: Worker::defer), or a worker's event loop pulls its own
// (Worker::doorbell: an in-process ASGI app), through a Source the pool gives it
// while it serves; its lanes then only wait for it to go. Either way the pool
// checks each job (deadline, client) and counts it towards recycling.
//
// Threads: one per slot (the worker's own thread: a sub-interpreter lives on
// it; for processes it waits on the worker's socket), one supervisor, plus
// whatever an abandoned handler still holds.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <deque>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "server/model/executor.hpp"
#include "pyworkers/pool/job_queue.hpp"
#include "pyworkers/pool/worker.hpp"

namespace gilgamesh {

struct PoolTiming {
  // After an interrupt, how long a handler has to return before its thread is
  // abandoned (in-process strategies).
  std::chrono::milliseconds interrupt_grace{1000};
  // Within the grace, the interrupt is repeated this often.
  std::chrono::milliseconds reinterrupt_every{200};
  std::chrono::milliseconds supervisor_tick{20};
  // How often an idle worker that can vanish (a process) is looked at.
  std::chrono::milliseconds idle_check{250};
  // Back-off between failed starts of a replacement: first, doubling, at most.
  std::chrono::milliseconds backoff_first{100};
  std::chrono::milliseconds backoff_max{10000};
  // After the drain deadline, how long interrupted handlers get to return.
  std::chrono::milliseconds stop_grace{200};
};

class WorkerPool final : public Executor {
 public:
  WorkerPool(const ServerConfig& config, std::unique_ptr<WorkerFactory> factory,
             PoolTiming timing = {});
  ~WorkerPool() override;
  WorkerPool(const WorkerPool&) = delete;
  WorkerPool& operator=(const WorkerPool&) = delete;

  // Throws StartupError; the caller then stops the pool (stop() says whether
  // that was clean, which decides how the process may exit).
  void start() override;
  const std::vector<RouteInfo>& routes() const override { return routes_; }
  SubmitResult submit(Job& job) override {
    job.queued_at = Clock::now();
    return queue_.push(job);
  }
  bool stop(Clock::time_point deadline) override;
  ExecutorInfo info() const override;
  PoolStats stats() const override;
  Readiness readiness() const override;
  void use_reactor(Reactor* reactor) override { factory_->use_reactor(reactor); }

 private:
  struct Lane;
  struct Run;
  class LaneSink;
  struct Slot;
  class Source;
  enum class After { drained, restart, recycle, abandoned };  // why a worker's lanes stopped serving

  std::shared_ptr<Run> launch(int slot, std::deque<Job> carried = {});
  void run_main(const std::shared_ptr<Run>& run);
  bool bring_up(Run& run, unsigned& failures);
  After serve_lanes(Run& run, Slot& slot);
  void serve(Run& run, Slot& slot, int lane);
  void serve_pulling(Run& run, Slot& slot, int lane, std::function<void()> doorbell);
  void pull_jobs(Run& run, Slot& slot, JobQueue::Puller& puller, std::vector<Job>& out, std::size_t room,
                 bool park);
  bool runnable(Job& job);
  void count_served(Run& run, Slot& slot, unsigned jobs);
  bool leave(Run& run, After why);
  bool hand_over_slot(Run& run);
  Clock::time_point threads_deadline() const;
  void make_way_for_a_lighter_worker(Run& run, Worker& worker);
  void replace_if_gone(Run& run, const char* when);
  std::optional<After> leaving(Run& run);
  std::optional<Job> next_job(Run& run);
  void run_job(Run& run, Slot& slot, int lane, Job& job);
  void complete(const Run& run, Job& job, HandleResult&& result, bool interrupted);
  void report_start(int slot, const std::vector<RouteInfo>* routes, const StartupError* error);
  void supervise();
  void check_deadline(Run& run, Clock::time_point now);
  void interrupt_at_deadline(Run& run, Lane& lane, Clock::time_point now);
  bool abandon(Run& run, bool& stuck, const std::string& what);
  void abandon_stuck_worker(Run& run);
  static void describe_lanes(Run& run, Clock::time_point now, WorkerStats& w);
  bool current_runs_finished() const;  // with mutex_ held
  bool draining_run_left() const;      // with mutex_ held
  bool drain(Clock::time_point deadline);
  bool cut_off();
  bool join_runs();
  unsigned next_recycle_limit();
  std::string describe_job(const Job& job) const;
  void wait_backoff(unsigned failures);

  const ServerConfig config_;
  const PoolTiming timing_;
  const int threads_;  // lanes per worker (--threads)
  std::unique_ptr<WorkerFactory> factory_;
  JobQueue queue_;
  std::unique_ptr<Slot[]> slots_;
  std::vector<RouteInfo> routes_;
  bool gil_enabled_ = true;
  const int max_abandoned_;

  std::atomic<bool> started_{false};
  std::atomic<bool> stopping_{false};
  std::atomic<Clock::time_point> stop_deadline_{};  // for the app's threads; set by stop() before stopping_
  std::atomic<bool> hard_stop_{false};  // the drain deadline passed
  std::atomic<int> busy_{0};
  std::atomic<int> abandoned_live_{0};
  std::atomic<int> draining_live_{0};
  // What each slot's event loop holds (Worker::held), as its lanes and the
  // supervisor last saw it; kNotServing while the slot has no serving worker.
  std::unique_ptr<std::atomic<int>[]> slot_held_;  // recycled runs still draining beside their slot's new one
  std::atomic<int> stuck_slots_{0};     // stuck handlers the abandon limit keeps in their slot
  std::atomic<std::uint64_t> job_seq_{0};
  std::atomic<std::uint64_t> replacements_{0}, interrupted_{0}, abandoned_total_{0}, killed_{0},
      recycles_{0}, dropped_disconnected_{0}, expired_in_queue_{0}, workers_started_{0},
      workers_ended_{0};

  mutable std::mutex mutex_;  // guards what follows, and the slots' `run`
  std::condition_variable cv_;
  int reported_ = 0;                         // slots whose first start finished (either way)
  std::string startup_error_;
  std::string startup_error_detail_;
  std::string last_start_error_;             // the latest failed replacement, for readiness
  std::vector<std::shared_ptr<Run>> runs_;   // every run not yet joined, current or abandoned
  std::thread supervisor_;
  bool supervisor_stop_ = false;
  bool stopped_ = false;
};

}  // namespace gilgamesh
