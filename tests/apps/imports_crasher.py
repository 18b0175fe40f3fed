"""Test app: imports tests/ext's crash_in_subinterpreter, whose import kills the process
in a sub-interpreter (as an import that crashes CPython does) and works in the main
interpreter. The start-up probe must name it under `subinterpreters`, and `processes`
and `threads` must serve it. Needs build/test-ext/<build> on --pythonpath."""

import crash_in_subinterpreter

import gilgamesh


@gilgamesh.route("/answer")
def answer(request):
    """The extension's answer."""
    return {"answer": crash_in_subinterpreter.answer()}
