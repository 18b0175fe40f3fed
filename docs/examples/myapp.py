"""The app the README and docs/handlers.md show: run it with

    build/gilgamesh --app myapp --pythonpath docs/examples

tests/blackbox/test_docs_examples.py runs the pages' examples against it.
"""

import os

import gilgamesh


@gilgamesh.route("/greet", methods=("GET", "POST"))
def greet(request):
    """Says hello to ?name=, or to the "name" of a JSON body."""
    body = request.json() if request.body else {}
    name = request.query.get("name") or (body.get("name") if isinstance(body, dict) else None)
    if not name:
        raise gilgamesh.HTTPError(400, "name is required")
    return {"hello": name}


ITEMS = {1: "apple", 2: "pear"}


@gilgamesh.route("/items/<int:item_id>")
def item(request, item_id):
    """One item by id; an unknown id is a bug here (a KeyError), so a 500."""
    return {"id": item_id, "name": ITEMS[item_id]}


@gilgamesh.route("/countdown")
def countdown(request):
    """Counts down from ?from= (3 by default), a line at a time: an answer that streams."""
    start = int(request.query.get("from", "3"))

    def lines():
        for n in range(start, 0, -1):
            yield "%d\n" % n  # sent at once, before the next line is made
        yield "liftoff\n"
    return lines()


@gilgamesh.route("/scores.csv")
def scores(request):
    """A file, as it is on disk: the server reads and sends it, and closes it."""
    return open(os.path.join(os.path.dirname(__file__), "scores.csv"), "rb")
