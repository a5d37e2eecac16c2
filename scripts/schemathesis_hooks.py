"""Schemathesis hooks for scripts/schemathesis.sh.

The document states every rule of a request body except one that depends on the server's clock: a success
timestamp may be at most FUTURE_TOLERANCE_SECONDS ahead of now (400 timestamp_in_future). Generated bodies
with such a timestamp are moved into the past (year 2020, a leap year, so every month and day stays a real
date), so a 400 for schema-valid data is always a finding. Nothing else is changed: a body that is invalid
for another reason stays invalid, and a timestamp that is not a date-time is left as it is.
"""
import datetime
import re

import schemathesis

YEAR = re.compile(r"^(\d{4})(-\d{2}-\d{2}[Tt].*)$")


@schemathesis.hook
def map_body(context, body):
    if not isinstance(body, dict) or body.get("status") != "success":
        return body
    timestamp = body.get("timestamp")
    if not isinstance(timestamp, str):
        return body
    match = YEAR.match(timestamp)
    # Any year from this one on may be ahead of the clock (with an offset, even late in the year).
    if match and int(match.group(1)) >= datetime.datetime.now(datetime.timezone.utc).year - 1:
        return dict(body, timestamp="2020" + match.group(2))
    return body




@schemathesis.hook
def before_call(context, case, kwargs):
    """Sends a header value a link took from a JSON body as the text it is on the wire.

    The lease's links carry `fencing_token` (a JSON number) into the `Lease-Token` header; schemathesis 4.32.5
    hands the number to requests, which refuses to send a header that is not text, so the step errors without
    a request being made. Its decimal text is what any client sends. Nothing else is changed.
    """
    for name, value in list((case.headers or {}).items()):
        if isinstance(value, int) and not isinstance(value, bool):
            case.headers[name] = str(value)
