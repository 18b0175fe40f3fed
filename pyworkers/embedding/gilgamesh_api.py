"""The pure-Python part of the `gilgamesh` handler API.

The server embeds this file in its C++ `gilgamesh` module (built into the
binary; see gilgamesh_module.cpp) and runs it in the module's namespace in
every interpreter, next to the C functions `_parse_query` and `worker_info`.
loadtest/gilgamesh_standin.py runs the same file outside the server.
Request parses its query and headers lazily, so a handler that never reads
them costs nothing for them.
"""
import json as _json
from collections.abc import Mapping as _Mapping
from http import HTTPStatus as _HTTPStatus


def _reason(status):
    try:
        return _HTTPStatus(status).phrase
    except ValueError:
        return "HTTP %d" % status


class HTTPError(Exception):
    """Raise to answer with `status` and a JSON body {"error": message}."""

    def __init__(self, status, message=None):
        status = int(status)
        if not 400 <= status <= 599:
            raise ValueError("HTTPError status must be 400..599, got %d" % status)
        self.status = status
        self.message = _reason(status) if message is None else str(message)
        super().__init__(status, self.message)

    def __str__(self):
        return "%d: %s" % (self.status, self.message)


class HandlerTimeout(BaseException):
    """Raised by the server inside a handler still running at its deadline (--timeout).

    A BaseException, like KeyboardInterrupt: `except Exception` does not catch it.
    Clean up in `finally` blocks; do not swallow it.
    """


class ProcessExitRefused(RuntimeError):
    """Raised by os._exit(), os.abort() and the os.exec* calls, and by the calls that would
    deliver the server's own process a signal that ends or stops it (os.kill, os.killpg,
    signal.raise_signal, signal.pthread_kill, signal.alarm, signal.setitimer), when a handler
    (or any code of the app) makes them in the server's own process, under a strategy whose
    workers all live in it (subinterpreters, threads, free-threaded): they would end (or
    replace, or stop) the process, and with it every worker's requests and the server. In a
    process the app forked they do what they always do; so they do under `--strategy
    processes`, where a worker may end itself, except os.kill() and os.killpg() aimed at the
    server, the zygote or the process group they share with the workers."""


class Response:
    """A handler result given as it is: body, status, headers, content type."""

    __slots__ = ("body", "status", "headers", "content_type")

    def __init__(self, body=b"", status=200, headers=None, content_type=None):
        self.body = body
        self.status = status
        self.headers = headers
        self.content_type = content_type

    def __repr__(self):
        return "Response(status=%r, content_type=%r)" % (self.status, self.content_type)


class Headers(_Mapping):
    """Read-only, case-insensitive request headers. Repeated fields join with ', '."""

    __slots__ = ("_raw", "_map")

    def __init__(self, raw):
        self._raw = raw
        self._map = None

    def _index(self):
        m = self._map
        if m is None:
            m = {}
            for name, value in self._raw:
                key = name.lower()
                m[key] = m[key] + ", " + value if key in m else value
            self._map = m
        return m

    def __getitem__(self, name):
        return self._index()[name.lower()]

    def __contains__(self, name):
        return isinstance(name, str) and name.lower() in self._index()

    def __iter__(self):
        return iter(self._index())

    def __len__(self):
        return len(self._index())

    def get(self, name, default=None):
        return self._index().get(name.lower(), default)

    def getall(self, name):
        """Every value of a repeated field, in order."""
        key = name.lower()
        return [v for n, v in self._raw if n.lower() == key]

    def raw(self):
        """The (name, value) pairs as received."""
        return list(self._raw)

    def __repr__(self):
        return "Headers(%r)" % (self._raw,)


