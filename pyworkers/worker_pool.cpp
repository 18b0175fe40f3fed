#include "worker_pool.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <limits>
#include <optional>
#include <random>

#include "response.hpp"

namespace gilgamesh {

using namespace std::chrono_literals;

namespace {

constexpr auto kClientCheckAfter = 2ms;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Resident and proportional set size of another process, from /proc.
void add_memory(nlohmann::json& out, long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  // The first line names the range ("55a2...-7ffc... ---p 00000000 00:00 0 [rollup]"),
  // not a "Key: value kB" pair: reading it as one would stop the loop at once.
  in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "Rss:") out["rss_bytes"] = kib * 1024;
    if (key == "Pss:") out["pss_bytes"] = kib * 1024;
    in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  }
}

bool same_routes(const std::vector<RouteInfo>& a, const std::vector<RouteInfo>& b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    if (a[i].path != b[i].path || a[i].methods != b[i].methods) return false;
  }
  return true;
}

}  // namespace

// One thread's tenure of a slot. A slot gets a new Run when its handler thread
// is abandoned; otherwise one Run serves it (recycling and replacing workers)
// until the pool stops.
struct WorkerPool::Run {
  Run(int s, bool first) : slot(s), initial(first) {}
  const int slot;
  const bool initial;  // started by start(): its first start-up is the pool's
  std::thread thread;
  std::unique_ptr<Worker> worker;  // made, used and destroyed on `thread`
  std::atomic<SlotState> state{SlotState::starting};
  std::atomic<long> pid{0};
  std::atomic<std::int64_t> interpreter_id{-1};
  std::atomic<bool> finished{false};
  std::optional<Job> carried;  // taken from the queue when the worker turned out to be gone

  // What the supervisor needs of the job in progress. Guarded by `mutex`;
  // worker->interrupt() is called only under it, and only while job_seq != 0.
  std::mutex mutex;
  std::uint64_t job_seq = 0;  // 0: no job running
  Clock::time_point job_started{};
  Clock::time_point job_deadline{};
  std::string job_what;
  bool interrupted = false;
  Clock::time_point interrupted_at{};
  Clock::time_point last_interrupt{};
  bool stuck = false;      // counted in stuck_slots_: past grace, but the abandon limit is reached
  bool abandoned = false;  // a new Run serves the slot; this one ends when its handler returns
};

struct WorkerPool::Slot {
  std::shared_ptr<Run> run;  // the run serving the slot now; guarded by WorkerPool::mutex_
  std::atomic<std::uint64_t> requests{0}, recycles{0}, replacements{0};
};

const char* WorkerPool::state_name(SlotState s) {
  switch (s) {
    case SlotState::starting: return "starting";
    case SlotState::idle: return "idle";
    case SlotState::busy: return "busy";
    case SlotState::recycling: return "recycling";
    case SlotState::interrupting: return "interrupting";
    case SlotState::replacing: return "replacing";
    case SlotState::stopped: return "stopped";
  }
  return "?";
}

WorkerPool::WorkerPool(const ExecutorConfig& config, std::unique_ptr<WorkerFactory> factory,
                       PoolTiming timing)
    : config_(config),
      timing_(timing),
      factory_(std::move(factory)),
      queue_(config.max_queue, config.worker_spin),
      slots_(std::make_unique<Slot[]>(static_cast<std::size_t>(config.workers))),
      max_abandoned_(config.max_abandoned > 0 ? config.max_abandoned : 2 * config.workers) {}

WorkerPool::~WorkerPool() {
  if (!stopped_) stop(Clock::now());
}

void WorkerPool::start() {
  factory_->prepare();
  gil_enabled_ = factory_->gil_enabled();
  for (int i = 0; i < config_.workers; ++i) launch(i);
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return reported_ >= config_.workers || !startup_error_.empty(); });
  if (!startup_error_.empty()) throw StartupError(startup_error_, startup_error_detail_);
  started_ = true;
  supervisor_ = std::thread([this] { supervise(); });
}

