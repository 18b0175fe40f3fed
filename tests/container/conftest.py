"""The container suite: the gilgamesh image (`make image`) run as containers.

Environment:
  GILGAMESH_IMAGE           the image (default: localhost/gilgamesh:latest)
  GILGAMESH_STORAGE_DRIVER  podman/buildah storage driver (default: vfs)
"""

import shutil
import subprocess

import pytest

import container_harness as harness


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session, exitstatus):
    harness.remove_all()  # what a crashed test left behind


@pytest.fixture(scope="session", autouse=True)
def image():
    for tool in ("podman", "buildah"):
        if not shutil.which(tool):
            pytest.fail("%s is not installed (make deps installs it)" % tool, pytrace=False)
    try:
        return harness.image_inspect()
    except subprocess.CalledProcessError:
        pytest.fail("image %s not found: run `make image` first" % harness.IMAGE, pytrace=False)


@pytest.fixture
def container():
    """A fresh container from the image, removed after the test."""
    made = []

    def make():
        made.append(harness.Container())
        return made[-1]

    yield make
    for c in made:
        c.remove()
