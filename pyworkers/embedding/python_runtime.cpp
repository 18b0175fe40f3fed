#include "pyworkers/embedding/python_runtime.hpp"

#include <spdlog/spdlog.h>
#include <unistd.h>

#include <cstdlib>
#include <filesystem>
#include <string>

#include "server/model/executor.hpp"
#include "pyworkers/embedding/gilgamesh_module.hpp"
#include "pyworkers/embedding/py_ref.hpp"

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

// Lazily initialized C state that 3.13.5 sets up without a lock on first use, run
// once in the main interpreter so that sub-interpreters (or free-threaded threads)
// doing it for the first time at once find it ready (with a GIL shared by every
// thread, the first use cannot overlap another):
// - _ctypes' field-descriptor table (cfield.c, _ctypes_get_fielddesc): the first
//   caller sets `initialized` before filling the table, so a second interpreter
//   defining a ctypes type at that moment reads a NULL ffi_type and crashes
//   (SIGSEGV in PyCSimpleType_init; caught by test_startup_stress.py).
constexpr const char* kWarmUp = R"py(
try:
    import _ctypes
    class _c_int(_ctypes._SimpleCData):
        _type_ = "i"
    del _c_int, _ctypes
except Exception:
    pass
)py";

#ifdef Py_GIL_DISABLED
constexpr const char* kBuildName = "free-threaded";
constexpr const char* kAbiThread = "t";
#else
constexpr const char* kBuildName = "default";
constexpr const char* kAbiThread = "";
#endif

// An installed tree (`make install`, the image): PREFIX/bin/gilgamesh[-ft],
// PREFIX/share/gilgamesh/ (holding handlers/) and, unless the build embeds the
// system's own Python, PREFIX/lib/gilgamesh/<build>/ (a CPython prefix). With the
// latter, Python's home must be that prefix: the one compiled into libpython is the
// build machine's. The build tree has neither directory and keeps the compiled-in prefix.
struct InstalledTree {
  std::string python_home;  // empty: not an installed tree
  std::string share_dir;    // empty: none
  // sys.executable: the python binary of the embedded CPython (the installed tree's copy, else
  // the one the build embedded), so that what runs sys.executable runs that Python:
  // subprocess.run([sys.executable, ...]), multiprocessing's spawn and forkserver start
  // methods, its resource tracker. Empty (sys.executable "", as before) when it is gone.
  std::string python_executable;
  // A pure-Python `gilgamesh` (pyworkers/outside) for the Pythons the app starts with
  // sys.executable: the installed tree's, else the source tree's. Last in PYTHONPATH's part of
  // sys.path; the built-in module wins in the server. Empty when neither is there.
  std::string outside_dir;
};

InstalledTree installed_tree() {
  namespace fs = std::filesystem;
  std::error_code ec;
  const fs::path exe = fs::read_symlink("/proc/self/exe", ec);
  if (ec) return {};
  const fs::path prefix = exe.parent_path().parent_path();
  const std::string stdlib = "python" + std::to_string(PY_MAJOR_VERSION) + "." +
                             std::to_string(PY_MINOR_VERSION) + kAbiThread;
  InstalledTree tree;
  const fs::path home = prefix / "lib" / "gilgamesh" / kBuildName;
  if (fs::exists(home / "lib" / stdlib / "os.py", ec)) tree.python_home = home.string();
  const fs::path share = prefix / "share" / "gilgamesh";
  if (fs::is_directory(share / "handlers", ec)) tree.share_dir = share.string();
  for (const fs::path& outside : {share / "outside", fs::path(GILGAMESH_OUTSIDE_DIR)}) {
    if (fs::is_regular_file(outside / "gilgamesh" / "__init__.py", ec)) {
      tree.outside_dir = outside.string();
      break;
    }
  }
  const fs::path built = GILGAMESH_PYTHON_EXECUTABLE;
  for (const fs::path& python : {tree.python_home.empty() ? fs::path() : home / "bin" / built.filename(), built}) {
    if (!python.empty() && access(python.c_str(), X_OK) == 0) {
      tree.python_executable = python.string();
      break;
    }
  }
  return tree;
}
}  // namespace

PyInterpreterConfig isolated_interpreter_config() {
  PyInterpreterConfig config = {};
  config.use_main_obmalloc = 0;
  config.allow_fork = 0;
  config.allow_exec = 0;
  config.allow_threads = 1;
  config.allow_daemon_threads = 0;
  config.check_multi_interp_extensions = 1;
  config.gil = PyInterpreterConfig_OWN_GIL;
  return config;
}