void WorkerPool::launch(int slot) {
  std::lock_guard lock(mutex_);
  auto run = std::make_shared<Run>(slot, !started_);
  slots_[static_cast<std::size_t>(slot)].run = run;
  runs_.push_back(run);
  run->thread = std::thread([this, run] { run_main(run); });
}

void WorkerPool::report_start(int slot, const std::vector<RouteInfo>* routes,
                              const StartupError* error) {
  std::lock_guard lock(mutex_);
  if (error != nullptr) {
    if (startup_error_.empty()) {
      // A pool-wide failure (the app does not import) reads the same from every
      // worker: the first one is reported, once.
      const std::string what = error->what();
      startup_error_ = what.rfind("cannot load app", 0) == 0
                           ? what
                           : "worker " + std::to_string(slot) + " failed to start: " + what;
      startup_error_detail_ = error->detail();
    }
  } else if (routes_.empty()) {
    routes_ = *routes;
  } else if (!same_routes(routes_, *routes) && startup_error_.empty()) {
    startup_error_ = "worker " + std::to_string(slot) +
                     " registered different routes than the first worker: the app must register "
                     "the same routes, in the same order, every time it is imported";
  }
  ++reported_;
  cv_.notify_all();
}

unsigned WorkerPool::next_recycle_limit() {
  if (config_.max_requests == 0) return 0;
  if (config_.max_requests_jitter == 0) return config_.max_requests;
  thread_local std::mt19937 rng{std::random_device{}()};
  std::uniform_int_distribution<unsigned> jitter(0, config_.max_requests_jitter);
  return config_.max_requests + jitter(rng);
}

std::string WorkerPool::describe_job(const Job& job) const {
  return job.request.method + " " + job.request.path + " (request " + job.request.request_id + ")";
}

void WorkerPool::wait_backoff(unsigned failures) {
  // first, 2x first, ... up to the maximum, while replacements keep failing.
  const auto delay = std::min(timing_.backoff_first * (1u << std::min(failures - 1, 16u)),
                              timing_.backoff_max);
  std::unique_lock lock(mutex_);
  cv_.wait_for(lock, delay, [&] { return stopping_.load(); });
}

void WorkerPool::run_main(const std::shared_ptr<Run>& run) {
  Slot& slot = slots_[static_cast<std::size_t>(run->slot)];
  unsigned failures = 0;
  bool up = bring_up(*run, failures);
  while (up) {
    const After after = serve(*run, slot);
    run->worker->end();
    ++workers_ended_;
    if (after == After::drained || after == After::abandoned) break;
    if (after == After::restart) {
      ++replacements_;
      ++slot.replacements;
    }
    up = bring_up(*run, failures);
  }
  run->worker.reset();  // on this thread: a sub-interpreter's thread states belong to it
  run->state = SlotState::stopped;
  if (run->carried) {
    Job job = std::move(*run->carried);
    run->carried.reset();
    job.complete(make_error_response(503, "no worker could take the request: the server is shutting down",
                                     job.request.request_id));
  }
  {
    std::lock_guard lock(mutex_);
    run->finished = true;
    cv_.notify_all();
  }
  if (run->abandoned) {
    --abandoned_live_;
    spdlog::info("worker {}: the abandoned handler thread has finished ({} abandoned thread(s) left)",
                 run->slot, abandoned_live_.load());
  }
}

