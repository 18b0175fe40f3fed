"""What tests/apps/concurrency.py and tests/apps/wsgi_streaming.py share: the chunks
they stream (rebuildable by a test) and the log of how each stream ended."""

import os

CLOSE_LOG = os.environ.get("GILGAMESH_TEST_CLOSE_LOG", "")
MIB_CHUNK = bytes(range(256)) * 256  # 64 KiB


def chunk(i, size):
    """Chunk i of `size` bytes: its number repeated, so a test can rebuild the body."""
    unit = b"%d:" % i
    return (unit * (size // len(unit) + 1))[:size]


def log_close(token, produced, finished):
    if CLOSE_LOG and token:
        with open(CLOSE_LOG, "a") as f:
            f.write("%s %d %d\n" % (token, produced, 1 if finished else 0))
