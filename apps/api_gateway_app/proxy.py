"""Forwarding requests to the internal apps over reused keep-alive connections.

Each waitress thread keeps its own ``http.client`` connection per upstream (http.client objects are
not thread-safe), so there is no TCP handshake per request and no locking.
"""

from __future__ import annotations

import http.client
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

    def _fresh_connection(self) -> http.client.HTTPConnection:
        conn = http.client.HTTPConnection(self.host, self.port, timeout=self.connect_timeout)
        conn.connect()
        conn.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        return conn

    def _reusable_connection(self) -> http.client.HTTPConnection | None:
        conn: http.client.HTTPConnection | None = getattr(self._local, "conn", None)
        if conn is None or conn.sock is None:
            return None
        idle = time.monotonic() - getattr(self._local, "used", 0.0)
        # A readable idle socket means the upstream closed it (or sent garbage): don't reuse.
        if idle > _MAX_IDLE or select.select([conn.sock], [], [], 0)[0]:
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
            try:
                if conn is None:
                    conn = self._fresh_connection()
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
