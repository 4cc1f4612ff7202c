"""The HTTP server of the three apps: waitress, with bounded connections and deadlines, stopped
gracefully on SIGTERM/SIGINT.

What a client cannot do to it:
- exhaust it with connections: each client address gets at most ``Limits.per_client`` open connections
  and the server ``Limits.total``; one more is answered 503 (JSON) and closed, and the server keeps
  accepting, so the listen backlog never fills (the container's own healthcheck, from loopback, is exempt);
- hold a connection with a request that never ends (slowloris): a request must arrive completely within
  ``Limits.request_timeout`` seconds of its first byte, or it gets a 408 and the connection is closed;
  a kept-alive connection without a request is closed after ``Limits.idle_timeout`` seconds;
- crash it with many descriptors: the loop uses poll(), which has no 1024-descriptor ceiling unlike
  select(), and the soft RLIMIT_NOFILE is raised to the hard limit when it is below what the bounds need.

Errors found by waitress before the app sees a request (malformed request line or headers, headers or
body too large, bad chunked encoding) are answered in the API's JSON error shape too.
"""

from __future__ import annotations

import logging
import resource
import signal
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote_to_bytes

import waitress
import waitress.parser
from waitress.adjustments import Adjustments
from waitress.channel import HTTPChannel
from waitress.server import TcpWSGIServer
from waitress.task import ErrorTask, WSGITask
from waitress.utilities import build_http_date

from common import logs, metrics
from common.jsonapi import JSON_TYPE, to_json
from common.request_context import SERVED_BY, RequestContext, valid_request_id

log = logging.getLogger(__name__)
# The container's own healthcheck comes from loopback: the bounds never lock the operator out.
EXEMPT_ADDRESSES = frozenset({"127.0.0.1", "::1"})
# After an error answer, how long the client's further bytes are read and dropped before the
# connection is closed: closing with unread data would reset it and could destroy the answer in flight.
LINGER_SECONDS = 2.0
# How often the deadlines are checked (waitress's own maintenance runs every 30 s by default).
CHECK_INTERVAL = 1
# Descriptors beyond the connections: listening socket, trigger pipe, logs, upstream and broker connections.
SPARE_DESCRIPTORS = 256
# The connection a worker thread is serving, if any (see Channel.service and Server.pull_trigger).
_serving = threading.local()
# The serving server's task dispatcher, read by the in-flight and queued gauges at each scrape.
_dispatchers: list[Any] = []
metrics.REGISTRY.gauge(
    "http_requests_in_flight",
    "Worker threads answering a request now.",
    source=lambda: [((), d.active_count) for d in _dispatchers],
)
metrics.REGISTRY.gauge(
    "http_requests_queued",
    "Requests received and waiting for a free worker thread.",
    source=lambda: [((), len(d.queue)) for d in _dispatchers],
)
connections_open = metrics.REGISTRY.gauge(
    "http_connections_open", "Client connections open and counted against the bounds (loopback excluded)."
)
connections_refused = metrics.REGISTRY.counter(
    "http_connections_rejected",
    "Requests answered with an error before any app code ran, by reason: too_many_connections (503), "
    "request_timeout (408), bad_request (400, 413, 431, 501 from the HTTP parser), server_error.",
    ("reason",),
    initial=[("too_many_connections",), ("request_timeout",), ("bad_request",), ("server_error",)],
)


_waitress_split_uri = waitress.parser.split_uri


def split_target(uri: bytes) -> tuple[str, str, str, str, str]:
    """waitress's ``split_uri`` (scheme, netloc, decoded path, query, fragment of a request target),
    with the usual form, ``/path?query``, split without ``urllib.parse.urlsplit``: its argument coercion
    and result cache took ~9 % of the gateway's Python time per proxied GET (py-spy). Any other form
    (absolute, ``//``, a byte that is not ASCII, which waitress refuses, or a tab, CR or LF, which
    ``urlsplit`` removes) goes to waitress's own."""
    if uri[:1] != b"/" or uri[:2] == b"//" or not uri.isascii() or b"\t" in uri or b"\r" in uri or b"\n" in uri:
        return _waitress_split_uri(uri)
    path, _, fragment = uri.partition(b"#")
    path, _, query = path.partition(b"?")
    if b"%" in path:
        path = unquote_to_bytes(path)
    return "", "", path.decode("latin-1"), query.decode("latin-1"), fragment.decode("latin-1")


