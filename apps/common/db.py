"""A small thread-safe pool of pg8000 connections with explicit transactions.

Broken connections are detected (network errors, server shutdown) and replaced; while the
database is unreachable or refuses to log the app in, callers get :class:`DatabaseUnavailable`
quickly instead of hanging. Any other error the server reports is pg8000's ``DatabaseError``;
:func:`is_data_error` tells the errors caused by the data of a statement from the others.

Each connection prepares a statement with parameters the first time it runs it (a named, server-side
prepared statement) and from then on sends only its parameters: PostgreSQL neither parses nor, once
it settles on a generic plan, plans it again, and pg8000 neither converts its ``:name`` placeholders
nor waits three times per statement (see :class:`Connection`). A statement whose best plan depends
on its values is marked :class:`CustomPlan` and is planned with them at every run.
"""

from __future__ import annotations

import contextlib
import functools
import socket
import threading
import weakref
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, NoReturn

import pg8000.native
from pg8000.converters import make_params
from pg8000.core import BIND, DESCRIBE, EXECUTE_MSG, IDLE, NULL_BYTE, PARSE, PORTAL, SYNC_MSG, Context, H_pack, i_pack
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
# A prepared statement the server no longer runs as prepared: 26000 (invalid_sql_statement_name: it does
# not exist, e.g. after DEALLOCATE ALL) and 0A000 (feature_not_supported) "cached plan must not change
# result type", raised when DDL changed the type of a column it returns (e.g. ALTER COLUMN ... TYPE).
_STATEMENT_GONE = "26000"
_STALE_RESULT_TYPE = ("0A000", "cached plan must not change result type")


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


def _stale_statement(exc: BaseException) -> bool:
    """The server refused to run a prepared statement as it was prepared (it is gone, or DDL changed
    the type of what it returns); the statement did nothing, and preparing it again fixes it."""
    if not isinstance(exc, DatabaseError):
        return False
    state = sqlstate(exc)
    return state == _STATEMENT_GONE or (
        state == _STALE_RESULT_TYPE[0] and _fields(exc).get("M") == _STALE_RESULT_TYPE[1]
    )


def _connection_lost(exc: BaseException) -> bool:
    """The connection cannot be used any more: a network error, or the server says so."""
    if isinstance(exc, DatabaseError):
        state = sqlstate(exc)
        return state.startswith(_UNAVAILABLE_CLASSES) and state != _STATEMENT_TIMEOUT
    return isinstance(exc, (InterfaceError, OSError))


class CustomPlan(str):
    """SQL text whose statement is planned with its parameter values at every run (an unnamed
    statement, parsed each time too) instead of being prepared once: for a statement whose best plan
    depends on the values, where a prepared statement could settle on a generic plan that is bad for
    some of them (PostgreSQL may switch to one after five runs, plan_cache_mode = auto)."""

    __slots__ = ()


# pg8000 converts the ``:name`` placeholders of a statement character by character in Python at every
# call; the result depends on the SQL text alone.
_to_statement = functools.lru_cache(maxsize=256)(pg8000.native.to_statement)
# Enough for every statement of the apps; beyond it, statements run unprepared rather than keep growing
# the server's memory of a connection whose caller builds SQL text on the fly.
MAX_PREPARED = 64


def _message(code: bytes, data: bytes | bytearray) -> bytes:
    """A message of PostgreSQL's protocol: its type, its length, its content."""
    return code + i_pack(len(data) + 4) + data


@dataclass(frozen=True)
class _Prepared:
    name: bytes  # pg8000's name of the statement on the server (pg8000_statement_N, NUL-terminated)
    statement: str  # the SQL with $n placeholders
    make_vals: Callable[[dict[str, Any]], tuple[Any, ...]]  # keyword parameters -> $n values
    columns: list[dict[str, Any]] | None  # the result's columns (None: no result rows)
    input_funcs: list[Callable[[str], Any]]  # their text -> Python converters


