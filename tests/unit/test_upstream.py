"""The gateway's upstream client against real HTTP servers on loopback addresses: a name resolving to
several replicas (Swarm's DNS round robin) gets its traffic spread, and a vanished replica costs no request.

Only name resolution is faked (two or three loopback addresses for one name); connections are real.
"""

from __future__ import annotations

import socket
import threading
import time
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


def servers_on_one_port(addresses: tuple[str, ...]) -> tuple[int, list[ThreadingHTTPServer]]:
    """HTTP servers on the same free port of each address. The port is free on 127.0.0.1 only when
    probed: another test's client may hold it on 127.0.0.2, so a clash means another port."""
    for _ in range(20):
        port, servers = free_port(), []
        try:
            for address in addresses:
                servers.append(ThreadingHTTPServer((address, port), Handler))
        except OSError:
            for server in servers:
                server.server_close()
            continue
        return port, servers
    raise AssertionError(f"no port free on all of {addresses} in 20 tries")


@pytest.fixture
def replicas(monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[int, list[str]]]:
    """Live servers on 127.0.0.1 and 127.0.0.2; the name resolves to the addresses in the returned list."""
    port, servers = servers_on_one_port(("127.0.0.1", "127.0.0.2"))
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
    upstream = Upstream("inventory-app", f"http://{NAME}:{port}", 1, 1, 8)
    seen = served_by(upstream, threads=4, requests=25)
    assert set(seen) == {"127.0.0.1", "127.0.0.2"}
    assert sum(seen.values()) == 100


def test_a_replica_that_vanished_from_behind_the_name_costs_no_request(replicas: tuple[int, list[str]]) -> None:
    port, addresses = replicas
    addresses.append("127.0.0.3")  # resolvable, but nothing listens there: connection refused
    upstream = Upstream("inventory-app", f"http://{NAME}:{port}", 1, 1, 8)
    seen = served_by(upstream, threads=6, requests=10)
    assert sum(seen.values()) == 60
    assert "127.0.0.3" not in seen


def test_kept_alive_connections_are_retired_so_new_replicas_get_traffic(replicas: tuple[int, list[str]]) -> None:
    port, addresses = replicas
    addresses.remove("127.0.0.2")  # not there yet
    upstream = Upstream("inventory-app", f"http://{NAME}:{port}", 1, 1, 8)

    def get() -> str:
        return upstream.request("GET", "/", {"Host": NAME}, b"").body.decode()

    assert [get() for _ in range(3)] == ["127.0.0.1"] * 3
    addresses.append("127.0.0.2")  # scaled out
    assert get() == "127.0.0.1"  # the kept-alive connection is still young
    # Time passes: past the re-resolution interval and the connection's maximum age.
    upstream._resolved_at -= proxy._MAX_AGE + 1
    upstream._local.conn.opened -= proxy._MAX_AGE + 1
    assert [get() for _ in range(3)] == ["127.0.0.2"] * 3


# --- the HTTP/1.1 exchange, against scripted raw answers ---------------------------------------------------


@pytest.fixture
def scripted() -> Iterator[tuple[int, list[bytes], list[bytes]]]:
    """A raw TCP server on 127.0.0.1: reads one request head (and a body, if Content-Length), answers
    the next scripted bytes, and closes the connection after answers ending in ``b"<close>"``.
    Yields (port, answers to send, requests received)."""
    answers: list[bytes] = []
    received: list[bytes] = []
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve(conn: socket.socket) -> None:
        with conn:
            data = b""
            while answers:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                length = next(
                    (
                        int(line.split(b":")[1])
                        for line in head.split(b"\r\n")
                        if line.lower().startswith(b"content-length:")
                    ),
                    0,
                )
                while len(data) < length:
                    data += conn.recv(65536)
                received.append(head + b"\r\n\r\n" + data[:length])
                data = data[length:]
                answer = answers.pop(0)
                conn.sendall(answer.removesuffix(b"<close>"))
                if answer.endswith(b"<close>"):
                    return

    def accept() -> None:
        while True:
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            threading.Thread(target=serve, args=(conn,), daemon=True).start()

    threading.Thread(target=accept, daemon=True).start()
    yield port, answers, received
    listener.close()


