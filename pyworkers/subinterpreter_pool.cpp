// `subinterpreters`: one own-GIL sub-interpreter (PEP 684) per worker thread,
// created, used and ended on that thread. No PyGILState_* anywhere: the thread
// gets a main-interpreter thread state, makes its sub-interpreter from it, and
// from then on attaches the sub-interpreter's own thread state.
#include <spdlog/spdlog.h>

#include <mutex>

#include "threaded_executor.hpp"

namespace gilgamesh {

namespace {

// Creating and ending interpreters, and the app imports that follow creation,
// happen one at a time across the process. Concurrent first imports of some
// extension modules corrupt the heap on 3.13; start-up is paid once, serving
// is fully parallel.
std::mutex& interpreter_lifecycle_mutex() {
  static std::mutex m;
  return m;
}

class SubinterpreterHost final : public InterpreterHost {
 public:
  SubinterpreterHost(const ExecutorConfig& config, PyInterpreterState* main_interp)
      : options_(app_options(config)), main_interp_(main_interp) {}

  ~SubinterpreterHost() override {
    if (main_ts_ == nullptr) return;
    std::lock_guard lock(interpreter_lifecycle_mutex());
    PyEval_RestoreThread(main_ts_);
    PyThreadState_Clear(main_ts_);
    PyThreadState_DeleteCurrent();
  }

  const std::vector<RouteInfo>& start() override {
    std::lock_guard lock(interpreter_lifecycle_mutex());
    if (main_ts_ == nullptr) main_ts_ = PyThreadState_New(main_interp_);
    PyEval_RestoreThread(main_ts_);

    PyInterpreterConfig config = {};
    config.use_main_obmalloc = 0;
    config.allow_fork = 0;
    config.allow_exec = 0;
    config.allow_threads = 1;
    config.allow_daemon_threads = 0;
    config.check_multi_interp_extensions = 1;
    config.gil = PyInterpreterConfig_OWN_GIL;
    PyThreadState* sub = nullptr;
    PyStatus status = Py_NewInterpreterFromConfig(&sub, &config);
    if (PyStatus_Exception(status)) {
      PyEval_SaveThread();
      throw StartupError(std::string("cannot create a sub-interpreter: ") +
                         (status.err_msg ? status.err_msg : "unknown error"));
    }
    // Now `sub` is current and holds its own GIL; the main GIL is released.
    try {
      app_ = PythonApp::load(options_);
    } catch (...) {
      Py_EndInterpreter(sub);
      throw;
    }
    sub_ts_ = sub;
    PyEval_SaveThread();
    return app_->routes();
  }

  HttpResponseData handle(const Job& job) override {
    py::AttachedScope attached(sub_ts_);
    return app_->handle(job.route_index, job.request);
  }

  void end() override {
    if (sub_ts_ == nullptr) return;
    std::lock_guard lock(interpreter_lifecycle_mutex());
    PyEval_RestoreThread(sub_ts_);
    app_->release();
    app_.reset();
    Py_EndInterpreter(sub_ts_);  // leaves no thread state current, no GIL held
    sub_ts_ = nullptr;
  }

  bool can_recycle() const override { return true; }

 private:
  AppOptions options_;
  PyInterpreterState* main_interp_;
  PyThreadState* main_ts_ = nullptr;
  PyThreadState* sub_ts_ = nullptr;
  std::unique_ptr<PythonApp> app_;
};

}  // namespace

std::unique_ptr<Executor> make_subinterpreter_executor(const ExecutorConfig& config) {
  auto runtime = std::make_unique<PythonRuntime>();
  PyInterpreterState* main_interp = runtime->main_interpreter();
  return std::make_unique<ThreadedExecutor>(
      config, std::move(runtime), nullptr, [config, main_interp](int) {
        return std::make_unique<SubinterpreterHost>(config, main_interp);
      });
}

}  // namespace gilgamesh
