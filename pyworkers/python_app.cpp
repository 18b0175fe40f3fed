#include "python_app.hpp"
#include "response.hpp"
#include "wsgi_app.hpp"

#include <spdlog/spdlog.h>

#include <optional>
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

StartupError load_error(const AppOptions& options, const std::string& what,
                        const std::string& reason, std::string traceback = {}) {
  std::string msg = "cannot load app '" + options.module + "' under strategy " + options.strategy +
                    ": " + what + (reason.empty() ? "" : ": " + reason);
  if (reason.find("does not support loading in subinterpreters") != std::string::npos ||
      reason.find("not compatible with subinterpreters") != std::string::npos) {
    msg += "\n  it imports a single-phase-init C extension, which sub-interpreters cannot load;"
           " run it with --strategy processes or --strategy threads";
  }
  return StartupError(msg, std::move(traceback));
}

}  // namespace

AppOptions app_options(const ExecutorConfig& config) {
  AppOptions o;
  o.module = config.app;
  o.pythonpath = config.pythonpath;
  o.strategy = config.strategy;
  o.wsgi = config.wsgi;
  o.root_path = config.root_path;
  o.max_response = config.max_response;
  o.debug = config.debug;
  // threads and free-threaded call one app object from several threads; the
  // others give each worker its own copy (an interpreter, or a process).
  const bool shared = config.strategy == "threads" || config.strategy == "free-threaded";
  o.multithread = shared && config.workers > 1;
  o.multiprocess = !shared && config.workers > 1;
  return o;
}

std::unique_ptr<PythonApp> PythonApp::load(const AppOptions& options) {
  std::unique_ptr<PythonApp> app(new PythonApp());
  app->max_response_ = options.max_response;
  app->debug_ = options.debug;
  // A WSGI app is named MODULE:CALLABLE; the module is imported like a route module.
  const std::string module_name = options.wsgi ? options.module.substr(0, options.module.find(':'))
                                               : options.module;
  // The pending exception becomes the reason.
  auto fail = [&](const std::string& what) -> StartupError {
    std::string reason = py::fetch_error_summary();
    return load_error(options, what, reason);
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
  if (options.trace_imports_fd >= 0) {
    py::Ref traced = py::Ref::steal(
        PyObject_CallMethod(api.get(), "_trace_imports", "i", options.trace_imports_fd));
    if (!traced) throw fail("tracing imports");
  }
  py::Ref json = py::Ref::steal(PyImport_ImportModule("json"));
  if (!json) throw fail("import json");
  app->json_dumps_ = py::Ref::steal(PyObject_GetAttrString(json.get(), "dumps"));
  app->request_type_ = py::Ref::steal(PyObject_GetAttrString(api.get(), "Request"));
  app->response_type_ = py::Ref::steal(PyObject_GetAttrString(api.get(), "Response"));
  app->http_error_type_ = py::Ref::steal(PyObject_GetAttrString(api.get(), "HTTPError"));
  app->handler_timeout_type_ = py::Ref::steal(PyObject_GetAttrString(api.get(), "HandlerTimeout"));
  if (!app->json_dumps_ || !app->request_type_ || !app->response_type_ || !app->http_error_type_ ||
      !app->handler_timeout_type_)
    throw fail("gilgamesh module is incomplete");

  py::Ref imported = py::Ref::steal(
      PyObject_CallMethod(api.get(), "_import_app", "s", module_name.c_str()));
  if (!imported) {
    py::ErrorText error = py::fetch_error();
    throw load_error(options, "import failed", error.summary, error.traceback);
  }
  PyObject* gil_warnings = PyTuple_GET_ITEM(imported.get(), 1);
  for (Py_ssize_t i = 0; i < PyList_GET_SIZE(gil_warnings); ++i) {
    app->gil_warnings_.push_back(py::to_string(PyList_GET_ITEM(gil_warnings, i)));
  }

  if (options.wsgi) {
    app->wsgi_ = WsgiApp::create(options, PyTuple_GET_ITEM(imported.get(), 0));
    if (!app->wsgi_) throw fail("no WSGI application");
    app->routes_.push_back({"*", {}, "WSGI application " + options.module});
    return app;
  }

  py::Ref routes = py::Ref::steal(PyObject_GetAttrString(api.get(), "_routes"));
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
      throw StartupError("cannot load app '" + options.module + "': route path " +
                         (shown ? py::to_string(shown.get()) : std::string("?")) +
                         " is not valid text (it holds a lone surrogate)");
    }
    PyObject* methods = PyTuple_GET_ITEM(entry, 1);
    for (Py_ssize_t m = 0; m < PyTuple_GET_SIZE(methods); ++m) {
      info.methods.push_back(py::to_string(PyTuple_GET_ITEM(methods, m)));
      if (!seen.emplace(info.path, info.methods.back()).second) {
        throw StartupError("cannot load app '" + options.module + "': route " +
                           info.methods.back() + " " + info.path + " is registered twice");
      }
    }
    info.doc = py::to_string(PyTuple_GET_ITEM(entry, 3));
    app->routes_.push_back(std::move(info));
    app->handlers_.push_back(py::Ref::borrow(PyTuple_GET_ITEM(entry, 2)));
  }
  if (app->routes_.empty()) {
    throw StartupError("cannot load app '" + options.module +
                       "': it registers no route (use @gilgamesh.route(\"/path\"))");
  }
  return app;
}