// Makes (or remakes) the run's worker. False when the run should end: the
// pool's own start-up failed, or the pool stops.
bool WorkerPool::bring_up(Run& run, unsigned& failures) {
  const bool first_start = !run.worker;
  for (;;) {
    if (hard_stop_ || (stopping_ && queue_.depth() == 0 && !run.carried)) return false;
    if (!run.worker) run.worker = factory_->make(run.slot);
    if (run.state != SlotState::recycling) {
      run.state = first_start && run.initial ? SlotState::starting : SlotState::replacing;
    }
    std::optional<StartupError> error;
    try {
      std::vector<RouteInfo> routes = run.worker->start();
      ++workers_started_;
      const WorkerDescription d = run.worker->describe();
      run.pid = d.pid;
      run.interpreter_id = d.interpreter_id.value_or(-1);
      if (!(run.initial && first_start) && !same_routes(routes_, routes)) {
        run.worker->end();
        ++workers_ended_;
        throw StartupError("the app registered different routes than at start-up");
      }
      failures = 0;
      run.state = SlotState::idle;
      if (run.initial && first_start) report_start(run.slot, &routes, nullptr);
      return true;
    } catch (const StartupError& e) {
      error.emplace(e);
    } catch (const std::exception& e) {
      error.emplace(e.what());
    }
    if (run.initial && first_start) {
      report_start(run.slot, nullptr, &*error);
      return false;
    }
    ++failures;
    {
      std::lock_guard lock(mutex_);
      last_start_error_ = error->what();
    }
    if (stopping_) return false;  // the other workers drain the queue, or it is answered 503
    spdlog::error("worker {}: replacement failed to start ({}); retry {} after back-off", run.slot,
                  error->what(), failures);
    if (!error->detail().empty()) spdlog::debug("{}", error->detail());
    wait_backoff(failures);
  }
}

WorkerPool::After WorkerPool::serve(Run& run, Slot& slot) {
  Worker& worker = *run.worker;
  const bool can_vanish = worker.can_vanish_while_idle();
  const unsigned limit = next_recycle_limit();
  std::uint64_t served = 0;
  for (;;) {
    run.state = SlotState::idle;
    std::optional<Job> job = std::exchange(run.carried, std::nullopt);
    if (!job) job = can_vanish ? queue_.pop_until(Clock::now() + timing_.idle_check) : queue_.pop();
    if (!job) {
      if (queue_.closed() && queue_.depth() == 0) return After::drained;
      if (can_vanish && !worker.alive()) {
        spdlog::warn("worker {} (pid {}) exited while idle; replacing it", run.slot, run.pid.load());
        return After::restart;
      }
      continue;
    }
    const auto now = Clock::now();
    if (now >= job->deadline) {
      ++expired_in_queue_;
      job->complete(make_deadline_response("request waited past its deadline in the queue",
                                           job->request.request_id));
      continue;
    }
    // Only a job that waited can have lost its client meanwhile: the peek is a syscall.
    if (now - job->queued_at >= kClientCheckAfter && job->client_gone()) {
      ++dropped_disconnected_;
      job->complete(make_error_response(499, "the client closed the connection before the handler ran",
                                        job->request.request_id));
      continue;
    }
    // No liveness check here (it would be a syscall per request): a worker that
    // died while idle fails to take the job (handle() says job_not_taken) and the
    // job goes to its replacement below.

    const std::uint64_t seq = ++job_seq_;
    {
      std::lock_guard lock(run.mutex);
      run.job_seq = seq;
      run.job_started = now;
      run.job_deadline = job->deadline;
      run.job_what = describe_job(*job);
      run.interrupted = false;
    }
    run.state = SlotState::busy;
    ++busy_;
    HandleResult result = worker.handle(*job, seq);
    bool abandoned, interrupted;
    {
      std::lock_guard lock(run.mutex);
      run.job_seq = 0;
      abandoned = run.abandoned;
      interrupted = run.interrupted;
      if (run.stuck) {
        run.stuck = false;
        --stuck_slots_;
      }
    }
    --busy_;
    if (result.worker_lost && result.job_not_taken && !hard_stop_ && !abandoned) {
      spdlog::warn("worker {} (pid {}) was gone before it took {}; it goes to the replacement",
                   run.slot, run.pid.load(), describe_job(*job));
      run.carried = std::move(job);
      return After::restart;
    }
    ++slot.requests;
    if (result.worker_lost && hard_stop_) {
      result.response = make_error_response(503, "server is shutting down", job->request.request_id);
    }
    if (result.worker_lost && !interrupted && !hard_stop_) {
      spdlog::error("worker {}: {} failed: {}", run.slot, describe_job(*job), result.response.body);
    }
    job->complete(std::move(result.response));
    if (abandoned) return After::abandoned;
    if (result.worker_lost) return After::restart;
    if (limit != 0 && ++served >= limit && worker.recyclable()) {
      run.state = SlotState::recycling;
      spdlog::info("worker {}: recycling after {} requests", run.slot, served);
      ++recycles_;
      ++slot.recycles;
      return After::recycle;
    }
  }
}

