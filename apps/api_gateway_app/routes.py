"""HTTP routes of the gateway."""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any
from urllib.parse import urlsplit

import bottle

from api_gateway_app import docs_page, openapi
from api_gateway_app.proxy import (
    Upstream,
    UpstreamBusy,
    UpstreamError,
    UpstreamTimeout,
    forward_headers,
    response_headers,
)
from api_gateway_app.publisher import BrokerBlocked, Publisher, PublishFailed, PublishUnconfirmed
from common import logs
from common.jsonapi import (
    JSON_TYPE,
    ApiError,
    JsonApp,
    error_json,
    read_body,
    read_json_object,
    to_json,
)
from common.orders import IDEMPOTENCY_KEY, InvalidOrder, message_id, normalise_order, order_message

log = logging.getLogger(__name__)
# /health probes both apps at once, and answers within a second even when one of them hangs.
HEALTH_PROBE_TIMEOUT = 0.8
# Seconds a client should wait before retrying an order refused with 503.
RETRY_AFTER = "5"


def _target(environ: dict[str, Any]) -> str:
    """The path and query exactly as the client sent them: forwarded without decoding anything, so
    that inventory-app decodes the path once, as the gateway did, and both name the same resource."""
    target = environ["REQUEST_URI"]
    if not target.startswith("/"):  # absolute form, "http://host/path?query"
        parts = urlsplit(target)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return target


# A route answered without Bottle: the request's environ -> (status line, headers, body).
Handler = Callable[[dict[str, Any]], tuple[str, list[tuple[str, str]], bytes]]


def _idempotency_key(environ: dict[str, Any]) -> str | None:
    # From the environ as waitress decoded it (latin-1): Bottle's header view raises on bytes that are not UTF-8.
    key = environ.get("HTTP_IDEMPOTENCY_KEY")
    if key is not None and not IDEMPOTENCY_KEY.fullmatch(key):
        raise ApiError(
            400, "Idempotency-Key must be 1 to 255 visible ASCII characters (no spaces)", field="Idempotency-Key"
        )
    return key


def forward(
    upstream: Upstream, environ: dict[str, Any], *, max_body_bytes: int
) -> tuple[str, list[tuple[str, str]], bytes]:
    """Forward the request to ``upstream``: the status line, the headers for the client and the body it answered,
    or an ApiError (413, and 502/503/504 when the upstream gives no usable answer)."""
    method = environ["REQUEST_METHOD"]
    body = read_body(max_body_bytes, environ)
    try:
        answer = upstream.request(
            method, _target(environ), forward_headers(environ, f"{upstream.host}:{upstream.port}"), body
        )
    except UpstreamBusy as exc:
        log.warning("%s: %s", exc, exc.detail)
        raise ApiError(503, str(exc), headers={"Retry-After": "1"}) from None
    except UpstreamError as exc:
        log.warning("%s: %s", exc, exc.detail)
        raise ApiError(504 if isinstance(exc, UpstreamTimeout) else 502, str(exc)) from None
    headers = response_headers(answer.headers)
    if method == "HEAD":
        # No body to measure: the upstream's length is the one a GET would have.
        length = next((v for k, v in answer.headers if k.lower() == "content-length"), None)
        if length is not None:
            headers.append(("Content-Length", length))
    return f"{answer.status} {answer.reason or bottle.HTTP_CODES.get(answer.status, 'Unknown')}", headers, answer.body


class Gateway:
    """The gateway's WSGI app. The routes every client request takes (the forwarded ones and the orders) are
    answered without Bottle's request and response objects, which cost ~15 % of a proxied GET's Python time and
    ~10 % of an order's (py-spy); Bottle's router still decides which route a request is, and Bottle answers
    everything else (/health, the documentation, a method a route does not allow, a path no route has), so
    routes, 404s, 405s with their Allow header and the metrics' route labels stay the same."""

    def __init__(self, app: JsonApp, handlers: dict[Any, Handler]) -> None:
        self.app = app
        self.routes = app.routes
        self.handlers = handlers  # Bottle's Route -> what answers it

    def __call__(self, environ: dict[str, Any], start_response: Any) -> list[bytes]:
        # Bottle matches the path as UTF-8 (waitress gives it as latin-1); only the method and the path matter.
        path = (environ.get("PATH_INFO") or "/").encode("latin-1").decode("utf-8", "ignore")
        try:
            route, _ = self.app.router.match({"REQUEST_METHOD": environ["REQUEST_METHOD"], "PATH_INFO": path})
        except bottle.HTTPError:  # 404 or 405: Bottle answers them
            route = None
        handler = self.handlers.get(route)
        if handler is None:
            return self.app(environ, start_response)
        environ["bottle.route"] = route  # the route label of the request metrics, as Bottle sets it
        try:
            status, headers, body = handler(environ)
        except ApiError as exc:
            status, body = exc.status_line, error_json(exc)
            headers = [(k, v) for k, v in exc.headerlist if k.lower() not in ("content-type", "content-length")]
            headers.append(("Content-Type", JSON_TYPE))
        except Exception:
            log.exception("unhandled error")
            error = ApiError(500, "internal server error")
            status, headers, body = error.status_line, [("Content-Type", JSON_TYPE)], error_json(error)
        if environ["REQUEST_METHOD"] != "HEAD" and status[:3] not in ("204", "304"):
            headers.append(("Content-Length", str(len(body))))
        start_response(status, headers)
        return [body]


