"""Forwarding requests to the internal apps over reused keep-alive connections.

Each waitress thread keeps its own ``http.client`` connection per upstream (http.client objects are
not thread-safe), so there is no TCP handshake per request and no locking.

An upstream name may resolve to several replicas (Swarm's DNS round robin): new connections take
the resolved addresses in turn, names are resolved again every few seconds, and connections are
retired after a while, so replicas added by a scale-out get their share of the traffic.
"""

from __future__ import annotations

import http.client
import itertools
import logging
import select
import socket
import threading
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

log = logging.getLogger(__name__)

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


class UpstreamError(Exception):
    """The upstream gave no usable answer. ``str()`` is the message for the client;
    ``detail`` says why, for the log only (it names internal hosts and errors)."""

    def __init__(self, message: str, detail: str) -> None:
        super().__init__(message)
        self.detail = detail


class UpstreamUnavailable(UpstreamError):
    """Refused, unresolvable or reset: answered 502."""


class UpstreamTimeout(UpstreamError):
    """No answer within the timeout: answered 504."""


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


class Upstream:
    def __init__(self, name: str, url: str, connect_timeout: float, read_timeout: float) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"{name}: expected an http://host:port URL, got {url!r}")
        self.name = name
        self.host = parts.hostname
        self.port = parts.port or 80
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self._local = threading.local()
        self._addresses: list[str] = []
        self._resolved_at = -_RESOLVE_EVERY
        self._turn = itertools.count()

    def _next_address(self) -> str:
        # No lock: racing threads at worst resolve twice; next() on a count is atomic.
        addresses = self._addresses
        if time.monotonic() - self._resolved_at > _RESOLVE_EVERY or not addresses:
            found = socket.getaddrinfo(self.host, self.port, type=socket.SOCK_STREAM)
            addresses = sorted({info[4][0] for info in found})
            self._addresses, self._resolved_at = addresses, time.monotonic()
        return addresses[next(self._turn) % len(addresses)]

    def _fresh_connection(self) -> http.client.HTTPConnection:
        # The Host header names the upstream (forward_headers), so connecting by address is transparent.
        address = self._next_address()
        conn = http.client.HTTPConnection(address, self.port, timeout=self.connect_timeout)
        try:
            conn.connect()
        except OSError:
            # That replica may be gone: skip it until the name is resolved again.
            self._addresses = [known for known in self._addresses if known != address]
            raise
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._local.opened = time.monotonic()
        return conn

    def _reusable_connection(self) -> http.client.HTTPConnection | None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or conn.sock is None:
            return None
        now = time.monotonic()
        idle = now - getattr(self._local, "used", 0.0)
        # A readable idle socket means the upstream closed it (or sent garbage): don't reuse.
        if idle > _MAX_IDLE or now - self._local.opened > _MAX_AGE or select.select([conn.sock], [], [], 0)[0]:
            conn.close()
            return None
        return conn

    def request(
        self, method: str, target: str, headers: dict[str, str], body: bytes, timeout: float | None = None
    ) -> UpstreamResponse:
        """One request; ``timeout`` (seconds) replaces the read timeout for this call only."""
        read_timeout = self.read_timeout if timeout is None else timeout
        unavailable = f"{self.name} is unreachable"
        for attempt in (1, 2):
            conn = self._reusable_connection()
            reused = conn is not None
            if conn is None:
                try:
                    conn = self._fresh_connection()
                except OSError as exc:
                    if attempt == 1:  # nothing was sent: try once more, elsewhere if there is elsewhere
                        continue
                    if isinstance(exc, TimeoutError):
                        detail = f"no connection within {self.connect_timeout:g}s"
                        raise UpstreamTimeout(f"{self.name} did not answer in time", detail) from None
                    raise UpstreamUnavailable(unavailable, f"{exc.__class__.__name__}: {exc}") from None
            try:
                self._local.conn = conn
                conn.sock.settimeout(read_timeout)
                conn.request(method, target, body=body or None, headers=headers)
                response = conn.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError) as exc:
                self._drop(conn)
                # A kept-alive connection closed under us: the request was not processed, retry once.
                if reused and attempt == 1 and method in _IDEMPOTENT:
                    continue
                raise UpstreamUnavailable(unavailable, f"connection closed ({exc.__class__.__name__})") from None
            except TimeoutError:
                self._drop(conn)
                raise UpstreamTimeout(
                    f"{self.name} did not answer in time", f"no answer within {read_timeout:g}s"
                ) from None
            except (OSError, http.client.HTTPException) as exc:
                self._drop(conn)
                raise UpstreamUnavailable(unavailable, f"{exc.__class__.__name__}: {exc}") from None
            self._local.used = time.monotonic()
            if response.will_close:
                self._drop(conn)
            return UpstreamResponse(response.status, response.reason, response.getheaders(), data)
        raise AssertionError("unreachable")

    def _drop(self, conn: http.client.HTTPConnection | None) -> None:
        if conn is not None:
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