void WorkerPool::supervise() {
  std::unique_lock lock(mutex_);
  while (!supervisor_stop_) {
    cv_.wait_for(lock, timing_.supervisor_tick, [&] { return supervisor_stop_; });
    if (supervisor_stop_) break;
    std::vector<std::shared_ptr<Run>> current;
    current.reserve(static_cast<std::size_t>(config_.workers));
    for (int i = 0; i < config_.workers; ++i) current.push_back(slots_[static_cast<std::size_t>(i)].run);
    // Abandoned runs whose handler finished can be joined now.
    for (auto it = runs_.begin(); it != runs_.end();) {
      if ((*it)->finished && (*it)->abandoned) {
        if ((*it)->thread.joinable()) (*it)->thread.join();
        it = runs_.erase(it);
      } else {
        ++it;
      }
    }
    lock.unlock();
    const auto now = Clock::now();
    for (auto& run : current) check_deadline(*run, now);
    lock.lock();
  }
}

// At a job's deadline: interrupt it. After the grace: abandon its thread and
// give the slot a new worker (in-process strategies), within the limit.
void WorkerPool::check_deadline(Run& run, Clock::time_point now) {
  bool replace = false;
  {
    std::lock_guard lock(run.mutex);
    if (run.job_seq == 0 || run.abandoned) return;
    if (!run.interrupted) {
      if (now < run.job_deadline || hard_stop_) return;
      const InterruptAction action = run.worker->interrupt(run.job_seq);
      run.interrupted = true;
      run.interrupted_at = now;
      run.last_interrupt = now;
      run.state = SlotState::interrupting;
      const double ran = seconds_between(run.job_started, now);
      if (action == InterruptAction::killed) {
        ++killed_;
        spdlog::warn("worker {}: {} still running after {:.1f} s, past its deadline; killed worker "
                     "process {} (a new one takes the slot)",
                     run.slot, run.job_what, ran, run.pid.load());
      } else if (action == InterruptAction::interrupted) {
        ++interrupted_;
        spdlog::warn("worker {}: {} still running after {:.1f} s, past its deadline; interrupted "
                     "(gilgamesh.HandlerTimeout raised in the handler)",
                     run.slot, run.job_what, ran);
      }
      return;
    }
    if (now < run.interrupted_at + timing_.interrupt_grace) {
      // Again, quietly: one exception may have been swallowed (`except BaseException`).
      if (now >= run.last_interrupt + timing_.reinterrupt_every) {
        run.last_interrupt = now;
        run.worker->interrupt(run.job_seq);
      }
      return;
    }
    if (!run.worker->abandonable()) return;
    // Still running: blocked in C (time.sleep, a socket read) or it swallowed the exception.
    if (abandoned_live_ >= max_abandoned_) {
      if (!run.stuck) {
        run.stuck = true;
        ++stuck_slots_;
        spdlog::error("worker {}: {} is stuck {:.1f} s past its deadline, and {} handler thread(s) "
                      "are abandoned already (--max-abandoned {}): not replacing it; the server "
                      "reports not ready",
                      run.slot, run.job_what, seconds_between(run.job_deadline, now),
                      abandoned_live_.load(), max_abandoned_);
      }
      return;
    }
    if (run.stuck) {
      run.stuck = false;
      --stuck_slots_;
    }
    run.abandoned = true;
    ++abandoned_live_;
    ++abandoned_total_;
    ++replacements_;
    ++slots_[static_cast<std::size_t>(run.slot)].replacements;
    spdlog::error("worker {}: {} did not return {:.1f} s after its interrupt; abandoned its thread "
                  "({} abandoned, limit {}), a fresh worker takes the slot",
                  run.slot, run.job_what, seconds_between(run.interrupted_at, now),
                  abandoned_live_.load(), max_abandoned_);
    replace = true;
  }
  if (replace && !stopping_) launch(run.slot);
}

