"""The Python half of gilgamesh's WSGI adapter (PEP 3333).

The server embeds this file as the module `_gilgamesh_wsgi` (built into the
binary; see gilgamesh_module.cpp). The C++ half (wsgi_app.cpp) builds the
environ and calls run(); this half speaks the calling protocol: start_response
with exc_info, write(), the result iterable and its close(). An answer either
streams (its head goes out with the first body bytes, then each piece as it
comes) or is collected whole and sent with a Content-Length: run() says which.
"Headers sent" below means: the app has produced body bytes.
"""
import io as _io

import gilgamesh as _gilgamesh


def resolve(module, expression, kind="WSGI"):
    """The `kind` (WSGI, ASGI) callable named by `expression` in `module`: 'app', 'a.b',
    or 'factory()'."""
    factory = expression.endswith("()")
    path = expression[:-2] if factory else expression
    parts = path.split(".")
    if not all(p.isidentifier() for p in parts):
        raise ValueError("%r is not an attribute name or a factory call such as create_app()"
                         % expression)
    target = module
    for part in parts:
        try:
            target = getattr(target, part)
        except AttributeError:
            raise AttributeError("module %r has no attribute %r" % (module.__name__, path)) from None
    if factory:
        target = target()
    if not callable(target):
        raise TypeError("%s:%s is a %s, not a %s callable"
                        % (module.__name__, expression, type(target).__name__, kind))
    return target


class ErrorStream:
    """wsgi.errors: text written here goes to the server log, a line at a time,
    each line tagged with the request id."""

    __slots__ = ("_prefix", "_pending")

    def __init__(self, request_id):
        self._prefix = "request %s: " % request_id
        self._pending = ""

    def write(self, text):
        if type(text) is not str:
            raise TypeError("wsgi.errors.write() takes str, not %s" % type(text).__name__)
        lines = (self._pending + text).split("\n")
        self._pending = lines.pop()
        for line in lines:
            _gilgamesh._log(self._prefix + line)
        return len(text)

    def writelines(self, lines):
        for line in lines:
            self.write(line)

    def flush(self):
        if self._pending:
            _gilgamesh._log(self._prefix + self._pending)
            self._pending = ""


class FileWrapper:
    """wsgi.file_wrapper: iterates a file-like object in blocks and closes it."""

    def __init__(self, filelike, blksize=8192):
        self.filelike = filelike
        self.blksize = blksize
        if hasattr(filelike, "close"):
            self.close = filelike.close

    # As werkzeug's own FileWrapper: its range requests (_RangeWrapper) seek to the range's
    # start instead of reading the file up to it.
    def seekable(self):
        seekable = getattr(self.filelike, "seekable", None)
        return bool(seekable and seekable())

    def seek(self, *args):
        self.filelike.seek(*args)

    def tell(self):
        return self.filelike.tell()

    def __iter__(self):
        return self

    def __next__(self):
        data = self.filelike.read(self.blksize)
        if data:
            return data
        raise StopIteration


class ClientDisconnected(OSError):
    """write() after the client closed the connection: the answer cannot be delivered."""