class Request:
    """One HTTP request, as a handler sees it."""

    __slots__ = ("method", "path", "query_string", "body", "request_id", "path_params",
                 "_raw_headers", "_headers", "_query")

    def __init__(self, method, path, query_string, raw_headers, body, request_id,
                 path_params=None):
        self.method = method
        self.path = path
        self.query_string = query_string
        self._raw_headers = raw_headers
        self.body = body
        self.request_id = request_id
        # What a pattern such as /items/<int:item_id> captured, converted: {"item_id": 3}.
        self.path_params = {} if path_params is None else path_params
        self._headers = None
        self._query = None

    @property
    def headers(self):
        h = self._headers
        if h is None:
            h = self._headers = Headers(self._raw_headers)
        return h

    @property
    def query(self):
        """Query parameters as a dict of str to str; the last of repeated names wins."""
        q = self._query
        if q is None:
            q = self._query = dict(_parse_query(self.query_string))
        return q

    def query_list(self):
        """Query parameters as (name, value) pairs, repeated names kept."""
        return _parse_query(self.query_string)

    def json(self):
        """The body parsed as JSON; a body that is not JSON raises HTTPError(400)."""
        try:
            return _json.loads(self.body)
        except (ValueError, UnicodeDecodeError) as e:
            raise HTTPError(400, "request body is not valid JSON: %s" % e) from None

    def __repr__(self):
        return "<Request %s %s>" % (self.method, self.path)


_routes = []


def _import_app(name):
    """Import the app; return it with the warnings that say an extension turned the GIL on."""
    global _last_import_error
    import importlib
    import warnings
    _hide_stable_abi_extensions()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", RuntimeWarning)
        ours = warnings.filters[0]
        try:
            module = importlib.import_module(name)
        except ImportError as e:
            _last_import_error = (e.name or "", str(e))
            found = _foreign_extension(e) or _native_library_problem(e)
            if found is None:
                raise
            raise ImportError("%s; %s" % (e, found), name=e.name, path=e.path) from e
        added = warnings.filters[:warnings.filters.index(ours)] if ours in warnings.filters else []
    # Filters the app set while it was imported outlive the block that recorded its warnings.
    for action, message, category, module_re, lineno in reversed(added):
        warnings.filterwarnings(action, message.pattern if message else "", category,
                                module_re.pattern if module_re else "", lineno)
    gil_warnings = []
    for w in caught:
        text = str(w.message)
        if "GIL" in text and "enabled" in text:
            gil_warnings.append(text)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return module, gil_warnings


def _hide_stable_abi_extensions():
    """Free-threaded 3.13 only: stops the path finder from loading `.abi3.so` extensions.

    The stable ABI (abi3) is the default (GIL) build's; 3.13t has none, yet it still lists
    `.abi3.so` among its extension suffixes, and loading such an extension crashes the
    process (psutil's and cryptography's did, SIGSEGV). Hidden, they are not found, as
    `cpython-313` extensions are not: the import fails cleanly, a package with a
    pure-Python fallback uses it, and _foreign_extension says why."""
    import importlib.machinery as machinery
    import sys
    import sysconfig
    if not sysconfig.get_config_var("Py_GIL_DISABLED") or ".abi3.so" not in machinery.EXTENSION_SUFFIXES:
        return
    if any(getattr(h, "_gilgamesh_no_abi3", False) for h in sys.path_hooks):
        return
    extensions = [s for s in machinery.EXTENSION_SUFFIXES if s != ".abi3.so"]
    hook = machinery.FileFinder.path_hook(
        (machinery.ExtensionFileLoader, extensions),
        (machinery.SourceFileLoader, machinery.SOURCE_SUFFIXES),
        (machinery.SourcelessFileLoader, machinery.BYTECODE_SUFFIXES))
    hook._gilgamesh_no_abi3 = True
    sys.path_hooks[:] = [hook if getattr(h, "__name__", "") == "path_hook_for_FileFinder" else h
                         for h in sys.path_hooks]
    sys.path_importer_cache.clear()


# (module name, message) of the last ImportError that ended _import_app: read by the
# start-up probe (probe.cpp), which names every module that broke the app's import.
_last_import_error = None


