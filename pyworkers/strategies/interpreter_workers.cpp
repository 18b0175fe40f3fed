// The in-process strategies as Workers:
//   subinterpreters  one own-GIL sub-interpreter (PEP 684) per worker thread,
//                    created, used and ended on that thread;
//   threads /        one thread state of the main interpreter per worker
//   free-threaded    thread (the app is imported once, in the main interpreter).
// No PyGILState_* anywhere: a worker thread makes its own thread states and
// attaches them with py::AttachedScope.
//
// Interrupting a handler (the pool's supervisor, at the job's deadline): a
// helper thread attaches a thread state of the handler's interpreter and
// raises gilgamesh.HandlerTimeout (a BaseException, so `except Exception` does
// not swallow it) in the handler's thread with PyThreadState_SetAsyncExc. It
// runs on its own thread because attaching can wait for a GIL that a handler
// busy in C holds. InterruptTarget keeps it from hitting the wrong job: the
// helper checks the running job and sets the exception under `mutex`, and the
// worker clears the running job under the same mutex before it takes another;
// neither side ever waits for that mutex while attached, so a stop-the-world
// pause (free-threaded build) cannot deadlock on it.
#include <spdlog/spdlog.h>

#include <algorithm>
#include <atomic>
#include <condition_variable>
#include <mutex>
#include <shared_mutex>

#include "pyworkers/apps/asgi_app.hpp"
#include "pyworkers/apps/python_app.hpp"
#include "pyworkers/embedding/app_threads.hpp"
#include "pyworkers/embedding/python_runtime.hpp"
#include "pyworkers/pool/worker.hpp"
#include "pyworkers/embedding/worker_identity.hpp"

namespace gilgamesh {

namespace {

using namespace std::chrono_literals;

// A handler's thread, as the interrupting helper sees it.
struct InterruptTarget {
  InterruptTarget(PyInterpreterState* i, unsigned long t) : interp(i), thread_id(t) {}
  PyInterpreterState* const interp;
  const unsigned long thread_id;
  std::atomic<std::uint64_t> running{0};  // the job being handled; 0: none
  std::mutex mutex;                       // taken only while detached
  bool raised = false;                    // an exception was set and may still be pending
  bool ended = false;                     // the interpreter is gone, or going
  bool loop = false;                      // an ASGI event loop's thread (set before it is shared)
  std::atomic<bool> helper_active{false};  // one helper at a time per handler thread
};

// The helper threads, counted so the runtime is never finalized under one.
// Shared with them: a helper may outlive the strategy that launched it.
class Interrupters : public std::enable_shared_from_this<Interrupters> {
 public:
  void launch(std::shared_ptr<InterruptTarget> target, std::uint64_t seq) {
    {
      std::lock_guard lock(mutex_);
      ++active_;
    }
    std::thread([self = shared_from_this(), target = std::move(target), seq] {
      raise_in(*target, seq);
      target->helper_active = false;
      std::lock_guard lock(self->mutex_);
      --self->active_;
      self->idle_.notify_all();
    }).detach();
  }

  // False if a helper is still waiting (for a GIL a stuck handler holds).
  bool wait_idle(std::chrono::milliseconds timeout) {
    std::unique_lock lock(mutex_);
    return idle_.wait_for(lock, timeout, [&] { return active_ == 0; });
  }

 private:
  static void raise_in(InterruptTarget& target, std::uint64_t seq) {
    std::lock_guard lock(target.mutex);
    if (target.ended || target.running.load() != seq) return;
    PyThreadState* ts = PyThreadState_New(target.interp);
    PyEval_RestoreThread(ts);
    if (raise_handler_timeout(target)) target.raised = true;
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
  }

  // Attached to the target's interpreter, whose own HandlerTimeout is raised.
  static bool raise_handler_timeout(const InterruptTarget& target) {
    py::Ref api = py::Ref::steal(PyImport_ImportModule("gilgamesh"));
    py::Ref timeout = api ? py::Ref::steal(PyObject_GetAttrString(api.get(), "HandlerTimeout")) : py::Ref();
    if (!timeout) {
      spdlog::error("cannot interrupt a handler: {}", py::fetch_error_summary());
      return false;
    }
    // A loop between its tasks is not in a handler (the one that kept it busy has just
    // returned): raised there, the exception would lose the requests it had just taken.
    if (target.loop) return AsgiLoop::interrupt_task(target.thread_id, timeout.get());
    return PyThreadState_SetAsyncExc(target.thread_id, timeout.get()) > 0;
  }

