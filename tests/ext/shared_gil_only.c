/* A multi-phase-init C extension that supports sub-interpreters only while they
 * share the main GIL: it declares Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED, not
 * Py_MOD_PER_INTERPRETER_GIL_SUPPORTED, as Cython's builds (lxml, uvloop,
 * multidict, falcon) leave it. Own-GIL sub-interpreters refuse it with the same
 * ImportError as a single-phase one; the start-up probe must tell the two apart.
 * It declares free-threading support, so the free-threaded build keeps its GIL off. */
#include <Python.h>

static PyObject* answer(PyObject* self, PyObject* args) {
  (void)self;
  (void)args;
  return PyLong_FromLong(42);
}

static PyMethodDef methods[] = {
    {"answer", answer, METH_NOARGS, "Return 42."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_multiple_interpreters, Py_MOD_MULTIPLE_INTERPRETERS_SUPPORTED},
#ifdef Py_mod_gil
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "shared_gil_only", "An extension for sub-interpreters that share the GIL.", 0,
    methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_shared_gil_only(void) { return PyModuleDef_Init(&module); }
