#include "gilgamesh_module.hpp"

#include <unistd.h>

#include "py_ref.hpp"
#include "query.hpp"
#include "worker_identity.hpp"

namespace gilgamesh {

WorkerIdentity& current_worker() {
  thread_local WorkerIdentity identity;
  return identity;
}

namespace {

// The pure-Python part of the API, executed in the module's namespace of every
// interpreter. Request parses its query and headers lazily, so a handler that
// never reads them costs nothing for them.
constexpr const char* kModuleSource = R"PY(
import json as _json
from collections.abc import Mapping as _Mapping
from http import HTTPStatus as _HTTPStatus


def _reason(status):
    try:
        return _HTTPStatus(status).phrase
    except ValueError:
        return "HTTP %d" % status


class HTTPError(Exception):
    """Raise to answer with `status` and a JSON body {"error": message}."""

    def __init__(self, status, message=None):
        status = int(status)
        if not 400 <= status <= 599:
            raise ValueError("HTTPError status must be 400..599, got %d" % status)
        self.status = status
        self.message = _reason(status) if message is None else str(message)
        super().__init__(status, self.message)

    def __str__(self):
        return "%d: %s" % (self.status, self.message)


class Response:
    """A handler result given as it is: body, status, headers, content type."""

    __slots__ = ("body", "status", "headers", "content_type")

    def __init__(self, body=b"", status=200, headers=None, content_type=None):
        self.body = body
        self.status = status
        self.headers = headers
        self.content_type = content_type

    def __repr__(self):
        return "Response(status=%r, content_type=%r)" % (self.status, self.content_type)


class Headers(_Mapping):
    """Read-only, case-insensitive request headers. Repeated fields join with ', '."""

    __slots__ = ("_raw", "_map")

    def __init__(self, raw):
        self._raw = raw
        self._map = None

    def _index(self):
        m = self._map
        if m is None:
            m = {}
            for name, value in self._raw:
                key = name.lower()
                m[key] = m[key] + ", " + value if key in m else value
            self._map = m
        return m

    def __getitem__(self, name):
        return self._index()[name.lower()]

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._index()

    def __iter__(self):
        return iter(self._index())

    def __len__(self):
        return len(self._index())

    def get(self, name, default=None):
        return self._index().get(name.lower(), default)

    def getall(self, name):
        """Every value of a repeated field, in order."""
        key = name.lower()
        return [v for n, v in self._raw if n.lower() == key]

    def raw(self):
        """The (name, value) pairs as received."""
        return list(self._raw)

    def __repr__(self):
        return "Headers(%r)" % (self._raw,)


class Request:
    """One HTTP request, as a handler sees it."""

    __slots__ = ("method", "path", "query_string", "body", "request_id",
                 "_raw_headers", "_headers", "_query")

    def __init__(self, method, path, query_string, raw_headers, body, request_id):
        self.method = method
        self.path = path
        self.query_string = query_string
        self._raw_headers = raw_headers
        self.body = body
        self.request_id = request_id
        self._headers = None
        self._query = None

    @property
    def headers(self):
        h = self._headers
        if h is None:
            h = self._headers = Headers(self._raw_headers)
        return h

    @property
    def query(self):
        """Query parameters as a dict of str to str; the last of repeated names wins."""
        q = self._query
        if q is None:
            q = self._query = dict(_parse_query(self.query_string))
        return q

    def query_list(self):
        """Query parameters as (name, value) pairs, repeated names kept."""
        return _parse_query(self.query_string)

    def json(self):
        """The body parsed as JSON; a body that is not JSON raises HTTPError(400)."""
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, "request body is not valid JSON: %s" % e) from None

