#include "pyworkers/pool/worker_pool.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <algorithm>
#include <cmath>
#include <deque>
#include <fstream>
#include <limits>
#include <optional>
#include <random>

#include "server/model/file_body.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

using namespace std::chrono_literals;

namespace {

constexpr auto kClientCheckAfter = 2ms;

double seconds_between(Clock::time_point a, Clock::time_point b) {
  return std::chrono::duration<double>(b - a).count();
}

// Resident and proportional set size of another process, from /proc.
void add_memory(WorkerStats& out, long pid) {
  std::ifstream in("/proc/" + std::to_string(pid) + "/smaps_rollup");
  // The first line names the range ("55a2...-7ffc... ---p 00000000 00:00 0 [rollup]"),
  // not a "Key: value kB" pair: reading it as one would stop the loop at once.
  in.ignore(std::numeric_limits<std::streamsize>::max(), '\n');
  std::string key;
  std::uint64_t kib = 0;
  std::string unit;
  while (in >> key >> kib >> unit) {
    if (key == "Rss:") out.rss_bytes = kib * 1024;
    if (key == "Pss:") out.pss_bytes = kib * 1024;
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

// slot_held_ of a slot whose worker is not serving (starting, replaced, gone).
constexpr int kNotServing = std::numeric_limits<int>::max();
// How long a lane whose event loop holds far more than the lightest worker's waits
// for that worker to take the next job, at most, and how often it looks again.
constexpr auto kMakeWayAtMost = std::chrono::milliseconds(5);
constexpr auto kMakeWayStep = std::chrono::microseconds(100);

}  // namespace

// One thread's tenure of a slot. A slot gets a new Run when its handler thread
// is abandoned; otherwise one Run serves it (recycling and replacing workers)
// until the pool stops.
// One of a worker's threads (--threads), as the supervisor sees it. Guarded by
// the run's mutex; worker->interrupt() is called only under it, and only while
// job_seq != 0.
struct WorkerPool::Lane {
  std::uint64_t job_seq = 0;  // 0: no job running
  Clock::time_point job_started{};
  Clock::time_point job_deadline{};
  std::string job_what;
  bool interrupted = false;
  Clock::time_point interrupted_at{};
  Clock::time_point last_interrupt{};
  bool stuck = false;  // counted in stuck_slots_: past grace, but the abandon limit is reached
  // The job's answer is streaming (its head went out): no deadline applies any
  // more, and a stop cancels the stream (a producer waiting for a slow client
  // sees no interrupt).
  bool streaming = false;
  std::shared_ptr<BodyStream> stream;  // the producer's end, while the body is open
};

struct WorkerPool::Run {
  Run(int s, bool first, int threads) : slot(s), initial(first), lanes(static_cast<std::size_t>(threads)) {}
  const int slot;
  const bool initial;  // started by start(): its first start-up is the pool's
  std::thread thread;  // lane 0's: makes, starts, ends and destroys the worker
  std::unique_ptr<Worker> worker;
  std::atomic<WorkerState> state{WorkerState::starting};  // its life: starting, idle, recycling, ...
  std::atomic<long> pid{0};
  std::atomic<std::int64_t> interpreter_id{-1};
  std::atomic<bool> finished{false};
  std::atomic<unsigned> served{0};  // since the worker last started
  unsigned recycle_limit = 0;       // for this start (0: never)

  std::mutex mutex;  // guards what follows
  std::condition_variable changed;  // `after` was set (the lanes of a pulling worker wait for it)
  std::vector<Lane> lanes;
  std::optional<After> after;  // set by the first lane that saw the worker must go; the others follow
  std::deque<Job> carried;     // taken from the queue when the worker turned out to be gone
  bool abandoned = false;      // a new Run serves the slot; this one ends when its handlers return
  // Recycled while its event loop held requests or WebSockets: a new Run serves
  // the slot while this one drains its loop (up to --graceful-timeout), then ends.
  // Set under WorkerPool::mutex_.
  bool draining = false;
  bool loop_stuck = false;     // as Lane::stuck, for the worker's event loop (Worker::supervise)
};

struct WorkerPool::Slot {
  std::shared_ptr<Run> run;  // the run serving the slot now; guarded by WorkerPool::mutex_
  std::atomic<std::uint64_t> requests{0}, recycles{0}, replacements{0};
};

WorkerPool::WorkerPool(const ServerConfig& config, std::unique_ptr<WorkerFactory> factory,
                       PoolTiming timing)
    : config_(config),
      timing_(timing),
      threads_(std::max(1, config.pool.threads)),
      factory_(std::move(factory)),
      queue_(config.pool.max_queue, config.pool.worker_spin()),
      slots_(std::make_unique<Slot[]>(static_cast<std::size_t>(config.pool.workers))),
      max_abandoned_(config.pool.abandoned_limit()),
      slot_held_(std::make_unique<std::atomic<int>[]>(static_cast<std::size_t>(config.pool.workers))) {
  for (int i = 0; i < config.pool.workers; ++i) slot_held_[static_cast<std::size_t>(i)] = kNotServing;
}

WorkerPool::~WorkerPool() {
  if (!stopped_) stop(Clock::now());
}

void WorkerPool::start() {
  factory_->prepare();
  gil_enabled_ = factory_->gil_enabled();
  for (int i = 0; i < config_.pool.workers; ++i) launch(i);
  std::unique_lock lock(mutex_);
  cv_.wait(lock, [&] { return reported_ >= config_.pool.workers || !startup_error_.empty(); });
  if (!startup_error_.empty()) throw StartupError(startup_error_, startup_error_detail_);
  started_ = true;
  supervisor_ = std::thread([this] { supervise(); });
}

std::shared_ptr<WorkerPool::Run> WorkerPool::launch(int slot, std::deque<Job> carried) {
  std::lock_guard lock(mutex_);
  auto run = std::make_shared<Run>(slot, !started_, threads_);
  run->carried = std::move(carried);
  slots_[static_cast<std::size_t>(slot)].run = run;
  runs_.push_back(run);
  run->thread = std::thread([this, run] { run_main(run); });
  return run;
}

void WorkerPool::report_start(int slot, const std::vector<RouteInfo>* routes,
                              const StartupError* error) {
  std::lock_guard lock(mutex_);
  if (error != nullptr) {
    if (startup_error_.empty()) {
      // A pool-wide failure (the app does not import) reads the same from every
      // worker: the first one is reported, once.
      const std::string what = error->what();
      startup_error_ = error->kind() == StartupError::Kind::app
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
  if (config_.pool.max_requests == 0) return 0;
  if (config_.pool.max_requests_jitter == 0) return config_.pool.max_requests;
  thread_local std::mt19937 rng{std::random_device{}()};
  std::uniform_int_distribution<unsigned> jitter(0, config_.pool.max_requests_jitter);
  return config_.pool.max_requests + jitter(rng);
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
    const After after = serve_lanes(*run, slot);
    const bool hand_over = after == After::recycle &&
                           (run->worker->held() > 0 || run->worker->app_threads_running()) && hand_over_slot(*run);
    run->worker->end(threads_deadline());
    ++workers_ended_;
    if (after == After::drained || after == After::abandoned || hand_over) break;
    if (after == After::restart) {
      ++replacements_;
      ++slot.replacements;
    }
    up = bring_up(*run, failures);
  }
  std::unique_ptr<Worker> worker;
  {
    std::lock_guard lock(run->mutex);  // the supervisor looks at run->worker under it
    worker = std::move(run->worker);
    if (std::exchange(run->loop_stuck, false)) --stuck_slots_;
  }
  worker.reset();  // on this thread: a sub-interpreter's thread states belong to it
  run->state = WorkerState::stopped;
  // Jobs a lane took just as the run ended (abandoned, or the pool stops): back to
  // the queue for the other workers, or answered if it is closed.
  for (Job& job : run->carried) {
    if (queue_.push(job) != SubmitResult::accepted) {
      job.complete(make_error_response(503, "no worker could take the request: the server is shutting down",
                                       job.request.request_id));
    }
  }
  run->carried.clear();
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
  if (run->draining) {
    --draining_live_;
    spdlog::info("worker {}: the recycled worker has drained and ended", run->slot);
  }
}

// A worker recycled while its event loop holds requests or WebSockets, or
// while threads its app started still run: those get until --graceful-timeout
// to finish, and the slot must not wait for them.
// A new run takes the slot beside the draining one (as gunicorn starts a new
// worker while the old one shuts down gracefully). False when the pool stops:
// the run drains in place.
bool WorkerPool::hand_over_slot(Run& run) {
  {
    std::lock_guard lock(mutex_);
    if (stopping_) return false;
    run.draining = true;
    ++draining_live_;
  }
  if (const int held = run.worker->held(); held > 0) {
    spdlog::info("worker {}: a new worker takes the slot while the recycled one drains {} held request(s) "
                 "(up to --graceful-timeout)",
                 run.slot, held);
  } else {
    spdlog::info("worker {}: a new worker takes the slot while the recycled one waits for threads the app "
                 "started (up to --graceful-timeout)",
                 run.slot);
  }
  std::deque<Job> carried;  // taken as the worker was going: the new one runs them
  {
    std::lock_guard lock(run.mutex);
    carried.swap(run.carried);
  }
  launch(run.slot, std::move(carried));
  return true;
}

// Makes (or remakes) the run's worker. False when the run should end: the
// pool's own start-up failed, or the pool stops.
bool WorkerPool::bring_up(Run& run, unsigned& failures) {
  const bool first_start = !run.worker;
  for (;;) {
    if (hard_stop_ || (stopping_ && queue_.depth() == 0 && run.carried.empty())) return false;
    if (!run.worker) {
      std::unique_ptr<Worker> made = factory_->make(run.slot);
      std::lock_guard lock(run.mutex);
      run.worker = std::move(made);
    }
    if (run.state != WorkerState::recycling) {
      run.state = first_start && run.initial ? WorkerState::starting : WorkerState::replacing;
    }
    std::optional<StartupError> error;
    try {
      std::vector<RouteInfo> routes = run.worker->start();
      ++workers_started_;
      const WorkerDescription d = run.worker->describe();
      run.pid = d.pid;
      run.interpreter_id = d.interpreter_id.value_or(-1);
      if (!(run.initial && first_start) && !same_routes(routes_, routes)) {
        run.worker->end(threads_deadline());
        ++workers_ended_;
        throw StartupError("the app registered different routes than at start-up");
      }
      failures = 0;
      run.state = WorkerState::idle;
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

// Serves with every lane of the worker until one of them sees it must go
// (drained, recycle, restart, abandoned); the others finish the job they run,
// then follow. Lane 0 is this thread; lanes 1.. get threads of their own,
// entered into the worker (a thread state of its interpreter) and left again.
WorkerPool::After WorkerPool::serve_lanes(Run& run, Slot& slot) {
  {
    std::lock_guard lock(run.mutex);
    run.after.reset();
  }
  run.served = 0;
  run.recycle_limit = next_recycle_limit();
  slot_held_[static_cast<std::size_t>(run.slot)] = 0;
  std::vector<std::thread> others;
  for (int lane = 1; lane < threads_; ++lane) {
    others.emplace_back([this, &run, &slot, lane] {
      run.worker->enter_lane(lane);
      serve(run, slot, lane);
      run.worker->leave_lane(lane);
    });
  }
  serve(run, slot, 0);
  for (auto& t : others) t.join();
  slot_held_[static_cast<std::size_t>(run.slot)] = kNotServing;
  std::lock_guard lock(run.mutex);
  return run.after.value_or(After::drained);
}

// The first lane to decide wins; true when this lane's reason was taken.
bool WorkerPool::leave(Run& run, After why) {
  {
    std::lock_guard lock(run.mutex);
    if (run.after) return false;
    run.after = why;
  }
  run.changed.notify_all();
  return true;
}

std::optional<WorkerPool::After> WorkerPool::leaving(Run& run) {
  std::lock_guard lock(run.mutex);
  return run.after;
}

void WorkerPool::serve(Run& run, Slot& slot, int lane) {
  Worker& worker = *run.worker;
  if (std::function<void()> doorbell = worker.doorbell()) {
    serve_pulling(run, slot, lane, std::move(doorbell));
    return;
  }
  while (!leaving(run)) {
    if (!worker.wait_for_room(Clock::now() + timing_.idle_check)) continue;
    make_way_for_a_lighter_worker(run, worker);
    std::optional<Job> job = next_job(run);
    if (!job) {
      if (queue_.closed() && queue_.depth() == 0) {
        leave(run, After::drained);
      } else if (lane == 0) {
        replace_if_gone(run, " while idle");
      }
      continue;
    }
    if (const auto why = leaving(run); why && *why != After::drained) {
      // Taken just as the worker is going: the next start runs it (or, when the run
      // ends, the queue takes it back). A draining worker still runs what it took.
      std::lock_guard lock(run.mutex);
      run.carried.push_back(std::move(*job));
      return;
    }
    run_job(run, slot, lane, *job);
    count_served(run, slot, 1);
  }
}

// From lane 0: a worker process that has exited makes way for a new one.
void WorkerPool::replace_if_gone(Run& run, const char* when) {
  if (run.worker->can_vanish_while_idle() && !run.worker->alive() && leave(run, After::restart)) {
    spdlog::warn("worker {} (pid {}) exited{}; replacing it", run.slot, run.pid.load(), when);
  }
}

// `jobs` more served since the worker started: recycles it at its limit.
void WorkerPool::count_served(Run& run, Slot& slot, unsigned jobs) {
  if (run.recycle_limit != 0 && (run.served += jobs) >= run.recycle_limit && run.worker->recyclable() &&
      leave(run, After::recycle)) {
    run.state = WorkerState::recycling;
    spdlog::info("worker {}: recycling after {} requests", run.slot, run.served.load());
    ++recycles_;
    ++slot.recycles;
  }
}

// The pool's side of a worker whose event loop pulls its jobs: its place among
// the queue's pullers, for one run of the worker.
class WorkerPool::Source final : public JobSource {
 public:
  Source(WorkerPool& pool, Run& run, Slot& slot, std::function<void()> doorbell)
      : pool_(pool), run_(run), slot_(slot) {
    puller_.ring = std::move(doorbell);
    puller_.spins = !run.worker->pulls_when_rung();
    pool_.queue_.add_puller(puller_);
  }
  ~Source() override { pool_.queue_.remove_puller(puller_); }
  Source(const Source&) = delete;
  Source& operator=(const Source&) = delete;

  void pull(std::vector<Job>& out, std::size_t room, bool park) override {
    pool_.pull_jobs(run_, slot_, puller_, out, room, park);
  }
  void unpark() override { pool_.queue_.unpark(puller_); }
  void carry(Job&& job) override {
    std::lock_guard lock(run_.mutex);
    run_.carried.push_back(std::move(job));
  }

 private:
  WorkerPool& pool_;
  Run& run_;
  Slot& slot_;
  JobQueue::Puller puller_;
};

// A worker whose event loop takes its jobs from the queue itself: lane 0 attaches
// the loop to the queue; the lanes only wait for the worker to go (recycled by the
// loop's own pulls, abandoned, or drained once the queue is closed and empty).
void WorkerPool::serve_pulling(Run& run, Slot& slot, int lane, std::function<void()> doorbell) {
  std::optional<Source> source;
  if (lane == 0) {
    source.emplace(*this, run, slot, std::move(doorbell));
    run.worker->pull_from(&*source);
  }
  for (;;) {
    {
      std::unique_lock lock(run.mutex);
      if (run.after) break;
      // Stopping, the queue empties as the loops take what is left: looked at often.
      run.changed.wait_for(lock, stopping_ ? std::chrono::milliseconds(10) : timing_.idle_check);
      if (!run.after && queue_.closed() && queue_.depth() == 0 && run.carried.empty()) run.after = After::drained;
      if (run.after) break;
    }
    // A worker process that ended (its loop stuck past a deadline, or killed): a new one.
    if (lane == 0) replace_if_gone(run, "");
  }
  if (lane == 0) {
    run.worker->pull_from(nullptr);
    source.reset();
  }
}

// From a pulling worker's loop thread: up to `room` runnable jobs, counted as
// the worker's. Nothing once the worker is going.
void WorkerPool::pull_jobs(Run& run, Slot& slot, JobQueue::Puller& puller, std::vector<Job>& out,
                           std::size_t room, bool park) {
  const std::size_t first = out.size();
  if (run.recycle_limit != 0 && run.worker->recyclable()) {  // no more than it serves before it is recycled
    const unsigned served = run.served;
    room = std::min<std::size_t>(room, served >= run.recycle_limit ? 0 : run.recycle_limit - served);
  }
  std::vector<Job> taken;
  {
    std::lock_guard lock(run.mutex);
    if (run.after) return;
    while (!run.carried.empty() && taken.size() < room) {  // taken from the queue by a run before this one
      taken.push_back(std::move(run.carried.front()));
      run.carried.pop_front();
    }
  }
  for (;;) {
    for (Job& job : taken) {
      if (runnable(job)) out.push_back(std::move(job));
    }
    const std::size_t got = out.size() - first;
    if (got > 0 || got >= room) break;  // else every one was dropped: look again
    if (queue_.depth() == 0 && !park) break;  // nothing to take, and the lock not worth it
    taken.clear();
    queue_.pull(puller, taken, room - got, park);
    if (taken.empty()) break;
  }
  const auto n = static_cast<unsigned>(out.size() - first);
  if (n == 0) return;
  slot.requests += n;
  count_served(run, slot, n);
}

// A lane whose worker's event loop holds its requests (a route app's `async def`
// calls; an ASGI app's worker pulls instead, and the queue rings the puller with
// the most room) hands each job to its loop
// and is back at the queue at once, however busy that loop is; the lane that was
// just active (spinning) would take nearly every job while another worker's loop
// sits idle, and a CPU-bound app would queue on one core. So a lane whose loop
// holds clearly more than the lightest serving worker's lets that one take the
// next job: it looks again every 100 us, and after 5 ms takes one anyway (the
// others' counts may be up to a supervisor tick old, or their lanes slow).
void WorkerPool::make_way_for_a_lighter_worker(Run& run, Worker& worker) {
  if (config_.pool.workers < 2) return;
  const auto mine_slot = static_cast<std::size_t>(run.slot);
  const auto lighter_exists = [&] {
    const int mine = worker.held();
    // Written only when it changed: the counts share cache lines, and a worker
    // that never holds (WSGI, routes) must not make every other lane's line bounce.
    if (slot_held_[mine_slot].load(std::memory_order_relaxed) != mine) {
      slot_held_[mine_slot].store(mine, std::memory_order_relaxed);
    }
    if (mine < 2) return false;
    int least = mine;
    for (int i = 0; i < config_.pool.workers; ++i) {
      least = std::min(least, slot_held_[static_cast<std::size_t>(i)].load(std::memory_order_relaxed));
    }
    return mine - least >= std::max(2, least / 4);
  };
  const auto until = Clock::now() + kMakeWayAtMost;
  while (lighter_exists() && !stopping_ && queue_.depth() <= 1 && Clock::now() < until) {
    std::this_thread::sleep_for(kMakeWayStep);
  }
}

// The next job worth running (runnable()): one carried over from a lost worker,
// else the queue's. Nothing: the queue had none
// (closed, or a lane's periodic look at whether its worker must go is due).
std::optional<Job> WorkerPool::next_job(Run& run) {
  // An idle lane blocks on the queue only if nothing can happen to its worker meanwhile:
  // not with other lanes, a process that may exit, or an event loop holding requests
  // (it may get stuck, and the worker abandoned).
  const bool must_look_up = threads_ > 1 || run.worker->can_vanish_while_idle() || run.worker->held() > 0;
  for (;;) {
    std::optional<Job> job;
    {
      std::lock_guard lock(run.mutex);
      if (!run.carried.empty()) {
        job = std::move(run.carried.front());
        run.carried.pop_front();
      }
    }
    if (!job) job = must_look_up ? queue_.pop_until(Clock::now() + timing_.idle_check) : queue_.pop();
    if (!job) return std::nullopt;
    if (runnable(*job)) return job;
  }
}

// False (and dealt with) for a job not worth running any more: past its
// deadline (counted, and left to its connection, which answers 504 at the
// deadline: the one writer of 504s), or its client left while it waited (499).
bool WorkerPool::runnable(Job& job) {
  const auto now = Clock::now();
  if (now >= job.deadline) {
    ++expired_in_queue_;
    return false;
  }
  // Only a job that waited can have lost its client meanwhile: the peek is a syscall.
  if (now - job.queued_at >= kClientCheckAfter && job.client_gone()) {
    ++dropped_disconnected_;
    job.complete(make_error_response(499, "the client closed the connection before the handler ran",
                                     job.request.request_id));
    return false;
  }
  return true;
}

// A job's ResponseSink: the head goes to the connection at once, with the
// stream its body then comes through. From then on the job has no deadline:
// the client's pace, not --timeout, bounds a streamed body (a 504 can no
// longer be sent, and a producer blocked on a slow client holds no Python lock).
class WorkerPool::LaneSink final : public ResponseSink {
 public:
  LaneSink(Run& run, int lane, Job& job) : run_(run), lane_(lane), job_(job) {}
  ~LaneSink() override {
    if (stream_) finish(false);  // the worker never said how the body ended
  }

  bool open(HttpResponseData&& head) override {
    BodyStream::Ends ends = BodyStream::make();
    head.stream = std::move(ends.consumer);
    stream_ = std::move(ends.producer);
    {
      std::lock_guard lock(run_.mutex);
      Lane& l = run_.lanes[static_cast<std::size_t>(lane_)];
      l.streaming = true;
      l.stream = stream_;
    }
    opened_ = true;
    // An owner that is gone drops the head, and with it the consumer's end:
    // the stream is cancelled and the first push() says so.
    return job_.complete(std::move(head));
  }
  bool takes_files() const override { return true; }
  bool open_file(HttpResponseData&& head, Fd&& fd, std::uint64_t offset, std::uint64_t length) override {
    opened_ = true;
    if (job_.request.method == "HEAD") {
      BodyStream::Ends ends = BodyStream::make();  // no body goes out: nothing is read
      ends.producer->finish(true);
      head.stream = std::move(ends.consumer);
    } else {
      head.stream = stream_file(std::move(fd), offset, length, [id = job_.request.request_id](std::uint64_t at) {
        spdlog::error("request {}: the file the app answered with ended or could not be read at byte {}; "
                      "the connection is closed with the body cut short",
                      id, at);
      });
    }
    return job_.complete(std::move(head));
  }
  bool push(std::string_view chunk) override { return stream_ && stream_->push(std::string(chunk)); }
  void finish(bool ok) override {
    if (!stream_) return;
    stream_->finish(ok);
    stream_.reset();
    std::lock_guard lock(run_.mutex);
    run_.lanes[static_cast<std::size_t>(lane_)].stream.reset();
  }
  bool opened() const override { return opened_; }

 private:
  Run& run_;
  const int lane_;
  Job& job_;
  std::shared_ptr<BodyStream> stream_;
  bool opened_ = false;
};

// Runs one job on one lane of the run's worker and completes it. No liveness
// check before (it would be a syscall per request): a worker that died while
// idle fails to take the job (handle() says job_not_taken) and the job goes to
// its replacement.
void WorkerPool::run_job(Run& run, Slot& slot, int lane, Job& job) {
  if (run.worker->defer(job)) {  // an event loop holds it now, and answers it
    ++slot.requests;
    return;
  }
  const std::uint64_t seq = ++job_seq_;
  {
    std::lock_guard lock(run.mutex);
    Lane& l = run.lanes[static_cast<std::size_t>(lane)];
    l.job_seq = seq;
    l.job_started = Clock::now();
    l.job_deadline = job.deadline;
    l.job_what = describe_job(job);
    l.interrupted = false;
  }
  ++busy_;
  LaneSink sink(run, lane, job);
  job.sink = &sink;
  HandleResult result = run.worker->handle(job, seq, lane);
  job.sink = nullptr;
  sink.finish(false);  // a no-op after the worker's own finish()
  bool abandoned, interrupted;
  {
    std::lock_guard lock(run.mutex);
    Lane& l = run.lanes[static_cast<std::size_t>(lane)];
    l.job_seq = 0;
    l.streaming = false;
    abandoned = run.abandoned;
    interrupted = l.interrupted;
    if (l.stuck) {
      l.stuck = false;
      --stuck_slots_;
    }
  }
  --busy_;
  if (result.worker_lost && result.job_not_taken && !hard_stop_ && !abandoned) {
    spdlog::warn("worker {} (pid {}) was gone before it took {}; it goes to the replacement",
                 run.slot, run.pid.load(), describe_job(job));
    std::lock_guard lock(run.mutex);
    run.carried.push_back(std::move(job));
    if (!run.after) run.after = After::restart;
    return;
  }
  ++slot.requests;
  if (!sink.opened()) complete(run, job, std::move(result), interrupted);
  if (abandoned) leave(run, After::abandoned);
  if (result.worker_lost) leave(run, After::restart);
}

void WorkerPool::complete(const Run& run, Job& job, HandleResult&& result, bool interrupted) {
  if (interrupted && Clock::now() >= job.deadline) {
    // Stopped at its deadline: not completed, the connection has answered (or now
    // answers) 504 itself, whatever the interrupted handler or the killed worker left.
    return;
  }
  if ((result.worker_lost || interrupted) && hard_stop_) {
    result.response = make_error_response(503, "server is shutting down", job.request.request_id);
  }
  if (result.worker_lost && !interrupted && !hard_stop_) {
    spdlog::error("worker {}: {} failed: {}", run.slot, describe_job(job), result.response.body);
  }
  job.complete(std::move(result.response));
}

void WorkerPool::supervise() {
  std::unique_lock lock(mutex_);
  while (!supervisor_stop_) {
    cv_.wait_for(lock, timing_.supervisor_tick, [&] { return supervisor_stop_; });
    if (supervisor_stop_) break;
    std::vector<std::shared_ptr<Run>> current;
    current.reserve(static_cast<std::size_t>(config_.pool.workers));
    for (int i = 0; i < config_.pool.workers; ++i) current.push_back(slots_[static_cast<std::size_t>(i)].run);
    // Abandoned and drained runs whose thread finished can be joined now; the
    // draining ones still get their workers' supervise() (clients that left).
    std::vector<std::shared_ptr<Run>> draining;
    for (auto it = runs_.begin(); it != runs_.end();) {
      if ((*it)->finished && ((*it)->abandoned || (*it)->draining)) {
        if ((*it)->thread.joinable()) (*it)->thread.join();
        it = runs_.erase(it);
      } else {
        if ((*it)->draining) draining.push_back(*it);
        ++it;
      }
    }
    lock.unlock();
    const auto now = Clock::now();
    for (auto& run : draining) {
      std::lock_guard run_lock(run->mutex);
      if (run->worker) run->worker->supervise(now);  // a stuck draining loop only delays its own end
    }
    for (auto& run : current) {
      check_deadline(*run, now);
      bool stuck = false;
      {
        std::lock_guard run_lock(run->mutex);
        if (run->worker) stuck = run->worker->supervise(now);
        if (run->worker && run->state == WorkerState::idle) {
          slot_held_[static_cast<std::size_t>(run->slot)].store(run->worker->held(), std::memory_order_relaxed);
        }
        if (!stuck && run->loop_stuck) {
          run->loop_stuck = false;
          --stuck_slots_;
        }
      }
      if (stuck) abandon_stuck_worker(*run);
    }
    lock.lock();
  }
}

// At a job's deadline: interrupt it. After the grace: abandon the worker (its
// other lanes finish what they run, then leave) and give the slot a new one
// (in-process strategies), within the limit.
void WorkerPool::check_deadline(Run& run, Clock::time_point now) {
  bool replace = false;
  {
    std::lock_guard lock(run.mutex);
    if (run.abandoned) return;
    for (Lane& lane : run.lanes) {
      if (lane.job_seq == 0 || lane.streaming) continue;
      if (!lane.interrupted) {
        interrupt_at_deadline(run, lane, now);
      } else if (now < lane.interrupted_at + timing_.interrupt_grace) {
        // Again, quietly: one exception may have been swallowed (`except BaseException`).
        if (now >= lane.last_interrupt + timing_.reinterrupt_every) {
          lane.last_interrupt = now;
          run.worker->interrupt(lane.job_seq);
        }
      } else if (run.worker->abandonable() &&
                 abandon(run, lane.stuck,
                         fmt::format("{} did not return {:.1f} s after its interrupt", lane.job_what,
                                     seconds_between(lane.interrupted_at, now)))) {
        replace = true;
        break;
      }
    }
  }
  if (replace && !stopping_) launch(run.slot);
}

// With run.mutex held.
void WorkerPool::interrupt_at_deadline(Run& run, Lane& lane, Clock::time_point now) {
  if (now < lane.job_deadline || hard_stop_) return;
  const InterruptAction action = run.worker->interrupt(lane.job_seq);
  lane.interrupted = true;
  lane.interrupted_at = now;
  lane.last_interrupt = now;
  const double ran = seconds_between(lane.job_started, now);
  if (action == InterruptAction::killed) {
    ++killed_;
    spdlog::warn("worker {}: {} still running after {:.1f} s, past its deadline; killed worker "
                 "process {} (a new one takes the slot)",
                 run.slot, lane.job_what, ran, run.pid.load());
  } else if (action == InterruptAction::interrupted) {
    ++interrupted_;
    spdlog::warn("worker {}: {} still running after {:.1f} s, past its deadline; interrupted "
                 "(gilgamesh.HandlerTimeout raised in the handler)",
                 run.slot, lane.job_what, ran);
  }
}

// A worker whose event loop stays blocked (in C) past a request's deadline
// after every interrupt: abandoned like a stuck handler thread.
void WorkerPool::abandon_stuck_worker(Run& run) {
  bool replace;
  {
    std::lock_guard lock(run.mutex);
    if (run.abandoned || !run.worker || !run.worker->abandonable()) return;
    replace = abandon(run, run.loop_stuck, "its event loop is still blocked well past a request's deadline "
                                           "after every interrupt (a call stuck in C?)");
  }
  if (replace && !stopping_) launch(run.slot);
}

// A handler still running after its interrupt's grace: blocked in C
// (time.sleep, a socket read) or it swallowed the exception; or an event loop
// blocked so. `what` says which, for the log; `stuck` is its flag counted in
// stuck_slots_. With run.mutex held. True when the run was abandoned (a new
// one must take the slot).
bool WorkerPool::abandon(Run& run, bool& stuck, const std::string& what) {
  if (abandoned_live_ >= max_abandoned_) {
    if (!stuck) {
      stuck = true;
      ++stuck_slots_;
      spdlog::error("worker {}: {}, and {} handler thread(s) are abandoned already (--max-abandoned {}): "
                    "not replacing it; the server reports not ready",
                    run.slot, what, abandoned_live_.load(), max_abandoned_);
    }
    return false;
  }
  if (stuck) {
    stuck = false;
    --stuck_slots_;
  }
  run.abandoned = true;
  if (!run.after) run.after = After::abandoned;
  run.changed.notify_all();
  run.worker->abandoned();
  ++abandoned_live_;
  ++abandoned_total_;
  ++replacements_;
  ++slots_[static_cast<std::size_t>(run.slot)].replacements;
  spdlog::error("worker {}: {}; abandoned its thread ({} abandoned, limit {}), a fresh worker takes the slot",
                run.slot, what, abandoned_live_.load(), max_abandoned_);
  return true;
}

bool WorkerPool::stop(Clock::time_point deadline) {
  if (stopped_) return true;
  stopped_ = true;
  // A start that failed does not wait for threads its app's import left.
  stop_deadline_ = started_ ? deadline : Clock::now();
  stopping_ = true;
  factory_->stopping();
  queue_.close();
  {
    std::lock_guard lock(mutex_);  // the lanes of pulling workers look at the queue now
    for (const auto& run : runs_) run->changed.notify_all();
  }
  bool done = drain(deadline);
  // What the workers could not take before the deadline is answered, not lost.
  for (Job& job : queue_.take_all()) {
    job.complete(make_error_response(503, "server is shutting down", job.request.request_id));
  }
  if (!done) done = cut_off();
  {
    std::lock_guard lock(mutex_);
    supervisor_stop_ = true;
    cv_.notify_all();
  }
  if (supervisor_.joinable()) supervisor_.join();
  const bool clean = join_runs();
  return factory_->shutdown(clean, stop_deadline_.load()) && clean;
}

// Until when a worker that ends may wait for the app's own threads: the
// graceful deadline once the pool stops (none if it never started), else
// --graceful-timeout from now.
Clock::time_point WorkerPool::threads_deadline() const {
  if (stopping_) return stop_deadline_.load();
  return Clock::now() + seconds_setting(config_.http.graceful_timeout);
}

bool WorkerPool::current_runs_finished() const {
  for (int i = 0; i < config_.pool.workers; ++i) {
    const auto& run = slots_[static_cast<std::size_t>(i)].run;
    if (run && !run->finished) return false;
  }
  return !draining_run_left();
}

// A recycled run still draining beside its slot's new one (its loop's own
// graceful deadline is running). With mutex_ held.
bool WorkerPool::draining_run_left() const {
  for (const auto& run : runs_) {
    if (run->draining && !run->finished) return true;
  }
  return false;
}

// Waits until every current run has finished, or the deadline passes, or only
// handlers already past their job's deadline are left (their clients have had
// the 504: they do not hold the drain up). True when every run finished.
bool WorkerPool::drain(Clock::time_point deadline) {
  std::unique_lock lock(mutex_);
  cv_.notify_all();
  auto only_overdue_left = [&] {
    if (draining_run_left()) return false;
    const auto now = Clock::now();
    for (int i = 0; i < config_.pool.workers; ++i) {
      const auto& run = slots_[static_cast<std::size_t>(i)].run;
      if (!run || run->finished) continue;
      std::lock_guard run_lock(run->mutex);
      bool busy = false;
      for (const Lane& lane : run->lanes) {
        if (lane.job_seq != 0 && (now < lane.job_deadline || lane.streaming)) return false;
        busy = busy || lane.job_seq != 0;
      }
      if (!busy) return false;  // between jobs: it leaves at once
    }
    return true;
  };
  bool done = false;
  while (!(done = current_runs_finished()) && Clock::now() < deadline && !only_overdue_left()) {
    cv_.wait_until(lock, std::min(deadline, Clock::now() + 50ms));
  }
  return done;
}

// Past the drain deadline: interrupts what still runs and gives it the stop
// grace. True when every run finished within it.
bool WorkerPool::cut_off() {
  hard_stop_ = true;
  std::vector<std::shared_ptr<Run>> current;
  {
    std::lock_guard lock(mutex_);
    for (int i = 0; i < config_.pool.workers; ++i) current.push_back(slots_[static_cast<std::size_t>(i)].run);
  }
  int running = 0;
  int ending = 0;  // no handler left: the worker's own end (ASGI lifespan shutdown, the app's threads)
  for (auto& run : current) {
    if (!run || run->finished) continue;
    std::lock_guard run_lock(run->mutex);
    if (run->abandoned) continue;
    const int before = running;
    for (const Lane& lane : run->lanes) {
      if (lane.job_seq == 0) continue;
      ++running;
      if (lane.stream) lane.stream->cancel();
      run->worker->interrupt(lane.job_seq);
    }
    if (running == before) ++ending;
  }
  if (running > 0) spdlog::warn("{} handler(s) still running at the graceful deadline; interrupted", running);
  if (ending > 0) {
    spdlog::warn("{} worker(s) still ending at the graceful deadline (an ASGI lifespan shutdown, or threads the "
                 "app started)", ending);
  }
  std::unique_lock lock(mutex_);
  return cv_.wait_for(lock, timing_.stop_grace, [this] { return current_runs_finished(); });
}

// Joins every run's thread that has finished and leaves the others (a handler
// still runs there; the thread keeps its run alive). False if one was left.
bool WorkerPool::join_runs() {
  std::vector<std::shared_ptr<Run>> runs;
  {
    std::lock_guard lock(mutex_);
    runs = std::move(runs_);
  }
  bool clean = true;
  for (auto& run : runs) {
    if (!run->thread.joinable()) continue;
    if (run->finished) {
      run->thread.join();
    } else {
      run->thread.detach();
      clean = false;
    }
  }
  if (!clean) {
    spdlog::warn("a worker's thread is still running (a handler, or the worker's end): leaving it (Python will "
                 "not be finalized)");
  }
  return clean;
}

ExecutorInfo WorkerPool::info() const {
  return ExecutorInfo{config_.pool.strategy, config_.pool.workers, factory_->python_version(),
                      factory_->python_build(), gil_enabled_, config_.pool.strategy_reason};
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
  for (int i = 0; i < config_.pool.workers; ++i) {
    const WorkerState s = slots_[static_cast<std::size_t>(i)].run->state;
    // A planned recycle and an interrupt are short: the slot counts as up meanwhile
    // (a handler that does not stop is abandoned and replaced, or counted stuck).
    if (s == WorkerState::idle || s == WorkerState::recycling) {
      return {State::ready, {}};
    }
  }
  return {State::degraded,
          "no worker is up" + (last_start_error_.empty() ? std::string() : ": " + last_start_error_)};
}

// A serving worker is busy while a lane runs a job, interrupting while one
// is past its deadline; the longest-running job gives busy_ms.
void WorkerPool::describe_lanes(Run& run, Clock::time_point now, WorkerStats& w) {
  std::lock_guard lock(run.mutex);
  bool interrupting = false;
  for (const Lane& lane : run.lanes) {
    if (lane.job_seq == 0) continue;
    ++w.busy_threads;
    interrupting = interrupting || lane.interrupted;
    const double ms = std::round(seconds_between(lane.job_started, now) * 1e4) / 10.0;
    w.busy_ms = std::max(w.busy_ms.value_or(0.0), ms);
  }
  if (run.worker) w.held = run.worker->held();
  if (w.state == WorkerState::idle && (w.busy_threads > 0 || w.held > 0)) {
    w.state = interrupting ? WorkerState::interrupting : WorkerState::busy;
  }
}

PoolStats WorkerPool::stats() const {
  PoolStats out;
  const long self = getpid();
  const auto now = Clock::now();
  {
    std::lock_guard lock(mutex_);
    for (int i = 0; i < config_.pool.workers; ++i) {
      const Slot& slot = slots_[static_cast<std::size_t>(i)];
      Run* run = slot.run.get();
      WorkerStats w;
      w.worker = i;
      w.state = run ? run->state.load() : WorkerState::stopped;
      w.requests = slot.requests.load();
      w.recycles = slot.recycles.load();
      w.replacements = slot.replacements.load();
      w.pid = run ? run->pid.load() : 0;
      if (const std::int64_t interp = run ? run->interpreter_id.load() : -1; interp >= 0) w.interpreter_id = interp;
      if (w.state == WorkerState::idle) ++out.ready_workers;
      w.threads = threads_;
      if (run) describe_lanes(*run, now, w);
      if (w.busy()) ++out.busy_workers;
      out.held += w.held;
      if (w.pid > 0 && w.pid != self) {
        add_memory(w, w.pid);
        out.worker_pids.push_back(w.pid);
      }
      out.workers.push_back(std::move(w));
    }
    for (const auto& run : runs_) {
      if (!run->draining || run->finished) continue;
      std::lock_guard run_lock(run->mutex);
      if (run->worker) out.held += run->worker->held();
    }
  }
  out.draining_workers = draining_live_.load();
  const bool own_interpreters = factory_->traits().owns_interpreters;
  out.queue_depth = queue_.depth();
  out.max_queue = config_.pool.max_queue;
  out.busy_threads = busy_.load();
  out.threads_per_worker = threads_;
  out.replacements_total = replacements_.load();
  out.interrupted_total = interrupted_.load();
  out.killed_total = killed_.load();
  out.abandoned_total = abandoned_total_.load();
  out.abandoned_live = abandoned_live_.load();
  out.max_abandoned = max_abandoned_;
  out.recycles_total = recycles_.load();
  out.dropped_disconnected_total = dropped_disconnected_.load();
  out.expired_in_queue_total = expired_in_queue_.load();
  out.interpreters_created = own_interpreters ? workers_started_.load() : 1;
  out.interpreters_ended = own_interpreters ? workers_ended_.load() : 0;
  factory_->add_stats(out);
  return out;
}

}  // namespace gilgamesh
