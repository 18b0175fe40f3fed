"""Demo workloads for gilgamesh: CPU-bound, sleep-bound and introspection routes.

Every handler validates its parameters and answers nonsense with a 400. The
module is imported once per interpreter (one per worker under
`subinterpreters`), so import time stays cheap: no threads, no work, stdlib
only.
"""

import hashlib
import json
import re
import threading
import time

import gilgamesh

_INTEGER = re.compile(r"-?[0-9]{1,12}")


def _int_param(request, name, low, high, default=None):
    """The query parameter `name` as an int in low..high, else HTTPError(400)."""
    raw = request.query.get(name)
    if raw is None:
        if default is None:
            raise gilgamesh.HTTPError(400, "query parameter '%s' is required (an integer %d..%d)"
                                      % (name, low, high))
        return default
    if not _INTEGER.fullmatch(raw):
        raise gilgamesh.HTTPError(400, "query parameter '%s' must be an integer %d..%d, got %r"
                                  % (name, low, high, raw[:40]))
    value = int(raw)
    if not low <= value <= high:
        raise gilgamesh.HTTPError(400, "query parameter '%s' must be between %d and %d, got %d"
                                  % (name, low, high, value))
    return value


@gilgamesh.route("/hello")
def hello(request):
    """Plain-text "hello": the cheapest possible handler."""
    return "hello"


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@gilgamesh.route("/fib")
def fib_route(request):
    """Naive recursive Fibonacci of n (0..35): pure CPU, exponential in n."""
    n = _int_param(request, "n", 0, 35)
    return {"n": n, "value": fib(n)}


def count_primes(limit):
    """(count, largest) of the primes <= limit, by the sieve of Eratosthenes."""
    sieve = bytearray([1]) * (limit + 1)
    sieve[0] = sieve[1] = 0
    for p in range(2, int(limit ** 0.5) + 1):
        if sieve[p]:
            sieve[p * p::p] = bytes(len(range(p * p, limit + 1, p)))
    last = limit
    while not sieve[last]:
        last -= 1
    return sum(sieve), last


@gilgamesh.route("/primes")
def primes_route(request):
    """Count the primes up to limit (2..2000000, default 10000) with a sieve."""
    limit = _int_param(request, "limit", 2, 2_000_000, default=10_000)
    count, last = count_primes(limit)
    return {"limit": limit, "count": count, "last": last}


def mandelbrot(size, max_iter):
    """(points inside, total iterations) of a size x size grid over [-2,1]x[-1.5,1.5]."""
    inside = 0
    total = 0
    for y in range(size):
        ci = 3.0 * y / size - 1.5
        for x in range(size):
            cr = 3.0 * x / size - 2.0
            zr = zi = 0.0
            i = 0
            while i < max_iter and zr * zr + zi * zi <= 4.0:
                zr, zi = zr * zr - zi * zi + cr, 2.0 * zr * zi + ci
                i += 1
            total += i
            if i == max_iter:
                inside += 1
    return inside, total


@gilgamesh.route("/mandelbrot")
def mandelbrot_route(request):
    """Escape-time Mandelbrot on a size x size grid (1..400, default 64), summarised."""
    size = _int_param(request, "size", 1, 400, default=64)
    max_iter = _int_param(request, "iterations", 1, 1000, default=50)
    inside, total = mandelbrot(size, max_iter)
    return {"size": size, "max_iter": max_iter, "inside": inside, "iterations": total}


_PI = 3.14159265358979323
_SOLAR_MASS = 4 * _PI * _PI
_DAYS_PER_YEAR = 365.24

# The Computer Language Benchmarks Game's n-body system: (position, velocity, mass).
_BODIES = (
    ((0.0, 0.0, 0.0), (0.0, 0.0, 0.0), _SOLAR_MASS),  # sun
    ((4.84143144246472090e+00, -1.16032004402742839e+00, -1.03622044471123109e-01),
     (1.66007664274403694e-03, 7.69901118419740425e-03, -6.90460016972063023e-05),
     9.54791938424326609e-04),  # jupiter
    ((8.34336671824457987e+00, 4.12479856412430479e+00, -4.03523417114321381e-01),
     (-2.76742510726862411e-03, 4.99852801234917238e-03, 2.30417297573763929e-05),
     2.85885980666130812e-04),  # saturn
    ((1.28943695621391310e+01, -1.51111514016986312e+01, -2.23307578892655734e-01),
     (2.96460137564761618e-03, 2.37847173959480950e-03, -2.96589568540237556e-05),
     4.36624404335156298e-05),  # uranus
    ((1.53796971148509165e+01, -2.59193146099879641e+01, 1.79258772950371181e-01),
     (2.68067772490389322e-03, 1.62824170038242295e-03, -9.51592254519715870e-05),
     5.15138902046611451e-05),  # neptune
)


def _energy(bodies):
    e = 0.0
    for i, (p1, v1, m1) in enumerate(bodies):
        e += 0.5 * m1 * (v1[0] * v1[0] + v1[1] * v1[1] + v1[2] * v1[2])
        for p2, _, m2 in bodies[i + 1:]:
            dx, dy, dz = p1[0] - p2[0], p1[1] - p2[1], p1[2] - p2[2]
            e -= m1 * m2 / (dx * dx + dy * dy + dz * dz) ** 0.5
    return e


