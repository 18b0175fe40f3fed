#include "pyworkers/apps/wsgi_app.hpp"

#include <spdlog/spdlog.h>

#include <cctype>
#include <charconv>
#include <cstdint>

#include "server/model/file_body.hpp"
#include "server/model/response.hpp"

namespace gilgamesh {

namespace {

py::Ref latin1(std::string_view s) {
  return py::Ref::steal(PyUnicode_DecodeLatin1(s.data(), static_cast<Py_ssize_t>(s.size()), nullptr));
}

py::Ref interned(const char* s) { return py::Ref::steal(PyUnicode_InternFromString(s)); }

// environ[key] = value; false with a Python exception set (also when value is empty).
bool put_item(PyObject* env, const py::Ref& key, py::Ref value) {
  return value && PyDict_SetItem(env, key.get(), value.get()) == 0;
}

// The bytes of a str that PEP 3333 says must be latin-1 ("native strings"). With the GIL.
bool native_bytes(PyObject* s, std::string& out, const char* what) {
  if (!PyUnicode_Check(s)) {
    PyErr_Format(PyExc_TypeError, "%s must be a str, not %.100s", what, Py_TYPE(s)->tp_name);
    return false;
  }
  if (PyUnicode_KIND(s) != PyUnicode_1BYTE_KIND) {
    PyErr_Format(PyExc_ValueError,
                 "%s %.200R holds characters outside latin-1, which WSGI does not allow "
                 "(encode such a value first, e.g. as RFC 8187 or percent-encoded UTF-8)",
                 what, s);
    return false;
  }
  out.assign(reinterpret_cast<const char*>(PyUnicode_1BYTE_DATA(s)),
             static_cast<std::size_t>(PyUnicode_GET_LENGTH(s)));
  return true;
}

bool iequals(std::string_view a, std::string_view b) {
  if (a.size() != b.size()) return false;
  for (std::size_t i = 0; i < a.size(); ++i) {
    char x = a[i], y = b[i];
    if (x >= 'A' && x <= 'Z') x = static_cast<char>(x - 'A' + 'a');
    if (y >= 'A' && y <= 'Z') y = static_cast<char>(y - 'A' + 'a');
    if (x != y) return false;
  }
  return true;
}

// The answer the calling thread's run() streams (one request per thread at a
// time), for the two functions the Python half calls.
thread_local StreamWriter* current_writer = nullptr;

class WriterScope {
 public:
  explicit WriterScope(StreamWriter& w) : previous_(std::exchange(current_writer, &w)) {}
  ~WriterScope() { current_writer = previous_; }

 private:
  StreamWriter* previous_;
};

PyObject* no_writer() {
  PyErr_SetString(PyExc_RuntimeError, "the response can only be streamed from the request's own thread");
  return nullptr;
}

}  // namespace

// _start(status, headers) -> bool: the head of an answer that streams. False:
// stop producing (the client is gone, or the head breaks a response rule).
PyObject* WsgiApp::stream_start(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 2) return PyErr_Format(PyExc_TypeError, "_start() takes 2 arguments");
  if (!current_writer) return no_writer();
  PyObject* empty = PyList_New(0);
  if (!empty) return nullptr;
  HttpResponseData head;
  const bool ok = convert(args[0], args[1], empty, head);
  Py_DECREF(empty);
  if (!ok) return nullptr;
  return PyBool_FromLong(current_writer->start(std::move(head)));
}

// _push(data) -> bool: a piece of the body. False: stop producing.
PyObject* WsgiApp::stream_push(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 1 || !PyBytes_Check(args[0])) return PyErr_Format(PyExc_TypeError, "_push() takes one bytes");
  if (!current_writer) return no_writer();
  return PyBool_FromLong(current_writer->push(
      std::string_view(PyBytes_AS_STRING(args[0]), static_cast<std::size_t>(PyBytes_GET_SIZE(args[0])))));
}

