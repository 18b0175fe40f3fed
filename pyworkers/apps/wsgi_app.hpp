// The C++ half of the WSGI adapter (PEP 3333): builds each request's environ
// from plain C++ data, calls the Python half, and turns what the app gave back
// into plain C++ data. The contract with the Python half (apps/gilgamesh_wsgi.py):
//   - resolve(module, expression) -> the callable (MODULE:CALLABLE, or a factory());
//   - run(app, environ, limit, start, push, send_file) speaks start_response /
//     write / the iterable / close(). An answer that streams (below) goes out
//     through start(status, headers) -> bool and push(bytes) -> bool (False:
//     stop, the client is gone), C functions of this file that reach the calling
//     thread's StreamWriter; `start` is None when nothing may stream. A
//     wsgi.file_wrapper over a real file goes to send_file(status, headers,
//     filelike) -> bool first (None where no sink takes files: an answer
//     collected whole): True, the connection reads the file itself. An
//     answer collected whole comes back as a gilgamesh_wsgi.Result with
//     .status (str), .headers (list of (str, str)) and .chunks (list of
//     bytes), exactly as the app gave them; a body past `limit` bytes raises
//     gilgamesh_wsgi.ResponseTooLarge (.size); anything the app raised or a
//     protocol error propagates.
//
// Which answers stream: those whose body is not a list or tuple, unless the
// app gave a Content-Length of at most `limit` (--max-response). Those are
// collected whole, and so is every answer without a sink.
//
// The status and headers are handed on as the app gave them: the HTTP layer's
// response_violation() refuses what may not go on the wire, as for route
// handlers.
#pragma once

#include "pyworkers/apps/python_app.hpp"

#include <memory>
#include <optional>
#include <string>
#include <vector>

namespace gilgamesh {

class WsgiApp final : public PythonApp {
 public:
  // Finds the callable named after the ':' of options.target in `module` (the
  // imported app module) and prepares what every request reuses. With the GIL
  // of the interpreter that imported it. Returns nullptr with a Python
  // exception set if the callable is missing or not callable.
  static std::unique_ptr<WsgiApp> create(const AppOptions& options, const LoadContext& context,
                                         PyObject* module, ErrorTypes errors);
  ~WsgiApp() override;

 private:
  WsgiApp(const AppOptions& options, ErrorTypes errors) : PythonApp(options, std::move(errors)) {}
  // Calls the app for one request. With the GIL. nullopt: the app raised or
  // broke the protocol, and that Python exception is pending.
  std::optional<HttpResponseData> respond(std::size_t route_index, const HttpRequestData& request,
                                          StreamWriter& writer) override;
  static PyObject* stream_start(PyObject*, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* stream_push(PyObject*, PyObject* const* args, Py_ssize_t nargs);
  static PyObject* sendfile_py(PyObject*, PyObject* const* args, Py_ssize_t nargs);
  void release_kind() override;
  std::optional<HttpResponseData> from_result(PyObject* result, const HttpRequestData& request);
  // The request's environ; empty with a Python exception set when it cannot be made.
  py::Ref environ_for(const HttpRequestData& request);
  bool add_request_headers(PyObject* environ, const HttpRequestData& request);
  // The app's status line, headers and body chunks as C++ data. With the GIL;
  // false with a Python exception set if they are not what PEP 3333 asks.
  static bool convert(PyObject* status, PyObject* headers, PyObject* chunks, HttpResponseData& out);
  std::vector<py::Ref*> references();

  std::string root_path_;
  py::Ref app_;
  py::Ref run_;
  py::Ref start_, push_;     // the Python half's way out for an answer that streams
  py::Ref send_file_;        // and for a wsgi.file_wrapper over a real file
  py::Ref too_large_type_;  // gilgamesh_wsgi.ResponseTooLarge
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
