// The user's app as loaded in one interpreter: its routes and the code that
// turns a plain C++ request into a Python Request, calls the handler, and
// turns the result back into plain C++ data. Nothing here outlives, or is
// shared with, another interpreter.
#pragma once

#include "executor.hpp"
#include "py_ref.hpp"

#include <memory>
#include <string>
#include <vector>

namespace gilgamesh {

class WsgiApp;

struct AppOptions {
  std::string module;                  // route module, or MODULE:CALLABLE when wsgi
  std::vector<std::string> pythonpath;
  std::string strategy;                // for error messages
  bool wsgi = false;                   // module names a PEP 3333 application
  std::string root_path;               // WSGI SCRIPT_NAME
  std::size_t max_response = std::size_t{64} << 20;  // larger response bodies become 500
  bool multithread = false;            // wsgi.multithread: other threads call the same app object
  bool multiprocess = false;           // wsgi.multiprocess: other workers run their own copy
  bool debug = false;                  // unexpected exceptions: type, text, traceback in the body
  int trace_imports_fd = -1;           // the start-up probe: each import begun is written here
};

// What every strategy's worker passes to PythonApp::load.
AppOptions app_options(const ExecutorConfig& config);

class PythonApp {
 public:
  // Imports `gilgamesh` and the app module in the current interpreter and
  // reads the registered routes. Precondition: this interpreter's GIL is held
  // (thread state attached). Throws StartupError naming module and reason.
  static std::unique_ptr<PythonApp> load(const AppOptions& options);

  const std::vector<RouteInfo>& routes() const { return routes_; }

  // Runs the handler of routes()[route_index] (for a WSGI app, the app: its one
  // route is "*"). Precondition: the GIL of the interpreter that loaded this app
  // is held. Never throws for Python errors: HTTPError becomes its status,
  // anything else 500 (traceback logged), and so does a body over max_response.
  HttpResponseData handle(std::size_t route_index, const HttpRequestData& request);

  // Turns a handler's return value into a response. With the GIL. Public for tests.
  HttpResponseData convert_result(PyObject* result, const std::string& request_id);

  // Whether the interpreter runs with a GIL (false only on a free-threaded
  // build with the GIL still off after the app's imports). With the GIL.
  static bool gil_enabled();

  // CPython's warnings, during the app's import, that an extension module
  // turned the GIL back on (free-threaded build); each names the module.
  const std::vector<std::string>& gil_warnings() const { return gil_warnings_; }

  // Releases every Python reference. Precondition: the GIL is held. Called
  // before the interpreter ends; the destructor then does nothing Python.
  void release();
  ~PythonApp();

 private:
  PythonApp() = default;
  HttpResponseData call_handler(std::size_t route_index, const HttpRequestData& request);
  bool convert_body(PyObject* body, HttpResponseData& out);
  HttpResponseData error_from_exception(const std::string& request_id, std::size_t route_index);

  std::vector<RouteInfo> routes_;
  std::vector<std::string> gil_warnings_;
  std::vector<py::Ref> handlers_;
  py::Ref request_type_;
  py::Ref response_type_;
  py::Ref http_error_type_;
  py::Ref handler_timeout_type_;
  py::Ref json_dumps_;
  std::unique_ptr<WsgiApp> wsgi_;  // set: the app is a WSGI application
  std::size_t max_response_ = std::size_t{64} << 20;
  bool debug_ = false;
};

}  // namespace gilgamesh
