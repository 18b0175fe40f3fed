/* A C extension that does not declare Py_mod_gil (single-phase init, like
 * most extensions built before 3.13). Importing it on a free-threaded build
 * turns the GIL back on for the whole process; sub-interpreters refuse it. */
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

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "gil_unaware", "An extension without free-threading support.", -1,
    methods, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_gil_unaware(void) { return PyModule_Create(&module); }