// _sendfile(status, headers, filelike) -> bool: the app's wsgi.file_wrapper over a real file,
// handed to the connection to read (StreamWriter::send_file) from the file's position on. False:
// the Python half iterates it instead, as before (the sink reads no files here, or the object
// is not a regular file with a fileno() and a tell(), or its Content-Length is not what is
// left of the file, or the status and headers are not what start() would take). No
// exception is raised for any of these: iterating reports what is wrong.
PyObject* WsgiApp::sendfile_py(PyObject*, PyObject* const* args, Py_ssize_t nargs) {
  if (nargs != 3) return PyErr_Format(PyExc_TypeError, "_sendfile() takes 3 arguments");
  if (!current_writer) return no_writer();
  if (!current_writer->takes_files()) Py_RETURN_FALSE;
  std::optional<FileSpan> file = file_span(args[2]);
  if (!file) Py_RETURN_FALSE;
  PyObject* empty = PyList_New(0);
  if (!empty) return nullptr;
  HttpResponseData head;
  const bool ok = convert(args[0], args[1], empty, head);
  Py_DECREF(empty);
  if (!ok) {
    PyErr_Clear();
    Py_RETURN_FALSE;
  }
  std::uint64_t length = file->length;
  bool has_length = false;
  for (const Header& h : head.headers) {
    if (!iequals(h.name, "Content-Length")) continue;
    std::uint64_t given = 0;
    const auto [end, ec] = std::from_chars(h.value.data(), h.value.data() + h.value.size(), given);
    if (has_length || ec != std::errc{} || end != h.value.data() + h.value.size() || h.value.empty() ||
        given != file->length) {
      Py_RETURN_FALSE;  // two, unreadable, or not what the file holds: the iterated body's rules answer
    }
    has_length = true;
    length = given;
  }
  if (!has_length) head.headers.push_back({"Content-Length", std::to_string(length)});
  return PyBool_FromLong(current_writer->send_file(std::move(head), std::move(file->fd), file->offset, length));
}

std::unique_ptr<WsgiApp> WsgiApp::create(const AppOptions& options, const LoadContext& context,
                                         PyObject* module, ErrorTypes errors) {
  std::unique_ptr<WsgiApp> w(new WsgiApp(options, std::move(errors)));
  w->root_path_ = options.root_path;
  w->routes_.push_back({"*", {}, "WSGI application " + options.target});

  const auto colon = options.target.find(':');
  const std::string expression = colon == std::string::npos ? "application" : options.target.substr(colon + 1);
  py::Ref adapter = py::Ref::steal(PyImport_ImportModule("_gilgamesh_wsgi"));
  py::Ref io = py::Ref::steal(PyImport_ImportModule("io"));
  if (!adapter || !io) return nullptr;
  w->app_ = py::Ref::steal(PyObject_CallMethod(adapter.get(), "resolve", "Os", module, expression.c_str()));
  if (!w->app_) return nullptr;
  w->run_ = py::Ref::steal(PyObject_GetAttrString(adapter.get(), "run"));
  w->too_large_type_ = py::Ref::steal(PyObject_GetAttrString(adapter.get(), "ResponseTooLarge"));
  w->error_stream_ = py::Ref::steal(PyObject_GetAttrString(adapter.get(), "ErrorStream"));
  py::Ref file_wrapper = py::Ref::steal(PyObject_GetAttrString(adapter.get(), "FileWrapper"));
  w->bytes_io_ = py::Ref::steal(PyObject_GetAttrString(io.get(), "BytesIO"));
  w->limit_ = py::Ref::steal(PyLong_FromSize_t(options.max_response));
  static PyMethodDef start_def{"_start", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&stream_start)),
                               METH_FASTCALL, nullptr};
  static PyMethodDef push_def{"_push", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&stream_push)),
                              METH_FASTCALL, nullptr};
  static PyMethodDef file_def{"_sendfile", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&sendfile_py)),
                              METH_FASTCALL, nullptr};
  w->start_ = py::Ref::steal(PyCFunction_New(&start_def, nullptr));
  w->push_ = py::Ref::steal(PyCFunction_New(&push_def, nullptr));
  w->send_file_ = py::Ref::steal(PyCFunction_New(&file_def, nullptr));
  if (!w->start_ || !w->push_ || !w->send_file_) return nullptr;
  if (!w->run_ || !w->too_large_type_ || !w->error_stream_ || !file_wrapper || !w->bytes_io_ || !w->limit_) return nullptr;

  struct Key {
    py::Ref* ref;
    const char* name;
  };
  for (auto [ref, name] : {Key{&w->k_method_, "REQUEST_METHOD"},
                           Key{&w->k_path_info_, "PATH_INFO"}, Key{&w->k_query_string_, "QUERY_STRING"},
                           Key{&w->k_content_type_, "CONTENT_TYPE"},
                           Key{&w->k_content_length_, "CONTENT_LENGTH"},
                           Key{&w->k_server_name_, "SERVER_NAME"}, Key{&w->k_server_port_, "SERVER_PORT"},
                           Key{&w->k_server_protocol_, "SERVER_PROTOCOL"},
                           Key{&w->k_remote_addr_, "REMOTE_ADDR"}, Key{&w->k_remote_port_, "REMOTE_PORT"},
                           Key{&w->k_request_uri_, "REQUEST_URI"}, Key{&w->k_raw_uri_, "RAW_URI"},
                           Key{&w->k_input_, "wsgi.input"}, Key{&w->k_errors_, "wsgi.errors"},
                           Key{&w->k_request_id_, "gilgamesh.request_id"}}) {
    *ref = interned(name);
    if (!*ref) return nullptr;
  }

  w->template_ = py::Ref::steal(PyDict_New());
  if (!w->template_) return nullptr;
  struct Entry {
    const char* key;
    py::Ref value;
  };
  Entry shared[] = {
      {"wsgi.version", py::Ref::steal(Py_BuildValue("(ii)", 1, 0))},
      {"wsgi.url_scheme", latin1("http")},
      {"wsgi.multithread", py::Ref::borrow(context.multithread ? Py_True : Py_False)},
      {"wsgi.multiprocess", py::Ref::borrow(context.multiprocess ? Py_True : Py_False)},
      {"wsgi.run_once", py::Ref::borrow(Py_False)},
      {"wsgi.file_wrapper", std::move(file_wrapper)},
      // The input ends where the body ends (it is read whole before the app runs).
      {"wsgi.input_terminated", py::Ref::borrow(Py_True)},
      {"SERVER_SOFTWARE", latin1("gilgamesh/" GILGAMESH_VERSION)},
      {"SCRIPT_NAME", latin1(options.root_path)}};
  for (const Entry& e : shared) {
    if (!e.value || PyDict_SetItemString(w->template_.get(), e.key, e.value.get()) < 0) return nullptr;
  }
  return w;
}

