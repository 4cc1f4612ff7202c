"""api-gateway-app against the running test stack: a faithful reverse proxy (bytes, methods, hop-by-hop
headers, 502/504 without hanging), request ids through every service, the access log in its volume and its
rotation, the OpenAPI document, the /docs page in a headless browser, and the Postman collection (newman)."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import struct
import tempfile
import time
import uuid
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from openapi_spec_validator import validate

from api_gateway_app import openapi
from common.app_main import DEFAULT_MAX_BODY_BYTES
from stack import PORT, PREFIX, PROJECT, ROOT, Response, Stack, internal_http, run, scrape, wait_for

pytestmark = pytest.mark.e2e

OUTPUT = ROOT / "tests" / "output"
COLLECTION = ROOT / "docs" / "postman" / "play-with-containers.postman_collection.json"
GENERATED_ID = re.compile(r"[0-9a-f]{32}")
# time, request id, client, method, path, status, bytes, duration (common/request_context.py RequestContext)
ACCESS_LINE = re.compile(
    r"(?P<time>\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}) (?P<rid>\S+) (?P<client>[0-9a-fA-F.:]+) "
    r"(?P<method>[A-Z]+) (?P<path>\S+) (?P<status>\d{3}) (?P<bytes>\d+) (?P<ms>\d+\.\d)ms"
)
HOP_BY_HOP_REQUEST = {
    "Connection": "keep-alive, X-Secret-Hop",
    "X-Secret-Hop": "1",
    "Keep-Alive": "timeout=30",
    "TE": "trailers",
    "Upgrade": "websocket",
    "Proxy-Authorization": "Basic c2VjcmV0OnNlY3JldA==",
}


# --- helpers ------------------------------------------------------------------------------------


def both(stack: Stack, method: str, path: str, **kwargs: Any) -> tuple[Response, Response]:
    """The same request through the gateway and straight to inventory-app, with one request id
    (error bodies carry it)."""
    headers = {"X-Request-ID": f"pass-{uuid.uuid4().hex[:12]}", **kwargs.pop("headers", {})}
    through = stack.http(method, path, headers=headers, **kwargs)
    direct = internal_http(stack, "inventory-app", method, path, headers=headers, **kwargs)
    return through, direct


def assert_same_answer(through: Response, direct: Response) -> None:
    assert (through.status, through.body) == (direct.status, direct.body)
    assert through.headers["content-type"] == direct.headers["content-type"]


def new_movie(stack: Stack, title: str, description: str = "") -> dict[str, Any]:
    answer = stack.http("POST", "/api/movies", {"title": title, "description": description})
    assert answer.status == 200, answer.body
    return answer.json()


def request(
    port: int, method: str, path: str, headers: dict[str, str] | None = None, body: bytes | None = None
) -> Response:
    """A raw HTTP/1.1 request from the host (http.client sends our Connection, TE, ... headers as given)."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    try:
        conn.request(method, path, body=body, headers=headers or {})
        answer = conn.getresponse()
        return Response(answer.status, {k.lower(): v for k, v in answer.getheaders()}, answer.read())
    finally:
        conn.close()


def read_volume(volume: str, script: str) -> str:
    """Run a shell snippet in a throwaway container that mounts the volume read-only at /logs."""
    return run(
        "docker", "run", "--rm", "--entrypoint", "bash", "-v", f"{volume}:/logs:ro",
        f"{PROJECT}/api-gateway-app", "-c", script,
    ).stdout  # fmt: skip


def access_lines(volume: str, name: str = "access.log") -> list[str]:
    return read_volume(volume, f"cat /logs/{name}").splitlines()


def gateway_started(stack: Stack) -> str:
    return stack.inspect("api-gateway-app", "{{.State.StartedAt}} restarts={{.RestartCount}}")


def gateway_networks(stack: Stack) -> list[str]:
    return sorted(json.loads(stack.inspect("api-gateway-app", "{{json .NetworkSettings.Networks}}")))


@contextlib.contextmanager
def extra_gateway(stack: Stack, name: str, **overrides: str) -> Iterator[tuple[int, str]]:
    """A second gateway from the test image, configured like the test one (its environment copied
    from `docker inspect`) plus ``overrides``, on the same networks, with its own log volume and a
    random port on 127.0.0.1. Yields (port, volume); removes both afterwards."""
    container, volume = f"{PREFIX}{name}", f"{PREFIX}{name}-logs"
    env = dict(line.split("=", 1) for line in json.loads(stack.inspect("api-gateway-app", "{{json .Config.Env}}")))
    env.update(overrides)
    networks = gateway_networks(stack)
    edge = next(n for n in networks if n.endswith("_edge"))
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "gateway.env"
        env_file.touch(mode=0o600)
        env_file.write_text("".join(f"{k}={v}\n" for k, v in env.items()))
        run("docker", "rm", "--force", container, check=False)
        try:
            run(
                "docker", "create", "--name", container, "--env-file", str(env_file), "--network", edge,
                "--publish", "127.0.0.1::3000", "--read-only", "--tmpfs", "/tmp",
                "--volume", f"{volume}:/var/log/api-gateway", f"{PROJECT}/api-gateway-app",
            )  # fmt: skip
            for network in networks:
                if network != edge:
                    run("docker", "network", "connect", network, container)
            run("docker", "start", container)
            port = int(run("docker", "port", container, "3000/tcp").stdout.split()[0].rsplit(":", 1)[1])

            def healthy() -> bool:
                with contextlib.suppress(OSError, http.client.HTTPException):
                    return request(port, "GET", "/health").status == 200
                return False

            wait_for(healthy, 60, what=f"{container} to answer /health with 200")
            yield port, volume
        finally:
            run("docker", "rm", "--force", container, check=False)
            run("docker", "volume", "rm", volume, check=False)


