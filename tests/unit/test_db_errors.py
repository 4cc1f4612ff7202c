"""Which database errors are a message's own fault (dead-lettered) and which are a store outage
(retried), and what the pool does with the connection after each: pg8000's own exception objects,
as the server's error fields arrive in them."""

from __future__ import annotations

import pytest
from pg8000.exceptions import DatabaseError, InterfaceError

from common.db import DatabaseUnavailable, DbSettings, Pool, StatementTimeout, describe, is_data_error


def server_error(code: str, message: str = "the server says no") -> DatabaseError:
    return DatabaseError({"S": "ERROR", "V": "ERROR", "C": code, "M": message, "F": "x.c", "L": "1"})


DATA_ERRORS = {
    "22001": "value too long for type character varying(128)",
    "22003": "integer out of range",
    "22P02": "invalid input syntax for type uuid",
    "23502": "null value in column violates not-null constraint",
    "23505": "duplicate key value violates unique constraint",
    "23514": "new row violates check constraint",
}
OUTAGES = {
    "42501": "permission denied for table orders",
    "42P01": 'relation "orders" does not exist',
    "42703": "column does not exist",
    "25006": "cannot execute INSERT in a read-only transaction",
    "28P01": "password authentication failed",
    "28000": 'role "billing_app" does not exist',
    "3D000": 'database "billing_db" does not exist',
    "40001": "could not serialize access due to concurrent update",
    "40P01": "deadlock detected",
    "57014": "canceling statement due to statement timeout",
    "57P01": "terminating connection due to administrator command",
    "53100": "could not extend file: No space left on device",
    "53300": "too many connections for role",
    "08006": "connection failure",
    "XX000": "internal error",
    "26000": 'prepared statement "pg8000_statement_0" does not exist',
    "0A000": "cached plan must not change result type",
}


@pytest.mark.parametrize("code", sorted(DATA_ERRORS))
def test_data_exceptions_and_constraint_violations_are_the_message_s_own_fault(code: str) -> None:
    assert is_data_error(server_error(code, DATA_ERRORS[code]))


@pytest.mark.parametrize("code", sorted(OUTAGES))
def test_every_other_server_error_is_an_outage_of_the_store(code: str) -> None:
    assert not is_data_error(server_error(code, OUTAGES[code]))


@pytest.mark.parametrize(
    "exc", [DatabaseUnavailable("cannot connect"), StatementTimeout("slow"), InterfaceError("eof"), ValueError("x")]
)
def test_errors_that_are_not_from_the_server_are_never_data_errors(exc: Exception) -> None:
    assert not is_data_error(exc)


def test_describe_gives_the_server_s_message_and_sqlstate() -> None:
    assert describe(server_error("42501", "permission denied for table orders")) == (
        "permission denied for table orders (SQLSTATE 42501)"
    )
    assert describe(DatabaseUnavailable("cannot connect to billing-db:5432")) == "cannot connect to billing-db:5432"
    assert describe(InterfaceError()) == "InterfaceError"


class Connection:
    """Stands for a pg8000 connection in the pool's decision: records whether it was closed."""

    closed = False

    def close(self) -> None:
        self.closed = True


def settle(exc: BaseException) -> tuple[BaseException, bool, bool]:
    """What the pool raises after ``exc``, whether it kept the connection, whether it closed it."""
    pool = Pool(DbSettings("db", 5432, "db", "user", "secret", 1.0, 1000), size=1, application_name="test")
    conn, kept = Connection(), []
    with pytest.raises(BaseException) as raised:
        pool._fail(conn, exc, kept.append)  # type: ignore[arg-type]
    return raised.value, bool(kept), conn.closed


def test_a_statement_timeout_keeps_the_connection_and_raises_statement_timeout() -> None:
    raised, kept, closed = settle(server_error("57014", "canceling statement due to statement timeout"))
    assert isinstance(raised, StatementTimeout) and isinstance(raised, DatabaseUnavailable)
    assert str(raised) == "canceling statement due to statement timeout (SQLSTATE 57014)"
    assert kept and not closed


@pytest.mark.parametrize("code", ["57P01", "08006", "53100"])
def test_a_connection_the_server_ends_is_closed_and_the_database_unavailable(code: str) -> None:
    raised, kept, closed = settle(server_error(code, OUTAGES[code]))
    assert type(raised) is DatabaseUnavailable and f"SQLSTATE {code}" in str(raised)
    assert closed and not kept


@pytest.mark.parametrize("code", ["23514", "42501", "25006", "40001"])
def test_other_server_errors_keep_the_connection_and_are_raised_as_they_are(code: str) -> None:
    error = server_error(code)
    raised, kept, closed = settle(error)
    assert raised is error
    assert kept and not closed


