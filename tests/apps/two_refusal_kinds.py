"""Test app: imports two C extensions that own-GIL sub-interpreters refuse for two
different reasons: tests/ext's gil_unaware (single-phase init) and shared_gil_only
(multi-phase init without per-interpreter GIL support). Under `subinterpreters` the
start-up error and `gilgamesh check` must give each its own reason.
Needs build/test-ext/<build> on --pythonpath."""

import gil_unaware
import shared_gil_only

import gilgamesh


@gilgamesh.route("/answer")
def answer(request):
    """Both extensions' answers."""
    return {"answers": [gil_unaware.answer(), shared_gil_only.answer()]}
