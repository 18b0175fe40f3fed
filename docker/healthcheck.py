"""The image's HEALTHCHECK: GET /healthz on this container's own port.

Exit 0 on 200, 1 otherwise, as Docker expects. It runs under the bundled
CPython so the image needs no curl.
"""
import os
import sys
import urllib.request

port = os.environ.get("GILGAMESH_PORT", "8080")
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
        sys.exit(0 if response.status == 200 else 1)
except Exception as e:  # refused, timed out, or an HTTP error status such as 503 while draining
    print(f"healthcheck: {e}", file=sys.stderr)
    sys.exit(1)
