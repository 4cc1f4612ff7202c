"""The shared HTTP layer: JSON errors, statuses, request ids and trailing slashes, on a tiny app."""

from __future__ import annotations

import io
import json
from typing import Any

import pytest

from common.jsonapi import ApiError, JsonApp, read_json_object
from common.request_context import RequestContext


def build() -> RequestContext:
    app = JsonApp()

    @app.route("/items", method=["GET", "POST"])
    def items() -> Any:
        if app_state["fail"]:
            raise RuntimeError("boom: secret internals")
        if __import__("bottle").request.method == "POST":
            return {"got": read_json_object(1024)}
        return [1, 2]

    @app.get("/teapot")
    def teapot() -> Any:
        raise ApiError(418, "short and stout", extra_field=1)

    return RequestContext(app)


app_state = {"fail": False}


def call(
    method: str,
    path: str,
    body: bytes = b"",
    content_type: str = "application/json",
    headers: dict[str, str] | None = None,
) -> tuple[int, dict[str, str], Any]:
    environ = {
        "REQUEST_METHOD": method,
        "PATH_INFO": path,
        "QUERY_STRING": "",
        "SERVER_NAME": "test",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
        "wsgi.input": io.BytesIO(body),
        "wsgi.errors": io.StringIO(),
        "CONTENT_LENGTH": str(len(body)),
        "CONTENT_TYPE": content_type,
        "REMOTE_ADDR": "127.0.0.1",
    }
    for name, value in (headers or {}).items():
        environ["HTTP_" + name.upper().replace("-", "_")] = value
    captured: dict[str, Any] = {}

    def start_response(status: str, response_headers: list[tuple[str, str]], exc_info: Any = None) -> None:
        captured["status"] = int(status.split()[0])
        captured["headers"] = dict(response_headers)

    chunks = build()(environ, start_response)
    payload = b"".join(chunks)
    return captured["status"], captured["headers"], json.loads(payload) if payload else None


def test_lists_are_json_and_trailing_slash_is_the_same_route() -> None:
    for path in ("/items", "/items/"):
        status, headers, body = call("GET", path)
        assert (status, body) == (200, [1, 2])
        assert headers["Content-Type"] == "application/json; charset=utf-8"


def test_unknown_route_is_404_json() -> None:
    status, headers, body = call("GET", "/nope")
    assert status == 404 and "error" in body and headers["Content-Type"].startswith("application/json")


def test_wrong_method_is_405_json_with_allow() -> None:
    status, headers, body = call("DELETE", "/items")
    assert status == 405 and "error" in body
    assert set(headers["Allow"].split(",")) >= {"GET", "POST"}


def test_api_error_carries_extra_fields() -> None:
    status, _, body = call("GET", "/teapot")
    assert status == 418 and body["error"] == "short and stout" and body["extra_field"] == 1


def test_unhandled_exception_is_500_json_without_internals() -> None:
    app_state["fail"] = True
    try:
        status, _, body = call("GET", "/items")
    finally:
        app_state["fail"] = False
    assert status == 500 and body["error"] == "internal server error"
    assert "boom" not in json.dumps(body)


@pytest.mark.parametrize(
    ("body", "content_type", "status"),
    [
        (b'{"a": 1}', "text/plain", 415),
        (b"", "application/json", 400),
        (b"{nope", "application/json", 400),
        (b"[1]", "application/json", 400),
        (b'{"a": NaN}', "application/json", 400),
        (b'{"a": "\xff"}', "application/json", 400),
        (b"[" * 100_000 + b"]" * 100_000, "application/json", 413),
        (b'{"a":' * 100 + b"1" + b"}" * 100, "application/json; charset=utf-8", 200),
        (b'{"k": "' + b"x" * 2000 + b'"}', "application/json", 413),
    ],
)
def test_request_bodies(body: bytes, content_type: str, status: int) -> None:
    assert call("POST", "/items", body, content_type)[0] == status


def test_deeply_nested_json_is_400_not_500() -> None:
    deep = b'{"a":' + b"[" * 100_000 + b"]" * 100_000 + b"}"
    app = JsonApp()

    @app.post("/deep")
    def deep_route() -> Any:
        return {"got": read_json_object(1_000_000)}

    environ = {
        "REQUEST_METHOD": "POST",
        "PATH_INFO": "/deep",
        "wsgi.input": io.BytesIO(deep),
        "CONTENT_LENGTH": str(len(deep)),
        "CONTENT_TYPE": "application/json",
        "wsgi.errors": io.StringIO(),
        "SERVER_NAME": "t",
        "SERVER_PORT": "80",
        "wsgi.url_scheme": "http",
    }
    statuses: list[str] = []
    chunks = RequestContext(app)(environ, lambda status, headers, exc_info=None: statuses.append(status))
    assert statuses[0].startswith("400")
    assert "nested too deeply" in json.loads(b"".join(chunks))["error"]


def test_request_id_is_kept_when_valid_and_generated_otherwise() -> None:
    assert call("GET", "/items", headers={"X-Request-ID": "abc-123"})[1]["X-Request-ID"] == "abc-123"
    generated = call("GET", "/items", headers={"X-Request-ID": "bad id\n"})[1]["X-Request-ID"]
    assert generated != "bad id\n" and len(generated) == 32
