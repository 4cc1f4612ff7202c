"""billing-app's HTTP API (a second supervisor program): /health and read-only /api/orders."""

from __future__ import annotations

import json
import time
from typing import Any

from billing_app.store import list_orders
from common.db import DatabaseUnavailable, Pool
from common.web import JsonApp, json_response, paging, query_int

CONSUMER_STALE_AFTER = 15.0  # seconds without a status update from the consumer


def consumer_state(status_file: str) -> str:
    try:
        with open(status_file, encoding="utf-8") as handle:
            status = json.load(handle)
    except (OSError, ValueError):
        return "not running"
    if time.time() - float(status.get("updated", 0)) > CONSUMER_STALE_AFTER:
        return "not responding"
    return "ok" if status.get("connected") else "broker unreachable"


def build_app(pool: Pool, status_file: str) -> JsonApp:
    app = JsonApp()

    @app.get("/api/orders")
    def orders() -> list[dict[str, Any]]:
        user_id = query_int("user_id", 1, 2**31 - 1)
        limit, offset = paging()
        return list_orders(pool, user_id, limit, offset)

    @app.get("/health")
    def health() -> Any:
        checks = {"consumer": consumer_state(status_file)}
        try:
            pool.ping()
            checks["database"] = "ok"
        except DatabaseUnavailable:
            checks["database"] = "unreachable"
        if any(state != "ok" for state in checks.values()):
            # A body of our own: ApiError's first parameter is already called ``status``.
            body = {"status": "unavailable", "error": "billing is not working", "checks": checks}
            return json_response(body, 503)
        return {"status": "ok", "checks": checks}

    return app
