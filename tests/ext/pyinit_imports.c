/* A single-phase-init extension whose PyInit imports a Python module, as
 * markupsafe's _speedups, simplejson's _speedups and charset_normalizer's
 * compiled modules do. CPython 3.13 runs a single-phase PyInit in the main
 * interpreter when a sub-interpreter imports it first (gh-117953); unpatched
 * 3.13.5 then crashes the process if that PyInit imports anything
 * (gh-138045). Patched, an isolated sub-interpreter gets an ImportError and
 * the main interpreter can still import the module.
 *
 * Build (PY = a prefix's bin/python3.13):
 *   gcc -shared -fPIC $(PY-config --includes) pyinit_imports.c \
 *       -o pyinit_imports$(PY -c 'import sysconfig;print(sysconfig.get_config_var("EXT_SUFFIX"))')
 */
#include <Python.h>

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "pyinit_imports",
    "A single-phase-init extension whose PyInit imports json.", -1,
    NULL, NULL, NULL, NULL, NULL,
};

PyMODINIT_FUNC PyInit_pyinit_imports(void) {
  PyObject* json = PyImport_ImportModule("json");
  if (json == NULL) {
    return NULL;
  }
  PyObject* dumps = PyObject_GetAttrString(json, "dumps");
  Py_DECREF(json);
  if (dumps == NULL) {
    return NULL;
  }
  PyObject* m = PyModule_Create(&module);
  if (m == NULL || PyModule_Add(m, "dumps", dumps) < 0) {
    Py_XDECREF(m);
    return NULL;
  }
  return m;
}
