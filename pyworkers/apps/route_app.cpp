#include "pyworkers/apps/route_app.hpp"

#include <boost/beast/core/string.hpp>
#include <spdlog/spdlog.h>

#include <algorithm>

#include "server/model/response.hpp"

#include <set>

namespace gilgamesh {

namespace {

py::Ref str_from(const std::string& s) {
  return py::Ref::steal(
      PyUnicode_DecodeUTF8(s.data(), static_cast<Py_ssize_t>(s.size()), "surrogateescape"));
}

// A body given as str, bytes, bytearray or memoryview, as bytes. With the GIL.
bool body_bytes(PyObject* body, std::string& out) {
  if (PyBytes_Check(body)) {
    out.assign(PyBytes_AS_STRING(body), static_cast<std::size_t>(PyBytes_GET_SIZE(body)));
    return true;
  }
  if (PyUnicode_Check(body)) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(body, &n);
    if (!s) return false;
    out.assign(s, static_cast<std::size_t>(n));
    return true;
  }
  if (PyObject_CheckBuffer(body)) {
    Py_buffer view;
    if (PyObject_GetBuffer(body, &view, PyBUF_SIMPLE) < 0) return false;
    out.assign(static_cast<const char*>(view.buf), static_cast<std::size_t>(view.len));
    PyBuffer_Release(&view);
    return true;
  }
  PyErr_Format(PyExc_TypeError, "response body must be str, bytes, dict or list, not %.100s",
               Py_TYPE(body)->tp_name);
  return false;
}

bool add_headers(PyObject* headers, std::vector<Header>& out) {
  if (headers == Py_None) return true;
  py::Ref items;
  if (PyDict_Check(headers)) {
    items = py::Ref::steal(PyDict_Items(headers));
  } else {
    items = py::Ref::steal(PySequence_List(headers));
  }
  if (!items) return false;
  Py_ssize_t n = PyList_GET_SIZE(items.get());
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* pair = PyList_GET_ITEM(items.get(), i);
    PyObject* name = nullptr;
    PyObject* value = nullptr;
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
        !PyUnicode_Check(name = PyTuple_GET_ITEM(pair, 0))) {
      PyErr_SetString(PyExc_TypeError, "response headers must be a dict or (name, value) pairs of str");
      return false;
    }
    value = PyTuple_GET_ITEM(pair, 1);
    py::Ref value_str = py::Ref::steal(PyObject_Str(value));
    if (!value_str) return false;
    // Names and values are checked, with every other response rule, where the
    // response goes on the wire (response_violation), for every strategy alike.
    out.push_back({py::to_string(name), py::to_string(value_str.get())});
  }
  return true;
}

}  // namespace

