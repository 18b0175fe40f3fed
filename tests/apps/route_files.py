"""Test app: @gilgamesh.route handlers that answer with an open binary file, which the server
reads itself (tests/blackbox/test_file_answers.py). Files are named in $GILGAMESH_TEST_FILES;
each file's close() leaves a marker closed-<token> in $GILGAMESH_TEST_MARKERS.

  /file?name=N&token=T&skip=K   the file N, from byte K
  /typed?name=N                 the file as a Response's body, its type and a header given
  /async?name=N                 the same from an `async def` handler (collected, not handed over)
"""

import io
import os

import gilgamesh

FILES = os.environ.get("GILGAMESH_TEST_FILES", "")
MARKERS = os.environ.get("GILGAMESH_TEST_MARKERS", "")


class MarkedFile(io.BufferedReader):
    def __init__(self, path, marker):
        super().__init__(io.FileIO(path, "rb"))
        self.marker = marker

    def close(self):
        if not self.closed and MARKERS:
            with open(os.path.join(MARKERS, self.marker), "w") as f:
                f.write("%d\n" % os.getpid())
        super().close()


def _open(request):
    name = request.query["name"]
    f = MarkedFile(os.path.join(FILES, name), "closed-" + request.query.get("token", name))
    skip = int(request.query.get("skip", "0"))
    if skip:
        f.read(skip)
    return f


@gilgamesh.route("/file", methods=("GET", "HEAD"))
def file(request):
    return _open(request)


@gilgamesh.route("/typed")
def typed(request):
    return gilgamesh.Response(_open(request), status=203, content_type="application/pdf",
                              headers={"X-Report": "yes"})


@gilgamesh.route("/async")
async def async_file(request):
    return _open(request)