def _native_library_problem(error):
    """If an extension failed to load for want of a native library or of a newer glibc
    (Debian trixie's builds need glibc 2.38; bookworm has 2.36), a sentence that says so."""
    import os
    import re
    text = str(error)
    m = re.search(r"version `GLIBC_([0-9.]+)' not found \(required by ([^)]+)\)", text)
    if m:
        try:
            here = os.confstr("CS_GNU_LIBC_VERSION") or "an older glibc"
        except (ValueError, OSError):
            here = "an older glibc"
        who = "%s (%s)" % (error.name, m.group(2)) if error.name else m.group(2)
        return ("the extension %s was built against glibc %s, and this system has %s: it "
                "loads only on a system with glibc %s or newer (e.g. Debian trixie, or the "
                "gilgamesh container image), or install a build of that package made for this "
                "system" % (who, m.group(1), here, m.group(1)))
    m = re.search(r"([^\s:]+\.so[0-9.]*): cannot open shared object file", text)
    if m:
        return ("the shared library %s that it needs is not installed on this system"
                % m.group(1))
    return None


def _trace_imports(fd):
    """Start-up probe only (probe.cpp): writes one line to file descriptor `fd` as each
    import begins, "begin NAME\tIMPORTER IMPORTER ...", the innermost importer first, and
    "failed NAME\tIMPORTERS" once the import of a C extension is seen to have ended without
    its module (at the next import's beginning), so that the server can name the import
    that was under way, and the extension whose import had failed, if this process dies."""
    import importlib.machinery
    import os
    import sys
    open_imports = {}  # name -> its importers, for the imports begun and not seen to end

    def is_extension(name):
        parent = name.rpartition(".")[0]
        path = getattr(sys.modules.get(parent), "__path__", None) if parent else None
        try:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
        except Exception:
            return False
        return spec is not None and isinstance(spec.loader, importlib.machinery.ExtensionFileLoader)

    def write(kind, name, chain):
        os.write(fd, ("%s %s\t%s\n" % (kind, name, " ".join(chain))).encode("utf-8", "replace"))

    class _ImportTracer:
        @staticmethod
        def find_spec(name, path=None, target=None):
            chain = []
            frame = sys._getframe(1)
            while frame is not None:
                code = frame.f_code
                if code.co_name == "_find_and_load" and code.co_filename.startswith("<frozen"):
                    outer = frame.f_locals.get("name")
                    if isinstance(outer, str) and outer != name and outer not in chain:
                        chain.append(outer)
                frame = frame.f_back
            for done in [n for n in open_imports if n not in chain and n != name]:
                if done not in sys.modules and is_extension(done):
                    write("failed", done, open_imports[done])
                del open_imports[done]
            open_imports[name] = chain
            _importers.setdefault(name, chain[0] if chain else "")
            write("begin", name, chain)
            return None

    sys.meta_path.insert(0, _ImportTracer)


# Start-up probe only: the module that first imported each module (_trace_imports).
_importers = {}


def _extension_modules():
    """Start-up probe only: the C extension modules loaded in this interpreter, each with
    its file and the module that imported it, and sys.path, as JSON."""
    import importlib.machinery
    import sys
    suffixes = tuple(importlib.machinery.EXTENSION_SUFFIXES)
    found = []
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if isinstance(origin, str) and origin.endswith(suffixes):
            found.append([name, origin, _importers.get(name, "")])
    return _json.dumps({"extensions": sorted(found), "path": list(sys.path)})


def _refused_extensions(loaded):
    """Start-up probe only, in an isolated sub-interpreter, after the main interpreter of
    this process imported the app: which of its extensions (JSON from _extension_modules)
    this interpreter refuses and the app cannot do without, as a JSON list of [name,
    CPython's reason]. Only the module objects are created (no package __init__ runs): a
    single-phase extension that the main interpreter has loaded is refused without its
    PyInit running again. A refused extension whose importer still imports here (MarkupSafe
    falls back to pure Python without its speedups) is left out."""
    import importlib
    import importlib.util
    import sys
    loaded = _json.loads(loaded)
    sys.path[:] = loaded["path"]
    refused = {}
    for name, origin, importer in loaded["extensions"]:
        try:
            spec = importlib.util.spec_from_file_location(name, origin)
            if spec is not None:
                importlib.util.module_from_spec(spec)
        except ImportError as e:
            refused[name] = (str(e), importer)
        except Exception:
            pass
    blocking = []
    for name, (reason, importer) in sorted(refused.items()):
        if importer and importer not in refused:
            try:
                importlib.import_module(importer)
                continue  # its importer does without it
            except BaseException:
                pass
        blocking.append([name, reason])
    return _json.dumps(blocking)


