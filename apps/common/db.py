"""A small thread-safe pool of pg8000 connections with explicit transactions.

Broken connections are detected (network errors, server shutdown) and replaced; while the
database is unreachable, callers get :class:`DatabaseUnavailable` quickly instead of hanging.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from common.config import Env

log = logging.getLogger(__name__)

# SQLSTATE classes meaning "this connection or server cannot be used now":
# 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown), 58 system error.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")


class DatabaseUnavailable(Exception):
    """The database cannot be reached or is shutting down; the operation was not done."""


# Name lookups in flight at most; beyond that, callers fail fast rather than start more threads.
_LOOKUPS = threading.BoundedSemaphore(64)


def resolve(host: str, port: int, timeout: float) -> list[tuple[str, int]]:
    """The addresses of ``host``, or DatabaseUnavailable within ``timeout`` seconds.

    The system resolver has no deadline of its own: on a Docker network with ``internal: true``,
    the name of a stopped container takes ~10 s to fail (the embedded DNS server tries to forward
    it upstream). So the lookup runs in a daemon thread, abandoned when the deadline passes.
    """
    if not _LOOKUPS.acquire(blocking=False):
        raise DatabaseUnavailable(f"cannot resolve {host}: too many lookups are hanging")
    answer: list[list[tuple[str, int]] | OSError] = []
    done = threading.Event()

    def lookup() -> None:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
            answer.append([(str(info[4][0]), port) for info in infos])
        except OSError as exc:
            answer.append(exc)
        finally:
            _LOOKUPS.release()
            done.set()

    threading.Thread(target=lookup, name=f"resolve {host}", daemon=True).start()
    if not done.wait(timeout):
        raise DatabaseUnavailable(f"cannot resolve {host}: no answer within {timeout:g}s")
    if isinstance(answer[0], OSError):
        raise DatabaseUnavailable(f"cannot resolve {host}: {answer[0]}")
    return answer[0]


def sqlstate(exc: DatabaseError) -> str:
    details = exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}
    return str(details.get("C", ""))


def _connection_lost(exc: BaseException) -> bool:
    """The connection cannot be used any more: a network error, or the server says so."""
    if isinstance(exc, DatabaseError):
        return sqlstate(exc).startswith(_UNAVAILABLE_CLASSES)
    return isinstance(exc, (InterfaceError, OSError))


@dataclass(frozen=True)
class DbSettings:
    host: str
    port: int
    name: str
    user: str
    password: str
    connect_timeout: float
    statement_timeout_ms: int

    @classmethod
    def from_env(cls, env: Env) -> DbSettings:
        return cls(
            host=env.str("DB_HOST"),
            port=env.int("DB_PORT", 5432, 1, 65535),
            name=env.str("DB_NAME"),
            user=env.str("DB_USER"),
            password=env.str("DB_PASSWORD"),
            connect_timeout=env.float("DB_CONNECT_TIMEOUT", 2.0, 0.1),
            statement_timeout_ms=env.int("DB_STATEMENT_TIMEOUT_MS", 5000, 1),
        )


class Pool:
    """At most ``size`` connections, reused LIFO; a connection is used by one thread at a time."""

    def __init__(self, settings: DbSettings, size: int, application_name: str) -> None:
        self._settings = settings
        self._application_name = application_name
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[pg8000.native.Connection] = []
        self._lock = threading.Lock()

    def _connect(self) -> pg8000.native.Connection:
        s = self._settings
        sock: socket.socket | None = None
        error: OSError | None = None
        for address in resolve(s.host, s.port, s.connect_timeout):
            try:
                sock = socket.create_connection(address, timeout=s.connect_timeout)
                break
            except OSError as exc:
                error = exc
        if sock is None:
            raise DatabaseUnavailable(f"cannot connect to {s.host}:{s.port}: {error}")
        # Without it, a small message written right after a bigger one (a batch INSERT, then COMMIT)
        # waits for the server's delayed ACK: a 40 ms stall every few batches.
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        # Queries get the server-side statement timeout plus a margin before the socket gives up.
        sock.settimeout(s.statement_timeout_ms / 1000 + 5)
        try:
            return pg8000.native.Connection(
                s.user,
                database=s.name,
                password=s.password,
                sock=sock,
                application_name=self._application_name,
                startup_params={"statement_timeout": str(s.statement_timeout_ms)},
            )
        except (InterfaceError, OSError) as exc:  # pg8000 lets socket errors of its reads through
            sock.close()
            raise DatabaseUnavailable(f"cannot connect to {s.host}:{s.port}: {exc}") from None
        except DatabaseError as exc:
            sock.close()
            if sqlstate(exc).startswith(_UNAVAILABLE_CLASSES):
                raise DatabaseUnavailable(f"database refuses connections: {exc}") from None
            raise

    def _take(self) -> tuple[pg8000.native.Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, conn: pg8000.native.Connection) -> None:
        with self._lock:
            self._idle.append(conn)

    @staticmethod
    def _discard(conn: pg8000.native.Connection) -> None:
        with contextlib.suppress(Exception):  # the connection is already broken
            conn.close()

    def _fail(
        self, conn: pg8000.native.Connection, exc: BaseException, keep: Callable[[pg8000.native.Connection], None]
    ) -> NoReturn:
        """Re-raise ``exc``, raised while ``conn`` was in use, once the connection's fate is settled.
        An error the server reported leaves the protocol in step: ``keep`` it (give it back, or roll
        back first). A lost connection is closed and becomes DatabaseUnavailable. Anything else (e.g.
        a parameter pg8000 could not encode after the query was sent) leaves the protocol state
        unknown: the connection is closed (the server rolls back) rather than handed to the next caller."""
        if isinstance(exc, DatabaseError) and not _connection_lost(exc):
            keep(conn)
            raise exc
        self._discard(conn)
        if _connection_lost(exc):
            raise DatabaseUnavailable(str(exc)) from None
        raise exc

    def _run_first(self, sql: str, **params: Any) -> tuple[pg8000.native.Connection, list[Any]]:
        """A connection and the result of its first statement. A reused connection that turns out
        dead (e.g. the server restarted) is replaced once: the statement did not reach the server."""
        conn, reused = self._take()
        try:
            return conn, conn.run(sql, **params)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _fail unless retried
            # 57014: the statement itself ran out of time; running it again would only double the wait.
            timed_out = isinstance(exc, DatabaseError) and sqlstate(exc) == "57014"
            if not (reused and _connection_lost(exc)) or timed_out:
                self._fail(conn, exc, self._give_back)
            self._discard(conn)
        conn = self._connect()
        try:
            return conn, conn.run(sql, **params)
        except BaseException as exc:  # noqa: BLE001 - _fail re-raises
            self._fail(conn, exc, self._give_back)

    def _acquire_slot(self) -> None:
        if not self._slots.acquire(timeout=self._settings.connect_timeout + 5):
            raise DatabaseUnavailable("all database connections are busy")

    def query(self, sql: str, **params: Any) -> list[Any]:
        """Rows of one read-only statement, run outside any explicit transaction (the server
        wraps it in its own): one round trip instead of three for BEGIN, the query and COMMIT."""
        self._acquire_slot()
        try:
            conn, rows = self._run_first(sql, **params)
            self._give_back(conn)
            return rows
        finally:
            self._slots.release()

    @contextmanager
    def transaction(self) -> Iterator[pg8000.native.Connection]:
        """``with pool.transaction() as conn: conn.run(...)`` - committed on success,
        rolled back on error; connection-level failures surface as DatabaseUnavailable."""
        self._acquire_slot()
        try:
            conn, _ = self._run_first("BEGIN")
            try:
                yield conn
                conn.run("COMMIT")
            except BaseException as exc:  # noqa: BLE001 - _fail re-raises
                self._fail(conn, exc, self._rollback)
            else:
                self._give_back(conn)
        finally:
            self._slots.release()

    def _rollback(self, conn: pg8000.native.Connection) -> None:
        try:
            conn.run("ROLLBACK")
        except Exception:  # noqa: BLE001 - a connection that cannot roll back is dropped
            self._discard(conn)
        else:
            self._give_back(conn)

    def ping(self) -> None:
        """Raise DatabaseUnavailable unless a trivial query succeeds."""
        self.query("SELECT 1")

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            self._discard(conn)


def wait_until_reachable(pool: Pool, stop: threading.Event | None = None, max_delay: float = 5.0) -> None:
    """Block until the database answers, retrying with backoff (used at start-up)."""
    delay = 0.2
    while stop is None or not stop.is_set():
        try:
            pool.ping()
            return
        except DatabaseUnavailable as exc:
            log.warning("database not reachable yet (%s); retrying in %.1fs", exc, delay)
            time.sleep(delay)
            delay = min(delay * 2, max_delay)
