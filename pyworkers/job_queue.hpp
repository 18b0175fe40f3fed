// A bounded multi-producer, multi-consumer queue of Jobs. Producers are the
// I/O threads (never block: a full queue is answered 503 by the caller);
// consumers are worker threads, which block in pop() while idle.
#pragma once

#include "executor.hpp"

#include <condition_variable>
#include <deque>
#include <mutex>
#include <optional>

namespace gilgamesh {

class JobQueue {
 public:
  explicit JobQueue(std::size_t capacity) : capacity_(capacity) {}

  // Moves the job in when accepted; leaves it untouched otherwise.
  SubmitResult push(Job& job) {
    {
      std::lock_guard lock(mutex_);
      if (closed_) return SubmitResult::stopping;
      if (jobs_.size() >= capacity_) return SubmitResult::queue_full;
      jobs_.push_back(std::move(job));
    }
    ready_.notify_one();
    return SubmitResult::accepted;
  }

  // Blocks until a job is there; nullopt once the queue is closed and empty.
  std::optional<Job> pop() {
    std::unique_lock lock(mutex_);
    ready_.wait(lock, [&] { return closed_ || !jobs_.empty(); });
    if (jobs_.empty()) return std::nullopt;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    return job;
  }

  // Like pop(), but also gives up at `deadline` (closed() tells the two nullopts
  // apart). For consumers that must look at something else while idle.
  std::optional<Job> pop_until(Clock::time_point deadline) {
    std::unique_lock lock(mutex_);
    ready_.wait_until(lock, deadline, [&] { return closed_ || !jobs_.empty(); });
    if (jobs_.empty()) return std::nullopt;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    return job;
  }

  bool closed() const {
    std::lock_guard lock(mutex_);
    return closed_;
  }

  // No more pushes; pop() drains what is queued, then returns nullopt.
  void close() {
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
    }
    ready_.notify_all();
  }

  // Everything still queued (used after a drain deadline has passed).
  std::deque<Job> take_all() {
    std::lock_guard lock(mutex_);
    return std::exchange(jobs_, {});
  }

  std::size_t depth() const {
    std::lock_guard lock(mutex_);
    return jobs_.size();
  }

 private:
  const std::size_t capacity_;
  mutable std::mutex mutex_;
  std::condition_variable ready_;
  std::deque<Job> jobs_;
  bool closed_ = false;
};

}  // namespace gilgamesh