def _module_files():
    """Start-up probe only: the files of every module imported here (JSON list), whose
    modification times key the probe's cache, and of every module whose import began and
    failed (it is not in sys.modules): an app refused for an import, edited in place to drop
    it, must be probed again, not refused from the cache."""
    import importlib.util
    import os
    import sys
    files = set()
    for module in list(sys.modules.values()):
        origin = getattr(module, "__file__", None)
        if isinstance(origin, str):
            files.add(origin)
    for name in list(_importers):
        if name in sys.modules:
            continue
        try:
            spec = importlib.util.find_spec(name)
        except BaseException:  # its parent's import fails again, or anything else: no file
            continue
        origin = getattr(spec, "origin", None)
        if isinstance(origin, str) and os.path.isabs(origin):
            files.add(origin)
    return _json.dumps(sorted(files))


def _app_modules(before):
    """Start-up probe only: the modules imported since `before` (a set of names) whose
    files are the user's own: not the standard library, not site- or dist-packages."""
    import sys
    import sysconfig
    skip = tuple(p for p in {sysconfig.get_paths().get(k) for k in ("stdlib", "platstdlib",
                                                                   "purelib", "platlib")} if p)
    out = []
    for name, module in list(sys.modules.items()):
        origin = getattr(module, "__file__", None)
        if name in before or not isinstance(origin, str) or origin.startswith(skip):
            continue
        if "site-packages" in origin or "dist-packages" in origin:
            continue
        out.append(module)
    return out


def _globals_snapshot(modules):
    """Start-up probe only: what each module-level name of `modules` is bound to, and the
    size of mutable containers, to see which a request changes (state that `threads` and
    `free-threaded` workers would share)."""
    import itertools
    snapshot = {}
    for module in modules:
        for key, value in list(vars(module).items()):
            if key.startswith("__"):
                continue
            content = None
            if isinstance(value, dict):  # what it holds, by identity (an int += 1 is a new object)
                content = (len(value), hash(tuple(id(v) for v in itertools.islice(
                    itertools.chain.from_iterable(value.items()), 2000))))
            elif isinstance(value, (list, set, bytearray)):
                content = (len(value), hash(tuple(id(v) for v in itertools.islice(value, 1000)))
                           if not isinstance(value, bytearray) else bytes(value[:1000]))
            snapshot["%s.%s" % (module.__name__, key)] = (id(value), content)
    return snapshot


def _changed_globals(modules, before):
    after = _globals_snapshot(modules)
    return sorted(k for k, v in after.items() if before.get(k) != v)


def _foreign_extension(error):
    """If the module an ImportError names exists only as an extension built for
    another Python (say Debian's 3.11 packages on the path), a sentence that says so."""
    import importlib.machinery
    import os
    import re
    import sys
    import sysconfig
    if not error.name:
        return None
    names = [error.name]
    if getattr(error, "name_from", None):  # from package import name (3.12+)
        names.insert(0, "%s.%s" % (error.name, error.name_from))
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    for full in names:
        parent, _, leaf = full.rpartition(".")
        if parent:
            # A package whose import failed has left sys.modules: look where it would be.
            dirs = list(getattr(sys.modules.get(parent), "__path__", None) or
                        [os.path.join(p or ".", *parent.split(".")) for p in sys.path])
        else:
            dirs = sys.path
        for folder in dirs:
            try:
                entries = sorted(os.listdir(folder or "."))
            except OSError:
                continue
            for entry in entries:
                if not (entry.startswith(leaf + ".") and entry.endswith(".so")):
                    continue
                suffix = entry[len(leaf):]
                free_threaded = sysconfig.get_config_var("Py_GIL_DISABLED")
                if suffix in suffixes and not (free_threaded and suffix == ".abi3.so"):
                    continue
                tag = suffix[1:-3]
                m = re.match(r"cpython-(\d)(\d+)(t?)-", tag)
                if tag == "abi3":
                    built_for = ("the stable ABI (abi3) of CPython's default (GIL) build, which the "
                                 "free-threaded build does not have")
                elif m:
                    built_for = "CPython %s.%s%s" % (m.group(1), m.group(2),
                                                     " (free-threaded)" if m.group(3) else "")
                else:
                    built_for = "another Python (%s)" % tag
                here = "%d.%d" % sys.version_info[:2]
                build = "free-threaded" if sysconfig.get_config_var("Py_GIL_DISABLED") else "default"
                return ("%s is an extension built for %s, but gilgamesh embeds Python %s (%s build), "
                        "which cannot load it: install that package for Python %s (e.g. with pip "
                        "in a venv made by that Python) and pass its site-packages with --pythonpath"
                        % (os.path.join(folder, entry), built_for,
                           "%d.%d.%d" % sys.version_info[:3], build, here))
    return None


