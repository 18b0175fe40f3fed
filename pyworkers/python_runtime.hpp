// The process's embedded CPython: initialization of the main interpreter,
// the pre-imports that keep sub-interpreters' start-up safe, finalization.
#pragma once

#include <Python.h>

#include <string>
#include <vector>

namespace gilgamesh {

class PythonRuntime {
 public:
  // Initializes Python with the `gilgamesh` module registered, imports the
  // modules whose concurrent first import in several sub-interpreters crashes
  // 3.13 (datetime and friends), then releases the main thread's GIL.
  // Call on the main thread, before any worker thread exists.
  explicit PythonRuntime(bool force_gil_on_free_threaded = false);
  PythonRuntime(const PythonRuntime&) = delete;
  PythonRuntime& operator=(const PythonRuntime&) = delete;
  // Takes the main GIL back and finalizes. Every worker thread state and
  // sub-interpreter must have ended before.
  ~PythonRuntime();

  PyInterpreterState* main_interpreter() const { return main_interp_; }
  // The main thread's state, detached; attach it with py::AttachedScope.
  PyThreadState* main_thread_state() const { return main_ts_; }

 private:
  PyInterpreterState* main_interp_ = nullptr;
  PyThreadState* main_ts_ = nullptr;
};

}  // namespace gilgamesh
