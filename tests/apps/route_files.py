"""Test app: @gilgamesh.route handlers that answer with an open binary file, which the server
reads itself (tests/blackbox/test_file_answers.py). Files are named in $GILGAMESH_TEST_FILES;
each file's close() leaves a marker closed-<token> in $GILGAMESH_TEST_MARKERS.

  /file?name=N&token=T&skip=K   the file N, from byte K
  /typed?name=N                 the file as a Response's body, its type and a header given
  /async?name=N                 the same from an `async def` handler (collected, not handed over)
"""

import os

import gilgamesh
from wsgi_files import FILES, MarkedFile  # the same marked files, from the same folder


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
