// What a strategy implements: one Worker (a sub-interpreter, a thread state of
// the shared interpreter, or a worker process) and a WorkerFactory that makes
// them. Everything else (queue, deadlines, recycling, replacement, drain,
// stats) is the WorkerPool's, once for every strategy.
//
// Threading contract: the pool drives one Worker from its "lanes", one OS
// thread each (--threads; one by default). Lane 0's thread calls start(),
// end() and the destructor (a sub-interpreter must be created and ended on the
// same thread); every lane's thread calls handle() for its jobs, at the same
// time as the others, between its enter_lane() and leave_lane(). interrupt() is
// the only call made from another thread (the pool's supervisor), possibly
// while handle() runs; it must not block.
#pragma once

#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "server/model/executor.hpp"

namespace gilgamesh {

struct HandleResult {
  HttpResponseData response;
  // The worker cannot serve another job (its process died or was killed): the
  // pool ends it and starts a fresh one in its slot.
  bool worker_lost = false;
  // With worker_lost: the job never reached a handler (the worker was gone
  // before it had the request), so it goes to the replacement instead.
  bool job_not_taken = false;
};

enum class InterruptAction {
  none,         // the job had already finished
  interrupted,  // an exception is being raised in the handler's thread
  killed,       // the worker process was killed
};

// What /stats shows about a worker (where the strategy knows it).
struct WorkerDescription {
  long pid = 0;                              // the process that runs the handlers
  std::optional<std::int64_t> interpreter_id;
};

// What a strategy is, as the pool and the app loader need to know it; each
// WorkerFactory declares its own. Nothing below the command line asks for a
// strategy by name.
struct StrategyTraits {
  bool owns_interpreters = false;      // each worker has an interpreter of its own, ended with it
  bool shares_app_object = false;      // every worker calls the one app object (wsgi.multithread)
  bool workers_are_processes = false;  // a worker is a process (stuck: killed, or abandoned then killed)
};

// Where a worker whose event loop takes its jobs itself (Worker::doorbell) gets
// them: the pool's queue, for one run of the worker. Called from the loop's thread.
class JobSource {
 public:
  virtual ~JobSource() = default;
  // Never blocks: up to `room` jobs into `out`, each one the pool has counted as
  // this worker's (its deadline checked, its client still there). None and `park`:
  // the worker's doorbell rings when a job comes, once (pull() or unpark() end it).
  virtual void pull(std::vector<Job>& out, std::size_t room, bool park) = 0;
  virtual void unpark() = 0;
  // A job pull() gave that the worker could not take after all (its process
  // ended meanwhile): the worker's next start takes it first.
  virtual void carry(Job&& job) = 0;
};

class Worker {
 public:
  virtual ~Worker() = default;

  // Brings the worker up (interpreter, thread state or process) with the app
  // loaded, and returns the app's routes. Throws StartupError.
  virtual std::vector<RouteInfo> start() = 0;
  // Runs job `seq` (a number unique within the pool) on lane `lane`'s thread.
  // Lanes call it at the same time. Never throws.
  virtual HandleResult handle(const Job& job, std::uint64_t seq, int lane) = 0;
  // With --threads N, lanes 1..N-1 get threads of their own: each calls
  // enter_lane() once after start() and leave_lane() before end(), on its own
  // thread (lane 0 is start()'s thread, set up by start() itself).
  virtual void enter_lane(int) {}
  virtual void leave_lane(int) {}
  // From another thread: stop job `seq` if it still runs. Never blocks. The
  // pool calls it again now and then until the job ends or is abandoned.
  virtual InterruptAction interrupt(std::uint64_t seq) = 0;
  // Ends what start() made. start() may be called again afterwards. Threads
  // the app started itself that Python's exit would wait for (non-daemon) get
  // until `threads_until` to end (app_threads.hpp); a worker whose app threads
  // still run then is left to them, not ended.
  virtual void end(Clock::time_point threads_until) = 0;
  // The app started threads of its own that still run: ending this worker may
  // wait for them (the pool then lets a new worker take the slot meanwhile).
  virtual bool app_threads_running() { return false; }

