// The C++ half of the WSGI adapter (PEP 3333): builds each request's environ
// from plain C++ data, calls the Python half (_gilgamesh_wsgi.run, which speaks
// the start_response / write / iterable / close() protocol), and turns what the
// app gave back into plain C++ data. PythonApp owns one when the app is a WSGI
// application, so every strategy serves WSGI through the same handle() call.
//
// The status and headers are handed on as the app gave them: the HTTP layer's
// response_violation() refuses what may not go on the wire, as for route
// handlers. The body is collected whole, up to max_response bytes.
#pragma once

#include "executor.hpp"
#include "py_ref.hpp"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace gilgamesh {

struct AppOptions;

class WsgiApp {
 public:
  // Finds the callable named after the ':' of options.module in `module` (the
  // imported app module) and prepares what every request reuses. With the GIL
  // of the interpreter that imported it. Returns nullptr with a Python
  // exception set if the callable is missing or not callable.
  static std::unique_ptr<WsgiApp> create(const AppOptions& options, PyObject* module);

  // Calls the app for one request. With the GIL. nullopt: the app raised or
  // broke the protocol, and that Python exception is pending.
  std::optional<HttpResponseData> handle(const HttpRequestData& request);

  // Releases every Python reference. With the GIL.
  void release();
  ~WsgiApp();

 private:
  WsgiApp() = default;
  // The app's status line, headers and body chunks as C++ data. With the GIL;
  // false with a Python exception set if they are not what PEP 3333 asks.
  static bool convert(PyObject* status, PyObject* headers, PyObject* chunks, HttpResponseData& out);
  std::vector<py::Ref*> references();

  std::string root_path_;
  std::string description_;  // MODULE:CALLABLE, for log lines
  std::size_t max_response_ = 0;
  py::Ref app_;
  py::Ref run_;
  py::Ref bytes_io_;       // io.BytesIO: wsgi.input
  py::Ref error_stream_;   // _gilgamesh_wsgi.ErrorStream: wsgi.errors
  py::Ref limit_;          // max_response as an int
  py::Ref template_;       // the environ entries every request shares
  // Interned environ keys.
  py::Ref k_method_, k_path_info_, k_query_string_, k_content_type_,
      k_content_length_, k_server_name_, k_server_port_, k_server_protocol_, k_remote_addr_,
      k_remote_port_, k_request_uri_, k_raw_uri_, k_input_, k_errors_, k_request_id_;
};

}  // namespace gilgamesh
