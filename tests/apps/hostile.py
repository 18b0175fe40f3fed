"""Test app: route handlers that return what must never reach the wire, one per
rule the server checks before sending (status, header names and values, the
content type, the headers' total size), and strings that are not valid UTF-8.
Every bad response must become a 500 with the JSON error; /hello must keep
answering.
"""

import gilgamesh

# name -> the Response a handler returns; the server must refuse each one.
BAD = {
    "status-99": lambda: gilgamesh.Response("x", status=99),
    "status-100": lambda: gilgamesh.Response("x", status=100),
    "status-600": lambda: gilgamesh.Response("x", status=600),
    "status-1000": lambda: gilgamesh.Response("x", status=1000),
    "status-negative": lambda: gilgamesh.Response("x", status=-200),
    "name-nul": lambda: gilgamesh.Response("x", headers={"X-Bad\x00Name": "v"}),
    "name-space": lambda: gilgamesh.Response("x", headers={"X Bad": "v"}),
    "name-colon": lambda: gilgamesh.Response("x", headers={"X-Bad:": "v"}),
    "name-crlf": lambda: gilgamesh.Response("x", headers={"X-A\r\nSet-Cookie": "evil=1"}),
    "name-empty": lambda: gilgamesh.Response("x", headers={"": "v"}),
    "name-non-ascii": lambda: gilgamesh.Response("x", headers={"X-Caf\u00e9": "v"}),
    "value-crlf": lambda: gilgamesh.Response("x", headers={"X-A": "a\r\nSet-Cookie: evil=1"}),
    "value-lf": lambda: gilgamesh.Response("x", headers={"X-A": "a\nSet-Cookie: evil=1"}),
    "value-cr": lambda: gilgamesh.Response("x", headers={"X-A": "a\rSet-Cookie: evil=1"}),
    "value-nul": lambda: gilgamesh.Response("x", headers={"X-A": "a\x00evil"}),
    "value-control": lambda: gilgamesh.Response("x", headers={"X-A": "a\x1bevil"}),
    "value-del": lambda: gilgamesh.Response("x", headers={"X-A": "a\x7fevil"}),
    "content-type-crlf": lambda: gilgamesh.Response(
        "x", content_type="text/html\r\nSet-Cookie: evil=1"),
    "content-type-nul": lambda: gilgamesh.Response("x", content_type="text/html\x00evil"),
    "header-70k": lambda: gilgamesh.Response("x", headers={"X-Big": "a" * 70000}),
    "headers-over-64k": lambda: gilgamesh.Response(
        "x", headers=[("X-H%d" % i, "v" * 60) for i in range(1200)]),
}


def make(name):
    def handler(request):
        return BAD[name]()
    handler.__doc__ = "Returns a response that breaks a rule: %s." % name
    return handler


for _name in BAD:
    gilgamesh.route("/bad/" + _name)(make(_name))


@gilgamesh.route("/hello")
def hello(request):
    """Proves the worker still serves."""
    return "hello"


@gilgamesh.route("/fine-headers")
def fine_headers(request):
    """What is allowed: a tab and obs-text in a value, 1xx-free status, a custom token name."""
    return gilgamesh.Response("ok", status=299, headers={"X-Tab": "a\tb", "X-Token!#$%&'*+-.^_`|~": "1",
                                                        "X-Latin": "caf\u00e9"})


def surrogate_doc(request):
    return "ok"


def surrogate_doc_escaped(request):
    return "ok"


# Set at run time: CPython 3.13 cannot compile a docstring literal with a lone surrogate.
surrogate_doc.__doc__ = "Unpaired \ud800 in a docstring."
surrogate_doc_escaped.__doc__ = "Escaped byte \udcff in a docstring."
gilgamesh.route("/surrogate-doc")(surrogate_doc)
gilgamesh.route("/surrogate-doc-escaped")(surrogate_doc_escaped)


@gilgamesh.route("/surrogate-error")
def surrogate_error(request):
    """HTTPError whose message holds a lone surrogate (an escaped byte that is not UTF-8)."""
    raise gilgamesh.HTTPError(400, "bad \udcff value")


@gilgamesh.route("/surrogate-exception")
def surrogate_exception(request):
    """An unexpected exception whose text holds lone surrogates."""
    raise ValueError("lone \udcff and \ud800 surrogates")


@gilgamesh.route('/we"ird\\path')
def weird_path(request):
    """A path with a quote and a backslash: escaped in /metrics labels."""
    return "weird"
