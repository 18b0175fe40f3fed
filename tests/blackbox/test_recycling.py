"""--max-requests N and --max-requests-jitter J: a worker is recycled (a fresh
sub-interpreter or process) after N + 0..J requests, drawn anew for each worker;
no effect under threads and free-threaded, whose one interpreter is shared.

Seen from outside with one worker and sequential requests: /whoami's (pid,
interpreter_id) changes at each recycle, so the lengths of its runs are the
limits the pool drew."""

from itertools import groupby

from gilgamesh_harness import server_stats

RECYCLING = ("subinterpreters", "processes")


def run_lengths(server, requests):
    """Sequential GET /whoami; the lengths of the runs of one (pid, interpreter_id)."""
    identities = []
    for _ in range(requests):
        r = server.get("/whoami")
        assert r.status == 200, r
        info = r.json()
        identities.append((info["pid"], info["interpreter_id"]))
    return [len(list(run)) for _, run in groupby(identities)], identities


def test_max_requests_recycles_after_exactly_n(start_server, strategy):
    server = start_server(workers=1, args=["--max-requests", "3"])
    lengths, identities = run_lengths(server, 13)
    if strategy in RECYCLING:
        # 13 requests: four workers served 3 each, a fifth has served one so far.
        assert lengths == [3, 3, 3, 3, 1], identities
        assert len(set(identities)) == 5, identities  # each recycle is a fresh worker
        assert server_stats(server)["recycles_total"] == 4
    else:
        assert lengths == [13], identities
        assert server_stats(server)["recycles_total"] == 0


def test_max_requests_jitter_draws_each_limit_in_range(start_server, strategy):
    n, jitter = 2, 3
    server = start_server(workers=1, args=["--max-requests", str(n), "--max-requests-jitter", str(jitter)])
    lengths, identities = run_lengths(server, 60)
    if strategy not in RECYCLING:
        assert lengths == [60], identities
        return
    complete = lengths[:-1]  # the last worker has not reached its limit yet
    assert len(complete) >= 60 // (n + jitter) - 1, lengths
    assert all(n <= k <= n + jitter for k in complete), lengths
    # Drawn, not fixed: with 4 equally likely limits and at least 11 workers, every
    # limit being the same has a chance under 1e-5.
    assert len(set(complete)) > 1, lengths
    assert lengths[-1] <= n + jitter, lengths
    recycles = server_stats(server)["recycles_total"]
    # The last worker may have reached its limit with the last request and be recycling now.
    assert recycles == len(complete) or (recycles == len(complete) + 1 and lengths[-1] >= n), \
        (recycles, lengths)
