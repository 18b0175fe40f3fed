"""Test app: imports a stdlib C extension that uses single-phase init.

Sub-interpreters with their own GIL refuse such modules ("does not support
loading in subinterpreters"); the server must say so at start-up and name a
strategy that works. The first candidate present in this Python is imported.
"""

import importlib
import importlib.util

import gilgamesh

# Single-phase-init extensions of CPython 3.13's stdlib (checked by importing
# each lib-dynload module in an isolated sub-interpreter).
CANDIDATES = ("_curses", "readline", "_tkinter", "_testsinglephase", "xxlimited_35")

for _name in CANDIDATES:
    if importlib.util.find_spec(_name) is not None:
        EXTENSION = importlib.import_module(_name)
        break
else:
    raise ImportError("none of the single-phase extensions %s is installed" % (CANDIDATES,))


@gilgamesh.route("/extension")
def extension(request):
    """Names the single-phase extension this app imported."""
    return {"extension": EXTENSION.__name__}
