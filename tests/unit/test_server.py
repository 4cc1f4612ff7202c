"""The shared HTTP server (common/server.py) against real sockets: ``serve()`` runs in a subprocess on
127.0.0.1 with a tiny WSGI app, clients come from several loopback addresses (127.0.0.2, .3, ...).

- connections beyond the per-client and the total bound get a 503 in the JSON error shape and are closed;
- a request that is not complete within the deadline gets a 408 and is closed, an idle one is closed;
- what waitress refuses before the app sees a request is answered in the JSON error shape;
- more than 1024 descriptors (select()'s ceiling) from a process started with a soft limit of 1024;
- the graceful stop still lets an in-flight request finish;
- an answer leaves in one send(), its head with its body, and a request served on a kept-alive connection
  costs no extra wake-up of the I/O thread; pipelined requests are answered in order.
"""

from __future__ import annotations

import email.utils
import json
import os
import resource
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import pytest

from stack import ROOT

JSON_TYPE = "application/json; charset=utf-8"
REQUEST_TIMEOUT = 2
IDLE_TIMEOUT = 3

SERVER = """
import sys, time
from pathlib import Path
from common import logs, server

marker = Path(sys.argv[6])
sends = [0]  # socket send() calls of the answers so far
_send = server.Channel.send

def counted_send(self, data, do_close=True):
    sends[0] += 1
    return _send(self, data, do_close)

server.Channel.send = counted_send
import waitress.trigger
wake_ups = [0]  # the worker threads' writes to the I/O thread's trigger pipe
_pull = waitress.trigger.trigger._physical_pull

def counted_pull(self):
    wake_ups[0] += 1
    return _pull(self)

waitress.trigger.trigger._physical_pull = counted_pull

def app(environ, start_response):
    if environ["PATH_INFO"] == "/boom":
        raise RuntimeError("boom")
    if environ["PATH_INFO"] == "/slow":
        marker.touch()
        time.sleep(1.5)
    body = b'{"ok":true}'
    if environ["PATH_INFO"] == "/sends":
        body = b'{"sends":%d,"wake_ups":%d}' % (sends[0], wake_ups[0])
    if environ["PATH_INFO"] == "/big":
        body = b"x" * 200_000
    start_response("200 OK", [("Content-Type", "application/json"), ("Content-Length", str(len(body)))])
    return [body]

logs.setup("INFO")
limits = server.Limits(*(int(arg) for arg in sys.argv[2:6]))
server.serve(app, int(sys.argv[1]), threads=2, limits=limits, host="127.0.0.1",
             max_request_body_size=1024, max_request_header_size=4096)
"""


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: bytes
    closed: bool  # the answer said "Connection: close" and the server closed the connection after it

    def json(self) -> dict:
        return json.loads(self.body)


@dataclass
class Server:
    port: int
    process: subprocess.Popen[str]
    marker: Path
    sockets: list[socket.socket]

    def connect(self, source: str = "127.0.0.1") -> socket.socket:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(source, 0))
        self.sockets.append(sock)
        return sock

    def get(self, source: str, path: str = "/") -> Answer:
        sock = self.connect(source)
        sock.sendall(f"GET {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n".encode())
        return read_answer(sock)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def read_answer(sock: socket.socket, timeout: float = 8.0) -> Answer:
    """One response (with ``Connection: close``: and the end of the connection)."""
    sock.settimeout(timeout)
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed before an answer: {data!r}")
        data += chunk
    head, body = data.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    fields = [(k.lower(), v.strip()) for k, v in (line.split(":", 1) for line in lines[1:])]
    headers = dict(fields)
    assert len(headers) == len(fields), f"a header sent twice: {lines[1:]}"
    while len(body) < int(headers.get("content-length", "0")):
        chunk = sock.recv(65536)
        if not chunk:
            break
        body += chunk
    assert lines[0].startswith("HTTP/1.1 "), lines[0]
    closed = headers.get("connection") == "close" and closed_by_server(sock, 3.0)
    return Answer(int(lines[0].split()[1]), headers, body, closed)