std::optional<HttpResponseData> WsgiApp::respond(std::size_t, const HttpRequestData& r, StreamWriter& writer) {
  py::Ref environ = environ_for(r);
  if (!environ) return std::nullopt;
  WriterScope scope(writer);
  PyObject* run_args[6] = {app_.get(), environ.get(), limit_.get(), writer.streaming() ? start_.get() : Py_None,
                           push_.get(), writer.takes_files() ? send_file_.get() : Py_None};
  py::Ref result = py::Ref::steal(PyObject_Vectorcall(run_.get(), run_args, 6, nullptr));
  if (result && writer.started()) {
    if (writer.refused()) return std::move(writer.collected());
    return HttpResponseData{};  // it went out through the sink
  }
  return from_result(result.get(), r);
}

py::Ref WsgiApp::environ_for(const HttpRequestData& r) {
  py::Ref environ = py::Ref::steal(PyDict_Copy(template_.get()));
  if (!environ) return {};
  PyObject* env = environ.get();
  auto put = [env](const py::Ref& key, py::Ref value) { return put_item(env, key, std::move(value)); };

  // --root-path: a path under the prefix loses it (a proxy that does not strip
  // it); any other path is taken as already relative to the prefix.
  std::string_view path_info = r.path;
  if (!root_path_.empty() && path_info.starts_with(root_path_) &&
      (path_info.size() == root_path_.size() || path_info[root_path_.size()] == '/')) {
    path_info.remove_prefix(root_path_.size());
  }
  // A UNIX socket (--uds) has no address: the host a URL would name, and its scheme's port, as
  // gunicorn gives them.
  const std::string_view server_name = r.server_addr.empty() ? std::string_view("localhost") : r.server_addr;
  const std::string server_port =
      r.server_addr.empty() ? (r.scheme == "https" ? "443" : "80") : std::to_string(r.server_port);
  if (!put(k_method_, latin1(r.method)) || !put(k_path_info_, latin1(path_info)) ||
      !put(k_query_string_, latin1(r.query_string)) || !put(k_server_name_, latin1(server_name)) ||
      !put(k_server_port_, latin1(server_port)) ||
      !put(k_server_protocol_, latin1(r.http_version)) || !put(k_remote_addr_, latin1(r.remote_addr)) ||
      (!r.remote_addr.empty() && !put(k_remote_port_, latin1(std::to_string(r.remote_port)))) ||
      !put(k_request_uri_, latin1(r.target)) || !put(k_raw_uri_, latin1(r.target)) ||
      !put(k_request_id_, latin1(r.request_id))) {
    return {};
  }
  // The template's "http", unless a trusted proxy forwarded another scheme.
  if (r.scheme != "http") {
    py::Ref scheme = latin1(r.scheme);
    if (!scheme || PyDict_SetItemString(env, "wsgi.url_scheme", scheme.get()) < 0) return {};
  }
  if (!add_request_headers(env, r)) return {};

  py::Ref body = py::Ref::steal(PyBytes_FromStringAndSize(r.body.data(), static_cast<Py_ssize_t>(r.body.size())));
  if (!body) return {};
  PyObject* input_args[1] = {body.get()};
  if (!put(k_input_, py::Ref::steal(PyObject_Vectorcall(bytes_io_.get(), input_args, 1, nullptr)))) return {};
  py::Ref request_id = latin1(r.request_id);
  if (!request_id) return {};
  PyObject* errors_args[1] = {request_id.get()};
  if (!put(k_errors_, py::Ref::steal(PyObject_Vectorcall(error_stream_.get(), errors_args, 1, nullptr)))) {
    return {};
  }
  return environ;
}

