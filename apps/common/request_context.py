"""The outermost WSGI layer of every app: request ids, the replica's name, trailing slashes and the
access log, and the request metrics (the JSON answers themselves: common/jsonapi.py)."""

from __future__ import annotations

import random
import re
import socket
import time
from collections.abc import Callable
from typing import Any

from waitress.utilities import build_http_date

from common import logs, metrics

_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,128}")
# Names the replica (container hostname) that answered, in the X-Served-By response header.
SERVED_BY = socket.gethostname()
requests = metrics.RequestMetrics(metrics.REGISTRY)
_date: tuple[int, str] = (0, "")  # a second and its HTTP date


def http_date() -> str:
    """The Date header's value, formatted once per second (waitress formats it for every answer that has none)."""
    global _date
    now = int(time.time())
    if _date[0] != now:
        _date = (now, build_http_date(now))
    return _date[1]


def valid_request_id(value: str | None) -> str:
    """The client's X-Request-ID if it is sane, else a fresh one: 128 random bits in hex, from the
    process's own generator (seeded from the system's; an id is not a secret), which saves a
    ``getrandom`` system call per request."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return f"{random.getrandbits(128):032x}"


class RequestContext:
    """Outermost WSGI layer of every app.

    Gives each request an id (kept from ``X-Request-ID`` when valid, returned in the response),
    names the replica that answered (``X-Served-By``), treats ``/path/`` as ``/path`` (one slash only:
    ``/api/movies//`` names no resource, it is not the collection), and writes one access-log line and the
    request metrics per request.
    """

    def __init__(self, app: Callable[..., Any]) -> None:
        self.app = app
        # Every route's series from 0: an error ratio or rate() sees the first error, not a series born at 1.
        for route in getattr(app, "routes", ()):
            for status in ("2xx", "4xx", "5xx"):
                requests.touch(metrics.method_label(route.method), metrics.route_template(route.rule), status)

    def __call__(self, environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        started = time.monotonic()
        rid = valid_request_id(environ.get("HTTP_X_REQUEST_ID"))
        environ["HTTP_X_REQUEST_ID"] = rid
        path = environ.get("PATH_INFO") or "/"
        if len(path) > 1 and path.endswith("/"):
            environ["PATH_INFO"] = path[:-1]
        token = logs.request_id.set(rid)
        status = ["500"]
        chunks: list[bytes] = []

        def start(status_line: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            status[0] = status_line.split(" ", 1)[0]
            # A proxied answer keeps the upstream replica's name as X-Upstream-Served-By.
            headers = [
                ("X-Upstream-Served-By", v) if k.lower() == "x-served-by" else (k, v)
                for k, v in headers
                if k.lower() != "x-request-id"
            ]
            headers.append(("X-Request-ID", rid))
            headers.append(("X-Served-By", SERVED_BY))
            headers.append(("Date", http_date()))
            return start_response(status_line, headers, exc_info)

        try:
            result = self.app(environ, start)
            try:
                chunks.extend(result)
            finally:
                close = getattr(result, "close", None)
                if close is not None:
                    close()
            return chunks
        finally:
            elapsed = time.monotonic() - started
            route = environ.get("bottle.route")  # set by Bottle when a route matched
            method = metrics.method_label(environ.get("REQUEST_METHOD", "-"))
            template = metrics.route_template(route.rule if route is not None else None)
            requests.observe(method, template, metrics.status_class(status[0]), elapsed)
            query = environ.get("QUERY_STRING")
            logs.access.write(
                # the client's address, also behind the gateway (see serve_http)
                f"{rid} {environ.get('REMOTE_ADDR', '-')} {environ.get('REQUEST_METHOD', '-')} "
                f"{path}{'?' + query if query else ''} {status[0]} {sum(len(c) for c in chunks)} {elapsed * 1000:.1f}ms"
            )
            logs.request_id.reset(token)