def closed_by_server(sock: socket.socket, timeout: float) -> bool:
    sock.settimeout(timeout)
    try:
        return sock.recv(1) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def assert_json_error(answer: Answer, status: int, request_id: str | None = None) -> dict:
    assert answer.status == status, answer
    assert answer.headers["content-type"] == JSON_TYPE
    assert answer.headers["connection"] == "close"
    body = answer.json()
    assert set(body) == {"error", "request_id"} and body["error"], body
    assert answer.headers["x-request-id"] == body["request_id"]
    if request_id:
        assert body["request_id"] == request_id
    assert answer.closed
    return body


@contextmanager
def serving(tmp_path: Path, total: int, per_client: int, soft_nofile: int | None = None) -> Iterator[Server]:
    port = free_port()
    marker = tmp_path / "slow-request-started"

    def limit_descriptors() -> None:
        if soft_nofile is not None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft_nofile, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    process = subprocess.Popen(
        [sys.executable, "-c", SERVER, *map(str, (port, total, per_client, REQUEST_TIMEOUT, IDLE_TIMEOUT, marker))],
        env={**os.environ, "PYTHONPATH": str(ROOT / "apps")},
        stderr=subprocess.PIPE,
        text=True,
        preexec_fn=limit_descriptors,  # the test process starts no threads
    )
    server = Server(port, process, marker, [])
    try:
        wait_listening(port, process)
        yield server
    finally:
        for sock in server.sockets:
            sock.close()
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        process.stderr.close()


def wait_listening(port: int, process: subprocess.Popen[str]) -> None:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        assert process.poll() is None, process.stderr.read()
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise AssertionError("the server did not listen within 10 s")


def wait_until(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.05)


def held(server: Server, source: str, count: int) -> list[socket.socket]:
    """``count`` connections from ``source``, each shown to be admitted by a completed request."""
    socks = [server.connect(source) for _ in range(count)]
    for sock in socks:
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        answer = read_answer(sock)
        assert answer.status == 200 and not answer.closed, answer
    return socks


# --- the bounds --------------------------------------------------------------------------------------


def test_one_connection_over_the_per_client_bound_gets_a_503_json_and_other_clients_are_served(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, total=10, per_client=3) as server:
        held(server, "127.0.0.2", 3)
        over = server.connect("127.0.0.2")
        over.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")  # already sent: the answer must survive the close
        body = assert_json_error(read_answer(over), 503)
        assert "limit 3" in body["error"]
        assert server.get("127.0.0.3").status == 200  # another address is not affected


def test_the_total_bound_refuses_every_address_but_loopback_and_frees_up_when_a_connection_ends(
    tmp_path: Path,
) -> None:
    with serving(tmp_path, total=4, per_client=3) as server:
        first = held(server, "127.0.0.2", 3)
        held(server, "127.0.0.3", 1)
        body = assert_json_error(read_answer(server.connect("127.0.0.4")), 503)
        assert "limit 4" in body["error"]
        assert server.get("127.0.0.1", "/health").status == 200  # the container's own healthcheck
        first[0].close()

        def admitted() -> bool:
            return server.get("127.0.0.4").status == 200

        wait_until(admitted, 5, "a free slot after a connection closed")


# --- deadlines ---------------------------------------------------------------------------------------


def test_a_request_that_never_completes_gets_a_408_json_after_the_deadline(tmp_path: Path) -> None:
    with serving(tmp_path, total=10, per_client=10) as server:
        sock = server.connect("127.0.0.2")
        started = time.monotonic()
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\nX-Request-ID: slow-1\r\n")
        sock.settimeout(0.5)
        answer = b""
        for _ in range(40):  # one header byte every 0.25 s: 10 s at most
            try:
                answer = sock.recv(65536, socket.MSG_PEEK)
            except TimeoutError:
                answer = b""
            if answer:
                break
            sock.sendall(b"X")
        elapsed = time.monotonic() - started
        assert answer, "no answer within 10 s"
        assert_json_error(read_answer(sock), 408)
        assert REQUEST_TIMEOUT <= elapsed <= REQUEST_TIMEOUT + 2.5, elapsed