# The parser calls the module's function for every request (waitress is pinned: tests/unit/test_server.py
# checks that both give the same answers).
waitress.parser.split_uri = split_target


@dataclass(frozen=True)
class Limits:
    total: int = 2048
    per_client: int = 256
    request_timeout: int = 10  # seconds from a request's first byte to its last
    idle_timeout: int = 60  # seconds a kept-alive connection may wait for its next request


def error_answer(status: str, message: str, request_id: str) -> bytes:
    """A complete HTTP/1.1 error response in the API's JSON shape, for a connection about to close."""
    body = to_json({"error": message, "request_id": request_id})
    head = [
        f"HTTP/1.1 {status}",
        "Connection: close",
        f"Content-Length: {len(body)}",
        f"Content-Type: {JSON_TYPE}",
        f"Date: {build_http_date(time.time())}",
        f"X-Request-ID: {request_id}",
        f"X-Served-By: {SERVED_BY}",
    ]
    return ("\r\n".join(head) + "\r\n\r\n").encode("latin-1") + body


class JsonErrorTask(ErrorTask):
    """What waitress found wrong with a request (or an app that failed before answering), as JSON."""

    def execute(self) -> None:
        error = self.request.error
        rid = valid_request_id(self.request.headers.get("X_REQUEST_ID"))
        message = "internal server error" if error.code >= 500 else f"{error.reason.lower()}: {error.body}"
        body = to_json({"error": message, "request_id": rid})
        self.version = "1.1"
        self.status = f"{error.code} {error.reason}"
        self.response_headers.extend([("Content-Type", JSON_TYPE), ("X-Request-ID", rid), ("X-Served-By", SERVED_BY)])
        self.set_close_on_finish()
        connections_refused.inc("bad_request" if error.code < 500 else "server_error")
        self.content_length = len(body)
        self.write(body)
        method, path = getattr(self.request, "command", None), getattr(self.request, "path", None)
        client = self.channel.addr[0]
        logs.access.write(f"{rid} {client} {method or '-'} {path or '-'} {error.code} {len(body)} 0.0ms ({message})")


class Task(WSGITask):
    """waitress's WSGI task, sending the status line and headers in the same ``send()`` as the body.

    waitress flushes every write from the worker thread (its ``send_bytes`` is 1), so a head and a body
    written apart cost two ``send()`` calls and two TCP segments per answer, and a reader (the gateway
    reading inventory-app) two ``recv()`` calls. A body of more than MERGE_MAX bytes is not copied."""

    MERGE_MAX = 64 * 1024

    def write(self, data: bytes) -> None:
        if self.wrote_header or not self.complete:
            super().write(data)
            return
        head = self.build_response_header()
        self.wrote_header = True
        length = self.content_length
        if data and self.has_body and not self.chunked_response and length is not None:
            if len(data) <= min(length, self.MERGE_MAX):
                self.content_bytes_written += len(data)
                self.channel.write_soon(head + data)
                return
        self.channel.write_soon(head)
        super().write(data)