  // end() + start() gives a fresh interpreter or process (recycling is worth it).
  virtual bool recyclable() const = 0;
  // A stuck handler's thread can be left to finish on its own while a new
  // Worker takes the slot (in-process strategies, and processes with several
  // lanes). A process with one lane is killed instead (interrupt()).
  virtual bool abandonable() const = 0;
  // The pool has abandoned this worker (a new one serves the slot): no lane
  // gets another job; each finishes what it runs, then leaves. From the
  // supervisor, with the pool's lock for this worker held: must not block. A
  // worker process ends itself here once its other lanes have answered.
  virtual void abandoned() {}
  // A worker whose event loop holds the requests its lanes hand it (a route
  // app's `async def` handlers) takes `job` over and completes it later from its
  // own thread: true, and the pool forgets the job. Other workers run each job in
  // handle(): false. (An ASGI app's worker pulls instead: doorbell().)
  virtual bool defer(Job&) { return false; }
  // A worker whose event loop takes its jobs from the queue itself (an ASGI app:
  // no lane stands between the I/O thread and the loop): what wakes the loop, from
  // any thread, without blocking. Empty: the lanes hand it the jobs.
  virtual std::function<void()> doorbell() { return {}; }
  // The doorbell pulls the jobs itself, on the thread that rings it (an I/O
  // thread's time: the queue must not make it spin): a worker process's, which
  // writes them to the process. False: it wakes the loop's own thread.
  virtual bool pulls_when_rung() const { return false; }
  // With a doorbell, from lane 0 while the worker serves: where to pull from;
  // nullptr detaches (no pull() is running once it returns, and none follows).
  virtual void pull_from(JobSource*) {}
  // Before a lane takes a job: waits until the worker can hold one more
  // (a route app's event loop holds --worker-connections), at most until
  // `until`. False: still full.
  virtual bool wait_for_room(Clock::time_point) { return true; }
  // Requests the worker holds beyond its lanes' (an ASGI loop's), for /stats.
  virtual int held() const { return 0; }
  // From the supervisor, every tick, while the worker exists (between jobs
  // too): what a worker watches for itself (an ASGI loop: clients that left, a
  // loop blocked past a deadline). Must not block. True: the worker is stuck
  // (its event loop stays blocked past a deadline after every interrupt): the
  // pool abandons it, as it abandons a worker whose handler thread is stuck.
  virtual bool supervise(Clock::time_point) { return false; }
  // Between jobs: whether the worker is still there. Workers that can vanish
  // while idle (processes) say so, and the pool asks now and then.
  virtual bool can_vanish_while_idle() const { return false; }
  virtual bool alive() { return true; }
  // Safe to call from any thread while the worker is started.
  virtual WorkerDescription describe() const = 0;
};

class WorkerFactory {
 public:
  virtual ~WorkerFactory() = default;
  // Once, on the thread that starts the pool, before any worker: what every
  // worker shares (the embedded runtime, an app loaded in the main interpreter,
  // the zygote). Throws StartupError.
  virtual void prepare() = 0;
  virtual std::unique_ptr<Worker> make(int slot) = 0;
  // After prepare(): whether the GIL is enabled where the handlers run.
  virtual bool gil_enabled() const = 0;
  // The Python the workers run: "3.13.5", and its build.
  virtual std::string python_version() const = 0;
  virtual PythonBuild python_build() const = 0;
  virtual StrategyTraits traits() const = 0;
  // Why new workers cannot be started now (the zygote is gone), or nothing.
  virtual std::optional<std::string> unavailable() const { return std::nullopt; }
  // The pool is stopping: a start() that waits for something (a new process)
  // should give up rather than wait its full time. From any thread.
  virtual void stopping() {}
  // Strategy-wide figures for /stats (the zygote's pid, say).
  virtual void add_stats(PoolStats&) const {}
  // Executor::use_reactor(): for the workers make() returns from now on. From any thread.
  virtual void use_reactor(Reactor*) {}
  // After every worker has ended (or been abandoned). `clean` is false when a
  // handler thread still runs: nothing that thread may use can be torn down.
  // The app's own threads get until `deadline` (the graceful one) to end.
  // True when everything was torn down; false when something was left running
  // (the process must then leave without finalizing Python).
  virtual bool shutdown(bool clean, Clock::time_point deadline) = 0;
};

std::unique_ptr<WorkerFactory> make_subinterpreter_factory(const ServerConfig& config);
std::unique_ptr<WorkerFactory> make_shared_interpreter_factory(const ServerConfig& config);
std::unique_ptr<WorkerFactory> make_process_factory(const ServerConfig& config);

}  // namespace gilgamesh
