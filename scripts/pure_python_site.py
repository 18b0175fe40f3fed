#!/usr/bin/python3
"""Makes pure-Python distributions installed for another Python (Debian's
python3-* packages, for 3.11) importable by the Python 3.13 that gilgamesh
embeds, without putting all of /usr/lib/python3/dist-packages on its path
(that folder also holds C extensions built for 3.11, which 3.13 cannot load).

Each distribution's top-level packages and metadata are copied into one
folder, leaving out compiled files (*.so, __pycache__): pure-Python code runs
in any Python 3, and packages with optional speedups (MarkupSafe) fall back to
their pure-Python implementation. Pass the folder with --pythonpath.

    /usr/bin/python3 scripts/pure_python_site.py build/site-flask --flask
    /usr/bin/python3 scripts/pure_python_site.py build/site-starlette --starlette
    /usr/bin/python3 scripts/pure_python_site.py DEST Distribution [Distribution...]

With PyPI at hand, a venv made by the embedded Python does the same for any
package, C extensions included (see README, "Serving a WSGI app").
"""

import argparse
import importlib.metadata
import os
import shutil
import sys

# Flask and what it imports (Debian's metadata lists only the optional extras).
FLASK = ("Flask", "Werkzeug", "Jinja2", "MarkupSafe", "itsdangerous", "click")
# Starlette and what it imports (bookworm: starlette 0.26.1 on anyio 3.6.2).
STARLETTE = ("starlette", "anyio", "sniffio", "idna")


def _top_level(dist):
    names = (dist.read_text("top_level.txt") or "").split()
    if names:
        return names
    mapping = importlib.metadata.packages_distributions()
    return [top for top, dists in mapping.items() if dist.metadata["Name"] in dists]


def copy_pure_python(distributions, dest):
    """Copies the named distributions (packages + metadata, no compiled files)
    into `dest`; returns `dest`."""
    os.makedirs(dest, exist_ok=True)
    ignore = shutil.ignore_patterns("*.so", "__pycache__", "*.pyc")
    for name in distributions:
        dist = importlib.metadata.distribution(name)
        meta = str(dist._path)  # the .dist-info / .egg-info folder
        shutil.copytree(meta, os.path.join(dest, os.path.basename(meta)), ignore=ignore,
                        dirs_exist_ok=True)
        site = os.path.dirname(meta)
        for top in _top_level(dist):
            source = os.path.join(site, top)
            if os.path.isdir(source):
                shutil.copytree(source, os.path.join(dest, top), ignore=ignore, dirs_exist_ok=True)
            elif os.path.isfile(source + ".py"):
                shutil.copy2(source + ".py", dest)
            else:
                raise FileNotFoundError("%s: package %s not found in %s" % (name, top, site))
    return dest


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("dest", help="folder to fill (created if missing)")
    parser.add_argument("distributions", nargs="*", help="distribution names, e.g. Werkzeug")
    parser.add_argument("--flask", action="store_true", help="Flask and what it imports: " + ", ".join(FLASK))
    parser.add_argument("--starlette", action="store_true",
                        help="Starlette and what it imports: " + ", ".join(STARLETTE))
    args = parser.parse_args()
    names = list(args.distributions) + (list(FLASK) if args.flask else []) + \
        (list(STARLETTE) if args.starlette else [])
    if not names:
        parser.error("name at least one distribution (or --flask, --starlette)")
    try:
        copy_pure_python(names, args.dest)
    except (importlib.metadata.PackageNotFoundError, FileNotFoundError) as e:
        sys.exit("pure_python_site: %s is not installed for %s" % (e, sys.executable))
    print("%s: %s (pass it with --pythonpath)" % (args.dest, ", ".join(names)))


if __name__ == "__main__":
    main()
