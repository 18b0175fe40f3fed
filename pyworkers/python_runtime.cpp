#include "python_runtime.hpp"

#include <spdlog/spdlog.h>

#include <cstdlib>

#include "executor.hpp"
#include "gilgamesh_module.hpp"
#include "py_ref.hpp"

namespace gilgamesh {

namespace {
// Extension modules that crash 3.13.5 (heap corruption) when several
// sub-interpreters import them for the first time at the same moment, and
// the stdlib packages that pull them in. Importing them once in the main
// interpreter first avoids it. Failures are not fatal (a build may lack one).
constexpr const char* kPreImports[] = {
    "datetime", "_datetime", "_strptime", "time", "decimal", "_decimal", "zoneinfo", "_zoneinfo",
    "email", "email.utils", "email.message", "http.client", "sqlite3", "json", "_json",
    "traceback", "collections.abc", "http", "enum", "re", "socket", "select", "math",
    "random", "hashlib", "_hashlib", "binascii", "struct", "array", "unicodedata",
};
}  // namespace

PythonRuntime::PythonRuntime(bool force_gil_on_free_threaded) {
#ifdef Py_GIL_DISABLED
  if (force_gil_on_free_threaded) setenv("PYTHON_GIL", "1", 1);
#else
  (void)force_gil_on_free_threaded;
#endif
  register_gilgamesh_module();

  PyConfig config;
  PyConfig_InitPythonConfig(&config);
  config.install_signal_handlers = 0;  // the server owns SIGINT/SIGTERM
  config.parse_argv = 0;
  config.safe_path = 1;                 // no script directory in sys.path; the app adds its own
  PyStatus status = PyConfig_SetString(&config, &config.program_name, L"gilgamesh");
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    throw StartupError(std::string("cannot initialize Python: ") +
                       (status.err_msg ? status.err_msg : "unknown error"));
  }
  for (const char* name : kPreImports) {
    py::Ref m = py::Ref::steal(PyImport_ImportModule(name));
    if (!m) {
      spdlog::debug("pre-import of {} failed: {}", name, py::fetch_error_summary());
    }
  }
  main_interp_ = PyInterpreterState_Main();
  main_ts_ = PyEval_SaveThread();
}

PythonRuntime::~PythonRuntime() {
  PyEval_RestoreThread(main_ts_);
  if (Py_FinalizeEx() < 0) spdlog::warn("Python finalization reported an error");
}

}  // namespace gilgamesh