bool WorkerPool::stop(Clock::time_point deadline) {
  if (stopped_) return true;
  stopped_ = true;
  stopping_ = true;
  factory_->stopping();
  queue_.close();
  std::unique_lock lock(mutex_);
  cv_.notify_all();
  auto current_finished = [&] {
    for (int i = 0; i < config_.workers; ++i) {
      const auto& run = slots_[static_cast<std::size_t>(i)].run;
      if (run && !run->finished) return false;
    }
    return true;
  };
  // A handler already past its job's deadline (its client has had the 504)
  // does not hold the drain up: it is cut off like one at the drain deadline.
  auto only_overdue_left = [&] {
    const auto now = Clock::now();
    for (int i = 0; i < config_.workers; ++i) {
      const auto& run = slots_[static_cast<std::size_t>(i)].run;
      if (!run || run->finished) continue;
      std::lock_guard run_lock(run->mutex);
      if (run->job_seq == 0 || now < run->job_deadline) return false;
    }
    return true;
  };
  bool done = false;
  while (!(done = current_finished()) && Clock::now() < deadline && !only_overdue_left()) {
    cv_.wait_until(lock, std::min(deadline, Clock::now() + 50ms));
  }
  lock.unlock();
  // What the workers could not take before the deadline is answered, not lost.
  for (Job& job : queue_.take_all()) {
    job.complete(make_error_response(503, "server is shutting down", job.request.request_id));
  }
  if (!done) {
    hard_stop_ = true;
    lock.lock();
    std::vector<std::shared_ptr<Run>> current;
    for (int i = 0; i < config_.workers; ++i) current.push_back(slots_[static_cast<std::size_t>(i)].run);
    lock.unlock();
    int running = 0;
    for (auto& run : current) {
      if (!run) continue;
      std::lock_guard run_lock(run->mutex);
      if (run->job_seq != 0 && !run->abandoned) {
        ++running;
        run->worker->interrupt(run->job_seq);
      }
    }
    spdlog::warn("{} handler(s) still running at the graceful deadline; interrupted", running);
    lock.lock();
    done = cv_.wait_for(lock, timing_.stop_grace, current_finished);
    lock.unlock();
  }
  lock.lock();
  supervisor_stop_ = true;
  cv_.notify_all();
  lock.unlock();
  if (supervisor_.joinable()) supervisor_.join();

  bool clean = true;
  lock.lock();
  std::vector<std::shared_ptr<Run>> runs = std::move(runs_);
  lock.unlock();
  for (auto& run : runs) {
    if (!run->thread.joinable()) continue;
    if (run->finished) {
      run->thread.join();
    } else {
      run->thread.detach();  // it still runs a handler; it keeps `run` alive itself
      clean = false;
    }
  }
  if (!clean) {
    spdlog::warn("a handler thread is still running: leaving it (Python will not be finalized)");
  }
  factory_->shutdown(clean);
  return clean;
}

ExecutorInfo WorkerPool::info() const {
  return ExecutorInfo{config_.strategy, config_.workers, factory_->python_version(),
                      factory_->python_build(), gil_enabled_, config_.strategy_reason};
}

