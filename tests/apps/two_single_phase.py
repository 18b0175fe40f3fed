"""Test app: imports two single-phase-init C extensions, tests/ext's gil_unaware and
the first single-phase stdlib extension this Python has (see single_phase_ext.py).
Under `subinterpreters` the start-up error must name both, not only the first.
Needs build/test-ext/<build> on --pythonpath."""

import importlib
import importlib.util

import gil_unaware

import gilgamesh

# Single-phase-init extensions of CPython 3.13's stdlib, as in single_phase_ext.py.
CANDIDATES = ("_curses", "readline", "_tkinter", "_testsinglephase", "xxlimited_35")

for _name in CANDIDATES:
    if importlib.util.find_spec(_name) is not None:
        STDLIB_EXTENSION = importlib.import_module(_name)
        break
else:
    raise ImportError("none of the single-phase extensions %s is installed" % (CANDIDATES,))


@gilgamesh.route("/extensions")
def extensions(request):
    """Names the extensions this app imported."""
    return {"extensions": [gil_unaware.__name__, STDLIB_EXTENSION.__name__]}