  std::mutex mutex_;
  std::condition_variable idle_;
  int active_ = 0;
};

// What the in-process workers share: handle() with the interrupt protocol, on
// each lane (--threads) its own thread state of the worker's interpreter.
class InProcessWorker : public Worker {
 public:
  InProcessWorker(Strategy strategy, int slot, int threads, std::shared_ptr<Interrupters> interrupters)
      : strategy_(strategy), slot_(slot), interrupters_(std::move(interrupters)),
        lanes_(static_cast<std::size_t>(threads)) {}

  HandleResult handle(const Job& job, std::uint64_t seq, int lane) override {
    Lane& l = lanes_[static_cast<std::size_t>(lane)];
    HandleResult out;
    {
      py::AttachedScope attached(l.ts);
      l.target->running = seq;
      out.response = app_->handle(job.route_index, job.request, job.sink);
    }
    bool raised;
    {
      std::lock_guard lock(l.target->mutex);
      l.target->running = 0;
      raised = std::exchange(l.target->raised, false);
    }
    if (raised) {
      // Set, but maybe not raised yet: it must not fire in the next job.
      py::AttachedScope attached(l.ts);
      PyThreadState_SetAsyncExc(l.target->thread_id, nullptr);
    }
    return out;
  }

  // May be called again while the handler runs on (a handler can swallow one
  // exception); a helper still waiting for the GIL is not doubled.
  InterruptAction interrupt(std::uint64_t seq) override {
    for (Lane& l : lanes_) {
      const std::shared_ptr<InterruptTarget> target = std::atomic_load(&l.shared_target);
      if (!target || target->running.load() != seq) continue;
      if (!target->helper_active.exchange(true)) interrupters_->launch(target, seq);
      return InterruptAction::interrupted;
    }
    return InterruptAction::none;
  }

  // Lanes 1..: a thread state of the worker's interpreter for this thread.
  void enter_lane(int lane) override {
    PyThreadState* ts = PyThreadState_New(interp_);  // bound to this thread
    {
      py::AttachedScope attached(ts);
      adopt_server_thread();
    }
    set_lane(lane, ts);
  }

  void leave_lane(int lane) override {
    Lane& l = lanes_[static_cast<std::size_t>(lane)];
    if (l.ts == nullptr) return;
    end_target(l);
    PyEval_RestoreThread(l.ts);
    PyThreadState_Clear(l.ts);
    PyThreadState_DeleteCurrent();
    l.ts = nullptr;
  }

  bool abandonable() const override { return true; }

  // --- an ASGI app: the worker's event loop holds the requests ---

  bool defer(Job& job) override {
    if (!asgi_ || !app_->on_loop(job.route_index)) return false;
    asgi_->submit(job);
    return true;
  }
  bool wait_for_room(Clock::time_point until) override { return !asgi_ || asgi_->wait_for_room(until); }
  // An ASGI app's loop takes its requests from the pool's queue itself.
  std::function<void()> doorbell() override {
    std::shared_ptr<AsgiLoop> loop = current_loop();
    if (!loop || !loop->pulls()) return {};
    return [loop] { loop->ring(); };
  }
  void pull_from(JobSource* source) override {
    if (std::shared_ptr<AsgiLoop> loop = current_loop()) loop->pull_from(source);
  }
  int held() const override {
    std::shared_ptr<AsgiLoop> loop = current_loop();
    return loop ? static_cast<int>(loop->in_flight()) : 0;
  }
  // A loop blocked past a request's deadline (a handler spinning in CPU code)
  // gets HandlerTimeout raised in its thread, as a handler on a lane would; one
  // still blocked after every interrupt (in C) is stuck: the pool abandons the worker.
  bool supervise(Clock::time_point now) override {
    std::shared_ptr<AsgiLoop> loop = current_loop();
    if (!loop) return false;
    if (loop->supervise(now)) {
      const std::shared_ptr<InterruptTarget> target = std::atomic_load(&loop_target_);
      if (target && !target->helper_active.exchange(true)) {
        spdlog::warn("worker {}: the ASGI event loop is still busy past a request's deadline; interrupting it",
                     slot_);
        interrupters_->launch(target, kLoopSeq);
      }
    }
    return loop->stuck(now);
  }