def _refuse_process_exit():
    """Called by the server in each interpreter of an in-process strategy before the app is
    imported: from now on, in this process, the calls that would end it, stop it or start
    its shutdown raise ProcessExitRefused: os._exit() and os.abort(); os.execv() and
    os.execve() (which would replace it; every os.exec* goes through one of them); and a
    signal whose action here is to end, stop or restart the process (SIGKILL, SIGTERM,
    SIGINT, SIGHUP, SIGSTOP, SIGUSR1 with no handler...), sent to this process by os.kill() (its pid, 0 or
    -1, or its process group), os.killpg(), signal.raise_signal() or signal.pthread_kill(),
    or set to come by signal.alarm() and signal.setitimer(). The request that called them
    gets the generic 500, its traceback logged, and every other request goes on. Signal 0,
    signals ignored or handled (a Python handler, SIG_IGN) and those whose default is to be
    ignored (SIGCHLD, SIGCONT, SIGURG, SIGWINCH) still go; so does every call aimed at
    another process. A child the app forks (os.fork, multiprocessing) is another process:
    there they all do what they always do. Code that saved posix._exit (or os.kill) before
    the app was imported is not covered."""
    import os
    _guard_server(os.getpid(), in_process=True)


def _refuse_signals_to_server():
    """Called by the server under `--strategy processes`, in the zygote before the app is
    imported (the worker processes it forks inherit it): os.kill() and os.killpg() raise
    ProcessExitRefused when they would deliver a signal that ends or stops a process
    (anything but 0, SIGCHLD, SIGCONT, SIGURG, SIGWINCH) to the server (the zygote's parent)
    or the zygote, by pid, or to the process group the workers share with them (0, -1, or
    the group). A worker may still end itself (os._exit, os.kill(os.getpid(), ...)): the
    server answers its requests 502 and starts another."""
    import os
    _guard_server(os.getppid(), in_process=False)


