// RAII for CPython references and thread states. Every type here is used with
// the GIL of the interpreter that owns the object held (or attached, on a
// free-threaded build); none of them may cross interpreters.
#pragma once

#include <Python.h>

#include <string>
#include <utility>

namespace gilgamesh::py {

// An owning (strong) reference. Precondition for every member that touches the
// object: the owning interpreter's GIL is held by the calling thread.
class Ref {
 public:
  Ref() = default;
  static Ref steal(PyObject* o) { return Ref(o); }
  static Ref borrow(PyObject* o) {
    Py_XINCREF(o);
    return Ref(o);
  }
  Ref(const Ref&) = delete;
  Ref& operator=(const Ref&) = delete;
  Ref(Ref&& other) noexcept : obj_(std::exchange(other.obj_, nullptr)) {}
  Ref& operator=(Ref&& other) noexcept {
    if (this != &other) {
      Py_XDECREF(obj_);
      obj_ = std::exchange(other.obj_, nullptr);
    }
    return *this;
  }
  ~Ref() { Py_XDECREF(obj_); }

  PyObject* get() const { return obj_; }
  PyObject* release() { return std::exchange(obj_, nullptr); }
  explicit operator bool() const { return obj_ != nullptr; }
  void reset() { Py_CLEAR(obj_); }

 private:
  explicit Ref(PyObject* o) : obj_(o) {}
  PyObject* obj_ = nullptr;
};

// Attaches a thread state that this OS thread owns for the scope, and
// detaches it (releasing the GIL, or letting stop-the-world GC proceed on a
// free-threaded build) at the end. Precondition: no thread state is current.
class AttachedScope {
 public:
  explicit AttachedScope(PyThreadState* ts) : ts_(ts) { PyEval_RestoreThread(ts_); }
  AttachedScope(const AttachedScope&) = delete;
  AttachedScope& operator=(const AttachedScope&) = delete;
  ~AttachedScope() { PyEval_SaveThread(); }

 private:
  PyThreadState* ts_;
};

// The pending Python exception as "Type: message", clearing it. With the GIL.
std::string fetch_error_summary();

struct ErrorText {
  std::string summary;    // "Type: message"
  std::string traceback;  // formatted, as Python prints it
};
// The pending exception's summary and traceback, clearing it. With the GIL.
ErrorText fetch_error();
// UTF-8 of a str object, or "" if it is not one. Lone surrogates: those that
// surrogateescape made of bytes become those bytes again, others "?". With the GIL.
std::string to_string(PyObject* o);

}  // namespace gilgamesh::py
