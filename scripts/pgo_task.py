"""The profile task of a PGO build of CPython (scripts/build-python.sh): a short run of
the code a gilgamesh worker runs, for the compiler's profile. Upstream's task
(`-m test --pgo`, some 45 test modules) takes most of a PGO build's time on 2 cores;
this one takes well under a minute on the instrumented interpreter and trains the
same hot paths: the evaluation loop (calls, recursion, loops, comprehensions,
generators, closures, exceptions, attribute and method lookups), the object
allocator, dicts, lists, tuples, sets, str, bytes and int, and the modules a web
request touches: json, re, urllib.parse, asyncio (tasks, futures, queues, the
selector loop), http header handling, dataclasses, datetime and hashlib.

It only trains the optimizer: it checks nothing and always exits 0 unless the
interpreter itself is broken."""

import asyncio
import dataclasses
import datetime
import hashlib
import json
import re
import sys
import urllib.parse
from collections import OrderedDict, defaultdict, deque

ROUNDS = int(sys.argv[1]) if len(sys.argv) > 1 else 3


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


class Point:
    __slots__ = ("x", "y")

    def __init__(self, x, y):
        self.x = x
        self.y = y

    def __add__(self, other):
        return Point(self.x + other.x, self.y + other.y)

    @property
    def norm(self):
        return abs(self.x) + abs(self.y)


class Node:
    def __init__(self, name, children=()):
        self.name = name
        self.children = list(children)

    def walk(self):
        yield self.name
        for child in self.children:
            yield from child.walk()


@dataclasses.dataclass
class Item:
    name: str
    price: float
    tags: list = dataclasses.field(default_factory=list)


def objects():
    total = Point(0, 0)
    for i in range(20000):
        total = total + Point(i, -i)
    tree = Node("root", [Node("a%d" % i, [Node("b%d" % j) for j in range(10)]) for i in range(50)])
    names = [name for _ in range(20) for name in tree.walk()]
    items = [Item("item%d" % i, i * 1.5, ["t%d" % (i % 7)]) for i in range(3000)]
    items.sort(key=lambda item: (item.tags[0], -item.price))
    return total.norm + len(names) + len(dataclasses.asdict(items[0]))


def containers():
    d = {}
    for i in range(50000):
        d["key%d" % i] = i
    s = sum(v for k, v in d.items() if k.endswith("7"))
    counts = defaultdict(int)
    for word in ("alpha beta gamma delta " * 5000).split():
        counts[word] += 1
    od = OrderedDict((i, str(i)) for i in range(5000))
    od.move_to_end(0)
    q = deque(range(10000))
    while q:
        q.popleft()
    sets = {i % 1000 for i in range(30000)} | set(range(500, 1500))
    squares = [i * i for i in range(30000) if i % 3]
    pairs = sorted(zip(squares, reversed(squares)))[:100]
    return s + len(counts) + len(od) + len(sets) + len(pairs)


def strings():
    parts = []
    for i in range(20000):
        parts.append(f"{i}:{i * 2:08d}:{i / 7:.3f}")
    text = ",".join(parts)
    upper = text.upper().lower().replace(":", ";")
    words = upper.split(",")
    encoded = [w.encode("utf-8") for w in words]
    joined = b"\r\n".join(encoded)
    decoded = joined.decode("latin-1")
    found = re.findall(r"(\d+);0*(\d+)", decoded[:200000])
    pattern = re.compile(r"^/(?P<section>[a-z]+)/(?P<id>\d+)$")
    matches = sum(1 for i in range(20000) if pattern.match("/items/%d" % i))
    return len(found) + matches + len("%s-%d-%r" % ("x", 3, [1, 2]))


def web():
    payload = {"users": [{"id": i, "name": "user%d" % i, "active": i % 2 == 0,
                          "score": i * 0.5, "tags": ["a", "b"]} for i in range(500)]}
    n = 0
    for _ in range(40):
        text = json.dumps(payload)
        n += len(json.loads(text)["users"])
    for i in range(5000):
        query = urllib.parse.urlencode({"q": "search term %d" % i, "page": i, "sort": "desc"})
        n += len(urllib.parse.parse_qsl(query))
        n += len(urllib.parse.unquote("/path%%20with/%d/%%C3%%A9" % i))
    headers = [(b"content-type", b"text/plain"), (b"content-length", b"5"), (b"x-request-id", b"abc")]
    for _ in range(30000):
        names = {name.decode("latin-1").lower(): value for name, value in headers}
        n += len(names)
    stamp = datetime.datetime(2026, 1, 1)
    for i in range(5000):
        n += len((stamp + datetime.timedelta(seconds=i)).isoformat())
    for i in range(5000):
        n += len(hashlib.sha256(b"%d" % i).hexdigest())
    return n


def errors():
    n = 0
    for i in range(30000):
        try:
            if i % 3 == 0:
                raise ValueError(i)
            n += {"a": 1}["b" if i % 3 == 1 else "a"]
        except (ValueError, KeyError):
            n += 1
        finally:
            n += 0
    return n


async def handler(scope, receive, send):
    await receive()
    body = b"hello %d" % scope["n"]
    await send({"type": "http.response.start", "status": 200,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", b"%d" % len(body))]})
    await send({"type": "http.response.body", "body": body})


async def serve():
    queue = asyncio.Queue()
    sent = []

    async def receive():
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message):
        sent.append(message)
        await asyncio.sleep(0)

    async def worker():
        while True:
            n = await queue.get()
            if n is None:
                return
            await handler({"type": "http", "n": n, "headers": []}, receive, send)

    workers = [asyncio.ensure_future(worker()) for _ in range(8)]
    for n in range(20000):
        await queue.put(n)
    for _ in workers:
        await queue.put(None)
    await asyncio.gather(*workers)
    loop = asyncio.get_running_loop()
    futures = [loop.create_future() for _ in range(5000)]
    for i, future in enumerate(futures):
        loop.call_soon(future.set_result, i)
    await asyncio.wait_for(asyncio.gather(*futures), 30)
    await asyncio.gather(*(asyncio.sleep(0.001) for _ in range(2000)))
    return len(sent)


def main():
    for _ in range(ROUNDS):
        fib(24)
        objects()
        containers()
        strings()
        web()
        errors()
        asyncio.run(serve())


if __name__ == "__main__":
    main()