class Channel(HTTPChannel):
    """A client connection: counted against the bounds, with a deadline per request."""

    task_class = Task
    error_task_class = JsonErrorTask
    counted = False  # counted in the server's per-client and total figures
    request_started: float | None = None  # monotonic time of the first byte of the request in progress
    linger_until: float | None = None  # set once the answer is sent and the connection is closing

    def service(self) -> None:
        _serving.channel = self
        try:
            super().service()
        finally:
            _serving.channel = None

    def needs_wake_up(self) -> bool:
        """Whether the I/O thread must recompute what it polls for this connection (output to send, a close,
        requests queued); with the request lookahead it keeps polling the connection for input meanwhile."""
        return bool(self.total_outbufs_len or self.will_close or self.close_when_flushed or self.requests)

    def received(self, data: bytes) -> bool:
        if self.request_started is None:
            self.request_started = time.monotonic()
        result = super().received(data)
        # Blank lines alone between requests do not end the wait for one: they do not reset the deadline.
        if self.request is None and data.strip(b"\r\n"):
            self.request_started = None
        return result

    def answer_and_close(self, status: str, message: str) -> None:
        """Send an error answer from the I/O thread (no request in service), then close."""
        payload = error_answer(status, message, valid_request_id(None))
        with self.outbuf_lock:
            self.outbufs[-1].append(payload)
            self.current_outbuf_count += len(payload)
            self.total_outbufs_len += len(payload)
        self.request = None
        self.close_when_flushed = True

    def check_deadlines(self, now: float, limits: Limits) -> None:
        if self.linger_until is not None:
            if now > self.linger_until:
                self.handle_close()
            return
        if self.requests or self.will_close or self.close_when_flushed:
            return  # the server is answering or already closing
        if self.request_started is not None:
            if now - self.request_started > limits.request_timeout:
                log.info("closing %s: request not complete after %d s", self.addr[0], limits.request_timeout)
                message = f"request not received completely within {limits.request_timeout} s"
                connections_refused.inc("request_timeout")
                self.answer_and_close("408 Request Timeout", message)
        elif time.time() - self.last_activity > limits.idle_timeout:
            self.will_close = True

    # --- closing: answer flushed, then the client's further bytes dropped for a moment ---------------

    def readable(self) -> bool:
        return self.linger_until is not None or super().readable()

    def writable(self) -> bool:
        if self.linger_until is not None:
            return self.will_close  # set by the graceful stop
        return super().writable()

    def handle_read(self) -> None:
        if self.linger_until is None:
            super().handle_read()
            return
        try:
            data = self.socket.recv(65536)
        except OSError:
            data = b""
        if not data:
            self.handle_close()

    def handle_write(self) -> None:
        if not self.close_when_flushed or self.requests:
            super().handle_write()
            return
        self._flush_exception(self._flush_some)
        if self.socket is None:
            return  # the client went away while we were sending
        if not self.will_close and not self.total_outbufs_len:
            self.close_when_flushed = False
            self.linger_until = time.monotonic() + LINGER_SECONDS
            self.server.uncount(self)
            try:
                self.socket.shutdown(socket.SHUT_WR)
            except OSError:
                self.will_close = True
        if self.will_close:
            self.handle_close()

    def del_channel(self, map: Any = None) -> None:
        super().del_channel(map)
        self.server.uncount(self)


class Server(TcpWSGIServer):
    """waitress's TCP server with connection bounds, frequent deadline checks and batched accepts."""

    channel_class = Channel

    def __init__(self, application: Any, limits: Limits, adj: Adjustments, reuse_port: bool = False) -> None:
        self.limits = limits
        self.reuse_port = reuse_port
        self.per_client: Counter[str] = Counter()
        self.counted_total = 0
        self.count_lock = threading.Lock()
        self.refusals = logs.AtMostEvery(log, 10.0)
        super().__init__(application, adj=adj)

    def bind_server_socket(self) -> None:
        if self.reuse_port:
            # Several worker processes listen on the port; the kernel spreads new connections over them.
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        super().bind_server_socket()

    def handle_accept(self) -> None:
        # Several per wake-up: under a flood, one per loop pass left the backlog (and the healthcheck) waiting.
        for _ in range(64):
            try:
                accepted = self.accept()
            except OSError as exc:
                self.refusals.warning("accept failed: %s", exc)
                return
            if accepted is None:
                return
            conn, addr = accepted
            try:
                self.set_socket_options(conn)
            except OSError:  # the client has already gone
                conn.close()
                continue
            self.admit(conn, self.fix_addr(addr))

    def admit(self, conn: socket.socket, addr: Any) -> None:
        host = addr[0] if isinstance(addr, tuple) else str(addr)
        channel = self.channel_class(self, conn, addr, self.adj, map=self._map)
        with self.count_lock:
            refusal = self.refusal(host)
            if refusal is None:
                channel.counted = True
                self.per_client[host] += 1
                self.counted_total += 1
                connections_open.set(self.counted_total)
        if refusal is not None:
            connections_refused.inc("too_many_connections")
            self.refusals.warning("refusing a connection from %s: %s", host, refusal)
            channel.answer_and_close("503 Service Unavailable", refusal)

    def refusal(self, host: str) -> str | None:
        if host in EXEMPT_ADDRESSES:
            return None
        if self.per_client[host] >= self.limits.per_client:
            return f"too many connections from your address (limit {self.limits.per_client}), try again later"
        if self.counted_total >= self.limits.total:
            return f"too many connections (limit {self.limits.total}), try again later"
        return None

    def uncount(self, channel: Channel) -> None:
        with self.count_lock:
            if channel.counted:
                channel.counted = False
                host = channel.addr[0]
                self.per_client[host] -= 1
                if not self.per_client[host]:
                    del self.per_client[host]
                self.counted_total -= 1
                connections_open.set(self.counted_total)

    def pull_trigger(self) -> None:
        # waitress wakes the I/O thread after every request it served (a write to a pipe, then a pass over every
        # connection), so that it polls the connection for the next request again. With a request lookahead of 1
        # the connection stays polled while its request is served, so that wake-up is needed only when the
        # connection has output left to send, must close, or has requests queued.
        channel = getattr(_serving, "channel", None)
        if channel is not None and not channel.needs_wake_up():
            return
        super().pull_trigger()

    def maintenance(self, now: float) -> None:
        """Deadlines of every connection (run every ``cleanup_interval`` by waitress's ``readable``)."""
        monotonic = time.monotonic()
        for channel in list(self.active_channels.values()):
            if isinstance(channel, Channel):
                channel.check_deadlines(monotonic, self.limits)