def scripted_upstream(port: int) -> Upstream:
    return Upstream("inventory-app", f"http://127.0.0.1:{port}", 1, 1, 8)


def test_content_length_chunked_and_close_delimited_bodies(scripted: tuple[int, list[bytes], list[bytes]]) -> None:
    port, answers, received = scripted
    answers += [
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: 1\r\n\r\nhello",
        b"HTTP/1.1 201 Created\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"4;ext=1\r\nwiki\r\n5\r\npedia\r\n0\r\nX-T: 1\r\n\r\n",
        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n\r\nuntil the end<close>",
    ]
    upstream = scripted_upstream(port)
    first = upstream.request("GET", "/a?b=1", {"Host": "inventory-app:8080"}, b"")
    assert (first.status, first.reason, first.body, first.headers) == (
        200,
        "OK",
        b"hello",
        [("Content-Length", "5"), ("X-A", "1")],
    )
    second = upstream.request("POST", "/a", {"Host": "inventory-app:8080"}, b'{"x":1}')
    assert (second.status, second.body) == (201, b"wikipedia")
    third = upstream.request("GET", "/c", {"Host": "inventory-app:8080"}, b"")
    assert (third.status, third.body) == (200, b"until the end")
    assert received[0] == b"GET /a?b=1 HTTP/1.1\r\nHost: inventory-app:8080\r\n\r\n"
    assert received[1] == b'POST /a HTTP/1.1\r\nHost: inventory-app:8080\r\nContent-Length: 7\r\n\r\n{"x":1}'


def test_a_head_answer_has_no_body_even_with_a_content_length(scripted: tuple[int, list[bytes], list[bytes]]) -> None:
    port, answers, _ = scripted
    answers += [b"HTTP/1.1 200 OK\r\nContent-Length: 42\r\n\r\n", b"HTTP/1.1 204 No Content\r\n\r\n"]
    upstream = scripted_upstream(port)
    assert upstream.request("HEAD", "/", {"Host": "h"}, b"").body == b""
    assert upstream.request("DELETE", "/", {"Host": "h"}, b"").status == 204  # same connection: in step


@pytest.mark.parametrize(
    "answer",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 20 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nno colon here\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort<close>",
    ],
)
def test_a_malformed_or_cut_answer_is_an_unavailable_upstream(
    scripted: tuple[int, list[bytes], list[bytes]], answer: bytes
) -> None:
    port, answers, _ = scripted
    answers.append(answer)
    with pytest.raises(proxy.UpstreamUnavailable):
        scripted_upstream(port).request("POST", "/", {"Host": "h"}, b"{}")


def test_a_kept_alive_connection_closed_by_the_upstream_is_retried_for_idempotent_requests(
    scripted: tuple[int, list[bytes], list[bytes]],
) -> None:
    port, answers, received = scripted
    # The first connection answers once, then closes when the second request arrives (as waitress
    # does when its channel times out just then); the retry opens a new connection.
    answers += [
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1",
        b"<close>",
        b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2",
    ]
    upstream = scripted_upstream(port)
    assert upstream.request("GET", "/", {"Host": "h"}, b"").body == b"1"
    assert upstream.request("GET", "/", {"Host": "h"}, b"").body == b"2"
    assert len(received) == 3


