/* An extension whose import kills the process when it runs in a sub-interpreter,
 * and works in the main interpreter: the shape of an import that crashes CPython
 * (unpatched 3.13.5 and a single-phase extension such as MarkupSafe's speedups, or
 * any extension's own bug), made deterministic so that the suite can prove the
 * start-up probe on every CPython, patched or not. Multi-phase init, declared safe
 * for sub-interpreters, so that CPython lets its exec slot run there; the slot
 * aborts (SIGABRT), as glibc's `free(): invalid pointer` does. */
#include <Python.h>
#include <stdlib.h>

static PyObject* answer(PyObject* self, PyObject* args) {
  (void)self;
  (void)args;
  return PyLong_FromLong(42);
}

static int exec_module(PyObject* module) {
  (void)module;
  if (PyInterpreterState_Get() != PyInterpreterState_Main()) abort();
  return 0;
}

static PyMethodDef methods[] = {
    {"answer", answer, METH_NOARGS, "Return 42."},
    {NULL, NULL, 0, NULL},
};

static PyModuleDef_Slot slots[] = {
    {Py_mod_exec, exec_module},
    {Py_mod_multiple_interpreters, Py_MOD_PER_INTERPRETER_GIL_SUPPORTED},
#ifdef Py_GIL_DISABLED
    {Py_mod_gil, Py_MOD_GIL_NOT_USED},
#endif
    {0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "crash_in_subinterpreter",
    "Kills the process when imported in a sub-interpreter.", 0, methods, slots, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_crash_in_subinterpreter(void) { return PyModuleDef_Init(&module); }
