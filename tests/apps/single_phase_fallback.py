"""Test app: uses tests/ext's pyinit_imports (a single-phase extension whose PyInit
imports a Python module, the shape of MarkupSafe's speedups) when it loads, and a
pure-Python fallback when it does not, as MarkupSafe does. Sub-interpreters refuse
the extension (cleanly on gilgamesh's patched CPython; with --preload on any CPython),
so they serve the fallback. Needs build/test-ext/<build> on --pythonpath."""

import gilgamesh

try:
    import pyinit_imports  # noqa: F401
    IMPLEMENTATION = "c"
except ImportError:
    IMPLEMENTATION = "python"


@gilgamesh.route("/implementation")
def implementation(request):
    """Which implementation this worker got."""
    return {"implementation": IMPLEMENTATION}
