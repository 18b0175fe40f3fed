/* A single-phase-init extension whose PyInit raises (sets an exception and
 * returns NULL), as zstandard's does when it finds itself in a
 * sub-interpreter. CPython 3.13 runs that PyInit in the main interpreter
 * when a sub-interpreter imports it first; unpatched 3.13.5 then hands the
 * main interpreter's exception object to the sub-interpreter, which frees it
 * with its own allocator and aborts (gh-144601). Patched, the sub-interpreter
 * gets a clean ImportError naming the original exception.
 *
 * Build (PY = a prefix's bin/python3.13):
 *   gcc -shared -fPIC $(PY-config --includes) pyinit_raises.c \
 *       -o pyinit_raises$(PY -c 'import sysconfig;print(sysconfig.get_config_var("EXT_SUFFIX"))')
 */
#include <Python.h>

PyMODINIT_FUNC PyInit_pyinit_raises(void) {
  PyErr_SetString(PyExc_RuntimeError, "pyinit_raises always fails to initialize");
  return NULL;
}
