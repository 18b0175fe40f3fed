"""Test app: a WSGI app that answers with wsgi.file_wrapper, as Django's FileResponse and
Flask's send_file do, over a real file (which the server reads itself under the in-process
strategies) or over what is not one.

Routes (by PATH_INFO; files are named in $GILGAMESH_TEST_FILES, a directory):
  /file?name=N&skip=K&length=L  the file N from byte K (seek), through wsgi.file_wrapper;
                                with length, a Content-Length of L ("rest": what is left)
  /pipe?size=N                  N bytes of a pattern through a pipe (not a regular file)
  /text?name=N                  the file N opened in text mode: its reads give str, which
                                WSGI does not allow (a 500 on every strategy)
  /hello                        b"hello"
Every file object's close() leaves a marker closed-<name> in $GILGAMESH_TEST_MARKERS.
"""

import io
import os
import threading
from urllib.parse import parse_qs

FILES = os.environ.get("GILGAMESH_TEST_FILES", "")
MARKERS = os.environ.get("GILGAMESH_TEST_MARKERS", "")


class MarkedFile(io.BufferedReader):
    """A binary file that leaves a marker when it is closed."""

    def __init__(self, path, marker):
        super().__init__(io.FileIO(path, "rb"))
        self.marker = marker

    def close(self):
        if not self.closed and MARKERS:
            with open(os.path.join(MARKERS, self.marker), "w") as f:
                f.write("%d\n" % os.getpid())
        super().close()


def _feed(fd, data):
    try:
        with os.fdopen(fd, "wb") as w:
            w.write(data)
    except BrokenPipeError:  # the reader's end was closed first
        pass


def app(environ, start_response):
    q = {k: v[-1] for k, v in parse_qs(environ.get("QUERY_STRING", "")).items()}
    path = environ["PATH_INFO"]
    if path == "/file":
        name = q["name"]
        f = MarkedFile(os.path.join(FILES, name), "closed-" + q.get("token", name))
        skip = int(q.get("skip", "0"))
        if skip:
            f.read(skip)  # buffered past it: tell() says where the file's reader stands
        headers = [("Content-Type", "application/octet-stream")]
        if "length" in q:
            rest = os.fstat(f.fileno()).st_size - skip
            headers.append(("Content-Length", str(rest if q["length"] == "rest" else int(q["length"]))))
        start_response("200 OK", headers)
        return environ["wsgi.file_wrapper"](f, 8192)
    if path == "/pipe":
        data = bytes(range(256)) * (int(q["size"]) // 256)
        r, w = os.pipe()
        threading.Thread(target=_feed, args=(w, data)).start()  # not a daemon: sub-interpreters allow none
        start_response("200 OK", [("Content-Type", "application/octet-stream")])
        return environ["wsgi.file_wrapper"](os.fdopen(r, "rb"), 8192)
    if path == "/text":
        f = open(os.path.join(FILES, q["name"]), encoding="utf-8")
        start_response("200 OK", [("Content-Type", "text/plain")])
        return environ["wsgi.file_wrapper"](f, 8192)
    if path == "/hello":
        start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", "5")])
        return [b"hello"]
    start_response("404 Not Found", [("Content-Type", "text/plain"), ("Content-Length", "9")])
    return [b"not found"]
