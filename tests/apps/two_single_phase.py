"""Test app: imports two single-phase-init C extensions, tests/ext's gil_unaware and
the first single-phase stdlib extension this Python has (through single_phase_ext.py).
Under `subinterpreters` the start-up error must name both, not only the first.
Needs build/test-ext/<build> on --pythonpath."""

import gil_unaware
import single_phase_ext

import gilgamesh


@gilgamesh.route("/extensions")
def extensions(request):
    """Names the extensions this app imported."""
    return {"extensions": [gil_unaware.__name__, single_phase_ext.EXTENSION.__name__]}
