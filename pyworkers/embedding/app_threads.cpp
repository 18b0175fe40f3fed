#include "pyworkers/embedding/app_threads.hpp"

#include <spdlog/spdlog.h>

#include <condition_variable>
#include <memory>
#include <mutex>
#include <thread>

#include "pyworkers/embedding/py_ref.hpp"
#include "pyworkers/embedding/quiet_thread.hpp"

namespace gilgamesh {

namespace {

// gilgamesh.<name>(), or null with the error set. Attached.
py::Ref call_api(const char* name) {
  py::Ref api = py::Ref::steal(PyImport_ImportModule("gilgamesh"));
  if (!api) return {};
  py::Ref fn = py::Ref::steal(PyObject_GetAttrString(api.get(), name));
  if (!fn) return {};
  return py::Ref::steal(PyObject_CallNoArgs(fn.get()));
}

}  // namespace

void adopt_server_thread() {
  if (!call_api("_adopt_server_thread")) {
    spdlog::debug("threads this one starts stay daemons: {}", py::fetch_error_summary());
  }
}

std::vector<std::string> app_thread_names() {
  std::vector<std::string> names;
  py::Ref list = call_api("_app_threads");
  if (!list || !PyList_Check(list.get())) {
    spdlog::warn("cannot list the app's threads: {}", py::fetch_error_summary());
    return names;
  }
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(list.get()); ++i) {
    names.push_back(py::to_string(PyList_GET_ITEM(list.get(), i)));
  }
  return names;
}

std::string describe_threads(const std::vector<std::string>& names) {
  constexpr std::size_t kNamed = 3;
  std::string out;
  for (std::size_t i = 0; i < names.size() && i < kNamed; ++i) {
    if (i > 0) out += (i + 1 == names.size() && names.size() <= kNamed) ? " and " : ", ";
    out += "'" + names[i] + "'";
  }
  if (names.size() > kNamed) out += " and " + std::to_string(names.size() - kNamed) + " more";
  return out;
}

std::vector<std::string> wait_for_app_threads(PyThreadState* caller,
                                              std::chrono::steady_clock::time_point deadline,
                                              const volatile std::sig_atomic_t* signals) {
  const std::sig_atomic_t signals_at_call = signals != nullptr ? *signals : 0;
  auto signalled = [&] { return signals != nullptr && *signals != signals_at_call; };
  {
    py::AttachedScope attached(caller);
    // None may run: the helper still runs threading's atexit calls, once (see _shutdown_threads).
    std::vector<std::string> names = app_thread_names();
    if (std::chrono::steady_clock::now() >= deadline) return names;
  }
  struct Shared {
    std::mutex mutex;
    std::condition_variable done_cv;
    bool done = false;
    bool joined = false;  // _shutdown_threads returned: every app thread had ended
  };
  auto shared = std::make_shared<Shared>();
  PyInterpreterState* interp = PyThreadState_GetInterpreter(caller);
  // Detached: if the deadline comes first it stays, blocked in a join, and the
  // interpreter is never ended under it. It takes no signal: the caller may be the
  // thread that waits for SIGTERM (a process worker's main thread).
  quiet_thread([interp, shared] {
    PyThreadState* ts = PyThreadState_New(interp);  // bound to this thread
    PyEval_RestoreThread(ts);
    const bool joined = static_cast<bool>(call_api("_shutdown_threads"));
    if (!joined) spdlog::warn("waiting for the app's threads: {}", py::fetch_error_summary());
    PyThreadState_Clear(ts);
    PyThreadState_DeleteCurrent();
    {
      std::lock_guard lock(shared->mutex);
      shared->done = true;
      shared->joined = joined;
    }
    shared->done_cv.notify_all();
  }).detach();
  constexpr auto kStopCheck = std::chrono::milliseconds(50);
  bool helper_done = false;
  {
    std::unique_lock lock(shared->mutex);
    while (!shared->done && std::chrono::steady_clock::now() < deadline && !signalled()) {
      shared->done_cv.wait_until(lock, std::min(deadline, std::chrono::steady_clock::now() + kStopCheck));
    }
    if (shared->done && shared->joined) return {};
    helper_done = shared->done;
  }
  // Past the deadline, or the helper failed before its join: the threads still running
  // (ending the interpreter under one aborts the process: "not the last thread").
  std::vector<std::string> left;
  {
    py::AttachedScope attached(caller);
    left = app_thread_names();
  }
  // Between their end and the helper's: Python's own exit waits no longer.
  if (left.empty() && !helper_done) left.push_back("threading._shutdown()");
  return left;
}

}  // namespace gilgamesh
