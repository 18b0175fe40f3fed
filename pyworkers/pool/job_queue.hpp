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
//
// Pullers are the other kind of consumer: an ASGI worker's event loop that takes
// jobs itself, between its callbacks, and never blocks here (an in-process loop
// spins as a consumer does first, where there is a core to spare). Before its
// loop waits it parks (pull() took nothing); a push then rings a parked puller
// (its doorbell: the loop's eventfd) rather than waking a blocked consumer: the
// one with the most room (its loop holds the fewest requests), among equals the
// one that parked last (its caches are the warmest). A puller that takes a job
// while more wait rings the next parked one. So an idle loop is woken for a job,
// a busy one takes the next job when it is done with its callbacks, and no
// thread sits between the I/O thread and the loop. A doorbell is rung after the
// queue's lock is released: it may pull at once, on the ringing thread (a
// `processes` worker's does, and writes the jobs to its process's socket).
// What the pullers have room for (as of their last pull) does not count against
// the capacity: those jobs are theirs as soon as they look, as a lane's job is
// its loop's once popped, and a burst must not be refused while the loops that
// will take it are waking up.
#pragma once

#include "server/model/executor.hpp"

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <deque>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>
#include <vector>

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
  // An event loop that pulls: `ring` wakes it, from whichever thread pushed (or pulled,
  // or closed), without the queue's lock: it must not block, and may pull. Registered
  // with add_puller() while it pulls.
  struct Puller {
    std::function<void()> ring;
    bool spins = true;  // may spin in pull() before it parks (false: its pulls run on other threads' time)
    std::atomic<bool> parked{false};  // written under the queue's mutex
    std::size_t room = 0;  // what it can still take, as of its last pull; guarded by the queue's mutex
    std::atomic<int> ringing{0};  // rings picked under the lock and not yet returned
  };

  // `spin`: how long an idle consumer watches for work before it parks (0: parks at once).
  explicit JobQueue(std::size_t capacity, std::chrono::nanoseconds spin = {})
      : capacity_(capacity), spin_(spin) {}

  // Moves the job in when accepted; leaves it untouched otherwise.
  SubmitResult push(Job& job) {
    Puller* bell;
    bool wake;
    {
      std::lock_guard lock(mutex_);
      if (closed_) return SubmitResult::stopping;
      // What the pullers have room for is not waiting: it is theirs as soon as they look
      // (a lane pops its job at once; a loop takes it between its callbacks).
      if (jobs_.size() >= capacity_ + pullers_room_) return SubmitResult::queue_full;
      jobs_.push_back(std::move(job));
      depth_.store(jobs_.size(), std::memory_order_release);
      bell = pick_parked();
      wake = !bell && sleepers_ > 0;
    }
    if (bell) {
      ring(*bell);
    } else if (wake) {
      ready_.notify_one();
    }
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

  void add_puller(Puller& p) {
    std::lock_guard lock(mutex_);
    pullers_.push_back(&p);
  }
  // After it returns, `p` is not rung again, and no ring of it is still running.
  // Not from `p`'s own ring.
  void remove_puller(Puller& p) {
    {
      std::lock_guard lock(mutex_);
      unpark_locked(p);
      pullers_room_ -= p.room;
      p.room = 0;
      pullers_.erase(std::remove(pullers_.begin(), pullers_.end(), &p), pullers_.end());
    }
    while (p.ringing.load(std::memory_order_acquire) > 0) std::this_thread::yield();
  }

  // Never blocks: moves up to `most` jobs into `out`, fewer when other pullers are
  // registered (each takes its share of what waits, at least one); `most` is the room
  // the puller has, and what it leaves counts as room no push is refused for. None taken and
  // `park`: `p` is rung when one comes (once; pull() or unpark() end it), or when the
  // queue closes. A puller that took some while more wait rings the next parked one.
  // With `park` and nothing queued a puller that `spins` first spins for up to `spin`
  // (the loop's thread, its Python lock released), so that a request coming meanwhile
  // costs no doorbell.
  void pull(Puller& p, std::vector<Job>& out, std::size_t most, bool park) {
    // About to park: watch the depth first, as an idle consumer does in pop_until().
    if (park && p.spins && spin_.count() > 0 && depth_.load(std::memory_order_acquire) == 0) {
      spin_for_work(Clock::now() + spin_);
    }
    Puller* next = nullptr;
    {
      std::lock_guard lock(mutex_);
      pull_locked(p, out, most, park, next);
    }
    if (next) ring(*next);
  }

  void unpark(Puller& p) {
    if (!p.parked.load(std::memory_order_relaxed)) return;  // set and cleared only under the lock
    std::lock_guard lock(mutex_);
    unpark_locked(p);
  }

  // No more pushes; pop() drains what is queued, then returns nullopt.
  void close() {
    std::vector<Puller*> bells;
    {
      std::lock_guard lock(mutex_);
      closed_ = true;
      closed_flag_.store(true, std::memory_order_release);
      while (Puller* p = pick_parked()) bells.push_back(p);
    }
    ready_.notify_all();
    for (Puller* p : bells) ring(*p);
  }

  // Everything still queued (used after a drain deadline has passed).
  std::deque<Job> take_all() {
    std::lock_guard lock(mutex_);
    depth_.store(0, std::memory_order_release);
    return std::exchange(jobs_, {});
  }

  std::size_t depth() const { return depth_.load(std::memory_order_acquire); }

 private:
  void pull_locked(Puller& p, std::vector<Job>& out, std::size_t most, bool park, Puller*& next) {
    const std::size_t share = (jobs_.size() + pullers_.size() - 1) / std::max<std::size_t>(1, pullers_.size());
    const std::size_t n = std::min({most, jobs_.size(), std::max<std::size_t>(1, share)});
    for (std::size_t i = 0; i < n; ++i) {
      out.push_back(std::move(jobs_.front()));
      jobs_.pop_front();
    }
    depth_.store(jobs_.size(), std::memory_order_release);
    pullers_room_ = pullers_room_ - p.room + (most - n);
    p.room = most - n;
    if (n > 0 || !park || closed_) {
      unpark_locked(p);
      if (n > 0 && !jobs_.empty()) next = pick_parked();
    } else if (!p.parked.load(std::memory_order_relaxed)) {
      p.parked.store(true, std::memory_order_relaxed);
      parked_.push_back(&p);
    }
  }

  std::optional<Job> take(std::unique_lock<std::mutex>&) {
    if (jobs_.empty()) return std::nullopt;
    Job job = std::move(jobs_.front());
    jobs_.pop_front();
    depth_.store(jobs_.size(), std::memory_order_release);
    return job;
  }

  // With the lock: the parked puller to ring (nullptr: none is parked), no longer
  // parked. The one with the most room; among equals the one that parked last (its
  // caches are the warmest). ring() it once the lock is released.
  Puller* pick_parked() {
    if (parked_.empty()) return nullptr;
    auto best = parked_.rbegin();
    for (auto it = parked_.rbegin(); it != parked_.rend(); ++it) {
      if ((*it)->room > (*best)->room) best = it;
    }
    Puller* p = *best;
    parked_.erase(std::next(best).base());
    p->parked.store(false, std::memory_order_relaxed);
    p->ringing.fetch_add(1, std::memory_order_relaxed);
    return p;
  }
  // Without the lock: rings a puller pick_parked() gave.
  static void ring(Puller& p) {
    p.ring();
    p.ringing.fetch_sub(1, std::memory_order_release);
  }
  void unpark_locked(Puller& p) {
    if (!p.parked.load(std::memory_order_relaxed)) return;
    p.parked.store(false, std::memory_order_relaxed);
    parked_.erase(std::remove(parked_.begin(), parked_.end(), &p), parked_.end());
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
  std::vector<Puller*> pullers_;  // registered; guarded by mutex_
  std::vector<Puller*> parked_;   // parked, in the order they parked; guarded by mutex_
  std::size_t pullers_room_ = 0;  // the sum of the pullers' room; guarded by mutex_
  std::atomic<std::size_t> depth_{0};      // jobs_.size(), readable without the lock
  std::atomic<bool> closed_flag_{false};   // closed_, readable without the lock
};

}  // namespace gilgamesh
