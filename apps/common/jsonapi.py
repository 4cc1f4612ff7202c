"""The JSON HTTP API shared by the three apps: Bottle answering JSON, errors included, and reading
what a request carries (its body as a JSON object, integer query parameters, paging). The request id,
access log and trailing slash: common/request_context.py; the server: common/server.py.

- Every error is ``{"error": "<message>", ...}`` with the right status; Bottle's HTML pages never reach a client.
- Route callbacks return dicts or lists (sent as JSON) or raise :class:`ApiError`.
- Exceptions are mapped to statuses in one place: the plugin installed by :class:`JsonApp`, with the
  statuses each app hands in for its own exceptions (e.g. "database unavailable" -> 503).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import bottle

from common import logs
from common.numbers import INT_MAX, parse_int

JSON_TYPE = "application/json; charset=utf-8"
# Lists are paged: without ?limit=, this many items; never more than PAGE_MAX in one answer.
PAGE_DEFAULT = 100
PAGE_MAX = 1000
log = logging.getLogger(__name__)


class ApiError(bottle.HTTPError):
    """An error answered as JSON: ``{"error": message, **extra}``."""

    # status and message are positional-only, so that ``extra`` may hold fields with those names.
    def __init__(self, status: int, message: str, /, headers: dict[str, str] | None = None, **extra: Any) -> None:
        super().__init__(status, message, **(headers or {}))
        self.extra = extra


def to_json(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def json_response(value: Any, status: int = 200) -> bottle.HTTPResponse:
    return bottle.HTTPResponse(to_json(value), status, **{"Content-Type": JSON_TYPE})


# --- what a request carries: its body, its query parameters ------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def read_json_object(max_bytes: int, environ: dict[str, Any] | None = None) -> dict[str, Any]:
    """The request body as a JSON object, or an :class:`ApiError` (415, 413, 400). ``environ``: as for
    :func:`read_body`."""
    if environ is None:
        environ = bottle.request.environ
    content_type = environ.get("CONTENT_TYPE", "").split(";")[0].strip().lower()
    if content_type != "application/json":
        raise ApiError(415, "request body must be JSON (Content-Type: application/json)")
    raw = read_body(max_bytes, environ)
    if not raw.strip():
        raise ApiError(400, "request body is empty; a JSON object is expected")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise ApiError(400, "request body is not valid UTF-8") from None
    try:
        value = json.loads(text, parse_constant=_reject_constant)
    except RecursionError:
        raise ApiError(400, "request body is nested too deeply") from None
    except ValueError as exc:
        raise ApiError(400, f"malformed JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ApiError(400, "request body must be a JSON object")
    return value


def read_body(max_bytes: int, environ: dict[str, Any] | None = None) -> bytes:
    """The raw request body, refusing more than ``max_bytes`` with 413 (``{"error": ..., "limit": max_bytes}``).

    Read here rather than through Bottle's ``request.body``, which copies any body above its ``MEMFILE_MAX``
    (100 KiB; MAX_BODY_BYTES may be up to 16 MiB) into a temporary file first. Measured in one process, on
    a body already in memory as waitress hands it over: 64 KiB took 20 us that way against 5 us here,
    1 MiB 1.0 ms against 0.1 ms, 8 MiB 6.7 ms against 1.0 ms, each with one temporary file. waitress has
    read the whole body before the app runs, chunked ones too (then declared in CONTENT_LENGTH), so a
    declared length above the limit is refused without reading it. ``environ``: the request's, when Bottle
    is not serving it (by default, the request Bottle is serving).
    """
    if environ is None:
        environ = bottle.request.environ
    declared = int(environ.get("CONTENT_LENGTH") or -1)
    if declared > max_bytes:
        raise ApiError(413, f"request body too large (limit {max_bytes} bytes)", limit=max_bytes)
    body = environ["wsgi.input"].read(max_bytes + 1) if declared != 0 else b""
    if len(body) > max_bytes:
        raise ApiError(413, f"request body too large (limit {max_bytes} bytes)", limit=max_bytes)
    return body


def reject_unknown_fields(body: dict[str, Any], allowed: Iterable[str]) -> None:
    unknown = sorted(set(body) - set(allowed))
    if unknown:
        raise ApiError(400, "unknown field(s): " + ", ".join(unknown), fields=unknown)


def query_int(name: str, minimum: int, maximum: int) -> int | None:
    """An optional integer query parameter; out of range or not a number is a 400."""
    raw = bottle.request.query.get(name)
    if raw is None or raw == "":
        return None
    value = parse_int(raw, minimum, maximum)
    if value is None:
        raise ApiError(400, f"{name} must be an integer from {minimum} to {maximum}", field=name)
    return value


def paging() -> tuple[int, int]:
    """``limit`` (PAGE_DEFAULT when absent, at most PAGE_MAX) and ``offset`` of a list request."""
    limit = query_int("limit", 1, PAGE_MAX)
    return PAGE_DEFAULT if limit is None else limit, query_int("offset", 0, INT_MAX) or 0


# --- the Bottle application -------------------------------------------------------------------


# An app's own exceptions and how they are answered: (exception class, status, message for the client),
# the first matching entry wins (list subclasses first). The exception's text goes to the log only.
ErrorStatuses = Sequence[tuple[type[Exception], int, str]]


def _error_mapping(errors: ErrorStatuses) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Bottle plugin: dict/list results become JSON; exceptions become JSON errors."""

    def plugin(callback: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            try:
                result = callback(*args, **kwargs)
            except bottle.HTTPResponse:
                raise
            except Exception as exc:
                for kind, status, message in errors:
                    if isinstance(exc, kind):
                        log.warning("%s: %s", message, exc)
                        raise ApiError(status, message) from None
                log.exception("unhandled error")
                raise ApiError(500, "internal server error") from None
            if isinstance(result, (dict, list)):
                return json_response(result)
            return result

        return wrapper

    return plugin


def error_json(error: ApiError) -> bytes:
    """The body of an ApiError's answer: ``{"error": message, **extra, "request_id": ...}``."""
    return to_json({"error": error.body, **error.extra, "request_id": logs.request_id.get()})


class JsonApp(bottle.Bottle):
    """A Bottle app that answers JSON, errors included."""

    def __init__(self, errors: ErrorStatuses = ()) -> None:
        super().__init__()
        self.uninstall("json")
        self.install(_error_mapping(errors))

    def default_error_handler(self, res: bottle.HTTPError) -> bytes:
        bottle.response.content_type = JSON_TYPE
        status = res.status_code
        if isinstance(res, ApiError):
            return error_json(res)
        if status == 404:
            body = {"error": f"no such resource: {bottle.request.method} {bottle.request.path}"}
        elif status == 405:
            body = {"error": f"method {bottle.request.method} not allowed on {bottle.request.path}"}
        elif status >= 500:
            if res.traceback:
                log.error("unhandled error\n%s", res.traceback)
            body = {"error": "internal server error"}
        else:
            body = {"error": str(res.body) or res.status_line}
        body["request_id"] = logs.request_id.get()
        return to_json(body)
