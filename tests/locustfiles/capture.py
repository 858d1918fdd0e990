"""The suite's locustfile plus a listener that writes every request event's payload to $CAPTURE_FILE at exit."""

import json
import os

from locust import events

from ovms_users.locustfile import OvmsUser  # noqa: F401

CAPTURED: list[dict] = []


@events.request.add_listener
def _capture(request_type, name, response_time, response_length, exception, context, **_kw):
    CAPTURED.append({"request_type": request_type, "name": name, "response_time": response_time,
                     "response_length": response_length, "exception": None if exception is None else str(exception),
                     "context": context})


@events.quitting.add_listener
def _dump(environment, **_kw):
    with open(os.environ["CAPTURE_FILE"], "w") as f:
        json.dump(CAPTURED, f)