Readiness WorkerPool::readiness() const {
  using State = Readiness::State;
  if (stopping_) return {State::stopping, "the server is shutting down"};
  if (!started_) return {State::starting, "workers are starting"};
  if (const int stuck = stuck_slots_.load(); stuck > 0) {
    return {State::degraded, std::to_string(stuck) + " worker(s) stuck in a handler past its deadline, "
                                                     "and the abandoned-worker limit (" +
                                 std::to_string(max_abandoned_) + ") is reached"};
  }
  if (auto why = factory_->unavailable()) return {State::degraded, *why};
  std::lock_guard lock(mutex_);
  for (int i = 0; i < config_.workers; ++i) {
    const SlotState s = slots_[static_cast<std::size_t>(i)].run->state;
    // A planned recycle and an interrupt are short: the slot counts as up meanwhile
    // (a handler that does not stop is abandoned and replaced, or counted stuck).
    if (s == SlotState::idle || s == SlotState::busy || s == SlotState::recycling ||
        s == SlotState::interrupting) {
      return {State::ready, {}};
    }
  }
  return {State::degraded,
          "no worker is up" + (last_start_error_.empty() ? std::string() : ": " + last_start_error_)};
}

nlohmann::json WorkerPool::stats() const {
  nlohmann::json details = nlohmann::json::array();
  nlohmann::json pids = nlohmann::json::array();
  int ready = 0;
  const long self = getpid();
  const auto now = Clock::now();
  {
    std::lock_guard lock(mutex_);
    for (int i = 0; i < config_.workers; ++i) {
      const Slot& slot = slots_[static_cast<std::size_t>(i)];
      Run* run = slot.run.get();
      const SlotState state = run ? run->state.load() : SlotState::stopped;
      if (state == SlotState::idle || state == SlotState::busy) ++ready;
      const long pid = run ? run->pid.load() : 0;
      const std::int64_t interp = run ? run->interpreter_id.load() : -1;
      nlohmann::json d = {{"worker", i},
                          {"state", state_name(state)},
                          {"busy", state == SlotState::busy || state == SlotState::interrupting},
                          {"requests", slot.requests.load()},
                          {"recycles", slot.recycles.load()},
                          {"replacements", slot.replacements.load()},
                          {"pid", pid},
                          {"interpreter_id", interp >= 0 ? nlohmann::json(interp) : nlohmann::json()},
                          {"busy_ms", nullptr},
                          {"rss_bytes", nullptr},
                          {"pss_bytes", nullptr}};
      if (run && (state == SlotState::busy || state == SlotState::interrupting)) {
        std::lock_guard run_lock(run->mutex);
        if (run->job_seq != 0) {
          d["busy_ms"] = std::round(seconds_between(run->job_started, now) * 1e4) / 10.0;
        }
      }
      if (pid > 0 && pid != self) {
        add_memory(d, pid);
        pids.push_back(pid);
      }
      details.push_back(std::move(d));
    }
  }
  const std::uint64_t started = workers_started_.load();
  const std::uint64_t ended = workers_ended_.load();
  const bool own_interpreters = config_.strategy == "subinterpreters" || config_.strategy == "processes";
  nlohmann::json out = {{"queue_depth", queue_.depth()},
                        {"max_queue", config_.max_queue},
                        {"busy_workers", busy_.load()},
                        {"ready_workers", ready},
                        {"replacements_total", replacements_.load()},
                        {"interrupted_total", interrupted_.load()},
                        {"killed_total", killed_.load()},
                        {"abandoned_total", abandoned_total_.load()},
                        {"abandoned_live", abandoned_live_.load()},
                        {"max_abandoned", max_abandoned_},
                        {"recycles_total", recycles_.load()},
                        {"dropped_disconnected_total", dropped_disconnected_.load()},
                        {"expired_in_queue_total", expired_in_queue_.load()},
                        {"interpreters_created", own_interpreters ? started : 1},
                        {"interpreters_ended", own_interpreters ? ended : 0},
                        {"worker_pids", std::move(pids)},
                        {"worker_details", std::move(details)}};
  factory_->add_stats(out);
  return out;
}

}  // namespace gilgamesh