  WorkerDescription describe() const override {
    WorkerDescription d;
    d.pid = getpid();
    d.interpreter_id = interpreter_id_;
    return d;
  }

 protected:
  struct Lane {
    PyThreadState* ts = nullptr;
    std::shared_ptr<InterruptTarget> target;         // the lane's own thread's view
    std::shared_ptr<InterruptTarget> shared_target;  // the supervisor's (atomic_load/store)
  };

  // After start() loaded the app, without the GIL: an ASGI app gets its event
  // loop (lifespan startup included). Throws StartupError.
  void start_loop(const ServerConfig& config) {
    if (!app_->needs_loop()) return;
    AsgiLoop::Hooks hooks;
    hooks.entered = [this] {
      auto target = std::make_shared<InterruptTarget>(interp_, PyThread_get_thread_ident());
      target->running = kLoopSeq;
      target->loop = true;
      std::atomic_store(&loop_target_, target);
    };
    hooks.leaving = [this] {
      const std::shared_ptr<InterruptTarget> target = std::atomic_exchange(&loop_target_, {});
      if (target) end_target_of(*target);
    };
    hooks.pulls = dynamic_cast<AsgiApp*>(app_) != nullptr;  // a route app's loop gets its calls from a lane
    auto loop = std::make_shared<AsgiLoop>(interp_, *app_, config, std::move(hooks));
    loop->start();
    std::lock_guard lock(loop_mutex_);
    asgi_ = std::move(loop);
  }
  // Before the app is released, without the GIL: the loop lets its requests
  // finish, runs the lifespan shutdown and ends.
  void stop_loop() {
    if (!asgi_) return;
    asgi_->stop();
    std::lock_guard lock(loop_mutex_);
    asgi_.reset();
  }

  // On lane 0's thread, attached to `ts` (the worker's first thread state).
  void attach_target(PyThreadState* ts) {
    interp_ = PyThreadState_GetInterpreter(ts);
    interpreter_id_ = PyInterpreterState_GetID(interp_);
    set_lane(0, ts);
  }
  // On lane 0's thread, detached: no helper attaches to the interpreter after this.
  void detach_target() { end_target(lanes_[0]); }
  PyThreadState* lane0_ts() const { return lanes_[0].ts; }
  void clear_lane0() { lanes_[0].ts = nullptr; }

  const Strategy strategy_;
  const int slot_;
  std::shared_ptr<Interrupters> interrupters_;
  PythonApp* app_ = nullptr;
  PyInterpreterState* interp_ = nullptr;
  std::int64_t interpreter_id_ = -1;

 private:
  void set_lane(int lane, PyThreadState* ts) {
    Lane& l = lanes_[static_cast<std::size_t>(lane)];
    l.ts = ts;
    l.target = std::make_shared<InterruptTarget>(interp_, PyThread_get_thread_ident());
    std::atomic_store(&l.shared_target, l.target);
    current_worker() = {strategy_name(strategy_).data(), slot_};
  }
  static void end_target(Lane& l) {
    if (l.target) end_target_of(*l.target);
  }
  static void end_target_of(InterruptTarget& target) {
    std::lock_guard lock(target.mutex);
    target.ended = true;
  }
  std::shared_ptr<AsgiLoop> current_loop() const {
    std::lock_guard lock(loop_mutex_);
    return asgi_;
  }

  // The loop's thread runs no numbered job: its interrupts carry this number.
  static constexpr std::uint64_t kLoopSeq = ~std::uint64_t{0};

