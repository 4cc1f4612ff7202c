"""A small thread-safe pool of pg8000 connections with explicit transactions.

Broken connections are detected (network errors, server shutdown) and replaced; while the
database is unreachable or refuses to log the app in, callers get :class:`DatabaseUnavailable`
quickly instead of hanging. Any other error the server reports is pg8000's ``DatabaseError``;
:func:`is_data_error` tells the errors caused by the data of a statement from the others.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import pg8000.native
from pg8000.exceptions import DatabaseError, InterfaceError

from common import metrics
from common.config import Env
from common.net import ResolveError, resolve

# SQLSTATE classes meaning "this connection or server cannot be used now":
# 08 connection exception, 53 insufficient resources, 57 operator intervention (shutdown), 58 system error.
_UNAVAILABLE_CLASSES = ("08", "53", "57", "58")
# 57014 (query_canceled, e.g. statement_timeout) is in class 57, but the connection stays usable.
_STATEMENT_TIMEOUT = "57014"
# SQLSTATE classes caused by the data a statement carries: 22 data exception (a value out of range,
# malformed), 23 integrity constraint violation (a CHECK, NOT NULL, UNIQUE...). The same statement with
# the same data fails again; every other error (permissions, missing table, read-only, login,
# serialization, timeouts, disk full...) is about the database, and may be gone on the next try.
_DATA_CLASSES = ("22", "23")


class DatabaseUnavailable(Exception):
    """The database cannot do the operation now (unreachable, shutting down, refusing the login,
    out of time); the operation was not done."""


class StatementTimeout(DatabaseUnavailable):
    """A statement ran longer than the statement timeout (or was cancelled) and was rolled back;
    the connection itself is fine."""


def _fields(exc: BaseException) -> dict[str, Any]:
    """The fields of an error the server reported (pg8000 passes them as a dict: C, M, S...)."""
    return exc.args[0] if exc.args and isinstance(exc.args[0], dict) else {}


def sqlstate(exc: BaseException) -> str:
    return str(_fields(exc).get("C", ""))


def describe(exc: BaseException) -> str:
    """One line for logs and /health: the server's message and SQLSTATE, else the exception's text."""
    fields = _fields(exc)
    if "M" in fields:
        return f"{fields['M']} (SQLSTATE {fields.get('C', '?')})"
    return str(exc) or type(exc).__name__


def is_data_error(exc: BaseException) -> bool:
    """The server refused the data of the statement (SQLSTATE class 22 or 23): retrying the same
    statement cannot help. False for every other error, which is about the database, not the data."""
    return isinstance(exc, DatabaseError) and sqlstate(exc).startswith(_DATA_CLASSES)


def _connection_lost(exc: BaseException) -> bool:
    """The connection cannot be used any more: a network error, or the server says so."""
    if isinstance(exc, DatabaseError):
        state = sqlstate(exc)
        return state.startswith(_UNAVAILABLE_CLASSES) and state != _STATEMENT_TIMEOUT
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


_POOLS: weakref.WeakSet[Pool] = weakref.WeakSet()


def _pool_connections() -> list[tuple[tuple[str, ...], float]]:
    return [((p.name, state), n) for p in list(_POOLS) for state, n in (("in_use", p.in_use), ("idle", len(p._idle)))]


metrics.REGISTRY.gauge(
    "db_pool_connections",
    "Database connections of a pool: in use by a request, or idle.",
    ("pool", "state"),
    source=_pool_connections,
)
metrics.REGISTRY.gauge(
    "db_pool_waiting",
    "Callers waiting for a free database connection.",
    ("pool",),
    source=lambda: [((p.name,), p.waiting) for p in list(_POOLS)],
)
pool_failures = metrics.REGISTRY.counter(
    "db_pool_failures",
    "Database operations that failed for the database, not the data, by reason: connect (unreachable or "
    "login refused), lost (connection broken), busy (no free connection in time), timeout (statement timeout).",
    ("pool", "reason"),
)


class Pool:
    """At most ``size`` connections, reused LIFO; a connection is used by one thread at a time."""

    def __init__(self, settings: DbSettings, size: int, application_name: str) -> None:
        self._settings = settings
        self._slots = threading.BoundedSemaphore(size)
        self._idle: list[pg8000.native.Connection] = []
        self._lock = threading.Lock()
        self.name = application_name  # also the pool's label in the metrics
        # For the metrics (read without the lock: a scrape may see a value one step old).
        self.in_use = 0
        self.waiting = 0
        for reason in ("connect", "lost", "busy", "timeout"):
            pool_failures.inc(self.name, reason, amount=0)
        _POOLS.add(self)

    def _connect(self) -> pg8000.native.Connection:
        try:
            return self._open()
        except DatabaseUnavailable:
            pool_failures.inc(self.name, "connect")
            raise

    def _open(self) -> pg8000.native.Connection:
        s = self._settings
        sock: socket.socket | None = None
        error: OSError | None = None
        try:
            addresses = resolve(s.host, s.port, s.connect_timeout)
        except ResolveError as exc:
            raise DatabaseUnavailable(str(exc)) from None
        for address in addresses:
            try:
                sock = socket.create_connection((address, s.port), timeout=s.connect_timeout)
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
                application_name=self.name,
                startup_params={"statement_timeout": str(s.statement_timeout_ms)},
            )
        except (InterfaceError, OSError) as exc:  # pg8000 lets socket errors of its reads through
            sock.close()
            raise DatabaseUnavailable(f"cannot connect to {s.host}:{s.port}: {exc}") from None
        except DatabaseError as exc:
            # Refused before any statement ran (wrong password, unknown role or database, too many
            # connections, starting up): the same call may succeed once the cause is gone.
            sock.close()
            raise DatabaseUnavailable(f"cannot log in to {s.host}:{s.port} as {s.user}: {describe(exc)}") from None

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
        back first); a statement timeout then becomes StatementTimeout. A lost connection is closed
        and becomes DatabaseUnavailable. Anything else (e.g. a parameter pg8000 could not encode after
        the query was sent) leaves the protocol state unknown: the connection is closed (the server
        rolls back) rather than handed to the next caller."""
        if isinstance(exc, DatabaseError) and not _connection_lost(exc):
            keep(conn)
            if sqlstate(exc) == _STATEMENT_TIMEOUT:
                pool_failures.inc(self.name, "timeout")
                raise StatementTimeout(describe(exc)) from None
            raise exc
        self._discard(conn)
        if _connection_lost(exc):
            pool_failures.inc(self.name, "lost")
            raise DatabaseUnavailable(describe(exc)) from None
        raise exc

    def _run_first(self, sql: str, **params: Any) -> tuple[pg8000.native.Connection, list[Any]]:
        """A connection and the result of its first statement. A reused connection that turns out
        dead (e.g. the server restarted) is replaced once: the statement did not reach the server.
        A statement that timed out is not a lost connection, so it is never run a second time
        (that would only double the wait)."""
        conn, reused = self._take()
        try:
            return conn, conn.run(sql, **params)
        except BaseException as exc:  # noqa: BLE001 - re-raised by _fail unless retried
            if not (reused and _connection_lost(exc)):
                self._fail(conn, exc, self._give_back)
            self._discard(conn)
        conn = self._connect()
        try:
            return conn, conn.run(sql, **params)
        except BaseException as exc:  # noqa: BLE001 - _fail re-raises
            self._fail(conn, exc, self._give_back)

    def _acquire_slot(self) -> None:
        with self._lock:
            self.waiting += 1
        acquired = self._slots.acquire(timeout=self._settings.connect_timeout + 5)
        with self._lock:
            self.waiting -= 1
            self.in_use += acquired
        if not acquired:
            pool_failures.inc(self.name, "busy")
            raise DatabaseUnavailable("all database connections are busy")

    def _release_slot(self) -> None:
        with self._lock:
            self.in_use -= 1
        self._slots.release()

    def query(self, sql: str, **params: Any) -> list[Any]:
        """Rows of one read-only statement, run outside any explicit transaction (the server
        wraps it in its own): one round trip instead of three for BEGIN, the query and COMMIT."""
        self._acquire_slot()
        try:
            conn, rows = self._run_first(sql, **params)
            self._give_back(conn)
            return rows
        finally:
            self._release_slot()

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
            self._release_slot()

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


# How the HTTP apps answer database failures (see common.jsonapi.JsonApp); subclasses first.
HTTP_ERRORS = (
    (StatementTimeout, 504, "the database did not answer within the statement timeout"),
    (DatabaseUnavailable, 503, "database unavailable, try again shortly"),
)
