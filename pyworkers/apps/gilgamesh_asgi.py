"""The Python half of gilgamesh's ASGI adapter (ASGI 3: HTTP, WebSocket, lifespan).

The server embeds this file as the module `_gilgamesh_asgi`; its C++ half is
pyworkers/apps/asgi_app.cpp (AsgiLoop: the loop's thread, the mailbox, the
eventfd). tests/unit/asgi_protocol_test.py drives this file with a fake mailbox.

One Worker per gilgamesh worker: it owns an asyncio event loop on the worker's
loop thread. The C++ half talks to it through a `mailbox` object:

  mailbox.pull(park) -> list of events, or None  (a Worker that pulls) requests
                                               from the pool's queue, as "request"
                                               or "ws_connect" events, as many as
                                               the loop has room for; None and
                                               park: the doorbell rings when one
                                               comes (until pull() or unpark())
  mailbox.unpark()                             awake again: a request that comes
                                               rings another worker's loop
  mailbox.read() -> (events, more)             (a Worker that reads its socket,
                                               serve()'s source_fd) what came on it,
                                               as take() gives events; more False:
                                               the socket is over
  mailbox.take() -> list of events, each a tuple:
      ("request", rid, Request, seconds_left)  a new request; its deadline is
                                               seconds_left from now
      ("room", rid)                            the answer's buffer has room again
      ("gone", rid)                            the client left
      ("call", rid, coroutine, seconds_left)   an `async def` route handler's call
                                               to run (a route app's loop)
      ("stop",)                                take no more; end when all are done
  mailbox.respond(rid, status, headers, body) -> bool
                                               a whole answer (one hand-off)
  mailbox.open(rid, status, headers) -> bool   the head of an answer that streams
  mailbox.push(rid, data) -> 0 | 1 | 2         a piece of it: 0 taken, 1 taken but
                                               the buffer is full (wait for "room"),
                                               2 the client is gone
  mailbox.finish(rid, ok)                      the streamed body is over (ok) or cut
  mailbox.sendfile(rid, status, headers, fd, size) -> bool
                                               a whole answer whose body is the regular
                                               file `fd` (http.response.pathsend): the
                                               connection reads it; the C++ half takes
                                               a copy of fd, the caller closes its own
  mailbox.fail(rid, summary, traceback)        the app raised or broke the protocol
                                               before anything was sent: log, 500
  mailbox.cut(rid, summary, traceback)         the same after the head went out:
                                               log, close the connection
  mailbox.timed_out(rid)                       cancelled at its deadline: the
                                               connection answers 504 itself
  mailbox.left(rid, summary, traceback)        the client left and the app stopped
                                               (returned, or raised: summary and
                                               traceback, else None): nothing more
                                               goes out; unanswered, the connection
                                               counts 499, a streamed body is cut
  mailbox.result(rid, value)                   what a route handler's call returned
  mailbox.error(rid, exception)                what it raised instead
  mailbox.done(rid)                            the request's slot is free again
  mailbox.idle()                               (a Worker that flushes) the loop is
                                               about to wait: what the C++ half held
                                               back while the callbacks ran goes out

may_interrupt(thread_id) -> bool: asked by the C++ half, with the GIL, before it raises
HandlerTimeout into a loop that stays busy past a deadline.

The head of an answer is held until its first body message, so that a protocol
error before any body is still a clean 500, and a one-message body goes out
with its head in one hand-off.

WebSockets (issue 24; the C++ half does not send these yet). A WebSocket is a
request too: one rid from its upgrade request to its end, on the same loop,
answered with the same done(rid). The C++ half reads the upgrade request,
holds the handshake until the app decides, and owns the frames (fragments
joined, UTF-8 of text checked, pings and pongs, the close handshake, limits):

  ("ws_connect", rid, Request, seconds_left)   an upgrade request (GET, empty
                                               body); seconds_left bounds the
                                               time to ws_accept or ws_close
  ("ws_message", rid, is_text, data)           one whole message: data is bytes
                                               (is_text: valid UTF-8). The C++
                                               half reads the next one from that
                                               client only after ws_more(rid)
  ("ws_closed", rid, code, reason)             the socket is over: the client's
                                               close frame (code 1005 when it had
                                               none), or the server closed it (1001
                                               going away, 1002 protocol error,
                                               1007 bad UTF-8, 1009 too big), or
                                               the connection broke or stopped
                                               answering pings (1006), also before
                                               the handshake; once per socket
  ("room", rid)                                the socket's send buffer has room
  mailbox.ws_accept(rid, subprotocol, headers) -> bool
                                               completes the handshake (101) with
                                               subprotocol (str or None: the
                                               Sec-WebSocket-Protocol answer, one
                                               the client offered) and headers
                                               ([(bytes, bytes)], none of the
                                               handshake's own); False: the client
                                               is gone. Then the C++ half reads
                                               the first message by itself
  mailbox.ws_send(rid, is_text, data) -> 0 | 1 | 2
                                               one message (data: bytes, UTF-8
                                               when is_text), as push(): 0 taken,
                                               1 taken but the buffer is full
                                               (wait for "room"), 2 the socket is
                                               closed
  mailbox.ws_more(rid)                         read the next message: once per
                                               "ws_message", at once while fewer
                                               than WS_RECEIVE_WINDOW bytes wait for
                                               the app's receive(), else when
                                               receive() takes them
  mailbox.ws_close(rid, code, reason)          before ws_accept: refuse the
                                               handshake with 403 (code and reason
                                               unused); after it: the close
                                               handshake with this code (int) and
                                               reason (str, at most 123 bytes of
                                               UTF-8)
  fail(rid, ...) before ws_accept or ws_close: log, answer 500; cut(rid, ...)
  after either: log, close with 1011 unless the socket is closed (or refused)
  already; timed_out(rid) before either: the connection answers 504; left(rid,
  ...) before either, once the client left: 499. After ws_accept no deadline
  applies.
"""