  std::vector<Lane> lanes_;
  mutable std::mutex loop_mutex_;      // guards asgi_ (the supervisor reads it)
  std::shared_ptr<AsgiLoop> asgi_;     // an ASGI app's event loop, while started
  std::shared_ptr<InterruptTarget> loop_target_;  // its thread (atomic_load/store)
};

// Before the main interpreter is finalized: Py_FinalizeEx would wait for the
// app's threads there too, without a bound. False (logged) when some still run
// at `deadline`: the interpreter must not be finalized.
bool main_interpreter_threads_ended(PythonRuntime& runtime, Clock::time_point deadline) {
  const std::vector<std::string> left = wait_for_app_threads(runtime.main_thread_state(), deadline);
  if (!left.empty()) {
    spdlog::warn("thread(s) {} that the app started still run past --graceful-timeout: leaving them",
                 describe_threads(left));
  }
  return left.empty();
}

// --- subinterpreters ---------------------------------------------------------

// Interpreters are created one at a time (creating two at once intermittently fails
// with "Failed to import encodings module" on 3.13), and never while one is being
// ended: creation and ending both take this lock exclusively.
// The app imports that follow run in parallel too: 3.13 corrupts its heap when
// several sub-interpreters import some extension modules (datetime and friends)
// for the first time at once, which PythonRuntime prevents by importing those in
// the main interpreter first (test_startup_stress.py keeps both honest).
std::shared_mutex& interpreter_lifecycle_mutex() {
  static std::shared_mutex m;
  return m;
}

class SubinterpreterWorker final : public InProcessWorker {
 public:
  SubinterpreterWorker(const ServerConfig& config, PyInterpreterState* main_interp, int slot,
                       std::shared_ptr<Interrupters> interrupters, std::shared_ptr<std::atomic<int>> left_running)
      : InProcessWorker(config.pool.strategy, slot, config.pool.threads, std::move(interrupters)),
        config_(config),
        options_(config.app),
        context_(load_context(config, false)),
        main_interp_(main_interp),
        left_running_(std::move(left_running)) {}

  ~SubinterpreterWorker() override {
    end(Clock::now());
    if (main_ts_ == nullptr) return;
    std::lock_guard lock(interpreter_lifecycle_mutex());
    PyEval_RestoreThread(main_ts_);
    PyThreadState_Clear(main_ts_);
    PyThreadState_DeleteCurrent();
  }

  std::vector<RouteInfo> start() override {
    // One creation at a time: two at once intermittently fail with "Failed to import encodings
    // module" (seen in a fresh-clone make test and, as a worker that failed to start, in CI).
    std::unique_lock lock(interpreter_lifecycle_mutex());
    if (main_ts_ == nullptr) main_ts_ = PyThreadState_New(main_interp_);
    PyEval_RestoreThread(main_ts_);

    const PyInterpreterConfig config = isolated_interpreter_config();
    PyThreadState* sub = nullptr;
    PyStatus status = Py_NewInterpreterFromConfig(&sub, &config);
    if (PyStatus_Exception(status)) {
      PyEval_SaveThread();
      throw StartupError(StartupError::Kind::worker, std::string("cannot create a sub-interpreter: ") +
                                                         (status.err_msg ? status.err_msg : "unknown error"));
    }
    // Now `sub` is current and holds its own GIL; the main GIL is released.
    lock.unlock();
    try {
      app_holder_ = PythonApp::load(options_, context_);
    } catch (...) {
      PyEval_SaveThread();
      end_interpreter(sub, Clock::now());  // a start that failed does not wait for the app's threads
      throw;
    }
    app_ = app_holder_.get();
    attach_target(sub);
    PyEval_SaveThread();
    try {
      start_loop(config_);
    } catch (...) {
      end(Clock::now());
      throw;
    }
    return app_->routes();
  }

  void end(Clock::time_point threads_until) override {
    PyThreadState* ts = lane0_ts();
    if (ts == nullptr) return;
    stop_loop();
    detach_target();
    end_interpreter(ts, threads_until);
    clear_lane0();
  }

  bool recyclable() const override { return true; }
  bool app_threads_running() override {
    PyThreadState* ts = lane0_ts();
    if (ts == nullptr) return false;
    py::AttachedScope attached(ts);
    return !app_thread_names().empty();
  }

 private:
  const ServerConfig& config_;  // the factory's, which outlives its workers
  const AppOptions options_;
  const LoadContext context_;
  PyInterpreterState* main_interp_;
  PyThreadState* main_ts_ = nullptr;
  // Releases the app and ends the interpreter of `ts` (this thread's, detached;
  // the lanes have left) once the threads the app started have ended, waiting
  // until `threads_until`. Py_EndInterpreter would wait for them too, without a
  // bound, and holding the lifecycle lock, which every other worker's start and
  // end takes. Threads still running then keep the interpreter: it is left to
  // them, never ended, and the server never finalizes Python.
  void end_interpreter(PyThreadState* ts, Clock::time_point threads_until) {
    const std::vector<std::string> left = wait_for_app_threads(ts, threads_until);
    std::unique_lock lock(interpreter_lifecycle_mutex(), std::defer_lock);
    if (left.empty()) lock.lock();
    PyEval_RestoreThread(ts);
    if (app_holder_) app_holder_->release();
    app_holder_.reset();
    app_ = nullptr;
    if (left.empty()) {
      Py_EndInterpreter(ts);  // leaves no thread state current, no GIL held
      return;
    }
    PyEval_SaveThread();
    ++*left_running_;
    spdlog::warn("worker {}: thread(s) {} that the app started still run: its "
                 "sub-interpreter is left to them, not ended (its memory stays in use; the server "
                 "will exit without finalizing Python)",
                 slot_, describe_threads(left));
  }

