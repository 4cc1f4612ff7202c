"""The gateway forwards its proxied routes without Bottle's request and response objects
(api_gateway_app.routes.Gateway): each request here is answered by that path and by Bottle's own route for
it, against a real HTTP upstream on loopback, and the two answers must be the same: status line, headers,
body, errors included (413, 502, 404 and 405 for what no route takes). Orders (POST /api/billing) likewise,
for each way a publish can end."""

from __future__ import annotations

import io
import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from api_gateway_app.proxy import Upstream
from api_gateway_app.publisher import Publisher, PublishUnconfirmed
from api_gateway_app.routes import Gateway, build_app
from common.amqp import BrokerSettings
from common.config import Env
from common.request_context import RequestContext

MAX_BODY = 1024


class Inventory(BaseHTTPRequestHandler):
    """Answers like inventory-app would, echoing what it received so that the forwarded request is compared too."""

    protocol_version = "HTTP/1.1"

    def answer(self, status: int, body: bytes, extra: tuple[tuple[str, str], ...] = ()) -> None:
        self.send_response(status)
        for name, value in (("X-Served-By", "inventory-1"), *extra):
            self.send_header(name, value)
        if status != 204:  # as inventory-app's Bottle: no Content-Type or Content-Length on a 204
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD" and status != 204:
            self.wfile.write(body)

    def echo(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        received = self.rfile.read(length) if length else b""
        headers = sorted((k, v) for k, v in self.headers.items() if k.lower() != "x-request-id")
        return json.dumps({"method": self.command, "target": self.path, "headers": headers, "body": received.decode()})

    def do_GET(self) -> None:
        if self.path.startswith("/api/movies/404"):
            self.answer(404, b'{"error":"no such movie"}')
        else:
            self.answer(200, self.echo().encode(), (("Cache-Control", "no-store"), ("Connection", "keep-alive")))

    do_HEAD = do_GET

    def do_POST(self) -> None:
        self.answer(201, self.echo().encode(), (("Location", "/api/movies/7"),))

    def do_PUT(self) -> None:
        self.answer(200, self.echo().encode())

    def do_DELETE(self) -> None:
        self.answer(204, b"")

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def gateway() -> Iterator[Gateway]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), Inventory)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with socket.socket() as probe:  # a port nothing listens on: billing-app is down
        probe.bind(("127.0.0.1", 0))
        closed = probe.getsockname()[1]
    env = Env({"RABBITMQ_GATEWAY_USER": "unused", "RABBITMQ_GATEWAY_PASSWORD": "unused"})
    publisher = Publisher(BrokerSettings.from_env(env, "GATEWAY"), 1.0)  # never started: no route here uses it
    inventory = Upstream("inventory-app", f"http://127.0.0.1:{server.server_address[1]}", 1, 2, 8)
    billing = Upstream("billing-app", f"http://127.0.0.1:{closed}", 1, 2, 8)
    yield build_app(inventory, billing, publisher, MAX_BODY)
    server.shutdown()
    server.server_close()


def call(
    app: Any, method: str, target: str, body: bytes = b"", content_type: str = "application/json", **headers: str
) -> tuple[str, list, bytes, bool]:
    """Status line, headers (Date left out), body, and whether Bottle answered it."""
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_URI": target,
        "SERVER_NAME": "test", "SERVER_PORT": "3000", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "REMOTE_ADDR": "192.0.2.10", "HTTP_HOST": "gateway.test:3000",
        "HTTP_X_REQUEST_ID": "fixed-request-id", "HTTP_USER_AGENT": "curl/8.0",
    }  # fmt: skip
    if body:
        environ.update(CONTENT_LENGTH=str(len(body)), CONTENT_TYPE=content_type)
    environ.update({f"HTTP_{name.upper()}": value for name, value in headers.items()})
    answer: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        # Date is the second of the answer; the header order is waitress's to normalise, not the client's concern.
        answer.update(status=status, headers=sorted((k.title(), v) for k, v in response_headers if k.lower() != "date"))

    payload = b"".join(RequestContext(app)(environ, start_response))
    return answer["status"], answer["headers"], payload, "bottle.app" in environ


