#!/usr/bin/python3
"""A bounded WebSocket echo load client: what wrk is to HTTP, for the load runner's
ws-echo workloads (wrk cannot speak WebSocket).

N connections, each opened with its own handshake, then each doing sequential round
trips for D seconds: send one message (masked, as a client must), wait for the whole
echo (any fragmentation, answering pings), check it is the message sent, send the next.
Closed-loop like wrk: a connection sends again only after its echo came back.

    /usr/bin/python3 loadtest/tools/ws_echo_load.py ws://127.0.0.1:8000/ws/echo \\
        --connections 50 --duration 7 --size 32            # text
    ... --size 65536 --binary                              # binary

Prints a short summary, then ONE JSON object on the last line with the figures the
runner reads from wrk's profiles (bench/wrk.py parses both the same way): requests and
goodput are round trips (an echo received and checked), latency_ms per round trip
(send to the last byte of the echo), errors by kind: connect (a connection or handshake
that failed; a handshake answered with another status than 101 is also counted in
responses_by_status under that status), read (the server closed, broke the protocol or
echoed something else), write, timeout (no echo within --timeout). A connection that
fails is opened again, after a pause, until the time is up.

Bounded: loopback addresses only, at most 10,000 connections, 600 s and 16 MiB messages,
and at most --max-round-trips round trips in all; everything is closed (close frame 1000)
when the time is up. Standard library only; uvloop when Debian's Python has it
(--loop asyncio to do without).
"""

import argparse
import asyncio
import base64
import hashlib
import ipaddress
import json
import math
import os
import socket
import struct
import sys
import time
from urllib.parse import urlsplit

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
OP_CONT, OP_TEXT, OP_BINARY, OP_CLOSE, OP_PING, OP_PONG = 0x0, 0x1, 0x2, 0x8, 0x9, 0xA
MAX_CONNECTIONS = 10_000
MAX_DURATION_S = 600
MAX_SIZE = 16 * 1024 * 1024
RECONNECT_PAUSE_S = 0.05
CLOSE_WAIT_S = 1.0


class RoundTripError(Exception):
    """A failed round trip: kind is connect, read, write or timeout."""

    def __init__(self, kind, text):
        super().__init__(text)
        self.kind = kind