def test_a_new_connection_closed_without_an_answer_is_retried_only_for_idempotent_requests(
    scripted: tuple[int, list[bytes], list[bytes]],
) -> None:
    port, answers, received = scripted
    # As a stopping replica does to a connection still waiting in its listen queue: closed, no answer.
    answers += [b"<close>", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n1"]
    assert scripted_upstream(port).request("GET", "/", {"Host": "h"}, b"").body == b"1"
    assert len(received) == 2
    answers += [b"<close>", b"HTTP/1.1 200 OK\r\nContent-Length: 1\r\n\r\n2"]
    with pytest.raises(proxy.UpstreamUnavailable):  # it may have been processed: never sent twice
        scripted_upstream(port).request("POST", "/", {"Host": "h"}, b"{}")
    assert len(received) == 3


def test_a_replica_stopping_under_a_kept_alive_connection_costs_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    # A rolling update: replica 127.0.0.1 stops, closing its listener and the kept-alive connection a
    # request is just arriving on. The request is sent again on a new connection, whose address comes in
    # turn and may be that same replica: refused, so the next try goes to the other one.
    for _ in range(20):
        port, servers = servers_on_one_port(("127.0.0.2",))
        try:
            stopping = socket.create_server(("127.0.0.1", port))
            break
        except OSError:
            servers[0].server_close()
    else:
        raise AssertionError("no port free on 127.0.0.1 and 127.0.0.2")
    threading.Thread(target=servers[0].serve_forever, daemon=True).start()
    real = socket.getaddrinfo

    def resolve(host: str, *args: object, **kwargs: object) -> list:
        if host != NAME:
            return real(host, *args, **kwargs)
        return [(socket.AF_INET, socket.SOCK_STREAM, 6, "", (address, port)) for address in ("127.0.0.1", "127.0.0.2")]

    monkeypatch.setattr(proxy.socket, "getaddrinfo", resolve)

    def serve_once_then_stop() -> None:
        conn, _ = stopping.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n127.0.0.1")
            conn.recv(65536)  # the next request arrives: the replica stops
            stopping.close()

    server = threading.Thread(target=serve_once_then_stop, daemon=True)
    server.start()
    upstream = Upstream("inventory-app", f"http://{NAME}:{port}", 1, 1, 8)

    def get() -> str:
        return upstream.request("GET", "/", {"Host": NAME}, b"").body.decode()

    try:
        assert get() == "127.0.0.1"
        other_thread: list[str] = []  # another worker thread opens its connection: the turn moves on
        worker = threading.Thread(target=lambda: other_thread.append(get()))
        worker.start()
        worker.join(5)
        assert other_thread == ["127.0.0.2"]
        assert get() == "127.0.0.2"  # the kept-alive connection closed, then 127.0.0.1 refused
        server.join(5)
        assert [get() for _ in range(3)] == ["127.0.0.2"] * 3
    finally:
        stopping.close()
        servers[0].shutdown()
        servers[0].server_close()


def test_cr_or_lf_in_a_header_never_reaches_the_upstream(scripted: tuple[int, list[bytes], list[bytes]]) -> None:
    port, answers, received = scripted
    answers.append(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
    with pytest.raises(proxy.UpstreamUnavailable):
        scripted_upstream(port).request("GET", "/", {"Host": "h", "X-A": "1\r\nX-Injected: 1"}, b"")
    assert received == []


# --- the bulkhead: a hung upstream holds a bounded share of the threads; a busy one is waited for -------


@pytest.fixture
def hung_port() -> Iterator[int]:
    """A server that accepts connections and never answers (like a paused container)."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(64)
    yield listener.getsockname()[1]
    listener.close()


def test_a_hung_upstream_gets_its_share_of_threads_and_the_rest_fail_fast(hung_port: int) -> None:
    upstream = Upstream("inventory-app", f"http://127.0.0.1:{hung_port}", 1, 3, 2)
    outcomes: list[tuple[str, float]] = []
    lock = threading.Lock()

    def client() -> None:
        started = time.monotonic()
        try:
            upstream.request("GET", "/", {"Host": "inventory-app"}, b"")
            outcome = "answered"
        except proxy.UpstreamError as exc:
            outcome = type(exc).__name__
        with lock:
            outcomes.append((outcome, time.monotonic() - started))

    workers = [threading.Thread(target=client) for _ in range(8)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(10)
    kinds = Counter(kind for kind, _ in outcomes)
    assert kinds == {"UpstreamTimeout": 2, "UpstreamBusy": 6}, outcomes
    # The refused ones did not wait for the read timeout: only for the stall to show.
    assert all(took < proxy.STALLED_AFTER + 0.5 for kind, took in outcomes if kind == "UpstreamBusy"), outcomes


def test_a_busy_but_answering_upstream_is_waited_for_not_refused(replicas: tuple[int, list[str]]) -> None:
    port, _ = replicas
    upstream = Upstream("inventory-app", f"http://{NAME}:{port}", 1, 1, 1)
    seen = served_by(upstream, threads=6, requests=20)  # six threads through one slot: all served
    assert sum(seen.values()) == 120
