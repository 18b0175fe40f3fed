"""Test app: imports a wide set of stdlib extension modules, for the start-up stress test.

Sub-interpreters import their app in parallel; CPython 3.13.5 corrupted its heap when
several imported datetime for the first time at once. This app imports every stdlib
extension module that sub-interpreters accept (those that refuse, as single-phase-init
modules do, are skipped and listed), so a crash of that kind shows up in the stress test.
"""

import importlib

import gilgamesh

MODULES = [
    "datetime", "decimal", "zoneinfo", "sqlite3", "ssl", "hashlib", "hmac", "secrets", "uuid",
    "csv", "json", "pickle", "struct", "array", "math", "cmath", "random", "statistics",
    "fractions", "bisect", "heapq", "itertools", "functools", "operator", "collections", "re",
    "unicodedata", "zlib", "bz2", "lzma", "binascii", "base64", "select", "socket", "selectors",
    "asyncio", "xml.etree.ElementTree", "xml.parsers.expat", "mmap", "fcntl", "resource",
    "subprocess", "queue", "contextvars", "codecs", "encodings.idna", "cProfile", "email.utils",
    "http.client", "urllib.request", "ipaddress", "tomllib", "string", "textwrap", "difflib",
    "ctypes", "multiprocessing", "concurrent.futures", "logging", "typing", "dataclasses",
]

imported, refused = [], {}
for name in MODULES:
    try:
        importlib.import_module(name)
        imported.append(name)
    except ImportError as e:  # single-phase-init extensions refuse sub-interpreters
        refused[name] = str(e)


@gilgamesh.route("/modules")
def modules(request):
    """Which modules this worker imported and which it could not."""
    return {"imported": imported, "refused": sorted(refused)}
