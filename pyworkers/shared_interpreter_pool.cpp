// `threads` and `free-threaded`: N worker threads in the main interpreter.
// With the GIL (default build, or free-threaded build with the GIL forced on)
// this is the baseline that shows the GIL; without it, PEP 703 threads. The
// app is imported once, in the main interpreter; each worker thread keeps one
// long-lived thread state and is detached while it waits for work, so a
// stop-the-world GC never waits for an idle worker.
#include <spdlog/spdlog.h>

#include "threaded_executor.hpp"

namespace gilgamesh {

namespace {

class SharedInterpreterHost final : public InterpreterHost {
 public:
  // `app` was loaded in the main interpreter before the workers started and
  // outlives them (the executor holds it).
  SharedInterpreterHost(PyInterpreterState* interp, PythonApp* app) : interp_(interp), app_(app) {}

  const std::vector<RouteInfo>& start() override {
    if (ts_ == nullptr) ts_ = PyThreadState_New(interp_);
    return app_->routes();
  }

  HttpResponseData handle(const Job& job) override {
    py::AttachedScope attached(ts_);
    return app_->handle(job.route_index, job.request);
  }

  void end() override {
    if (ts_ == nullptr) return;
    PyEval_RestoreThread(ts_);
    PyThreadState_Clear(ts_);
    PyThreadState_DeleteCurrent();
    ts_ = nullptr;
  }

  bool can_recycle() const override { return false; }

 private:
  PyInterpreterState* interp_;
  PythonApp* app_;
  PyThreadState* ts_ = nullptr;
};

// Owns the app loaded in the main interpreter; releases it with the main GIL,
// on the main thread, when the executor drops its callbacks.
struct MainInterpreterApp {
  PythonRuntime* runtime = nullptr;
  std::unique_ptr<PythonApp> app;
  ~MainInterpreterApp() {
    if (!app) return;
    py::AttachedScope attached(runtime->main_thread_state());
    app->release();
  }
};

}  // namespace

std::unique_ptr<Executor> make_shared_interpreter_executor(const ExecutorConfig& config) {
  const bool force_gil = config.strategy == "threads" && config.python_build == "free-threaded";
  auto runtime = std::make_unique<PythonRuntime>(force_gil);
  PyInterpreterState* interp = runtime->main_interpreter();
  auto loaded = std::make_shared<MainInterpreterApp>();
  loaded->runtime = runtime.get();

  // Runs on the main thread before the workers start; returns gil_enabled.
  auto prepare = [config, loaded]() -> bool {
    py::AttachedScope attached(loaded->runtime->main_thread_state());
    loaded->app = PythonApp::load(app_options(config));
    const bool gil = PythonApp::gil_enabled();
    if (config.strategy == "free-threaded" && gil) {
      std::string msg = "the GIL is enabled after importing app '" + config.app + "'";
      if (loaded->app->gil_warnings().empty()) {
        msg += ": a C extension it imports does not declare free-threading support (Py_mod_gil)";
      }
      for (const auto& w : loaded->app->gil_warnings()) msg += ": " + w;
      if (!config.allow_gil) {
        loaded->app->release();
        loaded->app.reset();
        throw StartupError(msg + " (pass --allow-gil to run anyway, with the GIL)");
      }
      spdlog::warn("{} (running anyway: --allow-gil; handlers will not run in parallel)", msg);
    }
    return gil;
  };
  return std::make_unique<ThreadedExecutor>(
      config, std::move(runtime), prepare,
      [interp, loaded](int) { return std::make_unique<SharedInterpreterHost>(interp, loaded->app.get()); });
}

}  // namespace gilgamesh
