"""Makes Debian's Flask (python3-flask, installed for Python 3.11) importable by
the Python 3.13 that gilgamesh embeds, without putting all of
/usr/lib/python3/dist-packages on its path (that folder also holds C
extensions built for 3.11).

Each distribution's top-level packages and metadata are copied into one
folder, leaving out compiled files (*.so, __pycache__): pure-Python
distributions work in any Python 3, and MarkupSafe falls back to its
pure-Python implementation without its 3.11 speedups. The folder is then
passed with --pythonpath. A user does the same for their own app with a venv
made by the embedded Python (see README, "Serving a WSGI app").
"""

import importlib.metadata
import os
import shutil

# Flask and what it imports (Debian's metadata lists only the optional extras).
FLASK = ("Flask", "Werkzeug", "Jinja2", "MarkupSafe", "itsdangerous", "click")


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
