"""Forwarding requests to the internal apps over reused keep-alive connections.

Each waitress thread keeps its own connection per upstream, so there is no TCP handshake per request
and no locking (except for POST and PATCH, which must not be sent twice: each takes a new connection).

An upstream name may resolve to several replicas (Swarm's DNS round robin): new connections take
the resolved addresses in turn, names are resolved again every few seconds, and connections are
retired after a while, so replicas added by a scale-out get their share of the traffic.

Each upstream may hold only some of the worker threads (:class:`Bulkhead`), so a hung upstream
cannot stall the other routes; its name is resolved with a deadline too.
"""

from __future__ import annotations

import itertools
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

from common import metrics
from common.net import ResolveError, resolve

log = logging.getLogger(__name__)
upstream_duration = metrics.REGISTRY.histogram(
    "gateway_upstream_duration_seconds", "Time for an upstream to answer a forwarded request.", ("upstream",)
)
upstream_errors = metrics.REGISTRY.counter(
    "gateway_upstream_errors",
    "Forwarded requests with no usable answer, by upstream and reason: unavailable (502), timeout (504), "
    "busy (503: every slot held by requests it does not answer).",
    ("upstream", "reason"),
)

# RFC 9110 §7.6.1: connection-specific headers are not forwarded, in either direction.
HOP_BY_HOP = frozenset(
    (
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    )
)
# Set by the gateway's own server for its response.
_OWN_RESPONSE_HEADERS = frozenset(("content-length", "date", "server", "x-request-id"))
_IDEMPOTENT = frozenset(("GET", "HEAD", "PUT", "DELETE", "OPTIONS"))
_MAX_IDLE = 20.0  # seconds; upstream waitress closes idle connections after 60 s
_MAX_AGE = 30.0  # seconds; then a new connection, possibly to another replica
_RESOLVE_EVERY = 5.0  # seconds
# Connection attempts per request: each refused address is skipped by the next (replicas stopping).
_CONNECT_TRIES = 3
_MAX_HEAD = 64 * 1024  # bytes of status line and headers
# A full bulkhead whose upstream finished no request for this long is stalled: refuse at once.
# (Under load, a request to a healthy upstream finishes every few milliseconds.)
STALLED_AFTER = 0.5  # seconds


class UpstreamError(Exception):
    """The upstream gave no usable answer. ``str()`` is the message for the client;
    ``detail`` says why, for the log only (it names internal hosts and errors)."""

    reason = "error"  # the metrics' label

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class UpstreamUnavailable(UpstreamError):
    """Refused, unresolvable or reset: answered 502."""

    reason = "unavailable"


class UpstreamTimeout(UpstreamError):
    """No answer within the timeout: answered 504."""

    reason = "timeout"


class UpstreamBusy(UpstreamError):
    """Every request slot of the upstream is taken by requests it does not answer: answered 503."""

    reason = "busy"


class Bulkhead:
    """At most ``size`` requests in flight to one upstream. One more waits for a slot while the
    upstream keeps finishing requests, and is refused as soon as it has finished none for
    STALLED_AFTER seconds with every slot taken (e.g. a paused container). While slots are free,
    taking and giving one back is a counter under a lock; the condition is used only with waiters."""

    def __init__(self, size: int) -> None:
        self.size = size
        self._in_flight = 0
        self._waiting = 0
        self._progress = time.monotonic()  # when a slot was last taken or given back
        self._changed = threading.Condition(threading.Lock())

    def acquire(self) -> bool:
        with self._changed:
            if self._in_flight >= self.size:
                self._waiting += 1
                try:
                    while self._in_flight >= self.size:
                        remaining = self._progress + STALLED_AFTER - time.monotonic()
                        if remaining <= 0:
                            return False
                        self._changed.wait(remaining)
                finally:
                    self._waiting -= 1
            self._in_flight += 1
            self._progress = time.monotonic()
            return True

    def release(self) -> None:
        with self._changed:
            self._in_flight -= 1
            self._progress = time.monotonic()
            if self._waiting:
                self._changed.notify()


@dataclass(frozen=True)
class UpstreamResponse:
    status: int
    reason: str
    headers: list[tuple[str, str]]
    body: bytes


def hop_by_hop(headers: list[tuple[str, str]]) -> frozenset[str]:
    """The standard hop-by-hop names plus any listed in a Connection header."""
    listed = {
        token.strip().lower() for name, value in headers if name.lower() == "connection" for token in value.split(",")
    }
    return HOP_BY_HOP | listed


class BadResponse(Exception):
    """The upstream's answer is not HTTP/1.x as expected."""