import _thread
import asyncio
import collections as _collections
import errno as _errno
import os as _os
import selectors as _selectors
import stat as _stat
import sys as _sys
import traceback as _traceback
import types as _types

try:
    from _gilgamesh_wsgi import resolve as _resolve
except ImportError:  # the protocol tests, outside the server
    _resolve = None

ASGI = {"version": "3.0", "spec_version": "2.4"}
# 2.5 adds only the disconnect's `reason`, a WebSocket key: the websocket scope claims it.
WEBSOCKET_ASGI = {"version": "3.0", "spec_version": "2.5"}
RECEIVE_CHUNK = 64 * 1024  # a request body reaches receive() in pieces of this size
PUSH_OK, PUSH_FULL, PUSH_GONE = 0, 1, 2
# Received WebSocket bytes that may wait for the app's receive() before the C++ half stops
# reading that client (one message more at most: a slow app holds the client back).
WS_RECEIVE_WINDOW = 64 * 1024
# Close codes an app may send (RFC 6455 7.4 and IANA's registry): 1004-1006 and 1015 are
# never sent on the wire, 1016-2999 are reserved.
WS_CLOSE_CODES = frozenset(range(1000, 1004)) | frozenset(range(1007, 1015)) | frozenset(range(3000, 5000))
WS_MAX_REASON = 123  # bytes of UTF-8 in a close frame after its code
# Response headers the WebSocket handshake owns (ASGI: use `subprotocol` instead of the first).
WS_OWN_HEADERS = frozenset((b"sec-websocket-protocol", b"sec-websocket-accept", b"sec-websocket-extensions",
                            b"upgrade", b"connection"))


def resolve(module, expression):
    """The ASGI app named by `expression` in `module`: 'app', 'a.b', or 'factory()'."""
    return _resolve(module, expression, "ASGI")


def run_alone(coroutine):
    """An `async def` route handler's call to its end on a loop of its own: a strategy
    whose workers have no event loop (processes) runs them so."""
    return asyncio.run(coroutine)


def mailbox(**functions):
    """The C++ half's functions (take, respond, open, push, finish, fail, cut, timed_out,
    left, done, result, error, and for WebSockets ws_accept, ws_send, ws_more, ws_close) as the
    one object a Worker talks to."""
    return _types.SimpleNamespace(**functions)


class DirectCaller:
    """The app's requests one at a time without a server, as a worker's loop runs them (the
    scope the server builds, the request's task on a Worker's loop, run to its end): what
    `gilgamesh check --request` and loadtest/handler_rate.py time. startup() first (the
    app's lifespan startup: None, or why it failed), then call() per request, close() last."""

    def __init__(self, app, lifespan="off", root_path=""):
        self.answered = {}  # rid -> status, once the app answered (500 after an error)
        self.errors = {}    # rid -> what the app raised or broke
        box = mailbox(take=lambda: [], respond=self._answer, open=self._answer,
                      sendfile=lambda rid, status, headers, fd, size: self._answer(rid, status),
                      push=lambda rid, data: PUSH_OK, finish=lambda rid, whole: None,
                      fail=self._fail, cut=self._fail, timed_out=lambda rid: self._answer(rid, 504),
                      left=lambda rid, summary, text: None, done=lambda rid: None)
        self.worker = Worker(app, box, lifespan=lifespan, root_path=root_path)
        self._rid = 0

    def _answer(self, rid, status, headers=None, body=None):
        self.answered[rid] = status
        return True

    def _fail(self, rid, summary, text):
        self.answered.setdefault(rid, 500)
        self.errors[rid] = summary

    def startup(self):
        return self.worker.startup()

    def call(self, method, target, headers=(), body=b"", timeout=10.0):
        """The status the app answered `method target` with, and what it raised (or None). A
        request still running after `timeout` seconds is cancelled, as at a deadline: 504."""
        import urllib.parse  # imported here: the servers' workers never need it
        self._rid += 1
        rid = self._rid
        raw_path, _, query = target.partition("?")
        path = urllib.parse.unquote_to_bytes(raw_path).decode("utf-8", "replace")
        request = Request(method, path, raw_path.encode("latin-1"), query.encode("latin-1"),
                          [(b"host", b"127.0.0.1:8080"), *headers], body, "1.1",
                          ("127.0.0.1", 40000), ("127.0.0.1", 8080), "direct", "http")
        self.worker._begin(rid, request, timeout)
        self.worker.loop.run_until_complete(self.worker.exchanges[rid].task)
        return self.answered.pop(rid, 500), self.errors.pop(rid, None)

    def close(self):
        """The lifespan shutdown (after a startup), then the loop closes. None, or what failed."""
        try:
            return self.worker.shutdown()
        finally:
            self.worker.close()


class ProtocolError(RuntimeError):
    """The app broke the ASGI message rules; the text says which."""


class ClientDisconnected(OSError):
    """send() after the client left (ASGI spec 2.4)."""


class Request:
    """One HTTP request as the C++ half hands it over."""

    __slots__ = ("method", "path", "raw_path", "query_string", "headers", "body",
                 "http_version", "client", "server", "request_id", "scheme")

    def __init__(self, method, path, raw_path, query_string, headers, body, http_version,
                 client, server, request_id, scheme):
        self.method = method              # str, upper case
        self.path = path                  # str, percent-decoded
        self.raw_path = raw_path          # bytes, as received, without the query
        self.query_string = query_string  # bytes, after '?'
        self.headers = headers            # list of (lower-case bytes, bytes), in order
        self.body = body                  # bytes, read whole by the server
        self.http_version = http_version  # "1.1" or "1.0"
        self.client = client              # (host, port)
        self.server = server              # (host, port)
        self.request_id = request_id      # str
        self.scheme = scheme              # "http", or "https" from a trusted proxy


def _error_text(exc):
    summary = "%s: %s" % (type(exc).__name__, exc) if str(exc) else type(exc).__name__
    return summary, "".join(_traceback.format_exception(type(exc), exc, exc.__traceback__))