# Answers every request with what it received, and adds hop-by-hop headers of its own.
ECHO_SERVER = """
import json
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

class Echo(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def answer(self):
        size = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(size) if size else b""
        data = json.dumps({"method": self.command, "target": self.path, "headers": list(self.headers.items()),
                           "body": body.decode("utf-8")}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(data)))
        self.send_header("Connection", "keep-alive, X-Upstream-Hop")
        self.send_header("X-Upstream-Hop", "secret")
        self.send_header("Keep-Alive", "timeout=30")
        self.send_header("Proxy-Authenticate", "Basic realm=upstream")
        self.send_header("Upgrade", "h2c")
        self.send_header("Trailer", "X-Checksum")
        self.send_header("X-Upstream-End", "kept")
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_DELETE = answer

    def log_message(self, *args):
        pass

ThreadingHTTPServer(("0.0.0.0", 8080), Echo).serve_forever()
"""


@contextlib.contextmanager
def echo_server(stack: Stack) -> Iterator[str]:
    """A throwaway HTTP echo server on the backend network (python from the test inventory-app image).
    Yields its URL."""
    name = f"{PREFIX}echo"
    backend = next(n for n in gateway_networks(stack) if n.endswith("_backend"))
    run("docker", "rm", "--force", name, check=False)
    try:
        run(
            "docker", "run", "--rm", "--detach", "--name", name, "--network", backend, "--network-alias", name,
            "--entrypoint", "python3", f"{PROJECT}/inventory-app", "-c", ECHO_SERVER,
        )  # fmt: skip
        yield f"http://{name}:8080"
    finally:
        run("docker", "rm", "--force", name, check=False)


def example(document: dict[str, Any], path: str, method: str, status: int) -> Any:
    content = document["paths"][path][method]["responses"][str(status)]["content"]
    return next(iter(content.values()))["example"]


def without_request_id(body: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in body.items() if k != "request_id"}