def raise_descriptor_limit(needed: int) -> None:
    """Raise the soft RLIMIT_NOFILE to the hard one if it is below ``needed``."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        soft = hard
        log.info("raised the open-files limit to %s", hard)
    if soft != resource.RLIM_INFINITY and soft < needed:
        log.warning("open-files limit %d is below the %d the connection bounds need", soft, needed)


def serve(
    app: Callable[..., Any],
    port: int,
    threads: int,
    grace_seconds: float = 10.0,
    limits: Limits | None = None,
    host: str = "0.0.0.0",  # noqa: S104 - inside a container, reached through its networks
    reuse_port: bool = False,
    **options: Any,
) -> None:
    """Serve ``app`` with waitress until SIGTERM/SIGINT, then stop gracefully:
    stop accepting, let in-flight requests finish (up to ``grace_seconds``), exit."""
    limits = limits or Limits()
    # Rejected connections are accepted to be answered, briefly, beyond the total bound.
    connection_limit = limits.total + limits.per_client + SPARE_DESCRIPTORS
    raise_descriptor_limit(connection_limit + SPARE_DESCRIPTORS)
    adj = Adjustments(
        host=host,
        port=port,
        threads=threads,
        ident=None,  # no Server header
        connection_limit=connection_limit,
        cleanup_interval=CHECK_INTERVAL,
        asyncore_use_poll=True,
        channel_request_lookahead=1,  # see Server.pull_trigger
        **options,
    )
    server = Server(RequestContext(app), limits, adj, reuse_port)
    _dispatchers[:] = [server.task_dispatcher]
    # waitress warns "Task queue depth is N" for every request that waits for a free thread: under
    # load, one line per request, which made the overload worse. One line per 10 s keeps the signal.
    server.task_dispatcher.queue_logger = logs.AtMostEvery(logging.getLogger("waitress.queue"), 10.0)
    stopping = threading.Event()

    def request_stop(signum: int, _frame: Any) -> None:
        log.info("received %s, finishing in-flight requests", signal.Signals(signum).name)
        stopping.set()
        server.pull_trigger()

    signal.signal(signal.SIGTERM, request_stop)
    signal.signal(signal.SIGINT, request_stop)
    log.info(
        "listening on port %d with %d threads (connections: %d, %d per client)",
        port,
        threads,
        limits.total,
        limits.per_client,
    )
    while not stopping.is_set():
        # poll(), not select(): select() cannot watch a descriptor numbered 1024 or more.
        waitress.wasyncore.loop(timeout=1.0, map=server._map, count=1, use_poll=True)
        # Hand the GIL to the worker threads before scanning the connections again. Without this the
        # I/O thread kept winning it back (each wake-up checks every connection): measured on 2 cores,
        # confirmed POSTs +25-30 % at c16, and most figures about doubled at c64 (bench/README.md).
        time.sleep(0)
    stop(server, grace_seconds)


def stop(server: Server, grace_seconds: float) -> None:
    """Stop accepting; close idle keep-alive connections; flush the busy ones."""
    server.accepting = False
    server.del_channel()
    server.socket.close()
    deadline = time.monotonic() + grace_seconds
    while time.monotonic() < deadline:
        server.maintenance(time.time())  # a request that never ends does not hold the stop up
        busy = False
        for channel in list(server._map.values()):
            if isinstance(channel, HTTPChannel):
                if channel.requests or channel.total_outbufs_len or channel.request is not None:
                    busy = True
                else:
                    channel.will_close = True
        if not busy:
            break
        waitress.wasyncore.loop(timeout=0.1, map=server._map, count=1, use_poll=True)
    server.task_dispatcher.shutdown(cancel_pending=True, timeout=1)
    waitress.wasyncore.close_all(server._map)
    log.info("stopped")
