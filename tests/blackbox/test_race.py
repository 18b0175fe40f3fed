"""GET /race: unsynchronised updates of module state from concurrent requests.

Every request is collected and counted (a client thread that raised is a
failure), and the totals are checked against what the test itself sent to each
interpreter: where workers share no Python state (subinterpreters, processes)
no update can be lost; where they share it (threads, free-threaded) the
observed total is at most what was sent, and the server's lost_updates is
exactly the difference."""

import threading
from collections import defaultdict

CLIENTS = 4
REQUESTS = 6
N = 5000


def hammer(server, clients=CLIENTS, requests=REQUESTS, n=N):
    """clients x requests GET /race?n= from threads; every response (or exception) kept."""
    responses, failures = [], []
    lock = threading.Lock()

    def run():
        try:
            for _ in range(requests):
                r = server.get("/race?n=%d" % n, timeout=60)
                with lock:
                    responses.append(r)
        except Exception as e:  # recorded, asserted by the caller
            with lock:
                failures.append(e)

    threads = [threading.Thread(target=run) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not any(t.is_alive() for t in threads), "a /race client hung"
    assert not failures, failures
    assert len(responses) == clients * requests, (len(responses), clients * requests)
    for r in responses:
        assert r.status == 200, r
        assert r.json()["n"] == n, r
    return [r.json() for r in responses]


def interpreter_of(body):
    return body["pid"], body["interpreter_id"]


def test_race_totals_match_what_was_sent(start_server, strategy):
    server = start_server(workers=2)
    answers = hammer(server)
    # Then one reading per interpreter, taken with no other /race running: settled.
    expected_interpreters = 2 if strategy in ("subinterpreters", "processes") else 1
    final = {}
    for _ in range(200):
        r = server.get("/race?n=1")
        assert r.status == 200, r
        body = r.json()
        assert body["settled"] is True, body  # nothing else runs /race now
        answers.append(body)
        final[interpreter_of(body)] = body
        if len(final) == expected_interpreters:
            break
    assert len(final) == expected_interpreters, \
        "200 sequential requests reached %d interpreter(s), expected %d" % (
            len(final), expected_interpreters)

    # What the test sent to each interpreter: the sum of n over the requests it answered.
    sent = defaultdict(int)
    for body in answers:
        sent[interpreter_of(body)] += body["n"]
    assert set(sent) == set(final), (sorted(sent), sorted(final))
    assert sum(sent.values()) == CLIENTS * REQUESTS * N + sum(1 for b in answers if b["n"] == 1)

    for key, body in final.items():
        assert body["expected_total"] == sent[key], (key, body, sent[key])
        assert 0 < body["observed_total"] <= sent[key], (key, body, sent[key])
        assert body["lost_updates"] == sent[key] - body["observed_total"], (key, body)
        assert body["log_length"] == 0, body
        assert body["strategy"] == strategy, body
        if strategy in ("subinterpreters", "processes"):
            # one thread per interpreter: nothing to race with
            assert body["observed_total"] == sent[key], (key, body, sent[key])


def test_race_validates_n(demo_server):
    r = demo_server.get("/race?n=0")
    assert r.status == 400 and "'n'" in r.json()["error"], r