std::unique_ptr<RouteApp> RouteApp::create(const AppOptions& options, PyObject* api, ErrorTypes errors) {
  std::unique_ptr<RouteApp> app(new RouteApp(options, std::move(errors)));
  auto fail = [&](const std::string& what) {
    return StartupError("cannot load app '" + options.target + "': " + what + ": " + py::fetch_error_summary());
  };
  py::Ref json = py::Ref::steal(PyImport_ImportModule("json"));
  if (!json) throw fail("import json");
  app->json_dumps_ = py::Ref::steal(PyObject_GetAttrString(json.get(), "dumps"));
  py::Ref io = py::Ref::steal(PyImport_ImportModule("io"));
  if (!io) throw fail("import io");
  app->binary_files_ = py::Ref::steal(
      Py_BuildValue("(NN)", PyObject_GetAttrString(io.get(), "BufferedIOBase"), PyObject_GetAttrString(io.get(), "RawIOBase")));
  if (!app->binary_files_) throw fail("io's binary file types");
  app->request_type_ = py::Ref::steal(PyObject_GetAttrString(api, "Request"));
  app->response_type_ = py::Ref::steal(PyObject_GetAttrString(api, "Response"));
  if (!app->json_dumps_ || !app->request_type_ || !app->response_type_) throw fail("gilgamesh module is incomplete");

  py::Ref routes = py::Ref::steal(PyObject_GetAttrString(api, "_routes"));
  if (!routes || !PyList_Check(routes.get())) throw fail("gilgamesh._routes is missing");
  Py_ssize_t n = PyList_GET_SIZE(routes.get());
  std::set<std::pair<std::string, std::string>> seen;
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* entry = PyList_GET_ITEM(routes.get(), i);  // (path, methods, handler, doc)
    RouteInfo info;
    info.path = py::to_string(PyTuple_GET_ITEM(entry, 0));
    if (replace_invalid_utf8(info.path) != info.path) {
      // A lone surrogate: not text a request path can be compared with (and
      // not something every strategy could carry alike).
      py::Ref shown = py::Ref::steal(PyObject_Repr(PyTuple_GET_ITEM(entry, 0)));
      throw StartupError("cannot load app '" + options.target + "': route path " +
                         (shown ? py::to_string(shown.get()) : std::string("?")) +
                         " is not valid text (it holds a lone surrogate)");
    }
    PyObject* methods = PyTuple_GET_ITEM(entry, 1);
    for (Py_ssize_t m = 0; m < PyTuple_GET_SIZE(methods); ++m) {
      info.methods.push_back(py::to_string(PyTuple_GET_ITEM(methods, m)));
      if (!seen.emplace(info.path, info.methods.back()).second) {
        throw StartupError("cannot load app '" + options.target + "': route " +
                           info.methods.back() + " " + info.path + " is registered twice");
      }
    }
    info.doc = py::to_string(PyTuple_GET_ITEM(entry, 3));
    app->routes_.push_back(std::move(info));
    app->handlers_.push_back(py::Ref::borrow(PyTuple_GET_ITEM(entry, 2)));
    app->is_async_.push_back(PyTuple_GET_SIZE(entry) > 4 && PyObject_IsTrue(PyTuple_GET_ITEM(entry, 4)) == 1);
  }
  if (app->needs_loop()) {
    py::Ref adapter = py::Ref::steal(PyImport_ImportModule("_gilgamesh_asgi"));
    if (adapter) app->run_alone_ = py::Ref::steal(PyObject_GetAttrString(adapter.get(), "run_alone"));
    if (!app->run_alone_) throw fail("the async adapter is missing");
  }
  if (app->routes_.empty()) {
    throw StartupError("cannot load app '" + options.target +
                       "': it registers no route (use @gilgamesh.route(\"/path\"))");
  }
  return app;
}

namespace {

// The router's captured values as the handler's keyword arguments. With the GIL.
py::Ref path_params_dict(const std::vector<PathParam>& params) {
  py::Ref out = py::Ref::steal(PyDict_New());
  if (!out) return out;
  for (const PathParam& p : params) {
    py::Ref value;
    switch (p.converter) {
      case PathParam::Converter::integer:
        value = py::Ref::steal(PyLong_FromString(p.value.c_str(), nullptr, 10));
        break;
      case PathParam::Converter::number: {
        py::Ref text = str_from(p.value);
        if (text) value = py::Ref::steal(PyFloat_FromString(text.get()));
        break;
      }
      case PathParam::Converter::string:
      case PathParam::Converter::path:
        value = str_from(p.value);
        break;
    }
    if (!value || PyDict_SetItemString(out.get(), p.name.c_str(), value.get()) < 0) return {};
  }
  return out;
}

}  // namespace

bool RouteApp::needs_loop() const {
  return std::find(is_async_.begin(), is_async_.end(), true) != is_async_.end();
}

py::Ref RouteApp::start_call(std::size_t route_index, const HttpRequestData& request) {
  return call(route_index, request);
}

HttpResponseData RouteApp::finish_call(std::size_t route_index, const HttpRequestData& request, PyObject* result) {
  HttpResponseData out;
  py::Ref pieces;
  if (!convert_result(result, out, pieces)) return error_answer(route_index, request);
  if (pieces) {
    StreamWriter collect(nullptr, max_response_);
    std::optional<HttpResponseData> whole = stream(pieces.get(), std::move(out), collect);
    if (!whole) return error_answer(route_index, request);
    if (collect.collected_size() > max_response_) return too_large(request, routes_[route_index].path, collect.collected_size());
    return std::move(*whole);
  }
  if (out.body.size() > max_response_) return too_large(request, routes_[route_index].path, out.body.size());
  return out;
}

