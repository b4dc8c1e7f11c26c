"""Helpers the tests share: one way to wait, raw HTTP, the tenants of a multi-user server."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, what: str = "condition",
               every: float = 0.1) -> Any:
    """Poll `predicate` until it answers something true, and return that; fail saying `what`
    was not reached within `timeout` seconds. The one way the tests wait for a state."""
    deadline = time.monotonic() + timeout
    while not (answer := predicate()):
        assert time.monotonic() < deadline, f"{what} not reached within {timeout} s"
        time.sleep(every)
    return answer
