"""A Flask app with a CPU-heavy route, served unchanged by gilgamesh. Flask 3.1 is
Debian trixie's, built for Python 3.13 (scripts/fetch-trixie-site.sh unpacks it and
what it imports into a site folder in the cache and prints the folder):

    make trixie-site TRIXIE_PACKAGES=python3-flask
    build/gilgamesh --wsgi handlers.flask_example:app \
        --pythonpath "$(bash scripts/fetch-trixie-site.sh --print-path python3-flask)" \
        --strategy subinterpreters --workers 2
    curl http://127.0.0.1:8080/fib/25     # {"n": 25, "value": 75025}

Nothing here knows about gilgamesh: gunicorn or uWSGI serve it the same way.
"""

from flask import Flask, abort, jsonify

app = Flask(__name__)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@app.get("/")
def index():
    return jsonify(routes=["/fib/<n>", "/hello"])


@app.get("/hello")
def hello():
    return "hello"


@app.get("/fib/<int:n>")
def fib_route(n):
    if n > 32:
        abort(400, description="n must be at most 32")
    return jsonify(n=n, value=fib(n))