def test_idle_and_blank_line_connections_are_closed_after_the_idle_timeout(tmp_path: Path) -> None:
    with serving(tmp_path, total=10, per_client=10) as server:
        idle = held(server, "127.0.0.2", 1)[0]
        blank = server.connect("127.0.0.3")
        started = time.monotonic()
        closed = {"idle": False, "blank": False}
        while not all(closed.values()) and time.monotonic() - started < 10:
            if not closed["blank"]:
                try:
                    blank.sendall(b"\r\n")  # blank lines between requests are not a request
                except OSError:
                    closed["blank"] = True
            closed["blank"] = closed["blank"] or closed_by_server(blank, 0.2)
            closed["idle"] = closed["idle"] or closed_by_server(idle, 0.2)
        elapsed = time.monotonic() - started
        assert all(closed.values()), closed
        assert elapsed <= IDLE_TIMEOUT + 3, elapsed


# --- errors found by waitress ------------------------------------------------------------------------

HEAD = "Host: test\r\nX-Request-ID: bad-1\r\n"


# The client's X-Request-ID is kept when waitress got as far as reading the headers.
@pytest.mark.parametrize(
    ("raw", "status", "request_id"),
    [
        (b"GARBAGE\r\nX-Request-ID: bad-1\r\n\r\n", 400, "bad-1"),  # malformed request line
        (f"GET / HTTP/1.1\r\n{HEAD}Bad Header\r\n\r\n".encode(), 400, None),  # a header without a colon
        (f"GET / HTTP/1.1\r\n{HEAD}X-Big: {'a' * 5000}\r\n\r\n".encode(), 431, None),  # headers too large
        (f"POST / HTTP/1.1\r\n{HEAD}Content-Length: 5000\r\n\r\n".encode() + b"x" * 5000, 413, "bad-1"),
        (f"POST / HTTP/1.1\r\n{HEAD}Transfer-Encoding: chunked\r\n\r\nZZ\r\n".encode(), 400, "bad-1"),
        (f"GET /boom HTTP/1.1\r\n{HEAD}\r\n".encode(), 500, None),  # the app failed before answering
    ],
    ids=["request-line", "header", "header-size", "body-size", "chunked", "app-exception"],
)
def test_errors_found_by_waitress_are_answered_in_the_json_error_shape(
    tmp_path: Path, raw: bytes, status: int, request_id: str | None
) -> None:
    with serving(tmp_path, total=10, per_client=10) as server:
        sock = server.connect("127.0.0.2")
        sock.sendall(raw)
        body = assert_json_error(read_answer(sock), status, request_id)
        assert "boom" not in body["error"] and "generated by" not in body["error"]


# --- descriptors, graceful stop ----------------------------------------------------------------------


def test_more_than_1024_descriptors_from_a_process_started_with_a_soft_limit_of_1024(tmp_path: Path) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 1400:
        pytest.skip(f"the hard open-files limit ({hard}) is too low for this test")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))  # this test holds 1100 sockets itself
    try:
        with serving(tmp_path, total=1200, per_client=1200, soft_nofile=1024) as server:
            for _ in range(1100):
                server.connect("127.0.0.2")
            # The last ones got descriptors above 1024 in the server: they are served, the server lives.
            last = server.sockets[-1]
            last.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_answer(last).status == 200
            assert server.get("127.0.0.3").status == 200
            assert server.process.poll() is None
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def test_the_graceful_stop_lets_an_in_flight_request_finish(tmp_path: Path) -> None:
    with serving(tmp_path, total=10, per_client=10) as server:
        sock = server.connect("127.0.0.2")
        sock.sendall(b"GET /slow HTTP/1.1\r\nHost: test\r\n\r\n")
        wait_until(server.marker.exists, 5, "the slow request to start")
        server.process.send_signal(signal.SIGTERM)
        assert read_answer(sock).status == 200
        assert server.process.wait(timeout=10) == 0


def test_an_answer_leaves_in_one_send_its_head_with_its_body(tmp_path: Path) -> None:
    with serving(tmp_path, total=16, per_client=8) as server:
        sock = server.connect()
        for _ in range(5):
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            answer = read_answer(sock)
            assert (answer.status, answer.body) == (200, b'{"ok":true}')
            sent = email.utils.parsedate_to_datetime(answer.headers["date"]).timestamp()
            assert abs(sent - time.time()) < 2  # formatted once per second, still the current one
        sock.sendall(b"GET /sends HTTP/1.1\r\nHost: test\r\n\r\n")
        counts = read_answer(sock).json()
        assert counts["sends"] == 5  # waitress alone: 10 (head, then body)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: test\r\n\r\n")
        big = read_answer(sock)  # a large body is sent after its head, not copied into one buffer
        assert (big.status, len(big.body), big.headers["content-length"]) == (200, 200_000, "200000")
        sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
        assert read_answer(sock).body == b'{"ok":true}'


