"""The gateway forwards its proxied routes without Bottle's request and response objects
(api_gateway_app.routes.Gateway): each request here is answered by that path and by Bottle's own route for
it, against a real HTTP upstream on loopback, and the two answers must be the same: status line, headers,
body, errors included (413, 502, 404 and 405 for what no route takes)."""

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
from api_gateway_app.publisher import Publisher
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


def call(app: Any, method: str, target: str, body: bytes = b"", **headers: str) -> tuple[str, list, bytes, bool]:
    """Status line, headers (Date left out), body, and whether Bottle answered it."""
    path, _, query = target.partition("?")
    environ = {
        "REQUEST_METHOD": method, "PATH_INFO": path, "QUERY_STRING": query, "REQUEST_URI": target,
        "SERVER_NAME": "test", "SERVER_PORT": "3000", "wsgi.url_scheme": "http", "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(), "REMOTE_ADDR": "192.0.2.10", "HTTP_HOST": "gateway.test:3000",
        "HTTP_X_REQUEST_ID": "fixed-request-id", "HTTP_USER_AGENT": "curl/8.0",
    }  # fmt: skip
    if body:
        environ.update(CONTENT_LENGTH=str(len(body)), CONTENT_TYPE="application/json")
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
