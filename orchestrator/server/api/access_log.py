"""One line per request: who asked what, the answer and how long it took.

Only the path is logged, never the query string, headers or body: tokens travel in the
Authorization header and secret values in bodies, so neither can reach the log this way.
"""

from __future__ import annotations

import logging

import tornado.web

logger = logging.getLogger("orchestrator.access")


def log_request(handler: tornado.web.RequestHandler) -> None:
    """Tornado's `log_function`: INFO, or WARNING for 4xx and ERROR for 5xx answers."""
    status = handler.get_status()
    level = logging.ERROR if status >= 500 else logging.WARNING if status >= 400 else logging.INFO
    if not logger.isEnabledFor(level):
        return
    principal = getattr(handler, "principal", None)
    request = handler.request
    logger.log(level, "%s %s %d %.1f ms user=%s", request.method, request.path, status,
               1000.0 * request.request_time(), principal.user if principal else "-")