  std::unique_ptr<PythonApp> app_holder_;
  std::shared_ptr<std::atomic<int>> left_running_;  // the factory's count of interpreters left to app threads
};

class SubinterpreterFactory final : public WorkerFactory {
 public:
  explicit SubinterpreterFactory(const ServerConfig& config)
      : config_(config),
        runtime_(std::make_unique<PythonRuntime>(PythonConcurrency::kSubinterpreters)) {}

  // Recycling (--max-requests) ends a sub-interpreter per recycle. On a CPython
  // that does not free an ended one's arenas (unpatched 3.12/3.13) that grows
  // the server without bound: say so once, loudly, before serving.
  void prepare() override {
    if (config_.pool.preload) preload_app();
    if (config_.pool.max_requests == 0) return;
    const std::string problem = runtime_->subinterpreter_recycling_problem();
    if (!problem.empty()) spdlog::warn("--max-requests {}: {}", config_.pool.max_requests, problem);
  }
  // --preload: the app is imported once in the main interpreter (and stays in its
  // sys.modules), so that single-phase C extensions initialize where they may; a
  // worker's own import then gets CPython's clean ImportError for them, or the
  // package's pure-Python fallback, instead of running their PyInit in a sub-interpreter.
  void preload_app() {
    py::AttachedScope attached(runtime_->main_thread_state());
    std::unique_ptr<PythonApp> app = PythonApp::load(config_.app, load_context(config_, false));
    app->release();
  }

  std::unique_ptr<Worker> make(int slot) override {
    return std::make_unique<SubinterpreterWorker>(config_, runtime_->main_interpreter(), slot,
                                                  interrupters_, left_running_);
  }
  std::string python_version() const override { return embedded_python_version(); }
  PythonBuild python_build() const override { return embedded_python_build(); }
  bool gil_enabled() const override { return true; }
  StrategyTraits traits() const override {
    return {.owns_interpreters = true, .shares_app_object = false, .workers_are_processes = false};
  }
  // The pool counts a worker's end; an interpreter left to the app's threads did not end.
  // A worker's end() counts it left before the pool counts the end: the min covers a
  // /stats read in between.
  void add_stats(PoolStats& out) const override {
    const auto left = static_cast<std::uint64_t>(left_running_->load());
    out.interpreters_left = left;
    out.interpreters_ended -= std::min(left, out.interpreters_ended);
  }

  bool shutdown(bool clean, Clock::time_point deadline) override {
    // Finalizing would end the interpreters left to their app's threads, and wait for those.
    // --preload imported the app in the main interpreter too: threads it started there.
    if (clean && *left_running_ == 0 && interrupters_->wait_idle(2s) &&
        main_interpreter_threads_ended(*runtime_, deadline)) {
      runtime_.reset();  // finalizes
      return true;
    }
    (void)runtime_.release();  // something may still use the interpreter: never finalize
    return false;
  }

 private:
  const ServerConfig config_;
  std::unique_ptr<PythonRuntime> runtime_;
  std::shared_ptr<Interrupters> interrupters_ = std::make_shared<Interrupters>();
  std::shared_ptr<std::atomic<int>> left_running_ = std::make_shared<std::atomic<int>>(0);
};

// --- threads / free-threaded ---------------------------------------------------

class SharedInterpreterWorker final : public InProcessWorker {
 public:
  SharedInterpreterWorker(const ServerConfig& config, PyInterpreterState* interp, PythonApp* app, int slot,
                          std::shared_ptr<Interrupters> interrupters)
      : InProcessWorker(config.pool.strategy, slot, config.pool.threads, std::move(interrupters)),
        config_(config),
        main_interp_(interp) {
    app_ = app;
  }
  ~SharedInterpreterWorker() override { end(Clock::now()); }