HttpResponseData PythonApp::handle(std::size_t route_index, const HttpRequestData& r) {
  HttpResponseData response;
  if (wsgi_) {
    std::optional<HttpResponseData> answered = wsgi_->handle(r);
    if (!answered) return error_from_exception(r.request_id, route_index);
    response = std::move(*answered);
  } else {
    response = call_handler(route_index, r);
  }
  if (response.body.size() > max_response_) {
    spdlog::error("request {}: the handler for {} made a response body of {} bytes, over --max-response "
                  "{}; answered 500", r.request_id,
                  route_index < routes_.size() ? routes_[route_index].path : "?", response.body.size(),
                  max_response_);
    return make_error_response(500, "the response is larger than the server allows (" +
                                        std::to_string(max_response_) + " bytes)", r.request_id);
  }
  return response;
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

HttpResponseData PythonApp::call_handler(std::size_t route_index, const HttpRequestData& r) {
  py::Ref headers = py::Ref::steal(PyTuple_New(static_cast<Py_ssize_t>(r.headers.size())));
  if (!headers) return error_from_exception(r.request_id, route_index);
  for (std::size_t i = 0; i < r.headers.size(); ++i) {
    PyObject* pair = Py_BuildValue("(NN)", str_from(r.headers[i].name).release(),
                                   str_from(r.headers[i].value).release());
    if (!pair) return error_from_exception(r.request_id, route_index);
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
    if (!args[i]) return error_from_exception(r.request_id, route_index);
    argv[i] = args[i].get();
  }
  py::Ref request = py::Ref::steal(PyObject_Vectorcall(request_type_.get(), argv, 7, nullptr));
  if (!request) return error_from_exception(r.request_id, route_index);

  py::Ref result;
  if (r.path_params.empty()) {
    PyObject* call_args[1] = {request.get()};
    result = py::Ref::steal(PyObject_Vectorcall(handlers_[route_index].get(), call_args, 1, nullptr));
  } else {  // handler(request, **path_params)
    py::Ref positional = py::Ref::steal(PyTuple_Pack(1, request.get()));
    if (positional) result = py::Ref::steal(PyObject_Call(handlers_[route_index].get(), positional.get(), argv[6]));
  }
  if (!result) return error_from_exception(r.request_id, route_index);
  return convert_result(result.get(), r.request_id);
}

bool PythonApp::convert_body(PyObject* body, HttpResponseData& out) {
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
  PyErr_Format(PyExc_TypeError,
               "handler returned %.100s; return dict, list, str, bytes, None or gilgamesh.Response",
               Py_TYPE(body)->tp_name);
  return false;
}

HttpResponseData PythonApp::convert_result(PyObject* result, const std::string& request_id) {
  HttpResponseData out;
  if (result == Py_None) {
    out.status = 204;
    return out;
  }
  if (!PyObject_TypeCheck(result, reinterpret_cast<PyTypeObject*>(response_type_.get()))) {
    if (!convert_body(result, out)) return error_from_exception(request_id, SIZE_MAX);
    return out;
  }
  py::Ref body = py::Ref::steal(PyObject_GetAttrString(result, "body"));
  py::Ref status = py::Ref::steal(PyObject_GetAttrString(result, "status"));
  py::Ref headers = py::Ref::steal(PyObject_GetAttrString(result, "headers"));
  py::Ref ctype = py::Ref::steal(PyObject_GetAttrString(result, "content_type"));
  if (!body || !status || !headers || !ctype) return error_from_exception(request_id, SIZE_MAX);
  long code = PyLong_AsLong(status.get());
  if (code == -1 && PyErr_Occurred()) return error_from_exception(request_id, SIZE_MAX);
  if (code < 0 || code > 999) code = -1;  // out of range: refused where it would reach the wire
  if (body.get() != Py_None && !convert_body(body.get(), out)) {
    return error_from_exception(request_id, SIZE_MAX);
  }
  out.status = static_cast<int>(code);
  if (!add_headers(headers.get(), out.headers)) return error_from_exception(request_id, SIZE_MAX);
  if (ctype.get() != Py_None) {
    if (!PyUnicode_Check(ctype.get())) {
      PyErr_SetString(PyExc_TypeError, "Response content_type must be a str");
      return error_from_exception(request_id, SIZE_MAX);
    }
    out.content_type = py::to_string(ctype.get());
  }
  return out;
}

HttpResponseData PythonApp::error_from_exception(const std::string& request_id,
                                                 std::size_t route_index) {
  PyObject* type = PyErr_Occurred();
  if (type && PyErr_GivenExceptionMatches(type, handler_timeout_type_.get())) {
    // Raised into the handler at its deadline; the pool has logged it, and
    // the client has had its 504.
    PyErr_Clear();
    return make_deadline_response("handler interrupted at its deadline", request_id);
  }
  if (type && PyErr_GivenExceptionMatches(type, http_error_type_.get())) {
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
  std::string where = route_index < routes_.size() ? routes_[route_index].path : "result conversion";
  spdlog::error("request {}: handler for {} raised {}\n{}", request_id, where, error.summary,
                error.traceback);
  // The type and text can hold what a client must not see (paths, keys,
  // values): the log has them; the body, only with --debug.
  HttpResponseData response = make_error_response(500, "internal server error", request_id);
  if (debug_) {
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
  if (wsgi_) wsgi_->release();
  handlers_.clear();
  request_type_.reset();
  response_type_.reset();
  http_error_type_.reset();
  handler_timeout_type_.reset();
  json_dumps_.reset();
}

PythonApp::~PythonApp() {
  // Without the GIL, references can only be dropped on the floor; release()
  // must have run. Leak rather than touch an interpreter we may not hold.
  for (auto& h : handlers_) (void)h.release();
  (void)request_type_.release();
  (void)response_type_.release();
  (void)http_error_type_.release();
  (void)handler_timeout_type_.release();
  (void)json_dumps_.release();
}

}  // namespace gilgamesh