std::optional<HttpResponseData> RouteApp::respond(std::size_t route_index, const HttpRequestData& r,
                                                  StreamWriter& writer) {
  py::Ref result = call(route_index, r);
  if (result && is_async_[route_index]) {
    // Off the worker's loop (a strategy without one): the coroutine runs to its end here.
    result = py::Ref::steal(PyObject_CallOneArg(run_alone_.get(), result.get()));
  }
  HttpResponseData out;
  py::Ref pieces;
  if (!result || !convert_result(result.get(), out, pieces)) return std::nullopt;
  if (pieces && send_file(pieces.get(), out, writer)) return HttpResponseData{};
  if (pieces) return stream(pieces.get(), std::move(out), writer);
  return out;
}

py::Ref RouteApp::call(std::size_t route_index, const HttpRequestData& r) {
  py::Ref headers = py::Ref::steal(PyTuple_New(static_cast<Py_ssize_t>(r.headers.size())));
  if (!headers) return {};
  for (std::size_t i = 0; i < r.headers.size(); ++i) {
    PyObject* pair = Py_BuildValue("(NN)", str_from(r.headers[i].name).release(),
                                   str_from(r.headers[i].value).release());
    if (!pair) return {};
    PyTuple_SET_ITEM(headers.get(), static_cast<Py_ssize_t>(i), pair);
  }
  py::Ref params = r.path_params.empty() ? py::Ref::borrow(Py_None) : path_params_dict(r.path_params);
  py::Ref args[7] = {
      str_from(r.method),
      str_from(r.path),
      str_from(r.query_string),
      std::move(headers),
      py::Ref::steal(PyBytes_FromStringAndSize(r.body.data(), static_cast<Py_ssize_t>(r.body.size()))),
      str_from(r.request_id),
      std::move(params)};
  PyObject* argv[7];
  for (int i = 0; i < 7; ++i) {
    if (!args[i]) return {};
    argv[i] = args[i].get();
  }
  py::Ref request = py::Ref::steal(PyObject_Vectorcall(request_type_.get(), argv, 7, nullptr));
  if (!request) return {};

  py::Ref result;
  if (r.path_params.empty()) {
    PyObject* call_args[1] = {request.get()};
    result = py::Ref::steal(PyObject_Vectorcall(handlers_[route_index].get(), call_args, 1, nullptr));
  } else {  // handler(request, **path_params)
    py::Ref positional = py::Ref::steal(PyTuple_Pack(1, request.get()));
    if (positional) result = py::Ref::steal(PyObject_Call(handlers_[route_index].get(), positional.get(), argv[6]));
  }
  return result;
}

namespace {

// Calls `iterator`.close() if it has one. With the GIL; a pending exception is
// kept (and wins over one that close() raises, which is then dropped).
bool close_iterator(PyObject* iterator) {
  PyObject* pending = PyErr_GetRaisedException();
  bool ok = true;
  py::Ref close = py::Ref::steal(PyObject_GetAttrString(iterator, "close"));
  if (!close) {
    PyErr_Clear();
  } else {
    py::Ref r = py::Ref::steal(PyObject_CallNoArgs(close.get()));
    ok = static_cast<bool>(r);
  }
  if (pending) {
    if (!ok) PyErr_Clear();
    PyErr_SetRaisedException(pending);
    return false;
  }
  return ok;
}

}  // namespace

std::optional<HttpResponseData> RouteApp::stream(PyObject* pieces, HttpResponseData&& head, StreamWriter& writer) {
  const bool typed = !head.content_type.empty();
  bool failed = false;
  for (;;) {
    py::Ref piece = py::Ref::steal(PyIter_Next(pieces));
    if (!piece) {
      failed = PyErr_Occurred() != nullptr;
      break;
    }
    const bool text = PyUnicode_Check(piece.get());
    if (!text && !PyBytes_Check(piece.get()) && !PyByteArray_Check(piece.get()) &&
        !PyMemoryView_Check(piece.get())) {
      PyErr_Format(PyExc_TypeError, "the handler's generator yielded %.100s; yield str or bytes",
                   Py_TYPE(piece.get())->tp_name);
      failed = true;
      break;
    }
    std::string bytes;
    if (!body_bytes(piece.get(), bytes)) {
      failed = true;
      break;
    }
    if (bytes.empty()) continue;
    if (!writer.started()) {
      if (!typed) head.content_type = text ? "text/plain; charset=utf-8" : "application/octet-stream";
      if (!writer.start(std::move(head))) break;
    }
    if (!writer.push(bytes)) break;
  }
  if (!close_iterator(pieces) || failed) return std::nullopt;
  if (!writer.started()) return std::move(head);  // nothing but empty pieces: an empty body
  if (writer.streaming() && !writer.refused()) return HttpResponseData{};
  return std::move(writer.collected());
}

