"""A WSGI app that starts threads of its own, as apps do (a background job, a
late write, a poller that never ends). Python's exit waits for non-daemon
threads; the server must too, bounded by --graceful-timeout
(tests/blackbox/test_app_threads.py).

With APP_THREADS_AT_IMPORT=1 its import starts a thread that never ends.

Routes:
  /late?secs=S&path=P  starts a thread that sleeps S seconds, then writes "done" to P;
                       with &atexit=raise it also registers a threading atexit call that
                       raises (as concurrent.futures registers its executors' shutdown)
  /forever             starts a thread that never ends
  /daemon              what a thread made here would be: {"here": ..., "new": ...} daemon flags
  /hello               "hello"
"""
import json
import os
import threading
import time
from urllib.parse import parse_qs

_never = threading.Event()

if os.environ.get("APP_THREADS_AT_IMPORT"):  # a poller started by the import, that never ends
    threading.Thread(target=_never.wait, name="started-at-import").start()


def _late(secs, path):
    time.sleep(secs)
    with open(path, "w") as f:
        f.write("done")


def _atexit_that_raises():
    raise ValueError("the app's atexit call failed")


def app(environ, start_response):
    path = environ["PATH_INFO"]
    query = {k: v[0] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    if path == "/late":
        threading.Thread(target=_late, args=(float(query["secs"]), query["path"]),
                         name="late-writer").start()
        if query.get("atexit") == "raise":
            threading._register_atexit(_atexit_that_raises)
        body = b"started"
    elif path == "/forever":
        threading.Thread(target=_never.wait, name="never-ends").start()
        body = b"started"
    elif path == "/daemon":
        made = threading.Thread(target=lambda: None)
        body = json.dumps({"here": threading.current_thread().daemon, "new": made.daemon}).encode()
    else:
        body = b"hello"
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]
