"""scripts/build-python.sh --check: which bundled CPython prefixes count as ready for each
optimization asked (GILGAMESH_PYTHON_PGO, make PGO=...: short by default, full or 1, 0 for
plain). Builds nothing: a prefix in a cache of the test's own points at the CPython this tree
was configured with, and only its stamp file changes."""
import os
import pathlib
import subprocess

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build-python.sh"
LINES = {"full": "optimizations: --enable-optimizations --with-lto",
         "short": "optimizations: --enable-optimizations (profile: scripts/pgo_task.py)",
         "plain": None}
PYTHON = pathlib.Path(os.environ.get("GILGAMESH_PYTHON", ""))
REAL_PREFIX = PYTHON.parent.parent

if not (PYTHON.name == "python3.13" and (REAL_PREFIX / "gilgamesh-patches").exists()):
    pytest.skip("configured with a CPython that scripts/build-python.sh did not build "
                "(GILGAMESH_PYTHON=%s)" % (PYTHON or "unset"), allow_module_level=True)


def stamp(level, patches=None):
    """The stamp a build at `level` of these patches (or of `patches`, stamp lines) gets."""
    if patches is None:  # the real prefix's, less its optimization line
        patches = [line for line in (REAL_PREFIX / "gilgamesh-patches").read_text().splitlines()
                   if not line.startswith("optimizations:")]
    lines = patches + ([LINES[level]] if LINES[level] else [])
    return "".join(line + "\n" for line in lines)


@pytest.fixture
def cache(tmp_path):
    prefix = tmp_path / "python-3.13.5" / "default"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python3.13").symlink_to(PYTHON.resolve())
    (prefix / "lib").symlink_to((REAL_PREFIX / "lib").resolve())
    return tmp_path


def check(cache, stamp_text, pgo):
    """`--check default` with GILGAMESH_PYTHON_PGO=`pgo` (None: unset), the prefix's stamp
    file holding `stamp_text`."""
    (cache / "python-3.13.5" / "default" / "gilgamesh-patches").write_text(stamp_text)
    env = dict(os.environ, GILGAMESH_CACHE=str(cache))
    env.pop("GILGAMESH_PYTHON_PGO", None)
    if pgo is not None:
        env["GILGAMESH_PYTHON_PGO"] = pgo
    return subprocess.run(["bash", str(SCRIPT), "--check", "default"], env=env,
                          capture_output=True, text=True, timeout=60)


# What each request asks for: unset and "" are the default (short); 1 is full; plain is 0.
REQUESTS = {None: "short", "": "short", "short": "short", "full": "full", "1": "full",
            "0": "plain", "plain": "plain"}
RANK = {"plain": 0, "short": 1, "full": 2}
SAYS = {"full": "would be built with PGO+LTO", "short": "would be built with PGO\n",
        "plain": "would be built\n"}


@pytest.mark.parametrize("built", ["plain", "short", "full"])
def test_a_prefix_serves_a_request_for_the_same_or_a_lesser_optimization(cache, built):
    for pgo, asked in REQUESTS.items():
        result = check(cache, stamp(built), pgo)
        if RANK[built] >= RANK[asked]:
            assert result.returncode == 0, (built, pgo, result.stdout + result.stderr)
            assert "default is ready" in result.stdout
        else:
            assert result.returncode == 1, (built, pgo, result.stdout + result.stderr)
            assert SAYS[asked] in result.stdout, (built, pgo, result.stdout)


def test_a_prefix_built_with_other_patches_is_rebuilt_whatever_is_asked(cache):
    other = ["0" * 64 + "  0009-another.patch"]
    for built in ("plain", "short", "full"):
        for pgo in ("0", "short", "full"):
            result = check(cache, stamp(built, other), pgo)
            assert result.returncode == 1, (built, pgo, result.stdout + result.stderr)
            assert "default would be built" in result.stdout


def test_an_unknown_optimization_is_refused_by_name(cache):
    result = check(cache, stamp("short"), "fast")
    assert result.returncode == 2
    assert "GILGAMESH_PYTHON_PGO must be short, full (or 1) or 0 (plain), not 'fast'" in result.stderr