// HTTP_* entries (and CONTENT_TYPE, CONTENT_LENGTH) from the request headers.
bool WsgiApp::add_request_headers(PyObject* env, const HttpRequestData& r) {
  auto put = [env](const py::Ref& key, py::Ref value) { return put_item(env, key, std::move(value)); };
  bool length_given = false;
  std::string key;
  for (const Header& h : r.headers) {
    if (iequals(h.name, "content-length")) {
      length_given = true;  // CONTENT_LENGTH is the body's real size, below
      continue;
    }
    py::Ref name;
    if (iequals(h.name, "content-type")) {
      name = py::Ref::borrow(k_content_type_.get());
    } else {
      // Names with '_' are dropped: they would be indistinguishable from '-' here
      // (gunicorn and nginx drop them too), and could smuggle a header past a proxy.
      if (h.name.find('_') != std::string::npos) continue;
      key.assign("HTTP_");
      for (char c : h.name) key += c == '-' ? '_' : (c >= 'a' && c <= 'z') ? static_cast<char>(c - 'a' + 'A') : c;
      name = latin1(key);
      if (!name) return false;
    }
    py::Ref value = latin1(h.value);
    if (!value) return false;
    PyObject* existing = PyDict_GetItemWithError(env, name.get());  // borrowed
    if (existing) {  // a repeated field: one value, joined (cookies with "; ", RFC 9113 8.2.3)
      py::Ref separator = latin1(key == "HTTP_COOKIE" ? "; " : ", ");
      py::Ref head = separator ? py::Ref::steal(PyUnicode_Concat(existing, separator.get())) : py::Ref();
      value = head ? py::Ref::steal(PyUnicode_Concat(head.get(), value.get())) : py::Ref();
    } else if (PyErr_Occurred()) {
      return false;
    }
    if (!put(name, std::move(value))) return false;
  }
  if (length_given || !r.body.empty()) {
    if (!put(k_content_length_, latin1(std::to_string(r.body.size())))) return false;
  }
  return true;
}

