#include "pyworkers/embedding/py_ref.hpp"

namespace gilgamesh::py {

std::string to_string(PyObject* o) {
  if (!o || !PyUnicode_Check(o)) return {};
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(o, &n);
  if (!s) {  // lone surrogates: bytes that came in escaped go back out as they were,
              // any other surrogate becomes '?'
    PyErr_Clear();
    Ref bytes = Ref::steal(PyUnicode_AsEncodedString(o, "utf-8", "surrogateescape"));
    if (!bytes) {
      PyErr_Clear();
      bytes = Ref::steal(PyUnicode_AsEncodedString(o, "utf-8", "replace"));
    }
    if (!bytes) {
      PyErr_Clear();
      return {};
    }
    return std::string(PyBytes_AS_STRING(bytes.get()),
                       static_cast<std::size_t>(PyBytes_GET_SIZE(bytes.get())));
  }
  return std::string(s, static_cast<std::size_t>(n));
}

std::string fetch_error_summary() {
  Ref exc = Ref::steal(PyErr_GetRaisedException());
  if (!exc) return {};
  std::string out = Py_TYPE(exc.get())->tp_name;
  Ref text = Ref::steal(PyObject_Str(exc.get()));
  if (!text) {
    PyErr_Clear();
    return out;
  }
  std::string message = to_string(text.get());
  if (!message.empty()) out += ": " + message;
  return out;
}

ErrorText fetch_error() {
  Ref exc = Ref::steal(PyErr_GetRaisedException());
  if (!exc) return {};
  PyErr_SetRaisedException(Py_NewRef(exc.get()));
  ErrorText out{fetch_error_summary(), {}};
  Ref traceback = Ref::steal(PyImport_ImportModule("traceback"));
  Ref lines = traceback ? Ref::steal(PyObject_CallMethod(traceback.get(), "format_exception", "O",
                                                         exc.get()))
                        : Ref();
  Ref empty = Ref::steal(PyUnicode_FromString(""));
  Ref joined = lines && empty ? Ref::steal(PyUnicode_Join(empty.get(), lines.get())) : Ref();
  if (joined) {
    out.traceback = to_string(joined.get());
  } else {
    PyErr_Clear();
    out.traceback = out.summary;
  }
  return out;
}

}  // namespace gilgamesh::py
