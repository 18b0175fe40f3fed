"""Test app: a minimal Django 4.2 project (Debian trixie's python3-django), served with
`--wsgi django_site.wsgi:application --pythonpath tests/apps --pythonpath <trixie site>`
(or `--asgi django_site.asgi:application`) by tests/blackbox/test_real_packages_threads.py.

GILGAMESH_TEST_DJANGO_DB (environment): the sqlite database file; the test makes it, with a
table `items (id INTEGER PRIMARY KEY, name TEXT)`, before the server starts.
"""
