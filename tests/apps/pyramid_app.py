"""Test app: Pyramid from Debian trixie's python3-pyramid (with zope.interface, WebOb,
venusian), served with --wsgi pyramid_app:app (tests/blackbox/test_real_frameworks.py)."""

import os

from pyramid.config import Configurator
from pyramid.response import Response


def hello(request):
    return Response("hello from pyramid", content_type="text/plain")


def item(request):
    return {"n": int(request.matchdict["n"]), "q": request.params.getall("q"), "pid": os.getpid()}


def echo(request):
    return {"json": request.json_body, "length": request.content_length, "type": request.content_type}


with Configurator() as config:
    config.add_route("hello", "/hello")
    config.add_route("item", r"/item/{n:\d+}")
    config.add_route("echo", "/echo", request_method="POST")
    config.add_view(hello, route_name="hello")
    config.add_view(item, route_name="item", renderer="json")
    config.add_view(echo, route_name="echo", renderer="json")
    app = config.make_wsgi_app()