  std::vector<RouteInfo> start() override {
    PyThreadState* ts = PyThreadState_New(main_interp_);  // bound to this thread
    {
      py::AttachedScope attached(ts);
      adopt_server_thread();
    }
    attach_target(ts);
    try {
      start_loop(config_);
    } catch (...) {
      end(Clock::now());
      throw;
    }
    return app_->routes();
  }

  // The app's threads live in the shared interpreter: the factory waits for them.
  void end(Clock::time_point) override {
    PyThreadState* ts = lane0_ts();
    if (ts == nullptr) return;
    stop_loop();
    detach_target();
    PyEval_RestoreThread(ts);
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
    clear_lane0();
  }

  // One interpreter for every worker: end() + start() would change nothing.
  bool recyclable() const override { return false; }

 private:
  const ServerConfig& config_;  // the factory's, which outlives its workers
  PyInterpreterState* main_interp_;
};

class SharedInterpreterFactory final : public WorkerFactory {
 public:
  explicit SharedInterpreterFactory(const ServerConfig& config)
      : config_(config),
        runtime_(std::make_unique<PythonRuntime>(
            gil_wanted() ? PythonConcurrency::kNone : PythonConcurrency::kThreads,
            gil_wanted() && config.pool.python_build == PythonBuild::free_threaded)) {}

  // The app is imported once, in the main interpreter, on this (the main) thread.
  void prepare() override {
    py::AttachedScope attached(runtime_->main_thread_state());
    app_ = PythonApp::load(config_.app, load_context(config_, true));
    gil_enabled_ = PythonApp::gil_enabled();
    if (!gil_wanted() && gil_enabled_) {
      std::string msg = "the GIL is enabled after importing app '" + config_.app.target + "'";
      if (app_->gil_warnings().empty()) {
        msg += ": a C extension it imports does not declare free-threading support (Py_mod_gil)";
      }
      for (const auto& w : app_->gil_warnings()) msg += ": " + w;
      if (!config_.pool.allow_gil) {
        app_->release();
        app_.reset();
        throw StartupError(msg + " (pass --allow-gil to run anyway, with the GIL)");
      }
      spdlog::warn("{} (running anyway: --allow-gil; handlers will not run in parallel)", msg);
    }
  }

  std::unique_ptr<Worker> make(int slot) override {
    return std::make_unique<SharedInterpreterWorker>(config_, runtime_->main_interpreter(), app_.get(), slot,
                                                     interrupters_);
  }
  std::string python_version() const override { return embedded_python_version(); }
  PythonBuild python_build() const override { return embedded_python_build(); }
  bool gil_enabled() const override { return gil_enabled_; }
  StrategyTraits traits() const override {
    return {.owns_interpreters = false, .shares_app_object = true, .workers_are_processes = false};
  }

  bool shutdown(bool clean, Clock::time_point deadline) override {
    if (clean && interrupters_->wait_idle(2s) && main_interpreter_threads_ended(*runtime_, deadline)) {
      if (app_) {
        py::AttachedScope attached(runtime_->main_thread_state());
        app_->release();
      }
      app_.reset();
      runtime_.reset();  // finalizes
      return true;
    }
    // A thread still runs in the main interpreter: leave everything to it.
    (void)app_.release();
    (void)runtime_.release();
    return false;
  }

 private:
  // threads keeps (or, on a free-threaded build, turns on) the GIL; free-threaded runs without it.
  bool gil_wanted() const { return config_.pool.strategy == Strategy::threads; }

  const ServerConfig config_;
  std::unique_ptr<PythonRuntime> runtime_;
  std::unique_ptr<PythonApp> app_;
  bool gil_enabled_ = true;
  std::shared_ptr<Interrupters> interrupters_ = std::make_shared<Interrupters>();
};

}  // namespace

std::unique_ptr<WorkerFactory> make_subinterpreter_factory(const ServerConfig& config) {
  return std::make_unique<SubinterpreterFactory>(config);
}

std::unique_ptr<WorkerFactory> make_shared_interpreter_factory(const ServerConfig& config) {
  return std::make_unique<SharedInterpreterFactory>(config);
}

}  // namespace gilgamesh
