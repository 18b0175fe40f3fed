// A bounded multi-producer, multi-consumer queue of Jobs. Producers are the
// I/O threads (never block: a full queue is answered 503 by the caller);
// consumers are worker threads, which block in pop() while idle.
//
// The hand-off is the per-request cost that matters for cheap handlers: a
// consumer that parks in the kernel (futex wait) must be woken by the producer
// (futex wake), two context switches per request. So a consumer first spins
// for a bounded time (pause instructions, no lock held) watching the depth, and
// only then parks; a producer notifies only when a consumer is actually parked
// (`sleepers_`, read and written under the mutex, so no wake is lost).
// Spinning is worth it only while there is an idle core to spin on: the time is
// PoolOptions::worker_spin (--worker-spin; 0 turns it off).
#pragma once

#include "server/model/executor.hpp"

#include <atomic>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

namespace gilgamesh {

inline void cpu_relax() {
#if defined(__x86_64__) || defined(__i386__)
  __builtin_ia32_pause();
#elif defined(__aarch64__)
  asm volatile("yield" ::: "memory");
#endif
}

class JobQueue {
 public:
  // `spin`: how long an idle consumer watches for work before it parks (0: parks at once).
  explicit JobQueue(std::size_t capacity, std::chrono::nanoseconds spin = {})
      : capacity_(capacity), spin_(spin) {}

  // Moves the job in when accepted; leaves it untouched otherwise.
  SubmitResult push(Job& job) {
    bool wake;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return SubmitResult::stopping;
      if (jobs_.size() >= capacity_) return SubmitResult::queue_full;
      jobs_.push_back(std::move(job));
      depth_.store(jobs_.size(), std::memory_order_release);
      wake = sleepers_ > 0;
    }
    if (wake) ready_.notify_one();
    return SubmitResult::accepted;
  }

  // Blocks until a job is there; nullopt once the queue is closed and empty.
  std::optional<Job> pop() { return pop_until(Clock::time_point::max()); }

  // Like pop(), but also gives up at `deadline` (closed() tells the two nullopts
  // apart). For consumers that must look at something else while idle.
  std::optional<Job> pop_until(Clock::time_point deadline) {
    if (spin_.count() > 0) spin_for_work(std::min(deadline, Clock::now() + spin_));
    std::unique_lock lock(mutex_);
    if (jobs_.empty() && !closed_) {
      ++sleepers_;
      if (deadline == Clock::time_point::max()) {
        ready_.wait(lock, [&] { return closed_ || !jobs_.empty(); });
      } else {
        ready_.wait_until(lock, deadline, [&] { return closed_ || !jobs_.empty(); });
      }
      --sleepers_;
    }
    return take(lock);
  }

  bool closed() const { return closed_flag_.load(std::memory_order_acquire); }

  // No more pushes; pop() drains what is queued, then returns nullopt.
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      closed_flag_.store(true, std::memory_order_release);
    }
    ready_.notify_all();
  }

  // Everything still queued (used after a drain deadline has passed).
  std::deque<Job> take_all() {
    std::lock_guard lock(mutex_);
    depth_.store(0, std::memory_order_release);
    return std::exchange(jobs_, {});
  }

  std::size_t depth() const { return depth_.load(std::memory_order_acquire); }

 private:
  std::optional<Job> take(std::unique_lock<std::mutex>&) {
    if (jobs_.empty()) return std::nullopt;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    depth_.store(jobs_.size(), std::memory_order_release);
    return job;
  }

  // Watches the depth, without the lock, until there is work, the queue closes, or `until`.
  void spin_for_work(Clock::time_point until) const {
    do {
      for (int i = 0; i < 64; ++i) {  // the clock is read once per 64 pauses (a few microseconds)
        if (depth_.load(std::memory_order_acquire) > 0 || closed_flag_.load(std::memory_order_relaxed)) {
          return;
        }
        cpu_relax();
      }
    } while (Clock::now() < until);
  }

  const std::size_t capacity_;
  const std::chrono::nanoseconds spin_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Job> jobs_;        // guarded by mutex_
  bool closed_ = false;         // guarded by mutex_
  int sleepers_ = 0;            // consumers waiting on ready_; guarded by mutex_
  std::atomic<std::size_t> depth_{0};      // jobs_.size(), readable without the lock
  std::atomic<bool> closed_flag_{false};   // closed_, readable without the lock
};

}  // namespace gilgamesh