bool RouteApp::send_file(PyObject* body, const HttpResponseData& head, StreamWriter& writer) {
  if (!writer.takes_files()) return false;
  const int binary = PyObject_IsInstance(body, binary_files_.get());
  if (binary != 1) {
    PyErr_Clear();
    return false;
  }
  for (const Header& h : head.headers) {
    if (boost::beast::iequals(h.name, "Content-Length")) return false;  // the handler's own: it streams
  }
  std::optional<FileSpan> file = file_span(body);
  if (!file) return false;
  HttpResponseData sent = head;  // `head` stays as it was for stream(), should the writer refuse it
  if (sent.content_type.empty()) {
    py::Ref name = py::Ref::steal(PyObject_GetAttrString(body, "name"));  // open()'s path; an int for a descriptor
    sent.content_type = content_type_by_name(name && PyUnicode_Check(name.get()) ? py::to_string(name.get()) : "");
    PyErr_Clear();
  }
  sent.headers.push_back({"Content-Length", std::to_string(file->length)});
  if (!writer.send_file(std::move(sent), std::move(file->fd), file->offset, file->length)) return false;
  if (!close_iterator(body)) {
    spdlog::warn("closing the file a handler answered with raised: {}", py::fetch_error().summary);
  }
  return true;
}

bool RouteApp::convert_body(PyObject* body, HttpResponseData& out, py::Ref& pieces) {
  if (PyDict_Check(body) || PyList_Check(body)) {
    PyObject* argv[1] = {body};
    py::Ref text = py::Ref::steal(PyObject_Vectorcall(json_dumps_.get(), argv, 1, nullptr));
    if (!text) return false;
    out.body = py::to_string(text.get());
    out.content_type = "application/json";
    return true;
  }
  if (PyUnicode_Check(body)) {
    out.content_type = "text/plain; charset=utf-8";
    return body_bytes(body, out.body);
  }
  if (PyBytes_Check(body) || PyByteArray_Check(body) || PyMemoryView_Check(body)) {
    out.content_type = "application/octet-stream";
    return body_bytes(body, out.body);
  }
  if (PyIter_Check(body)) {
    pieces = py::Ref::borrow(body);
    return true;
  }
  PyErr_Format(PyExc_TypeError,
               "handler returned %.100s; return dict, list, str, bytes, an iterator of str or bytes, None "
               "or gilgamesh.Response",
               Py_TYPE(body)->tp_name);
  return false;
}

bool RouteApp::convert_result(PyObject* result, HttpResponseData& out, py::Ref& pieces) {
  if (result == Py_None) {
    out.status = 204;
    return true;
  }
  if (!PyObject_TypeCheck(result, reinterpret_cast<PyTypeObject*>(response_type_.get()))) {
    return convert_body(result, out, pieces);
  }
  py::Ref body = py::Ref::steal(PyObject_GetAttrString(result, "body"));
  py::Ref status = py::Ref::steal(PyObject_GetAttrString(result, "status"));
  py::Ref headers = py::Ref::steal(PyObject_GetAttrString(result, "headers"));
  py::Ref ctype = py::Ref::steal(PyObject_GetAttrString(result, "content_type"));
  if (!body || !status || !headers || !ctype) return false;
  long code = PyLong_AsLong(status.get());
  if (code == -1 && PyErr_Occurred()) return false;
  if (code < 0 || code > 999) code = -1;  // out of range: refused where it would reach the wire
  if (body.get() != Py_None && !convert_body(body.get(), out, pieces)) {
    return false;
  }
  out.status = static_cast<int>(code);
  if (!add_headers(headers.get(), out.headers)) return false;
  if (ctype.get() != Py_None) {
    if (!PyUnicode_Check(ctype.get())) {
      PyErr_SetString(PyExc_TypeError, "Response content_type must be a str");
      return false;
    }
    out.content_type = py::to_string(ctype.get());
  }
  return true;
}

void RouteApp::release_kind() {
  handlers_.clear();
  run_alone_.reset();
  request_type_.reset();
  response_type_.reset();
  json_dumps_.reset();
  binary_files_.reset();
}

}  // namespace gilgamesh
