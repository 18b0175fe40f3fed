"""A WSGI app whose import starts a thread that never ends, then fails (an app that
starts its poller before it reads a configuration that is not there). The server
must refuse it at once: ending the interpreter would wait for that thread
(tests/blackbox/test_app_threads.py)."""
import threading

_never = threading.Event()
threading.Thread(target=_never.wait, name="poller-of-a-broken-app").start()
raise RuntimeError("broken on purpose, after starting a thread")
