"""scripts/build-python.sh --check: which bundled CPython prefixes count as ready, with and
without GILGAMESH_PYTHON_PGO (make PGO=1). Builds nothing: a prefix in a cache of the test's
own points at the CPython this tree was configured with, and only its stamp file changes."""
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "build-python.sh"
PGO_LINE = "optimizations: --enable-optimizations --with-lto"
PYTHON = pathlib.Path(os.environ.get("GILGAMESH_PYTHON", ""))
REAL_PREFIX = PYTHON.parent.parent

if not (PYTHON.name == "python3.13" and (REAL_PREFIX / "gilgamesh-patches").exists()):
    pytest.skip("configured with a CPython that scripts/build-python.sh did not build "
                "(GILGAMESH_PYTHON=%s)" % (PYTHON or "unset"), allow_module_level=True)


def patch_stamp():
    """The stamp a plain build of these patches gets (the real prefix may be a PGO build)."""
    lines = (REAL_PREFIX / "gilgamesh-patches").read_text().splitlines()
    return "".join(line + "\n" for line in lines if line != PGO_LINE)


@pytest.fixture
def cache(tmp_path):
    prefix = tmp_path / "python-3.13.5" / "default"
    (prefix / "bin").mkdir(parents=True)
    (prefix / "bin" / "python3.13").symlink_to(PYTHON.resolve())
    (prefix / "lib").symlink_to((REAL_PREFIX / "lib").resolve())
    return tmp_path


def check(cache, stamp, pgo):
    """`--check default` with GILGAMESH_PYTHON_PGO set to `pgo` (True: "1", False: "", or as
    given), the prefix's stamp file holding `stamp`."""
    (cache / "python-3.13.5" / "default" / "gilgamesh-patches").write_text(stamp)
    value = {True: "1", False: ""}.get(pgo, pgo)
    env = dict(os.environ, GILGAMESH_CACHE=str(cache), GILGAMESH_PYTHON_PGO=value)
    return subprocess.run(["bash", str(SCRIPT), "--check", "default"], env=env,
                          capture_output=True, text=True, timeout=60)


def test_a_plain_build_is_ready_for_a_plain_request_and_rebuilt_for_pgo(cache):
    plain = check(cache, patch_stamp(), pgo=False)
    assert plain.returncode == 0, plain.stdout + plain.stderr
    assert "default is ready" in plain.stdout
    pgo = check(cache, patch_stamp(), pgo=True)
    assert pgo.returncode == 1, pgo.stdout + pgo.stderr
    assert "default would be built with PGO+LTO" in pgo.stdout


def test_a_pgo_build_serves_both_requests(cache):
    stamp = patch_stamp() + PGO_LINE + "\n"
    for pgo in (False, True):
        result = check(cache, stamp, pgo)
        assert result.returncode == 0, result.stdout + result.stderr
        assert "default is ready" in result.stdout


def test_a_prefix_built_with_other_patches_is_rebuilt_either_way(cache):
    for stamp in ("0" * 64 + "  0009-another.patch\n",
                  "0" * 64 + "  0009-another.patch\n" + PGO_LINE + "\n"):
        for pgo in (False, True):
            result = check(cache, stamp, pgo)
            assert result.returncode == 1, (stamp, pgo, result.stdout + result.stderr)
            assert "default would be built" in result.stdout


def test_pgo_0_means_plain(cache):
    result = check(cache, patch_stamp(), pgo="0")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "default is ready" in result.stdout
