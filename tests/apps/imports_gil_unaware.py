"""Test app: imports the tiny C extension `gil_unaware` (built by the test tree,
found through --pythonpath), which does not declare free-threading support."""
import gil_unaware

import gilgamesh


@gilgamesh.route("/answer")
def answer(request):
    """The extension's answer."""
    return {"answer": gil_unaware.answer()}
