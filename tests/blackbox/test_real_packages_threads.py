"""A real app with threads per worker: Django 4.2 from Debian trixie's python3-django
(scripts/fetch-trixie-site.sh) with a sqlite database (tests/apps/django_site/), served
with --wsgi at --threads 4 on the in-process strategies: requests that wait in the view overlap in one
worker, each thread with its own database connection. And with --asgi (Django's ASGI
handler): async views overlap on one worker's event loop.

Skipped when the trixie site does not hold python3-django (`make trixie-site` fetches it)
and in the sanitized pass (as test_real_packages.py)."""

import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from gilgamesh_harness import APPS_DIR, REPO, TIME_SCALE, timed_concurrent_gets

if os.environ.get("GILGAMESH_SANITIZED"):
    pytest.skip("not in the sanitized pass (see test_real_packages.py)", allow_module_level=True)

WAIT_S = 0.5  # what the view sleeps before its query


@pytest.fixture(scope="module")
def django_site():
    """The trixie site folder holding python3-django, or skip."""
    given = os.environ.get("GILGAMESH_TRIXIE_SITE")
    if given:
        site = Path(given)
    else:
        result = subprocess.run(["bash", str(REPO / "scripts" / "fetch-trixie-site.sh"),
                                 "--print-path", "python3-django"],
                                capture_output=True, text=True, timeout=60)
        if result.returncode != 0:
            pytest.skip("Debian trixie's python3-django is not fetched: run `make trixie-site` (%s)"
                        % result.stderr.strip())
        site = Path(result.stdout.strip())
    if not (site / "django").is_dir():
        pytest.skip("%s holds no django: run `make trixie-site`" % site)
    return site


@pytest.fixture
def database(tmp_path):
    path = tmp_path / "django.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT NOT NULL)")
        db.executemany("INSERT INTO items VALUES (?, ?)", [(i, "item-%d" % i) for i in range(1, 9)])
    return path


def test_django_view_waits_overlap_at_threads_4(start_server, strategy, django_site, database):
    server = start_server(workers=1, wsgi="django_site.wsgi:application",
                          args=["--pythonpath", str(APPS_DIR), "--pythonpath", str(django_site),
                                "--threads", "4"],
                          env={"GILGAMESH_TEST_DJANGO_DB": str(database)})
    r = server.get("/hello/")
    assert r.status == 200 and r.body == b"hello from django", r
    paths = ["/item/%d/" % i for i in range(1, 5)]
    results, elapsed = timed_concurrent_gets(server, paths, [p + "?wait=0.05" for p in paths])
    answers = [x.json() for x in results]
    assert [(a["id"], a["name"]) for a in answers] == [(i, "item-%d" % i) for i in range(1, 5)], answers
    assert all(a["multithread"] is True for a in answers), answers
    assert len({a["pid"] for a in answers}) == 1, answers  # one worker ...
    assert len({a["thread"] for a in answers}) == 4, answers  # ... four threads at once
    # Serially 4 x 0.5 s = 2 s; overlapped about 0.5 s.
    assert elapsed < WAIT_S + 0.6 * TIME_SCALE, (
        "4 Django requests that each wait %.1f s took %.2f s on 1 worker x 4 threads"
        % (WAIT_S, elapsed))
    missing = server.get("/item/99/")
    assert missing.status == 404, missing


def test_django_at_2_workers_by_8_threads_serves_16_waits_at_once(start_server, strategy, django_site,
                                                                   database):
    """The README's command: `--wsgi ... --workers 2 --threads 8` serves sixteen requests that
    wait in a Django view at once."""
    server = start_server(workers=2, wsgi="django_site.wsgi:application",
                          args=["--pythonpath", str(APPS_DIR), "--pythonpath", str(django_site),
                                "--threads", "8"],
                          env={"GILGAMESH_TEST_DJANGO_DB": str(database)})
    paths = ["/item/%d/" % (1 + i % 8) for i in range(16)]
    results, elapsed = timed_concurrent_gets(server, paths, [p + "?wait=0.05" for p in paths])
    answers = [x.json() for x in results]
    assert len({(a["pid"], a["thread"]) for a in answers}) == 16, answers  # sixteen threads at once
    # Serially 16 x 0.5 s = 8 s; two workers of eight threads: about 0.5 s.
    assert elapsed < WAIT_S + 1.0 * TIME_SCALE, (
        "16 Django requests that each wait %.1f s took %.2f s on 2 workers x 8 threads" % (WAIT_S, elapsed))


def test_django_asgi_async_views_overlap_on_one_worker(start_server, strategy, django_site, database):
    """`--asgi django_site.asgi:application`: Django's ASGI handler on every strategy. Its
    async views wait at once on the worker's event loop; its sync views run on asgiref's
    thread, with the database; the worker ends without noise (a stray _DummyThread once made
    "Exception ignored" at every sub-interpreter's end)."""
    server = start_server(workers=1, asgi="django_site.asgi:application",
                          args=["--pythonpath", str(APPS_DIR), "--pythonpath", str(django_site)],
                          env={"GILGAMESH_TEST_DJANGO_DB": str(database)})
    r = server.get("/hello/")
    assert r.status == 200 and r.body == b"hello from django", r
    r = server.get("/item/3/?wait=0")
    assert r.status == 200 and (r.json()["id"], r.json()["name"]) == (3, "item-3"), r
    assert server.get("/item/99/?wait=0").status == 404
    results, elapsed = timed_concurrent_gets(server, ["/async/?wait=%s" % WAIT_S] * 16,
                                             ["/async/?wait=0.05"] * 16)
    assert all(x.body == b"hello from an async django view" for x in results), results
    # Serially 16 x 0.5 s = 8 s; on the worker's loop about 0.5 s.
    assert elapsed < WAIT_S + 1.0 * TIME_SCALE, (
        "16 async Django views that each wait %.1f s took %.2f s on 1 worker" % (WAIT_S, elapsed))
    assert server.stop() == 0, server.log()[-3000:]
    assert "Exception ignored" not in server.log(), server.log()[-3000:]
