"""billing-app's HTTP API (a second supervisor program): /health and read-only /api/orders."""

from __future__ import annotations

import json
import time
from typing import Any

from billing_app.store import list_orders
from common.db import HTTP_ERRORS, DatabaseUnavailable, Pool
from common.jsonapi import JsonApp, json_response, paging, query_int
from common.numbers import INT_MAX

CONSUMER_STALE_AFTER = 15.0  # seconds without a status update from the consumer


def consumer_checks(status_file: str) -> tuple[dict[str, str], dict[str, str]]:
    """The consumer's checks for /health, from the status file it keeps up to date, and for the
    failing ones, why: {"consumer": state, "store": state}, {"store": reason}."""
    try:
        with open(status_file, encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        return {"consumer": "not running"}, {}
    if time.time() - float(status.get("updated", 0)) > CONSUMER_STALE_AFTER:
        return {"consumer": "not responding"}, {}
    checks = {"consumer": "ok" if status.get("connected") else "broker unreachable", "store": "ok"}
    error = status.get("store_error")
    if not error:
        return checks, {}
    checks["store"] = "failing"
    since = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(float(status.get("store_failing_since") or 0)))
    return checks, {"store": f"cannot store orders since {since}: {error}"}


def build_app(pool: Pool, status_file: str) -> JsonApp:
    app = JsonApp(HTTP_ERRORS)

    @app.get("/api/orders")
    def orders() -> list[dict[str, Any]]:
        user_id = query_int("user_id", 1, INT_MAX)
        limit, offset = paging()
        return list_orders(pool, user_id, limit, offset)

    @app.get("/health")
    def health() -> Any:
        checks, details = consumer_checks(status_file)
        try:
            pool.ping()
            checks["database"] = "ok"
        except DatabaseUnavailable as exc:
            checks["database"] = "unreachable"
            details["database"] = str(exc)
        if any(state != "ok" for state in checks.values()):
            # Not an ApiError: the health answer has its own shape, with a status field.
            body = {"status": "unavailable", "error": "billing is not working", "checks": checks, "details": details}
            return json_response(body, 503)
        return {"status": "ok", "checks": checks}

    return app
