"""`gilgamesh` in the processes an app starts outside the server.

The server's own `gilgamesh` module is built into its binary, so a Python the app starts
with sys.executable (multiprocessing's spawn and forkserver start methods, a
ProcessPoolExecutor given their context) could not import a module of the app that does
`import gilgamesh`: its child unpickles a function by importing the function's module
again. The server puts this folder last in sys.path's PYTHONPATH part, where the built-in
module still wins inside the server, and multiprocessing hands sys.path to its children.

Here `route` registers nothing that serves (no server listens in this process), Request,
Response, HTTPError and Headers are the very code the server embeds
(pyworkers/embedding/gilgamesh_api.py, installed beside this file as _api.py), and
worker_info() says that this process is no worker.
"""
import os as _os
import sys as _sys
import threading as _threading
from urllib.parse import parse_qsl as _parse_qsl

__version__ = "outside"


def _parse_query(query_string):
    """What the server's C++ _parse_query gives: (name, value) pairs, blanks kept."""
    return _parse_qsl(query_string, keep_blank_values=True)


def _log(line):
    """The server log there; stderr here."""
    _sys.stderr.write(line + "\n")


def worker_info():
    """The server's fields, for a process that is none of its workers: strategy and worker None."""
    return {"strategy": None, "worker": None, "interpreter_id": 0,
            "pid": _os.getpid(), "thread_id": _threading.get_ident()}


def _api_file():
    here = _os.path.dirname(_os.path.abspath(__file__))
    for path in (_os.path.join(here, "_api.py"),  # installed (share/gilgamesh/outside)
                 _os.path.join(here, _os.pardir, _os.pardir, "embedding", "gilgamesh_api.py")):  # source tree
        if _os.path.isfile(path):
            return path
    raise ImportError("gilgamesh (outside the server): gilgamesh_api.py not found beside %s" % here)


_API = _api_file()
with open(_API, encoding="utf-8") as _f:
    exec(compile(_f.read(), _API, "exec"), globals())
del _f