class Connection(pg8000.native.Connection):
    """A pg8000 connection whose statements with parameters are prepared on the server once, keyed
    by their SQL text, and then run with Bind/Execute/Sync only: one round trip per statement, where
    pg8000's unnamed statements take three (Parse/Sync, Describe/Sync, Bind/Execute/Sync) and are
    parsed and planned by the server each time. The prepared statements live and die with the
    connection: a new connection (the server restarted, the connection was lost, the password
    rotated) prepares them again.

    Statements without parameters (BEGIN, COMMIT, DELETE FROM movies...) keep the simple query
    protocol (one round trip, nothing to prepare); :class:`CustomPlan` statements (and any beyond
    MAX_PREPARED) run as unnamed statements, in one round trip too.
    A prepared statement the server refuses to run as prepared (see :func:`_stale_statement`) is
    forgotten; outside a transaction block it is prepared again and run once more at once, inside one
    the error is raised (the transaction is aborted) and the next run prepares it again."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.prepared: dict[str, _Prepared] = {}

    def run(self, sql: str, stream: Any = None, types: Any = None, **params: Any) -> Any:
        if not params or stream is not None or types is not None:
            return super().run(sql, stream=stream, types=types, **params)
        prepared = self.prepared.get(sql)
        if prepared is None:
            if isinstance(sql, CustomPlan) or len(self.prepared) >= MAX_PREPARED:
                return self._run_unnamed(sql, params)
            prepared = self._prepare(sql)
        try:
            return self._execute(prepared, params)
        except DatabaseError as exc:
            if not _stale_statement(exc):
                raise
            del self.prepared[sql]
            self.close_prepared_statement(prepared.name)  # Close/Sync: no error if it is already gone
            if self._transaction_status != IDLE:
                raise
        return self._execute(self._prepare(sql), params)

    def _run_unnamed(self, sql: str, params: dict[str, Any]) -> Any:
        """The unnamed statement, parsed and planned with these values: Parse/Bind/Describe/Execute/
        Sync in one write, one round trip (pg8000's ``run`` waits after Parse and after Describe).
        The messages are all built before the first byte is written, so a value that cannot be
        encoded leaves nothing half-sent."""
        statement, make_vals = _to_statement(sql)
        encoding = self._client_encoding
        values = make_params(self.py_types, make_vals(params))
        # Bind: unnamed portal and statement; every parameter and result column in text format.
        bind = bytearray(NULL_BYTE + NULL_BYTE + H_pack(0) + H_pack(len(values)))
        for value in values:
            if value is None:
                bind += i_pack(-1)
            else:
                data = value.encode(encoding)
                bind += i_pack(len(data)) + data
        bind += H_pack(0)
        messages = b"".join(
            (
                _message(PARSE, NULL_BYTE + statement.encode(encoding) + NULL_BYTE + H_pack(0)),  # no types given
                _message(BIND, bind),
                _message(DESCRIBE, PORTAL + NULL_BYTE),  # the result's columns, to decode its rows
                EXECUTE_MSG,
                SYNC_MSG,
            )
        )
        if self._sock is None:
            raise InterfaceError("connection is closed")
        try:
            self._sock.write(messages)
            self._sock.flush()
        except OSError as exc:
            raise InterfaceError("network error") from exc
        context = Context(statement)
        self.handle_messages(context)
        self._context = context
        return context.rows

    def _prepare(self, sql: str) -> _Prepared:
        statement, make_vals = _to_statement(sql)
        name, columns, input_funcs = self.prepare_statement(statement, ())  # Parse/Describe/Sync
        prepared = self.prepared[sql] = _Prepared(name, statement, make_vals, columns, input_funcs)
        return prepared

    def _execute(self, prepared: _Prepared, params: dict[str, Any]) -> Any:
        values = make_params(self.py_types, prepared.make_vals(params))
        self._context = self.execute_named(
            prepared.name, values, prepared.columns, prepared.input_funcs, prepared.statement
        )
        return self._context.rows


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
        self._idle: list[Connection] = []
        self._lock = threading.Lock()
        self.name = application_name  # also the pool's label in the metrics
        # For the metrics (read without the lock: a scrape may see a value one step old).
        self.in_use = 0
        self.waiting = 0
        for reason in ("connect", "lost", "busy", "timeout"):
            pool_failures.inc(self.name, reason, amount=0)
        _POOLS.add(self)

    def _connect(self) -> Connection:
        try:
            return self._open()
        except DatabaseUnavailable:
            pool_failures.inc(self.name, "connect")
            raise

    def _open(self) -> Connection:
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
            return Connection(
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

    def _take(self) -> tuple[Connection, bool]:
        with self._lock:
            if self._idle:
                return self._idle.pop(), True
        return self._connect(), False

    def _give_back(self, conn: Connection) -> None:
        with self._lock:
            self._idle.append(conn)

    @staticmethod
    def _discard(conn: Connection) -> None:
        with contextlib.suppress(Exception):  # the connection is already broken
            conn.close()

    def _fail(self, conn: Connection, exc: BaseException, keep: Callable[[Connection], None]) -> NoReturn:
        """Re-raise ``exc``, raised while ``conn`` was in use, once the connection's fate is settled.
        An error the server reported leaves the protocol in step: ``keep`` it (give it back, or roll
        back first); a statement timeout then becomes StatementTimeout, and a prepared statement
        that DDL made stale inside a transaction DatabaseUnavailable (the transaction did nothing;
        the same call succeeds now that the statement is prepared again). A lost connection is closed
        and becomes DatabaseUnavailable. Anything else (e.g. an exception inside pg8000 between
        sending a statement and reading all of its answer) leaves the protocol state unknown: the
        connection is closed (the server rolls back) rather than handed to the next caller."""
        if isinstance(exc, DatabaseError) and not _connection_lost(exc):
            keep(conn)
            if sqlstate(exc) == _STATEMENT_TIMEOUT:
                pool_failures.inc(self.name, "timeout")
                raise StatementTimeout(describe(exc)) from None
            if _stale_statement(exc):
                raise DatabaseUnavailable(describe(exc)) from None
            raise exc
        self._discard(conn)
        if _connection_lost(exc):
            pool_failures.inc(self.name, "lost")
            raise DatabaseUnavailable(describe(exc)) from None
        raise exc

    def _run_first(self, sql: str, **params: Any) -> tuple[Connection, list[Any]]:
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
        wraps it in its own): no BEGIN and COMMIT, and a prepared statement is then one round trip
        in all (Bind/Execute/Sync; once per connection one more to prepare it)."""
        self._acquire_slot()
        try:
            conn, rows = self._run_first(sql, **params)
            self._give_back(conn)
            return rows
        finally:
            self._release_slot()

    @contextmanager
    def transaction(self) -> Iterator[Connection]:
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

    def _rollback(self, conn: Connection) -> None:
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