std::optional<HttpResponseData> WsgiApp::from_result(PyObject* result, const HttpRequestData& r) {
  if (!result) {
    if (!PyErr_ExceptionMatches(too_large_type_.get())) return std::nullopt;
    PyObject* exc = PyErr_GetRaisedException();
    py::Ref held = py::Ref::steal(exc);
    py::Ref size = py::Ref::steal(PyObject_GetAttrString(exc, "size"));
    const std::size_t bytes = size ? PyLong_AsSize_t(size.get()) : max_response_ + 1;
    PyErr_Clear();
    return too_large(r, target_, bytes);
  }
  py::Ref status = py::Ref::steal(PyObject_GetAttrString(result, "status"));
  py::Ref headers = status ? py::Ref::steal(PyObject_GetAttrString(result, "headers")) : py::Ref();
  py::Ref chunks = headers ? py::Ref::steal(PyObject_GetAttrString(result, "chunks")) : py::Ref();
  if (!chunks) return std::nullopt;
  HttpResponseData out;
  if (!convert(status.get(), headers.get(), chunks.get(), out)) return std::nullopt;
  return out;
}

bool WsgiApp::convert(PyObject* status, PyObject* headers, PyObject* chunks, HttpResponseData& out) {
  std::string line;
  if (!native_bytes(status, line, "the status")) return false;
  const bool digits = line.size() >= 3 && std::isdigit(static_cast<unsigned char>(line[0])) &&
                      std::isdigit(static_cast<unsigned char>(line[1])) &&
                      std::isdigit(static_cast<unsigned char>(line[2]));
  if (!digits || (line.size() > 3 && line[3] != ' ')) {
    PyErr_Format(PyExc_ValueError, "the status must be a code and a reason such as '200 OK', got %.200R",
                 status);
    return false;
  }
  // Carried as given: the HTTP layer refuses a status outside 200..599.
  out.status = (line[0] - '0') * 100 + (line[1] - '0') * 10 + (line[2] - '0');

  if (!PyList_Check(headers)) {
    PyErr_Format(PyExc_TypeError, "the response headers must be a list of (name, value) tuples, not %.100s",
                 Py_TYPE(headers)->tp_name);
    return false;
  }
  const Py_ssize_t n = PyList_GET_SIZE(headers);
  out.headers.resize(static_cast<std::size_t>(n));
  for (Py_ssize_t i = 0; i < n; ++i) {
    PyObject* pair = PyList_GET_ITEM(headers, i);
    if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
      PyErr_Format(PyExc_TypeError, "response header #%zd must be a (name, value) tuple, not %.200R", i, pair);
      return false;
    }
    Header& h = out.headers[static_cast<std::size_t>(i)];
    if (!native_bytes(PyTuple_GET_ITEM(pair, 0), h.name, "a response header name") ||
        !native_bytes(PyTuple_GET_ITEM(pair, 1), h.value, "a response header value")) {
      return false;
    }
  }

  // run() returns a list of bytes.
  const Py_ssize_t count = PyList_GET_SIZE(chunks);
  std::size_t total = 0;
  for (Py_ssize_t i = 0; i < count; ++i) total += static_cast<std::size_t>(PyBytes_GET_SIZE(PyList_GET_ITEM(chunks, i)));
  out.body.reserve(total);
  for (Py_ssize_t i = 0; i < count; ++i) {
    PyObject* chunk = PyList_GET_ITEM(chunks, i);
    out.body.append(PyBytes_AS_STRING(chunk), static_cast<std::size_t>(PyBytes_GET_SIZE(chunk)));
  }
  return true;
}

std::vector<py::Ref*> WsgiApp::references() {
  return {&app_, &run_, &start_, &push_, &send_file_, &too_large_type_, &bytes_io_, &error_stream_, &limit_, &template_, &k_method_,
                       &k_path_info_, &k_query_string_, &k_content_type_, &k_content_length_,
                       &k_server_name_, &k_server_port_, &k_server_protocol_, &k_remote_addr_,
                       &k_remote_port_, &k_request_uri_, &k_raw_uri_, &k_input_, &k_errors_, &k_request_id_};
}

void WsgiApp::release_kind() {
  for (py::Ref* ref : references()) ref->reset();
}

WsgiApp::~WsgiApp() {
  // Without the GIL references can only be dropped on the floor; release()
  // must have run. Leak rather than touch an interpreter we may not hold.
  for (py::Ref* ref : references()) (void)ref->release();
}

}  // namespace gilgamesh