def _check_headers(headers):
    """The response headers as a list of (bytes, bytes) tuples, or ProtocolError."""
    if type(headers) is list:  # most apps: tuples of bytes already, taken as they are (a copy)
        for pair in headers:
            if type(pair) is not tuple or len(pair) != 2 or type(pair[0]) is not bytes or type(pair[1]) is not bytes:
                break
        else:
            return headers[:]
    out = []
    for pair in headers:
        try:
            name, value = pair
        except (TypeError, ValueError):
            raise ProtocolError("a response header must be a [name, value] pair, not %r" % (pair,))
        if not isinstance(name, (bytes, bytearray)) or not isinstance(value, (bytes, bytearray)):
            raise ProtocolError("response header names and values must be bytes, not %s and %s"
                                % (type(name).__name__, type(value).__name__))
        out.append((bytes(name), bytes(value)))
    return out


class _Deadlines:
    """When the worker's requests are cancelled at their deadlines: one loop timer per TICK
    of deadlines, not one per request (a TimerHandle and its heap operations cost a small
    request a fifth of its Python time). A task is cancelled up to TICK after its deadline;
    the connection answers 504 at the deadline itself."""

    TICK = 0.01

    def __init__(self, loop):
        self.loop = loop
        self.due = {}  # tick -> the set of what is cancelled then

    def add(self, call, seconds_left):
        """Cancels `call` (its _cancel_at_deadline()) after `seconds_left`: the set it is in
        (call.deadline; _Deadlined._no_deadline() takes it out)."""
        tick = int((self.loop.time() + max(seconds_left, 0.0)) / self.TICK) + 1
        due = self.due.get(tick)
        if due is None:
            due = self.due[tick] = set()
            self.loop.call_at(tick * self.TICK, self._due, tick)
        due.add(call)
        return due

    def _due(self, tick):
        for call in self.due.pop(tick, ()):
            call.deadline = None
            call._cancel_at_deadline()


class _Deadlined:
    """An app call with a deadline (a request, a WebSocket before its accept, a route call)."""

    deadline = None  # the set of _Deadlines it is in, while its deadline applies

    def _no_deadline(self):
        if self.deadline is not None:
            self.deadline.discard(self)
            self.deadline = None


class _Exchange(_Deadlined):
    """One request: its receive() and send(), the message rules and the answer's state."""

    START, STARTED, OPEN, DONE = range(4)

    def __init__(self, worker, rid, request):
        self.worker = worker
        self.mailbox = worker.mailbox
        self.rid = rid
        self.request = request
        self.state = self.START
        self.status = None
        self.headers = None
        self.body_offset = 0
        self.body_messages = 0
        self.gone = False
        self.ended = False  # the client left or the response ended: receive() says so
        self.over = None    # the asyncio.Event a receive() waits on for it, once one waits
        self.room_waiter = None      # the future a send() on a full buffer waits on
        self.task = None
        self.timed_out = False

    # --- the app's callables ---

    async def receive(self):
        body = self.request.body
        if self.body_messages == 0 or self.body_offset < len(body):
            piece = body[self.body_offset:self.body_offset + RECEIVE_CHUNK]
            self.body_offset += len(piece)
            self.body_messages += 1
            return {"type": "http.request", "body": piece, "more_body": self.body_offset < len(body)}
        if not self.ended:
            if self.over is None:
                self.over = asyncio.Event()
            await self.over.wait()
        return {"type": "http.disconnect"}

    async def send(self, message):
        if self.gone:
            raise ClientDisconnected("the client has gone")
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "http.response.start":
            self._start(message)
        elif kind == "http.response.body":
            await self._body(message)
        elif kind == "http.response.pathsend":
            self._pathsend(message)
        elif kind == "http.response.trailers":
            raise ProtocolError("%s is not advertised in scope['extensions']" % kind)
        else:
            raise ProtocolError("unknown message type %r" % (kind,))

    # --- the rules ---

    def _start(self, message):
        if self.state == self.DONE:
            raise ProtocolError("http.response.start after the response ended")
        if self.state != self.START:
            raise ProtocolError("http.response.start twice")
        status = message.get("status")
        if type(status) is not int:
            raise ProtocolError("the status must be an int, not %s" % type(status).__name__)
        self.status = status
        self.headers = _check_headers(message.get("headers", ()))
        self.state = self.STARTED

    async def _body(self, message):
        if self.state == self.START:
            raise ProtocolError("http.response.body before http.response.start")
        if self.state == self.DONE:
            raise ProtocolError("http.response.body after the response ended")
        body = message.get("body", b"")
        if not isinstance(body, (bytes, bytearray, memoryview)):
            raise ProtocolError("the body of http.response.body must be bytes, not %s" % type(body).__name__)
        body = bytes(body)
        more = bool(message.get("more_body", False))
        if self.state == self.STARTED:
            if not more:
                self.state = self.DONE
                self._no_deadline()
                if not self.mailbox.respond(self.rid, self.status, self.headers, body):
                    self._client_gone()
                self._end()
                return
            self.state = self.OPEN
            self._no_deadline()  # the head goes out: the client's pace bounds the body
            if not self.mailbox.open(self.rid, self.status, self.headers):
                self._client_gone()
                raise ClientDisconnected("the client has gone")
        if body:
            result = self.mailbox.push(self.rid, body)
            if result == PUSH_FULL:
                self.room_waiter = self.worker.loop.create_future()
                await self.room_waiter  # "room", or the client left
            if result == PUSH_GONE or self.gone:
                self._client_gone()
                raise ClientDisconnected("the client has gone")
        if not more:
            self.state = self.DONE
            self.mailbox.finish(self.rid, True)
            self._end()

    def _pathsend(self, message):
        """http.response.pathsend: the body is the file at message["path"], read by the
        connection as the client takes it. Its own errors (no such file, not readable) reach
        the app as the OSError open() raises; nothing is sent then, so an app that does not
        catch it gets the generic 500."""
        if self.state == self.START:
            raise ProtocolError("http.response.pathsend before http.response.start")
        if self.state == self.DONE:
            raise ProtocolError("http.response.pathsend after the response ended")
        if self.state == self.OPEN:
            raise ProtocolError("http.response.pathsend after http.response.body: the two do not mix")
        path = message.get("path")
        if type(path) is not str:
            raise ProtocolError("the path of http.response.pathsend must be a str, not %s" % type(path).__name__)
        if not _os.path.isabs(path):
            raise ProtocolError("the path of http.response.pathsend must be absolute, not %r" % path)
        # O_NONBLOCK: a FIFO at that path must not block the loop in open(); a regular
        # file ignores the flag.
        fd = _os.open(path, _os.O_RDONLY | _os.O_CLOEXEC | _os.O_NONBLOCK)
        try:
            mode = _os.fstat(fd)
            if not _stat.S_ISREG(mode.st_mode):
                raise IsADirectoryError(_errno.EISDIR, "Is a directory", path) if _stat.S_ISDIR(mode.st_mode) \
                    else OSError(_errno.EINVAL, "Not a regular file", path)
            size = mode.st_size
            for name, value in self.headers:
                if name.lower() == b"content-length" and value.strip() != b"%d" % size:
                    raise ProtocolError("http.response.start's Content-Length is %r, but %s holds %d bytes"
                                        % (value.decode("latin-1"), path, size))
            self.state = self.DONE
            self._no_deadline()
            if not self.mailbox.sendfile(self.rid, self.status, self.headers, fd, size):
                self._client_gone()
            self._end()
        finally:
            _os.close(fd)

    def _end(self):
        self.ended = True
        if self.over is not None:
            self.over.set()

    # --- events from the server ---

    def room(self):
        waiter, self.room_waiter = self.room_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _client_gone(self):
        self.gone = True
        self._end()
        self.room()

    def _cancel_at_deadline(self):
        self.timed_out = True
        if self.task is not None:
            self.task.cancel()

    # --- the request's task ---

    async def run(self, app, scope):
        try:
            await app(scope, self.receive, self.send)
            if self.state != self.DONE and self.gone:
                self._left()  # it stopped because the client left: no rule was broken
            elif self.state == self.START:
                raise ProtocolError("the app returned without sending http.response.start")
            elif self.state != self.DONE:
                raise ProtocolError("the app returned before the response ended")
        except asyncio.CancelledError:
            self._stopped()
        except ClientDisconnected:
            self._left()
        except Exception as exc:
            if self.gone and self.state != self.DONE:
                self._left(*_error_text(exc))  # most likely how the app learnt it (Starlette's ClientDisconnect)
            else:
                self._failed(*_error_text(exc))
        except BaseException as exc:
            if self.worker.handler_timeout is None or not isinstance(exc, self.worker.handler_timeout):
                raise
            self._stopped()  # raised into a loop that a handler kept busy past its deadline
        finally:
            self._no_deadline()
            self.state = self.DONE
            self._end()
            self.worker._finished(self)

    def _left(self, summary=None, text=None):
        """The client left and the app stopped: no 500 for an answer nobody reads, and no
        error logged for what its leaving made the app do."""
        self.mailbox.left(self.rid, summary, text)

    def _stopped(self):
        """Cancelled at its deadline (or by a stop): the connection answers 504 itself
        unless the head went out, when the body is cut short."""
        if self.state == self.OPEN:
            self.mailbox.finish(self.rid, False)
        elif self.state != self.DONE:
            self.mailbox.timed_out(self.rid)

    def _failed(self, summary, text):
        """The app raised or broke the rules: a 500 if nothing went out yet (logged either
        way), a body cut short if the head did."""
        if self.state == self.OPEN:
            self.mailbox.cut(self.rid, summary, text)
        else:
            self.mailbox.fail(self.rid, summary, text)