def nbody(steps, dt=0.01):
    """(energy before, energy after) advancing the five-body system `steps` times."""
    # Fresh mutable copies: a request never sees another request's state.
    bodies = [([p[0], p[1], p[2]], [v[0] * _DAYS_PER_YEAR, v[1] * _DAYS_PER_YEAR,
                                    v[2] * _DAYS_PER_YEAR], m * _SOLAR_MASS if i else m)
              for i, (p, v, m) in enumerate(_BODIES)]
    px = py = pz = 0.0
    for _, v, m in bodies:
        px += v[0] * m
        py += v[1] * m
        pz += v[2] * m
    sun_v, sun_m = bodies[0][1], bodies[0][2]
    sun_v[0], sun_v[1], sun_v[2] = -px / sun_m, -py / sun_m, -pz / sun_m
    before = _energy(bodies)
    pairs = [(bodies[i], bodies[j]) for i in range(len(bodies)) for j in range(i + 1, len(bodies))]
    for _ in range(steps):
        for (p1, v1, m1), (p2, v2, m2) in pairs:
            dx, dy, dz = p1[0] - p2[0], p1[1] - p2[1], p1[2] - p2[2]
            mag = dt * (dx * dx + dy * dy + dz * dz) ** -1.5
            b1 = m1 * mag
            b2 = m2 * mag
            v1[0] -= dx * b2
            v1[1] -= dy * b2
            v1[2] -= dz * b2
            v2[0] += dx * b1
            v2[1] += dy * b1
            v2[2] += dz * b1
        for p, v, _ in bodies:
            p[0] += dt * v[0]
            p[1] += dt * v[1]
            p[2] += dt * v[2]
    return before, _energy(bodies)


@gilgamesh.route("/nbody")
def nbody_route(request):
    """Classic n-body simulation for steps (1..200000, default 1000): energy before and after."""
    steps = _int_param(request, "steps", 1, 200_000, default=1000)
    before, after = nbody(steps)
    return {"steps": steps, "energy_before": before, "energy_after": after}


@gilgamesh.route("/json", methods=("POST",))
def json_route(request):
    """Parse the JSON body and echo it back with its type, size and canonical SHA-256."""
    obj = request.json()
    canonical = json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    result = {
        "received": obj,
        "type": type(obj).__name__,
        "sha256": hashlib.sha256(canonical.encode("utf-8")).hexdigest(),
    }
    if isinstance(obj, dict):
        result["keys"] = sorted(obj)
    if isinstance(obj, (dict, list, str)):
        result["length"] = len(obj)
    return result


@gilgamesh.route("/sleep")
def sleep_route(request):
    """Sleep ms milliseconds (0..10000) without holding the GIL: I/O-bound stand-in."""
    ms = _int_param(request, "ms", 0, 10_000)
    time.sleep(ms / 1000.0)
    return {"slept_ms": ms}


@gilgamesh.route("/whoami")
def whoami(request):
    """The worker that ran this request, as gilgamesh.worker_info() (?ms= sleeps first)."""
    ms = _int_param(request, "ms", 0, 1000, default=0)
    if ms:
        time.sleep(ms / 1000.0)
    return gilgamesh.worker_info()


# Module state: one counter per interpreter (per worker under `subinterpreters`
# and `processes`, shared by every worker under `threads` and `free-threaded`).
_counter = 0
_counter_lock = threading.Lock()


@gilgamesh.route("/counter")
def counter(request):
    """Increment this interpreter's module-level counter; shows which state is shared."""
    global _counter
    with _counter_lock:
        _counter += 1
        value = _counter
    return {"counter": value, **gilgamesh.worker_info()}


# Shared without a lock on purpose. Every key exists from the start, so the
# dict never changes size and summing it while others write cannot raise.
_RACE_SLOTS = 64
_race_counts = dict.fromkeys(range(_RACE_SLOTS), 0)
_race_log = []
# What the racy counters should add up to, kept under a lock.
_race_lock = threading.Lock()
_race_expected = 0
_race_running = 0


@gilgamesh.route("/race")
def race(request):
    """n unsynchronised read-modify-write updates (1..100000) of module state: expected vs observed."""
    global _race_expected, _race_running
    n = _int_param(request, "n", 1, 100_000, default=1000)
    with _race_lock:
        _race_running += 1
    counts, log = _race_counts, _race_log
    for i in range(n):
        slot = i % _RACE_SLOTS
        counts[slot] = counts[slot] + 1  # read-modify-write: racy across threads
        log.append(i)
        log.pop()  # every pop follows this thread's own append: never on an empty list
    with _race_lock:
        _race_running -= 1
        _race_expected += n
        expected = _race_expected
        # With no other /race running in this interpreter, the totals are final.
        settled = _race_running == 0
        observed = sum(counts.values())
    return {
        "n": n,
        "expected_total": expected,
        "observed_total": observed,
        "lost_updates": expected - observed,
        "settled": settled,
        "log_length": len(log),
        **gilgamesh.worker_info(),
    }