def png_size(path: Path) -> tuple[int, int]:
    header = path.read_bytes()[:24]
    assert header[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG file"
    width, height = struct.unpack(">II", header[16:24])
    return width, height


# --- 1. byte-exact passthrough ---------------------------------------------------------------------


def test_reads_answer_byte_for_byte_what_inventory_app_answers(stack: Stack) -> None:
    movie = new_movie(stack, "Amélie 🎬 passthrough", 'quotes " and \\ and <tags> & unicode: ñ, 東京')
    for path in (
        "/api/movies",
        "/api/movies/",
        "/api/movies?title=AM%C3%89LIE",
        "/api/movies?limit=1&offset=0",
        f"/api/movies/{movie['id']}",
        f"/api/movies/{movie['id']}/",
    ):
        through, direct = both(stack, "GET", path)
        assert through.status == 200, (path, through.body)
        assert_same_answer(through, direct)
    assert stack.http("GET", f"/api/movies/{movie['id']}").json() == movie


def test_writes_answer_exactly_what_inventory_app_answers(stack: Stack) -> None:
    payload = {"title": "Write passthrough ✓", "description": "same bytes both ways"}
    # POST: two creations differ only by their new id.
    through, direct = both(stack, "POST", "/api/movies", body=payload)
    assert through.status == direct.status == 200
    created, created_direct = through.json(), direct.json()
    assert created == {"id": created["id"], **payload}
    assert through.body == direct.body.replace(
        f'"id":{created_direct["id"]},'.encode(), f'"id":{created["id"]},'.encode()
    )
    assert through.headers["content-type"] == direct.headers["content-type"]

    # PUT: the same change to the same movie gives the same answer.
    change = {"description": "changed through both paths"}
    through, direct = both(stack, "PUT", f"/api/movies/{created['id']}", body=change)
    assert through.status == 200
    assert_same_answer(through, direct)
    assert through.json() == {**created, **change}

    for movie_id in (created["id"], created_direct["id"]):
        assert stack.http("DELETE", f"/api/movies/{movie_id}").status == 200


def test_deleting_a_movie_answers_like_inventory_app_does(stack: Stack) -> None:
    twins = [new_movie(stack, "Twin to delete", "identical") for _ in range(2)]
    headers = {"X-Request-ID": "delete-twins"}
    through = stack.http("DELETE", f"/api/movies/{twins[0]['id']}", headers=headers)
    direct = internal_http(stack, "inventory-app", "DELETE", f"/api/movies/{twins[1]['id']}", headers=headers)
    assert through.status == direct.status == 200
    assert through.body == direct.body.replace(f'"id":{twins[1]["id"]}'.encode(), f'"id":{twins[0]["id"]}'.encode())
    assert through.headers["content-type"] == direct.headers["content-type"]


def test_deleting_every_movie_answers_like_inventory_app_does(stack: Stack) -> None:
    internal_http(stack, "inventory-app", "DELETE", "/api/movies")
    for _ in range(3):
        new_movie(stack, "Doomed")
    through = stack.http("DELETE", "/api/movies/")
    for _ in range(3):
        new_movie(stack, "Doomed again")
    direct = internal_http(stack, "inventory-app", "DELETE", "/api/movies/")
    assert through.status == 200 and through.body == b'{"deleted":3}'
    assert_same_answer(through, direct)
    assert set(through.json()) == set(example(openapi.document(), "/api/movies", "delete", 200))
    assert stack.http("GET", "/api/movies").json() == []


def test_error_answers_are_passed_through_unchanged(stack: Stack) -> None:
    movie = new_movie(stack, "Target of bad requests")
    cases: list[tuple[int, str, str, dict[str, Any]]] = [
        (404, "GET", "/api/movies/999999999", {}),
        (404, "GET", "/api/movies/not-a-number", {}),
        (404, "PUT", "/api/movies/999999999", {"body": {"title": "x"}}),
        (404, "DELETE", "/api/movies/999999999/", {}),
        (400, "GET", "/api/movies?limit=0", {}),
        (400, "POST", "/api/movies", {"body": {"title": ""}}),
        (400, "POST", "/api/movies", {"body": {"title": "ok", "rating": 5}}),
        (400, "POST", "/api/movies/", {"raw": b'{"title": "unclosed', "headers": {"Content-Type": "application/json"}}),
        (400, "PUT", f"/api/movies/{movie['id']}", {"body": {}}),
        (400, "PUT", f"/api/movies/{movie['id']}", {"body": {"title": 7}}),
        (415, "POST", "/api/movies", {"raw": b"title=x", "headers": {"Content-Type": "text/plain"}}),
        (413, "POST", "/api/movies", {"body": {"title": "big", "description": "x" * DEFAULT_MAX_BODY_BYTES}}),
    ]
    for status, method, path, kwargs in cases:
        through, direct = both(stack, method, path, **kwargs)
        assert through.status == status, (method, path, through.body)
        assert_same_answer(through, direct)
        assert "error" in through.json()


# --- 2. hop-by-hop headers ------------------------------------------------------------------------


def test_hop_by_hop_headers_do_not_cross_the_gateway_in_either_direction(stack: Stack) -> None:
    with echo_server(stack) as echo_url, extra_gateway(stack, "gw-hop", INVENTORY_APP_URL=echo_url) as (port, _):
        sent = {
            **HOP_BY_HOP_REQUEST,
            "X-End-To-End": "kept",
            "X-Forwarded-For": "203.0.113.7",
            "X-Request-ID": "hop-by-hop-check",
        }
        answer = request(port, "GET", "/api/movies/7?title=a%20b&limit=2", headers=sent)
        assert answer.status == 200, answer.body
        seen = answer.json()
        received = {name.lower(): value for name, value in seen["headers"]}
        print(f"\ninventory-app's side received: {json.dumps(seen['headers'])}")

        assert (seen["method"], seen["target"]) == ("GET", "/api/movies/7?title=a%20b&limit=2")
        for name in ("x-secret-hop", "keep-alive", "te", "upgrade", "proxy-authorization"):
            assert name not in received, f"{name} reached the upstream"
        assert "x-secret-hop" not in received.get("connection", "").lower()
        assert received["x-end-to-end"] == "kept"
        assert received["x-request-id"] == "hop-by-hop-check"
        assert received["host"] == echo_url.removeprefix("http://")
        # The edge trusts no client's X-Forwarded-* (waitress clears them): the peer address replaces it.
        assert re.fullmatch(r"[0-9a-fA-F.:]+", received["x-forwarded-for"]), received["x-forwarded-for"]
        assert received["x-forwarded-proto"] == "http"
        assert received["x-forwarded-host"] == f"127.0.0.1:{port}"

        for name in ("x-upstream-hop", "keep-alive", "proxy-authenticate", "upgrade", "trailer"):
            assert name not in answer.headers, f"the upstream's {name} reached the client"
        assert "x-upstream-hop" not in answer.headers.get("connection", "").lower()
        assert answer.headers["x-upstream-end"] == "kept"
        assert answer.headers["x-request-id"] == "hop-by-hop-check"

        # A body goes through byte for byte, with its type and a correct length; Expect is this hop's business.
        body = json.dumps({"title": "Écho", "description": "x" * 3000}, ensure_ascii=False).encode()
        answer = request(
            port,
            "POST",
            "/api/movies/",
            headers={"Content-Type": "application/json; charset=utf-8", "Expect": "100-continue"},
            body=body,
        )
        seen = answer.json()
        received = {name.lower(): value for name, value in seen["headers"]}
        assert (seen["method"], seen["target"]) == ("POST", "/api/movies/")
        assert seen["body"].encode() == body
        assert received["content-type"] == "application/json; charset=utf-8"
        assert received["content-length"] == str(len(body))
        assert "expect" not in received


# --- 3. upstream failures ------------------------------------------------------------------------------


def test_a_stopped_inventory_app_gives_502_json_and_service_resumes_when_it_is_back(stack: Stack) -> None:
    document = openapi.document()
    before = gateway_started(stack)
    run("docker", "stop", stack.container("inventory-app"))
    try:
        for method, path, body in (("GET", "/api/movies", None), ("POST", "/api/movies/", {"title": "lost"})):
            started = time.monotonic()
            answer = stack.http(method, path, body, timeout=60)
            elapsed = time.monotonic() - started
            print(f"\n{method} {path} with inventory-app stopped: {answer.status} in {elapsed:.2f}s")
            assert answer.status == 502, answer.body
            assert answer.headers["content-type"] == "application/json; charset=utf-8"
            assert without_request_id(answer.json()) == without_request_id(
                example(document, "/api/movies", method.lower(), 502)
            )
            assert answer.json()["request_id"] == answer.headers["x-request-id"]
        health = stack.http("GET", "/health")
        assert health.status == 503 and health.json()["checks"]["inventory-app"] == "down"
    finally:
        run("docker", "start", stack.container("inventory-app"))
        stack.wait_healthy()
    assert stack.http("GET", "/api/movies").status == 200
    assert gateway_started(stack) == before, "the gateway was restarted"


def test_a_paused_inventory_app_gives_504_json_after_the_read_timeout_not_a_hang(stack: Stack) -> None:
    document = openapi.document()
    before = gateway_started(stack)
    assert stack.http("GET", "/api/movies").status == 200  # a kept-alive upstream connection exists
    run("docker", "pause", stack.container("inventory-app"))
    try:
        started = time.monotonic()
        answer = stack.http("GET", "/api/movies", timeout=120)
        elapsed = time.monotonic() - started
        print(f"\nGET /api/movies with inventory-app paused: {answer.status} after {elapsed:.1f}s")
        assert answer.status == 504, answer.body
        assert answer.headers["content-type"] == "application/json; charset=utf-8"
        assert without_request_id(answer.json()) == without_request_id(example(document, "/api/movies", "get", 504))
        # UPSTREAM_READ_TIMEOUT defaults to 10 s: the answer waits for it, and not for much longer.
        assert 9 <= elapsed < 60

        started = time.monotonic()
        health = stack.http("GET", "/health", timeout=60)
        elapsed = time.monotonic() - started
        print(f"GET /health with inventory-app paused: {health.status} after {elapsed:.1f}s")
        assert health.status == 503
        assert health.json() == example(document, "/health", "get", 503)
        assert elapsed < 9, "/health waited for the full read timeout"
    finally:
        run("docker", "unpause", stack.container("inventory-app"))
        stack.wait_healthy()
    assert stack.http("GET", "/api/movies").status == 200
    assert gateway_started(stack) == before, "the gateway was restarted"


# --- 4. routing -----------------------------------------------------------------------------------------


def test_orders_are_answered_by_billing_app_unchanged(stack: Stack) -> None:
    queued = stack.http("POST", "/api/billing", {"user_id": 31, "number_of_items": 1, "total_amount": "5"})
    assert queued.status == 200
    message_id = queued.json()["message_id"]
    wait_for(
        lambda: message_id in stack.http("GET", "/api/orders?user_id=31&limit=1000").body.decode(),
        60,
        what="the order to be stored",
    )
    for path, status in (
        ("/api/orders", 200),
        ("/api/orders/", 200),
        ("/api/orders?user_id=31", 200),
        ("/api/orders?user_id=x", 400),
        ("/api/orders?limit=5000", 400),
    ):
        headers = {"X-Request-ID": f"orders-{uuid.uuid4().hex[:8]}"}
        through = stack.http("GET", path, headers=headers)
        direct = internal_http(stack, "billing-app", "GET", path, headers=headers)
        assert through.status == status, (path, through.body)
        assert_same_answer(through, direct)
    assert [o["user_id"] for o in stack.http("GET", "/api/orders?user_id=31").json()] == [31]


def test_unknown_routes_answer_404_json(stack: Stack) -> None:
    for method, path in (
        ("GET", "/nope"),
        ("GET", "/api"),
        ("GET", "/api/movies/1/extra"),
        ("POST", "/api/orders/1"),
        ("GET", "/docs/extra"),
    ):
        answer = stack.http(method, path)
        assert answer.status == 404, path
        assert answer.headers["content-type"] == "application/json; charset=utf-8"
        assert answer.json()["error"] == f"no such resource: {method} {path}"


def test_a_wrong_method_answers_405_json_with_allow(stack: Stack) -> None:
    for method, path, allowed in (
        ("PATCH", "/api/movies", {"GET", "POST", "DELETE"}),
        ("POST", "/api/movies/1/", {"GET", "PUT", "DELETE"}),
        ("GET", "/api/billing", {"POST"}),
        ("DELETE", "/api/orders", {"GET"}),
        ("POST", "/health", {"GET"}),
        ("PUT", "/openapi.json", {"GET"}),
        ("DELETE", "/docs/", {"GET"}),
    ):
        answer = stack.http(method, path)
        assert answer.status == 405, (method, path)
        assert answer.headers["content-type"] == "application/json; charset=utf-8"
        assert {m.strip() for m in answer.headers["allow"].split(",")} == allowed
        assert answer.json()["error"] == f"method {method} not allowed on {path.rstrip('/')}"


def test_every_route_accepts_a_trailing_slash(stack: Stack) -> None:
    for path in ("/health", "/openapi.json", "/docs", "/api/movies", "/api/orders"):
        plain, slashed = stack.http("GET", path), stack.http("GET", path + "/")
        assert plain.status == slashed.status == 200, path
        assert plain.headers["content-type"] == slashed.headers["content-type"]
        if path != "/api/orders":  # orders may be stored between the two calls
            assert plain.body == slashed.body, path
    movie = stack.http("POST", "/api/movies/", {"title": "Slashed"}).json()
    assert stack.http("GET", f"/api/movies/{movie['id']}/").json() == movie
    assert stack.http("PUT", f"/api/movies/{movie['id']}/", {"description": "d"}).json()["description"] == "d"
    assert stack.http("DELETE", f"/api/movies/{movie['id']}/").status == 200
    order = {"user_id": "1", "number_of_items": "1", "total_amount": "1"}
    assert stack.http("POST", "/api/billing/", order).json()["status"] == "queued"


# --- 5. request ids ---------------------------------------------------------------------------------------


def test_a_valid_request_id_is_kept_and_an_invalid_one_is_replaced(stack: Stack) -> None:
    for kept in ("trace-1", "A.b_c:d-9", "x" * 128):
        answer = stack.http("GET", "/api/movies/999999999", headers={"X-Request-ID": kept})
        assert answer.headers["x-request-id"] == kept
        assert answer.json()["request_id"] == kept
    generated = set()
    for bad in ("bad id", "x" * 200, "semi;colon", "ünï", ""):
        answer = stack.http("GET", "/health", headers={"X-Request-ID": bad})
        rid = answer.headers["x-request-id"]
        assert GENERATED_ID.fullmatch(rid) and rid != bad, (bad, rid)
        generated.add(rid)
    generated.add(stack.http("GET", "/health").headers["x-request-id"])
    assert len(generated) == 6, "request ids are not unique"


def test_the_request_id_reaches_inventory_app_log_and_the_stored_order(stack: Stack) -> None:
    since = str(int(time.time()) - 5)
    kept = f"trace-{uuid.uuid4().hex[:12]}"
    stack.http("GET", "/api/movies?title=trace", headers={"X-Request-ID": kept})
    replaced = stack.http("GET", "/api/movies?title=trace", headers={"X-Request-ID": "bad id"}).headers["x-request-id"]

    def inventory_log() -> str:
        result = run("docker", "logs", "--since", since, stack.container("inventory-app"))
        return result.stdout + result.stderr

    wait_for(lambda: kept in inventory_log() and replaced in inventory_log(), 30, what="the ids in inventory-app's log")
    line = next(line for line in inventory_log().splitlines() if kept in line)
    assert "GET /api/movies?title=trace 200" in line

    order_rid = f"order-{uuid.uuid4().hex[:12]}"
    answer = stack.http(
        "POST",
        "/api/billing",
        {"user_id": 77, "number_of_items": 2, "total_amount": 3},
        headers={"X-Request-ID": order_rid},
    )
    assert answer.status == 200 and answer.headers["x-request-id"] == order_rid
    message_id = str(uuid.UUID(answer.json()["message_id"]))
    rows = wait_for(lambda: stack.order_rows(message_id=message_id), 60, what="the stored order")
    assert [row.request_id for row in rows] == [order_rid]


# --- 6. the logs volume ---------------------------------------------------------------------------------------


def test_the_access_log_in_the_volume_has_one_complete_line_per_request(stack: Stack) -> None:
    volume = f"{PREFIX}api-gateway-app"
    rid = f"access-{uuid.uuid4().hex[:12]}"
    ok = stack.http("GET", "/api/movies?title=access-log", headers={"X-Request-ID": rid})
    missing = stack.http("GET", "/api/movies/999999999/", headers={"X-Request-ID": rid})

    def mine() -> list[re.Match[str]]:
        matches = [ACCESS_LINE.fullmatch(line) for line in access_lines(volume) if f" {rid} " in line]
        assert all(matches), "a malformed access-log line"
        return [m for m in matches if m]

    lines = wait_for(lambda: (found := mine()) and len(found) == 2 and found, 30, what="two access-log lines")
    print("\n" + "\n".join(m.group(0) for m in lines))
    first, second = lines
    assert (first["method"], first["path"], first["status"]) == ("GET", "/api/movies?title=access-log", "200")
    assert (second["method"], second["path"], second["status"]) == ("GET", "/api/movies/999999999/", "404")
    assert int(first["bytes"]) == len(ok.body) and int(second["bytes"]) == len(missing.body)
    logged = datetime.strptime(first["time"], "%Y-%m-%d %H:%M:%S,%f").replace(tzinfo=UTC)
    assert abs(datetime.now(UTC) - logged) < timedelta(minutes=10)
    assert float(first["ms"]) >= 0
    listing = read_volume(volume, "ls -l /logs; grep -c . /logs/app.log")
    assert "access.log" in listing and "app.log" in listing
    assert int(listing.split()[-1]) > 0, "app.log is empty"


def test_the_access_log_rotates_at_the_configured_size(stack: Stack) -> None:
    max_bytes, backups = 1024, 2
    with extra_gateway(stack, "gw-rotate", LOG_MAX_BYTES=str(max_bytes), LOG_BACKUPS=str(backups)) as (port, volume):
        rids = [f"rotate-{i:03d}" for i in range(60)]
        for rid in rids:
            assert request(port, "GET", "/health", headers={"X-Request-ID": rid}).status == 200
        # Access lines are written in batches, a fraction of a second after their requests.
        wait_for(lambda: rids[-1] in "\n".join(access_lines(volume)), 10, 0.2, "the newest line in access.log")
        sizes = dict(
            line.split() for line in read_volume(volume, "cd /logs && stat -c '%n %s' access.log*").splitlines() if line
        )
        print(f"\naccess-log files after {len(rids)} requests with LOG_MAX_BYTES={max_bytes}: {sizes}")
        assert set(sizes) == {"access.log", "access.log.1", "access.log.2"}
        assert all(0 < int(size) <= max_bytes for size in sizes.values())
        kept = [line for name in ("access.log.2", "access.log.1", "access.log") for line in access_lines(volume, name)]
        assert all(ACCESS_LINE.fullmatch(line) for line in kept)
        assert rids[0] not in "\n".join(kept), "the oldest lines should have been rotated away"


# --- 7. the OpenAPI document ------------------------------------------------------------------------------------
# (The document against the code's routes and limits, without Docker: tests/lint/test_openapi.py.)


def test_openapi_json_is_a_valid_openapi_3_document(stack: Stack) -> None:
    answer = stack.http("GET", "/openapi.json")
    assert answer.status == 200
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    document = answer.json()
    assert document["openapi"].startswith("3.")
    validate(document)
    assert document == json.loads(json.dumps(openapi.document())), "the stack serves another document"


def test_documented_examples_are_the_answers_the_gateway_really_gives(stack: Stack) -> None:
    document = stack.http("GET", "/openapi.json").json()
    order = {"user_id": "1", "number_of_items": "1", "total_amount": "9.999"}
    movie = new_movie(stack, "Documented")
    errors = [
        ("/api/movies", "get", 400, stack.http("GET", "/api/movies?limit=0")),
        ("/api/movies", "post", 400, stack.http("POST", "/api/movies", {"title": ""})),
        ("/api/movies", "post", 413, stack.http("POST", "/api/movies", raw=b"{" * 70000)),
        (
            "/api/movies",
            "post",
            415,
            stack.http("POST", "/api/movies", raw=b"x", headers={"Content-Type": "text/plain"}),
        ),
        ("/api/movies/{id}", "get", 404, stack.http("GET", "/api/movies/999999999")),
        ("/api/movies/{id}", "put", 400, stack.http("PUT", f"/api/movies/{movie['id']}", {"title": ""})),
        ("/api/movies/{id}", "put", 413, stack.http("PUT", f"/api/movies/{movie['id']}", raw=b" " * 70000)),
        ("/api/billing", "post", 400, stack.http("POST", "/api/billing", order)),
        ("/api/billing", "post", 413, stack.http("POST", "/api/billing", {**order, "pad": " " * 70000})),
        (
            "/api/billing",
            "post",
            415,
            stack.http("POST", "/api/billing", raw=b"{}", headers={"Content-Type": "text/csv"}),
        ),
        ("/api/orders", "get", 400, stack.http("GET", "/api/orders?user_id=x")),
    ]
    for path, method, status, answer in errors:
        assert answer.status == status, (path, method, answer.body)
        assert without_request_id(answer.json()) == without_request_id(example(document, path, method, status))
        assert set(answer.json()) == set(example(document, path, method, status))
    assert stack.http("GET", "/health").json() == example(document, "/health", "get", 200)
    queued = stack.http("POST", "/api/billing", {**order, "total_amount": "9.99"}).json()
    stored = wait_for(lambda: stack.http("GET", "/api/orders").json(), 60, what="a stored order")
    shapes = [
        ("/api/movies", "get", stack.http("GET", "/api/movies").json()[0]),
        ("/api/movies", "post", movie),
        ("/api/movies/{id}", "get", stack.http("GET", f"/api/movies/{movie['id']}").json()),
        ("/api/movies/{id}", "put", stack.http("PUT", f"/api/movies/{movie['id']}", {"description": "d"}).json()),
        ("/api/billing", "post", queued),
        ("/api/orders", "get", stored[0]),
    ]
    for path, method, real in shapes:
        documented = example(document, path, method, 200)
        documented = documented[0] if isinstance(documented, list) else documented
        assert set(real) == set(documented), (path, method)
    deleted = stack.http("DELETE", f"/api/movies/{movie['id']}").json()
    assert set(deleted) == set(example(document, "/api/movies/{id}", "delete", 200))


# --- 8. the /docs page -----------------------------------------------------------------------------------------


def test_the_docs_page_shows_every_route_in_a_headless_browser(stack: Stack) -> None:
    chromium = shutil.which("chromium")
    if chromium is None:
        pytest.skip("chromium is not installed (Debian package `chromium`; .ci/run installs it)")
    html = stack.http("GET", "/docs")
    assert html.status == 200 and html.headers["content-type"] == "text/html; charset=utf-8"
    page = html.body.decode()
    # Self-contained: no script, stylesheet, image or font from anywhere.
    assert not re.search(r"<(script|link|img|iframe)\b|@import|url\(", page, re.IGNORECASE)
    assert all(href.startswith(("#", "/")) for href in re.findall(r'href="([^"]*)"', page))

    OUTPUT.mkdir(parents=True, exist_ok=True)
    screenshot = OUTPUT / "docs.png"
    screenshot.unlink(missing_ok=True)
    url = f"http://127.0.0.1:{PORT}/docs"
    with tempfile.TemporaryDirectory() as profile:
        browser = [
            chromium, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
            "--disable-background-networking", "--disable-component-update", "--disable-sync",
            f"--user-data-dir={profile}",
        ]  # fmt: skip
        run(*browser, f"--screenshot={screenshot}", "--window-size=1280,4000", url, timeout=180)
        dom = run(*browser, "--dump-dom", url, timeout=180).stdout
    print(f"\nscreenshot of /docs: {screenshot} ({screenshot.stat().st_size} bytes)")
    assert png_size(screenshot) == (1280, 4000)
    assert screenshot.stat().st_size > 50_000, "the screenshot looks blank"

    shown = set(re.findall(r'<span class="verb \w+">(\w+)</span><span class="path">([^<]+)</span>', dom))
    documented = {
        (method.upper(), path)
        for path, item in openapi.document()["paths"].items()
        for method in item
        if method != "parameters"
    }
    assert shown == documented
    assert "play-with-containers API" in dom


# --- 9. the Postman collection -----------------------------------------------------------------------------------
# (Its coverage of every documented route, without Docker: tests/lint/test_openapi.py.)


def test_newman_runs_the_postman_collection_against_the_stack(stack: Stack) -> None:
    venv = ROOT / os.environ.get("PWC_TEST_VENV", ".venv-test")
    newman = venv / "node" / "node_modules" / ".bin" / "newman"
    if not newman.exists():
        found = shutil.which("newman")
        if found is None:
            pytest.skip(f"newman is not installed ({newman}; scripts/test.sh installs it with npm)")
        newman = Path(found)
    # The collection deletes every movie: it runs last in this file, and on the test stack only.
    result = run(
        str(newman), "run", str(COLLECTION), "--env-var", f"baseUrl=http://127.0.0.1:{PORT}",
        "--color", "off", "--disable-unicode", "--timeout-request", "60000",
        check=False, timeout=300,
    )  # fmt: skip
    OUTPUT.mkdir(parents=True, exist_ok=True)
    (OUTPUT / "newman.txt").write_text(result.stdout + result.stderr)
    lines = result.stdout.splitlines()
    start = next((i for i, line in enumerate(lines) if "executed" in line and "failed" in line), 1)
    summary = "\n".join(lines[start - 1 :])
    print(f"\nnewman summary (full output in {OUTPUT / 'newman.txt'}):\n{summary}")
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr
    row = re.search(r"\|\s+assertions\s+\|\s+(\d+)\s+\|\s+(\d+)\s+\|", result.stdout)
    assert row and int(row[1]) > 50 and int(row[2]) == 0


# --- a hung upstream holds a bounded share of the gateway; names resolve with a deadline -------------------


def timed(call: Any, *args: Any, **kwargs: Any) -> tuple[Response, float]:
    started = time.monotonic()
    answer = call(*args, **kwargs)
    return answer, time.monotonic() - started


def test_a_hung_inventory_app_does_not_stall_orders_health_or_the_other_upstream(stack: Stack) -> None:
    movie = new_movie(stack, f"bulkhead {uuid.uuid4().hex[:8]}")
    errors = "gateway_upstream_errors_total"
    before = scrape(stack, "api-gateway-app")
    run("docker", "pause", stack.container("inventory-app"))
    try:
        with ThreadPoolExecutor(20) as pool:
            gets = [pool.submit(timed, stack.http, "GET", f"/api/movies/{movie['id']}") for _ in range(20)]
            # Once the hung upstream's share of threads is taken, the rest of the GETs are refused quickly.
            wait_for(lambda: any(g.done() for g in gets), 10, interval=0.1, what="a GET to be refused")
            # The bulkhead's six requests hold their worker threads, waiting for the hung upstream.
            assert scrape(stack, "api-gateway-app").value("http_requests_in_flight") >= 6
            order, order_took = timed(
                stack.http, "POST", "/api/billing", {"user_id": 7, "number_of_items": 1, "total_amount": "1"}
            )
            health, health_took = timed(stack.http, "GET", "/health")
            orders, orders_took = timed(stack.http, "GET", "/api/orders?limit=1")
            answered = [g.result() for g in gets]
            # The metrics listener is not one of the worker threads: it answers while they are all busy.
            during = scrape(stack, "api-gateway-app")
    finally:
        run("docker", "unpause", stack.container("inventory-app"))
    print(f"\nwith inventory-app paused: POST {order_took:.2f}s, /health {health_took:.2f}s, orders {orders_took:.2f}s")
    assert (order.status, orders.status) == (200, 200), (order.body, orders.body)
    assert health.status == 503 and health.json()["checks"]["inventory-app"] == "down", health.body
    assert max(order_took, health_took, orders_took) < 1.0
    statuses = Counter(answer.status for answer, _ in answered)
    # At most the bulkhead's size (threads - 2 = 6) waited for the read timeout (504); the others were refused.
    assert set(statuses) <= {503, 504} and statuses[504] <= 6 and statuses[503] >= 14, statuses
    refused = [(answer, took) for answer, took in answered if answer.status == 503]
    assert all(took < 2.0 for _, took in refused), [round(took, 2) for _, took in refused]
    assert all(answer.json()["error"] == "inventory-app is not answering; try again shortly" for answer, _ in refused)
    # Counted per upstream and reason (/health's own probes of the paused app may add to both).
    for reason, status in (("busy", 503), ("timeout", 504)):
        grew = during.value(errors, upstream="inventory-app", reason=reason) - before.value(
            errors, upstream="inventory-app", reason=reason
        )
        assert grew >= statuses[status], (reason, grew, statuses)
    assert during.value(errors, upstream="billing-app") == before.value(errors, upstream="billing-app")
    stack.wait_healthy()
    assert stack.http("GET", f"/api/movies/{movie['id']}").status == 200


def test_a_stopped_upstream_is_reported_within_the_connect_and_resolve_deadlines(stack: Stack) -> None:
    """On an internal network, the name of a stopped container takes about 10 s to fail to resolve."""
    run("docker", "stop", stack.container("inventory-app"))
    timings: list[tuple[int, float]] = []
    try:

        def refused_after_a_fresh_resolve() -> bool:
            answer, took = timed(stack.http, "GET", "/api/movies?limit=1")
            timings.append((answer.status, took))
            return len([t for t in timings if t[0] == 502]) >= 3

        # Names are resolved again every 5 s: within 30 s, several requests had to resolve the stopped name.
        wait_for(refused_after_a_fresh_resolve, 30, interval=0.5, what="502s for a stopped upstream")
    finally:
        run("docker", "start", stack.container("inventory-app"))
        stack.wait_healthy()
    print(f"\nGET with inventory-app stopped: {[(s, round(t, 1)) for s, t in timings]}")
    assert {status for status, _ in timings} <= {502, 504}
    # connect timeout (2 s) + resolve deadline (2 s), never the resolver's own 10 s.
    assert max(took for _, took in timings) < 5.0


# --- the path goes to inventory-app exactly as the client wrote it -------------------------------------------


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/movies/%25{hex}"),  # %25 is "%": the gateway must not hand inventory-app "%3x..." to decode
        ("DELETE", "/api/movies/%252F"),  # once decoded "%2F"; decoded twice it was "/": the collection
        ("DELETE", "/api/movies/%2F"),  # a movie named "/" is not the collection
        ("DELETE", "/api/movies//"),
        ("DELETE", "/api//movies"),
        ("GET", "/api/movies/%2E%2E"),
        ("DELETE", "/api/movies/{id}/.."),
        ("DELETE", "/api/movies/%2E%2E/"),
    ],
)
def test_encoded_and_dotted_paths_name_no_other_resource(stack: Stack, method: str, path: str) -> None:
    movie = new_movie(stack, f"path {uuid.uuid4().hex[:8]}")
    digits = str(movie["id"])
    target = path.format(hex=f"{ord(digits[0]):X}{digits[1:]}", id=digits)
    answer = stack.http(method, target)
    assert answer.status == 404, (target, answer.status, answer.body)
    assert answer.headers["content-type"] == "application/json; charset=utf-8"
    assert stack.http("GET", f"/api/movies/{movie['id']}").status == 200, "the movie is gone"
    assert stack.http("GET", "/api/movies?limit=1").json() != [], "the collection is gone"
