// @gilgamesh.route handlers. The contract with the Python half
// (embedding/gilgamesh_api.py):
//   - gilgamesh._routes is a list of (path, methods tuple, handler, doc) in
//     registration order;
//   - each request is a gilgamesh.Request(method, path, query_string, headers
//     tuple of (name, value), body bytes, request_id, path params dict or None);
//   - a handler returns dict/list (JSON), str, bytes-like, None (204) or a
//     gilgamesh.Response(body, status, headers, content_type), and raises
//     gilgamesh.HTTPError(status, message) for an error answer;
//   - a handler (or a Response's body) may be an iterator, a generator say, of
//     str or bytes-like pieces: the answer streams (StreamWriter), each piece
//     sent as it comes; its content type, unless given, is text/plain for str
//     pieces and application/octet-stream for bytes. The iterator's close() is
//     called however the iteration ends (a client that left stops it);
//   - a binary file (open(path, "rb")) is such an iterator too, but is read by
//     the server itself where the sink takes files (send_file()).
#pragma once

#include "pyworkers/apps/python_app.hpp"

namespace gilgamesh {

class RouteApp final : public PythonApp {
 public:
  // Reads gilgamesh._routes from `api` (the gilgamesh module) after the app's
  // import. With the GIL. Throws StartupError.
  static std::unique_ptr<RouteApp> create(const AppOptions& options, PyObject* api, ErrorTypes errors);

  // `async def` handlers run on the worker's event loop (asgi_app.hpp); off a
  // loop (processes) each call runs to its end on a loop of its own.
  bool on_loop(std::size_t route_index) const override { return is_async_.at(route_index); }
  bool needs_loop() const override;
  py::Ref start_call(std::size_t route_index, const HttpRequestData& request) override;
  HttpResponseData finish_call(std::size_t route_index, const HttpRequestData& request, PyObject* result) override;

 private:
  RouteApp(const AppOptions& options, ErrorTypes errors) : PythonApp(options, std::move(errors)) {}
  std::optional<HttpResponseData> respond(std::size_t route_index, const HttpRequestData& request,
                                          StreamWriter& writer) override;
  // handler(request[, **path_params]); empty with a Python exception set.
  py::Ref call(std::size_t route_index, const HttpRequestData& request);
  void release_kind() override;
  // A handler's return value as a response; false with a Python exception set.
  // An iterator body is left in `pieces` for stream() (the head in `out`).
  bool convert_result(PyObject* result, HttpResponseData& out, py::Ref& pieces);
  bool convert_body(PyObject* body, HttpResponseData& out, py::Ref& pieces);
  // Sends what `pieces` yields through `writer`, then closes it. nullopt with a
  // Python exception set when the iteration (or close()) raised.
  std::optional<HttpResponseData> stream(PyObject* pieces, HttpResponseData&& head, StreamWriter& writer);
  // A binary file the handler answered with (open(path, "rb"), or as a Response's body),
  // handed to `writer`'s sink, which reads it from its position on (StreamWriter::send_file):
  // with a Content-Length, and a Content-Type by the file's name unless `head` has one; the
  // file is closed here. False, with nothing done and no exception: not such a file, a
  // Content-Length of the handler's own, or nowhere to hand it (an answer collected
  // whole): it streams as the iterator of its lines it is.
  bool send_file(PyObject* body, const HttpResponseData& head, StreamWriter& writer);

  std::vector<py::Ref> handlers_;
  std::vector<bool> is_async_;  // per route: an `async def` handler
  py::Ref run_alone_;           // _gilgamesh_asgi.run_alone: a coroutine to its end, off a loop
  py::Ref request_type_;
  py::Ref response_type_;
  py::Ref json_dumps_;
  py::Ref binary_files_;  // (io.BufferedIOBase, io.RawIOBase)
};

}  // namespace gilgamesh