class _Connection:
    """A kept-alive connection to one upstream address, with its read buffer.

    ``http.client`` parses every response's headers with the ``email`` package; the upstreams are
    our own waitress apps, so a plain HTTP/1.1 exchange (Content-Length or chunked bodies) suffices
    and takes a fraction of the CPU.
    """

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.buffer = bytearray()
        self.opened = self.used = time.monotonic()
        self.timeout: float | None = None  # the socket's, set only when it changes (a system call each time)
        self.received = False  # any byte of an answer to the request in progress

    def close(self) -> None:
        self.sock.close()

    def _fill(self) -> None:
        data = self.sock.recv(65536)
        if not data:
            raise ConnectionResetError("the upstream closed the connection")
        self.received = True
        self.buffer += data

    def _take(self, size: int) -> bytes:
        while len(self.buffer) < size:
            self._fill()
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def _line(self, limit: int = _MAX_HEAD) -> bytes:
        """Bytes up to CRLF (excluded)."""
        while (end := self.buffer.find(b"\r\n")) < 0:
            if len(self.buffer) > limit:
                raise BadResponse("line too long")
            self._fill()
        return self._take(end + 2)[:-2]

    def exchange(self, method: str, target: str, headers: dict[str, str], body: bytes) -> tuple[UpstreamResponse, bool]:
        """Send one request, read its response: (response, whether the connection must be closed)."""
        self.received = False
        head = [f"{method} {target} HTTP/1.1"]
        head += [f"{name}: {value}" for name, value in headers.items()]
        if body or method in ("POST", "PUT", "PATCH"):
            head.append(f"Content-Length: {len(body)}")
        text = "\r\n".join(head)
        # waitress refuses CR and LF inside a request line or header; check anyway: no header injection.
        if text.count("\n") != len(head) - 1 or text.count("\r") != len(head) - 1:
            raise BadResponse("CR or LF inside the request head")
        self.sock.sendall(text.encode("latin-1") + b"\r\n\r\n" + body)

        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > _MAX_HEAD:
                raise BadResponse("response head too long")
            self._fill()
        lines = self._take(end + 4)[:-4].decode("latin-1").split("\r\n")
        version, _, rest = lines[0].partition(" ")
        code, _, reason = rest.partition(" ")
        if version not in ("HTTP/1.1", "HTTP/1.0") or not (code.isdigit() and len(code) == 3):
            raise BadResponse(f"bad status line {lines[0][:80]!r}")
        status = int(code)
        response_headers = []
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon or not name or name != name.strip():
                raise BadResponse(f"bad header line {line[:80]!r}")
            response_headers.append((name, value.strip()))
        fields = {name.lower(): value for name, value in response_headers}
        tokens = {token.strip().lower() for token in fields.get("connection", "").split(",")}
        close = "close" in tokens or (version == "HTTP/1.0" and "keep-alive" not in tokens)

        if method == "HEAD" or status in (204, 304) or status < 200:
            data = b""
        elif fields.get("transfer-encoding", "").lower() == "chunked":
            data = self._chunked()
        elif "content-length" in fields:
            length = fields["content-length"]
            if not length.isdigit():
                raise BadResponse(f"bad Content-Length {length[:40]!r}")
            data = self._take(int(length))
        else:  # the body ends when the upstream closes the connection
            while True:
                try:
                    self._fill()
                except ConnectionResetError:
                    break
            data, close = bytes(self.buffer), True
            self.buffer.clear()
        return UpstreamResponse(status, reason, response_headers, data), close

    def _chunked(self) -> bytes:
        chunks = []
        while True:
            size_text = self._line().split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise BadResponse(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:
                while self._line():  # trailers, ignored
                    pass
                return b"".join(chunks)
            chunks.append(self._take(size))
            if self._take(2) != b"\r\n":
                raise BadResponse("chunk not followed by CRLF")


def _readable(sock: socket.socket) -> bool:
    """Whether ``sock`` has data or an end of stream waiting; poll(), since select() stops at fd 1023."""
    poller = select.poll()
    poller.register(sock, select.POLLIN)
    return bool(poller.poll(0))


class Upstream:
    def __init__(self, name: str, url: str, connect_timeout: float, read_timeout: float, max_in_flight: int) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{name}: expected an http://host:port URL, got {url!r}")
        self.name = name
        self.host = parts.hostname
        self.port = parts.port or 80
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.bulkhead = Bulkhead(max_in_flight)
        self._local = threading.local()
        self._addresses: list[str] = []
        self._resolved_at = -_RESOLVE_EVERY
        self._turn = itertools.count()
        for error in (UpstreamUnavailable, UpstreamTimeout, UpstreamBusy):  # every series from 0
            upstream_errors.inc(name, error.reason, amount=0)

    def _next_address(self) -> str:
        # No lock: racing threads at worst resolve twice; next() on a count is atomic.
        addresses = self._addresses
        if time.monotonic() - self._resolved_at > _RESOLVE_EVERY or not addresses:
            addresses = resolve(self.host, self.port, self.connect_timeout)
            self._addresses, self._resolved_at = addresses, time.monotonic()
        return addresses[next(self._turn) % len(addresses)]

    def _fresh_connection(self) -> _Connection:
        address = self._next_address()
        try:
            sock = socket.create_connection((address, self.port), timeout=self.connect_timeout)
        except OSError:
            # That replica may be gone: skip it until the name is resolved again.
            self._addresses = [known for known in self._addresses if known != address]
            raise
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return _Connection(sock)

    def _reusable_connection(self) -> _Connection | None:
        conn: _Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            return None
        now = time.monotonic()
        # A readable idle socket means the upstream closed it (or sent garbage): don't reuse.
        if now - conn.used > _MAX_IDLE or now - conn.opened > _MAX_AGE or _readable(conn.sock):
            self._drop(conn)
            return None
        return conn

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes, timeout: float | None = None
    ) -> UpstreamResponse:
        """One request; ``timeout`` (seconds) replaces the read timeout for this call only.
        ``headers`` must include Host; Content-Length is added when there is a body."""
        if not self.bulkhead.acquire():
            upstream_errors.inc(self.name, UpstreamBusy.reason)
            raise UpstreamBusy(
                f"{self.name} is not answering; try again shortly",
                f"all {self.bulkhead.size} request slots busy, none finished for {STALLED_AFTER:g}s",
            )
        started = time.monotonic()
        try:
            return self._request(method, target, headers, body, self.read_timeout if timeout is None else timeout)
        except UpstreamError as exc:
            upstream_errors.inc(self.name, exc.reason)
            raise
        finally:
            self.bulkhead.release()
            upstream_duration.observe(time.monotonic() - started, self.name)

    def _request(
        self, method: str, target: str, headers: dict[str, str], body: bytes, read_timeout: float
    ) -> UpstreamResponse:
        unavailable = f"{self.name} is unreachable"
        connects = 0
        resent = False
        while True:
            conn = self._reusable_connection()
            if conn is not None and method not in _IDEMPOTENT:
                # A request that must not be sent twice never goes on a kept-alive connection: the upstream
                # may be closing it as idle (e.g. a replica stopping in a rolling update) as the request
                # leaves, and then nobody can tell whether it was processed. A new connection costs a
                # handshake; only POST and PATCH take it, and a refused connect is retried safely.
                self._drop(conn)
                conn = None
            if conn is None:
                try:
                    conn = self._fresh_connection()
                except ResolveError as exc:
                    raise UpstreamUnavailable(unavailable, str(exc)) from None
                except OSError as exc:
                    connects += 1
                    if connects < _CONNECT_TRIES:  # nothing was sent; that address is skipped from now on
                        continue
                    if isinstance(exc, TimeoutError):
                        detail = f"no connection within {self.connect_timeout:g}s"
                        raise UpstreamTimeout(f"{self.name} did not answer in time", detail) from None
                    raise UpstreamUnavailable(unavailable, f"{exc.__class__.__name__}: {exc}") from None
                self._local.conn = conn
            try:
                if conn.timeout != read_timeout:
                    conn.sock.settimeout(read_timeout)
                    conn.timeout = read_timeout
                answer, close = conn.exchange(method, target, headers, body)
            except (ConnectionResetError, BrokenPipeError) as exc:
                self._drop(conn)
                # Closed before any byte of an answer: a kept-alive connection closed as idle as the request
                # left, or a stopping replica's listener closed with this connection not yet accepted. An
                # idempotent request may be sent again (once); the new connection skips a refusing replica.
                if not resent and not conn.received and method in _IDEMPOTENT:
                    resent = True
                    continue
                raise UpstreamUnavailable(unavailable, f"connection closed ({exc})") from None
            except TimeoutError:
                self._drop(conn)
                raise UpstreamTimeout(
                    f"{self.name} did not answer in time", f"no answer within {read_timeout:g}s"
                ) from None
            except (OSError, BadResponse) as exc:
                self._drop(conn)
                raise UpstreamUnavailable(unavailable, f"{exc.__class__.__name__}: {exc}") from None
            conn.used = time.monotonic()
            if close:
                self._drop(conn)
            return answer

    def _drop(self, conn: _Connection) -> None:
        conn.close()
        self._local.conn = None


