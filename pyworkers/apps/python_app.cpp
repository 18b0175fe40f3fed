#include "pyworkers/apps/python_app.hpp"

#include <fcntl.h>
#include <spdlog/spdlog.h>
#include <sys/stat.h>

#include "server/model/file_body.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

LoadContext load_context(const ServerConfig& config, bool shares_app_object) {
  LoadContext c;
  c.strategy = config.pool.strategy;
  c.multithread = (shares_app_object && config.pool.workers > 1) || config.pool.threads > 1;
  c.multiprocess = !shares_app_object && config.pool.workers > 1;
  return c;
}

PythonApp::PythonApp(const AppOptions& options, ErrorTypes errors)
    : max_response_(options.max_response), target_(options.target), errors_(std::move(errors)) {}

bool StreamWriter::start(HttpResponseData&& head) {
  started_ = true;
  if (!sink_) {
    head_ = std::move(head);
    return true;
  }
  if (!response_violation(head).empty()) {
    refused_ = true;  // answered as a collected answer is: the rule's 500, logged
    head_ = std::move(head);
    return false;
  }
  bool open;
  Py_BEGIN_ALLOW_THREADS
  open = sink_->open(std::move(head));
  Py_END_ALLOW_THREADS
  return open;
}

bool StreamWriter::push(std::string_view piece) {
  if (piece.empty()) return true;
  size_ += piece.size();
  if (!sink_) {
    if (size_ > max_response_) return false;  // counted, not kept: handle() answers 500
    head_.body.append(piece);
    return true;
  }
  bool more;
  Py_BEGIN_ALLOW_THREADS
  more = sink_->push(piece);
  Py_END_ALLOW_THREADS
  return more;
}

std::optional<FileSpan> file_span(PyObject* filelike) {
  const int fd = PyObject_AsFileDescriptor(filelike);  // its fileno()
  if (fd < 0) {
    PyErr_Clear();
    return std::nullopt;
  }
  py::Ref position = py::Ref::steal(PyObject_CallMethod(filelike, "tell", nullptr));
  const long long offset = position ? PyLong_AsLongLong(position.get()) : -1;
  struct stat st {};
  if (offset < 0 || ::fstat(fd, &st) != 0 || !S_ISREG(st.st_mode) || offset > st.st_size) {
    PyErr_Clear();
    return std::nullopt;
  }
  FileSpan span;
  span.fd = Fd(::fcntl(fd, F_DUPFD_CLOEXEC, 0));  // the app's own is closed when the answer is done
  if (span.fd.fd < 0) return std::nullopt;
  span.offset = static_cast<std::uint64_t>(offset);
  span.length = static_cast<std::uint64_t>(st.st_size - offset);
  return span;
}

bool StreamWriter::send_file(HttpResponseData&& head, Fd&& fd, std::uint64_t offset, std::uint64_t length) {
  if (!takes_files() || !response_violation(head).empty()) return false;
  started_ = true;
  finished_ = true;  // the sink ends the body; a client already gone has dropped the answer
  Py_BEGIN_ALLOW_THREADS
  sink_->open_file(std::move(head), std::move(fd), offset, length);
  Py_END_ALLOW_THREADS
  return true;
}

void StreamWriter::finish(bool ok) {
  if (finished_ || !sink_ || !started_ || refused_) return;
  finished_ = true;
  Py_BEGIN_ALLOW_THREADS
  sink_->finish(ok);
  Py_END_ALLOW_THREADS
}

HttpResponseData PythonApp::handle(std::size_t route_index, const HttpRequestData& request,
                                   ResponseSink* sink) {
  const std::string& where = route_index < routes_.size() ? routes_[route_index].path : target_;
  StreamWriter writer(sink, max_response_);
  std::optional<HttpResponseData> response = respond(route_index, request, writer);
  if (writer.started() && writer.streaming() && !writer.refused()) {
    // The head has gone out: an exception can only cut the body short.
    if (!response) {
      py::ErrorText error = PyErr_Occurred() ? py::fetch_error()
                                             : py::ErrorText{"SystemError: handler failed without an exception", {}};
      spdlog::error("request {}: handler for {} raised after the head was sent; the connection is closed "
                    "with the body cut short: {}\n{}", request.request_id, where, error.summary, error.traceback);
    }
    writer.finish(response.has_value());
    return {};
  }
  if (!response) return error_response(request.request_id, where);
  const std::size_t size = std::max(response->body.size(), writer.collected_size());
  if (size > max_response_) return too_large(request, where, size);
  return std::move(*response);
}