def test_kept_alive_requests_cost_no_wake_up_of_the_io_thread_and_none_waits(tmp_path: Path) -> None:
    with serving(tmp_path, total=16, per_client=8) as server:
        sock = server.connect()
        slowest = 0.0
        for _ in range(30):
            started = time.monotonic()
            sock.sendall(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")
            assert read_answer(sock).status == 200
            slowest = max(slowest, time.monotonic() - started)
        sock.sendall(b"GET /sends HTTP/1.1\r\nHost: test\r\n\r\n")
        # waitress alone writes to the trigger after each request (30), so that its loop polls the
        # connection again; here the connection stays polled. One is still written when the next request
        # arrives between the worker's end of service and its check (the worker cannot tell it from one the
        # I/O thread stopped polling for): with three busy processes on two cores, 1 run in 10 of these 30
        # requests had one, none had two. None waited for the loop's 1 s poll timeout.
        assert read_answer(sock).json()["wake_ups"] <= 2
        assert slowest < 0.5, slowest
        # Two requests in one segment (pipelined): both answered, in order, on the same connection.
        sock.sendall(
            b"GET /sends HTTP/1.1\r\nHost: test\r\n\r\nGET /big HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n"
        )
        received = b""
        while chunk := sock.recv(65536):  # until the server closes, after the second answer
            received += chunk
        first, second = received.split(b"HTTP/1.1 200 OK\r\n")[1:]
        assert b'"wake_ups":' in first and first.endswith(b"}")
        assert second.endswith(b"\r\n\r\n" + b"x" * 200_000)


def test_worker_processes_can_listen_on_one_port_only_when_they_ask_to() -> None:
    """HTTP_WORKERS > 1: each worker binds the port with SO_REUSEPORT (the kernel spreads connections over
    them); a single server keeps the port to itself, so a second one started by mistake fails at once."""
    from waitress.adjustments import Adjustments

    from common import server

    port = free_port()

    def bind(reuse_port: bool) -> server.Server:
        adj = Adjustments(host="127.0.0.1", port=port, threads=1)
        return server.Server(lambda environ, start_response: [], server.Limits(), adj, reuse_port)

    first, second = bind(True), bind(True)
    try:
        assert int(first.effective_port) == int(second.effective_port) == port
        with pytest.raises(OSError, match="in use"):
            bind(False)
    finally:
        for each in (first, second):
            each.close()
            each.task_dispatcher.shutdown()
    alone = bind(False)
    try:
        with pytest.raises(OSError, match="in use"):
            bind(True)
    finally:
        alone.close()
        alone.task_dispatcher.shutdown()


@pytest.mark.parametrize(
    "target",
    [
        b"/",
        b"/api/movies/1234",
        b"/api/movies?title=movie%20123&limit=5",
        b"/api/movies/%41%2F%25x?q=%20#frag",
        b"/a#b?c",
        b"/a?b#c?d",
        b"/a:b@c;d=e",
        b"/a%zz%4",  # a broken escape is kept as it is
        b"/a%C3%A9",  # UTF-8 escapes decode to latin-1 code points, as WSGI wants
        b"//host/path?q",  # not an origin-form target: waitress's own rules
        b"http://example.com:8080/x?y#z",
        b"/a\tb",  # urlsplit removes tabs
        b"*",
    ],
)
def test_the_request_target_is_split_as_waitress_splits_it(target: bytes) -> None:
    import waitress.parser

    from common import server

    assert waitress.parser.split_uri is server.split_target  # what the parser calls for each request
    assert server.split_target(target) == server._waitress_split_uri(target)


def test_a_request_target_with_bytes_that_are_not_ascii_is_still_refused() -> None:
    import waitress.parser

    from common import server

    for target in (b"/caf\xc3\xa9", b"/\xff?x"):
        with pytest.raises(waitress.parser.ParsingError):
            server._waitress_split_uri(target)
        with pytest.raises(waitress.parser.ParsingError):
            server.split_target(target)
