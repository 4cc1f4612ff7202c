"""HTTP routes of the gateway (SPEC §6)."""

from __future__ import annotations

import logging
import uuid
from typing import Any
from urllib.parse import quote

import bottle

from api_gateway_app import docs_page, openapi
from api_gateway_app.proxy import Upstream, UpstreamError, UpstreamTimeout, forward_headers, response_headers
from api_gateway_app.publisher import Publisher, PublishFailed
from common import logs
from common.orders import InvalidOrder, normalise_order
from common.web import JSON_TYPE, ApiError, JsonApp, read_body, read_json_object, to_json

log = logging.getLogger(__name__)
# /health probes two apps and must answer within the container healthcheck's 3 s, even when both hang.
HEALTH_PROBE_TIMEOUT = 1.2


def _target(environ: dict[str, Any]) -> str:
    """The path and query as the client sent them (trailing slash included)."""
    path = quote(environ["app.original_path"].encode("latin-1"), safe="/:@!$&'()*+,;=-._~%")
    query = environ.get("QUERY_STRING")
    return f"{path}?{query}" if query else path


def build_app(inventory: Upstream, billing: Upstream, publisher: Publisher, max_body_bytes: int) -> JsonApp:
    app = JsonApp()
    spec = openapi.document(max_body_bytes)
    spec_json = to_json(spec)
    docs_html = docs_page.render(spec).encode("utf-8")

    def proxy(upstream: Upstream) -> bottle.HTTPResponse:
        environ = bottle.request.environ
        body = read_body(max_body_bytes)
        try:
            answer = upstream.request(
                bottle.request.method,
                _target(environ),
                forward_headers(environ, f"{upstream.host}:{upstream.port}"),
                body,
            )
        except UpstreamError as exc:
            log.warning("%s: %s", exc, exc.detail)
            raise ApiError(504 if isinstance(exc, UpstreamTimeout) else 502, str(exc)) from None
        response = bottle.HTTPResponse(answer.body, answer.status)
        for name, value in response_headers(answer.headers):
            response.add_header(name, value)
        if bottle.request.method == "HEAD":
            # No body to measure: the upstream's length is the one a GET would have.
            length = next((v for k, v in answer.headers if k.lower() == "content-length"), None)
            if length is not None:
                response.set_header("Content-Length", length)
        return response

    @app.route("/api/movies", method=["GET", "POST", "DELETE"])
    @app.route("/api/movies/<movie_id>", method=["GET", "PUT", "DELETE"])
    def movies(movie_id: str | None = None) -> bottle.HTTPResponse:
        return proxy(inventory)

    @app.get("/api/orders")
    def orders() -> bottle.HTTPResponse:
        return proxy(billing)

    @app.post("/api/billing")
    def create_order() -> dict[str, Any]:
        try:
            order = normalise_order(read_json_object(max_body_bytes))
        except InvalidOrder as exc:
            raise ApiError(400, str(exc), field=exc.field) from None
        message_id = str(uuid.uuid4())
        try:
            publisher.publish(to_json(order), message_id, {"x-request-id": logs.request_id.get()})
        except PublishFailed as exc:
            log.warning("order not queued: %s", exc)
            raise ApiError(
                503, "billing is unavailable, the order was not queued; try again shortly", reason=str(exc)
            ) from None
        log.debug("order %s queued for user %s", message_id, order["user_id"])
        return {"status": "queued", "message_id": message_id}

    @app.get("/health")
    def health() -> bottle.HTTPResponse:
        checks = {
            "broker": "ok" if publisher.ready else "down",
            "inventory-app": _probe(inventory),
            "billing-app": _probe(billing),
        }
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

    return app


def _probe(upstream: Upstream) -> str:
    headers = {"Host": f"{upstream.host}:{upstream.port}", "X-Request-ID": logs.request_id.get()}
    try:
        answer = upstream.request("GET", "/health", headers, b"", timeout=HEALTH_PROBE_TIMEOUT)
    except UpstreamError:
        return "down"
    return "ok" if answer.status == 200 else "down"
