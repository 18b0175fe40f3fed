/* A single-phase-init extension whose init function must never run twice at
 * once, like numpy's: it aborts the process if it is entered again before it
 * has returned, nested or from another thread. It lives in a package,
 * pyinit_reenters_pkg/ (the test writes __init__.py: `from . import
 * pyinit_reenters`), and its init function imports that package, as
 * markupsafe's, simplejson's and numpy's do; it first sleeps 50 ms with the
 * GIL released, so a second thread gets the chance to enter.
 * In one interpreter nothing re-enters: the package is already in
 * sys.modules. CPython 3.13 runs the init function in the main interpreter on
 * a sub-interpreter's first import; unpatched 3.13.5 then re-enters it when
 * the main interpreter imports the package (gh-138045), and runs it on two
 * threads at once when two sub-interpreters import it together. Patched
 * (0003), each sub-interpreter gets an ImportError and the process lives.
 *
 * Build (PY = a prefix's bin/python3.13), into the package directory:
 *   gcc -shared -fPIC $(PY-config --includes) pyinit_reenters.c \
 *       -o pyinit_reenters_pkg/pyinit_reenters$(PY -c 'import sysconfig;print(sysconfig.get_config_var("EXT_SUFFIX"))')
 */
#include <Python.h>
#include <stdio.h>
#include <stdlib.h>

static int running = 0;

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pyinit_reenters_pkg.pyinit_reenters",
    "A single-phase-init extension whose init function is not re-entrant.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_pyinit_reenters(void) {
  if (running) {
    fputs("pyinit_reenters: init function entered again before it returned\n", stderr);
    abort();
  }
  running = 1;
  PyObject* m = NULL;
  PyObject* time = PyImport_ImportModule("time");
  PyObject* slept = time ? PyObject_CallMethod(time, "sleep", "d", 0.05) : NULL;
  Py_XDECREF(time);
  if (slept != NULL) {
    Py_DECREF(slept);
    PyObject* pkg = PyImport_ImportModule("pyinit_reenters_pkg");
    if (pkg != NULL) {
      Py_DECREF(pkg);
      m = PyModule_Create(&module);
    }
  }
  running = 0;
  return m;
}
