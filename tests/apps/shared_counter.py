"""Test app: a module-level counter that every request increments, the kind of state
that `threads` and `free-threaded` workers share (and sub-interpreters and processes
each keep their own copy of). `gilgamesh check --request 'GET /count'` must see it."""

import gilgamesh

HITS = {"count": 0}
LAST_PATH = None


@gilgamesh.route("/count")
def count(request):
    """Counts requests in a module global."""
    global LAST_PATH
    HITS["count"] += 1
    LAST_PATH = request.path
    return {"count": HITS["count"]}


@gilgamesh.route("/pure")
def pure(request):
    """Touches no module state."""
    return {"ok": True}