def mask(payload, key):
    """payload XOR the 4-byte masking key, repeated (RFC 6455 5.3)."""
    if not payload:
        return b""
    n = len(payload)
    repeated = (key * (n // 4 + 1))[:n]
    return (int.from_bytes(payload, "little") ^ int.from_bytes(repeated, "little")).to_bytes(n, "little")


def frame(opcode, payload):
    """One masked client frame with FIN set."""
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    key = os.urandom(4)
    return head + key + mask(payload, key)


def message_payload(size):
    """The message every connection sends: `size` bytes of printable ASCII (valid UTF-8 for
    a text message, the same bytes for a binary one), the same each time, so it is masked once."""
    pattern = b"gilgamesh-ws-echo-0123456789abcdefghijklmnopqrstuvwxyz"
    return (pattern * (size // len(pattern) + 1))[:size]


class Connection:
    """One WebSocket: handshake, round trips, close."""

    def __init__(self, host, port, path, opcode, payload, stats):
        self.host, self.port, self.path = host, port, path
        self.opcode, self.payload, self.stats = opcode, payload, stats
        self.reader = self.writer = None

    async def open(self, timeout):
        try:
            self.reader, self.writer = await asyncio.wait_for(
                asyncio.open_connection(self.host, self.port), timeout)
            sock = self.writer.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            key = base64.b64encode(os.urandom(16))
            self.writer.write(b"GET %s HTTP/1.1\r\nHost: %s:%d\r\nUpgrade: websocket\r\n"
                              b"Connection: Upgrade\r\nSec-WebSocket-Key: %s\r\n"
                              b"Sec-WebSocket-Version: 13\r\n\r\n" % (
                                  self.path.encode(), self.host.encode(), self.port, key))
            head = await asyncio.wait_for(self.reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.TimeoutError:
            raise RoundTripError("connect", "no handshake answer within %.0f s" % timeout)
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
            raise RoundTripError("connect", "handshake: %s" % (type(e).__name__ if not str(e) else e))
        lines = head.decode("latin-1").split("\r\n")
        status = lines[0].split(" ", 2)
        code = status[1] if len(status) > 1 else "?"
        if code != "101":
            self.stats.status(code)
            raise RoundTripError("connect", "handshake answered %s" % lines[0])
        headers = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        expected = base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()
        if headers.get("sec-websocket-accept") != expected:
            raise RoundTripError("connect", "a wrong Sec-WebSocket-Accept in the handshake")

    async def read_message(self):
        """The next data message (opcode, payload), answering pings on the way."""
        opcode, parts = None, []
        while True:
            b0, b1 = await self.reader.readexactly(2)
            op, fin, n = b0 & 0x0F, b0 & 0x80, b1 & 0x7F
            if b1 & 0x80:
                raise RoundTripError("read", "the server sent a masked frame")
            if n == 126:
                n = struct.unpack("!H", await self.reader.readexactly(2))[0]
            elif n == 127:
                n = struct.unpack("!Q", await self.reader.readexactly(8))[0]
            if n > MAX_SIZE:
                raise RoundTripError("read", "a frame of %d bytes" % n)
            data = await self.reader.readexactly(n) if n else b""
            if op == OP_PING:
                self.writer.write(frame(OP_PONG, data))
                continue
            if op == OP_PONG:
                continue
            if op == OP_CLOSE:
                code = struct.unpack("!H", data[:2])[0] if len(data) >= 2 else 1005
                raise RoundTripError("read", "the server closed (%d %s)" % (code, data[2:].decode("utf-8", "replace")))
            if op == OP_CONT:
                if opcode is None:
                    raise RoundTripError("read", "a continuation frame with no message")
            elif opcode is not None:
                raise RoundTripError("read", "a new message inside a fragmented one")
            else:
                opcode = op
            parts.append(data)
            if fin:
                return opcode, b"".join(parts) if len(parts) > 1 else parts[0]

    async def round_trips(self, deadline, timeout):
        """Sequential round trips until `deadline` (loop time); each one is recorded."""
        loop = asyncio.get_running_loop()
        stats = self.stats
        message = frame(self.opcode, self.payload)  # masked once: the same bytes each time
        expected = (self.opcode, self.payload)
        while loop.time() < deadline and not stats.full():
            started = time.perf_counter()
            try:
                self.writer.write(message)
                await self.writer.drain()
            except OSError as e:
                raise RoundTripError("write", "write: %s" % e)
            try:
                got = await asyncio.wait_for(self.read_message(), timeout)
            except asyncio.TimeoutError:
                raise RoundTripError("timeout", "no echo within %.0f s" % timeout)
            except (OSError, asyncio.IncompleteReadError) as e:
                raise RoundTripError("read", "read: %s" % (type(e).__name__ if not str(e) else e))
            if got != expected:
                raise RoundTripError("read", "the echo differs from the message sent (opcode %d, %d bytes)"
                                     % (got[0], len(got[1])))
            if loop.time() <= deadline:  # echoes after the end are not counted (as wrk)
                stats.round_trip(time.perf_counter() - started, len(got[1]))

    async def close(self):
        if self.writer is None:
            return
        try:
            self.writer.write(frame(OP_CLOSE, struct.pack("!H", 1000)))
            await self.writer.drain()
            # the server's close frame, then its end of the connection; bounded
            await asyncio.wait_for(self.reader.read(), CLOSE_WAIT_S)
        except (OSError, asyncio.TimeoutError, asyncio.IncompleteReadError):
            pass
        finally:
            self.writer.close()
            try:
                await asyncio.wait_for(self.writer.wait_closed(), CLOSE_WAIT_S)
            except (OSError, asyncio.TimeoutError):
                pass


class Stats:
    def __init__(self, max_round_trips):
        self.latencies = []
        self.bytes = 0
        self.errors = {"connect": 0, "read": 0, "write": 0, "timeout": 0, "status_over_399": 0}
        self.error_texts = {}
        self.by_status = {}
        self.opened = 0
        self.max_round_trips = max_round_trips

    def full(self):
        return len(self.latencies) >= self.max_round_trips

    def round_trip(self, seconds, size):
        self.latencies.append(seconds)
        self.bytes += size

    def status(self, code):
        self.by_status[code] = self.by_status.get(code, 0) + 1
        if code.isdigit() and int(code) > 399:
            self.errors["status_over_399"] += 1

    def error(self, e, counted):
        if counted:
            self.errors[e.kind] += 1
        text = str(e)[:200]
        self.error_texts[text] = self.error_texts.get(text, 0) + 1


def percentile(ordered, p):
    """Nearest-rank percentile of a sorted list."""
    if not ordered:
        return None
    return ordered[min(len(ordered) - 1, max(0, math.ceil(p / 100.0 * len(ordered)) - 1))]


async def run(args):
    url = urlsplit(args.url)
    host, port = url.hostname, url.port or 80
    path = (url.path or "/") + ("?" + url.query if url.query else "")
    payload = message_payload(args.size)
    opcode = OP_BINARY if args.binary else OP_TEXT
    stats = Stats(args.max_round_trips)
    loop = asyncio.get_running_loop()
    connections = [Connection(host, port, path, opcode, payload, stats) for _ in range(args.connections)]

    # Every connection's handshake first (bounded by --timeout), then the measured window.
    connect_started = time.perf_counter()
    opened = await asyncio.gather(*(c.open(args.timeout) for c in connections), return_exceptions=True)
    connect_s = time.perf_counter() - connect_started
    for c, outcome in zip(connections, opened):
        if isinstance(outcome, RoundTripError):
            stats.error(outcome, True)
            c.writer and c.writer.close()
            c.writer = None
        elif isinstance(outcome, BaseException):
            raise outcome
        else:
            stats.opened += 1
    cpu_started = time.process_time()
    started = loop.time()
    deadline = started + args.duration

    async def one(c):
        while loop.time() < deadline and not stats.full():
            try:
                if c.writer is None:
                    await c.open(args.timeout)
                    stats.opened += 1
                await c.round_trips(deadline, args.timeout)
            except RoundTripError as e:
                stats.error(e, loop.time() <= deadline)  # a failure after the end is not the server's
                if c.writer is not None:
                    c.writer.close()
                    c.writer = None
                await asyncio.sleep(RECONNECT_PAUSE_S)

    # bounded: every round trip has its own --timeout, and the whole window a margin over it
    tasks = [asyncio.ensure_future(one(c)) for c in connections]
    _done, pending = await asyncio.wait(tasks, timeout=args.duration + args.timeout + 5)
    for t in pending:
        t.cancel()
    elapsed = min(loop.time(), deadline) - started if not stats.full() else loop.time() - started
    cpu_s = time.process_time() - cpu_started
    await asyncio.gather(*(c.close() for c in connections), return_exceptions=True)
    return stats, max(elapsed, 1e-9), connect_s, cpu_s


def report(args, stats, seconds, connect_s, cpu_s):
    ordered = sorted(stats.latencies)
    n = len(ordered)
    ms = [v * 1000.0 for v in (ordered[0], ordered[-1])] if n else [None, None]
    mean = sum(ordered) / n if n else None
    stdev = math.sqrt(sum((v - mean) ** 2 for v in ordered) / n) if n else None

    def pct(p):
        v = percentile(ordered, p)
        return None if v is None else v * 1000.0

    path = urlsplit(args.url).path or "/"
    return {
        "profile": args.profile,
        "client": "ws_echo_load.py",
        "unit": "round trips",
        "params": {"size": args.size, "binary": bool(args.binary), "path": path},
        "threads": 1,
        "connections": {"requested": args.connections, "opened": stats.opened,
                        "handshakes_s": connect_s},
        "duration_s": seconds,
        "requests": n,
        "requests_per_s": n / seconds,
        "goodput": n,
        "goodput_per_s": n / seconds,
        "bytes": stats.bytes,
        "responses_by_status": dict(stats.by_status),  # handshakes not answered 101 only
        "sent_by_route": {path: n},
        "errors": dict(stats.errors),
        "error_texts": dict(sorted(stats.error_texts.items(), key=lambda kv: -kv[1])[:10]),
        "client_cpu_s": cpu_s,
        "capped": stats.full(),
        "latency_ms": {
            "min": ms[0], "mean": None if mean is None else mean * 1000.0,
            "stdev": None if stdev is None else stdev * 1000.0,
            "p50": pct(50), "p90": pct(90), "p99": pct(99), "p99_9": pct(99.9), "max": ms[1],
        },
    }


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url", help="ws://127.0.0.1:PORT/path (loopback only)")
    p.add_argument("--connections", "-c", type=int, default=50, help="(default: %(default)s)")
    p.add_argument("--duration", "-d", type=float, default=7.0, help="measured seconds (default: %(default)s)")
    p.add_argument("--size", type=int, default=32, help="message bytes (default: %(default)s)")
    p.add_argument("--binary", action="store_true", help="binary messages (default: text)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="s for a handshake or an echo (default: %(default)s)")
    p.add_argument("--max-round-trips", type=int, default=20_000_000,
                   help="stop early after this many round trips in all (default: %(default)s)")
    p.add_argument("--profile", default="ws-echo", help="the name in the JSON (default: %(default)s)")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help="uvloop when importable (default), else asyncio")
    args = p.parse_args(argv)
    url = urlsplit(args.url)
    if url.scheme != "ws" or not url.hostname:
        p.error("the URL must be ws://HOST:PORT/path")
    try:
        addresses = {ai[4][0] for ai in socket.getaddrinfo(url.hostname, url.port or 80, type=socket.SOCK_STREAM)}
    except OSError as e:
        p.error("%s: %s" % (url.hostname, e))
    if not all(ipaddress.ip_address(a.split("%")[0]).is_loopback for a in addresses):
        p.error("%s is not a loopback address: this client loads this machine only" % url.hostname)
    if not 1 <= args.connections <= MAX_CONNECTIONS:
        p.error("--connections must be 1..%d" % MAX_CONNECTIONS)
    if not 0 < args.duration <= MAX_DURATION_S:
        p.error("--duration must be above 0 and at most %d s" % MAX_DURATION_S)
    if not 0 <= args.size <= MAX_SIZE:
        p.error("--size must be 0..%d" % MAX_SIZE)
    if not 0 < args.timeout <= MAX_DURATION_S:
        p.error("--timeout must be above 0 and at most %d s" % MAX_DURATION_S)
    if args.max_round_trips < 1:
        p.error("--max-round-trips must be at least 1")
    return args


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.loop == "uvloop":
        try:
            import uvloop
            uvloop.install()
        except ImportError:
            args.loop = "asyncio"
    stats, seconds, connect_s, cpu_s = asyncio.run(run(args))
    out = report(args, stats, seconds, connect_s, cpu_s)
    lat = out["latency_ms"]
    errors = sum(v for k, v in out["errors"].items() if k != "status_over_399")
    print("ws echo %s: %d connections (%d opened), %d-byte %s messages, %.1f s, loop %s" % (
        args.url, args.connections, stats.opened, args.size, "binary" if args.binary else "text",
        seconds, args.loop))
    print("  %d round trips, %.1f round trips/s, latency p50 %s ms, p99 %s ms, errors %d%s" % (
        out["requests"], out["requests_per_s"],
        "%.3f" % lat["p50"] if lat["p50"] is not None else "-",
        "%.3f" % lat["p99"] if lat["p99"] is not None else "-", errors,
        " (%s)" % "; ".join("%s x %d" % kv for kv in out["error_texts"].items()) if out["error_texts"] else ""))
    print("  client CPU %.2f s (%.2f cores)" % (cpu_s, cpu_s / seconds))
    print(json.dumps(out, sort_keys=True), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
