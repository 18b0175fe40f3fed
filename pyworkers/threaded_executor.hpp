// Strategies whose workers are threads of this process: `subinterpreters`
// (one own-GIL interpreter per thread), `threads` (one interpreter, its GIL
// shared) and `free-threaded` (one interpreter, no GIL). They share the job
// queue, the worker loop, recycling, draining and stats; they differ only in
// the InterpreterHost each worker thread owns.
#pragma once

#include "executor.hpp"
#include "job_queue.hpp"
#include "python_app.hpp"
#include "python_runtime.hpp"

#include <atomic>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <thread>
#include <vector>

namespace gilgamesh {

// The Python side of one worker thread. Every method is called on that
// thread only, with no Python thread state attached on entry or exit.
class InterpreterHost {
 public:
  virtual ~InterpreterHost() = default;
  // Makes the interpreter (or thread state) ready and the app loaded.
  // Throws StartupError.
  virtual const std::vector<RouteInfo>& start() = 0;
  virtual HttpResponseData handle(const Job& job) = 0;
  // Ends what start() made; start() may be called again afterwards (recycling).
  virtual void end() = 0;
  // Whether start()+end() gives a fresh interpreter (else recycling is a no-op).
  virtual bool can_recycle() const = 0;
};

class ThreadedExecutor final : public Executor {
 public:
  using HostFactory = std::function<std::unique_ptr<InterpreterHost>(int worker)>;

  // `prepare` runs on the calling (main) thread in start(), before the
  // workers: it may load the app in the main interpreter. It returns whether
  // the GIL is enabled (no prepare: true).
  ThreadedExecutor(const ExecutorConfig& config, std::unique_ptr<PythonRuntime> runtime,
                   std::function<bool()> prepare, HostFactory factory);
  ~ThreadedExecutor() override;

  void start() override;
  const std::vector<RouteInfo>& routes() const override { return routes_; }
  SubmitResult submit(Job& job) override;
  bool stop(Clock::time_point deadline) override;
  ExecutorInfo info() const override;
  nlohmann::json stats() const override;

 private:
  struct WorkerState {
    std::atomic<std::uint64_t> requests{0};
    std::atomic<std::uint64_t> recycles{0};
    std::atomic<bool> busy{false};
  };

  void worker_main(int index);
  unsigned next_recycle_limit();
  void report_started(int index, const std::vector<RouteInfo>* routes, std::string error);

  ExecutorConfig config_;
  std::unique_ptr<PythonRuntime> runtime_;
  std::function<bool()> prepare_;
  HostFactory factory_;
  JobQueue queue_;
  std::vector<std::thread> threads_;
  std::unique_ptr<WorkerState[]> worker_state_;
  std::vector<RouteInfo> routes_;
  std::atomic<int> busy_{0};
  std::atomic<bool> gil_enabled_{true};

  std::mutex lifecycle_mutex_;
  std::condition_variable lifecycle_cv_;
  int started_ = 0;
  int exited_ = 0;
  std::string startup_error_;
  bool abandoned_ = false;  // workers outlived the drain deadline: never finalize
};

// The strategy factories used by make_executor.
std::unique_ptr<Executor> make_subinterpreter_executor(const ExecutorConfig& config);
std::unique_ptr<Executor> make_shared_interpreter_executor(const ExecutorConfig& config);

}  // namespace gilgamesh