py::Ref PythonApp::start_call(std::size_t, const HttpRequestData&) {
  PyErr_SetString(PyExc_RuntimeError, "this app has no route that runs on the event loop");
  return {};
}

HttpResponseData PythonApp::finish_call(std::size_t route_index, const HttpRequestData& request, PyObject*) {
  PyErr_SetString(PyExc_RuntimeError, "this app has no route that runs on the event loop");
  return error_answer(route_index, request);
}

HttpResponseData PythonApp::error_answer(std::size_t route_index, const HttpRequestData& request) {
  return error_response(request.request_id, route_index < routes_.size() ? routes_[route_index].path : target_);
}

HttpResponseData PythonApp::too_large(const HttpRequestData& request, const std::string& where,
                                      std::size_t size) const {
  spdlog::error("request {}: {} made a response body of {} bytes or more, over --max-response {}; "
                "answered 500", request.request_id, where, size, max_response_);
  return make_error_response(500, "the response is larger than the server allows (" +
                                      std::to_string(max_response_) + " bytes)", request.request_id);
}

HttpResponseData PythonApp::error_response(const std::string& request_id, const std::string& where) {
  PyObject* type = PyErr_Occurred();
  if (type && PyErr_GivenExceptionMatches(type, errors_.handler_timeout.get())) {
    // Raised into the handler at its deadline (or at the drain's): the pool has
    // logged it, and answers for it (the connection's 504, or a 503).
    PyErr_Clear();
    return make_error_response(503, "handler interrupted", request_id);
  }
  if (type && PyErr_GivenExceptionMatches(type, errors_.http_error.get())) {
    PyObject* exc = PyErr_GetRaisedException();
    py::Ref held = py::Ref::steal(exc);
    py::Ref status = py::Ref::steal(PyObject_GetAttrString(exc, "status"));
    py::Ref message = py::Ref::steal(PyObject_GetAttrString(exc, "message"));
    long code = status ? PyLong_AsLong(status.get()) : -1;
    if (code >= 400 && code <= 599 && message) {
      return make_error_response(static_cast<int>(code), py::to_string(message.get()), request_id);
    }
    PyErr_Clear();
  }
  py::ErrorText error = PyErr_Occurred()
                            ? py::fetch_error()
                            : py::ErrorText{"SystemError: handler failed without an exception", {}};
  spdlog::error("request {}: handler for {} raised {}\n{}", request_id, where, error.summary,
                error.traceback);
  // The type and text can hold what a client must not see (paths, keys,
  // values): the log has them; the body, only with --debug.
  HttpResponseData response = make_error_response(500, "internal server error", request_id);
  if (errors_.debug) {
    response.body = nlohmann::json{{"error", "internal server error"}, {"request_id", request_id},
                                   {"exception", error.summary}, {"traceback", error.traceback}}
                        .dump(-1, ' ', false, nlohmann::json::error_handler_t::replace);
  }
  return response;
}

bool PythonApp::gil_enabled() {
#ifdef Py_GIL_DISABLED
  py::Ref sys = py::Ref::steal(PyImport_ImportModule("sys"));
  if (!sys) {
    PyErr_Clear();
    return true;
  }
  py::Ref fn = py::Ref::steal(PyObject_GetAttrString(sys.get(), "_is_gil_enabled"));
  if (!fn) {
    PyErr_Clear();
    return true;
  }
  py::Ref r = py::Ref::steal(PyObject_CallNoArgs(fn.get()));
  if (!r) {
    PyErr_Clear();
    return true;
  }
  return PyObject_IsTrue(r.get()) == 1;
#else
  return true;
#endif
}

void PythonApp::release() {
  release_kind();
  errors_.http_error.reset();
  errors_.handler_timeout.reset();
}

}  // namespace gilgamesh