class _Call(_Deadlined):
    """One `async def` route handler's call on the loop; its answer goes out whole."""

    def __init__(self, worker, rid):
        self.worker = worker
        self.mailbox = worker.mailbox
        self.rid = rid
        self.task = None

    def room(self):
        pass

    def _client_gone(self):
        pass  # the answer is sent whole, when the call returns

    def _cancel_at_deadline(self):
        if self.task is not None:
            self.task.cancel()

    async def run(self, coroutine):
        try:
            result = await coroutine
        except asyncio.CancelledError:
            self.mailbox.timed_out(self.rid)
        except BaseException as exc:
            timeout = self.worker.handler_timeout
            if timeout is not None and isinstance(exc, timeout):
                self.mailbox.timed_out(self.rid)  # the loop was blocked past the deadline
            elif isinstance(exc, Exception):
                self.mailbox.error(self.rid, exc)
            else:
                raise
        else:
            self.mailbox.result(self.rid, result)
        finally:
            self._no_deadline()
            self.worker._finished(self)


def _subprotocols(headers):
    """The subprotocols the client offered, in order: every Sec-WebSocket-Protocol field,
    split at its commas."""
    out = []
    for name, value in headers:
        if name == b"sec-websocket-protocol":
            out.extend(p.strip() for p in value.decode("latin-1").split(",") if p.strip())
    return out


