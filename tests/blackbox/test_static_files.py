"""Static files the server answers itself (--static-path-mount, --static-path-route,
--static-path-expires, --static-path-dir-to-file; server/http/static_files.hpp), beside the app.

The answers come from the I/O thread, the same on every strategy: the cases run against one
server of the first strategy (GILGAMESH_STRATEGIES), with `processes` added for the case that
the app and the files are served side by side. A real app's real files: Django's admin static
folder from Debian trixie's python3-django, served beside the Django site."""

import gzip
import os
import subprocess
import time
from email.utils import formatdate
from pathlib import Path

import pytest

from gilgamesh_harness import APPS_DIR, GilgameshServer, REPO, run_cli, strategies

SMALL = b"body { color: #333; }\n"
BIG_SIZE = 3 * 1024 * 1024 + 17  # read in pieces as the client takes them (above 256 KiB)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("static")
    (root / "css").mkdir()
    (root / "css" / "site.css").write_bytes(SMALL)
    (root / "css" / "site.css.gz").write_bytes(gzip.compress(SMALL))
    (root / "css" / "site.css.br").write_bytes(b"brotli stand-in")  # served as it is: never decoded here
    (root / "js").mkdir()
    (root / "js" / "app.min.js").write_bytes(b"console.log(1);\n")
    (root / "docs").mkdir()
    (root / "docs" / "index.html").write_bytes(b"<h1>docs</h1>\n")
    (root / "empty").mkdir()
    (root / "big.bin").write_bytes(os.urandom(BIG_SIZE))
    (root / "a b.txt").write_bytes(b"spaced\n")
    (root / ".env").write_bytes(b"SECRET=hidden-dotfile\n")
    outside = tmp_path_factory.mktemp("outside")
    (outside / "secret.txt").write_bytes(b"secret outside the mount\n")
    (root / "leak.txt").symlink_to(outside / "secret.txt")
    (root / "alias.css").symlink_to(root / "css" / "site.css")  # a link that stays inside: served
    os.mkfifo(root / "pipe")
    media = tmp_path_factory.mktemp("media")
    (media / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\nnot really")
    return root, media


@pytest.fixture(scope="module")
def server(gilgamesh_bin, files):
    root, media = files
    s = GilgameshServer(strategies()[0], workers=1, args=[
        "--static-path-mount", str(root), "--static-path-route", "/static",
        "--static-path-mount", str(media), "--static-path-route", "/media/",
        "--static-path-expires", "3600", "--static-path-dir-to-file", "index.html", "--access-log"]).start()
    yield s
    assert s.stop() == 0, s.log()[-3000:]


def test_a_file_is_served_with_its_type_length_and_validators(server, files):
    root, _ = files
    r = server.get("/static/css/site.css")
    assert r.status == 200, r
    assert r.body == SMALL
    assert r.header("Content-Type") == "text/css; charset=utf-8"
    assert r.header("Content-Length") == str(len(SMALL))
    st = (root / "css" / "site.css").stat()
    assert r.header("ETag") == '"%x-%x"' % (int(st.st_mtime), st.st_size)
    assert r.header("Last-Modified") == formatdate(int(st.st_mtime), usegmt=True)
    assert r.header("Cache-Control") == "max-age=3600"
    assert r.header("Accept-Ranges") == "bytes"
    assert r.header("X-Content-Type-Options") == "nosniff"
    assert r.header("Server", "").startswith("gilgamesh/") and r.header("X-Request-Id")
    assert server.get("/static/js/app.min.js").header("Content-Type") == "text/javascript; charset=utf-8"
    assert server.get("/static/a%20b.txt").body == b"spaced\n"
    assert server.get("/static/alias.css").body == SMALL
    photo = server.get("/media/photo.png")  # the second mount, its route given with a '/'
    assert photo.status == 200 and photo.header("Content-Type") == "image/png", photo
    # The app keeps every other path, /staticky included.
    assert server.get("/hello").body == b"hello"
    assert server.get("/staticky").status == 404 and b"no route" in server.get("/staticky").body
    assert " GET /static/css/site.css 200 %d " % len(SMALL) in server.log()  # the access log counts it


def test_head_says_the_length_and_sends_no_body(server):
    with server.raw() as conn:
        r = conn.request("HEAD", "/static/big.bin", headers={"Host": "t"})
        assert r.status == 200 and r.header("Content-Length") == str(BIG_SIZE), r
        assert r.body == b""
        again = conn.request("GET", "/static/css/site.css", headers={"Host": "t"})  # nothing was left on the wire
        assert again.status == 200 and again.body == SMALL


def test_conditional_requests_get_304(server):
    first = server.get("/static/css/site.css")
    etag, modified = first.header("ETag"), first.header("Last-Modified")
    for inm in (etag, "W/" + etag, '"other", ' + etag, "*"):
        r = server.get("/static/css/site.css", headers={"If-None-Match": inm})
        assert r.status == 304 and r.body == b"", (inm, r)
        assert r.header("ETag") == etag and r.header("Cache-Control") == "max-age=3600"
    assert server.get("/static/css/site.css", headers={"If-None-Match": '"other"'}).status == 200
    assert server.get("/static/css/site.css", headers={"If-Modified-Since": modified}).status == 304
    earlier = formatdate(time.time() - 10 * 365 * 86400, usegmt=True)
    assert server.get("/static/css/site.css", headers={"If-Modified-Since": earlier}).status == 200
    assert server.get("/static/css/site.css", headers={"If-Modified-Since": "yesterday"}).status == 200
    # If-None-Match decides when both are sent (RFC 9110 13.2.2).
    both = {"If-None-Match": '"other"', "If-Modified-Since": modified}
    assert server.get("/static/css/site.css", headers=both).status == 200


def test_a_compressed_copy_goes_to_a_client_that_takes_its_coding(server, files):
    root, _ = files
    plain = server.get("/static/css/site.css")
    assert plain.header("Content-Encoding") is None and plain.header("Vary") is None, plain
    gz = server.get("/static/css/site.css", headers={"Accept-Encoding": "gzip"})
    assert gz.status == 200 and gz.header("Content-Encoding") == "gzip", gz
    assert gzip.decompress(gz.body) == SMALL and gz.body == (root / "css" / "site.css.gz").read_bytes()
    assert gz.header("Content-Type") == "text/css; charset=utf-8" and gz.header("Vary") == "Accept-Encoding"
    assert gz.header("ETag") != plain.header("ETag")  # another representation, another tag
    br = server.get("/static/css/site.css", headers={"Accept-Encoding": "gzip, deflate, br"})
    assert br.header("Content-Encoding") == "br" and br.body == b"brotli stand-in", br  # br first
    assert server.get("/static/css/site.css", headers={"Accept-Encoding": "gzip;q=0"}).body == SMALL
    again = server.get("/static/css/site.css", headers={"Accept-Encoding": "gzip", "If-None-Match": gz.header("ETag")})
    assert again.status == 304 and again.header("Vary") == "Accept-Encoding", again
    part = server.get("/static/css/site.css", headers={"Accept-Encoding": "gzip", "Range": "bytes=0-1"})
    assert part.status == 206 and part.body == b"\x1f\x8b", part  # a range of the gzip representation
    # A file without copies is the same for every client.
    js = server.get("/static/js/app.min.js", headers={"Accept-Encoding": "gzip, br"})
    assert js.header("Content-Encoding") is None and js.body == b"console.log(1);\n", js


def test_one_byte_range_gets_206_and_one_past_the_end_416(server, files):
    root, _ = files
    size = len(SMALL)
    r = server.get("/static/css/site.css", headers={"Range": "bytes=2-5"})
    assert r.status == 206 and r.body == SMALL[2:6], r
    assert r.header("Content-Range") == "bytes 2-5/%d" % size and r.header("Content-Length") == "4"
    assert server.get("/static/css/site.css", headers={"Range": "bytes=-4"}).body == SMALL[-4:]
    assert server.get("/static/css/site.css", headers={"Range": "bytes=10-"}).body == SMALL[10:]
    past = server.get("/static/css/site.css", headers={"Range": "bytes=%d-" % size})
    assert past.status == 416 and past.header("Content-Range") == "bytes */%d" % size, past
    several = server.get("/static/css/site.css", headers={"Range": "bytes=0-1,4-5"})
    assert several.status == 200 and several.body == SMALL, several  # RFC 9110 14.2: may be ignored
    etag = several.header("ETag")
    assert server.get("/static/css/site.css", headers={"Range": "bytes=0-1", "If-Range": etag}).status == 206
    stale = server.get("/static/css/site.css", headers={"Range": "bytes=0-1", "If-Range": '"old"'})
    assert stale.status == 200 and stale.body == SMALL, stale
    # A range of a large file comes in pieces too.
    data = (root / "big.bin").read_bytes()
    r = server.get("/static/big.bin", headers={"Range": "bytes=1000-2098151"})
    assert r.status == 206 and r.body == data[1000:2098152], (r.status, len(r.body))


def test_a_large_file_streams_whole_and_the_connection_goes_on(server, files):
    root, _ = files
    data = (root / "big.bin").read_bytes()
    with server.raw(timeout=30) as conn:
        for _ in range(2):
            r = conn.request("GET", "/static/big.bin", headers={"Host": "t"})
            assert r.status == 200 and r.header("Content-Length") == str(BIG_SIZE), r
            assert r.header("Content-Type") == "application/octet-stream"
            assert r.body == data
        assert conn.request("GET", "/hello", headers={"Host": "t"}).body == b"hello"


def test_a_client_that_leaves_mid_file_costs_nothing_else(server):
    for _ in range(3):
        with server.raw() as conn:
            conn.send(b"GET /static/big.bin HTTP/1.1\r\nHost: t\r\n\r\n")
            conn.sock.recv(1000)  # the head and a little of the body, then gone
    assert server.get("/static/css/site.css").body == SMALL
    assert server.get("/hello").body == b"hello"
    assert "error" not in server.log().lower(), server.log()[-2000:]


# Paths under the mount that name no file it serves; none may reach the app or outside.
REFUSED = [
    "/static/nope.css",
    "/static/leak.txt",              # a symbolic link out of the mount
    "/static/.env",                  # hidden
    "/static/../outside/secret.txt",
    "/static/%2e%2e/outside/secret.txt",
    "/static/css%2fsite.css",        # an encoded '/'
    "/static/css/site.css%00.png",
    "/static//css/site.css",
    "/static/./css/site.css",
    "/static/css/site.css/",         # a file asked for as a directory
    "/static/pipe",                  # not a regular file
    "/static/empty/",                # a directory without its index file
    "/static/",                      # the mount's root has no index.html
]


@pytest.mark.parametrize("path", REFUSED)
def test_what_is_not_a_served_file_is_404(server, path):
    with server.raw() as conn:
        r = conn.request("GET", path, headers={"Host": "t"})
    assert r.status == 404, (path, r)
    assert b"no file at" in r.body, r.body
    assert b"outside the mount" not in r.body and b"hidden-dotfile" not in r.body, r.body


def test_a_directory_answers_its_index_file_after_a_redirect(server):
    r = server.get("/static/docs?lang=en")
    assert r.status == 301 and r.header("Location") == "/static/docs/?lang=en", r
    r = server.get("/static/docs/")
    assert r.status == 200 and r.body == b"<h1>docs</h1>\n", r
    assert r.header("Content-Type") == "text/html; charset=utf-8"


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS"])
def test_other_methods_are_405(server, method):
    r = server.request(method, "/static/css/site.css", body=b"x" if method in ("POST", "PUT") else None)
    assert r.status == 405 and r.header("Allow") == "GET, HEAD", r


@pytest.mark.parametrize("args,words", [
    (["--static-path-mount", "/nonexistent/dir"], "--static-path-mount"),
    (["--static-path-mount", "{root}", "--static-path-mount", "{root}"], "pairs with one --static-path-route"),
    (["--static-path-mount", "{root}", "--static-path-route", "/"], "must be a path below '/'"),
    (["--static-path-route", "/assets"], "needs a --static-path-mount"),
    (["--static-path-dir-to-file", "index.html"], "needs a --static-path-mount"),
    (["--static-path-mount", "{root}", "--static-path-expires", "-1"], "--static-path-expires"),
])
def test_settings_it_cannot_serve_stop_the_start(gilgamesh_bin, files, args, words):
    root, _ = files
    result = run_cli(["--port", "0", *[a.format(root=root) for a in args]])
    assert result.returncode == 2, result
    assert words in result.stderr, result.stderr


def test_files_beside_an_app_on_processes(gilgamesh_bin, files):
    if "processes" not in strategies():
        pytest.skip("processes is not among GILGAMESH_STRATEGIES")
    root, _ = files
    s = GilgameshServer("processes", workers=1, args=["--static-path-mount", str(root)]).start()
    try:
        assert s.get("/static/css/site.css").body == SMALL
        assert s.get("/hello").body == b"hello"
    finally:
        assert s.stop() == 0, s.log()[-3000:]


@pytest.fixture(scope="module")
def django_site():
    """The trixie site folder holding python3-django, or skip."""
    result = subprocess.run(["bash", str(REPO / "scripts" / "fetch-trixie-site.sh"), "--print-path",
                             "python3-django"], capture_output=True, text=True, timeout=60)
    site = Path(os.environ.get("GILGAMESH_TRIXIE_SITE") or result.stdout.strip())
    if not (site / "django" / "contrib" / "admin" / "static").is_dir():
        pytest.skip("Debian trixie's python3-django is not fetched: run `make trixie-site`")
    return site


def test_djangos_admin_files_beside_the_django_site(gilgamesh_bin, django_site, tmp_path):
    """What `manage.py collectstatic` gathers for Django's admin, served beside the site."""
    static = django_site / "django" / "contrib" / "admin" / "static"
    s = GilgameshServer(strategies()[0], workers=1, wsgi="django_site.wsgi:application",
                        args=["--pythonpath", str(APPS_DIR), "--pythonpath", str(django_site),
                              "--static-path-mount", str(static)],
                        env={"GILGAMESH_TEST_DJANGO_DB": str(tmp_path / "unused.sqlite3")}).start()
    try:
        css = s.get("/static/admin/css/base.css")
        assert css.status == 200 and css.header("Content-Type") == "text/css; charset=utf-8", css
        assert css.body == (static / "admin" / "css" / "base.css").read_bytes()
        svg = s.get("/static/admin/img/icon-yes.svg")
        assert svg.status == 200 and svg.header("Content-Type") == "image/svg+xml", svg
        assert s.get("/hello/").body == b"hello from django"
    finally:
        assert s.stop() == 0, s.log()[-3000:]