def _guard_server(server_pid, in_process):
    """The guards of _refuse_process_exit (in_process: this process is the server) and of
    _refuse_signals_to_server (this process is the zygote, `server_pid` its parent)."""
    import os
    import signal
    if getattr(os.kill, "_gilgamesh_guard", False):
        return
    here = os.getpid()
    servers = {server_pid, here}
    harmless = {0} | {getattr(signal, name) for name in ("SIGCHLD", "SIGCONT", "SIGURG", "SIGWINCH")
                      if hasattr(signal, name)}
    stops = {getattr(signal, name) for name in ("SIGSTOP", "SIGTSTP", "SIGTTIN", "SIGTTOU")
             if hasattr(signal, name)}
    why = ("its workers share this process (--strategy processes gives each its own)" if in_process else
           "it reaches the server's process, not only this worker's (a worker may end itself)")

    def signal_verb(sig):
        """What `sig` delivered to the server would do to it ("end", "stop"), or None: nothing
        that touches the other requests (or not a signal: the real call then says so).
        In-process, what this process does with it decides; elsewhere its default action
        (the server's own SIGTERM and SIGINT start its shutdown)."""
        try:
            sig = int(sig)
            if sig in harmless:
                return None
            handler = signal.getsignal(sig) if in_process else signal.SIG_DFL
        except (TypeError, ValueError, OverflowError, OSError):
            return None
        if handler == signal.SIG_IGN or (callable(handler) and handler is not signal.default_int_handler):
            return None
        if in_process and sig == getattr(signal, "SIGHUP", None):
            return "restart"  # the server's own SIGHUP restarts it in place
        return "stop" if sig in stops else "end"

    def signal_name(sig):
        try:
            return signal.Signals(sig).name
        except (TypeError, ValueError):
            return repr(sig)

    def sent(text, sig):
        """The refusal of a call that delivers `sig` to the server, or None."""
        verb = signal_verb(sig)
        return (verb, text) if verb else None

    def positive(seconds):
        try:
            return float(seconds) > 0
        except (TypeError, ValueError):
            return False

    def own_group(pgid):
        return pgid == 0 or pgid == os.getpgrp()

    def reaches_server(pid):
        """Whether os.kill(pid, ...) reaches the server: its pid (or the zygote's), 0 (this
        process's group), -1 (every process it may signal), or minus its group."""
        try:
            pid = int(pid)
        except (TypeError, ValueError, OverflowError):
            return False
        return pid in servers or pid in (0, -1) or (pid < -1 and own_group(-pid))

    def guarded(real, refusal):
        """`real`, refused where refusal(*args, **kwargs) gives a verb and the call as text
        (in-process: in the server's process only; a child it forks is another); the
        arguments go to `real` untouched (a bad one: its own error)."""
        def call(*args, **kwargs):
            if not in_process or os.getpid() == here:
                found = refusal(*args, **kwargs)
                if found:
                    verb, text = found
                    raise ProcessExitRefused("%s would %s the whole server: %s" % (text, verb, why))
            return real(*args, **kwargs)
        call.__name__ = call.__qualname__ = real.__name__
        call.__doc__, call.__module__, call._gilgamesh_guard = real.__doc__, real.__module__, True
        return call

    os.kill = guarded(os.kill, lambda pid=None, sig=None, *_, **__: reaches_server(pid) and sent(
        "os.kill(%r, %s)" % (pid, signal_name(sig)), sig))
    if hasattr(os, "killpg"):
        os.killpg = guarded(os.killpg, lambda pgid=None, sig=None, *_, **__: own_group(pgid) and sent(
            "os.killpg(%r, %s)" % (pgid, signal_name(sig)), sig))
    if not in_process:  # what ends only this worker is its own business
        return
    os._exit = guarded(os._exit, lambda *a, **_: ("end", "os._exit(%s)" % ", ".join(map(repr, a))))
    os.abort = guarded(os.abort, lambda *a, **_: ("end", "os.abort()"))
    for name in ("execv", "execve"):  # os.execl, execlp, execvp... call one of these
        setattr(os, name, guarded(getattr(os, name), lambda *a, name=name, **_:
                                  ("replace", "os.%s(%r, ...)" % (name, a[0] if a else None))))
    signal.raise_signal = guarded(signal.raise_signal, lambda sig=None, *_, **__: sent(
        "signal.raise_signal(%s)" % signal_name(sig), sig))
    if hasattr(signal, "pthread_kill"):  # to any thread of this process: the action is the process's
        signal.pthread_kill = guarded(signal.pthread_kill, lambda tid=None, sig=None, *_, **__: sent(
            "signal.pthread_kill(%r, %s)" % (tid, signal_name(sig)), sig))
    if hasattr(signal, "alarm"):
        signal.alarm = guarded(signal.alarm, lambda seconds=0, *_, **__: positive(seconds) and sent(
            "signal.alarm(%r) (SIGALRM)" % seconds, signal.SIGALRM))
    if hasattr(signal, "setitimer"):
        timers = {getattr(signal, timer): (timer, getattr(signal, sig)) for timer, sig in (
            ("ITIMER_REAL", "SIGALRM"), ("ITIMER_VIRTUAL", "SIGVTALRM"), ("ITIMER_PROF", "SIGPROF"))}
        signal.setitimer = guarded(signal.setitimer, lambda which=None, seconds=0, *_, **__: (
            which in timers and positive(seconds) and sent("signal.setitimer(%s, %r) (%s)" % (
                timers[which][0], seconds, signal_name(timers[which][1])), timers[which][1])))