    def __repr__(self):
        return "<Request %s %s>" % (self.method, self.path)


_routes = []


def _import_app(name):
    """Import the app; return it with the warnings that say an extension turned the GIL on."""
    import importlib
    import warnings
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        module = importlib.import_module(name)
    gil_warnings = []
    for w in caught:
        text = str(w.message)
        if "GIL" in text and "enabled" in text:
            gil_warnings.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return module, gil_warnings


def route(path, methods=("GET",)):
    """Register `handler(request)` for `path` and `methods`."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("route path must be a str starting with '/', got %r" % (path,))
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(m.upper() for m in methods)
    if not methods or not all(m.isalpha() for m in methods):
        raise ValueError("route methods must be HTTP method names, got %r" % (methods,))

    def decorator(handler):
        doc = (handler.__doc__ or "").strip().splitlines()
        _routes.append((path, methods, handler, doc[0].strip() if doc else ""))
        return handler

    return decorator
)PY";

PyObject* parse_query_py(PyObject*, PyObject* arg) {
  if (!PyUnicode_Check(arg)) {
    PyErr_SetString(PyExc_TypeError, "_parse_query expects a str");
    return nullptr;
  }
  Py_ssize_t size = 0;
  const char* data = PyUnicode_AsUTF8AndSize(arg, &size);
  if (!data) return nullptr;
  auto pairs = parse_query(std::string_view(data, static_cast<std::size_t>(size)));
  py::Ref list = py::Ref::steal(PyList_New(static_cast<Py_ssize_t>(pairs.size())));
  if (!list) return nullptr;
  for (std::size_t i = 0; i < pairs.size(); ++i) {
    PyObject* item = Py_BuildValue("(s#s#)", pairs[i].first.data(),
                                   static_cast<Py_ssize_t>(pairs[i].first.size()),
                                   pairs[i].second.data(),
                                   static_cast<Py_ssize_t>(pairs[i].second.size()));
    if (!item) {  // not UTF-8 after decoding: keep the bytes readable
      PyErr_Clear();
      item = Py_BuildValue("(NN)",
                           PyUnicode_DecodeUTF8(pairs[i].first.data(),
                                                static_cast<Py_ssize_t>(pairs[i].first.size()),
                                                "replace"),
                           PyUnicode_DecodeUTF8(pairs[i].second.data(),
                                                static_cast<Py_ssize_t>(pairs[i].second.size()),
                                                "replace"));
      if (!item) return nullptr;
    }
    PyList_SET_ITEM(list.get(), static_cast<Py_ssize_t>(i), item);
  }
  return list.release();
}

PyObject* worker_info_py(PyObject*, PyObject*) {
  const WorkerIdentity& w = current_worker();
  auto interp_id = PyInterpreterState_GetID(PyInterpreterState_Get());
  return Py_BuildValue("{s:s,s:i,s:L,s:i,s:k}", "strategy", w.strategy, "worker", w.worker,
                       "interpreter_id", static_cast<long long>(interp_id), "pid",
                       static_cast<int>(getpid()), "thread_id", PyThread_get_thread_ident());
}

PyMethodDef kMethods[] = {
    {"_parse_query", parse_query_py, METH_O,
     "_parse_query(query_string) -> list of (name, value), percent-decoded."},
    {"worker_info", worker_info_py, METH_NOARGS,
     "worker_info() -> dict: strategy, worker, interpreter_id, pid, thread_id of the caller."},
    {nullptr, nullptr, 0, nullptr}};

int module_exec(PyObject* module) {
  PyObject* dict = PyModule_GetDict(module);  // borrowed
  if (PyDict_GetItemString(dict, "__builtins__") == nullptr) {
    if (PyDict_SetItemString(dict, "__builtins__", PyEval_GetBuiltins()) < 0) return -1;
  }
  py::Ref result = py::Ref::steal(PyRun_String(kModuleSource, Py_file_input, dict, dict));
  if (!result) return -1;
  if (PyModule_AddStringConstant(module, "__version__", GILGAMESH_VERSION) < 0) return -1;
  return 0;
}

PyModuleDef_Slot kSlots[] = {
    {Py_mod_exec, reinterpret_cast<void*>(module_exec)},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, nullptr}};

PyModuleDef kModule = {
    PyModuleDef_HEAD_INIT,
    "gilgamesh",
    "The gilgamesh handler API: route, Request, Response, HTTPError, worker_info.",
    0,
    kMethods,
    kSlots,
    nullptr,
    nullptr,
    nullptr};

PyObject* init_gilgamesh() { return PyModuleDef_Init(&kModule); }

}  // namespace

void register_gilgamesh_module() { PyImport_AppendInittab("gilgamesh", init_gilgamesh); }

}  // namespace gilgamesh