def forward_headers(environ: dict[str, object], upstream_host: str) -> dict[str, str]:
    """Request headers for the upstream: end-to-end headers plus X-Forwarded-*."""
    incoming = [
        (key[5:].replace("_", "-").title(), str(value)) for key, value in environ.items() if key.startswith("HTTP_")
    ]
    # Expect: 100-continue concerns this hop only: the gateway has already read the whole body.
    skip = hop_by_hop(incoming) | {
        "expect",
        "host",
        "x-forwarded-for",
        "x-forwarded-proto",
        "x-forwarded-host",
        "content-length",
        "content-type",
    }
    headers = {name: value for name, value in incoming if name.lower() not in skip}
    if environ.get("CONTENT_TYPE"):
        headers["Content-Type"] = str(environ["CONTENT_TYPE"])
    client = str(environ.get("REMOTE_ADDR", ""))
    prior = str(environ.get("HTTP_X_FORWARDED_FOR", ""))
    headers["X-Forwarded-For"] = f"{prior}, {client}" if prior else client
    headers["X-Forwarded-Proto"] = str(environ.get("wsgi.url_scheme", "http"))
    headers["X-Forwarded-Host"] = str(environ.get("HTTP_HOST", ""))
    headers["Host"] = upstream_host
    return headers


def response_headers(headers: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """Upstream response headers that the client should see."""
    skip = hop_by_hop(headers) | _OWN_RESPONSE_HEADERS
    return [(name, value) for name, value in headers if name.lower() not in skip]