class _WebSocket(_Deadlined):
    """One WebSocket: its receive() and send(), the message rules and the socket's state."""

    # The app's side: before accept, accepted, app closed, or answering the handshake with an
    # HTTP response of its own (websocket.http.response, the denial response extension).
    CONNECTING, OPEN, CLOSED, DENIED = range(4)

    def __init__(self, worker, rid, request, subprotocols):
        self.worker = worker
        self.mailbox = worker.mailbox
        self.rid = rid
        self.request = request
        self.subprotocols = subprotocols
        self.state = self.CONNECTING
        self.connect_given = False    # receive() returned websocket.connect
        self.received = _collections.deque()  # (message, size) waiting for receive()
        self.waiting_bytes = 0        # their sizes together
        self.reading = False          # the C++ half may read the next message
        self.arrived = asyncio.Event()  # a message came, or the socket closed
        self.gone = False             # the socket is closed (ws_closed came)
        self.disconnect = None        # the websocket.disconnect receive() gives
        self.room_waiter = None       # the future a send() on a full buffer waits on
        self.denial = None            # DENIED: the _Exchange that carries the app's HTTP response
        self.task = None
        self.timed_out = False

    # --- the app's callables ---

    async def receive(self):
        if not self.connect_given:
            self.connect_given = True
            return {"type": "websocket.connect"}
        while True:
            if self.received:
                message, size = self.received.popleft()
                self.waiting_bytes -= size
                self._read_more()
                return message
            if self.disconnect is not None:
                return dict(self.disconnect)
            self.arrived.clear()
            await self.arrived.wait()

    async def send(self, message):
        kind = message.get("type") if isinstance(message, dict) else None
        if kind == "websocket.accept":
            self._accept(message)
        elif kind == "websocket.send":
            await self._send(message)
        elif kind == "websocket.close":
            self._close(message)
        elif kind == "websocket.http.response.start":
            self._deny(message)
        elif kind == "websocket.http.response.body":
            await self._denial_body(message)
        else:
            raise ProtocolError("unknown message type %r" % (kind,))

    # --- the rules ---

    # The message that puts the app's side in each state but the first.
    _SENT = {OPEN: "websocket.accept", CLOSED: "websocket.close", DENIED: "websocket.http.response.start"}

    def _may_send(self, kind, *states):
        """A message of `kind` in one of `states`, else ProtocolError; then ClientDisconnected
        once the socket is closed."""
        if self.state not in states:
            sent = self._SENT.get(self.state)
            if sent is None:
                raise ProtocolError("%s before websocket.accept" % kind)
            raise ProtocolError("%s twice" % kind if sent == kind else "%s after %s" % (kind, sent))
        if self.gone:
            raise ClientDisconnected("the client has gone")

    def _accept(self, message):
        self._may_send("websocket.accept", self.CONNECTING)
        subprotocol = message.get("subprotocol")
        if subprotocol is not None:
            if not isinstance(subprotocol, str):
                raise ProtocolError("the subprotocol must be a str or None, not %s"
                                    % type(subprotocol).__name__)
            if subprotocol not in self.subprotocols:
                raise ProtocolError("subprotocol %r was not offered by the client (it offered %r)"
                                    % (subprotocol, self.subprotocols))
        headers = _check_headers(message.get("headers") or ())
        for name, _ in headers:
            if name.lower() in WS_OWN_HEADERS:
                hint = "; use 'subprotocol'" if name.lower() == b"sec-websocket-protocol" else ""
                raise ProtocolError("websocket.accept may not set %s (the handshake's own%s)"
                                    % (name.decode("latin-1"), hint))
        self.state = self.OPEN
        self._no_deadline()  # accepted: no deadline applies any more
        if not self.mailbox.ws_accept(self.rid, subprotocol, headers):
            self._closed(1006, "")
            raise ClientDisconnected("the client has gone")
        self.reading = True

    async def _send(self, message):
        self._may_send("websocket.send", self.OPEN)
        text, data = message.get("text"), message.get("bytes")
        if (text is None) == (data is None):
            raise ProtocolError("websocket.send needs exactly one of 'text' and 'bytes'")
        if text is not None:
            if not isinstance(text, str):
                raise ProtocolError("the text of websocket.send must be a str, not %s" % type(text).__name__)
            try:
                data = text.encode("utf-8")
            except UnicodeEncodeError as e:
                raise ProtocolError("the text of websocket.send is not valid Unicode: %s" % e) from None
        elif isinstance(data, (bytes, bytearray, memoryview)):
            data = bytes(data)
        else:
            raise ProtocolError("the bytes of websocket.send must be bytes, not %s" % type(data).__name__)
        result = self.mailbox.ws_send(self.rid, text is not None, data)
        if result == PUSH_FULL and not self.gone:
            self.room_waiter = self.worker.loop.create_future()
            await self.room_waiter  # "room", or the socket closed
        if result == PUSH_GONE or self.gone:
            raise ClientDisconnected("the client has gone")

    def _close(self, message):
        self._may_send("websocket.close", self.CONNECTING, self.OPEN)
        code = message.get("code", 1000)
        if code is None:
            code = 1000
        reason = message.get("reason") or ""
        if type(code) is not int:
            raise ProtocolError("the close code must be an int, not %s" % type(code).__name__)
        if code not in WS_CLOSE_CODES:
            raise ProtocolError("close code %d may not be sent (RFC 6455: 1000-1003, 1007-1014, "
                                "3000-4999)" % code)
        if not isinstance(reason, str):
            raise ProtocolError("the close reason must be a str, not %s" % type(reason).__name__)
        try:
            size = len(reason.encode("utf-8"))
        except UnicodeEncodeError as e:
            raise ProtocolError("the close reason is not valid Unicode: %s" % e) from None
        if size > WS_MAX_REASON:
            raise ProtocolError("the close reason is %d bytes of UTF-8, more than %d" % (size, WS_MAX_REASON))
        accepted = self.state == self.OPEN
        self.state = self.CLOSED
        self._no_deadline()
        self.mailbox.ws_close(self.rid, code, reason)
        # receive() says so from now on; before accept the handshake was refused (403),
        # which a browser shows as 1006.
        self.disconnect = {"type": "websocket.disconnect", "code": code if accepted else 1006,
                           "reason": reason if accepted else ""}
        self.received.clear()
        self.arrived.set()

    def _deny(self, message):
        """websocket.http.response.start: the handshake is answered with the app's own HTTP
        response instead, carried as an HTTP request's would be (the rules of its head, a
        body in pieces streamed with backpressure)."""
        self._may_send("websocket.http.response.start", self.CONNECTING)
        status = message.get("status")
        if type(status) is int and not 200 <= status <= 599:  # a 101 would be the handshake's own
            raise ProtocolError("the status of websocket.http.response.start must be 200-599, not %d" % status)
        denial = _Exchange(self.worker, self.rid, self.request)
        denial._start({"status": status, "headers": message.get("headers", ())})
        self.denial = denial
        self.state = self.DENIED

    async def _denial_body(self, message):
        denial = self.denial
        if denial is None:
            raise ProtocolError("websocket.http.response.body before websocket.http.response.start")
        if denial.state == _Exchange.DONE:
            raise ProtocolError("websocket.http.response.body after the response ended")
        if self.gone:
            raise ClientDisconnected("the client has gone")
        try:
            await denial._body(message)
        finally:
            if denial.state in (_Exchange.OPEN, _Exchange.DONE):
                self._no_deadline()  # the head went out: the client's pace bounds the body
        if denial.state == _Exchange.DONE and self.disconnect is None:
            # The handshake was refused: as after a refusing close, receive() says 1006.
            self.disconnect = {"type": "websocket.disconnect", "code": 1006, "reason": ""}
            self.arrived.set()

    # --- events from the server ---

    def message(self, is_text, data):
        self.reading = False
        if self.state == self.CLOSED or self.gone:
            return  # the app closed: what was on its way is dropped
        data = bytes(data)
        if is_text:
            # Valid UTF-8 by contract (the C++ half checked it); never raise in the dispatcher.
            message = {"type": "websocket.receive", "text": data.decode("utf-8", "replace")}
        else:
            message = {"type": "websocket.receive", "bytes": data}
        self.received.append((message, len(data)))
        self.waiting_bytes += len(data)
        self._read_more()
        self.arrived.set()

    def _read_more(self):
        if not self.reading and self.state == self.OPEN and not self.gone \
                and self.waiting_bytes < WS_RECEIVE_WINDOW:
            self.reading = True
            self.mailbox.ws_more(self.rid)

    def _closed(self, code, reason):
        self.gone = True
        if self.disconnect is None:
            self.disconnect = {"type": "websocket.disconnect", "code": code, "reason": reason or ""}
        self.arrived.set()
        self.room()
        if self.denial is not None:
            self.denial._client_gone()

    def room(self):
        waiter, self.room_waiter = self.room_waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
        if self.denial is not None:
            self.denial.room()

    def _client_gone(self):
        if not self.gone:
            self._closed(1006, "")

    def _cancel_at_deadline(self):
        if self.state not in (self.CONNECTING, self.DENIED):
            return
        self.timed_out = True
        if self.task is not None:
            self.task.cancel()

    # --- the socket's task ---

    async def run(self, app, scope):
        try:
            await app(scope, self.receive, self.send)
            if self.state == self.CONNECTING and self.gone:
                self._left()  # the client left before the app decided
            elif self.state == self.CONNECTING:
                raise ProtocolError("the app returned without sending websocket.accept or websocket.close")
            elif self.state == self.DENIED and self.denial.state != _Exchange.DONE:
                if self.gone:
                    self._left()
                else:
                    raise ProtocolError("the app returned before its websocket.http.response ended")
            if self.state == self.OPEN and not self.gone:
                self.state = self.CLOSED
                self.mailbox.ws_close(self.rid, 1000, "")  # the app is over: so is its socket
        except asyncio.CancelledError:
            self._stopped()
        except ClientDisconnected:
            if self.state in (self.CONNECTING, self.DENIED):
                self._left()
        except Exception as exc:
            if self.state in (self.CONNECTING, self.DENIED) and self.gone:
                self._left(*_error_text(exc))
            else:
                self._failed(*_error_text(exc))
        except BaseException as exc:
            if self.worker.handler_timeout is None or not isinstance(exc, self.worker.handler_timeout):
                raise
            self._stopped()  # raised into a loop that a handler kept busy past its deadline
        finally:
            self._no_deadline()
            self.worker._finished(self)

    def _stopped(self):
        """Cancelled at its deadline (or by a stop): before accept the connection answers
        504 itself; an accepted socket closes with 1011."""
        if self.state in (self.CONNECTING, self.DENIED) and self.gone:
            self._left()
        elif self.state == self.CONNECTING:
            self.mailbox.timed_out(self.rid)
        elif self.state == self.DENIED:
            self.denial._stopped()  # 504 before its head went out, else the body cut short
        elif self.state == self.OPEN and not self.gone:
            self.state = self.CLOSED
            self.mailbox.ws_close(self.rid, 1011, "")

    def _left(self, summary=None, text=None):
        """The client left before the handshake was answered: nobody reads a 500."""
        self.mailbox.left(self.rid, summary, text)

    def _failed(self, summary, text):
        """The app raised or broke the rules: a 500 before it accepted or refused the
        handshake, else logged and the socket closed with 1011 (if it is still open)."""
        if self.state == self.CONNECTING:
            self.mailbox.fail(self.rid, summary, text)
        elif self.state == self.DENIED:
            self.denial._failed(summary, text)  # a 500 before its head went out, else cut short
        else:
            self.state = self.CLOSED
            self.mailbox.cut(self.rid, summary, text)


