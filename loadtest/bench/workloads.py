"""The workloads: which wrk profile, with which parameters, and what the
single-thread rate of its handlers must be measured on (for the ideal).

The runner passes every parameter to the profile explicitly, so this table is
what a run measures; the profiles' own defaults (the same values) are for
running wrk by hand.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Workload:
    name: str
    description: str
    params: dict = field(default_factory=dict)
    # GET target -> weight, for CPU-bound workloads: the ideal rate of the mix
    # is cores / sum(weight_i * seconds_i) * sum(weight_i). None: no ideal.
    cpu_mix: dict | None = None
    profile: str = ""  # profiles/<profile>.lua; empty: the workload's name
    # Requests one worker serves at once, the same on every server of the cell (gilgamesh
    # --threads N, a peer's threads_args); 0: each server at its own default.
    threads: int = 0
    in_default: bool = True  # run when --workloads is not given
    # The app that serves it: "route" (the run's --app, handlers.demo by default) or "asgi"
    # (ASGI_APP on every server: gilgamesh --asgi, the ASGI peers through asgi_demo.py).
    app: str = "route"
    # wrk connections on every server of the cell; 0: the run's --connections.
    connections: int = 0
    # What loads it: "wrk" (profiles/<profile>.lua) or "ws" (tools/ws_echo_load.py: WebSocket
    # round trips, params size= and binary=, the path in params path=).
    client: str = "wrk"
    # What its goodput counts, in tables and sentences: 2xx responses, or echoed round trips.
    unit: str = "responses"

    @property
    def profile_name(self):
        return self.profile or self.name

    def profile_args(self):
        return ["%s=%s" % (k, v) for k, v in sorted(self.params.items())]

    @property
    def per_s(self):
        """Its goodput's unit per second: "2xx/s" or "round trips/s"."""
        return "2xx/s" if self.unit == "responses" else self.unit + "/s"


THREAD_COUNTS = (1, 4, 16)  # the sleep-tN workloads
ASGI_APP = "asgi_bench:app"  # loadtest/asgi_bench.py: the ASGI workloads' app
ASGI_SLEEP_CONNECTIONS = 1000  # asgi-sleep: requests sleeping at once, on every server
WS_ECHO_CONNECTIONS = 50  # ws-echo, ws-echo-64k: WebSockets open at once, each one round trip at a time

_MIXED = {"w_hello": 50, "w_fib": 20, "w_primes": 15, "w_mandelbrot": 10, "w_nbody": 5,
          "fib_n": 22, "primes_limit": 100000, "mandelbrot_size": 32, "nbody_steps": 200}

WORKLOADS = {
    w.name: w
    for w in (
        Workload("hello", "GET /hello: trivial handler, measures the dispatch path"),
        Workload("fib", "GET /fib?n=25: pure-Python recursion, CPU-bound",
                 {"n": 25}, {"/fib?n=25": 1}),
        Workload("mixed", "50% /hello, 20% /fib?n=22, 15% /primes?limit=100000, "
                          "10% /mandelbrot?size=32, 5% /nbody?steps=200",
                 _MIXED,
                 {"/hello": _MIXED["w_hello"],
                  "/fib?n=%d" % _MIXED["fib_n"]: _MIXED["w_fib"],
                  "/primes?limit=%d" % _MIXED["primes_limit"]: _MIXED["w_primes"],
                  "/mandelbrot?size=%d" % _MIXED["mandelbrot_size"]: _MIXED["w_mandelbrot"],
                  "/nbody?steps=%d" % _MIXED["nbody_steps"]: _MIXED["w_nbody"]}),
        Workload("json", "POST /json with a 50-record JSON body (about 4 KB)", {"items": 50}),
        Workload("sleep", "GET /sleep?ms=10: the handler sleeps, I/O-bound", {"ms": 10}),
        # The same wait at N threads per worker on every server (peers without threads are
        # skipped); wrk opens at least workers x N connections. Not in the default run.
        *(Workload("sleep-t%d" % n, "GET /sleep?ms=10 at %d thread(s) per worker: gilgamesh "
                   "--threads %d, gunicorn gthread and uWSGI --threads %d" % (n, n, n),
                   {"ms": 10}, profile="sleep", threads=n, in_default=False)
          for n in THREAD_COUNTS),
        # ASGI: every server runs loadtest/asgi_bench.py (gilgamesh --asgi on 3.13, uvicorn and
        # Hypercorn on Debian's 3.11). Not in the default run; not mixed with the route workloads.
        Workload("asgi-hello", "GET /hello on a raw ASGI app (loadtest/asgi_bench.py): the dispatch path",
                 profile="hello", in_default=False, app="asgi"),
        Workload("starlette-hello", "GET /starlette/hello: a Starlette route returning PlainTextResponse",
                 {"path": "/starlette/hello"}, profile="get", in_default=False, app="asgi"),
        Workload("asgi-fib", "GET /fib?n=25 on the raw ASGI app: pure-Python recursion, CPU-bound",
                 {"n": 25}, {"/fib?n=25": 1}, profile="fib", in_default=False, app="asgi"),
        Workload("asgi-sleep", "GET /sleep?ms=1000 on the raw ASGI app: await asyncio.sleep(1), "
                 "%d connections at once" % ASGI_SLEEP_CONNECTIONS,
                 {"ms": 1000}, profile="sleep", in_default=False, app="asgi",
                 connections=ASGI_SLEEP_CONNECTIONS),
        # WebSocket echo on the same app: tools/ws_echo_load.py instead of wrk, goodput in round
        # trips (a message sent, its echo received and checked, then the next).
        Workload("ws-echo", "WebSocket /ws/echo on the raw ASGI app: %d connections, each sending a "
                 "32-byte text message and waiting for its echo before the next (round trips)"
                 % WS_ECHO_CONNECTIONS, {"path": "/ws/echo", "size": 32, "binary": 0},
                 in_default=False, app="asgi", connections=WS_ECHO_CONNECTIONS, client="ws",
                 unit="round trips"),
        Workload("ws-echo-64k", "WebSocket /ws/echo on the raw ASGI app: %d connections, each sending a "
                 "64 KiB binary message and waiting for its echo before the next (round trips)"
                 % WS_ECHO_CONNECTIONS, {"path": "/ws/echo", "size": 65536, "binary": 1},
                 in_default=False, app="asgi", connections=WS_ECHO_CONNECTIONS, client="ws",
                 unit="round trips"),
    )
}

# Every workload on loadtest/asgi_bench.py; `--workloads asgi` stands for its HTTP ones (wrk),
# `--workloads ws` for its WebSocket ones.
ASGI_WORKLOADS = tuple(name for name, w in WORKLOADS.items() if w.app == "asgi")
ASGI_GROUPS = {"asgi": tuple(n for n in ASGI_WORKLOADS if WORKLOADS[n].client == "wrk"),
               "ws": tuple(n for n in ASGI_WORKLOADS if WORKLOADS[n].client == "ws")}


def ideal_rate(workload, rates, cores):
    """Requests/s that `cores` cores would serve at the single-thread rates
    `rates` (target -> per_s), with no HTTP or dispatch cost; None if unknown."""
    if not workload.cpu_mix or not rates:
        return None
    seconds = 0.0
    for target, weight in workload.cpu_mix.items():
        rate = rates.get(target)
        if not rate:
            return None
        seconds += weight / rate
    return cores * sum(workload.cpu_mix.values()) / seconds
