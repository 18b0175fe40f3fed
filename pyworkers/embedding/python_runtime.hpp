// The process's embedded CPython: initialization of the main interpreter,
// the pre-imports that keep sub-interpreters' start-up safe, finalization.
#pragma once

#include <Python.h>

#include <string>
#include <vector>

namespace gilgamesh {

// What the workers of a strategy do in parallel, which decides what the main
// interpreter must set up before any of them starts.
enum class PythonConcurrency {
  kNone,             // one thread runs Python at a time: threads (GIL), processes
  kThreads,          // threads without a GIL in one interpreter: free-threaded
  kSubinterpreters,  // own-GIL sub-interpreters importing in parallel
};

// The configuration of every sub-interpreter gilgamesh makes (workers and the
// start-up probe alike): own GIL, own obmalloc (PEP 684), threads allowed,
// no fork/exec/daemon threads, multi-phase extensions only.
PyInterpreterConfig isolated_interpreter_config();

class PythonRuntime {
 public:
  // Initializes Python with the `gilgamesh` module registered, then releases the
  // main thread's GIL. With kSubinterpreters it first imports the modules whose
  // concurrent first import in several sub-interpreters crashes 3.13 (datetime
  // and friends); with kSubinterpreters or kThreads it runs once the C-level
  // lazy initializations that 3.13 does without a lock (_ctypes' tables). None
  // of that is done for the strategies that do not need it: it costs about
  // 12 MiB and 0.1 s. `force_gil_on_free_threaded`: PYTHON_GIL=1 (the threads
  // strategy on the free-threaded build).
  // Call on the main thread, before any worker thread exists.
  explicit PythonRuntime(PythonConcurrency concurrency = PythonConcurrency::kNone,
                         bool force_gil_on_free_threaded = false);
  PythonRuntime(const PythonRuntime&) = delete;
  PythonRuntime& operator=(const PythonRuntime&) = delete;
  // Takes the main GIL back and finalizes. Every worker thread state and
  // sub-interpreter must have ended before.
  ~PythonRuntime();

  PyInterpreterState* main_interpreter() const { return main_interp_; }

  // Obmalloc blocks that ending one isolated sub-interpreter (own GIL, own
  // obmalloc, nothing run in it) leaves allocated, averaged over two cycles
  // after a warm-up one. CPython frees an ended interpreter's arenas only when
  // none is left, so 0 means recycling costs nothing; unpatched 3.12/3.13
  // leave about 2,750 (its immortal interned strings) and with them every
  // arena, 1.7 MiB or more per interpreter. The bundled 3.13.5 is patched
  // (scripts/python-patches/0001-free-subinterpreter-interned-strings.patch).
  // Call on the thread that constructed the runtime, before any worker
  // thread exists: it attaches the main thread state.
  double subinterpreter_leaked_blocks();
  // "" if ended sub-interpreters free their memory in this CPython, else why
  // recycling them (--max-requests, replacing a hung worker) grows the process
  // without bound and what to use instead. Same preconditions.
  std::string subinterpreter_recycling_problem();
  // The main thread's state, detached; attach it with py::AttachedScope.
  PyThreadState* main_thread_state() const { return main_ts_; }

 private:
  PyInterpreterState* main_interp_ = nullptr;
  PyThreadState* main_ts_ = nullptr;
};

}  // namespace gilgamesh