def _adopt_server_thread():
    """On a thread of the server's own (a lane, an event loop), as it starts.

    Python sees such a thread as a `_DummyThread`, which is a daemon in the main
    interpreter, and `threading.Thread` takes its default `daemon` from the
    thread that makes it: every thread an app started from a handler would be a
    daemon, cut off at exit. A program's main thread, and every thread of
    gunicorn's workers, makes non-daemon threads; so does this one now, and the
    server waits for them at shutdown as Python's own exit does (bounded by
    --graceful-timeout).
    """
    import threading
    here = threading.current_thread()
    if here.daemon and isinstance(here, threading._DummyThread):
        here._daemonic = False  # `daemon = False` is refused on a started thread


def _app_threads():
    """The names of the threads Python's exit would wait for: non-daemon threads
    the app started (with `threading`), not this one nor the interpreter's main."""
    import sys
    threading = sys.modules.get("threading")
    if threading is None:
        return []
    # Not current_thread(): on a thread Python did not start it would make a
    # _DummyThread, whose clean-up lives in the thread state the caller borrowed
    # (an interpreter's first one, used from the thread that ends it) and runs at
    # the interpreter's end, after its modules: "Exception ignored in
    # _DeleteDummyThreadOnDel.__del__".
    here, main = threading.get_ident(), threading.main_thread()
    return [t.name for t in threading.enumerate()
            if t.ident != here and t is not main and not isinstance(t, threading._DummyThread)
            and not t.daemon and t.is_alive()]


def _shutdown_threads():
    """What Python's exit does first, on a helper thread of the server's, before an
    interpreter is ended or finalized: threading's atexit calls (concurrent.futures'
    executors shut down), then a join of every non-daemon thread.

    Then those calls are forgotten, as they have run: Py_EndInterpreter and
    Py_FinalizeEx call threading._shutdown() again, on the thread that ends the
    interpreter, which Python did not start. There concurrent.futures' join
    called current_thread(), which made a _DummyThread whose clean-up ran after the
    interpreter's modules were gone: "Exception ignored in
    _DeleteDummyThreadOnDel.__del__" at every sub-interpreter's end that had served
    Django's sync views (asgiref's executor)."""
    import sys
    threading = sys.modules.get("threading")
    if threading is None:
        return
    # The atexit calls first, one by one: threading._shutdown() would stop at the first
    # that raises and join no thread at all (Python's exit reports it and waits no more).
    # Here the others still run and the threads are still waited for; the first error is
    # raised after that, for the server to log.
    atexits = getattr(threading, "_threading_atexits", None)
    errors = []
    while isinstance(atexits, list) and atexits:
        call = atexits.pop()  # newest first, as threading._shutdown() does
        try:
            call()
        except Exception as e:
            errors.append(e)
    threading._shutdown()
    if isinstance(atexits, list):
        atexits.clear()
    if errors:
        import traceback
        e = errors[0]
        where = traceback.extract_tb(e.__traceback__)[-1]  # the app's code, not threading's lambda
        raise RuntimeError("a threading atexit call raised %s: %s (%s:%s in %s); the app's threads "
                           "were waited for all the same" % (type(e).__name__, e, where.filename,
                                                             where.lineno, where.name)) from e


def route(path, methods=("GET",)):
    """Register `handler(request)` for `path` and `methods`."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError("route path must be a str starting with '/', got %r" % (path,))
    if isinstance(methods, str):
        methods = (methods,)
    methods = tuple(m.upper() for m in methods)
    if not methods or not all(m.isalpha() for m in methods):
        raise ValueError("route methods must be HTTP method names, got %r" % (methods,))

    def decorator(handler):
        doc = (handler.__doc__ or "").strip().splitlines()
        # An `async def` handler (CO_COROUTINE) runs on the worker's event loop.
        is_async = bool(getattr(getattr(handler, "__code__", None), "co_flags", 0) & 0x80)
        _routes.append((path, methods, handler, doc[0].strip() if doc else "", is_async))
        return handler

    return decorator