def create_order(
    publisher: Publisher, environ: dict[str, Any], *, max_body_bytes: int
) -> tuple[str, list[tuple[str, str]], bytes]:
    """POST /api/billing: the order published, answered 200 once the broker confirmed it (202 when it was sent
    but not confirmed), or an ApiError (400, 413, 415; 503 when it was not queued)."""
    key = _idempotency_key(environ)
    try:
        order = normalise_order(read_json_object(max_body_bytes, environ))
    except InvalidOrder as exc:
        raise ApiError(400, str(exc), field=exc.field) from None
    order_id = message_id(key)
    try:
        publisher.publish(order_message(order, order_id, logs.request_id.get()))
    except PublishUnconfirmed as exc:
        log.warning("order %s sent, outcome unknown: %s", order_id, exc)
        unconfirmed = {
            "status": "unconfirmed",
            "message_id": order_id,
            "detail": "the broker received the order but did not confirm it: it may or may not be stored; "
            "retry with the same Idempotency-Key, or look for message_id in GET /api/orders",
            "reason": str(exc),
            "request_id": logs.request_id.get(),
        }
        return "202 Accepted", [("Content-Type", JSON_TYPE)], to_json(unconfirmed)
    except PublishFailed as exc:
        log.warning("order not queued: %s", exc)
        message = "billing is unavailable, the order was not queued; try again shortly"
        if isinstance(exc, BrokerBlocked):
            message = "the broker is short of resources and refuses orders; the order was not queued"
        raise ApiError(503, message, headers={"Retry-After": RETRY_AFTER}, reason=str(exc)) from None
    log.debug("order %s queued for user %s", order_id, order["user_id"])
    return "200 OK", [("Content-Type", JSON_TYPE)], to_json({"status": "queued", "message_id": order_id})


def build_app(inventory: Upstream, billing: Upstream, publisher: Publisher, max_body_bytes: int) -> Gateway:
    app = JsonApp()
    spec = openapi.document(max_body_bytes)
    spec_json = to_json(spec)
    docs_html = docs_page.render(spec).encode("utf-8")
    handlers: dict[Callable[..., Any], Handler] = {}

    def through_bottle(handler: Handler) -> Callable[..., bottle.HTTPResponse]:
        """A Bottle callback answering as ``handler`` does, for Bottle's router (Gateway calls ``handler`` itself)."""

        def callback(**_url_args: str) -> bottle.HTTPResponse:
            status, headers, body = handler(bottle.request.environ)
            return bottle.HTTPResponse(body, status, headers)

        handlers[callback] = handler
        return callback

    limit = {"max_body_bytes": max_body_bytes}
    to_inventory = through_bottle(functools.partial(forward, inventory, **limit))
    app.route("/api/movies", ["GET", "POST", "DELETE"], to_inventory)
    app.route("/api/movies/<movie_id>", ["GET", "PUT", "DELETE"], to_inventory)
    app.get("/api/orders", callback=through_bottle(functools.partial(forward, billing, **limit)))
    app.post("/api/billing", callback=through_bottle(functools.partial(create_order, publisher, **limit)))

    # Probes that overrun are left to finish here (each ends within its connect and read timeouts).
    probes = ThreadPoolExecutor(max_workers=8, thread_name_prefix="health-probe")

    @app.get("/health")
    def health() -> bottle.HTTPResponse:
        rid = logs.request_id.get()
        running = {upstream.name: probes.submit(_probe, upstream, rid) for upstream in (inventory, billing)}
        checks = {"broker": publisher.state}
        for name, probe in running.items():
            try:
                checks[name] = probe.result(timeout=HEALTH_PROBE_TIMEOUT)
            except FutureTimeout:
                checks[name] = "down"
        # billing-app is not required: orders wait in the queue while it is down.
        usable = checks["broker"] == "ok" and checks["inventory-app"] == "ok"
        body: dict[str, Any] = {"status": "ok" if usable else "unavailable", "checks": checks}
        if not usable:
            body["error"] = "a required dependency is down"
        return bottle.HTTPResponse(to_json(body), 200 if usable else 503, **{"Content-Type": JSON_TYPE})

    @app.get("/openapi.json")
    def openapi_json() -> bottle.HTTPResponse:
        return bottle.HTTPResponse(spec_json, 200, **{"Content-Type": JSON_TYPE})

    @app.get("/docs")
    def docs() -> bottle.HTTPResponse:
        return bottle.HTTPResponse(docs_html, 200, **{"Content-Type": "text/html; charset=utf-8"})

    return Gateway(app, {route: handlers[route.callback] for route in app.routes if route.callback in handlers})


def _probe(upstream: Upstream, request_id: str) -> str:
    headers = {"Host": f"{upstream.host}:{upstream.port}", "X-Request-ID": request_id}
    try:
        answer = upstream.request("GET", "/health", headers, b"", timeout=HEALTH_PROBE_TIMEOUT)
    except UpstreamError:
        return "down"
    return "ok" if answer.status == 200 else "down"
