"""Test app: a WSGI application that imports a single-phase-init C extension
(see single_phase_ext.py), which sub-interpreters refuse to load."""

import single_phase_ext  # noqa: F401  (the import is the point)


def app(environ, start_response):
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [single_phase_ext.EXTENSION.__name__.encode()]