# thread ident -> the loop a Worker serves on that thread (many under `threads`, which share
# one interpreter; one per sub-interpreter).
_serving = {}

if _sys.version_info >= (3, 12):
    def _eager_task(loop, coroutine):
        return asyncio.Task(coroutine, loop=loop, eager_start=True)
else:  # Debian's 3.11, which runs tests/unit/asgi_protocol_test.py (the server needs 3.12)
    def _eager_task(loop, coroutine):
        return loop.create_task(coroutine)


def may_interrupt(thread_id):
    """Whether HandlerTimeout raised into thread `thread_id` now lands in a request's code:
    its loop is running a task (the app's, or the adapter's code around it). Between tasks
    the loop is in asyncio's or the adapter's own bookkeeping (taking requests and starting
    their tasks, running its ready callbacks, waiting): an exception there would lose the
    requests it had just taken, or a task's next step. The C++ half asks with the
    interpreter's GIL held, so on a GIL build the loop's thread stands still until the
    exception is set, and gets it where it stood; on a free-threaded build it may move on
    meanwhile, and the check narrows that window rather than closing it. Nothing raised
    now is asked again at the supervisor's next look (200 ms)."""
    loop = _serving.get(thread_id)
    return loop is None or asyncio.current_task(loop) is not None


class _PullingSelector(_selectors.DefaultSelector):
    """The selector of a loop that takes its requests from the pool's queue itself: before it
    waits it takes what is queued (a share of it, as much as it has room for), or, when
    there is none, parks: a request that comes then rings the doorbell. A loop with
    callbacks ready takes nothing before they have run: a request goes to an idle loop
    first, or waits in the queue for the first loop that is done with its work."""

    def __init__(self, worker):
        super().__init__()
        self._worker = worker

    def select(self, timeout=None):
        worker = self._worker
        if timeout == 0 or worker.stopping:  # callbacks are ready: they run first
            return super().select(timeout)
        if worker._pull(True):
            return super().select(0)  # run what was taken now
        try:
            return super().select(timeout)
        finally:
            worker.mailbox.unpark()