PythonRuntime::PythonRuntime(PythonConcurrency concurrency, bool force_gil_on_free_threaded) {
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
  const InstalledTree tree = installed_tree();
  if (!PyStatus_Exception(status) && !tree.python_home.empty() && !getenv("PYTHONHOME")) {
    status = PyConfig_SetBytesString(&config, &config.home, tree.python_home.c_str());
  }
  if (!PyStatus_Exception(status) && !tree.python_executable.empty()) {
    status = PyConfig_SetBytesString(&config, &config.executable, tree.python_executable.c_str());
  }
  const char* env = getenv("PYTHONPATH");
  std::string pythonpath;
  for (const std::string& entry : {std::string(env ? env : ""), tree.share_dir, tree.outside_dir}) {
    if (!entry.empty()) pythonpath += (pythonpath.empty() ? "" : ":") + entry;
  }
  if (!PyStatus_Exception(status) && !pythonpath.empty()) {
    // After PYTHONPATH, before the stdlib; the app's directories and the working
    // directory go in front of both (PythonApp::load), so they shadow handlers/.
    status = PyConfig_SetBytesString(&config, &config.pythonpath_env, pythonpath.c_str());
  }
  if (!PyStatus_Exception(status)) status = Py_InitializeFromConfig(&config);
  PyConfig_Clear(&config);
  if (PyStatus_Exception(status)) {
    throw StartupError(std::string("cannot initialize Python: ") +
                       (status.err_msg ? status.err_msg : "unknown error"));
  }
  if (concurrency == PythonConcurrency::kSubinterpreters) {
    for (const char* name : kPreImports) {
      py::Ref m = py::Ref::steal(PyImport_ImportModule(name));
      if (!m) {
        spdlog::debug("pre-import of {} failed: {}", name, py::fetch_error_summary());
      }
    }
  }
  if (concurrency != PythonConcurrency::kNone && PyRun_SimpleString(kWarmUp) != 0) {
    spdlog::debug("Python warm-up failed");
  }
  main_interp_ = PyInterpreterState_Main();
  main_ts_ = PyEval_SaveThread();
}

namespace {
long allocated_blocks() {  // with the main interpreter's GIL
  PyObject* function = PySys_GetObject("getallocatedblocks");  // borrowed
  if (function == nullptr) return -1;
  py::Ref n = py::Ref::steal(PyObject_CallNoArgs(function));
  long blocks = n ? PyLong_AsLong(n.get()) : -1;
  if (blocks < 0) PyErr_Clear();
  return blocks;
}

// Creates an isolated sub-interpreter from the attached main thread state and
// ends it; the main thread state is attached again afterwards, also on failure.
bool create_and_end_subinterpreter(PyThreadState* main_ts) {
  const PyInterpreterConfig config = isolated_interpreter_config();
  PyThreadState* sub = nullptr;
  PyStatus status = Py_NewInterpreterFromConfig(&sub, &config);
  if (PyStatus_Exception(status)) return false;  // CPython attached main_ts again
  Py_EndInterpreter(sub);  // leaves no thread state current
  PyEval_RestoreThread(main_ts);
  return true;
}
}  // namespace

double PythonRuntime::subinterpreter_leaked_blocks() {
  py::AttachedScope attached(main_ts_);
  constexpr int kCycles = 2;
  if (!create_and_end_subinterpreter(main_ts_)) return -1;  // warm-up: first-use caches
  long before = allocated_blocks();
  for (int i = 0; i < kCycles; ++i) {
    if (!create_and_end_subinterpreter(main_ts_)) return -1;
  }
  long after = allocated_blocks();
  if (before < 0 || after < 0) return -1;
  return static_cast<double>(after - before) / kCycles;
}

std::string PythonRuntime::subinterpreter_recycling_problem() {
  // Patched: about 0. Unpatched 3.13.5: about 2,750 for an empty interpreter.
  constexpr double kTolerance = 50;
#ifdef Py_GIL_DISABLED
  // Blocks live in mimalloc heaps here and sys.getallocatedblocks() does not
  // see what an ended interpreter keeps; RSS does: about 4.7 MiB per cycle
  // measured on 3.13.5 (the bundled free-threaded build is not patched).
  return "the free-threaded build of CPython 3.13 does not free an ended sub-interpreter's "
         "memory (about 4.7 MiB each, measured), so recycling sub-interpreters would grow the "
         "server without bound; use the default build (--python-build default) for "
         "--strategy subinterpreters, or --strategy processes, or run without --max-requests";
#endif
  double left = subinterpreter_leaked_blocks();
  if (left < 0) return "cannot create a sub-interpreter to check how ending one frees its memory";
  if (left <= kTolerance) return "";
  const std::string version = Py_GetVersion();
  return fmt::format(
      "this CPython ({}) does not free an ended sub-interpreter's memory: each one leaves {:.0f} "
      "blocks allocated and with them all of its obmalloc arenas (1.7 MiB or more), so recycling "
      "sub-interpreters would grow the server without bound (CPython gh-110411, gh-113190). "
      "Build gilgamesh with its own CPython 3.13.5 (make build without GILGAMESH_PYTHON: it "
      "applies scripts/python-patches/), or use --strategy processes, whose recycling is bounded, "
      "or run without --max-requests",
      version.substr(0, version.find(' ')), left);
}

PythonRuntime::~PythonRuntime() {
  PyEval_RestoreThread(main_ts_);
  if (Py_FinalizeEx() < 0) spdlog::warn("Python finalization reported an error");
}

}  // namespace gilgamesh