@pytest.mark.parametrize("code", ["26000", "0A000"])
def test_a_stale_prepared_statement_keeps_the_connection_and_the_database_is_unavailable_for_now(code: str) -> None:
    """Inside a transaction: the statement did nothing and is prepared again on the next call."""
    raised, kept, closed = settle(server_error(code, OUTAGES[code]))
    assert type(raised) is DatabaseUnavailable and f"SQLSTATE {code}" in str(raised)
    assert kept and not closed


def test_a_feature_the_server_does_not_support_is_not_a_stale_statement() -> None:
    error = server_error("0A000", "FOR UPDATE is not allowed with aggregate functions")
    raised, kept, _ = settle(error)
    assert raised is error and kept


@pytest.mark.parametrize(
    "exc", [InterfaceError("network error"), ConnectionResetError(104, "Connection reset by peer")]
)
def test_a_connection_lost_on_the_client_side_is_closed_and_the_database_unavailable(exc: Exception) -> None:
    raised, kept, closed = settle(exc)
    assert type(raised) is DatabaseUnavailable
    assert closed and not kept


def test_an_error_of_unknown_protocol_state_closes_the_connection_and_is_raised_as_it_is() -> None:
    error = ValueError("pg8000 could not encode a parameter")
    raised, kept, closed = settle(error)
    assert raised is error
    assert closed and not kept


class Statements(Connection):
    """Stands for a pg8000 connection running statements: each ``run`` answers the next outcome."""

    def __init__(self, *outcomes: object) -> None:
        self.outcomes = list(outcomes)
        self.statements: list[str] = []

    def run(self, sql: str, **_params: object) -> object:
        self.statements.append(sql)
        outcome = self.outcomes.pop(0)
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome


class FakePool(Pool):
    """The pool's own logic; its new connections come from a list instead of a server."""

    def __init__(self, idle: list[Statements], new: list[Statements]) -> None:
        super().__init__(DbSettings("db", 5432, "db", "user", "secret", 1.0, 1000), size=1, application_name="test")
        self._idle = list(idle)  # type: ignore[arg-type]
        self.new = list(new)

    def _connect(self) -> Statements:  # type: ignore[override]
        if not self.new:
            raise DatabaseUnavailable("cannot connect to db:5432")
        return self.new.pop(0)


def test_a_reused_connection_found_dead_is_replaced_once_and_the_statement_runs_on_a_new_one() -> None:
    dead, fresh = Statements(InterfaceError("network error")), Statements([[1]])
    pool = FakePool(idle=[dead], new=[fresh])
    assert pool.query("SELECT 1") == [[1]]
    assert dead.closed and fresh.statements == ["SELECT 1"]
    assert pool._idle == [fresh]


def test_a_new_connection_that_fails_is_not_retried() -> None:
    failing = Statements(InterfaceError("network error"))
    pool = FakePool(idle=[], new=[failing, Statements([[1]])])
    with pytest.raises(DatabaseUnavailable):
        pool.query("SELECT 1")
    assert failing.closed and len(pool.new) == 1 and pool._idle == []


def test_a_statement_timeout_on_a_reused_connection_is_not_run_a_second_time() -> None:
    slow = Statements(server_error("57014", "canceling statement due to statement timeout"))
    pool = FakePool(idle=[slow], new=[Statements([[1]])])
    with pytest.raises(StatementTimeout):
        pool.query("SELECT pg_sleep(10)")
    assert slow.statements == ["SELECT pg_sleep(10)"] and len(pool.new) == 1
    assert pool._idle == [slow] and not slow.closed


def test_a_failed_transaction_is_rolled_back_and_its_connection_kept() -> None:
    conn = Statements([], server_error("23505", "duplicate key value violates unique constraint"), [])
    pool = FakePool(idle=[conn], new=[])
    with pytest.raises(DatabaseError), pool.transaction() as tx:
        tx.run("INSERT INTO orders VALUES (1)")
    assert conn.statements == ["BEGIN", "INSERT INTO orders VALUES (1)", "ROLLBACK"]
    assert pool._idle == [conn] and not conn.closed


def test_a_connection_that_cannot_roll_back_is_dropped() -> None:
    conn = Statements([], server_error("23514", "new row violates check constraint"), InterfaceError("eof"))
    pool = FakePool(idle=[conn], new=[])
    with pytest.raises(DatabaseError), pool.transaction() as tx:
        tx.run("INSERT INTO orders VALUES (1)")
    assert conn.statements[-1] == "ROLLBACK"
    assert pool._idle == [] and conn.closed
