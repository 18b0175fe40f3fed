// Loading the app, once for every kind: sys.path (--pythonpath, then the
// working directory), the .pth files of the directories given, `gilgamesh`,
// the import itself (traced for the start-up probe), and an error that names
// the module, the strategy and what would work.
#include <spdlog/spdlog.h>
#include <unistd.h>

#include "pyworkers/apps/asgi_app.hpp"
#include "pyworkers/apps/python_app.hpp"
#include "pyworkers/apps/route_app.hpp"
#include "pyworkers/apps/wsgi_app.hpp"
#include "server/model/app_forks.hpp"

namespace gilgamesh {

namespace {

py::Ref str_from(const std::string& s) {
  return py::Ref::steal(
      PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogateescape"));
}

StartupError load_error(const AppOptions& options, const LoadContext& context, const std::string& what,
                        const std::string& reason, std::string traceback = {}) {
  std::string msg = "cannot load app '" + options.target + "' under strategy " +
                    std::string(strategy_name(context.strategy)) +
                    ": " + what + (reason.empty() ? "" : ": " + reason);
  if (reason.find("does not support loading in subinterpreters") != std::string::npos ||
      reason.find("not compatible with subinterpreters") != std::string::npos) {
    msg += "\n  it imports a C extension that own-GIL sub-interpreters refuse (single-phase init, or a "
           "multi-phase init that does not declare a per-interpreter GIL); run it with " + strategies_instead();
  }
  if (context.strategy == Strategy::subinterpreters) {
    // Whatever the first error says (a glibc too old for the build, say), such a module
    // would refuse a sub-interpreter next.
    std::string hint = known_refusal_hint(reason);
    if (hint.empty()) hint = known_refusal_hint(traceback);
    msg += hint;
  }
  return StartupError(msg, std::move(traceback));
}

}  // namespace

std::string strategies_instead() { return "--strategy processes or --strategy threads"; }

std::string known_refusal_hint(std::string_view text) {
  if (text.find("pydantic_core") == std::string_view::npos) return {};
  return "\n  pydantic_core (pydantic 2, FastAPI) is a PyO3 extension that refuses sub-interpreters by "
         "design (pydantic#12452): serve the app with " + strategies_instead();
}

std::unique_ptr<PythonApp> PythonApp::load(const AppOptions& options, const LoadContext& context) {
  // A WSGI or ASGI app is named MODULE:CALLABLE; the module is imported like a route module.
  const std::string module_name = options.target.substr(0, options.target.find(':'));
  // The pending exception becomes the reason.
  auto fail = [&](const std::string& what) -> StartupError {
    std::string reason = py::fetch_error_summary();
    return load_error(options, context, what, reason);
  };

  // sys.path: the --pythonpath directories first, then the working directory.
  py::Ref sys_path = py::Ref::borrow(PySys_GetObject("path"));
  if (!sys_path) throw fail("sys.path is missing");
  Py_ssize_t at = 0;
  for (const auto& dir : options.pythonpath) {
    py::Ref entry = str_from(dir);
    if (!entry || PyList_Insert(sys_path.get(), at++, entry.get()) < 0) throw fail("sys.path");
  }
  {
    py::Ref cwd = str_from("");
    if (!cwd || PyList_Insert(sys_path.get(), at, cwd.get()) < 0) throw fail("sys.path");
  }
  // A venv's site-packages given with --pythonpath works as in the venv: its .pth
  // files (editable installs, namespace packages) add their paths too.
  if (!options.pythonpath.empty()) {
    py::Ref site = py::Ref::steal(PyImport_ImportModule("site"));
    if (!site) throw fail("import site");
    for (const auto& dir : options.pythonpath) {
      py::Ref done = py::Ref::steal(PyObject_CallMethod(site.get(), "addsitedir", "s", dir.c_str()));
      if (!done) throw fail("reading the .pth files of " + dir);
    }
  }

  py::Ref api = py::Ref::steal(PyImport_ImportModule("gilgamesh"));
  if (!api) throw fail("import gilgamesh");
  if (context.trace_imports_fd >= 0) {
    py::Ref traced = py::Ref::steal(
        PyObject_CallMethod(api.get(), "_trace_imports", "i", context.trace_imports_fd));
    if (!traced) throw fail("tracing imports");
  }
  {
    // In-process, the workers share this process: os._exit(), os.abort(), os.exec* and the calls that would
    // signal it to end or stop (os.kill, os.killpg, signal.raise_signal, ...) raise instead. Under processes
    // (in the zygote, inherited by the workers): os.kill and os.killpg aimed at the server or its process
    // group (gilgamesh_api.py).
    const bool in_process = context.strategy != Strategy::processes;
    py::Ref guarded = py::Ref::steal(PyObject_CallMethod(
        api.get(), in_process ? "_refuse_process_exit" : "_refuse_signals_to_server", nullptr));
    if (!guarded) throw fail("guarding os._exit, os.abort, os.exec* and os.kill");
  }
  ErrorTypes errors;
  errors.http_error = py::Ref::steal(PyObject_GetAttrString(api.get(), "HTTPError"));
  errors.handler_timeout = py::Ref::steal(PyObject_GetAttrString(api.get(), "HandlerTimeout"));
  errors.debug = options.debug;
  if (!errors.http_error || !errors.handler_timeout) throw fail("gilgamesh module is incomplete");

  const pid_t importer = getpid();
  py::Ref imported = py::Ref::steal(
      PyObject_CallMethod(api.get(), "_import_app", "s", module_name.c_str()));
  app_forks::leave_if_copy_of(importer);  // a child the import forked must not go on as a second server
  if (!imported) {
    py::ErrorText error = py::fetch_error();
    throw load_error(options, context, "import failed", error.summary, error.traceback);
  }
  // _import_app returns (module, [GIL warnings]).
  std::unique_ptr<PythonApp> app;
  switch (options.kind) {
    case AppKind::routes:
      app = RouteApp::create(options, api.get(), std::move(errors));
      break;
    case AppKind::wsgi:
      app = WsgiApp::create(options, context, PyTuple_GET_ITEM(imported.get(), 0), std::move(errors));
      if (!app) throw fail("no WSGI application");
      break;
    case AppKind::asgi:
      app = AsgiApp::create(options, PyTuple_GET_ITEM(imported.get(), 0), std::move(errors));
      if (!app) throw fail("no ASGI application");
      break;
  }
  PyObject* gil_warnings = PyTuple_GET_ITEM(imported.get(), 1);
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(gil_warnings); ++i) {
    app->gil_warnings_.push_back(py::to_string(PyList_GET_ITEM(gil_warnings, i)));
  }
  return app;
}


}  // namespace gilgamesh
