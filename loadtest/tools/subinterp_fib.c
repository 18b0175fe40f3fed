// Is fib(25) slower in an own-GIL sub-interpreter than in the main interpreter,
// outside gilgamesh? Runs the same Python code (fib(25), timed in Python with
// time.perf_counter) in: the main interpreter; a sub-interpreter with its own GIL
// and obmalloc (what --strategy subinterpreters makes); a legacy sub-interpreter
// sharing the main GIL and obmalloc. Each on this one thread, interleaved, best
// of several rounds.
//   P=~/.cache/gilgamesh/python-3.13.5/default
//   cc -O2 loadtest/tools/subinterp_fib.c $($P/bin/python3.13-config --includes) -L$P/lib -lpython3.13 \
//      -Wl,-rpath,$P/lib -o /tmp/subinterp_fib && /tmp/subinterp_fib 5
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdio.h>

static const char* kCode =
    "import time\n"
    "def fib(n):\n"
    "    return n if n < 2 else fib(n - 1) + fib(n - 2)\n"
    "def bench(rounds=5, calls=20):\n"
    "    best = 1e9\n"
    "    for _ in range(rounds):\n"
    "        t = time.perf_counter()\n"
    "        for _ in range(calls): fib(25)\n"
    "        best = min(best, (time.perf_counter() - t) / calls)\n"
    "    return best\n"
    "fib(20)\n";

static double run_bench(PyObject* globals) {
  PyObject* r = PyRun_String("bench()", Py_eval_input, globals, globals);
  if (!r) { PyErr_Print(); return -1; }
  double v = PyFloat_AsDouble(r);
  Py_DECREF(r);
  return v;
}

static PyObject* setup(void) {
  PyObject* main = PyImport_AddModule("__main__");
  PyObject* globals = PyModule_GetDict(main);
  PyObject* r = PyRun_String(kCode, Py_file_input, globals, globals);
  if (!r) { PyErr_Print(); exit(1); }
  Py_DECREF(r);
  return globals;
}

int main(int argc, char** argv) {
  int rounds = argc > 1 ? atoi(argv[1]) : 3;
  Py_Initialize();
  PyThreadState* main_ts = PyThreadState_Get();
  PyObject* main_globals = setup();

  PyInterpreterConfig own = _PyInterpreterConfig_INIT;  // own GIL, own obmalloc
  PyThreadState* own_ts = NULL;
  if (PyStatus_Exception(Py_NewInterpreterFromConfig(&own_ts, &own))) return 1;
  PyObject* own_globals = setup();

  PyThreadState_Swap(main_ts);
  PyInterpreterConfig legacy = _PyInterpreterConfig_LEGACY_INIT;  // shared GIL and obmalloc
  PyThreadState* legacy_ts = NULL;
  if (PyStatus_Exception(Py_NewInterpreterFromConfig(&legacy_ts, &legacy))) return 1;
  PyObject* legacy_globals = setup();

  for (int i = 0; i < rounds; ++i) {
    PyThreadState_Swap(main_ts);
    double m = run_bench(main_globals);
    PyThreadState_Swap(legacy_ts);
    double l = run_bench(legacy_globals);
    PyThreadState_Swap(NULL);
    PyEval_RestoreThread(own_ts);
    double o = run_bench(own_globals);
    PyEval_SaveThread();
    PyEval_RestoreThread(main_ts);
    printf("round %d: fib(25) main %.2f ms, legacy sub-interpreter %.2f ms, own-GIL sub-interpreter %.2f ms"
           " (own/main %.3f)\n", i, m * 1e3, l * 1e3, o * 1e3, o / m);
    fflush(stdout);
  }
  return 0;
}
