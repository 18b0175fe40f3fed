"""Test app: a small Flask application, served unchanged (`--wsgi flask_app:app`).

Flask 3.1 comes from Debian trixie's python3-flask, built for Python 3.13, with
what it imports (MarkupSafe's C speedups as shipped): scripts/fetch-trixie-site.sh
unpacks them into a site folder the suite passes with --pythonpath.
"""

import time

from flask import Flask, Response, abort, jsonify, request, send_file, stream_with_context

app = Flask(__name__)


def fib(n):
    return n if n < 2 else fib(n - 1) + fib(n - 2)


@app.route("/")
def index():
    return "hello from flask"


@app.route("/fib/<int:n>")
def fib_route(n):
    if n > 30:
        abort(400, "n must be at most 30")
    return jsonify(n=n, value=fib(n))


@app.route("/echo", methods=["POST"])
def echo():
    return jsonify(json=request.get_json(), args=request.args.to_dict(),
                   content_type=request.content_type, length=request.content_length)


@app.route("/upload", methods=["POST"])
def upload():
    f = request.files["file"]
    data = f.read()
    return jsonify(filename=f.filename, size=len(data), form=request.form.to_dict())


@app.route("/cookie")
def cookie():
    response = jsonify(seen=request.cookies.get("flavour"))
    response.set_cookie("flavour", "oatmeal")
    return response


@app.route("/url")
def url():
    return jsonify(url=request.url, script_root=request.script_root, path=request.path,
                   remote_addr=request.remote_addr)


@app.route("/download")
def download():
    """This module's own source through send_file (werkzeug hands it to wsgi.file_wrapper;
    a Range request gets 206, werkzeug seeking the file to the range)."""
    return send_file(__file__, mimetype="text/x-python")


@app.route("/boom")
def boom():
    raise RuntimeError("flask handler failed")


@app.route("/stream")
def stream():
    """A streamed answer, as Flask's docs write one: lines from a generator, `delay_ms` apart."""
    chunks = request.args.get("chunks", 3, type=int)
    delay_s = request.args.get("delay_ms", 300, type=int) / 1000.0

    def lines():
        for i in range(chunks):
            if i:
                time.sleep(delay_s)
            yield "line %d of %s\n" % (i, request.path)  # the request, still there mid-stream
    return Response(stream_with_context(lines()), mimetype="text/plain")