class _Exchange:
    """One call of the app: what start_response and write() were given, and where
    the body goes: collected in `chunks`, or, once `opened`, out through `_push`
    piece by piece (see run())."""

    __slots__ = ("status", "headers", "chunks", "size", "limit", "_start", "_push",
                 "collect", "opened", "stopped")

    def __init__(self, limit, start, push):
        self.status = None
        self.headers = None
        self.chunks = []
        self.size = 0
        self.limit = limit
        self._start = start
        self._push = push
        self.collect = start is None  # decided at the first body bytes otherwise
        self.opened = False   # the head went out: each piece follows as it comes
        self.stopped = False  # the client left (or the head was refused): stop producing

    def start_response(self, status, headers, exc_info=None):
        if exc_info is not None:
            try:
                if self.size or self.opened:  # body already produced: too late to change the status
                    raise exc_info[1].with_traceback(exc_info[2])
            finally:
                exc_info = None  # no reference cycle through the traceback
        elif self.status is not None:
            raise AssertionError("start_response() was called a second time without exc_info")
        self.status = status
        self.headers = headers
        return self.write

    def write(self, data):
        if not isinstance(data, bytes):
            raise TypeError("write() takes bytes, not %s" % type(data).__name__)
        if self.stopped:
            raise ClientDisconnected("the client closed the connection")
        if data:
            self.body(data)

    def body(self, data):
        """A non-empty piece of the body."""
        if self.opened:
            if not self._push(data):
                self.stopped = True
            return
        if not self.collect and not self._length_within_limit():
            self.opened = True
            if not self._start(self.status, self.headers) or not self._push(data):
                self.stopped = True
            return
        self.collect = True
        self.size += len(data)
        if self.size <= self.limit:  # past the limit: counted, not kept
            self.chunks.append(data)

    def _length_within_limit(self):
        """Whether the app gave a Content-Length the body may be collected in."""
        if type(self.headers) is not list:
            return False
        for header in self.headers:
            if type(header) is tuple and len(header) == 2 and type(header[0]) is str \
                    and header[0].lower() == "content-length":
                value = header[1]
                return type(value) is str and value.isdigit() and int(value) <= self.limit
        return False


class Result:
    """What the app answered, as it gave it: the C++ half (wsgi_app.cpp) reads these."""
    __slots__ = ("status", "headers", "chunks")

    def __init__(self, status, headers, chunks):
        self.status = status    # str, e.g. "200 OK"
        self.headers = headers  # list of (str, str)
        self.chunks = chunks    # list of bytes


class ResponseTooLarge(Exception):
    """The body grew past the limit (--max-response); `size` is what was seen by then."""

    def __init__(self, size):
        super().__init__(size)
        self.size = size


def run(app, environ, limit, start=None, push=None, send_file=None):
    """Calls the app. Returns a Result for an answer collected whole, or raises
    ResponseTooLarge once such a body grew past `limit` bytes. An answer that
    streams goes out through start(status, headers) and push(bytes) instead
    (`start` is None, as for loadtest/handler_rate.py: nothing may stream), and
    None is returned. Raises what
    the app raised, and AssertionError or TypeError when it breaks the protocol.

    Streams: a body that is not a list or tuple, unless the app gave a
    Content-Length of at most `limit`.

    A FileWrapper returned after start_response(), with nothing written yet, goes to
    send_file(status, headers, filelike) first (when given; not a text file, whose tell() is
    no byte offset and whose reads give str): True, the server reads the file itself from
    its current position (a real file), and the app's close() is called at once; False, it
    is iterated here."""
    exchange = _Exchange(limit, start, push)
    errors = environ["wsgi.errors"]
    try:
        try:
            result = app(environ, exchange.start_response)
        except ClientDisconnected:
            if not exchange.stopped:
                raise
            return None
        try:
            kind = type(result)
            if kind is list or kind is tuple:
                if not exchange.opened:
                    exchange.collect = True  # the whole body is there already
            elif kind is FileWrapper:
                if (send_file is not None and exchange.status is not None and not exchange.chunks
                        and not exchange.opened and not isinstance(result.filelike, _io.TextIOBase)
                        and send_file(exchange.status, exchange.headers, result.filelike)):
                    return None
                if result.blksize < 1 << 16:
                    result.blksize = 1 << 16
            for chunk in result:
                if not isinstance(chunk, bytes):
                    raise TypeError("the app's response iterable yielded %s, not bytes"
                                    % type(chunk).__name__)
                if chunk:
                    if exchange.status is None:
                        raise AssertionError("the app yielded body bytes before calling start_response()")
                    exchange.body(chunk)
                    if exchange.stopped or exchange.size > limit:
                        break
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
    finally:
        errors.flush()
    if exchange.opened:
        return None
    if exchange.status is None:
        raise AssertionError("the app returned without calling start_response()")
    if exchange.size > limit:
        raise ResponseTooLarge(exchange.size)
    return Result(exchange.status, exchange.headers, exchange.chunks)
