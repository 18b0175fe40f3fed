"""Test app: imports the stdlib modules that once crashed concurrent sub-interpreter start-up."""

import datetime
import decimal
import email
import email.utils
import http.client
import json

import gilgamesh


@gilgamesh.route("/stdlib")
def stdlib(request):
    """Uses datetime, decimal, email.utils, http.client and json in one answer."""
    when = datetime.datetime(2024, 2, 29, 12, 30, tzinfo=datetime.timezone.utc)
    return {
        "date": email.utils.format_datetime(when, usegmt=True),
        "decimal": str(decimal.Decimal("1.10") + decimal.Decimal("2.205")),
        "reason": http.client.responses[418],
        "json": json.dumps({"b": 1, "a": [1, 2]}, sort_keys=True),
        "email": email.message_from_string("Subject: hi\n\nbody\n")["Subject"],
    }
