"""Test app: sets the process's time zone at import, as Django does (its settings put
TIME_ZONE, America/Chicago unless set, in TZ and call time.tzset()). The server's log
lines after the import must keep their clock (tests/blackbox/test_logging.py)."""

import os
import time

import gilgamesh

os.environ["TZ"] = "America/Chicago"
time.tzset()


@gilgamesh.route("/tz")
def tz(request):
    """The time zone this process now has."""
    return {"tz": time.tzname[0]}
