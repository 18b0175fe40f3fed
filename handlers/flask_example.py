"""A Flask app with a CPU-heavy route, served unchanged by gilgamesh:

    /usr/bin/python3 scripts/pure_python_site.py build/site-flask --flask
    build/gilgamesh --wsgi handlers.flask_example:app --pythonpath build/site-flask \
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
