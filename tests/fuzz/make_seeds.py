#!/usr/bin/python3
"""Writes the seed corpora of tests/fuzz/corpus/ (run from anywhere; rewrites
the seeds it names, leaves other files, e.g. regression inputs, alone)."""

import pathlib
import struct

HERE = pathlib.Path(__file__).resolve().parent


def write(target, name, data):
    d = HERE / "corpus" / target
    d.mkdir(parents=True, exist_ok=True)
    (d / name).write_bytes(data)


def req(line, headers=(), body=b""):
    return line + b"\r\n" + b"".join(h + b"\r\n" for h in headers) + b"\r\n" + body


H = b"Host: h"
REQUESTS = {
    "get-echo": req(b"GET /echo?status=201&ct=text/plain&h-X-A=1 HTTP/1.1", [H]),
    "pipelined": req(b"GET /echo HTTP/1.1", [H]) + req(b"HEAD /echo HTTP/1.1", [H]) +
                 req(b"GET /items/42 HTTP/1.1", [H, b"Connection: close"]),
    "post-cl": req(b"POST /echo HTTP/1.1", [H, b"Content-Length: 5"], b"hello"),
    "post-chunked": req(b"POST /echo HTTP/1.1", [H, b"Transfer-Encoding: chunked"],
                        b"5;ext=1\r\nhello\r\n0\r\nX-Sum: 1\r\nX-Request-Id: t\r\n\r\n") +
                    req(b"GET /echo HTTP/1.1", [H]),
    "trailer-host": req(b"POST /echo HTTP/1.1", [H, b"Transfer-Encoding: chunked"],
                        b"5\r\nhello\r\n0\r\nHost: evil\r\n\r\n"),
    "content-type-twice": req(b"POST /echo HTTP/1.1", [H, b"Content-Type: a/b", b"Content-Type: c/d",
                                                       b"Content-Length: 1"], b"x"),
    "many-fields": req(b"GET /echo HTTP/1.1", [H] + [b"X-F%d: v" % i for i in range(100)]),
    "http10": req(b"GET /files/a/b%20c HTTP/1.0"),
    "header-splitting": req(b"GET /echo?h-X-A=a%0d%0aSet-Cookie:%20evil=1&ct=text/html%0d%0aEvil:%201 HTTP/1.1", [H]),
    "header-value-crlf": req(b"GET /echo?h-X-A=a%0d%0aSet-Cookie:%20evil=1 HTTP/1.1", [H]),
    "header-name-crlf": req(b"GET /echo?h-X-A%0d%0aEvil=1 HTTP/1.1", [H]),
    "bad-status": req(b"GET /echo?status=100 HTTP/1.1", [H]) + req(b"GET /echo?status=600 HTTP/1.1", [H]),
    "te-smuggle": req(b"POST /echo HTTP/1.1", [H, b"Transfer-Encoding: chunked, identity"], b"0\r\n\r\n") +
                  req(b"GET /echo?smuggled=1 HTTP/1.1", [H]),
    "te-cl": req(b"POST /echo HTTP/1.1", [H, b"Content-Length: 3", b"Transfer-Encoding: chunked"], b"0\r\n\r\n"),
    "cl-twice": req(b"POST /echo HTTP/1.1", [H, b"Content-Length: 1", b"Content-Length: 1"], b"x"),
    "obs-fold": req(b"GET /echo HTTP/1.1", [H, b"X-A: 1", b" folded"]),
    "bare-lf": b"GET /echo HTTP/1.1\nHost: h\n\n",
    "blank-lines": b"\r\n\r\n" + req(b"GET /echo HTTP/1.1", [H]),
    "builtins": b"".join(req(b"GET %s HTTP/1.1" % p, [H]) for p in
                         (b"/", b"/stats", b"/metrics", b"/healthz", b"/readyz", b"/events", b"/nope")),
    "not-utf8-route": req(b"GET /%ff%fe-not-utf8 HTTP/1.1", [H]) + req(b"DELETE /echo HTTP/1.1", [H]),
    "absolute-form": req(b"GET http://h/echo?x=1 HTTP/1.1", [H, b"X-Request-Id: abc"]),
    "expect": req(b"POST /echo HTTP/1.1", [H, b"Expect: 100-continue", b"Content-Length: 2"], b"{}"),
    "body-limit": req(b"POST /echo HTTP/1.1", [H, b"Content-Length: 99999"], b"x" * 100),
}
for name, data in REQUESTS.items():
    write("request", name, data)

QUERIES = {
    "plain": b"a=1&b=2",
    "escapes": b"x=%41%42%43&y=caf%C3%A9&z=a+b%2Bc",
    "broken-escapes": b"a=%&b=%4&c=%zz&d=%%41&%",
    "empty-parts": b"&&=&a==&=b&",
    "crlf": b"h-X=a%0d%0ab&n=%00",
}
for name, data in QUERIES.items():
    write("query", name, data)


def s(b):
    return struct.pack("=I", len(b)) + b


def headers(pairs):
    return struct.pack("=I", len(pairs)) + b"".join(s(n) + s(v) for n, v in pairs)


def frame(kind, meta, body=b""):
    return struct.pack("=IIQ", kind, len(meta), len(body)) + meta + body


response_meta = struct.pack("=I", 200) + s(b"text/plain") + headers([(b"X-A", b"1"), (b"Set-Cookie", b"a=b")])
bad_meta = struct.pack("=I", 0xFFFFFFFF) + s(b"text/html\r\nEvil: 1") + headers([(b"X\x00", b"a\r\nb")])
request_meta = (struct.pack("=Q", 3) + s(b"GET") + s(b"/items/7") + s(b"a=1") + s(b"rid") +
                headers([(b"Host", b"h")]) + struct.pack("=I", 1) + s(b"id") + s(b"7") + struct.pack("=I", 1) +
                s(b"/items/7?a=1") + s(b"HTTP/1.1") + s(b"http") + s(b"127.0.0.1") + struct.pack("=I", 5555) +
                s(b"127.0.0.1") + struct.pack("=I", 8080))
FRAMES = {
    "hello": frame(1, b"1234"),
    "response": frame(3, response_meta, b"hello"),
    "response-bad": frame(3, bad_meta, b""),
    "request": frame(2, request_meta, b"body"),
    "truncated": frame(3, response_meta, b"hello")[:-3],
    "huge-lengths": struct.pack("=IIQ", 3, 0xFFFFFFF0, 0xFFFFFFFFFFFFFFF0),
    "bad-kind": frame(9, b""),
    "too-many-headers": struct.pack("=I", 200) + s(b"") + struct.pack("=I", 0x7FFFFFFF),
    # A worker's lane: a cancel for an answer already over, the next request right behind.
    "cancel-then-request": frame(7, b"") + frame(2, request_meta, b"body"),
    # A streamed answer, back to back: head, a chunk, the end.
    "streamed": frame(4, response_meta) + frame(5, b"", b"chunk") + frame(6, b"1"),
}
for name, data in FRAMES.items():
    write("frames", name, data)
