"""handlers.demo through the real server: good parameters give the right answer,
nonsense gives 400 with {"error", "request_id"}."""

import hashlib
import json
import time

import pytest


def assert_bad_request(response, *words):
    assert response.status == 400, response
    assert response.header("Content-Type", "").startswith("application/json"), response
    body = response.json()
    assert set(body) == {"error", "request_id"}, body
    assert body["request_id"] and body["request_id"] == response.header("X-Request-Id"), response
    for word in words:
        assert word in body["error"], (word, body)


def test_hello(demo_server):
    r = demo_server.get("/hello")
    assert r.status == 200
    assert r.body == b"hello"
    assert r.header("Content-Type", "").startswith("text/plain")


@pytest.mark.parametrize("n,value", [(0, 0), (1, 1), (2, 1), (10, 55), (20, 6765), (25, 75025)])
def test_fib(demo_server, n, value):
    r = demo_server.get("/fib?n=%d" % n)
    assert r.status == 200, r
    assert r.header("Content-Type", "").startswith("application/json")
    assert r.json() == {"n": n, "value": value}


def test_fib_body_uses_json_dumps_default_separators(demo_server):
    r = demo_server.get("/fib?n=10")
    assert r.body == json.dumps({"n": 10, "value": 55}).encode()


@pytest.mark.parametrize("query", ["", "?n=", "?n=abc", "?n=-1", "?n=36", "?n=1.5", "?n=10x",
                                   "?n=99999999999999999999999", "?m=3"])
def test_fib_rejects_bad_n(demo_server, query):
    assert_bad_request(demo_server.get("/fib" + query), "'n'")


@pytest.mark.parametrize("query,count,last", [("?limit=2", 1, 2), ("?limit=10", 4, 7),
                                              ("?limit=100", 25, 97), ("", 1229, 9973),
                                              ("?limit=1000000", 78498, 999983)])
def test_primes(demo_server, query, count, last):
    r = demo_server.get("/primes" + query)
    assert r.status == 200, r
    body = r.json()
    assert (body["count"], body["last"]) == (count, last), body


@pytest.mark.parametrize("limit", ["0", "1", "-5", "2000001", "lots", "1e6"])
def test_primes_rejects_bad_limit(demo_server, limit):
    assert_bad_request(demo_server.get("/primes?limit=" + limit), "'limit'")


def mandelbrot_reference(size, max_iter):
    """Written independently of the handler: complex arithmetic instead of two floats."""
    inside = total = 0
    for y in range(size):
        for x in range(size):
            c = complex(3.0 * x / size - 2.0, 3.0 * y / size - 1.5)
            z, i = 0j, 0
            while i < max_iter and abs(z) <= 2.0:
                z, i = z * z + c, i + 1
            total += i
            inside += i == max_iter
    return inside, total


@pytest.mark.parametrize("query,size", [("?size=1", 1), ("?size=16", 16), ("", 64)])
def test_mandelbrot(demo_server, query, size):
    r = demo_server.get("/mandelbrot" + query)
    assert r.status == 200, r
    body = r.json()
    assert body["size"] == size
    inside, total = mandelbrot_reference(size, body["max_iter"])
    # abs(z) <= 2 and |z|^2 <= 4 may differ in the last bit on a boundary point.
    assert abs(body["inside"] - inside) <= 1 and abs(body["iterations"] - total) <= body["max_iter"]
    assert body["inside"] > 0 or size < 4


@pytest.mark.parametrize("size", ["0", "401", "-3", "big"])
def test_mandelbrot_rejects_bad_size(demo_server, size):
    assert_bad_request(demo_server.get("/mandelbrot?size=" + size), "'size'")


def test_nbody_matches_the_benchmarks_game(demo_server):
    r = demo_server.get("/nbody?steps=1000")
    assert r.status == 200, r
    body = r.json()
    # The published output of the benchmark for n=1000.
    assert body["steps"] == 1000
    assert round(body["energy_before"], 9) == -0.169075164
    assert round(body["energy_after"], 9) == -0.169087605


def test_nbody_default_steps(demo_server):
    body = demo_server.get("/nbody").json()
    assert body["steps"] == 1000 and round(body["energy_after"], 9) == -0.169087605


@pytest.mark.parametrize("steps", ["0", "200001", "x", "-1"])
def test_nbody_rejects_bad_steps(demo_server, steps):
    assert_bad_request(demo_server.get("/nbody?steps=" + steps), "'steps'")


@pytest.mark.parametrize("obj", [
    {"name": "gilgamesh", "tablets": 12, "nested": {"list": [1, 2.5, None, True]},
     "uni": "Uruk ☉ ü"},
    [1, 2, 3],
    "just a string",
    42,
    {},
])
def test_json_round_trip(demo_server, obj):
    r = demo_server.post("/json", json.dumps(obj).encode(),
                         headers={"Content-Type": "application/json"})
    assert r.status == 200, r
    body = r.json()
    assert body["received"] == obj
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    assert body["sha256"] == hashlib.sha256(canonical.encode()).hexdigest()
    if isinstance(obj, dict):
        assert body["keys"] == sorted(obj)
    if isinstance(obj, (dict, list, str)):
        assert body["length"] == len(obj)


@pytest.mark.parametrize("raw", [b"{not json", b"", b"{\"a\": 1", b"\xff\xfe", b"[1, 2,]"])
def test_json_rejects_invalid_body(demo_server, raw):
    r = demo_server.post("/json", raw, headers={"Content-Type": "application/json"})
    assert_bad_request(r, "JSON")


def test_sleep(demo_server):
    started = time.monotonic()
    r = demo_server.get("/sleep?ms=200")
    elapsed = time.monotonic() - started
    assert r.status == 200 and r.json() == {"slept_ms": 200}, r
    assert 0.19 <= elapsed < 5.0


def test_sleep_zero(demo_server):
    assert demo_server.get("/sleep?ms=0").json() == {"slept_ms": 0}


@pytest.mark.parametrize("query", ["", "?ms=-1", "?ms=10001", "?ms=soon"])
def test_sleep_rejects_bad_ms(demo_server, query):
    assert_bad_request(demo_server.get("/sleep" + query), "'ms'")


def test_whoami(demo_server):
    r = demo_server.get("/whoami")
    assert r.status == 200, r
    info = r.json()
    assert set(info) >= {"strategy", "worker", "interpreter_id", "pid", "thread_id"}, info
    assert info["strategy"] == demo_server.strategy
    assert 0 <= info["worker"] < demo_server.workers
    if demo_server.strategy != "processes":
        assert info["pid"] == demo_server.process.pid
    if demo_server.strategy == "subinterpreters":
        assert info["interpreter_id"] > 0  # never the main interpreter


def test_counter_increments(demo_server):
    first = demo_server.get("/counter").json()
    assert first["counter"] >= 1 and first["strategy"] == demo_server.strategy
    seen = {}
    for _ in range(20):
        info = demo_server.get("/counter").json()
        key = (info["pid"], info["interpreter_id"])
        assert info["counter"] > seen.get(key, 0), (info, seen)
        seen[key] = info["counter"]


def test_race(demo_server):
    r = demo_server.get("/race?n=500")
    assert r.status == 200, r
    body = r.json()
    assert body["n"] == 500 and body["expected_total"] >= 500, body
    assert body["lost_updates"] == body["expected_total"] - body["observed_total"], body
    assert body["log_length"] >= 0 and body["strategy"] == demo_server.strategy, body


@pytest.mark.parametrize("n", ["0", "100001", "many"])
def test_race_rejects_bad_n(demo_server, n):
    assert_bad_request(demo_server.get("/race?n=" + n), "'n'")