REQUESTS = [
    ("GET", "/api/movies/12", b"", {}),
    ("GET", "/api/movies?title=caf%C3%A9%20noir&limit=5", b"", {"ACCEPT": "application/json"}),
    ("GET", "/api/movies/12?x=1", b"", {"X_FORWARDED_FOR": "198.51.100.7", "CONNECTION": "keep-alive, X-Drop"}),
    ("HEAD", "/api/movies/12", b"", {}),
    ("GET", "/api/movies/404", b"", {}),
    ("POST", "/api/movies", b'{"title": "Alien"}', {}),
    ("PUT", "/api/movies/12", b'{"title": "Aliens"}', {}),
    ("DELETE", "/api/movies/12", b"", {}),
    ("POST", "/api/movies", b"x" * (MAX_BODY + 1), {}),  # 413, not forwarded
    ("GET", "/api/orders", b"", {}),  # billing-app down: 502
    ("PATCH", "/api/movies/12", b"", {}),  # 405 with Allow
    ("GET", "/api/movies/12/more", b"", {}),  # 404: no route
]


@pytest.mark.parametrize(
    ("method", "target", "body", "headers"), REQUESTS, ids=[f"{r[0]} {r[1][:40]}" for r in REQUESTS]
)
def test_a_forwarded_request_is_answered_as_bottle_would_answer_it(
    gateway: Gateway, method: str, target: str, body: bytes, headers: dict[str, str]
) -> None:
    fast = call(gateway, method, target, body, **headers)
    through_bottle = call(gateway.app, method, target, body, **headers)
    assert fast[:3] == through_bottle[:3]
    assert fast[3] == (method == "PATCH" or target.endswith("/more"))  # Bottle answers only what no route forwards
    status = int(fast[0].split()[0])
    assert status in {200, 201, 204, 404, 405, 413, 502}
    if status in (200, 201) and method != "HEAD":
        forwarded = json.loads(fast[2])
        assert forwarded["target"] == target  # as the client sent it, not decoded
        assert forwarded["body"] == body.decode()
        names = {name.lower() for name, _ in forwarded["headers"]}
        assert "x-drop" not in names  # named in Connection: this hop's only
        assert "x-forwarded-for" in names


class Outcome(Publisher):
    """A publisher whose publish ends as the test says (the broker's side of each outcome is tested end to end,
    against the real broker, in tests/e2e): "confirmed", "unconfirmed", or "down" (the real never-started
    publisher's own refusal)."""

    outcome = "down"

    def _publish(self, message: Any) -> None:
        if self.outcome == "confirmed":
            return
        if self.outcome == "unconfirmed":
            raise PublishUnconfirmed("no confirm in time")
        super()._publish(message)


ORDER = b'{"user_id": 7, "number_of_items": 2, "total_amount": "19.90"}'
ORDERS = [
    ("confirmed", ORDER, "application/json", {"IDEMPOTENCY_KEY": "order-1"}, 200),
    ("unconfirmed", ORDER, "application/json", {"IDEMPOTENCY_KEY": "order-2"}, 202),
    ("down", ORDER, "application/json; charset=utf-8", {"IDEMPOTENCY_KEY": "order-3"}, 503),
    ("confirmed", ORDER, "text/plain", {}, 415),
    ("confirmed", b'{"user_id": 7}', "application/json", {}, 400),
    ("confirmed", b"{not json", "application/json", {}, 400),
    ("confirmed", ORDER, "application/json", {"IDEMPOTENCY_KEY": "has space"}, 400),
    ("confirmed", b" " * (MAX_BODY + 1), "application/json", {}, 413),
]


@pytest.mark.parametrize(
    ("outcome", "body", "content_type", "headers", "expected"), ORDERS, ids=[f"{o[4]} {o[0]}" for o in ORDERS]
)
def test_an_order_is_answered_as_bottle_would_answer_it(
    outcome: str, body: bytes, content_type: str, headers: dict[str, str], expected: int
) -> None:
    env = Env({"RABBITMQ_GATEWAY_USER": "unused", "RABBITMQ_GATEWAY_PASSWORD": "unused"})
    publisher = Outcome(BrokerSettings.from_env(env, "GATEWAY"), 1.0)
    publisher.outcome = outcome
    upstream = Upstream("inventory-app", "http://127.0.0.1:9", 1, 2, 8)  # no route here reaches an upstream
    app = build_app(upstream, upstream, publisher, MAX_BODY)
    fast = call(app, "POST", "/api/billing", body, content_type, **headers)
    through_bottle = call(app.app, "POST", "/api/billing", body, content_type, **headers)
    assert fast[:3] == through_bottle[:3]
    assert not fast[3] and through_bottle[3]
    assert int(fast[0].split()[0]) == expected
    answer = json.loads(fast[2])
    if expected == 200:
        assert answer == {"status": "queued", "message_id": answer["message_id"]}
    elif expected == 202:
        assert answer["status"] == "unconfirmed" and answer["request_id"] == "fixed-request-id"
    else:
        assert answer["error"] and answer["request_id"] == "fixed-request-id"
    if expected == 503:
        assert ("Retry-After", "5") in fast[1]
