"""The gateway's upstream client against real HTTP servers on loopback addresses: a name resolving to
several replicas (Swarm's DNS round robin) gets its traffic spread, and a vanished replica costs no request.

Only name resolution is faked (two or three loopback addresses for one name); connections are real.
"""

from __future__ import annotations

import socket
import threading
from collections import Counter
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from api_gateway_app import proxy
from api_gateway_app.proxy import Upstream

NAME = "replicas.test"


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        body = self.server.server_address[0].encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


@pytest.fixture
def replicas(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, list[str]]]:
    """Live servers on 127.0.0.1 and 127.0.0.2; the name resolves to the addresses in the returned list."""
    port = free_port()
    servers = [ThreadingHTTPServer((address, port), Handler) for address in ("127.0.0.1", "127.0.0.2")]
    for server in servers:
        threading.Thread(target=server.serve_forever, daemon=True).start()
    addresses = ["127.0.0.1", "127.0.0.2"]
    real = socket.getaddrinfo

    def resolve(host: str, *args: object, **kwargs: object) -> list:
        if host != NAME:
            return real(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in addresses]

    monkeypatch.setattr(proxy.socket, "getaddrinfo", resolve)
    yield port, addresses
    for server in servers:
        server.shutdown()
        server.server_close()


def served_by(upstream: Upstream, threads: int, requests: int) -> Counter[str]:
    seen: Counter[str] = Counter()
    lock = threading.Lock()

    def client() -> None:
        for _ in range(requests):
            answer = upstream.request("GET", "/", {"Host": NAME}, b"")
            assert answer.status == 200
            with lock:
                seen[answer.body.decode()] += 1

    workers = [threading.Thread(target=client) for _ in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    return seen


def test_connections_of_different_threads_go_to_different_replicas(replicas: tuple[int, list[str]]) -> None:
    port, _ = replicas
    upstream = Upstream("inventory-app", f"http://{NAME}:{port}", 1, 1)
    seen = served_by(upstream, threads=4, requests=25)
    assert set(seen) == {"127.0.0.1", "127.0.0.2"}
    assert sum(seen.values()) == 100


def test_a_replica_that_vanished_from_behind_the_name_costs_no_request(replicas: tuple[int, list[str]]) -> None:
    port, addresses = replicas
    addresses.append("127.0.0.3")  # resolvable, but nothing listens there: connection refused
    upstream = Upstream("inventory-app", f"http://{NAME}:{port}", 1, 1)
    seen = served_by(upstream, threads=6, requests=10)
    assert sum(seen.values()) == 60
    assert "127.0.0.3" not in seen


def test_kept_alive_connections_are_retired_so_new_replicas_get_traffic(replicas: tuple[int, list[str]]) -> None:
    port, addresses = replicas
    addresses.remove("127.0.0.2")  # not there yet
    upstream = Upstream("inventory-app", f"http://{NAME}:{port}", 1, 1)

    def get() -> str:
        return upstream.request("GET", "/", {"Host": NAME}, b"").body.decode()

    assert [get() for _ in range(3)] == ["127.0.0.1"] * 3
    addresses.append("127.0.0.2")  # scaled out
    assert get() == "127.0.0.1"  # the kept-alive connection is still young
    # Time passes: past the re-resolution interval and the connection's maximum age.
    upstream._resolved_at -= proxy._MAX_AGE + 1
    upstream._local.opened -= proxy._MAX_AGE + 1
    assert [get() for _ in range(3)] == ["127.0.0.2"] * 3