class _FlushingSelector(_selectors.DefaultSelector):
    """The selector of a loop whose C++ half holds back some of what the callbacks send
    (a worker process's "this request is done" frames, to go out together with the next
    frame or at once before the loop waits): it says so before every select."""

    def __init__(self, idle):
        super().__init__()
        self._idle = idle

    def select(self, timeout=None):
        self._idle()
        return super().select(timeout)


class _FlushSoon:
    """For a loop with no selector to say when it is about to wait (uvloop's): called after
    something was held back, it has mailbox.idle() run once, at the loop's next turn. The
    loop looks for I/O without waiting before that turn (a callback is ready), so what was
    held back goes out before the loop waits, and with the next answer when one was ready."""

    def __init__(self, loop, idle):
        self._loop = loop
        self._idle = idle
        self._pending = False

    def __call__(self):
        if not self._pending:
            self._pending = True
            self._loop.call_soon(self._run)

    def _run(self):
        self._pending = False
        self._idle()


class Worker:
    """One worker's ASGI app (or `async def` route handlers) on its own event loop."""

    def __init__(self, app, mailbox, lifespan="auto", root_path="", handler_timeout=None, pulls=False,
                 flushes=False, loop="asyncio"):
        if lifespan not in ("auto", "on", "off"):
            raise ValueError("lifespan must be auto, on or off")
        if loop not in ("asyncio", "uvloop") or (loop == "uvloop" and pulls):
            raise ValueError("loop must be asyncio, or uvloop for a loop that does not pull")
        self.app = app
        self.mailbox = mailbox
        self.lifespan = lifespan
        self.root_path = root_path
        self.handler_timeout = handler_timeout  # gilgamesh.HandlerTimeout: ends the request, not the loop
        self.state = {}
        self.stopping = False
        # pulls: the loop takes its requests with mailbox.pull() (its selector does, before
        # each wait) rather than being handed them as "request" events.
        # flushes: mailbox.idle() before each wait (asyncio's loop: its selector calls it), or
        # soon after a request is done (uvloop's, which has no selector: _finished()).
        # loop: "uvloop" (--loop, a worker process's loop: the server imported it already).
        self._flush_soon = None
        if pulls:
            self.loop = asyncio.SelectorEventLoop(_PullingSelector(self))
        elif loop == "uvloop":
            import uvloop
            self.loop = uvloop.new_event_loop()
            if flushes:
                self._flush_soon = _FlushSoon(self.loop, mailbox.idle)
        elif flushes:
            self.loop = asyncio.SelectorEventLoop(_FlushingSelector(mailbox.idle))
        else:
            self.loop = asyncio.new_event_loop()
        self.deadlines = _Deadlines(self.loop)
        self.exchanges = {}
        self.stopped = None
        self._lifespan_task = None
        self._lifespan_queue = None
        self._lifespan_reply = None
        self._lifespan_received = False

    # --- lifespan ---

    def startup(self):
        """Runs the app's lifespan startup. None, or why the server must not start."""
        if self.lifespan == "off":
            return None
        return self.loop.run_until_complete(self._startup())

    async def _startup(self):
        self._lifespan_queue = asyncio.Queue()
        scope = {"type": "lifespan", "asgi": dict(ASGI), "state": self.state}
        self._lifespan_reply = self.loop.create_future()

        async def receive():
            message = await self._lifespan_queue.get()
            self._lifespan_received = True
            return message

        async def send(message):
            kind = message.get("type") if isinstance(message, dict) else None
            if kind in ("lifespan.startup.complete", "lifespan.startup.failed",
                        "lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                if not self._lifespan_reply.done():
                    self._lifespan_reply.set_result(message)
            else:
                raise ProtocolError("unknown lifespan message type %r" % (kind,))

        async def run():
            await self.app(scope, receive, send)

        self._lifespan_task = self.loop.create_task(run())
        await self._lifespan_queue.put({"type": "lifespan.startup"})
        await asyncio.wait([self._lifespan_task, self._lifespan_reply], return_when=asyncio.FIRST_COMPLETED)
        if self._lifespan_reply.done():
            reply = self._lifespan_reply.result()
            if reply["type"] == "lifespan.startup.complete":
                return None
            message = reply.get("message", "")
            return "lifespan startup failed" + (": %s" % message if message else "")
        exc = self._lifespan_task.exception()
        self._lifespan_task = None
        if not self._lifespan_received:
            # Raised (or returned) before it read lifespan.startup: no lifespan support.
            if self.lifespan == "on":
                why = "%s: %s" % (type(exc).__name__, exc) if exc else "it returned at once"
                return "--lifespan on, but the app does not support lifespan (%s)" % why
            return None
        if exc is None:
            return "the app's lifespan returned before it sent lifespan.startup.complete"
        return "lifespan startup raised %s: %s" % (type(exc).__name__, exc)

    def shutdown(self, timeout=30.0):
        """Runs the app's lifespan shutdown (after startup completed). None, or what failed."""
        if self._lifespan_task is None or self._lifespan_task.done():
            return None
        return self.loop.run_until_complete(self._shutdown(timeout))

    async def _shutdown(self, timeout):
        self._lifespan_reply = self.loop.create_future()
        await self._lifespan_queue.put({"type": "lifespan.shutdown"})
        done, _ = await asyncio.wait([self._lifespan_task, self._lifespan_reply], timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
        if self._lifespan_reply.done():
            reply = self._lifespan_reply.result()
            if reply["type"] == "lifespan.shutdown.failed":
                return "lifespan shutdown failed: %s" % reply.get("message", "")
            return None
        if not done:
            self._lifespan_task.cancel()
            return "lifespan shutdown did not finish within %.0f s" % timeout
        exc = self._lifespan_task.exception()
        return "lifespan shutdown raised %s: %s" % (type(exc).__name__, exc) if exc else None

    # --- requests ---

    def serve(self, doorbell_fd, source_fd=-1):
        """Serves until the mailbox says stop and every request has finished. The C++
        half rings `doorbell_fd` (an eventfd) whenever mailbox.take() has something.
        `source_fd` (a worker process's socket to the server), when there is one, is
        read on this loop: whenever it is readable, mailbox.read() handles what came
        and gives the new requests."""
        if self.stopped is None:  # serve() is entered again after a HandlerTimeout hit the loop
            self.stopped = self.loop.create_future()
        self.loop.add_reader(doorbell_fd, self._ring, doorbell_fd)
        if source_fd >= 0:
            self.loop.add_reader(source_fd, self._read, source_fd)
        _serving[_thread.get_ident()] = self.loop
        try:
            self._take()  # what came before the reader was there
            self.loop.run_until_complete(self.stopped)
        finally:
            _serving.pop(_thread.get_ident(), None)
            self.loop.remove_reader(doorbell_fd)
            if source_fd >= 0:
                self.loop.remove_reader(source_fd)

    def _ring(self, fd):
        try:
            _os.read(fd, 8)
        except BlockingIOError:
            pass
        self._take()

    def _pull(self, park):
        """Begins the requests waiting in the pool's queue: whether there were any."""
        events = self.mailbox.pull(park)
        if events is None:
            return False
        self._handle(events)
        return True

    def _take(self):
        self._handle(self.mailbox.take())

    def _read(self, fd):
        events, more = self.mailbox.read()
        if not more:  # the server's end is gone: nothing more comes
            self.loop.remove_reader(fd)
        self._handle(events)

    def _handle(self, events):
        for event in events:
            kind = event[0]
            if kind == "request":
                self._begin(event[1], event[2], event[3])
            elif kind == "call":
                self._call(event[1], event[2], event[3])
            elif kind == "ws_connect":
                self._begin_websocket(event[1], event[2], event[3])
            elif kind == "ws_message":
                websocket = self.exchanges.get(event[1])
                if websocket is not None:
                    websocket.message(event[2], event[3])
            elif kind == "ws_closed":
                websocket = self.exchanges.get(event[1])
                if websocket is not None:
                    websocket._closed(event[2], event[3])
            elif kind == "room":
                exchange = self.exchanges.get(event[1])
                if exchange is not None:
                    exchange.room()
            elif kind == "gone":
                exchange = self.exchanges.get(event[1])
                if exchange is not None:
                    exchange._client_gone()
            elif kind == "stop":
                self.stopping = True
        self._maybe_stopped()

    def scope_for(self, request):
        return {
            "type": "http",
            "asgi": dict(ASGI),
            "http_version": request.http_version,
            "method": request.method,
            "scheme": request.scheme,
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "root_path": self.root_path,
            "headers": request.headers,
            "client": request.client,
            "server": request.server,
            "state": self.state.copy(),
            "extensions": {"http.response.pathsend": {}},
        }

    def websocket_scope_for(self, request, subprotocols):
        return {
            "type": "websocket",
            "asgi": dict(WEBSOCKET_ASGI),
            "http_version": request.http_version,
            "scheme": "wss" if request.scheme == "https" else "ws",
            "path": request.path,
            "raw_path": request.raw_path,
            "query_string": request.query_string,
            "root_path": self.root_path,
            "headers": request.headers,
            "client": request.client,
            "server": request.server,
            "subprotocols": list(subprotocols),
            "extensions": {"websocket.http.response": {}},
            "state": self.state.copy(),
        }

    def _start(self, call, seconds_left, coroutine):
        """Starts `call`'s task, its deadline first. While the loop runs (it does whenever
        requests come, except for those taken before serve() waits) the task starts eagerly,
        as asyncio.eager_task_factory's tasks do: the coroutine runs here, at once, up to
        its first real wait; an answer that needs none (most small ones) is sent before
        this returns, without a turn of the loop for the task's first step. Only our own
        tasks start so: the app's create_task() keeps asyncio's ordering."""
        self.exchanges[call.rid] = call
        call.deadline = self.deadlines.add(call, seconds_left)
        call.task = _eager_task(self.loop, coroutine)

    def _begin(self, rid, request, seconds_left):
        exchange = _Exchange(self, rid, request)
        self._start(exchange, seconds_left, exchange.run(self.app, self.scope_for(request)))

    def _begin_websocket(self, rid, request, seconds_left):
        subprotocols = _subprotocols(request.headers)
        websocket = _WebSocket(self, rid, request, subprotocols)
        scope = self.websocket_scope_for(request, subprotocols)
        self._start(websocket, seconds_left, websocket.run(self.app, scope))

    def _call(self, rid, coroutine, seconds_left):
        call = _Call(self, rid)
        self._start(call, seconds_left, call.run(coroutine))

    def _finished(self, exchange):
        self.exchanges.pop(exchange.rid, None)
        self.mailbox.done(exchange.rid)
        if self._flush_soon is not None:
            self._flush_soon()
        self._maybe_stopped()

    def _maybe_stopped(self):
        if self.stopping and not self.exchanges and self.stopped is not None and not self.stopped.done():
            self.stopped.set_result(None)

    def close(self):
        self.loop.close()
