"""The dashboard in a real browser: Debian's Chromium driven by playwright-core
(web/node_modules, fetched by scripts/fetch-web-deps.sh) through
dashboard_driver.js, against the real gilgamesh binary.

Environment:
  GILGAMESH_BIN                  the binary (default: <repo>/build/gilgamesh)
  GILGAMESH_STRATEGIES           strategies to check the worker cards on (default: all built)
  GILGAMESH_DASHBOARD_SCREENSHOT where to save the screenshot taken under load
                                 (default: a temporary file; docs/img/dashboard.png for the README)
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "blackbox"))

import pytest  # noqa: E402

import gilgamesh_harness as harness  # noqa: E402


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    harness.kill_all_running()
